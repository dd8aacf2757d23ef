"""CA slots (prepared, active, old) and their rotation, driven by a fake clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from ca_helpers import CaRig, aki_of, issue, leaf_pem, make_rig, openssl_verify, ski_of
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustd.bundle import Bundle
from trustd.ca.authority import ACTIVE, OLD, PREPARED, AuthorityManager, RotationSchedule
from trustd.ca.errors import AuthorityStateError, NoActiveAuthorityError
from trustd.ca.kms.base import KeyAlgorithm, KeyRef, PublicKey
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.errors import NotFoundError, UnavailableError


def _bundle_ids(bundle: Bundle) -> set[str]:
    return {ski_of(c).hex() for c in bundle.x509_authorities}


def _by_state(rig: CaRig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {PREPARED: [], ACTIVE: [], OLD: []}
    for r in rig.authorities.records():
        out[r.state].append(r.id)
    return out


def _half_life(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2


def _sixth_left(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc - (cert.not_valid_after_utc - cert.not_valid_before_utc) / 6


# -- automatic rotation -----------------------------------------------------------------


def test_first_ca_is_active_self_signed_and_alone_in_the_bundle() -> None:
    rig = make_rig()
    [record] = rig.authorities.records()
    assert record.state == ACTIVE
    assert not record.tainted
    ca = record.certificate
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://trustd.local"]
    assert ca.not_valid_after_utc - rig.clock.now() == dt.timedelta(hours=24)
    assert record.id == ski_of(ca).hex()
    bundle = rig.authorities.bundle()
    assert _bundle_ids(bundle) == {record.id}
    assert bundle.sequence == 1
    assert rig.authorities.rotate() is None


def test_ensure_active_is_idempotent() -> None:
    rig = make_rig()
    first = rig.authorities.ensure_active()
    again = rig.authorities.ensure_active()
    assert first.id == again.id
    assert len(rig.authorities.records()) == 1


def test_full_rotation_cycle_with_overlap_in_the_bundle(tmp_path: Path) -> None:
    rig = make_rig(ca_ttl=dt.timedelta(hours=24))
    am = rig.authorities
    a = am.active_signer()
    sequences = [am.bundle().sequence]

    # Nothing happens before half of A's life.
    rig.clock.set(_half_life(a.certificate) - dt.timedelta(seconds=1))
    assert am.rotate() is None
    assert am.next_rotation_at() == _half_life(a.certificate)

    # At half life: B is prepared and in the bundle, but A still signs.
    rig.clock.set(_half_life(a.certificate))
    assert am.rotate() == "prepared"
    states = _by_state(rig)
    [b_id] = states[PREPARED]
    assert states[ACTIVE] == [a.id]
    assert _bundle_ids(am.bundle()) == {a.id, b_id}
    sequences.append(am.bundle().sequence)
    svid_before = issue(rig)
    assert svid_before.authority_id == a.id
    assert aki_of(svid_before.certificate) == a.key_id
    assert rig.store.list_issued(authority_id=b_id) == []  # B has signed nothing yet
    assert am.rotate() is None  # prepared already, not yet time to activate

    # Just before a sixth of A's life remains, A signs one more SVID (valid 1h).
    activate_at = _sixth_left(a.certificate)
    assert am.next_rotation_at() == activate_at
    rig.clock.set(activate_at - dt.timedelta(seconds=1))
    last_of_a = issue(rig, entry_id="entry-api")
    assert last_of_a.authority_id == a.id

    # At a sixth left: B activates, A becomes old and stays in the bundle.
    rig.clock.set(activate_at)
    assert am.rotate() == "activated"
    assert _by_state(rig) == {PREPARED: [], ACTIVE: [b_id], OLD: [a.id]}
    assert _bundle_ids(am.bundle()) == {a.id, b_id}
    sequences.append(am.bundle().sequence)
    b = am.active_signer()
    assert b.id == b_id
    svid_after = issue(rig)
    assert svid_after.authority_id == b_id
    assert aki_of(svid_after.certificate) == b.key_id

    # Both generations verify against the one bundle while both may be valid.
    bundle_pem = am.bundle().to_pem()
    for svid in (last_of_a, svid_after):
        result = openssl_verify(tmp_path, bundle_pem, leaf_pem(svid), at=rig.clock.now())
        assert result.returncode == 0, result.stderr + result.stdout

    # A stays while what it signed can still be valid...
    rig.clock.set(last_of_a.not_after - dt.timedelta(seconds=1))
    assert am.rotate() is None
    assert a.id in _bundle_ids(am.bundle())

    # ...and leaves once nothing it signed can be; its key is retired.
    rig.clock.set(last_of_a.not_after)
    assert am.rotate() == "pruned"
    assert _by_state(rig) == {PREPARED: [], ACTIVE: [b_id], OLD: []}
    assert _bundle_ids(am.bundle()) == {b_id}
    sequences.append(am.bundle().sequence)
    with pytest.raises(NotFoundError):
        rig.km.public_key(a.key_ref)

    assert sequences == sorted(set(sequences))  # strictly increasing
    assert len(sequences) == 4


def test_the_next_ca_is_prepared_again_at_half_its_life() -> None:
    rig = make_rig(ca_ttl=dt.timedelta(hours=6))
    am = rig.authorities
    events = []
    for _ in range(6 * 6):  # three CA lifetimes, in 30-minute ticks
        rig.clock.advance(dt.timedelta(minutes=30))
        events.append(am.rotate())
    done = [e for e in events if e]
    assert done.count("prepared") >= 2
    assert done.count("activated") >= 2
    assert done[:2] == ["prepared", "activated"]
    active = am.active_signer()
    assert active.not_after > rig.clock.now()  # rotation kept a valid CA active throughout


def test_old_ca_that_signed_nothing_leaves_by_its_own_expiry() -> None:
    rig = make_rig(ca_ttl=dt.timedelta(hours=6))
    am = rig.authorities
    a = am.active_signer()
    rig.clock.advance(dt.timedelta(hours=1))
    am.prepare()
    am.activate()
    assert a.id in _bundle_ids(am.bundle())
    rig.clock.set(a.certificate.not_valid_after_utc)
    events: list[str] = []
    while (event := am.rotate()) is not None and len(events) < 5:  # one step per tick
        events.append(event)
    assert "pruned" in events
    assert a.id not in _bundle_ids(am.bundle())


def test_listeners_hear_every_bundle_change_and_cannot_break_rotation() -> None:
    rig = make_rig()
    seen: list[int] = []

    def broken(_: Bundle) -> None:
        raise RuntimeError("listener bug")

    rig.authorities.subscribe(broken)
    rig.authorities.subscribe(lambda b: seen.append(b.sequence))
    rig.authorities.prepare()
    rig.authorities.activate()
    assert seen == [2, 3]


def test_slots_survive_a_restart(tmp_path: Path) -> None:
    km = MemoryKeyManager()
    rig = make_rig(km=km, store_path=tmp_path / "trustd.db")
    before = rig.authorities.active_signer()
    rig.authorities.prepare()
    rig.store.close()
    again = make_rig(km=km, store_path=tmp_path / "trustd.db", activate=False)
    assert again.authorities.ensure_active().id == before.id
    assert {r.state for r in again.authorities.records()} == {ACTIVE, PREPARED}
    assert again.authorities.bundle().sequence == 2


def test_start_with_only_a_prepared_ca_activates_it() -> None:
    rig = make_rig()
    am = rig.authorities
    prepared = am.prepare()
    records = [r for r in am.records() if r.state != ACTIVE]
    rig.store.replace_authorities(records)  # as if the active slot were lost
    fresh = AuthorityManager(
        store=rig.store,
        key_manager=rig.km,
        trust_domain=am._td,
        schedule=am.schedule,
        clock=rig.clock,
    )
    assert fresh.ensure_active().id == prepared.id
    assert fresh.active_signer().id == prepared.id


# -- rotation by hand -------------------------------------------------------------------


def test_prepare_then_activate_by_hand() -> None:
    rig = make_rig()
    am = rig.authorities
    a = am.active_signer()
    b = am.prepare()
    assert b.state == PREPARED
    assert am.active_signer().id == a.id
    activated = am.activate()
    assert activated.id == b.id and activated.state == ACTIVE
    assert activated.activated_at == rig.clock.now()
    assert am.active_signer().id == b.id
    assert _by_state(rig)[OLD] == [a.id]
    assert am.bundle().sequence == 3


def test_a_second_prepare_is_refused() -> None:
    rig = make_rig()
    rig.authorities.prepare()
    with pytest.raises(AuthorityStateError, match="a prepared CA exists already"):
        rig.authorities.prepare()
    assert len(rig.authorities.records()) == 2


def test_activate_without_a_prepared_ca_is_refused() -> None:
    rig = make_rig()
    with pytest.raises(AuthorityStateError, match="no prepared CA to activate"):
        rig.authorities.activate()


def test_tainting_the_active_ca_is_refused() -> None:
    rig = make_rig()
    a = rig.authorities.active_signer()
    with pytest.raises(AuthorityStateError, match="is active"):
        rig.authorities.taint(a.id)
    assert rig.authorities.bundle().tainted_key_ids == frozenset()


def _rotated(rig: CaRig) -> tuple[str, str]:
    """A signed things, then B took over; returns (a_id, b_id)."""
    a = rig.authorities.active_signer()
    rig.authorities.prepare()
    b = rig.authorities.activate()
    return a.id, b.id


def test_taint_marks_the_old_ca_in_the_bundle() -> None:
    rig = make_rig()
    a_id, b_id = _rotated(rig)
    seq = rig.authorities.bundle().sequence
    tainted = rig.authorities.taint(a_id)
    assert tainted.tainted
    bundle = rig.authorities.bundle()
    assert bundle.tainted_key_ids == frozenset({a_id})
    assert _bundle_ids(bundle) == {a_id, b_id}  # still trusted until revoked
    assert bundle.sequence == seq + 1
    with pytest.raises(AuthorityStateError, match="tainted already"):
        rig.authorities.taint(a_id)


def test_ids_may_be_given_by_a_unique_prefix() -> None:
    rig = make_rig()
    a_id, _ = _rotated(rig)
    assert rig.authorities.taint(a_id[:12]).id == a_id


@pytest.mark.parametrize("bad", ["0" * 40, "nope", "abc"])
def test_unknown_authority_ids_are_not_found(bad: str) -> None:
    rig = make_rig()
    _rotated(rig)
    with pytest.raises(NotFoundError, match="trustd authority list"):
        rig.authorities.taint(bad)
    with pytest.raises(NotFoundError):
        rig.authorities.revoke(bad)


def test_revoking_an_untainted_ca_is_refused() -> None:
    rig = make_rig()
    a_id, _ = _rotated(rig)
    with pytest.raises(AuthorityStateError, match="not tainted: taint it first"):
        rig.authorities.revoke(a_id)


def test_revoking_the_active_ca_is_refused() -> None:
    rig = make_rig()
    _, b_id = _rotated(rig)
    with pytest.raises(AuthorityStateError, match="is active and cannot be revoked"):
        rig.authorities.revoke(b_id)


def test_revoke_waits_for_unrotated_svids_unless_forced(tmp_path: Path) -> None:
    rig = make_rig()
    svid = issue(rig, entry_id="entry-web")
    a_id, b_id = _rotated(rig)
    a_key = next(r.key_ref for r in rig.authorities.records() if r.id == a_id)
    rig.authorities.taint(a_id)
    with pytest.raises(AuthorityStateError, match=r"1 valid certificates .* use --force"):
        rig.authorities.revoke(a_id)
    assert a_id in _bundle_ids(rig.authorities.bundle())

    revoked = rig.authorities.revoke(a_id, force=True)
    assert revoked.revoked
    bundle = rig.authorities.bundle()
    assert _bundle_ids(bundle) == {b_id}
    assert bundle.tainted_key_ids == frozenset()
    assert a_id not in {r.id for r in rig.authorities.records()}
    with pytest.raises(NotFoundError):
        rig.km.public_key(a_key)  # its key is retired too
    result = openssl_verify(tmp_path, bundle.to_pem(), leaf_pem(svid), at=rig.clock.now())
    assert result.returncode != 0  # what A signed is no longer trusted


def test_revoke_needs_no_force_once_every_svid_was_reissued() -> None:
    rig = make_rig()
    issue(rig, entry_id="entry-web")
    issue(rig, entry_id="entry-api", spiffe_id="spiffe://trustd.local/ns/shop/sa/api")
    a_id, b_id = _rotated(rig)
    rig.authorities.taint(a_id)
    rig.clock.advance(dt.timedelta(seconds=5))
    issue(rig, entry_id="entry-web")  # reissued by B
    with pytest.raises(AuthorityStateError, match="1 valid certificates"):
        rig.authorities.revoke(a_id)
    issue(rig, entry_id="entry-api", spiffe_id="spiffe://trustd.local/ns/shop/sa/api")
    assert rig.authorities.revoke(a_id).id == a_id
    assert _bundle_ids(rig.authorities.bundle()) == {b_id}


def test_revoke_needs_no_force_once_what_it_signed_expired() -> None:
    rig = make_rig()
    svid = issue(rig, ttl=dt.timedelta(minutes=10))
    a_id, _ = _rotated(rig)
    rig.authorities.taint(a_id)
    rig.clock.set(svid.not_after)
    assert rig.authorities.revoke(a_id).revoked


def test_a_tainted_prepared_ca_is_never_activated() -> None:
    rig = make_rig()
    prepared = rig.authorities.prepare()
    rig.authorities.taint(prepared.id)
    with pytest.raises(AuthorityStateError, match="tainted"):
        rig.authorities.activate()
    assert rig.authorities.active_signer().id != prepared.id
    # The way out: revoke it (nothing depends on it) and prepare a new one.
    rig.authorities.revoke(prepared.id)
    assert rig.authorities.prepare().id != prepared.id


# -- a failing key manager leaves nothing half-written ----------------------------------


class UnavailableKeyManager(MemoryKeyManager):
    """A KMS that is down for key creation, or whose signing fails after the key exists."""

    def __init__(self, *, fail_create: bool = False, fail_sign: bool = False) -> None:
        super().__init__()
        self.fail_create = fail_create
        self.fail_sign = fail_sign
        self.created: list[KeyRef] = []
        self.retired: list[KeyRef] = []

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        if self.fail_create:
            raise UnavailableError("kms is down: try again later")
        ref = super().create_key(name, algorithm)
        self.created.append(ref)
        return ref

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        if self.fail_sign:
            raise UnavailableError("kms is down: try again later")
        return super().sign(ref, digest)

    def sign_many(self, ref: KeyRef, digests: Sequence[bytes]) -> list[bytes]:
        return [self.sign(ref, d) for d in digests]

    def public_key(self, ref: KeyRef) -> PublicKey:
        return super().public_key(ref)

    def retire(self, ref: KeyRef) -> None:
        self.retired.append(ref)
        super().retire(ref)


def test_key_manager_down_during_prepare_leaves_the_store_untouched() -> None:
    km = UnavailableKeyManager()
    rig = make_rig(km=km)
    before = [(r.id, r.state) for r in rig.authorities.records()]
    seq = rig.authorities.bundle().sequence
    km.fail_create = True
    with pytest.raises(UnavailableError):
        rig.authorities.prepare()
    assert [(r.id, r.state) for r in rig.authorities.records()] == before
    assert rig.authorities.bundle().sequence == seq
    assert rig.authorities.rotate() is None  # and the schedule is unchanged


def test_signing_failure_during_prepare_retires_the_new_key_and_stores_nothing() -> None:
    km = UnavailableKeyManager()
    rig = make_rig(km=km)
    before = [(r.id, r.state) for r in rig.authorities.records()]
    km.fail_sign = True
    with pytest.raises(UnavailableError):
        rig.authorities.prepare()
    assert [(r.id, r.state) for r in rig.authorities.records()] == before
    assert km.retired == [km.created[-1]]
    with pytest.raises(NotFoundError):
        km.public_key(km.created[-1])


def test_automatic_prepare_with_the_key_manager_down_retries_later() -> None:
    km = UnavailableKeyManager()
    rig = make_rig(km=km, ca_ttl=dt.timedelta(hours=4))
    a = rig.authorities.active_signer()
    rig.clock.set(_half_life(a.certificate))
    km.fail_create = True
    with pytest.raises(UnavailableError):
        rig.authorities.rotate()
    assert len(rig.authorities.records()) == 1
    km.fail_create = False
    assert rig.authorities.rotate() == "prepared"


def test_no_key_manager_at_start_means_no_active_ca() -> None:
    km = UnavailableKeyManager(fail_create=True)
    rig = make_rig(km=km, activate=False)
    with pytest.raises(UnavailableError):
        rig.authorities.ensure_active()
    assert rig.authorities.records() == []
    with pytest.raises(NoActiveAuthorityError, match="no active CA"):
        rig.authorities.active_signer()


def test_rotation_schedule_fractions() -> None:
    schedule = RotationSchedule(ca_ttl=dt.timedelta(hours=24))
    assert schedule.prepare_after == dt.timedelta(hours=12)
    assert schedule.activate_before_expiry == dt.timedelta(hours=4)


def test_bundle_pem_and_spiffe_carry_every_non_revoked_ca() -> None:
    rig = make_rig()
    a_id, b_id = _rotated(rig)
    bundle = rig.authorities.bundle()
    certs = x509.load_pem_x509_certificates(bundle.to_pem())
    assert {ski_of(c).hex() for c in certs} == {a_id, b_id}
    doc = bundle.to_spiffe_json()
    assert doc["spiffe_sequence"] == bundle.sequence
    keys = doc["keys"]
    assert isinstance(keys, list) and len(keys) == 2
    for key in keys:
        assert key["use"] == "x509-svid"
        assert len(key["x5c"]) == 1
    parsed = Bundle.from_spiffe(bundle.trust_domain, bundle.to_spiffe())
    assert [c.public_bytes(serialization.Encoding.DER) for c in parsed.x509_authorities] == (
        bundle.to_der_list()
    )
