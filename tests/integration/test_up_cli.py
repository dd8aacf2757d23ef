"""`trustd up` as a real process, driven by the `trustd` CLI as real processes (SPEC §1-§5).

One server is shared by the CLI tests; the lifecycle test (SIGTERM, logs) starts its own.
Everything binds to 127.0.0.1 with ephemeral ports and to Unix sockets in temp dirs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TRUSTD = str(BIN / "trustd")
REPO = Path(__file__).resolve().parents[2]
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
OTHER_UID = 1000
TD = "trustd.local"


@dataclass
class Up:
    """A running `trustd up` and what it said."""

    proc: subprocess.Popen[str]
    root: Path  # world-traversable parent of the data dir
    data_dir: Path
    admin_socket: Path
    agent_socket: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    metrics: str = ""  # http://127.0.0.1:PORT

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
        env["TRUSTD_ADMIN_SOCKET"] = str(self.admin_socket)
        env.update(extra)
        return env

    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


def _pump(stream: Any, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)


def start_up() -> Up:
    root = Path(tempfile.mkdtemp(prefix="trustd-up-"))
    root.chmod(0o755)  # other uids may walk to the sockets; the data dir guards itself
    data_dir = root / "d"
    up = Up(
        proc=None,  # type: ignore[arg-type]
        root=root,
        data_dir=data_dir,
        admin_socket=data_dir / "admin.sock",
        agent_socket=data_dir / "public" / "agent.sock",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    up.proc = subprocess.Popen(
        [
            TRUSTD,
            "up",
            "--data-dir",
            str(data_dir),
            "--metrics-address",
            "127.0.0.1:0",
            "--server-address",
            "127.0.0.1:0",
            "--admin-socket",
            str(up.admin_socket),
            "--agent-socket",
            str(up.agent_socket),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    threading.Thread(target=_pump, args=(up.proc.stdout, up.stdout), daemon=True).start()
    threading.Thread(target=_pump, args=(up.proc.stderr, up.stderr), daemon=True).start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        match = re.search(r"metrics\s+(http://127\.0\.0\.1:\d+)/metrics", "".join(up.stdout))
        if match:
            up.metrics = match.group(1)
            return up
        if up.proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_up(up)
    raise AssertionError(
        f"trustd up did not print its banner (exit {up.proc.returncode}):\n{up.log()[-4000:]}"
    )


def stop_up(up: Up) -> int | None:
    if up.proc.poll() is None:
        up.proc.send_signal(signal.SIGTERM)
        try:
            up.proc.wait(60)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            up.proc.wait(10)
    shutil.rmtree(up.root, ignore_errors=True)
    return up.proc.returncode


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    server = start_up()
    try:
        yield server
    finally:
        stop_up(server)


def cli(up: Up, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRUSTD, *args],
        capture_output=True,
        text=True,
        env=env or up.env(),
        timeout=120,
        check=False,
    )


def ok(up: Up, *args: str) -> str:
    result = cli(up, *args)
    assert result.returncode == 0, f"trustd {' '.join(args)}: {result.stderr}"
    assert result.stderr == ""
    return result.stdout


def assert_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith("trustd: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def _sid() -> str:
    return f"spiffe://{TD}/ns/it/sa/w{uuid.uuid4().hex[:8]}"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# -- entries ----------------------------------------------------------------------------


def test_entry_create_list_show_delete_with_every_output(up: Up) -> None:
    sid = _sid()
    entry_id = ok(up, "entry", "create", "--spiffe-id", sid, "--selector", "unix:uid:1000",
                  "--selector", "unix:path:/usr/bin/web", "--ttl", "15m").strip()  # fmt: skip
    uuid.UUID(entry_id)

    shown = json.loads(ok(up, "entry", "show", entry_id, "-o", "json"))
    assert shown["spiffe_id"] == sid and shown["ttl"] == 900
    assert shown["selectors"] == ["unix:path:/usr/bin/web", "unix:uid:1000"]
    assert yaml.safe_load(ok(up, "entry", "show", entry_id, "-o", "yaml")) == shown
    table = ok(up, "entry", "show", entry_id)
    assert table.splitlines()[0].split("\t")[:2] == ["ID", "SPIFFE_ID"]
    assert table.splitlines()[1].split("\t")[:2] == [entry_id, sid]

    listed = json.loads(ok(up, "entry", "list", "-o", "json"))["entries"]
    assert entry_id in [e["id"] for e in listed]
    assert entry_id in [
        e["id"] for e in yaml.safe_load(ok(up, "-o", "yaml", "entry", "list"))["entries"]
    ]
    assert any(line.startswith(entry_id + "\t") for line in ok(up, "entry", "list").splitlines())

    assert json.loads(ok(up, "entry", "delete", entry_id, "-o", "json"))["id"] == entry_id
    assert entry_id not in ok(up, "entry", "list")
    assert_error(cli(up, "entry", "delete", entry_id), 2, "no entry with id")


def test_errors_are_one_plain_line_with_the_right_exit_code(up: Up) -> None:
    sid = _sid()
    ok(up, "entry", "create", "--spiffe-id", sid, "--selector", "unix:uid:1001")
    assert_error(
        cli(up, "entry", "create", "--spiffe-id", sid, "--selector", "unix:uid:1001"),
        2,
        "exists already",
    )
    assert_error(
        cli(up, "entry", "create", "--spiffe-id", _sid(), "--selector", "k8s:ns:default"),
        1,
        "unknown selector type 'k8s'",
    )
    assert_error(
        cli(
            up,
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://trustd.local/a/../b",
            "--selector",
            "unix:uid:1",
        ),
        1,
        "invalid spiffe id",
    )
    assert_error(cli(up, "entry", "list", "--no-such-flag"), 1, "No such option")
    assert_error(cli(up, "entry", "create", "--selector", "unix:uid:1"), 1, "--spiffe-id")
    assert_error(
        cli(up, "entry", "create", "--spiffe-id", _sid(), "--selector", "unix:uid:1", "--ttl", "0"),
        1,
        "ttl must be positive",
    )
    assert_error(
        cli(
            up,
            "entry",
            "create",
            "--spiffe-id",
            _sid(),
            "--selector",
            "unix:uid:1",
            "--ttl",
            "-10m",
        ),
        1,
        "ttl must be positive",
    )
    assert_error(
        cli(
            up, "entry", "create", "--spiffe-id", _sid(), "--selector", "unix:uid:1", "--ttl", "25h"
        ),
        2,
        "above the server maximum",
    )


def test_server_not_running_exits_2(up: Up, tmp_path: Path) -> None:
    result = cli(up, "entry", "list", env=up.env(TRUSTD_ADMIN_SOCKET=str(tmp_path / "none.sock")))
    assert_error(result, 2, "cannot reach the trustd server", "is it running?")


# -- SVIDs and bundles ------------------------------------------------------------------


def test_svid_mint_gives_files_that_openssl_verifies(up: Up, tmp_path: Path) -> None:
    out_dir = tmp_path / "d"
    sid = _sid()
    shown = json.loads(ok(up, "svid", "mint", "--spiffe-id", sid, "--ttl", "10m",
                          "--out-dir", str(out_dir), "-o", "json"))  # fmt: skip
    assert shown["spiffe_id"] == sid
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out_dir / "bundle.pem"), str(out_dir / "svid.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip() == f"{out_dir / 'svid.pem'}: OK"
    assert stat.S_IMODE((out_dir / "svid.key").stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificates((out_dir / "svid.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [sid]
    assert_error(
        cli(
            up,
            "svid",
            "mint",
            "--spiffe-id",
            _sid(),
            "--ttl",
            "0s",
            "--out-dir",
            str(tmp_path / "x"),
        ),
        1,
        "ttl must be positive",
    )
    assert_error(
        cli(
            up,
            "svid",
            "mint",
            "--spiffe-id",
            _sid(),
            "--ttl",
            "30h",
            "--out-dir",
            str(tmp_path / "y"),
        ),
        2,
        "above the server maximum",
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _b64u_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def test_bundle_show_spiffe_is_a_valid_spiffe_bundle(up: Up) -> None:
    doc = json.loads(ok(up, "bundle", "show", "--format", "spiffe"))
    assert set(doc) == {"keys", "spiffe_sequence", "spiffe_refresh_hint"}
    assert isinstance(doc["spiffe_sequence"], int) and doc["spiffe_sequence"] >= 1
    assert isinstance(doc["spiffe_refresh_hint"], int) and doc["spiffe_refresh_hint"] > 0
    assert doc["keys"]
    pem_certs = x509.load_pem_x509_certificates(ok(up, "bundle", "show").encode())
    assert {k["use"] for k in doc["keys"]} == {"x509-svid", "jwt-svid"}
    x509_keys = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    for key in x509_keys:
        assert len(key["x5c"]) == 1
        cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0], validate=True))
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        pub = cert.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert key["kty"] == "EC" and key["crv"] == "P-256"
        nums = pub.public_numbers()
        assert (_b64u_int(key["x"]), _b64u_int(key["y"])) == (nums.x, nums.y)
        assert cert in pem_certs
    assert len(x509_keys) == len(pem_certs)

    from spiffe import TrustDomain as SpiffeTrustDomain
    from spiffe.bundle.x509_bundle.x509_bundle import X509Bundle

    parsed = X509Bundle.parse(SpiffeTrustDomain(TD), ok(up, "bundle", "show").encode())
    assert len(parsed.x509_authorities) == len(pem_certs)


def test_authority_rotation_by_hand(up: Up, tmp_path: Path) -> None:
    before = json.loads(ok(up, "authority", "list", "-o", "json"))["authorities"]
    [old] = [a["id"] for a in before if a["state"] == "active"]
    seq = json.loads(ok(up, "bundle", "show", "--format", "spiffe"))["spiffe_sequence"]

    prepared = json.loads(ok(up, "authority", "prepare", "-o", "json"))
    assert prepared["state"] == "prepared"
    spiffe = json.loads(ok(up, "bundle", "show", "--format", "spiffe"))
    assert spiffe["spiffe_sequence"] > seq
    x509_keys = [k for k in spiffe["keys"] if k["use"] == "x509-svid"]
    assert len(x509_keys) == len(before) + 1  # in the bundle before it signs anything
    assert_error(cli(up, "authority", "prepare"), 2, "a prepared CA exists already")

    activated = json.loads(ok(up, "authority", "activate", "-o", "json"))
    assert activated["id"] == prepared["id"] and activated["state"] == "active"
    states = {
        a["id"]: a["state"]
        for a in json.loads(ok(up, "authority", "list", "-o", "json"))["authorities"]
    }
    assert states[old] == "old"

    ok(up, "svid", "mint", "--spiffe-id", _sid(), "--out-dir", str(tmp_path / "new"))
    leaf = x509.load_pem_x509_certificates((tmp_path / "new" / "svid.pem").read_bytes())[0]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None and aki.key_identifier.hex() == prepared["id"]

    assert_error(cli(up, "authority", "taint", prepared["id"]), 2, "is active")
    assert_error(cli(up, "authority", "revoke", old), 2, "not tainted")
    assert json.loads(ok(up, "authority", "taint", old, "-o", "json"))["tainted"] is True
    refused = cli(up, "authority", "revoke", old)  # the SVIDs it signed are still valid
    assert_error(refused, 2, "--force", f"trustd authority blockers {old[:16]}")
    blocking = json.loads(ok(up, "authority", "blockers", old, "-o", "json"))["certificates"]
    assert blocking, "revoke was refused, so something must hold it back"
    for cert in blocking:
        assert {"serial", "spiffe_id", "not_after", "holder", "reissued_by_agents"} <= cert.keys()
    assert len(blocking) == int(refused.stderr.split("trustd: ")[1].split()[0])  # the count said
    table = ok(up, "authority", "blockers", old)
    assert table.splitlines()[0].split("\t")[:4] == ["SERIAL", "SPIFFE_ID", "NOT_AFTER", "HOLDER"]
    assert_error(cli(up, "authority", "blockers", "0" * 40), 2, "no authority with id")
    assert (
        json.loads(ok(up, "authority", "revoke", old, "--force", "-o", "json"))["revoked"] is True
    )
    after = {a["id"] for a in json.loads(ok(up, "authority", "list", "-o", "json"))["authorities"]}
    assert old not in after and prepared["id"] in after
    pem = ok(up, "bundle", "show")
    assert prepared["id"] in {
        c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
        for c in x509.load_pem_x509_certificates(pem.encode())
    }


def test_token_create(up: Up) -> None:
    token = ok(up, "token", "create").strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token)
    doc = json.loads(ok(up, "token", "create", "--ttl", "5m", "-o", "json"))
    assert set(doc) == {"token", "expires_at"} and doc["token"] != token
    assert token not in up.log()


# -- who may use the admin socket -------------------------------------------------------


def test_admin_socket_is_0600(up: Up) -> None:
    st = up.admin_socket.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


def test_data_dir_is_0711_and_all_but_public_is_0700_or_0600(up: Up) -> None:
    d = up.data_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o711
    assert stat.S_IMODE((d / "public").stat().st_mode) == 0o755
    checked = []
    for path in sorted(d.rglob("*")):
        rel = path.relative_to(d)
        if rel.parts[0] == "public":
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        checked.append((str(rel), oct(mode), oct(want)))
    wrong = [c for c in checked if c[1] != c[2]]
    assert not wrong, f"modes that SPEC §3 does not allow (path, mode, wanted): {wrong}"
    assert {"kek", "keys", "trustd.db", "admin.sock"} <= {c[0] for c in checked}


def test_another_uid_cannot_connect_to_the_admin_socket(up: Up) -> None:
    """fork, setuid(1000) in the child, connect: the kernel refuses."""
    pid = os.fork()
    if pid == 0:  # child: no imports, no threads, just the syscalls
        code = 3
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(up.admin_socket))
                code = 0  # connected: the test fails
            except PermissionError:
                code = 13
            finally:
                s.close()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 13, "uid 1000 could connect to the admin socket"


def test_the_cli_run_by_another_uid_is_refused(up: Up) -> None:
    python = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
    result = subprocess.run(
        [python, "-c", "from trustd.cli.main import entrypoint; entrypoint()", "entry", "list"],
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": f"{REPO / 'tests' / 'other_uid_site'}:{SITE_PACKAGES}:{REPO}",
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "TRUSTD_ADMIN_SOCKET": str(up.admin_socket),
        },
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        timeout=120,
        check=False,
    )
    assert_error(result, 2, "permission denied on the admin socket")


# -- operations -------------------------------------------------------------------------


def test_metrics_and_http_health(up: Up, tmp_path: Path) -> None:
    ok(up, "svid", "mint", "--spiffe-id", _sid(), "--out-dir", str(tmp_path / "m"))
    code, body = _get(up.metrics + "/metrics")
    assert code == 200
    for name in (
        "trustd_svids_issued_total",
        "trustd_svids_denied_total",
        "trustd_signing_duration_seconds",
        "trustd_ca_expiry_timestamp_seconds",
    ):
        assert f"# TYPE {name} " in body, name
    assert re.search(r'^trustd_svids_issued_total\{source="mint"\} [1-9]', body, re.M)
    assert re.search(r'^trustd_ca_expiry_timestamp_seconds\{slot="active"\} \d', body, re.M)
    assert _get(up.metrics + "/healthz") == (200, "ok\n")
    assert _get(up.metrics + "/readyz") == (200, "ok\n")


GRPCIO_HEALTH_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
"""


