"""Registration entries: created and deleted by admins, served by agents.

``validate`` is every rule an entry must meet (its SPIFFE ID is a workload's in
this trust domain, outside trustd's reserved ``/trustd/`` path; at least one
selector; a TTL within the server's maximum; valid DNS names; an agent that
exists). ``create`` and ``delete`` record one audit event each, written before
the change is visible: an entry whose event could not be written is removed again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from trustd import durations
from trustd.agent.upstream import EntryUpdate
from trustd.audit import AuditSink, record_failure
from trustd.audit.events import Actor
from trustd.audit.sink import event, record
from trustd.ca.errors import InvalidTtlError
from trustd.ca.issuer import check_not_reserved
from trustd.clock import Clock
from trustd.dnsnames import check_dns_name
from trustd.entries import RegistrationEntry
from trustd.errors import InvalidArgumentError, NotFoundError, TrustdError
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.base import Store

log = structlog.get_logger(__name__)

ADMIN_ENTRY_CREATE = "admin.entry.create"
ADMIN_ENTRY_DELETE = "admin.entry.delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateEntry:
    spiffe_id: str  # spiffe://TD/path, in this server's trust domain
    selectors: tuple[str, ...]  # "unix:uid:1000"; all must match a caller; at least one
    ttl: dt.timedelta | None = None  # SVID TTL; None: the server's default
    dns_names: tuple[str, ...] = ()  # extra DNS SANs
    agent_id: str | None = None  # only this agent serves it; None: every agent
    # foreign trust domains ("spiffe://other.td") whose bundles its workloads get; each
    # must be federated with already ('trustd federation create')
    federates_with: tuple[str, ...] = ()


def workload_id(text: str, trust_domain: TrustDomain) -> SpiffeId:
    """``text`` as a SPIFFE ID in ``trust_domain`` (InvalidArgumentError when it is not)."""
    sid = SpiffeId.parse(text)
    if not sid.is_member_of(trust_domain):
        raise InvalidArgumentError(
            f"spiffe id {text} is not in this server's trust domain {trust_domain}"
        )
    return sid


@dataclass(kw_only=True, eq=False)
class EntryRegistry:
    store: Store  # where entries live
    audit: AuditSink  # every create and delete is one event
    clock: Clock
    trust_domain: TrustDomain  # every entry's SPIFFE ID is in it
    max_ttl: dt.timedelta  # the issuer's: no entry asks for more
    notify: Callable[[str], None]  # "entries" changed: agents' watches wake up

    def get(self, entry_id: str) -> RegistrationEntry:
        return self.store.get_entry(entry_id)

    def all(self) -> list[RegistrationEntry]:
        return self.store.list_entries()

    def snapshot_for(self, agent_id: str) -> EntryUpdate:
        """Every entry the agent may serve, at the current revision."""
        head, _ = self.store.entry_changes_since(2**62)
        mine = tuple(e for e in self.store.list_entries() if e.served_by(agent_id))
        return EntryUpdate(revision=int(head), full=True, upserted=mine)

    def changes_for(self, agent_id: str, revision: int) -> EntryUpdate | None:
        """What changed for the agent since ``revision`` (None: nothing); an entry it may
        no longer serve is removed for it."""
        head, changes = self.store.entry_changes_since(revision)
        if not changes:
            return None
        return EntryUpdate(
            revision=int(head),
            full=False,
            upserted=tuple(
                c.entry for c in changes if c.entry is not None and c.entry.served_by(agent_id)
            ),
            removed=tuple(
                c.entry_id for c in changes if c.entry is None or not c.entry.served_by(agent_id)
            ),
        )

    def validate(self, request: CreateEntry) -> RegistrationEntry:
        """The entry ``request`` describes, with a new id; raises on the first rule it breaks."""
        if request.agent_id is not None:
            self.store.get_agent(request.agent_id)  # NotFoundError names 'trustd agent list'
        sid = workload_id(request.spiffe_id, self.trust_domain)
        if not sid.path:
            raise InvalidArgumentError(
                f"a workload spiffe id needs a path, e.g. spiffe://{self.trust_domain}/ns/default/sa/web"
            )
        check_not_reserved(sid)
        if not request.selectors:
            raise InvalidArgumentError("at least one --selector is required, e.g. unix:uid:1000")
        selectors = tuple(sorted(set(Selector.parse(s) for s in request.selectors)))
        ttl = request.ttl
        if ttl is not None:
            if ttl <= dt.timedelta(0):
                raise InvalidTtlError("ttl must be positive, e.g. 1h or 10m")
            if ttl > self.max_ttl:
                raise InvalidTtlError(
                    f"ttl {durations.format(ttl)} is above the server maximum "
                    f"{durations.format(self.max_ttl)}"
                )
        return RegistrationEntry(
            id=str(uuid.uuid4()),
            spiffe_id=sid,
            selectors=selectors,
            ttl=ttl,
            dns_names=tuple(check_dns_name(d) for d in request.dns_names),
            created_at=self.clock.now(),
            agent_id=request.agent_id,
            federates_with=self._federated(request.federates_with),
        )

    def _federated(self, names: tuple[str, ...]) -> tuple[TrustDomain, ...]:
        """The trust domains an entry federates with: foreign ones we federate with."""
        tds = sorted({TrustDomain.parse(n) for n in names})
        known = {r.trust_domain for r in self.store.list_federations()} if tds else set()
        for td in tds:
            if td == self.trust_domain:
                raise InvalidArgumentError(
                    f"--federates-with {td.id} is this server's own trust domain: its bundle "
                    "is served to every workload already"
                )
            if td.name not in known:
                raise NotFoundError(
                    f"no federation with {td.id}: create it first with 'trustd federation "
                    "create', see 'trustd federation list'"
                )
        return tuple(tds)

    def create(self, actor: Actor, request: CreateEntry) -> RegistrationEntry:
        try:
            entry = self.validate(request)
            self.audit.check()
            created = self.store.create_entry(entry)
        except TrustdError as exc:
            resource = request.spiffe_id[:200]
            failed = event(ADMIN_ENTRY_CREATE, actor, "create", resource, "failure", str(exc))
            record_failure(self.audit, failed)
            raise
        try:
            record(
                self.audit,
                event(
                    type_=ADMIN_ENTRY_CREATE,
                    actor=actor,
                    action="create",
                    resource=f"entry/{created.id}",
                    details={
                        "spiffe_id": str(created.spiffe_id),
                        "selectors": [str(s) for s in created.selectors],
                        **(
                            {"federates_with": [str(td.id) for td in created.federates_with]}
                            if created.federates_with
                            else {}
                        ),
                    },
                ),
            )
        except TrustdError:
            self.store.delete_entry(created.id)  # nothing happens unrecorded
            raise
        self.notify("entries")
        log.info("entry created", entry_id=created.id, spiffe_id=str(created.spiffe_id))
        return created

    def delete(self, actor: Actor, entry_id: str) -> RegistrationEntry:
        resource = f"entry/{entry_id[:200]}"
        try:
            entry = self.store.get_entry(entry_id)
            self.audit.check()
            record(
                self.audit,
                event(
                    type_=ADMIN_ENTRY_DELETE,
                    actor=actor,
                    action="delete",
                    resource=resource,
                    details={"spiffe_id": str(entry.spiffe_id)},
                ),
            )
        except TrustdError as exc:
            record_failure(
                self.audit,
                event(ADMIN_ENTRY_DELETE, actor, "delete", resource, "failure", str(exc)),
            )
            raise
        self.store.delete_entry(entry_id)
        self.notify("entries")
        log.info("entry deleted", entry_id=entry_id)
        return entry
