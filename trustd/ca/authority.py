"""CA authority slots and their rotation: prepared, active and old, kept in the store.

SPIRE's schedule: the next CA is prepared at half the active CA's life and
activated when a sixth of that life remains. The bundle carries the prepared
CA before it signs anything, and an old CA until nothing it signed can still
be valid. ``taint`` makes agents reissue what a CA signed; ``revoke`` drops it
from the bundle once nothing valid depends on it.

The CA key lives behind the KeyManager seam; with an upstream authority the
CA certificate is an intermediate signed by it (Vault/OpenBao PKI).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from trustd.bundle import Bundle
from trustd.ca import der
from trustd.ca.errors import (
    AuthorityStateError,
    ConcurrentRotationError,
    NoActiveAuthorityError,
    SigningError,
)
from trustd.ca.issuer import BACKDATE, SigningAuthority, new_serial, verify_signature
from trustd.ca.kms.base import KeyAlgorithm, KeyManager, KeyRef
from trustd.ca.upstream.base import UpstreamAuthority, UpstreamResult

__all__ = ["AuthorityManager", "RotationSchedule", "UpstreamAuthority", "UpstreamResult"]
from trustd.clock import Clock
from trustd.errors import NotFoundError, TrustdError
from trustd.spiffeid import TrustDomain
from trustd.store.base import AuthorityRecord, LedgerRecord, Store

log = structlog.get_logger(__name__)

PREPARED = "prepared"
ACTIVE = "active"
OLD = "old"
# CA keys made in the KMS whose slot is not written yet. A server killed between the
# key's creation and the slot write leaves its key here; any server's rotation tick
# retires it once it is this old and still in no slot.
PENDING_KEYS_DOC = "ca.pending-keys"
PENDING_KEY_GRACE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationSchedule:
    ca_ttl: dt.timedelta  # lifetime of each CA certificate
    key_algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256  # CA key type

    @property
    def prepare_after(self) -> dt.timedelta:
        return self.ca_ttl / 2

    @property
    def activate_before_expiry(self) -> dt.timedelta:
        return self.ca_ttl / 6


def slot_fingerprint(records: Sequence[AuthorityRecord]) -> str:
    """What a rotation step read: ids, states and taint of every slot."""
    return ",".join(sorted(f"{r.id}:{r.state}:{int(r.tainted)}" for r in records))


def authority_id_of(cert: x509.Certificate) -> str:
    pub = cert.public_key()
    return der.key_identifier(pub).hex()  # type: ignore[arg-type]


class AuthorityManager:
    """Owns the slot set. Every change is written to the store whole, in one transaction."""

    def __init__(
        self,
        *,
        store: Store,
        key_manager: KeyManager,
        trust_domain: TrustDomain,
        schedule: RotationSchedule,
        clock: Clock,
        upstream: UpstreamAuthority | None = None,
        on_change: Callable[[str, AuthorityRecord], None] | None = None,
    ) -> None:
        self._store = store
        self._km = key_manager
        self._td = trust_domain
        self.schedule = schedule
        self._clock = clock
        self._upstream = upstream
        self._on_change = on_change
        self._lock = threading.RLock()
        self._signing: SigningAuthority | None = None
        self._listeners: list[Callable[[Bundle], None]] = []
        self._before_commit: Callable[[str, AuthorityRecord], None] | None = None

    # -- reading -------------------------------------------------------------
    def records(self) -> list[AuthorityRecord]:
        return self._store.list_authorities()

    def _by_state(self, records: Sequence[AuthorityRecord], state: str) -> AuthorityRecord | None:
        return next((r for r in records if r.state == state), None)

    def active_signer(self) -> SigningAuthority:
        with self._lock:
            if self._signing is None:
                self._reload_signer()
            if self._signing is None:
                raise NoActiveAuthorityError(
                    "no active CA: the server is starting or its key manager is unavailable"
                )
            return self._signing

    def _reload_signer(self) -> None:
        active = self._by_state(self.records(), ACTIVE)
        if active is None:
            self._signing = None
            return
        signer = SigningAuthority.build(
            authority_id=active.id,
            key_ref=active.key_ref,
            certificate=active.certificate,
            upstream_chain=active.upstream_chain,
        )
        self._signing = signer

    def bundle(self) -> Bundle:
        records = self.records()
        seq = int(self._store.get_doc("bundle.sequence") or "0")
        certs: list[x509.Certificate] = []
        seen: set[bytes] = set()

        def add(c: x509.Certificate) -> None:
            fp = c.fingerprint(c.signature_hash_algorithm or _sha256())
            if fp not in seen:
                seen.add(fp)
                certs.append(c)

        for r in records:
            if r.revoked:
                continue
            if r.upstream_roots:
                for root in r.upstream_roots:
                    add(root)
            else:
                add(r.certificate)
        return Bundle(
            trust_domain=self._td,
            x509_authorities=tuple(certs),
            sequence=seq,
            tainted_key_ids=frozenset(r.id for r in records if r.tainted and not r.revoked),
        )

    def subscribe(self, listener: Callable[[Bundle], None]) -> None:
        self._listeners.append(listener)

    # -- writing -------------------------------------------------------------
    @contextlib.contextmanager
    def audited(self, record: Callable[[str, AuthorityRecord], None]) -> Iterator[None]:
        """Within this block every slot change is first handed to ``record`` (the audit log).

        If ``record`` raises, the change is not written and the error propagates: a
        rotation that cannot be recorded does not happen.
        """
        with self._lock:
            previous, self._before_commit = self._before_commit, record
            try:
                yield
            finally:
                self._before_commit = previous

    def _commit(
        self,
        before: Sequence[AuthorityRecord],
        records: Sequence[AuthorityRecord],
        event: str,
        subject: AuthorityRecord,
    ) -> None:
        """Write the new slot set, only if nobody (another server) changed it since ``before``.

        The audit hook runs inside the store's transaction, after the compare-and-set
        check and with the slots locked: the event it writes records a change that is
        about to be committed, never one that another server's change pre-empted. If the
        hook fails, nothing is written.
        """
        hook = self._before_commit

        def before_write() -> None:
            if hook is not None:
                hook(event, subject)

        if not self._store.replace_authorities(
            records,
            expect=slot_fingerprint(before),
            before_write=before_write,
            bump="bundle.sequence",
        ):
            self._reload_signer()
            raise ConcurrentRotationError(
                "another server changed the CA slots at the same time; nothing was changed "
                "here: look at 'trustd authority list' and retry if still needed"
            )
        self._reload_signer()
        log.info(
            "authority " + event,
            authority_id=subject.id,
            state=subject.state,
            not_after=subject.not_after.isoformat(),
        )
        if self._on_change is not None:
            self._on_change(event, subject)
        bundle = self.bundle()
        for listener in list(self._listeners):
            try:
                listener(bundle)
            except Exception:  # a listener must never break rotation
                log.exception("bundle listener failed")

    def _mint_ca(self, now: dt.datetime) -> AuthorityRecord:
        """Create a key in the KMS and its CA certificate. Nothing is stored here."""
        name = f"ca-{uuid.uuid4().hex[:16]}"
        ref = self._km.create_key(name, self.schedule.key_algorithm)
        try:
            self._pending_add(ref, now)
            pub = self._km.public_key(ref)
            ski = der.key_identifier(pub)
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustd"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"trustd CA {self._td.name}"),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, ski.hex()[:16]),
                ]
            )
            chain: tuple[x509.Certificate, ...] = ()
            roots: tuple[x509.Certificate, ...] = ()
            if self._upstream is None:
                cert = self._self_signed(ref, pub, ski, subject, now)
            else:
                cert, chain, roots = self._from_upstream(ref, pub, subject)
        except BaseException:
            try:
                self._km.retire(ref)
                self._pending_remove(ref)
            except TrustdError:
                log.warning("could not retire an unused CA key", key=name)
            raise
        return AuthorityRecord(
            id=ski.hex(),
            state=PREPARED,
            tainted=False,
            revoked=False,
            key_ref=ref,
            certificate=cert,
            upstream_chain=chain,
            upstream_roots=roots,
            created_at=now,
        )

    def _sign(self, ref: KeyRef, tbs: bytes) -> bytes:
        digest = der.digest(ref.algorithm, tbs)
        sig = self._km.sign(ref, digest)
        verify_signature(self._km.public_key(ref), ref.algorithm, digest, sig)
        return sig

    def _self_signed(
        self, ref: KeyRef, pub: der.PublicKey, ski: bytes, subject: x509.Name, now: dt.datetime
    ) -> x509.Certificate:
        sig_alg = der.signature_algorithm(ref.algorithm)
        name_der = subject.public_bytes()
        tbs = der.TbsCertificate(
            serial=new_serial(),
            signature_algorithm=sig_alg,
            issuer=name_der,
            not_before=(now - BACKDATE).replace(microsecond=0),
            not_after=(now + self.schedule.ca_ttl).replace(microsecond=0),
            subject=name_der,
            spki=der.spki(pub),
            extensions=der.ca_extensions(
                trust_domain_id=str(self._td.id), subject_key_id=ski, authority_key_id=ski
            ),
        ).encode()
        cert = x509.load_der_x509_certificate(
            der.assemble_certificate(tbs, sig_alg, self._sign(ref, tbs))
        )
        cert.verify_directly_issued_by(cert)
        return cert

    def _from_upstream(
        self, ref: KeyRef, pub: der.PublicKey, subject: x509.Name
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        assert self._upstream is not None
        sig_alg = der.signature_algorithm(ref.algorithm)
        cri = der.certification_request_info(
            subject.public_bytes(), der.spki(pub), [str(self._td.id)]
        )
        csr_der = der.assemble_certificate(cri, sig_alg, self._sign(ref, cri))
        csr = x509.load_der_x509_csr(csr_der)
        result = self._upstream.sign_intermediate(
            csr.public_bytes(serialization.Encoding.PEM), self.schedule.ca_ttl
        )
        if not result.chain:
            raise SigningError("the upstream authority returned no certificate")
        cert = result.chain[0]
        if cert.public_key() != pub:
            raise SigningError("the upstream authority signed a different public key")
        return cert, tuple(result.chain[1:]), tuple(result.roots)

    def ensure_active(self) -> AuthorityRecord:
        """At start-up: make sure a CA is active, creating the first one if the store has none."""
        with self._lock:
            records = self.records()
            active = self._by_state(records, ACTIVE)
            if active is not None:
                self._reload_signer()
                return active
            prepared = self._by_state(records, PREPARED)
            if prepared is not None:
                return self.activate()
            now = self._clock.now()
            record = replace(self._mint_ca(now), state=ACTIVE, activated_at=now)
            self._commit_new(records, [*records, record], "activated", record)
            return record

    def prepare(self) -> AuthorityRecord:
        with self._lock:
            records = self.records()
            if self._by_state(records, PREPARED) is not None:
                raise AuthorityStateError(
                    "a prepared CA exists already: activate it with 'trustd authority activate'"
                )
            record = self._mint_ca(self._clock.now())
            self._commit_new(records, [*records, record], "prepared", record)
            return record

    def _commit_new(
        self,
        before: Sequence[AuthorityRecord],
        records: Sequence[AuthorityRecord],
        event: str,
        subject: AuthorityRecord,
    ) -> None:
        """Commit a freshly minted CA; if that fails, its KMS key is retired again."""
        try:
            self._commit(before, records, event, subject)
        except BaseException:
            try:
                self._km.retire(subject.key_ref)
                self._pending_remove(subject.key_ref)
            except TrustdError:
                log.warning("could not retire an unused CA key", key=subject.key_ref.key_id)
            raise
        try:
            self._pending_remove(subject.key_ref)  # in a slot now
        except TrustdError as exc:  # the sweep sees it in a slot and leaves it alone
            log.warning("pending CA key not cleared", key=subject.key_ref.key_id, error=str(exc))

    # -- CA keys made but not (yet) in a slot --------------------------------
    def _pending_update(
        self, change: Callable[[list[dict[str, object]]], list[dict[str, object]]]
    ) -> None:
        for _ in range(20):  # compare-and-set: servers may add theirs at the same time
            raw = self._store.get_doc(PENDING_KEYS_DOC)
            items: list[dict[str, object]] = json.loads(raw) if raw else []
            new = change(items)
            if new == items or self._store.put_doc(
                PENDING_KEYS_DOC, json.dumps(new, sort_keys=True), expect=raw
            ):
                return
        raise ConcurrentRotationError("the pending CA keys kept changing; retry")

    def _pending_add(self, ref: KeyRef, now: dt.datetime) -> None:
        entry: dict[str, object] = {"key": ref.to_json(), "at": int(now.timestamp())}
        self._pending_update(lambda items: [*items, entry])

    def _pending_remove(self, ref: KeyRef) -> None:
        want = ref.to_json()
        self._pending_update(lambda items: [i for i in items if i["key"] != want])

    def sweep_pending_keys(self) -> list[KeyRef]:
        """Retire CA keys a server made and never put in a slot (it was killed in
        between), once older than PENDING_KEY_GRACE; returns what was retired."""
        raw = self._store.get_doc(PENDING_KEYS_DOC)
        if not raw:
            return []
        in_slots = {(r.key_ref.backend, r.key_ref.key_id) for r in self.records()}
        cutoff = self._clock.now() - PENDING_KEY_GRACE
        retired: list[KeyRef] = []
        for item in json.loads(raw):
            ref = KeyRef.from_json(dict(item["key"]))
            if int(item["at"]) > cutoff.timestamp() or ref.backend != self._km.kind:
                continue
            if (ref.backend, ref.key_id) not in in_slots:
                self._km.retire(ref)
                log.warning("retired a CA key no slot holds (its server stopped before "
                            "writing the slot)", key=ref.key_id)  # fmt: skip
                retired.append(ref)
            self._pending_remove(ref)
        return retired

    def activate(self) -> AuthorityRecord:
        with self._lock:
            records = self.records()
            prepared = self._by_state(records, PREPARED)
            if prepared is None:
                raise AuthorityStateError(
                    "no prepared CA to activate: run 'trustd authority prepare' first"
                )
            if prepared.tainted:
                # Everything it signed would be reissued at once: discard it instead.
                raise AuthorityStateError(
                    f"the prepared CA {prepared.id[:16]} is tainted: revoke it with "
                    "'trustd authority revoke' and prepare a new one"
                )
            now = self._clock.now()
            new: list[AuthorityRecord] = []
            activated = replace(prepared, state=ACTIVE, activated_at=now)
            for r in records:
                if r.id == prepared.id:
                    new.append(activated)
                elif r.state == ACTIVE:
                    new.append(replace(r, state=OLD))
                else:
                    new.append(r)
            self._commit(records, new, "activated", activated)
            return activated

    def _find(self, records: Sequence[AuthorityRecord], authority_id: str) -> AuthorityRecord:
        matches = [r for r in records if r.id == authority_id]
        if not matches and len(authority_id) >= 8:
            matches = [r for r in records if r.id.startswith(authority_id.lower())]
        if len(matches) != 1:
            raise NotFoundError(
                f"no authority with id {authority_id!r}: see 'trustd authority list'"
            )
        return matches[0]

    def taint(self, authority_id: str) -> AuthorityRecord:
        with self._lock:
            records = self.records()
            target = self._find(records, authority_id)
            if target.state == ACTIVE:
                raise AuthorityStateError(
                    f"authority {target.id[:16]} is active: prepare and activate a new CA first, "
                    "then taint this one"
                )
            if target.tainted:
                raise AuthorityStateError(f"authority {target.id[:16]} is tainted already")
            tainted = replace(target, tainted=True)
            self._commit(
                records, [tainted if r.id == target.id else r for r in records], "tainted", tainted
            )
            return tainted

    def relied_on(self, target: AuthorityRecord, now: dt.datetime) -> list[LedgerRecord]:
        """The unexpired certificates it signed that no other CA has reissued since
        (for the same SPIFFE ID and entry), oldest expiry first: what holds a revoke back."""
        issued = self._store.list_issued()
        latest_other: dict[tuple[str, str | None], dt.datetime] = {}
        for rec in issued:
            if rec.authority_id != target.id:
                key = (rec.spiffe_id, rec.entry_id)
                if rec.issued_at > latest_other.get(key, dt.datetime.min.replace(tzinfo=dt.UTC)):
                    latest_other[key] = rec.issued_at
        pending = []
        for rec in issued:
            if rec.authority_id != target.id or rec.not_after <= now:
                continue
            later = latest_other.get((rec.spiffe_id, rec.entry_id))
            if later is None or later < rec.issued_at:
                pending.append(rec)
        return sorted(pending, key=lambda r: (r.not_after, r.serial))

    def still_relied_on(self, target: AuthorityRecord, now: dt.datetime) -> int:
        """How many unexpired certificates it signed have not been reissued by another CA."""
        return len(self.relied_on(target, now))

    def blockers(self, authority_id: str) -> list[LedgerRecord]:
        """``relied_on`` for an authority named by id (or a unique prefix of it)."""
        with self._lock:
            return self.relied_on(self._find(self.records(), authority_id), self._clock.now())

    def revoke(self, authority_id: str, *, force: bool = False) -> AuthorityRecord:
        with self._lock:
            records = self.records()
            target = self._find(records, authority_id)
            if target.state == ACTIVE:
                raise AuthorityStateError(
                    f"authority {target.id[:16]} is active and cannot be revoked: "
                    "prepare, activate and taint first"
                )
            if not target.tainted:
                raise AuthorityStateError(
                    f"authority {target.id[:16]} is not tainted: taint it first so agents "
                    "reissue what it signed"
                )
            pending = self.still_relied_on(target, self._clock.now())
            if pending and not force:
                raise AuthorityStateError(
                    f"{pending} valid certificates signed by {target.id[:16]} have not been "
                    f"reissued yet: `trustd authority blockers {target.id[:16]}` lists them; "
                    "wait for agents to rotate them (a hand-minted SVID is never reissued: "
                    "wait for it to expire), or use --force"
                )
            revoked = replace(target, revoked=True)
            self._commit(records, [r for r in records if r.id != target.id], "revoked", revoked)
            try:
                self._km.retire(target.key_ref)
            except TrustdError as exc:
                log.warning(
                    "could not retire a revoked CA key", authority_id=target.id, error=str(exc)
                )
            return revoked

    def rotate(self) -> str | None:
        """One tick of automatic rotation; returns what it did ("prepared", "activated", "pruned")."""
        with self._lock:
            now = self._clock.now()
            records = self.records()
            self._reload_signer()  # another server sharing the store may have rotated
            try:
                self.sweep_pending_keys()
            except TrustdError as exc:  # the next tick tries again
                log.warning("unused CA keys not swept yet", error=str(exc))
            active = self._by_state(records, ACTIVE)
            if active is None:
                self.ensure_active()
                return "activated"
            prepared = self._by_state(records, PREPARED)
            lifetime = active.not_after - active.not_before
            if prepared is None and now >= active.not_before + lifetime / 2:
                self.prepare()
                return "prepared"
            if prepared is not None and now >= active.not_after - lifetime / 6:
                self.activate()
                return "activated"
            # Old CAs leave the bundle once nothing they signed can still be valid.
            for r in records:
                if r.state != OLD:
                    continue
                last = self._store.latest_not_after(r.id)
                if now >= r.not_after or (last is not None and now >= last):
                    self._commit(records, [x for x in records if x.id != r.id], "pruned", r)
                    try:
                        self._km.retire(r.key_ref)
                    except TrustdError as exc:
                        log.warning(
                            "could not retire an old CA key", authority_id=r.id, error=str(exc)
                        )
                    return "pruned"
            return None

    def next_rotation_at(self) -> dt.datetime | None:
        records = self.records()
        active = self._by_state(records, ACTIVE)
        if active is None:
            return None
        lifetime = active.not_after - active.not_before
        if self._by_state(records, PREPARED) is None:
            return active.not_before + lifetime / 2
        return active.not_after - lifetime / 6


def _sha256() -> der.hashes_type:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()
