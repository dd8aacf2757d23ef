"""The ``trustd`` CLI in process: output formats, one-line errors and exit codes 0/1/2/3 (SPEC §5)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import re
import socket
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import typer
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustd.audit import MemoryAuditSink
from trustd.cli import main as cli_main
from trustd.cli.client import ServerError
from trustd.cli.main import main
from trustd.cli.output import Format, emit
from trustd.config import ServerConfig
from trustd.server.app import TrustdServer
from trustd.telemetry import logging as tlog


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustdServer]:
    """A real server (memory key manager) on its own event loop in a thread."""
    tmp = tmp_path_factory.mktemp("cli-server")
    cfg = ServerConfig.model_validate(
        {
            "dataDir": str(tmp / "d"),
            "keyManager": {"kind": "memory"},
            "adminSocket": str(tmp / "admin.sock"),
            "metricsAddress": "127.0.0.1:0",
            "serverAddress": "127.0.0.1:0",
        }
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        srv = TrustdServer(cfg, audit=MemoryAuditSink())
        holder["server"] = srv
        try:
            loop.run_until_complete(srv.start())
            loop.run_until_complete(srv.wait_ready())
            ready.set()
            loop.run_forever()
        finally:
            loop.run_until_complete(srv.stop())
            loop.close()

    # The server shares this process: its log lines must not mix with the CLI's stdout/stderr.
    tlog.configure("warning", "json", stream=io.StringIO())
    thread = threading.Thread(target=run, name="trustd-test-server", daemon=True)
    thread.start()
    try:
        assert ready.wait(60), "the in-process trustd server did not become ready"
        srv = holder["server"]
        assert isinstance(srv, TrustdServer)
        yield srv
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        structlog.reset_defaults()


@pytest.fixture
def admin(server: TrustdServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRUSTD_ADMIN_SOCKET", str(server.cfg.admin_socket_path))
    return server.cfg.admin_socket_path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *words: str) -> None:
    assert err.startswith("trustd: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def _sid() -> str:
    return f"spiffe://trustd.local/ns/cli/sa/w{uuid.uuid4().hex[:8]}"


# -- local errors: exit 1, no server needed ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["entry", "list", "--bogus"], ["No such option: --bogus"]),
        (["entry", "create"], ["Missing option '--spiffe-id'"]),
        (["entry", "create", "--spiffe-id", "spiffe://trustd.local/a"], ["--selector"]),
        (["entry", "list", "-o", "xml"], ["'xml' is not one of"]),
        (["bundle", "show", "--format", "der"], ["'der' is not one of"]),
        (["nosuch"], ["No such command 'nosuch'"]),
        (
            ["entry", "create", "--spiffe-id", "spiffe://trustd.local/a", "--selector", "k8s:ns:x"],
            ["unknown selector type 'k8s'"],
        ),
        (
            [
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://trustd.local/a",
                "--selector",
                "unix:uid:x",
            ],
            ["uid must be a whole number"],
        ),
        (
            [
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://Trustd.local/a",
                "--selector",
                "unix:uid:1",
            ],
            ["invalid spiffe id", "lower-case"],
        ),
        (
            [
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://trustd.local/a/",
                "--selector",
                "unix:uid:1",
            ],
            ["empty path segment"],
        ),
        (["svid", "mint", "--spiffe-id", "http://x/y", "--out-dir", "/tmp/x"], ["scheme"]),
    ],
)
def test_bad_flags_and_invalid_input_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "--admin-socket", str(tmp_path / "none.sock"), *argv)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, *words)


@pytest.mark.parametrize("ttl", ["0", "0s", "-5m", "-1h30m", "0.0000001s"])
@pytest.mark.parametrize("noun", ["entry", "svid", "token"])
def test_non_positive_ttl_is_refused_locally_with_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, noun: str, ttl: str
) -> None:
    argv = {
        "entry": ["entry", "create", "--spiffe-id", _sid(), "--selector", "unix:uid:1"],
        "svid": ["svid", "mint", "--spiffe-id", _sid(), "--out-dir", str(tmp_path / "o")],
        "token": ["token", "create"],
    }[noun]
    code, _, err = run_cli(
        capsys, "--admin-socket", str(tmp_path / "none.sock"), *argv, f"--ttl={ttl}"
    )
    assert code == 1
    assert_one_line_error(err, "ttl must be positive")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("ttl", ["soon", "1h 30m", "99999999999999d", "9" * 40])
def test_unparsable_ttl_is_refused_locally_with_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ttl: str
) -> None:
    code, _, err = run_cli(
        capsys,
        "--admin-socket",
        str(tmp_path / "none.sock"),
        "entry",
        "create",
        "--spiffe-id",
        _sid(),
        "--selector",
        "unix:uid:1",
        "--ttl",
        ttl,
    )
    assert code == 1
    assert_one_line_error(err, "duration")


def test_no_arguments_prints_help_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys)
    assert code == 1
    assert "Usage" in out and "entry" in out
    assert err == ""


def test_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    from trustd import __version__

    assert run_cli(capsys, "version") == (0, __version__ + "\n", "")


def test_a_command_that_exits_with_a_code_keeps_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`raise typer.Exit(3)` (a check found problems) must reach the shell as 3."""
    fake = typer.Typer()

    @fake.command()
    def check() -> None:
        raise typer.Exit(3)

    @fake.command()
    def fine() -> None:
        return None

    monkeypatch.setattr(cli_main, "app", fake)
    assert main(["check"]) == 3
    assert main(["fine"]) == 0


