"""The admin API edge (``trustd.admin.v1.Admin``) on the admin Unix socket (0600): what
the ``trustd`` CLI calls.

Only the socket's owner or root gets in; the kernel says who the caller is
(SO_PEERCRED), and that identity is the actor of every audit event. Each method
turns its request message into a registry or core request, runs it off the event
loop and turns the answer back into a message; errors become statuses in
``trustd.api.edge``. Policy and rollout methods are in ``admin_policy``, audit
methods in ``admin_audit``.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import Executor
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from trustd import peercred
from trustd.api.admin.v1 import admin_grpc
from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.convert import bundle_message, entry_message, jwt_svid_message, timestamp
from trustd.api.convert import x509_svid_message as svid_message
from trustd.api.edge import unary
from trustd.api.types.v1 import types_pb2
from trustd.audit.events import Actor
from trustd.errors import InvalidArgumentError
from trustd.federation.relationships import FederationRegistry
from trustd.registry import CreateEntry, CreateToken, Registry
from trustd.registry.tokens import DEFAULT_TOKEN_TTL
from trustd.server.admin_audit import AuditAdmin
from trustd.server.admin_federation import FederationAdmin
from trustd.server.admin_policy import PolicyAdmin
from trustd.server.auditing import ServerAudit
from trustd.server.core import ServerCore
from trustd.server.policy_plane import PolicyPlane
from trustd.store.base import AgentRecord, AuthorityRecord

MAX_TTL_SECONDS = 10 * 365 * 86400  # far above any server maximum; keeps timedelta in range


def ttl_of(msg: Any, field: str = "ttl_seconds") -> dt.timedelta | None:
    """An optional TTL field: None when unset."""
    if not msg.HasField(field):
        return None
    seconds = getattr(msg, field)
    if abs(seconds) > MAX_TTL_SECONDS:
        raise InvalidArgumentError("ttl is out of range")
    return dt.timedelta(seconds=seconds)


def required(value: str, name: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{name} is required")
    return value


def authority_message(r: AuthorityRecord) -> pb.Authority:
    return pb.Authority(
        id=r.id,
        state=r.state,
        tainted=r.tainted,
        revoked=r.revoked,
        not_before=timestamp(r.not_before),
        not_after=timestamp(r.not_after),
        key_backend=r.key_ref.backend,
        key_algorithm=r.key_ref.algorithm.value,
        subject=r.certificate.subject.rfc4514_string(),
        upstream=bool(r.upstream_roots),
    )


def agent_message(a: AgentRecord) -> pb.Agent:
    return pb.Agent(
        id=a.id,
        spiffe_id=a.spiffe_id,
        serial=a.serial,
        not_after=timestamp(a.not_after),
        joined_at=timestamp(a.joined_at),
        last_seen=timestamp(a.last_seen),
        evicted=a.evicted,
        hostname=a.hostname,
    )


@dataclass(eq=False)
class AdminService(PolicyAdmin, AuditAdmin, FederationAdmin, admin_grpc.AdminBase):
    core: ServerCore  # issuance, the bundle, authorities, readiness
    registry: Registry  # entries, tokens, agents
    _: KW_ONLY
    executor: Executor | None  # where blocking calls run
    socket_path: Path  # the admin socket: the addr of every actor
    owner_uid: int  # who may call besides root
    policy: PolicyPlane | None = None  # policy and rollout methods; None: UNAVAILABLE
    server_audit: ServerAudit | None = None  # audit methods; None: UNAVAILABLE
    federation: FederationRegistry | None = None  # federation methods; None: FAILED_PRECONDITION

    # -- the caller ------------------------------------------------------------
    def actor(self, stream: Stream[Any, Any]) -> Actor:
        cred = peercred.from_grpclib_stream(stream)
        if cred is None:
            return Actor(kind="unix", id="unknown", addr=str(self.socket_path))
        return Actor.unix(uid=cred.uid, addr=str(self.socket_path))

    async def authorize(self, stream: Stream[Any, Any], method: str) -> None:
        cred = peercred.from_grpclib_stream(stream)
        if cred is None or cred.uid not in (self.owner_uid, 0):
            raise GRPCError(
                Status.PERMISSION_DENIED,
                "only the server's owner or root may use the admin socket",
            )

    def on_result(self, method: str, code: Status) -> None:
        self.core.metrics.admin_requests.labels(method=method, code=code.name).inc()

    # -- entries ---------------------------------------------------------------
    @unary
    async def EntryCreate(self, s: Stream[Any, Any], req: pb.CreateEntryRequest) -> types_pb2.Entry:
        request = CreateEntry(
            spiffe_id=required(req.spiffe_id, "spiffe_id"),
            selectors=tuple(req.selectors),
            ttl=ttl_of(req),
            dns_names=tuple(req.dns_names),
            agent_id=req.agent_id or None,
            federates_with=tuple(req.federates_with),
        )
        return entry_message(await self.run(self.registry.entries.create, self.actor(s), request))

    @unary
    async def EntryList(self, s: Stream[Any, Any], req: pb.Empty) -> pb.ListEntriesResponse:
        entries = await self.run(self.registry.entries.all)
        return pb.ListEntriesResponse(entries=[entry_message(e) for e in entries])

    @unary
    async def EntryShow(self, s: Stream[Any, Any], req: pb.EntryIdRequest) -> types_pb2.Entry:
        entry_id = required(req.id, "id")
        return entry_message(await self.run(self.registry.entries.get, entry_id))

    @unary
    async def EntryDelete(self, s: Stream[Any, Any], req: pb.EntryIdRequest) -> types_pb2.Entry:
        entry_id = required(req.id, "id")
        entry = await self.run(self.registry.entries.delete, self.actor(s), entry_id)
        return entry_message(entry)

    # -- SVIDs -----------------------------------------------------------------
    @unary
    async def SvidMint(
        self, s: Stream[Any, Any], req: pb.MintX509SvidRequest
    ) -> pb.MintX509SvidResponse:
        actor, spiffe_id, ttl = self.actor(s), required(req.spiffe_id, "spiffe_id"), ttl_of(req)

        def blocking() -> pb.MintX509SvidResponse:
            svid = self.core.mint(
                actor, spiffe_id=spiffe_id, csr=req.csr, ttl=ttl, dns_names=req.dns_names
            )
            return pb.MintX509SvidResponse(
                svid=svid_message(svid), bundle_pem=self.core.bundle().to_pem()
            )

        return await self.run(blocking)

    @unary
    async def JwtSvidMint(
        self, s: Stream[Any, Any], req: pb.MintJwtSvidRequest
    ) -> pb.MintJwtSvidResponse:
        svid = await self.run(
            lambda: self.core.mint_jwt(
                self.actor(s),
                spiffe_id=required(req.spiffe_id, "spiffe_id"),
                audience=list(req.audience),
                ttl=ttl_of(req),
            )
        )
        return pb.MintJwtSvidResponse(svid=jwt_svid_message(svid))

    # -- bundle and authorities ------------------------------------------------
    @unary
    async def BundleShow(self, s: Stream[Any, Any], req: pb.Empty) -> pb.BundleResponse:
        bundle = await self.run(self.core.bundle)
        return pb.BundleResponse(bundle=bundle_message(bundle), pem=bundle.to_pem())

    @unary
    async def AuthorityList(self, s: Stream[Any, Any], req: pb.Empty) -> pb.ListAuthoritiesResponse:
        records = await self.run(self.core.authorities.records)
        return pb.ListAuthoritiesResponse(authorities=[authority_message(r) for r in records])

    async def _authority(
        self, s: Stream[Any, Any], req: pb.AuthorityRequest, op: str
    ) -> pb.Authority:
        authority_id = required(req.id, "id") if op in ("taint", "revoke") else req.id
        record = await self.run(
            lambda: self.core.authority_op(self.actor(s), op, authority_id, force=req.force)
        )
        return authority_message(record)

    @unary
    async def AuthorityPrepare(self, s: Stream[Any, Any], req: pb.AuthorityRequest) -> pb.Authority:
        return await self._authority(s, req, "prepare")

    @unary
    async def AuthorityActivate(
        self, s: Stream[Any, Any], req: pb.AuthorityRequest
    ) -> pb.Authority:
        return await self._authority(s, req, "activate")

    @unary
    async def AuthorityTaint(self, s: Stream[Any, Any], req: pb.AuthorityRequest) -> pb.Authority:
        return await self._authority(s, req, "taint")

    @unary
    async def AuthorityRevoke(self, s: Stream[Any, Any], req: pb.AuthorityRequest) -> pb.Authority:
        return await self._authority(s, req, "revoke")

    @unary
    async def AuthorityBlockers(
        self, s: Stream[Any, Any], req: pb.AuthorityRequest
    ) -> pb.ListBlockersResponse:
        records = await self.run(self.core.authorities.blockers, required(req.id, "id"))
        return pb.ListBlockersResponse(
            certificates=[
                pb.Blocker(
                    serial=r.serial,
                    spiffe_id=r.spiffe_id,
                    not_after=timestamp(r.not_after),
                    holder=r.caller,
                    entry_id=r.entry_id,
                    issued_at=timestamp(r.issued_at),
                )
                for r in records
            ]
        )

    # -- tokens, agents, status ------------------------------------------------
    @unary
    async def TokenCreate(
        self, s: Stream[Any, Any], req: pb.CreateTokenRequest
    ) -> pb.CreateTokenResponse:
        ttl = ttl_of(req)  # unset: 10 minutes; a zero TTL is refused, not defaulted
        request = CreateToken(ttl=DEFAULT_TOKEN_TTL if ttl is None else ttl)
        created = await self.run(self.registry.tokens.create, self.actor(s), request)
        return pb.CreateTokenResponse(token=created.token, expires_at=timestamp(created.expires_at))

    @unary
    async def AgentList(self, s: Stream[Any, Any], req: pb.Empty) -> pb.ListAgentsResponse:
        agents = await self.run(self.registry.agents.all)
        return pb.ListAgentsResponse(agents=[agent_message(a) for a in agents])

    @unary
    async def AgentEvict(
        self, s: Stream[Any, Any], req: pb.AgentIdRequest
    ) -> pb.EvictAgentResponse:
        agent_id = required(req.id, "id")
        record = await self.run(self.registry.agents.evict, self.actor(s), agent_id)
        return pb.EvictAgentResponse(id=record.id, evicted=record.evicted)

    @unary
    async def Status(self, s: Stream[Any, Any], req: pb.Empty) -> pb.StatusResponse:
        ok, reason = await self.run(self.core.readiness)
        return pb.StatusResponse(ready=ok, reason=reason, trust_domain=str(self.core.trust_domain))
