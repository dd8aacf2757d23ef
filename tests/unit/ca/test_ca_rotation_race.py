"""Two servers sharing one database cannot both rotate: the second write is refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

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
    a = _manager(tmp_path / "db", km, clock)
    b = _manager(tmp_path / "db", km, clock)
    a.ensure_active()

    def b_prepares_meanwhile(event: str, _rec: object) -> None:
        b.prepare()  # the other server commits between a's read and a's write

    with pytest.raises(ConcurrentRotationError, match="another server"), a.audited(b_prepares_meanwhile):
        a.prepare()
    states = sorted(r.state for r in a.records())
    assert states == ["active", "prepared"]  # exactly one prepared CA: b's
    assert len(km._keys) == 2  # a's freshly minted key was retired again


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
