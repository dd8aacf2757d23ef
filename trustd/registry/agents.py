"""Agents: join with a one-time token, renew their own SVID, get evicted; and what an
agent may ask for once joined (its entries' SVIDs, JWT-SVIDs).

- ``join``: the request and its CSR are checked first; only then is the token
  consumed atomically (two racing joins: exactly one wins) and the agent gets its
  own SVID, ``spiffe://TD/trustd/agent/<id>``, signed from its CSR. A join that
  fails after that gives the token back.
- ``authenticate``: an agent's client certificate, re-checked on every call against
  the *current* bundle and the agent's record, so an evicted agent is cut off.
- ``renew``, ``evict``, ``report``: one audit event each (``report`` none: it is
  telemetry).
- ``sign_svids`` and ``sign_jwt``: only for entries the agent may serve.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog
from cryptography import x509

from trustd import tlsutil
from trustd.agent.upstream import JwtSvidRequest
from trustd.agent.upstream import SvidRequest as AgentSvidRequest
from trustd.audit import AuditSink, record_failure
from trustd.audit.events import Actor
from trustd.audit.sink import event, record
from trustd.bundle import Bundle
from trustd.ca.errors import InvalidCsrError
from trustd.ca.issuer import IssuedSvid, load_csr
from trustd.ca.jwt import JwtSvid
from trustd.clock import Clock
from trustd.entries import RegistrationEntry, SvidRequest
from trustd.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TrustdError,
    UnauthenticatedError,
)
from trustd.registry.tokens import TokenRegistry
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.base import AgentRecord, Store

log = structlog.get_logger(__name__)

AGENT_PATH_PREFIX = "/trustd/agent/"
AGENT_JOIN = "agent.join"
AGENT_RENEW = "agent.renew"
ADMIN_AGENT_EVICT = "admin.agent.evict"
MAX_TOKEN_CHARS = 256


class Issuance(Protocol):
    """What the registry needs of the server's issuance (``trustd.server.core.ServerCore``)."""

    trust_domain: TrustDomain

    def bundle(self) -> Bundle: ...

    def issue_internal_svid(self, actor: Actor, request: SvidRequest, *, source: str) -> IssuedSvid:
        """An SVID under trustd's reserved ``/trustd/`` path (agents' own)."""
        ...

    def issue_svids(
        self, actor: Actor, requests: Sequence[SvidRequest], *, source: str = "agent"
    ) -> list[IssuedSvid | TrustdError]: ...

    def issue_jwt_svid(
        self, actor: Actor, *, entry: RegistrationEntry, audience: Sequence[str], source: str
    ) -> JwtSvid: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    token: str = field(repr=False)  # the one-time token; a secret, never logged
    csr_der: bytes  # PKCS#10 for the agent's key; only its public key is used
    hostname: str = ""  # printable; informative only
    addr: str | None = None  # "host:port" the join came from, for the audit actor


@dataclass(frozen=True, slots=True, kw_only=True)
class Joined:
    agent: AgentRecord  # the new agent's record
    svid: IssuedSvid  # its own SVID, spiffe://TD/trustd/agent/<id>
    bundle: Bundle  # what it verifies the server with from now on


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewAgent:
    agent: AgentRecord  # as ``authenticate`` returned it
    csr_der: bytes  # a new key's CSR


def check_join(request: Join) -> None:
    """What a join request must look like before the token is even looked at."""
    token = request.token
    if not token:
        raise InvalidArgumentError("join needs a token: create one with 'trustd token create'")
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise InvalidArgumentError(
            "the join token is malformed: use the token 'trustd token create' printed"
        )
    if not request.csr_der:
        raise InvalidArgumentError("csr_der is required: a DER certificate request")
    if not request.hostname.isprintable():
        raise InvalidArgumentError("hostname must be a printable string")


