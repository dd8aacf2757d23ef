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

from trustd.audit import Actor, AuditWriteError, verify
from trustd.cli.main import main as cli
from trustd.config import load_server_config
from trustd.errors import UnavailableError
from trustd.registry import CreateEntry, CreateToken
from trustd.server.app import TrustdServer
from trustd.server.auditing import ServerAudit

pytestmark = pytest.mark.integration
ADMIN = Actor.unix(uid=0, addr="admin.sock")


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
        {
            "dataDir": str(tmp / "d"),
            "serverAddress": "127.0.0.1:0",
            "metricsAddress": "127.0.0.1:0",
        },
    )
    return TrustdServer(cfg)


def _events(tmp: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for f in sorted((tmp / "d" / "audit").glob("audit-*.jsonl")):
        lines.extend(json.loads(x) for x in f.read_text().splitlines() if x.strip())
    return lines


def _segments(tmp: Path) -> list[Path]:
    return sorted((tmp / "d" / "audit").glob("audit-*.jsonl"))


async def _cli(*args: str) -> int:
    """``trustd ARGS`` in a thread: the CLI runs its own event loop."""
    return await asyncio.to_thread(cli, list(args))


def _break_writes(srv: TrustdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up: every further write of an audit line fails with ENOSPC."""
    import trustd.audit.log as audit_log

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_log, "write_all", full)


def test_every_action_is_recorded_with_the_kernel_actor(tmp_path: Path) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            entry = srv.registry.entries.create(
                ADMIN,
                CreateEntry(spiffe_id="spiffe://trustd.local/ns/a/sa/b", selectors=("unix:uid:7",)),
            )
            srv.core.mint(ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", csr=_csr(), ttl=None)
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=1))
            ).token
            srv.core.authority_op(ADMIN, "prepare")
            srv.registry.entries.delete(ADMIN, entry.id)
        finally:
            await srv.stop()
        events = _events(tmp_path)
        types = [e["type"] for e in events]
        for expected in ("admin.entry.create", "admin.svid.mint", "admin.token.create", "admin.authority.prepare",
                         "admin.entry.delete"):  # fmt: skip
            assert expected in types, types
        issue = next(
            e for e in events if e["type"] == "admin.svid.mint" and e["actor"]["kind"] == "unix"
        )
        assert issue["actor"] == {"kind": "unix", "id": "root", "uid": 0, "addr": "admin.sock"}
        assert {"serial", "not_after", "authority_id"} <= issue["details"].keys()
        blob = "".join(f.read_text() for f in (tmp_path / "d" / "audit").glob("*.jsonl"))
        assert token not in blob and "PRIVATE KEY" not in blob

    asyncio.run(main())


def test_issuance_fails_when_its_event_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            issued_before = len(srv.store.list_issued())
            _break_writes(srv, monkeypatch)
            with pytest.raises(UnavailableError) as info:
                srv.core.mint(
                    ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", csr=_csr(), ttl=None
                )
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
                srv.registry.entries.create(
                    ADMIN,
                    CreateEntry(
                        spiffe_id="spiffe://trustd.local/ns/a/sa/c", selectors=("unix:uid:8",)
                    ),
                )
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
            srv.registry.entries.create(
                ADMIN,
                CreateEntry(spiffe_id="spiffe://trustd.local/ns/a/sa/s", selectors=("unix:uid:9",)),
            )
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


def test_verify_through_the_server_finds_a_tail_cut_after_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            for n in range(3):
                srv.registry.entries.create(
                    ADMIN,
                    CreateEntry(
                        spiffe_id=f"spiffe://trustd.local/ns/a/sa/t{n}",
                        selectors=(f"unix:uid:{20 + n}",),
                    ),
                )
            assert isinstance(srv.audit, ServerAudit)  # no sink was passed in: the server's own
            log = srv.audit.log
            head = log.head
            assert log.last_checkpoint is not None and log.last_checkpoint.seq <= head.seq - 2
            sock = str(srv.cfg.admin_socket_path)
            capsys.readouterr()
            assert (
                await _cli("audit", "verify", "--offline", "--data-dir", str(tmp_path / "d")) == 1
            )
            assert "running trustd" in capsys.readouterr().err
            assert await _cli("--admin-socket", sock, "audit", "verify") == 0
            assert f"head (seq {head.seq})" in capsys.readouterr().out

            segment = _segments(tmp_path)[-1]
            lines = segment.read_bytes().splitlines(keepends=True)
            segment.write_bytes(b"".join(lines[:-2]))  # the last two events, signed by nothing
            assert verify(segment.parent, key_manager=srv.key_manager).ok  # the files alone
            rc = await _cli("--admin-socket", sock, "audit", "verify")
            err = capsys.readouterr().err
            assert rc == 3, err
            assert f"damaged at seq {head.seq - 1}" in err
            assert f"events {head.seq - 1}..{head.seq} are missing" in err
        finally:
            await srv.stop()

    asyncio.run(main())


def test_offline_verify_finds_a_torn_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/o", selectors=("unix:uid:11",)
                ),
            )
        finally:
            await srv.stop()

    asyncio.run(main())
    data_dir = str(tmp_path / "d")
    assert cli(["audit", "verify", "--offline", "--data-dir", data_dir]) == 0
    last = _events(tmp_path)[-1]["seq"]
    with _segments(tmp_path)[-1].open("ab") as fh:
        fh.write(b'{"id":"0b1e5a7c-2f4d-4e8a-9c3b-5d6e7f8a9b0c","seq":')  # a crash mid-write
    capsys.readouterr()
    rc = cli(["audit", "verify", "--offline", "--data-dir", data_dir])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert f"damaged at seq {last + 1}" in err and "torn line" in err


def test_start_sets_a_torn_last_line_aside_and_the_chain_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torn = b'{"id":"0b1e5a7c-2f4d-4e8a-9c3b-5d6e7f8a9b0c","seq":'
    where: dict[str, Any] = {}

    async def first() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/r", selectors=("unix:uid:12",)
                ),
            )
        finally:
            await srv.stop()
        segment = _segments(tmp_path)[-1]
        where.update(segment=segment, offset=segment.stat().st_size, last=_events(tmp_path)[-1])
        with segment.open("ab") as fh:
            fh.write(torn)

    async def second() -> None:
        srv = _server(tmp_path)
        await srv.start()
        await srv.wait_ready()
        try:
            segment: Path = where["segment"]
            kept = segment.with_name(f"{segment.name}.{where['offset']}.torn")
            assert kept.read_bytes() == torn
            events = _events(tmp_path)  # every line is whole again
            recovered = next(e for e in events if e["type"] == "audit.torn_tail")
            assert recovered["seq"] == where["last"]["seq"] + 1
            assert recovered["prev_hash"] == where["last"]["hash"]
            assert recovered["details"]["segment"] == segment.name
            assert recovered["details"]["offset"] == where["offset"]
            assert recovered["details"]["length"] == len(torn)
            srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/s", selectors=("unix:uid:13",)
                ),
            )
            assert _events(tmp_path)[-1]["type"] == "admin.entry.create"
            sock = str(srv.cfg.admin_socket_path)
            capsys.readouterr()
            rc = await _cli("--admin-socket", sock, "audit", "verify")
            assert rc == 0, capsys.readouterr().err
        finally:
            await srv.stop()

    asyncio.run(first())
    asyncio.run(second())
    assert cli(["audit", "verify", "--offline", "--data-dir", str(tmp_path / "d")]) == 0
