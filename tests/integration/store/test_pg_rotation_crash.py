"""CA rotation with two servers on one real PostgreSQL: a server killed in the middle of
preparing or activating leaves a state the other completes on its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from cryptography import x509

from trustd.ca.authority import (
    ACTIVE,
    OLD,
    PENDING_KEY_GRACE,
    PREPARED,
    AuthorityManager,
    RotationSchedule,
)
from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.errors import UnavailableError
from trustd.spiffeid import TrustDomain
from trustd.store.postgresql import PostgresStore

pytestmark = pytest.mark.integration

TTL = dt.timedelta(hours=24)


class Killed(BaseException):
    """The process died here: nothing after this point runs (no cleanup, no retire)."""


class DyingKeyManager(MemoryKeyManager):
    """Shares the KMS's keys; once armed, the server dies once the KMS made a key, before
    its CA certificate and slot exist."""

    def __init__(self, shared: MemoryKeyManager) -> None:
        super().__init__()
        self._keys = shared._keys
        self.armed = False
        self.created: list[KeyRef] = []

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        ref = super().create_key(name, algorithm)
        self.created.append(ref)
        return ref

    def public_key(self, ref: KeyRef) -> PublicKey:
        if self.armed:  # the key exists; the server dies while making its certificate
            raise Killed
        return super().public_key(ref)

    def retire(self, ref: KeyRef) -> None:
        if self.armed:
            raise Killed  # a dead process retires nothing
        super().retire(ref)


class Pair:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.clock = FakeClock()
        self.kms = MemoryKeyManager()
        self.dying = DyingKeyManager(self.kms)
        self.stores = [PostgresStore(dsn), PostgresStore(dsn)]
        self.a = self.manager(self.stores[0], self.dying)
        self.b = self.manager(self.stores[1], self.kms)

    def manager(self, store: PostgresStore, km: MemoryKeyManager) -> AuthorityManager:
        return AuthorityManager(
            store=store,
            key_manager=km,
            trust_domain=TrustDomain.parse("trustd.local"),
            schedule=RotationSchedule(ca_ttl=TTL),
            clock=self.clock,
        )

    def states(self) -> list[str]:
        return sorted(r.state for r in self.b.records())

    def sequence(self) -> int:
        return int(self.stores[1].get_doc("bundle.sequence") or "0")

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def pair(fresh_db: str) -> Iterator[Pair]:
    p = Pair(fresh_db)
    try:
        yield p
    finally:
        p.close()


def _at(cert: x509.Certificate, fraction: float) -> dt.datetime:
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_before_utc + life * fraction


def test_a_server_killed_between_the_kms_key_and_the_slot_write_changes_no_slot_and_its_key_is_retired(
    pair: Pair,
) -> None:
    active = pair.b.ensure_active()
    seq = pair.sequence()
    pair.clock.set(_at(active.certificate, 0.5))  # time to prepare the next CA
    pair.dying.armed = True
    with pytest.raises(Killed):
        pair.a.rotate()
    orphan = pair.dying.created[-1]
    assert pair.states() == [ACTIVE]  # nothing was written
    assert pair.sequence() == seq
    # The survivor prepares on its own tick; the orphaned key is never referenced.
    assert pair.b.rotate() == "prepared"
    records = pair.b.records()
    assert sorted(r.state for r in records) == [ACTIVE, PREPARED]
    assert orphan.key_id not in {r.key_ref.key_id for r in records}
    assert len(pair.b.bundle().x509_authorities) == 2
    assert pair.sequence() == seq + 1
    # The orphaned key is retired by the survivor's tick once the grace period is over.
    assert orphan.key_id in pair.kms._keys
    assert pair.b.rotate() is None and orphan.key_id in pair.kms._keys  # not yet
    pair.clock.advance(PENDING_KEY_GRACE + dt.timedelta(seconds=1))
    assert pair.b.rotate() is None
    assert orphan.key_id not in pair.kms._keys
    assert all(r.key_ref.key_id in pair.kms._keys for r in pair.b.records())  # slots keep theirs
    assert pair.stores[1].get_doc("ca.pending-keys") == "[]"


def test_a_server_killed_inside_the_activation_leaves_the_old_slots_for_the_other(
    pair: Pair,
) -> None:
    active = pair.b.ensure_active()
    pair.clock.set(_at(active.certificate, 0.5))
    assert pair.b.rotate() == "prepared"
    seq = pair.sequence()
    pair.clock.set(_at(active.certificate, 5 / 6) + dt.timedelta(seconds=1))  # time to activate
    backend = pair.stores[0]._conn().info.backend_pid
    audited: list[str] = []

    def die(event: str, _record: object) -> None:
        # The audit event is written, then the process dies before the commit: its
        # connection goes away with the transaction open (as PostgreSQL sees a SIGKILL).
        audited.append(event)
        with psycopg.connect(pair.dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (backend,))

    with pytest.raises(UnavailableError), pair.a.audited(die):
        pair.a.rotate()
    assert audited == ["activated"]
    assert pair.states() == [ACTIVE, PREPARED]  # the transaction was rolled back whole
    assert pair.sequence() == seq  # and the bundle sequence with it
    assert pair.b.rotate() == "activated"  # the survivor completes the activation
    assert pair.states() == [ACTIVE, OLD]
    assert pair.sequence() == seq + 1
    new_active = next(r for r in pair.b.records() if r.state == ACTIVE)
    assert pair.b.active_signer().id == new_active.id != active.id
    # The killed server, restarted, signs with what the survivor activated.
    restarted = pair.manager(PostgresStore(pair.dsn), pair.kms)
    assert restarted.ensure_active().id == new_active.id
    assert restarted.rotate() is None  # nothing left to do
    assert pair.sequence() == seq + 1


def test_the_bundle_sequence_rises_once_per_change_whichever_server_makes_it(
    pair: Pair,
) -> None:
    pair.a.ensure_active()
    first = pair.sequence()
    pair.b.prepare()
    pair.a.activate()
    assert pair.sequence() == first + 2
    assert pair.stores[0].bump_counter("bundle.sequence") == first + 3
    assert pair.stores[1].bump_counter("bundle.sequence") == first + 4
