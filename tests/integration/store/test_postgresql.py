"""The PostgreSQL store against a real server: same behaviour as SQLite, shared by servers."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import replace

import pytest

from trustd.entries import RegistrationEntry
from trustd.errors import AlreadyExistsError, NotFoundError, UnavailableError
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.base import FederationRecord, JoinTokenRecord
from trustd.store.migrations import MIGRATIONS
from trustd.store.postgresql import PostgresStore

pytestmark = pytest.mark.integration


def _entry(path: str = "/ns/a/sa/b", uid: int = 1000) -> RegistrationEntry:
    return RegistrationEntry(
        id=str(uuid.uuid4()),
        spiffe_id=SpiffeId.parse(f"spiffe://trustd.local{path}"),
        selectors=(Selector.parse(f"unix:uid:{uid}"),),
    )


def test_migrations_are_versioned_and_idempotent(fresh_db: str) -> None:
    a = PostgresStore(fresh_db)
    b = PostgresStore(fresh_db)  # a second server starting on the same database
    assert a.schema_version() == b.schema_version() == len(MIGRATIONS)
    a.close()
    b.close()


def test_entries_are_shared_between_servers(fresh_db: str) -> None:
    a, b = PostgresStore(fresh_db), PostgresStore(fresh_db)
    e = a.create_entry(_entry())
    assert b.get_entry(e.id).spiffe_id == e.spiffe_id
    with pytest.raises(AlreadyExistsError):
        b.create_entry(_entry())
    head, changes = b.entry_changes_since(0)
    assert head == 1 and changes[0].entry_id == e.id
    a.delete_entry(e.id)
    with pytest.raises(NotFoundError):
        b.get_entry(e.id)
    _, changes = b.entry_changes_since(head)
    assert changes[0].entry is None


def test_join_token_single_use_across_connections(fresh_db: str) -> None:
    stores = [PostgresStore(fresh_db) for _ in range(4)]
    now = dt.datetime.now(dt.UTC)
    stores[0].create_token(
        JoinTokenRecord(token_hash="h", expires_at=now + dt.timedelta(minutes=5), created_at=now)
    )
    barrier = threading.Barrier(4)
    wins: list[bool] = []

    def race(i: int) -> None:
        barrier.wait()
        wins.append(stores[i].consume_token("h", f"agent{i}", now))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]


def test_database_down_is_unavailable_not_a_crash() -> None:
    with pytest.raises(UnavailableError, match="cannot connect to postgresql") as info:
        PostgresStore("postgresql://trustd:s3cret-pw@127.0.0.1:1/x", connect_timeout=1)
    assert "s3cret-pw" not in str(info.value)


def test_two_servers_cannot_both_rotate(fresh_db: str) -> None:
    from ca_fakes import RacingKeyManager

    from trustd.ca.authority import AuthorityManager, RotationSchedule
    from trustd.ca.errors import ConcurrentRotationError
    from trustd.ca.kms.memory import MemoryKeyManager
    from trustd.clock import FakeClock
    from trustd.spiffeid import TrustDomain

    km, clock = MemoryKeyManager(), FakeClock()
    racing = RacingKeyManager(km)
    a, b = (
        AuthorityManager(
            store=PostgresStore(fresh_db),
            key_manager=manager,
            trust_domain=TrustDomain.parse("trustd.local"),
            schedule=RotationSchedule(ca_ttl=dt.timedelta(hours=24)),
            clock=clock,
        )
        for manager in (racing, km)
    )
    a.ensure_active()
    racing.meanwhile = b.prepare  # b commits between a's read of the slots and a's write
    recorded: list[str] = []
    with (
        pytest.raises(ConcurrentRotationError),
        a.audited(lambda event, rec: recorded.append(event)),
    ):
        a.prepare()
    assert sorted(r.state for r in b.records()) == ["active", "prepared"]
    assert recorded == []  # no success audited for the rotation that lost


def _federation(sequence: int) -> FederationRecord:
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    return FederationRecord(
        trust_domain="partner.example",
        endpoint_url="https://partner.example:8443/",
        profile="https_spiffe",
        endpoint_spiffe_id="spiffe://partner.example/trustd/server",
        bundle='{"keys": []}',
        sequence=sequence,
        refreshed_at=None,
        next_refresh_at=now,
        last_error="",
        created_at=now,
    )


def test_federations_and_federated_entries_are_shared_between_servers(fresh_db: str) -> None:
    a, b = PostgresStore(fresh_db), PostgresStore(fresh_db)
    a.create_federation(_federation(3))
    with pytest.raises(AlreadyExistsError):
        b.create_federation(_federation(3))
    assert [f.sequence for f in b.list_federations()] == [3]
    # a refresh only moves the sequence it read: the slower server's write is refused
    assert a.update_federation(_federation(5), expect_sequence=3)
    assert not b.update_federation(_federation(4), expect_sequence=3)
    assert b.get_federation("partner.example").sequence == 5
    entry = replace(_entry(), federates_with=(TrustDomain.parse("partner.example"),))
    a.create_entry(entry)
    assert b.get_entry(entry.id).federates_with == (TrustDomain.parse("partner.example"),)
    b.delete_federation("partner.example")
    with pytest.raises(NotFoundError):
        a.get_federation("partner.example")
    a.close()
    b.close()
