"""Every server's audit chain mirrored into one real PostgreSQL: exact lines, checkpoints
and key refs; a killed shipper resumes from what the database holds; each mirrored chain
verifies (and a tampered row is found, naming its server and seq); chains merge by time."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from trustd.audit import Actor, AuditEvent, AuditLog
from trustd.audit.mirror import AuditShipper, merge_by_time, mirror_directory, verify_mirror
from trustd.audit.reader import EventFilter, iter_records
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import SystemClock
from trustd.store.postgresql import PostgresStore

pytestmark = pytest.mark.integration


def _until(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _append(log: AuditLog, n: int, who: str) -> None:
    for i in range(n):
        log.append(
            AuditEvent(
                type="admin.entry.create", actor=Actor.system(), action="create",
                resource=f"entry/{who}-{i}",
            )
        )  # fmt: skip


class Server:
    def __init__(self, root: Path, dsn: str, km: MemoryKeyManager, server_id: str) -> None:
        self.dir = root / server_id
        self.km = km
        self.store = PostgresStore(dsn)
        self.server_id = server_id
        self.log = AuditLog(self.dir, key_manager=km, clock=SystemClock())
        self.shipper = AuditShipper(self.log, self.store, server_id)
        self.shipper.start()

    def lines(self) -> list[str]:
        return [r.raw for r in iter_records(self.dir)]

    def close(self) -> None:
        self.log.close()
        self.shipper.stop()
        self.store.close()


@pytest.fixture
def servers(tmp_path: Path, fresh_db: str) -> Iterator[tuple[Server, Server, str]]:
    km = MemoryKeyManager()  # one KMS for the deployment, as the transit key manager is
    a = Server(tmp_path, fresh_db, km, "srv-aaaaaaaaaaaaaaaa")
    b = Server(tmp_path, fresh_db, km, "srv-bbbbbbbbbbbbbbbb")
    try:
        yield a, b, fresh_db
    finally:
        for s in (a, b):
            with contextlib.suppress(Exception):
                s.close()


def test_each_chain_is_mirrored_exactly_and_verifies(
    servers: tuple[Server, Server, str], tmp_path: Path
) -> None:
    a, b, _ = servers
    _append(a.log, 30, "a")
    _append(b.log, 20, "b")
    a.log.checkpoint()
    _until("a is mirrored", lambda: a.store.audit_mirror_head(a.server_id) == a.log.head.seq)
    _until("b is mirrored", lambda: b.store.audit_mirror_head(b.server_id) == b.log.head.seq)
    _until(
        "a's checkpoint is mirrored",
        lambda: bool(a.store.audit_mirror_checkpoint_lines(a.server_id)),
    )
    assert a.store.audit_mirror_servers() == [a.server_id, b.server_id]
    for s in (a, b):
        d = tmp_path / f"copy-{s.server_id}"
        assert mirror_directory(b.store, s.server_id, d)
        assert [r.raw for r in iter_records(d)] == s.lines()  # the exact lines
        assert json.loads((d / "audit-key.json").read_text()) == json.loads(
            (s.dir / "audit-key.json").read_text()
        )
        report = verify_mirror(
            b.store, s.server_id, tmp_path / f"v-{s.server_id}", key_manager=s.km
        )
        assert report.ok, report
        assert report.last_seq == s.log.head.seq
    # Both chains in one export, in time order.
    merged = list(
        merge_by_time(
            [iter_records(tmp_path / f"copy-{s.server_id}", where=EventFilter()) for s in (a, b)]
        )
    )
    assert len(merged) == a.log.head.seq + b.log.head.seq
    assert [r.time for r in merged] == sorted(r.time for r in merged)


def test_a_tampered_mirror_row_is_found_naming_the_seq(
    servers: tuple[Server, Server, str], tmp_path: Path
) -> None:
    a, _, dsn = servers
    _append(a.log, 10, "a")
    a.log.checkpoint()
    _until("a is mirrored", lambda: a.store.audit_mirror_head(a.server_id) == a.log.head.seq)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE audit_events SET line = replace(line, 'entry/a-4', 'entry/a-X') "
            "WHERE server_id = %s AND seq = 5",
            (a.server_id,),
        )
    report = verify_mirror(a.store, a.server_id, tmp_path / "v", key_manager=a.km)
    assert not report.ok and report.first_bad_seq == 5


def test_a_killed_shipper_resumes_from_what_the_database_holds(
    servers: tuple[Server, Server, str], tmp_path: Path
) -> None:
    a, _, dsn = servers
    _append(a.log, 5, "a")
    _until("a is mirrored", lambda: a.store.audit_mirror_head(a.server_id) == 5)
    a.shipper.stop()  # the shipper is gone; the log goes on
    _append(a.log, 7, "a")
    assert a.store.audit_mirror_head(a.server_id) == 5
    # Some rows are lost in the database meanwhile too: it resumes from its newest seq.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_events WHERE server_id = %s AND seq > 3", (a.server_id,))
    again = AuditShipper(a.log, PostgresStore(dsn), a.server_id)
    again.start()
    try:
        _until("a caught up", lambda: a.store.audit_mirror_head(a.server_id) == a.log.head.seq)
        d = tmp_path / "copy"
        mirror_directory(a.store, a.server_id, d)
        assert [r.raw for r in iter_records(d)] == a.lines()
    finally:
        again.stop()
