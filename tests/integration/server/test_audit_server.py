"""The audit log as the server uses it: every action recorded, fail closed, no secrets, syslog."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.audit import AuditWriteError
from trustd.config import load_server_config
from trustd.errors import UnavailableError
from trustd.server.app import TrustdServer
from trustd.server.audit_hook import Actor

pytestmark = pytest.mark.integration
ADMIN = Actor.unix(uid=0, path="/usr/bin/trustd", addr="admin.sock")


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _server(tmp: Path, extra: str = "") -> TrustdServer:
    cfg_file = tmp / "server.yaml"
    cfg_file.write_text(extra or "{}\n")
    cfg = load_server_config(
        cfg_file,
        {"dataDir": str(tmp / "d"), "serverAddress": "127.0.0.1:0", "metricsAddress": "127.0.0.1:0"},
    )
    return TrustdServer(cfg)


def _events(tmp: Path) -> list[dict[str, Any]]:
    lines = []
    for f in sorted((tmp / "d" / "audit").glob("audit-*.jsonl")):
        lines.extend(json.loads(x) for x in f.read_text().splitlines() if x.strip())
    return lines


def _break_writes(srv: TrustdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up: every further write of an audit line fails with ENOSPC."""
    import trustd.audit.log as audit_log

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_log, "_write_all", full)


def test_every_action_is_recorded_with_the_kernel_actor(tmp_path: Path) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            entry = srv.core.create_entry(ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", selectors=["unix:uid:7"])
            srv.core.mint(ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", csr=_csr(), ttl=None)
            token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=1))
            srv.core.authority_op(ADMIN, "prepare")
            srv.core.delete_entry(ADMIN, entry.id)
        finally:
            await srv.stop()
        events = _events(tmp_path)
        types = [e["type"] for e in events]
        for expected in ("admin.entry.create", "svid.issue", "admin.token.create", "authority.prepare", "admin.entry.delete"):
            assert expected in types, types
        issue = next(e for e in events if e["type"] == "svid.issue" and e["actor"]["kind"] == "unix")
        assert issue["actor"] == {"kind": "unix", "id": "/usr/bin/trustd", "uid": 0, "addr": "admin.sock"}
        assert {"serial", "not_after", "authority_id"} <= issue["details"].keys()
        blob = "".join(f.read_text() for f in (tmp_path / "d" / "audit").glob("*.jsonl"))
        assert token not in blob and "PRIVATE KEY" not in blob

    asyncio.run(main())


def test_issuance_fails_when_its_event_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            issued_before = len(srv.store.list_issued())
            _break_writes(srv, monkeypatch)
            with pytest.raises(UnavailableError) as info:
                srv.core.mint(ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", csr=_csr(), ttl=None)
            assert isinstance(info.value, AuditWriteError)
            assert "space" in str(info.value).lower()
            assert len(srv.store.list_issued()) == issued_before  # nothing was issued unrecorded
        finally:
            monkeypatch.undo()
            await srv.stop()

    asyncio.run(main())


def test_admin_action_fails_and_leaves_nothing_when_audit_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            _break_writes(srv, monkeypatch)
            with pytest.raises(UnavailableError):
                srv.core.create_entry(ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/c", selectors=["unix:uid:8"])
            assert srv.store.list_entries() == []
            with pytest.raises(UnavailableError):
                srv.core.authority_op(ADMIN, "prepare")
            assert [r.state for r in srv.store.list_authorities()] == ["active"]
        finally:
            monkeypatch.undo()
            await srv.stop()

    asyncio.run(main())


def test_syslog_sink_from_config_forwards_events(tmp_path: Path) -> None:
    received: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            while chunk := conn.recv(65536):
                received.append(chunk)
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()

    async def main() -> None:
        srv = _server(tmp_path, f"audit:\n  syslog: {{address: '127.0.0.1:{port}'}}\n")
        await srv.start()
        await srv.wait_ready()
        try:
            srv.core.create_entry(ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/s", selectors=["unix:uid:9"])
            for _ in range(100):
                if b"admin.entry.create" in b"".join(received):
                    break
                await asyncio.sleep(0.1)
        finally:
            await srv.stop()

    asyncio.run(main())
    listener.close()
    data = b"".join(received)
    assert b"admin.entry.create" in data
    assert data.split(b" ", 1)[0].isdigit()  # octet-counting framing (RFC 6587)
    assert os.path.exists(tmp_path / "d" / "audit")
