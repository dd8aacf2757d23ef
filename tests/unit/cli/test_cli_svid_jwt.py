"""`trustd svid mint --jwt` in process, against a real server: the token on stdout, audited
as admin.svid.mint with jwt: true, and one-line errors for what the flags get wrong."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from trustd.audit import AuditEvent, MemoryAuditSink
from trustd.ca.jwt import validate_jwt_svid
from trustd.cli.main import main
from trustd.config import ServerConfig
from trustd.server.app import TrustdServer
from trustd.telemetry import logging as tlog

TOOL = "spiffe://trustd.local/ns/ops/sa/tool"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustdServer]:
    """A real server (memory key manager) on its own event loop in a thread."""
    tmp = tmp_path_factory.mktemp("cli-jwt-server")
    cfg = ServerConfig.model_validate(
        {
            "dataDir": str(tmp / "d"),
            "keyManager": {"kind": "memory"},
            "adminSocket": str(tmp / "admin.sock"),
            "metricsAddress": "127.0.0.1:0",
            "serverAddress": "127.0.0.1:0",
            "jwt": {"ttl": "2m", "maxTtl": "30m"},
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


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def _events(server: TrustdServer) -> list[AuditEvent]:
    assert isinstance(server.audit, MemoryAuditSink)
    return [e for e in server.audit.events if e.type == "admin.svid.mint"]


def test_mint_jwt_prints_only_the_token(
    capsys: pytest.CaptureFixture[str], admin: Path, server: TrustdServer
) -> None:
    code, out, err = run_cli(
        capsys,
        "svid",
        "mint",
        "--jwt",
        "--spiffe-id",
        TOOL,
        "--audience",
        "backend",
        "--audience",
        "reports",
    )
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    claims = _claims(token)
    assert claims["sub"] == TOOL and claims["aud"] == ["backend", "reports"]
    assert claims["exp"] - claims["iat"] == 120  # jwt.ttl of the server
    found = validate_jwt_svid(
        token,
        "reports",
        bundles={server.trust_domain: server.core.bundle()},
        now=server.clock.now(),
    )
    assert str(found.spiffe_id) == TOOL
    event = _events(server)[-1]
    assert event.outcome == "success" and event.details["jwt"] is True
    assert event.details["jti"] == claims["jti"]
    sink = server.audit
    assert isinstance(sink, MemoryAuditSink)
    assert token not in json.dumps(sink.events, default=str)


def test_mint_jwt_json_names_the_token_by_jti_kid_and_expiry(
    capsys: pytest.CaptureFixture[str], admin: Path
) -> None:
    code, out, err = run_cli(
        capsys,
        "svid",
        "mint",
        "--jwt",
        "--spiffe-id",
        TOOL,
        "--audience",
        "backend",
        "--ttl",
        "10m",
        "-o",
        "json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"spiffe_id", "audience", "token", "kid", "jti", "issued_at", "expires_at"}
    claims = _claims(doc["token"])
    assert claims["jti"] == doc["jti"] and claims["exp"] - claims["iat"] == 600


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--jwt"], 1, ["--audience"]),
        (["--jwt", "--audience", "a", "--out-dir", "/tmp/x"], 1, ["--out-dir"]),
        (["--jwt", "--audience", "a", "--dns", "a.example"], 1, ["--dns"]),
        (["--audience", "a"], 1, ["--jwt"]),
        ([], 1, ["--out-dir"]),
        (["--jwt", "--audience", "a", "--ttl", "1h"], 2, ["above the server maximum"]),
        (["--jwt", "--audience", " "], 2, ["audience"]),
    ],
)
def test_mint_jwt_refusals_are_one_line(
    capsys: pytest.CaptureFixture[str], admin: Path, args: list[str], code: int, words: list[str]
) -> None:
    got, out, err = run_cli(capsys, "svid", "mint", "--spiffe-id", TOOL, *args)
    assert got == code, err
    assert out == ""
    assert err.startswith("trustd: ") and err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err, err