# -- the server cannot be reached: exit 2 ------------------------------------------------


def test_server_not_running_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(
        capsys, "--admin-socket", str(tmp_path / "absent.sock"), "entry", "list"
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, "cannot reach the trustd server", "is it running?")


def test_stale_socket_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    code, _, err = run_cli(capsys, "--admin-socket", str(stale), "bundle", "show")
    assert code == 2
    assert_one_line_error(err, "cannot reach the trustd server")


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    with pytest.raises(ServerError):
        main(["--debug", "--admin-socket", str(tmp_path / "absent.sock"), "entry", "list"])


# -- against a running server -----------------------------------------------------------


def test_entry_create_list_show_delete_in_every_format(
    capsys: pytest.CaptureFixture[str], admin: Path
) -> None:
    sid = _sid()
    code, out, err = run_cli(
        capsys, "entry", "create", "--spiffe-id", sid, "--selector", "unix:uid:1000",
        "--selector", "unix:gid:1000", "--ttl", "30m", "--dns", "web.cli.svc",
    )  # fmt: skip
    assert (code, err) == (0, "")
    entry_id = out.strip()
    uuid.UUID(entry_id)  # table output of create is just the id

    code, out, _ = run_cli(capsys, "entry", "show", entry_id, "-o", "json")
    assert code == 0
    shown = json.loads(out)
    assert shown["spiffe_id"] == sid
    assert shown["selectors"] == ["unix:gid:1000", "unix:uid:1000"]
    assert shown["ttl"] == 1800 and shown["dns_names"] == ["web.cli.svc"]

    code, out, _ = run_cli(capsys, "-o", "yaml", "entry", "show", entry_id)
    assert code == 0 and yaml.safe_load(out) == shown

    code, out, _ = run_cli(capsys, "entry", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("\t") == ["ID", "SPIFFE_ID", "SELECTORS", "TTL", "DNS_NAMES", "AGENT_ID"]
    [row] = [line.split("\t") for line in lines[1:] if line.startswith(entry_id)]
    assert row == [entry_id, sid, "unix:gid:1000,unix:uid:1000", "1800", "web.cli.svc", "-"]

    code, out, _ = run_cli(capsys, "entry", "list", "-o", "json")
    assert entry_id in [e["id"] for e in json.loads(out)["entries"]]
    code, out, _ = run_cli(capsys, "entry", "list", "-o", "yaml")
    assert entry_id in [e["id"] for e in yaml.safe_load(out)["entries"]]

    code, out, _ = run_cli(capsys, "entry", "create", "--spiffe-id", _sid(), "--selector",
                           "unix:uid:7", "-o", "json")  # fmt: skip
    assert code == 0 and json.loads(out)["selectors"] == ["unix:uid:7"]

    code, out, _ = run_cli(capsys, "entry", "delete", entry_id, "-o", "json")
    assert code == 0 and json.loads(out)["id"] == entry_id
    code, _, err = run_cli(capsys, "entry", "show", entry_id)
    assert code == 2
    assert_one_line_error(err, "no entry with id")


def test_server_refusals_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], admin: Path
) -> None:
    sid = _sid()
    assert (
        run_cli(capsys, "entry", "create", "--spiffe-id", sid, "--selector", "unix:uid:1")[0] == 0
    )
    code, out, err = run_cli(
        capsys, "entry", "create", "--spiffe-id", sid, "--selector", "unix:uid:1"
    )
    assert (code, out) == (2, "")
    assert_one_line_error(err, "exists already")

    code, _, err = run_cli(
        capsys, "entry", "create", "--spiffe-id", _sid(), "--selector", "unix:uid:1", "--ttl", "48h"
    )
    assert code == 2
    assert_one_line_error(err, "above the server maximum")

    code, _, err = run_cli(
        capsys,
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://other.example/a",
        "--selector",
        "unix:uid:1",
    )
    assert code == 2
    assert_one_line_error(err, "not in this server's trust domain")

    code, _, err = run_cli(capsys, "svid", "mint", "--spiffe-id", _sid(), "--out-dir", "/tmp/never",
                           "--ttl", "25h")  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "above the server maximum")
    assert not Path("/tmp/never").exists()

    code, _, err = run_cli(capsys, "authority", "taint", "0" * 40)
    assert code == 2
    assert_one_line_error(err, "no authority with id")


