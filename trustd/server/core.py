"""The server's issuance and authorities, independent of how they are reached.

X.509- and JWT-SVIDs (for agents' entries, admins' mints and trustd's own
identities), the trust bundle, manual and automatic CA rotation, readiness.
Registration entries, join tokens and agents are the registry's
(``trustd.registry``), which calls in here to issue. Every operation is
synchronous and may block on the store or the key manager; async edges run them
in a bounded thread pool. Each records its audit events through the one audit
API (``AuditSink.append_many``) and fails if they cannot be written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog

from trustd.audit import AuditEvent, AuditSink, record_failure
from trustd.audit import sink as audit_sink
from trustd.audit.events import Actor
from trustd.bundle import Bundle
from trustd.ca.authority import AuthorityManager
from trustd.ca.errors import InvalidCsrError, InvalidTtlError, ReservedIdError
from trustd.ca.issuer import (
    IssuedSvid,
    SvidTemplate,
    X509Issuer,
    check_not_reserved,
    csr_spki,
    is_reserved,
    load_csr,
)
from trustd.ca.jwt import JwtKeyRecord, JwtKeyring, JwtSvid, check_audience
from trustd.ca.kms.base import KeyManager
from trustd.clock import Clock
from trustd.dnsnames import check_dns_name
from trustd.entries import RegistrationEntry, SvidRequest
from trustd.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TrustdError,
    UnavailableError,
)
from trustd.registry.entries import workload_id
from trustd.server.changes import ChangeHub
from trustd.spiffeid import TrustDomain
from trustd.store.base import AuthorityRecord, LedgerRecord, Store
from trustd.telemetry.metrics import ServerMetrics

log = structlog.get_logger(__name__)

MAX_TOKEN_TTL = dt.timedelta(days=1)
DEFAULT_JWT_TTL = dt.timedelta(minutes=5)
MAX_JWT_TTL = dt.timedelta(hours=1)


class ServerCore:
    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        store: Store,
        key_manager: KeyManager,
        authorities: AuthorityManager,
        issuer: X509Issuer,
        audit: AuditSink,
        clock: Clock,
        metrics: ServerMetrics,
        hub: ChangeHub | None = None,
        jwt_keys: JwtKeyring | None = None,
        jwt_ttl: dt.timedelta = DEFAULT_JWT_TTL,
        jwt_max_ttl: dt.timedelta = MAX_JWT_TTL,
    ) -> None:
        self.hub = hub or ChangeHub()
        self.trust_domain = trust_domain
        self.store = store
        self.key_manager = key_manager
        self.authorities = authorities
        self.issuer = issuer
        self.audit = audit  # the one audit API: append_many, check
        self.clock = clock
        self.metrics = metrics
        self.jwt_keys = jwt_keys or JwtKeyring(
            store=store, key_manager=key_manager, trust_domain=trust_domain, clock=clock
        )
        self.jwt_ttl = jwt_ttl  # of the JWT-SVIDs agents ask for
        self.jwt_max_ttl = jwt_max_ttl  # the most an admin mint may ask for

    def refresh_metrics(self) -> None:
        try:
            records = self.authorities.records()
        except TrustdError:
            return
        for slot in ("prepared", "active", "old"):
            times = [r.not_after.timestamp() for r in records if r.state == slot]
            if times:
                self.metrics.ca_expiry.labels(slot=slot).set(min(times))
            else:
                with contextlib.suppress(KeyError):  # no CA in that slot, and none before
                    self.metrics.ca_expiry.remove(slot)
        self.metrics.entries.set(len(self.store.list_entries()))

    # -- issuance --------------------------------------------------------------
    def issue_svids(
        self, actor: Actor, requests: Sequence[SvidRequest], *, source: str = "agent"
    ) -> list[IssuedSvid | TrustdError]:
        """Issue one SVID per request, signing them in one key-manager batch.

        A bad request fails alone (its slot holds the error); a KMS, store or
        audit failure fails them all with UnavailableError. An ID under the
        reserved ``/trustd/`` path is such a bad request, whatever entry it came
        from: only ``issue_internal_svid`` issues those.
        """
        return self._issue(actor, requests, source=source, internal=False)

    def issue_internal_svid(self, actor: Actor, request: SvidRequest, *, source: str) -> IssuedSvid:
        """The server's own SVID, or an agent's at join and renewal: IDs under ``/trustd/``.

        Only the server's own code calls this, with an ID it built itself;
        nothing an admin or an agent names reaches it.
        """
        if not is_reserved(request.entry.spiffe_id):
            raise InvalidArgumentError(
                f"spiffe id {request.entry.spiffe_id} is not one of trustd's own: "
                "issue it with issue_svids"
            )
        [result] = self._issue(actor, [request], source=source, internal=True)
        if isinstance(result, TrustdError):
            raise result
        return result

    def _issue(
        self, actor: Actor, requests: Sequence[SvidRequest], *, source: str, internal: bool
    ) -> list[IssuedSvid | TrustdError]:
        started = time.perf_counter()
        now = self.clock.now()
        signer = self.authorities.active_signer()
        templates: list[SvidTemplate] = []
        slots: list[IssuedSvid | TrustdError | None] = []
        for req in requests:
            try:
                if not internal:
                    check_not_reserved(req.entry.spiffe_id)
                csr, pub = load_csr(req.csr)
                nb, na = self.issuer.validity(signer, now, req.entry.ttl)
                templates.append(
                    SvidTemplate(
                        spiffe_id=req.entry.spiffe_id,
                        public_key=pub,
                        not_before=nb,
                        not_after=na,
                        dns_names=req.entry.dns_names,
                        spki=csr_spki(csr),
                    )
                )
                slots.append(None)
            except (ReservedIdError, InvalidCsrError, InvalidTtlError) as exc:
                reason = (
                    "reserved_id"
                    if isinstance(exc, ReservedIdError)
                    else "invalid_csr"
                    if isinstance(exc, InvalidCsrError)
                    else "invalid_ttl"
                )
                self.metrics.svids_denied.labels(reason=reason).inc()
                audit_sink.record(
                    self.audit,
                    audit_sink.event(
                        "admin.svid.mint" if source == "mint" else "svid.deny",
                        actor,
                        "mint" if source == "mint" else "issue",
                        str(req.entry.spiffe_id),
                        "failure",
                        str(exc),
                        {"entry_id": req.entry.id},
                    ),
                )
                slots.append(exc)
        issued: list[IssuedSvid] = []
        if templates:
            try:
                issued = self.issuer.sign(signer, templates, allow_reserved=internal)
            except TrustdError as exc:
                self.metrics.svids_denied.labels(reason="unavailable").inc(len(templates))
                if source == "mint":
                    failed = audit_sink.event(
                        "admin.svid.mint", actor, "mint", "batch", "failure", str(exc)
                    )
                else:
                    failed = audit_sink.event(
                        "svid.deny", actor, "issue", "batch", "failure", str(exc)
                    )
                record_failure(self.audit, failed)
                raise
        it = iter(issued)
        out: list[IssuedSvid | TrustdError] = []
        ledger: list[LedgerRecord] = []
        events: list[AuditEvent] = []
        for req, slot in zip(requests, slots, strict=True):
            if slot is not None:
                out.append(slot)
                continue
            svid = next(it)
            events.append(
                AuditEvent(
                    type="admin.svid.mint" if source == "mint" else "svid.issue",
                    actor=actor,
                    action="mint" if source == "mint" else "issue",
                    resource=str(svid.spiffe_id),
                    details={
                        "serial": svid.serial,
                        "not_after": svid.not_after.isoformat().replace("+00:00", "Z"),
                        "authority_id": svid.authority_id,
                        "entry_id": req.entry.id,
                    },
                )
            )
            ledger.append(
                LedgerRecord(
                    serial=svid.serial,
                    spiffe_id=str(svid.spiffe_id),
                    not_after=svid.not_after,
                    authority_id=svid.authority_id,
                    caller=actor.id,
                    entry_id=req.entry.id or None,
                    issued_at=now,
                )
            )
            out.append(replace(svid, entry_id=req.entry.id))
        # Recorded before anything is handed out; a batch is one write of the audit log.
        if events:
            self.audit.append_many(events)
        if ledger:
            self.store.record_issued_many(ledger)
            self.metrics.svids_issued.labels(source=source).inc(len(ledger))
        self.metrics.signing_seconds.observe(time.perf_counter() - started)
        return out

    def mint(
        self,
        actor: Actor,
        *,
        spiffe_id: str,
        csr: bytes,
        ttl: dt.timedelta | None,
        dns_names: Sequence[str] = (),
    ) -> IssuedSvid:
        """An admin asks for an SVID directly (SPIRE's ``x509 mint``); the key stays with the CLI."""
        try:
            sid = workload_id(spiffe_id, self.trust_domain)
            dns = tuple(check_dns_name(d) for d in dns_names)
        except TrustdError as exc:
            self.metrics.svids_denied.labels(reason="invalid_request").inc()
            record_failure(
                self.audit,
                audit_sink.event(
                    "admin.svid.mint", actor, "mint", spiffe_id[:200], "failure", str(exc)
                ),
            )
            raise
        entry = RegistrationEntry(
            id="", spiffe_id=sid, selectors=(), ttl=ttl, dns_names=dns, created_at=self.clock.now()
        )
        [result] = self.issue_svids(actor, [SvidRequest(entry=entry, csr=csr)], source="mint")
        if isinstance(result, TrustdError):
            raise result
        return result

    def issue_jwt_svid(
        self,
        actor: Actor,
        *,
        entry: RegistrationEntry,
        audience: Sequence[str],
        ttl: dt.timedelta | None = None,
        source: str = "agent",
    ) -> JwtSvid:
        """Sign a JWT-SVID for ``entry``'s SPIFFE ID (the identity comes from the entry only).

        Audited before it is handed out (``svid.issue`` or ``admin.svid.mint``, with
        ``jwt: true``): the event names the token by its ``jti``, ``kid`` and ``exp``,
        never holds the token itself.
        """
        mint = source == "mint"
        event_type = "admin.svid.mint" if mint else "svid.issue"
        action = "mint" if mint else "issue"
        sid = entry.spiffe_id
        try:
            check_not_reserved(sid)
            aud = check_audience(audience)
            if ttl is not None and ttl <= dt.timedelta(0):
                raise InvalidTtlError("ttl must be positive, e.g. 5m")
            if ttl is not None and ttl > self.jwt_max_ttl:
                raise InvalidTtlError(
                    f"ttl {ttl} is above the server maximum for jwt-svids {self.jwt_max_ttl}"
                )
            self.audit.check()
            svid = self.jwt_keys.sign(
                spiffe_id=sid, audience=aud, ttl=ttl or self.jwt_ttl, now=self.clock.now()
            )
        except TrustdError as exc:
            self.metrics.svids_denied.labels(reason=_jwt_deny_reason(exc)).inc()
            denied = event_type if mint else "svid.deny"
            details = {"jwt": True} if mint else {"jwt": True, "entry_id": entry.id}
            record_failure(
                self.audit,
                audit_sink.event(denied, actor, action, str(sid), "failure", str(exc), details),
            )
            raise
        issued: dict[str, Any] = {
            "jwt": True,
            "jti": svid.jti,
            "kid": svid.key_id,
            "exp": svid.expires_at.isoformat().replace("+00:00", "Z"),
        }
        if not mint:
            issued["entry_id"] = entry.id
        audit_sink.record(
            self.audit, audit_sink.event(event_type, actor, action, str(sid), details=issued)
        )
        log.info(
            "jwt-svid issued",
            spiffe_id=str(sid),
            jti=svid.jti,
            kid=svid.key_id,
            exp=svid.expires_at.isoformat(),
            source=source,
        )
        return svid

    def mint_jwt(
        self,
        actor: Actor,
        *,
        spiffe_id: str,
        audience: Sequence[str],
        ttl: dt.timedelta | None,
    ) -> JwtSvid:
        """An admin asks for a JWT-SVID directly (SPIRE's ``jwt mint``)."""
        try:
            sid = workload_id(spiffe_id, self.trust_domain)
        except TrustdError as exc:
            self.metrics.svids_denied.labels(reason="invalid_request").inc()
            record_failure(
                self.audit,
                audit_sink.event(
                    "admin.svid.mint", actor, "mint", spiffe_id[:200], "failure", str(exc),
                    {"jwt": True},
                ),
            )  # fmt: skip
            raise
        entry = RegistrationEntry(id="", spiffe_id=sid, selectors=(), created_at=self.clock.now())
        return self.issue_jwt_svid(actor, entry=entry, audience=audience, ttl=ttl, source="mint")

    # -- bundle and authorities ------------------------------------------------
    def bundle(self) -> Bundle:
        """The trust bundle: the CA certificates and the JWT signing keys."""
        return replace(self.authorities.bundle(), jwt_authorities=self.jwt_keys.authorities())

    def authority_op(
        self, actor: Actor, op: str, authority_id: str = "", *, force: bool = False
    ) -> AuthorityRecord:
        """A manual rotation step. Its audit event is written before the change is."""
        resource = f"authority/{authority_id}" if authority_id else "authority"

        def record(event: str, rec: AuthorityRecord) -> None:
            details = {"event": event, "not_after": rec.not_after.isoformat(), "state": rec.state}
            audit_sink.record(
                self.audit,
                audit_sink.event(
                    f"admin.authority.{op}", actor, op, f"authority/{rec.id}", details=details
                ),
            )

        try:
            self.audit.check()
            with self.authorities.audited(record):
                if op == "prepare":
                    rec = self.authorities.prepare()
                elif op == "activate":
                    rec = self.authorities.activate()
                elif op == "taint":
                    rec = self.authorities.taint(authority_id)
                elif op == "revoke":
                    rec = self.authorities.revoke(authority_id, force=force)
                else:
                    raise InvalidArgumentError(f"unknown authority operation {op!r}")
        except TrustdError as exc:
            record_failure(
                self.audit,
                audit_sink.event(f"admin.authority.{op}", actor, op, resource, "failure", str(exc)),
            )
            raise
        self.metrics.ca_rotations.labels(event=op).inc()
        self.refresh_metrics()
        return rec

    def _record_automatic(self, event: str, rec: AuthorityRecord) -> None:
        details = {"automatic": True, "not_after": rec.not_after.isoformat()}
        audit_sink.record(
            self.audit,
            audit_sink.event(
                f"authority.{event}", SYSTEM, event, f"authority/{rec.id}", details=details
            ),
        )

    def _record_jwt_key(self, event: str, rec: JwtKeyRecord) -> None:
        details = {
            "automatic": True,
            "jwt": True,
            "kid": rec.key_id,
            "not_after": rec.not_after.isoformat(),
        }
        resource = f"jwt-authority/{rec.key_id}"
        audit_sink.record(
            self.audit,
            audit_sink.event(f"authority.{event}", SYSTEM, event, resource, details=details),
        )

    def ensure_ca(self) -> AuthorityRecord:
        """At start-up: an active CA and JWT key, creating the first ones (audited) if none."""
        with self.authorities.audited(self._record_automatic):
            record = self.authorities.ensure_active()
        if self.jwt_keys.ensure_active(self._record_jwt_key):
            self.hub.notify("bundle")
        return record

    def rotate_tick(self) -> str | None:
        """Automatic rotation, run periodically by the server; audited like a manual one."""
        try:
            if self.jwt_keys.rotate(self._record_jwt_key):
                self.hub.notify("bundle")
        except TrustdError as exc:
            log.warning("automatic jwt key rotation failed; will retry", error=str(exc))
        try:
            with self.authorities.audited(self._record_automatic):
                did = self.authorities.rotate()
        except TrustdError as exc:
            log.warning("automatic ca rotation failed; will retry", error=str(exc))
            return None
        if did:
            self.metrics.ca_rotations.labels(event=did).inc()
            self.refresh_metrics()
        return did

    # -- health ----------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        try:
            self.store.check()
        except Exception as exc:  # any store failure means not ready
            return False, f"store unavailable: {exc}"
        try:
            self.key_manager.check()
        except TrustdError as exc:
            return False, f"key manager unavailable: {exc}"
        try:
            self.authorities.active_signer()
        except TrustdError as exc:
            return False, str(exc)
        return True, "ok"


SYSTEM = Actor.system()


def _jwt_deny_reason(exc: TrustdError) -> str:
    if isinstance(exc, ReservedIdError):
        return "reserved_id"
    if isinstance(exc, InvalidTtlError):
        return "invalid_ttl"
    if isinstance(exc, UnavailableError):
        return "unavailable"
    return "invalid_request"


__all__ = [
    "NotFoundError",
    "PermissionDeniedError",
    "ServerCore",
    "SvidRequest",
    "UnavailableError",
]
