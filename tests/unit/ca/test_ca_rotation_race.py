"""Two servers sharing one database cannot both rotate: the second write is refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from ca_fakes import RacingKeyManager

from trustd.audit.errors import AuditWriteError
from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.errors import ConcurrentRotationError
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.spiffeid import TrustDomain
from trustd.store.sqlite import SqliteStore


def _manager(path: Path, km: MemoryKeyManager, clock: FakeClock) -> AuthorityManager:
    return AuthorityManager(
        store=SqliteStore(path),
        key_manager=km,
        trust_domain=TrustDomain.parse("trustd.local"),
        schedule=RotationSchedule(ca_ttl=dt.timedelta(hours=24)),
        clock=clock,
    )


def test_a_rotation_racing_another_server_is_refused_and_leaves_no_key(tmp_path: Path) -> None:
    km, clock = MemoryKeyManager(), FakeClock()
    racing = RacingKeyManager(km)
    a = _manager(tmp_path / "db", racing, clock)
    b = _manager(tmp_path / "db", km, clock)
    a.ensure_active()
    racing.meanwhile = b.prepare
    recorded: list[tuple[str, str]] = []
    with (
        pytest.raises(ConcurrentRotationError, match="another server"),
        a.audited(lambda event, rec: recorded.append((event, rec.id))),
    ):
        a.prepare()
    states = sorted(r.state for r in a.records())
    assert states == ["active", "prepared"]  # exactly one prepared CA: b's
    assert len(km._keys) == 2  # a's freshly minted key was retired again
    assert recorded == []  # the loser audited no success for a rotation that did not happen


def test_the_audit_event_is_written_inside_the_compare_and_set(tmp_path: Path) -> None:
    """The winner's event is written once the check passed, with the slots still locked:
    another server's write waits until the commit, and a failing audit writes nothing."""
    km, clock = MemoryKeyManager(), FakeClock()
    a = _manager(tmp_path / "db", km, clock)
    a.ensure_active()
    seen: list[list[str]] = []

    def record(event: str, rec: object) -> None:
        seen.append(sorted(r.state for r in a.records()))  # the slots as they were before

    with a.audited(record):
        a.prepare()
    assert seen == [["active"]]
    assert sorted(r.state for r in a.records()) == ["active", "prepared"]

    def refuse(event: str, rec: object) -> None:
        raise AuditWriteError("the audit log cannot be written")

    with pytest.raises(AuditWriteError), a.audited(refuse):
        a.activate()
    assert sorted(r.state for r in a.records()) == ["active", "prepared"]  # nothing changed


def test_the_server_that_lost_sees_the_winner(tmp_path: Path) -> None:
    km, clock = MemoryKeyManager(), FakeClock()
    a = _manager(tmp_path / "db", km, clock)
    b = _manager(tmp_path / "db", km, clock)
    a.ensure_active()
    b.prepare()
    # a read nothing stale: its own prepare is refused for the ordinary reason
    with pytest.raises(Exception, match="prepared CA exists already"):
        a.prepare()
    activated = a.activate()
    b.rotate()  # the periodic tick (every 10 s) picks up another server's activation
    assert b.active_signer().id == activated.id