def test_svid_mint_writes_a_verifiable_svid_and_a_private_key_file(
    capsys: pytest.CaptureFixture[str], admin: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "mint"
    out_dir.mkdir()
    stale_key = out_dir / "svid.key"
    stale_key.write_text("old")
    stale_key.chmod(0o644)  # a key file left readable must not stay readable
    sid = _sid()
    code, out, err = run_cli(
        capsys,
        "svid",
        "mint",
        "--spiffe-id",
        sid,
        "--ttl",
        "10m",
        "--out-dir",
        str(out_dir),
        "-o",
        "json",
    )
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert shown["spiffe_id"] == sid and shown["out_dir"] == str(out_dir)
    assert stat.S_IMODE((out_dir / "svid.key").stat().st_mode) == 0o600
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out_dir / "bundle.pem"), str(out_dir / "svid.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    leaf = x509.load_pem_x509_certificates((out_dir / "svid.pem").read_bytes())[0]
    private = serialization.load_pem_private_key((out_dir / "svid.key").read_bytes(), None)
    assert private.public_key() == leaf.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [sid]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(minutes=10, seconds=10)  # 10m, backdated 10s


def test_bundle_show_pem_and_spiffe(capsys: pytest.CaptureFixture[str], admin: Path) -> None:
    code, out, _ = run_cli(capsys, "bundle", "show")
    assert code == 0
    certs = x509.load_pem_x509_certificates(out.encode())
    assert certs
    code, out, _ = run_cli(capsys, "bundle", "show", "--format", "spiffe")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"keys", "spiffe_sequence", "spiffe_refresh_hint"}
    assert [k for k in doc["keys"] if k["use"] == "x509-svid"] and len(
        [k for k in doc["keys"] if k["use"] == "x509-svid"]
    ) == len(certs)
    assert [k["kid"] for k in doc["keys"] if k["use"] == "jwt-svid"]  # the JWT signing key


def test_authority_commands(capsys: pytest.CaptureFixture[str], admin: Path) -> None:
    code, out, _ = run_cli(capsys, "authority", "list", "-o", "json")
    assert code == 0
    before = {a["id"]: a["state"] for a in json.loads(out)["authorities"]}
    [active] = [i for i, s in before.items() if s == "active"]

    code, out, _ = run_cli(capsys, "authority", "prepare", "-o", "json")
    assert code == 0
    prepared = json.loads(out)["id"]
    code, _, err = run_cli(capsys, "authority", "prepare")
    assert code == 2
    assert_one_line_error(err, "a prepared CA exists already")
    code, out, _ = run_cli(capsys, "authority", "activate")
    assert code == 0
    assert out.splitlines()[0].split("\t")[:2] == ["ID", "STATE"]
    assert out.splitlines()[1].split("\t")[:2] == [prepared, "active"]

    code, _, err = run_cli(capsys, "authority", "taint", prepared)
    assert code == 2
    assert_one_line_error(err, "is active")
    code, _, err = run_cli(capsys, "authority", "revoke", active)
    assert code == 2
    assert_one_line_error(err, "not tainted")
    assert run_cli(capsys, "authority", "taint", active[:12])[0] == 0
    code, _, err = run_cli(capsys, "authority", "revoke", active)
    assert code == 2
    assert_one_line_error(err, "--force")
    assert run_cli(capsys, "authority", "revoke", active, "--force")[0] == 0
    code, out, _ = run_cli(capsys, "authority", "list", "-o", "json")
    assert active not in {a["id"] for a in json.loads(out)["authorities"]}


