"""Federation relationships: created and deleted by admins, refreshed from the foreign
bundle endpoints, their bundles pushed to agents like the own one.

- ``create`` checks the trust domain (not our own), the URL, the profile (and for
  ``https_spiffe`` the endpoint's SPIFFE ID) and the bootstrap bundle, records
  ``admin.federation.create`` and stores the relationship; the first refresh is due
  at once.
- ``refresh`` fetches the bundle, checks it (``trustd.federation.check``) against
  the last good one and replaces it, recording ``federation.bundle.update``. A
  failure or a refusal leaves the last good bundle in force and is alarmed: the
  ``trustd_federation_refresh_failures_total{trust_domain,reason}`` counter, a log
  line and a ``federation.bundle.refuse`` event (one per new problem: a retry that
  fails the same way is counted and logged, not audited again).
- The next refresh is due after the bundle's ``spiffe_refresh_hint`` (bounded by
  ``MIN_REFRESH`` and ``MAX_REFRESH``), or after ``RETRY`` when it failed.
- ``delete`` is refused while an entry federates with the trust domain.

Blocking (store, audit, network): the server runs these in its pool.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable

import structlog

from trustd.audit import AuditSink, record_failure
from trustd.audit.events import Actor
from trustd.audit.sink import event, record
from trustd.bundle import Bundle
from trustd.clock import Clock
from trustd.errors import FailedPreconditionError, InvalidArgumentError, TrustdError
from trustd.federation.check import check_bundle, parse_bundle
from trustd.federation.errors import MALFORMED, UNREACHABLE, BundleRefusedError, EndpointFetchError
from trustd.federation.fetch import check_url, fetch_bundle_document
from trustd.federation.model import HTTPS_SPIFFE, PROFILES, CreateFederation, Relationship
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.base import FederationRecord, Store
from trustd.telemetry.metrics import FederationMetrics

log = structlog.get_logger(__name__)

ADMIN_FEDERATION_CREATE = "admin.federation.create"
ADMIN_FEDERATION_DELETE = "admin.federation.delete"
ADMIN_FEDERATION_REFRESH = "admin.federation.refresh"
FEDERATION_BUNDLE_UPDATE = "federation.bundle.update"
FEDERATION_BUNDLE_REFUSE = "federation.bundle.refuse"

MIN_REFRESH = dt.timedelta(seconds=1)
MAX_REFRESH = dt.timedelta(hours=1)
RETRY = dt.timedelta(seconds=30)
SYSTEM = Actor.system("federation")

Fetch = Callable[[Relationship, Bundle], bytes]


def relationship_of(r: FederationRecord) -> Relationship:
    td = TrustDomain.parse(r.trust_domain)
    return Relationship(
        trust_domain=td,
        endpoint_url=r.endpoint_url,
        profile=r.profile,
        endpoint_spiffe_id=r.endpoint_spiffe_id,
        bundle=Bundle.from_spiffe(td, r.bundle),
        refreshed_at=r.refreshed_at,
        next_refresh_at=r.next_refresh_at,
        last_error=r.last_error,
        created_at=r.created_at,
    )


def record_of(rel: Relationship) -> FederationRecord:
    return FederationRecord(
        trust_domain=rel.trust_domain.name,
        endpoint_url=rel.endpoint_url,
        profile=rel.profile,
        endpoint_spiffe_id=rel.endpoint_spiffe_id,
        bundle=rel.bundle.to_spiffe(),
        sequence=rel.bundle.sequence,
        refreshed_at=rel.refreshed_at,
        next_refresh_at=rel.next_refresh_at,
        last_error=rel.last_error,
        created_at=rel.created_at,
    )


def refresh_interval(bundle: Bundle) -> dt.timedelta:
    hint = dt.timedelta(seconds=bundle.refresh_hint_seconds)
    return max(MIN_REFRESH, min(MAX_REFRESH, hint))


class FederationRegistry:
    def __init__(
        self,
        *,
        store: Store,
        audit: AuditSink,
        clock: Clock,
        trust_domain: TrustDomain,
        metrics: FederationMetrics,
        notify: Callable[[str], None],
        ca_file: str | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._td = trust_domain  # our own: never federated with
        self._metrics = metrics
        self._notify = notify  # "bundle" changed: agents' bundle watches wake up
        self._fetch: Fetch = fetch or (
            lambda rel, current: fetch_bundle_document(rel, current, ca_file=ca_file)
        )

    # -- reading ---------------------------------------------------------------
    def get(self, trust_domain: str) -> Relationship:
        td = TrustDomain.parse(trust_domain)
        return relationship_of(self._store.get_federation(td.name))

    def all(self) -> list[Relationship]:
        return [relationship_of(r) for r in self._store.list_federations()]

    def bundles(self) -> list[Bundle]:
        """The bundle in force of every foreign trust domain."""
        return [r.bundle for r in self.all()]

    def next_due(self) -> dt.datetime | None:
        times = [r.next_refresh_at for r in self._store.list_federations()]
        return min(times) if times else None

    # -- admin -----------------------------------------------------------------
    def validate(self, request: CreateFederation) -> Relationship:
        td = TrustDomain.parse(request.trust_domain)
        if td == self._td:
            raise InvalidArgumentError(
                f"{td} is this server's own trust domain: federate with another one"
            )
        if request.profile not in PROFILES:
            raise InvalidArgumentError(
                f"unknown bundle endpoint profile {request.profile[:50]!r}: use "
                + " or ".join(PROFILES)
            )
        url = check_url(request.endpoint_url)
        endpoint_id = ""
        if request.profile == HTTPS_SPIFFE:
            if not request.endpoint_spiffe_id:
                raise InvalidArgumentError(
                    "profile https_spiffe needs --endpoint-spiffe-id: the SPIFFE ID the bundle "
                    f"endpoint presents, e.g. spiffe://{td}/trustd/server"
                )
            sid = SpiffeId.parse(request.endpoint_spiffe_id)
            if sid.trust_domain != td:
                raise InvalidArgumentError(
                    f"endpoint spiffe id {sid} is not in {td}: its bundle endpoint is "
                    "authenticated with that trust domain's bundle"
                )
            endpoint_id = str(sid)
        elif request.endpoint_spiffe_id:
            raise InvalidArgumentError("--endpoint-spiffe-id is only for profile https_spiffe")
        if not request.bundle.strip():
            raise BundleRefusedError(
                MALFORMED,
                f"a bootstrap bundle of {td} is required (--bundle FILE: its "
                "'trustd bundle show --format spiffe', or PEM CA certificates)",
            )
        bundle = parse_bundle(td, request.bundle)
        if request.profile == HTTPS_SPIFFE and not bundle.x509_authorities:
            raise BundleRefusedError(
                MALFORMED,
                f"the bootstrap bundle of {td} has no x509 authority to authenticate its "
                "https_spiffe bundle endpoint with",
            )
        now = self._clock.now()
        return Relationship(
            trust_domain=td,
            endpoint_url=url,
            profile=request.profile,
            endpoint_spiffe_id=endpoint_id,
            bundle=bundle,
            refreshed_at=None,
            next_refresh_at=now,
            last_error="",
            created_at=now,
        )

    def create(self, actor: Actor, request: CreateFederation) -> Relationship:
        resource = f"federation/{request.trust_domain[:200]}"
        try:
            rel = self.validate(request)
            self._audit.check()
            self._store.create_federation(record_of(rel))
        except TrustdError as exc:
            failed = event(ADMIN_FEDERATION_CREATE, actor, "create", resource, "failure", str(exc))
            record_failure(self._audit, failed)
            raise
        try:
            record(
                self._audit,
                event(
                    ADMIN_FEDERATION_CREATE,
                    actor,
                    "create",
                    f"federation/{rel.trust_domain}",
                    details={
                        "trust_domain": str(rel.trust_domain),
                        "endpoint_url": rel.endpoint_url,
                        "profile": rel.profile,
                        "endpoint_spiffe_id": rel.endpoint_spiffe_id,
                        "sequence": rel.bundle.sequence,
                    },
                ),
            )
        except TrustdError:
            self._store.delete_federation(rel.trust_domain.name)  # nothing happens unrecorded
            raise
        self._metrics.bundle_sequence.labels(trust_domain=rel.trust_domain.name).set(
            rel.bundle.sequence
        )
        self._notify("bundle")
        log.info(
            "federation created",
            trust_domain=str(rel.trust_domain),
            endpoint_url=rel.endpoint_url,
            profile=rel.profile,
        )
        return rel

    def delete(self, actor: Actor, trust_domain: str) -> Relationship:
        resource = f"federation/{trust_domain[:200]}"
        try:
            rel = self.get(trust_domain)
            users = [
                e.id for e in self._store.list_entries() if rel.trust_domain in e.federates_with
            ]
            if users:
                shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
                raise FailedPreconditionError(
                    f"entries federate with {rel.trust_domain} ({shown}): delete them first"
                )
            self._audit.check()
            record(
                self._audit,
                event(
                    ADMIN_FEDERATION_DELETE,
                    actor,
                    "delete",
                    resource,
                    details={"trust_domain": str(rel.trust_domain)},
                ),
            )
        except TrustdError as exc:
            failed = event(ADMIN_FEDERATION_DELETE, actor, "delete", resource, "failure", str(exc))
            record_failure(self._audit, failed)
            raise
        self._store.delete_federation(rel.trust_domain.name)
        for metric in (self._metrics.bundle_sequence, self._metrics.last_refresh):
            with contextlib.suppress(KeyError):
                metric.remove(rel.trust_domain.name)
        self._notify("bundle")
        log.info("federation deleted", trust_domain=str(rel.trust_domain))
        return rel

    def refresh_now(self, actor: Actor, trust_domain: str) -> Relationship:
        """An admin's refresh: the relationship after it; raises when it failed."""
        rel = self.get(trust_domain)
        try:
            record(
                self._audit,
                event(
                    ADMIN_FEDERATION_REFRESH,
                    actor,
                    "refresh",
                    f"federation/{rel.trust_domain}",
                    details={"trust_domain": str(rel.trust_domain)},
                ),
            )
        except TrustdError as exc:
            raise FailedPreconditionError(f"refresh not recorded, so not done: {exc}") from None
        after, error = self.refresh(rel)
        if error is not None:
            raise error
        return after

    # -- refreshing ------------------------------------------------------------
    def refresh_due(self) -> int:
        """Refresh every relationship whose refresh is due; how many were attempted."""
        now = self._clock.now()
        due = [r for r in self.all() if r.next_refresh_at <= now]
        for rel in due:
            self.refresh(rel)
        return len(due)

    def refresh(self, rel: Relationship) -> tuple[Relationship, TrustdError | None]:
        """One refresh; the relationship afterwards and the error it failed with (if any)."""
        td = rel.trust_domain
        try:
            document = self._fetch(rel, rel.bundle)
            bundle = parse_bundle(td, document)
            check_bundle(bundle, rel.bundle)
        except (EndpointFetchError, BundleRefusedError) as exc:
            return self._failed(rel, exc.reason, exc)
        except TrustdError as exc:
            return self._failed(rel, UNREACHABLE, exc)
        now = self._clock.now()
        changed = bundle.to_spiffe() != rel.bundle.to_spiffe()
        after = Relationship(
            trust_domain=td,
            endpoint_url=rel.endpoint_url,
            profile=rel.profile,
            endpoint_spiffe_id=rel.endpoint_spiffe_id,
            bundle=bundle,
            refreshed_at=now,
            next_refresh_at=now + refresh_interval(bundle),
            last_error="",
            created_at=rel.created_at,
        )
        try:
            if changed:
                self._audit.check()  # an update that cannot be recorded is not made
            if not self._store.update_federation(
                record_of(after), expect_sequence=rel.bundle.sequence
            ):
                # deleted, or moved by another server sharing the store: its state stands
                log.info("federation changed meanwhile; refresh dropped", trust_domain=str(td))
                return rel, None
        except TrustdError as exc:
            log.error("federated bundle not stored", trust_domain=str(td), error=str(exc))
            return rel, exc
        if changed:
            try:
                record(
                    self._audit,
                    event(
                        FEDERATION_BUNDLE_UPDATE,
                        SYSTEM,
                        "update",
                        f"federation/{td}",
                        details={
                            "trust_domain": str(td),
                            "previous_sequence": rel.bundle.sequence,
                            "sequence": bundle.sequence,
                            "x509_authorities": len(bundle.x509_authorities),
                            "jwt_authorities": len(bundle.jwt_authorities),
                        },
                    ),
                )
            except TrustdError as exc:
                # nothing changes unrecorded: the previous bundle goes back in force
                self._store.update_federation(record_of(rel), expect_sequence=bundle.sequence)
                log.error("federated bundle update not recorded", trust_domain=str(td))
                return rel, exc
        self._metrics.bundle_sequence.labels(trust_domain=td.name).set(bundle.sequence)
        self._metrics.last_refresh.labels(trust_domain=td.name).set(now.timestamp())
        if changed:
            self._metrics.bundle_updates.labels(trust_domain=td.name).inc()
            self._notify("bundle")
            log.info(
                "federated bundle updated",
                trust_domain=str(td),
                previous_sequence=rel.bundle.sequence,
                sequence=bundle.sequence,
            )
        return after, None

    def _failed(
        self, rel: Relationship, reason: str, exc: TrustdError
    ) -> tuple[Relationship, TrustdError]:
        td = rel.trust_domain
        message = str(exc)
        self._metrics.refresh_failures.labels(trust_domain=td.name, reason=reason).inc()
        log.warning(
            "federated bundle refresh failed; the last good bundle stays in force",
            trust_domain=str(td),
            reason=reason,
            error=message,
            sequence=rel.bundle.sequence,
        )
        if message != rel.last_error:  # one event per new problem, not one per retry
            record_failure(
                self._audit,
                event(
                    FEDERATION_BUNDLE_REFUSE,
                    SYSTEM,
                    "refresh",
                    f"federation/{td}",
                    "failure",
                    message,
                    details={
                        "trust_domain": str(td),
                        "reason": reason,
                        "endpoint_url": rel.endpoint_url,
                        "sequence_in_force": rel.bundle.sequence,
                    },
                ),
            )
        now = self._clock.now()
        after = Relationship(
            trust_domain=td,
            endpoint_url=rel.endpoint_url,
            profile=rel.profile,
            endpoint_spiffe_id=rel.endpoint_spiffe_id,
            bundle=rel.bundle,
            refreshed_at=rel.refreshed_at,
            next_refresh_at=now + min(RETRY, refresh_interval(rel.bundle)),
            last_error=message[:1000],
            created_at=rel.created_at,
        )
        try:
            self._store.update_federation(record_of(after), expect_sequence=rel.bundle.sequence)
        except TrustdError as store_exc:
            log.error("federation state not stored", trust_domain=str(td), error=str(store_exc))
        return after, exc