def test_grpc_health_is_serving_on_the_admin_socket(up: Up) -> None:
    # grpcio's health module clashes with grpclib's in one process: it runs in its own.
    result = subprocess.run(
        [sys.executable, "-c", GRPCIO_HEALTH_CHECK, str(up.admin_socket)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "SERVING"


def test_sigterm_exits_0_and_no_secret_reached_the_logs(tmp_path: Path) -> None:
    up = start_up()
    try:
        ok(up, "svid", "mint", "--spiffe-id", _sid(), "--out-dir", str(tmp_path / "m"))
        token = ok(up, "token", "create").strip()
        ok(up, "authority", "prepare")
        ok(up, "authority", "activate")
        kek = (up.data_dir / "kek").read_text().strip()
        sealed = [json.loads(p.read_text())["ciphertext"] for p in (up.data_dir / "keys").iterdir()]
        minted_key = (tmp_path / "m" / "svid.key").read_text()
        key_body = "".join(minted_key.splitlines()[1:-1])
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0
        time.sleep(0.2)  # let the pump threads drain the pipes
        log = up.log()
        assert "server stopped" in log  # the logs really were captured
        for secret in (kek, token, key_body, *sealed):
            assert secret not in log
        assert "PRIVATE KEY" not in log
        assert "Traceback" not in log
        for line in "".join(up.stderr).splitlines():
            json.loads(line)  # not a TTY: every log line is JSON
    finally:
        stop_up(up)


# -- a second instance ------------------------------------------------------------------


def _second_up(up: Up, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRUSTD, "up", "--server-address", "127.0.0.1:0", *args],
        capture_output=True, text=True, env=up.env(), timeout=60, check=False,
    )  # fmt: skip


def test_a_second_up_on_the_same_data_dir_refuses_and_touches_nothing(up: Up) -> None:
    before = sorted(p.name for p in up.data_dir.rglob("*"))
    second = _second_up(up, "--data-dir", str(up.data_dir), "--metrics-address", up.metrics[7:],
                        "--admin-socket", str(up.admin_socket), "--agent-socket", str(up.agent_socket))  # fmt: skip
    assert second.returncode == 1, second
    err = second.stderr
    assert err.startswith("trustd: another trustd is running on the data directory"), err
    assert f"(pid {up.proc.pid})" in err and err.count("\n") == 1 and "Traceback" not in err
    assert second.stdout == ""
    assert up.admin_socket.exists() and up.agent_socket.exists()
    assert sorted(p.name for p in up.data_dir.rglob("*")) == before
    ok(up, "entry", "list")  # the first one still answers


def _ends_with_one_error_line(result: subprocess.CompletedProcess[str], words: str) -> None:
    """Exit 1; the server's own log lines (JSON) may come first, then one plain error line."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("trustd: ") and words in lines[-1], lines[-1]
    assert all(line.startswith("{") for line in lines[:-1]), lines


def test_a_second_up_on_a_live_admin_socket_or_a_busy_port_says_so_in_one_line(
    up: Up, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    second = _second_up(up, "--data-dir", str(tmp_path / "a"), "--metrics-address", "127.0.0.1:0",
                        "--admin-socket", str(up.admin_socket), "--agent-socket", str(tmp_path / "a.sock"))  # fmt: skip
    _ends_with_one_error_line(second, f"another process serves {up.admin_socket}")
    assert up.admin_socket.exists()
    ok(up, "entry", "list")
    busy = up.metrics[len("http://") :]
    third = _second_up(up, "--data-dir", str(tmp_path / "b"), "--metrics-address", busy,
                       "--admin-socket", str(tmp_path / "b-admin.sock"),
                       "--agent-socket", str(tmp_path / "b.sock"))  # fmt: skip
    _ends_with_one_error_line(third, f"cannot listen on the metrics address {busy}")
    assert not (tmp_path / "b-admin.sock").exists()


def test_entry_create_warns_of_an_overlap_and_show_caller_names_the_default(up: Up) -> None:
    first = _sid()
    second = _sid()
    a = ok(up, "entry", "create", "--spiffe-id", first, "--selector", "unix:uid:4242").strip()
    made = cli(up, "entry", "create", "--spiffe-id", second, "--selector", "unix:gid:4243")
    try:
        assert made.returncode == 0, made.stderr
        b = made.stdout.strip()
        warnings = [w for w in made.stderr.splitlines() if a in w]
        assert b and b not in warnings[0] if warnings else True
        assert len(warnings) == 1, made.stderr
        assert warnings[0].startswith("warning: a process matching both this entry (unix:gid:4243)")
        assert f"gets {first} as its default SVID" in warnings[0]
        # a process of uid 4242 whose group is 4243 would match both: which one does it get?
        script = (
            "import os,time; os.setgroups([]); os.setgid(4243); os.setuid(4242); time.sleep(30)"
        )
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            deadline = time.monotonic() + 10
            while True:
                shown = json.loads(ok(up, "entry", "show", "--caller", str(proc.pid), "-o", "json"))
                if shown["caller"]["uid"] == 4242 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert shown["caller"]["uid"] == 4242 and shown["caller"]["gid"] == 4243, shown
            assert shown["default"]["spiffe_id"] == first
            assert [e["spiffe_id"] for e in shown["entries"]] == [first, second]
            table = ok(up, "entry", "show", "--caller", f"pid:{proc.pid}")
            assert f"default SVID: {first} (entry {a})" in table
            assert b in table  # listed too, second
        finally:
            proc.kill()
            proc.wait()
        by_uid = json.loads(ok(up, "entry", "show", "--caller", "uid:4242", "-o", "json"))
        assert by_uid["default"]["spiffe_id"] == first  # no passwd entry: group 4242, not 4243
        assert_error(cli(up, "entry", "show", "--caller", "pid:99999999"), 1, "no process with pid")
        assert_error(cli(up, "entry", "show", "--caller", "uid:x"), 1, "invalid --caller")
        assert_error(cli(up, "entry", "show"), 1, "--caller")
    finally:
        for eid in (a, made.stdout.strip()):
            if eid:
                cli(up, "entry", "delete", eid)


def test_the_readmes_audit_examples_find_refused_admin_actions(up: Up, tmp_path: Path) -> None:
    """`--type 'admin.*' --outcome failure` (as the README writes it) finds a refused
    revoke and a refused rollout abort, each with the admin's user as the actor."""
    import shlex

    assert_error(cli(up, "authority", "revoke", "f" * 40), 2, "no authority with id")
    assert_error(cli(up, "rollout", "abort"), 2, "no rollout has been started")
    readme = (REPO / "README.md").read_text()
    examples = [line.split("#")[0].strip() for line in readme.splitlines()
                if line.startswith("trustd audit export")]  # fmt: skip
    assert len(examples) >= 2, examples
    by_type = next(e for e in examples if "--type 'admin.*' --outcome failure" in e)
    result = subprocess.run([TRUSTD, *shlex.split(by_type)[1:]], capture_output=True, text=True,
                            cwd=tmp_path, env=up.env(), timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("CEF:0|trustd|trustd|") for line in lines)
    assert any("|admin.authority.revoke|" in line for line in lines), lines[-5:]
    assert any("|admin.rollout.abort|" in line for line in lines), lines[-5:]
    assert all("suser=root" in line for line in lines if "|admin.rollout.abort|" in line)
    for example in examples:  # every export example runs as written (files land in tmp_path)
        ran = subprocess.run([TRUSTD, *shlex.split(example)[1:]], capture_output=True, text=True,
                             cwd=tmp_path, env=up.env(), timeout=60)  # fmt: skip
        assert ran.returncode == 0, (example, ran.stderr)


def test_a_copied_audit_log_verifies_offline_with_the_exported_public_keys(
    up: Up, tmp_path: Path
) -> None:
    keys = tmp_path / "audit-keys.json"
    keys.write_text(ok(up, "audit", "keys", "-o", "json"))
    doc = json.loads(keys.read_text())
    assert doc["audit_keys"] and "PRIVATE" not in keys.read_text()
    assert doc["audit_keys"][0]["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    copy = tmp_path / "copy"
    shutil.copytree(up.data_dir / "audit", copy, ignore=shutil.ignore_patterns("audit.lock"))
    report = json.loads(
        ok(up, "audit", "verify", "--offline", str(copy), "--keys", str(keys), "-o", "json")
    )
    assert report["ok"] is True and report["checkpoints_checked"] >= 1, report
    # one event edited in the copy: exit 3 naming its seq
    segment = sorted(copy.glob("audit-*.jsonl"))[0]
    lines = segment.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"outcome":"success"', '"outcome":"failure"', 1)
    segment.write_text("".join(lines))
    seq = json.loads(lines[1])["seq"]
    damaged = cli(up, "audit", "verify", "--offline", str(copy), "--keys", str(keys))
    assert damaged.returncode == 3 and f"seq {seq}" in damaged.stderr, damaged
    # keys that are not the log's: the checkpoints do not verify
    other = {"audit_keys": [{**doc["audit_keys"][0], "public_key_pem": _other_public_pem()}]}
    keys.write_text(json.dumps(other))
    shutil.rmtree(copy)
    shutil.copytree(up.data_dir / "audit", copy, ignore=shutil.ignore_patterns("audit.lock"))
    forged = cli(up, "audit", "verify", "--offline", str(copy), "--keys", str(keys))
    assert forged.returncode == 3 and "invalid signature" in forged.stderr, forged
    assert_error(cli(up, "audit", "verify", "--offline", str(copy)), 1, "--keys")
    assert_error(cli(up, "audit", "verify", str(copy)), 1, "--offline")


def _other_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