def test_token_create(capsys: pytest.CaptureFixture[str], admin: Path) -> None:
    code, out, _ = run_cli(capsys, "token", "create")
    assert code == 0
    token = out.strip()
    assert len(token) >= 40 and "\t" not in token
    code, out, _ = run_cli(capsys, "token", "create", "--ttl", "1h", "-o", "json")
    assert code == 0
    assert set(json.loads(out)) == {"token", "expires_at"}
    code, _, err = run_cli(capsys, "token", "create", "--ttl", "48h")
    assert code == 2
    assert_one_line_error(err, "token ttl")


def test_admin_socket_flag_beats_the_environment(
    capsys: pytest.CaptureFixture[str],
    server: TrustdServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRUSTD_ADMIN_SOCKET", str(tmp_path / "wrong.sock"))
    assert run_cli(capsys, "entry", "list")[0] == 2
    code, _, _ = run_cli(
        capsys, "--admin-socket", str(server.cfg.admin_socket_path), "entry", "list"
    )
    assert code == 0


# -- rendering --------------------------------------------------------------------------


def test_table_output_when_piped_is_tab_separated(capsys: pytest.CaptureFixture[str]) -> None:
    emit(
        {"rows": [{"a": None, "b": ["x", "y"], "c": True}, {"a": 1, "b": [], "c": False}]},
        Format.table,
        columns=["a", "b", "c"],
        rows_key="rows",
    )
    assert capsys.readouterr().out == "A\tB\tC\n-\tx,y\tyes\n1\t\tno\n"


def test_json_and_yaml_output_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    data = {"id": "x", "list": [1, 2], "none": None}
    emit(data, Format.json)
    assert json.loads(capsys.readouterr().out) == data
    emit(data, Format.yaml)
    assert yaml.safe_load(capsys.readouterr().out) == data


# -- the admin's first hour: local checks, flags anywhere ---------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["entry", "create", "--spiffe-id", "spiffe://trustd.local/x", "--selector", "unix:uid:-5"],
         ["uid must be a whole number", "never negative"]),
        (["entry", "create", "--spiffe-id", "spiffe://trustd.local/x", "--selector", "unix:uid:1",
          "--dns", "bad_dns!"], ["invalid dns name 'bad_dns!'"]),
        (["svid", "mint", "--spiffe-id", "spiffe://trustd.local/x", "--out-dir", "/tmp/o",
          "--dns", "-x.example"], ["invalid dns name"]),
        (["rollout", "start", "--selector", "spiffe://trustd.local/ns/a**", "--to", "STRICT"],
         ["invalid spiffe id glob", "whole path segment"]),
        (["rollout", "start", "--selector", "spiffe://trustd.local/ns/**", "--to", "STRICT",
          "--step-timeout", "soon"], ["invalid --step-timeout"]),
        (["policy", "show", "--spiffe-id", "spiffe://trustd.local/x", "--port", "70000"],
         ["--port", "65535"]),
        (["audit", "export", "--since", "yesterday"], ["invalid --since 'yesterday'"]),
        (["audit", "export", "--outcome", "failed"], ["invalid --outcome"]),
        (["audit", "export", "--format", "cef", "-o", "json"], ["looks like an output format"]),
        (["audit", "export", "-o", "/nonexistent/dir/a.jsonl"], ["/nonexistent/dir does not exist"]),
    ],
)  # fmt: skip
def test_local_mistakes_exit_1_before_the_server_is_asked(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str], tmp_path: Path
) -> None:
    # the socket does not exist: reaching the server would exit 2
    code, out, err = run_cli(capsys, "--admin-socket", str(tmp_path / "none.sock"), *argv)
    assert (code, out) == (1, "")
    assert_one_line_error(err, *words)