@dataclass(kw_only=True, eq=False)
class AgentRegistry:
    store: Store  # agents' records and the tokens' state
    audit: AuditSink  # joins, renewals and evictions
    clock: Clock
    tokens: TokenRegistry  # what a join spends
    issuance: Issuance  # who signs the agents' own SVIDs and their entries'
    notify: Callable[[str], None]  # "agents" changed: open streams re-check their agent

    @property
    def trust_domain(self) -> TrustDomain:
        return self.issuance.trust_domain

    def all(self) -> list[AgentRecord]:
        return self.store.list_agents()

    def _agent_svid(self, actor: Actor, agent_id: str, csr: bytes) -> IssuedSvid:
        sid = SpiffeId.parse(f"spiffe://{self.trust_domain}{AGENT_PATH_PREFIX}{agent_id}")
        entry = RegistrationEntry(
            id=f"agent:{agent_id}", spiffe_id=sid, selectors=(), created_at=self.clock.now()
        )
        return self.issuance.issue_internal_svid(
            actor, SvidRequest(entry=entry, csr=csr), source="agent"
        )

    # -- join ------------------------------------------------------------------
    def join(self, request: Join) -> Joined:
        """Check the request, then consume the token, issue and record, all or nothing.

        Nothing that the request itself gets wrong can spend the token: the CSR is
        checked before it is consumed. A failure after that (KMS, store, audit log)
        gives the token back, so the agent can retry with it.
        """
        check_join(request)
        now = self.clock.now()
        agent_id = uuid.uuid4().hex
        digest = self.tokens.hmac(request.token)
        resource = f"token/{digest[:16]}"
        addr = request.addr
        actor = Actor(
            kind="unix" if addr is None else "spiffe", id=f"join_token:{digest[:16]}", addr=addr
        )
        try:
            load_csr(request.csr_der)
        except InvalidCsrError as bad_csr:
            record_failure(
                self.audit, event(AGENT_JOIN, actor, "join", resource, "failure", str(bad_csr))
            )
            raise
        if not self.tokens.consume(digest, agent_id):
            exc = PermissionDeniedError(
                "the join token is unknown, used or expired: create a new one"
            )
            record_failure(
                self.audit, event(AGENT_JOIN, actor, "join", resource, "failure", str(exc))
            )
            raise exc
        try:
            svid = self._agent_svid(actor, agent_id, request.csr_der)
            record(
                self.audit,
                event(
                    type_=AGENT_JOIN,
                    actor=actor,
                    action="join",
                    resource=f"agent/{agent_id}",
                    details={
                        "spiffe_id": str(svid.spiffe_id),
                        "serial": svid.serial,
                        "token_hmac": digest,
                    },
                ),
            )
            agent = AgentRecord(
                id=agent_id,
                spiffe_id=str(svid.spiffe_id),
                serial=svid.serial,
                not_after=svid.not_after,
                joined_at=now,
                last_seen=now,
                hostname=request.hostname[:255],
            )
            self.store.save_agent(agent)
            bundle = self.issuance.bundle()
        except Exception as exc:
            self._give_token_back(digest, agent_id, actor, resource, exc)
            raise
        log.info("agent joined", agent_id=agent_id, spiffe_id=str(svid.spiffe_id))
        return Joined(agent=agent, svid=svid, bundle=bundle)

    def _give_token_back(
        self, digest: str, agent_id: str, actor: Actor, resource: str, exc: Exception
    ) -> None:
        """After a join failed past consuming its token: make the token usable again."""
        try:
            released = self.tokens.release(digest, agent_id)
        except TrustdError:
            released = False
        if released:
            log.warning(
                "join failed after its token was consumed; the token can be used again",
                token_hmac=digest[:16],
                error=str(exc),
            )
        else:
            log.error(
                "join failed after its token was consumed; the token could not be given back",
                token_hmac=digest[:16],
                error=str(exc),
            )
        record_failure(self.audit, event(AGENT_JOIN, actor, "join", resource, "failure", str(exc)))

    # -- a joined agent --------------------------------------------------------
    def authenticate(self, cert: x509.Certificate | None) -> AgentRecord:
        """The agent whose SVID ``cert`` is: checked against the current bundle and its record."""
        if cert is None:
            raise UnauthenticatedError("this call needs the agent's SVID as client certificate")
        now = self.clock.now()
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise UnauthenticatedError("the agent's SVID has expired: join again")
        bundle = self.issuance.bundle()
        if not any(_issued_by(cert, ca) for ca in bundle.x509_authorities):
            raise UnauthenticatedError("the agent's SVID is not signed by a trusted CA")
        sid = tlsutil.spiffe_id_of(cert)
        td = self.trust_domain
        if sid is None or sid.trust_domain != td or not sid.path.startswith(AGENT_PATH_PREFIX):
            raise PermissionDeniedError("only agents may call the agent API")
        agent_id = sid.path[len(AGENT_PATH_PREFIX) :]
        try:
            rec = self.store.get_agent(agent_id)
        except NotFoundError:
            raise PermissionDeniedError(f"agent {agent_id} is unknown") from None
        if rec.evicted:
            raise PermissionDeniedError(f"agent {agent_id} was evicted: it must join again")
        return rec

    def renew(self, actor: Actor, request: RenewAgent) -> IssuedSvid:
        rec = request.agent
        if not request.csr_der:
            raise InvalidArgumentError("csr_der is required: a DER certificate request")
        svid = self._agent_svid(actor, rec.id, request.csr_der)
        now = self.clock.now()
        self.store.save_agent(
            replace(rec, serial=svid.serial, not_after=svid.not_after, last_seen=now)
        )
        record(
            self.audit,
            event(
                type_=AGENT_RENEW,
                actor=actor,
                action="renew",
                resource=f"agent/{rec.id}",
                details={"serial": svid.serial},
            ),
        )
        return svid

    def report(self, agent: AgentRecord, telemetry: Mapping[str, str]) -> None:
        """An agent's telemetry: kept on its record (shown by ``trustd agent list -o json``)."""
        self.store.save_agent(replace(agent, last_seen=self.clock.now(), meta=dict(telemetry)))

    def evict(self, actor: Actor, agent_id: str) -> AgentRecord:
        resource = f"agent/{agent_id[:200]}"
        try:
            rec = self.store.get_agent(agent_id)
            self.audit.check()
        except TrustdError as exc:
            record_failure(
                self.audit,
                event(
                    type_=ADMIN_AGENT_EVICT, actor=actor, action="evict", resource=resource,
                    outcome="failure", reason=str(exc),
                ),
            )  # fmt: skip
            raise
        evicted = replace(rec, evicted=True)
        self.store.save_agent(evicted)
        self.notify("agents")
        record(
            self.audit,
            event(
                type_=ADMIN_AGENT_EVICT,
                actor=actor,
                action="evict",
                resource=resource,
                details={"spiffe_id": rec.spiffe_id},
            ),
        )
        return evicted

    # -- what an agent may ask for ---------------------------------------------
    def served_entry(self, agent_id: str, entry_id: str) -> RegistrationEntry:
        try:
            entry = self.store.get_entry(entry_id)
        except NotFoundError:
            raise PermissionDeniedError(
                f"entry {entry_id} does not exist (deleted?); this agent may not serve it"
            ) from None
        if not entry.served_by(agent_id):
            raise PermissionDeniedError(
                f"entry {entry_id} is pinned to another agent; this agent may not serve it"
            )
        return entry

    def sign_svids(
        self, actor: Actor, agent_id: str, requests: Sequence[AgentSvidRequest]
    ) -> list[IssuedSvid]:
        """One SVID per request, in order, each for the entry it names (leaf and
        intermediates: a self-signed CA is left out, it is in the bundle)."""
        reqs = [
            SvidRequest(entry=self.served_entry(agent_id, r.entry_id), csr=r.csr_der)
            for r in requests
        ]
        out = []
        for req, res in zip(reqs, self.issuance.issue_svids(actor, reqs), strict=True):
            if isinstance(res, TrustdError):
                raise res
            chain = _without_root(res.chain_der)
            out.append(replace(res, entry_id=req.entry.id, chain_der=chain, issuer_chain_pem=None))
        return out

    def sign_jwt(self, actor: Actor, agent_id: str, request: JwtSvidRequest) -> JwtSvid:
        if not request.entry_id:
            raise InvalidArgumentError("entry_id is required")
        entry = self.served_entry(agent_id, request.entry_id)
        return self.issuance.issue_jwt_svid(
            actor, entry=entry, audience=request.audience, source="agent"
        )


def agent_id_of(actor: Actor) -> str:
    """The agent id in an agent actor's SPIFFE ID (``spiffe://TD/trustd/agent/<id>``)."""
    return actor.id.rsplit(AGENT_PATH_PREFIX, 1)[-1]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, mismatched issuers, other key types
        return False
    return True


def _without_root(chain: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Leaf first, then intermediates; a self-signed CA at the end is left out."""
    if len(chain) <= 1:
        return chain
    last = x509.load_der_x509_certificate(chain[-1])
    return chain[:-1] if last.issuer == last.subject else chain