def test_svid_mint_never_creates_a_directory_tree(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "missing" / "dir"
    code, _, err = run_cli(capsys, "--admin-socket", str(tmp_path / "none.sock"), "svid", "mint",
                           "--spiffe-id", _sid(), "--out-dir", str(target))  # fmt: skip
    assert code == 1
    assert_one_line_error(err, f"{tmp_path / 'missing'} does not exist")
    assert not (tmp_path / "missing").exists()


def test_admin_socket_and_debug_work_after_the_noun(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    absent = str(tmp_path / "absent.sock")
    code, _, err = run_cli(capsys, "entry", "list", "--admin-socket", absent)
    assert code == 2 and absent in err
    code, _, err = run_cli(capsys, "entry", "list", f"--admin-socket={absent}")
    assert code == 2 and absent in err
    with pytest.raises(ServerError):
        main(["entry", "list", "--admin-socket", absent, "--debug"])
    assert cli_main.hoist_global_options(["up", "--admin-socket", "x"]) == [
        "up",
        "--admin-socket",
        "x",
    ]
    assert cli_main.hoist_global_options(["a", "--", "--debug"]) == ["a", "--", "--debug"]


def test_version_and_bundle_show_take_the_output_format(
    capsys: pytest.CaptureFixture[str], admin: Path
) -> None:
    from trustd import __version__

    code, out, _ = run_cli(capsys, "version", "-o", "json")
    assert code == 0 and json.loads(out) == {"version": __version__}
    code, out, _ = run_cli(capsys, "-o", "yaml", "version")
    assert code == 0 and yaml.safe_load(out) == {"version": __version__}
    code, out, _ = run_cli(capsys, "--admin-socket", str(admin), "bundle", "show", "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["pem"].startswith("-----BEGIN CERTIFICATE-----") and "keys" in doc["spiffe"]


# -- expected comforts: completion, tables that fit, one duration form, help -------------


@pytest.mark.parametrize(
    ("shell", "words"),
    [
        ("bash", ["_TRUSTD_COMPLETE=complete_bash", "complete -o default -F", " trustd"]),
        ("zsh", ["#compdef trustd", "compdef _trustd_completion trustd", "_TRUSTD_COMPLETE"]),
        ("fish", ["complete --command trustd", "_TRUSTD_COMPLETE=complete_fish"]),
    ],
)
def test_completion_prints_the_script_for_the_shell(
    capsys: pytest.CaptureFixture[str], shell: str, words: list[str]
) -> None:
    code, out, err = run_cli(capsys, "completion", shell)
    assert (code, err) == (0, "")
    for w in words:
        assert w in out, out


def test_completion_for_an_unknown_shell_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "completion", "tcsh")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "'tcsh' is not one of 'bash', 'zsh', 'fish'")
    code, out, err = run_cli(capsys, "completion")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "Missing argument 'SHELL'", "bash, zsh, fish")


@pytest.mark.parametrize(
    ("shell", "env", "expected"),
    [
        ("bash", {"COMP_WORDS": "trustd en", "COMP_CWORD": "1"}, ["entry"]),
        ("bash", {"COMP_WORDS": "trustd entry list -o ", "COMP_CWORD": "4"},
         ["table", "wide", "json", "yaml"]),
        ("zsh", {"_TYPER_COMPLETE_ARGS": "trustd compl"}, ["completion"]),
        ("fish", {"_TYPER_COMPLETE_ARGS": "trustd authority ta",
                  "_TYPER_COMPLETE_FISH_ACTION": "get-args"}, ["taint"]),
    ],
)  # fmt: skip
def test_the_completion_scripts_get_answers_in_their_format(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    shell: str,
    env: dict[str, str],
    expected: list[str],
) -> None:
    """What the scripts run (``_TRUSTD_COMPLETE=complete_SHELL trustd``) answers them."""
    monkeypatch.setenv("_TRUSTD_COMPLETE", f"complete_{shell}")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        main([])
    out, _ = capsys.readouterr()
    assert exc.value.code == 0
    for word in expected:
        assert re.search(rf"(^|[\s\"']){word}($|[\s\"':])", out, re.M), out


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(cli_main.app), [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "trustd")
def test_help_cites_no_spec_section(capsys: pytest.CaptureFixture[str], path: list[str]) -> None:
    code, out, err = run_cli(capsys, *path, "--help")
    assert (code, err) == (0, "")
    assert "Usage" in out
    assert "SPEC" not in out and "§" not in out


def test_help_names_the_output_formats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "entry", "list", "--help")
    assert code == 0 and "wide" in out


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is an 80-column terminal."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def _screen(out: str) -> list[str]:
    return [line.rstrip() for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).splitlines()]


def test_entry_list_on_an_80_column_terminal_shows_whole_ids(
    capsys: pytest.CaptureFixture[str], admin: Path, terminal: None
) -> None:
    sid = f"spiffe://trustd.local/ns/cli/sa/{uuid.uuid4().hex[:10]}"  # 42 characters
    very_long = f"spiffe://trustd.local/ns/cli/{'sa/' * 12}{uuid.uuid4().hex[:8]}"
    ids: dict[str, str] = {}
    for s in (sid, very_long):
        code, out, _ = run_cli(capsys, "entry", "create", "--spiffe-id", s,
                               "--selector", f"unix:uid:{len(ids) + 4000}", "--ttl", "1h")  # fmt: skip
        assert code == 0
        ids[s] = out.strip()
    code, out, _ = run_cli(capsys, "entry", "list")
    assert code == 0
    lines = _screen(out)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["ID", "SPIFFE_ID"]
    assert [ids[sid], sid] in [line.split() for line in lines]
    # wider than the terminal: folded over lines, never cut
    [at] = [i for i, line in enumerate(lines) if line.startswith(ids[very_long])]
    folded = "".join(lines[at][len(ids[very_long]) :].split())
    for line in lines[at + 1 :]:
        if not line.startswith(" "):
            break
        folded += line.strip()
    assert folded == very_long

    code, out, _ = run_cli(capsys, "entry", "show", ids[sid], "-o", "wide")
    assert code == 0
    lines = _screen(out)
    assert lines[0].split() == ["ID", "SPIFFE_ID", "SELECTORS", "TTL", "DNS_NAMES", "AGENT_ID",
                                "REVISION", "CREATED_AT"]  # fmt: skip
    row = " ".join(lines[1:]).split()
    assert row[:5] == [ids[sid], sid, "unix:uid:4000", "1h", "-"]
    assert row[-1] in ("now", "ago")  # created just now


def test_wide_is_accepted_wherever_table_is(
    capsys: pytest.CaptureFixture[str], admin: Path
) -> None:
    from trustd import __version__

    assert run_cli(capsys, "version", "-o", "wide") == (0, __version__ + "\n", "")
    assert run_cli(capsys, "-o", "wide", "version") == (0, __version__ + "\n", "")
    code, out, _ = run_cli(capsys, "token", "create", "-o", "wide")
    assert code == 0 and "\t" not in out.strip() and len(out.strip()) >= 40
    code, out, _ = run_cli(capsys, "bundle", "show", "-o", "wide")
    assert code == 0 and x509.load_pem_x509_certificates(out.encode())
    sid = _sid()
    code, out, _ = run_cli(capsys, "entry", "create", "--spiffe-id", sid, "--selector",
                           "unix:uid:4100", "--ttl", "90m", "-o", "wide")  # fmt: skip
    assert code == 0
    entry_id = out.strip()
    uuid.UUID(entry_id)
    code, out, _ = run_cli(capsys, "entry", "list", "-o", "wide")  # piped: exact values
    lines = out.splitlines()
    assert lines[0].split("\t") == ["ID", "SPIFFE_ID", "SELECTORS", "TTL", "DNS_NAMES",
                                    "AGENT_ID", "REVISION", "CREATED_AT"]  # fmt: skip
    [row] = [line.split("\t") for line in lines[1:] if line.startswith(entry_id)]
    assert row[:6] == [entry_id, sid, "unix:uid:4100", "5400", "", "-"]
    dt.datetime.fromisoformat(row[7])
    assert run_cli(capsys, "policy", "status", "-o", "wide")[0] == 0


def test_times_are_relative_on_a_terminal_and_exact_when_piped(
    capsys: pytest.CaptureFixture[str], admin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_cli(capsys, "authority", "list")
    assert code == 0
    header, *rows = (line.split("\t") for line in out.splitlines())
    at = header.index("NOT_AFTER")
    for row in rows:
        assert dt.datetime.fromisoformat(row[at]).tzinfo is not None
    code, out, _ = run_cli(capsys, "authority", "list", "-o", "json")
    exact = {a["id"]: a["not_after"] for a in json.loads(out)["authorities"]}
    assert all(dt.datetime.fromisoformat(v) for v in exact.values())

    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, "authority", "list")
    assert code == 0
    lines = _screen(out)
    assert lines[0].split() == ["ID", "STATE", "TAINTED", "NOT_AFTER"]
    for line in lines[1:]:
        authority_id, *_, relative = re.split(r"\s{2,}", line)
        assert re.fullmatch(r"in [0-9dhms]+|[0-9dhms]+ ago", relative), line
        left = dt.datetime.fromisoformat(exact[authority_id]) - dt.datetime.now(dt.UTC)
        assert relative.endswith("ago") == (left < dt.timedelta(0))
