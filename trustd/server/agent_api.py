"""The agent API edge (``trustd.agent.v1.AgentAPI``, gRPC over mTLS): it reads the
caller's client certificate, turns messages into registry requests and back, and
maps errors to statuses (``trustd.api.edge``). What a join, a renewal or a signing
does is the registry's (``trustd.registry.agents``) and the issuer's.

- ``Join``: no client certificate yet; a one-time token buys the agent its SVID.
- Every other call needs that SVID as the TLS client certificate, re-checked on
  each call (``AgentRegistry.authenticate``): an evicted agent is cut off, streams
  included.
- Entries go out as a snapshot then deltas; bundles on every change; policy (from
  the policy plane) on every version.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpclib.server
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.health.service import Health
from grpclib.server import Stream

from trustd import tlsutil
from trustd.agent.upstream import JwtSvidRequest, SvidRequest
from trustd.api.agent.v1 import agent_grpc
from trustd.api.agent.v1 import agent_pb2 as pb
from trustd.api.convert import bundle_message, entry_message, jwt_svid_message, x509_svid_message
from trustd.api.edge import Edge, server_stream, unary
from trustd.api.policy.v1 import policy_pb2
from trustd.audit.events import Actor
from trustd.entries import RegistrationEntry
from trustd.entries import SvidRequest as EntrySvidRequest
from trustd.errors import TrustdError, UnavailableError
from trustd.registry import Join, Registry, RenewAgent
from trustd.registry.upstream import RegistryUpstream
from trustd.server.changes import ChangeHub
from trustd.server.core import SYSTEM, ServerCore
from trustd.server.policy_plane import PolicyPlane
from trustd.spiffeid import SpiffeId
from trustd.store.base import AgentRecord

log = structlog.get_logger(__name__)

SERVER_PATH = "/trustd/server"
EVICTION_RECHECK = 30.0  # seconds between re-checks of a streaming agent's record


def _peer_cert(stream: Stream[Any, Any]) -> x509.Certificate | None:
    transport = getattr(stream.peer, "_transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return x509.load_der_x509_certificate(der) if der else None


def _addr(stream: Stream[Any, Any]) -> str | None:
    addr = stream.peer.addr()
    return f"{addr[0]}:{addr[1]}" if addr else None


@dataclass(eq=False)
class AgentApi(agent_grpc.AgentAPIBase, Edge):
    registry: Registry  # joins, agents, and what they may sign
    hub: ChangeHub  # wakes the watches
    executor: Executor | None  # where blocking calls run
    policy: PolicyPlane | None = None  # WatchPolicy and ReportPolicy; None: UNAVAILABLE

    # -- the caller ------------------------------------------------------------
    async def _agent(self, stream: Stream[Any, Any]) -> tuple[AgentRecord, Actor]:
        rec = await self.run(self.registry.agents.authenticate, _peer_cert(stream))
        return rec, Actor(kind="spiffe", id=rec.spiffe_id, addr=_addr(stream))

    async def _upstream(self, stream: Stream[Any, Any]) -> RegistryUpstream:
        _, actor = await self._agent(stream)
        return RegistryUpstream(self.registry, self.hub, self.executor, actor)

    # -- unary calls -------------------------------------------------------------
    @unary
    async def Join(self, s: Stream[Any, Any], req: pb.JoinRequest) -> pb.JoinResponse:
        request = Join(token=req.token, csr_der=req.csr_der, hostname=req.hostname, addr=_addr(s))
        joined = await self.run(self.registry.agents.join, request)
        return pb.JoinResponse(
            agent_id=joined.agent.id,
            svid=x509_svid_message(joined.svid),
            bundle_pem=joined.bundle.to_pem(),
        )

    @unary
    async def RenewAgent(
        self, s: Stream[Any, Any], req: pb.RenewAgentRequest
    ) -> pb.RenewAgentResponse:
        rec, actor = await self._agent(s)
        request = RenewAgent(agent=rec, csr_der=req.csr_der)
        svid = await self.run(self.registry.agents.renew, actor, request)
        return pb.RenewAgentResponse(svid=x509_svid_message(svid))

    @unary
    async def SignSvids(
        self, s: Stream[Any, Any], req: pb.SignSvidsRequest
    ) -> pb.SignSvidsResponse:
        requests = [SvidRequest(entry_id=r.entry_id, csr_der=r.csr_der) for r in req.requests]
        signed = await (await self._upstream(s)).sign_x509_svids(requests)
        return pb.SignSvidsResponse(svids=[x509_svid_message(x) for x in signed])

    @unary
    async def SignJwtSvid(
        self, s: Stream[Any, Any], req: pb.SignJwtSvidRequest
    ) -> pb.SignJwtSvidResponse:
        rec, actor = await self._agent(s)
        request = JwtSvidRequest(entry_id=req.entry_id, audience=tuple(req.audience))
        svid = await self.run(self.registry.agents.sign_jwt, actor, rec.id, request)
        return pb.SignJwtSvidResponse(svid=jwt_svid_message(svid, entry_id=req.entry_id))

    @unary
    async def Report(self, s: Stream[Any, Any], req: pb.ReportRequest) -> pb.ReportResponse:
        rec, _ = await self._agent(s)
        await self.run(self.registry.agents.report, rec, dict(req.telemetry))
        return pb.ReportResponse()

    @unary
    async def ReportPolicy(
        self, s: Stream[Any, Any], req: pb.ReportPolicyRequest
    ) -> pb.ReportPolicyResponse:
        _, actor = await self._agent(s)
        await self._plane().upstream_for(actor).send_policy_reports(req)
        return pb.ReportPolicyResponse()

    # -- streams -----------------------------------------------------------------
    def _plane(self) -> PolicyPlane:
        if self.policy is None:
            raise UnavailableError("this server has no policy plane")
        return self.policy

    async def _cut_off_when_evicted(self, stream: Stream[Any, Any]) -> None:
        """Raise once the agent is evicted (checked on every agent change and every 30 s)."""
        seen = self.hub.version("agents")
        while True:
            seen = await self.hub.wait("agents", seen, EVICTION_RECHECK)
            await self._agent(stream)

    async def _guarded(
        self, stream: Stream[Any, Any], source: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        guard = asyncio.ensure_future(self._cut_off_when_evicted(stream))
        try:
            while True:
                nxt = asyncio.ensure_future(source.__anext__())
                done, _ = await asyncio.wait({nxt, guard}, return_when=asyncio.FIRST_COMPLETED)
                if guard in done:
                    nxt.cancel()
                    guard.result()  # raises PermissionDeniedError
                try:
                    yield nxt.result()
                except StopAsyncIteration:
                    return
        finally:
            guard.cancel()

    @server_stream
    async def WatchEntries(
        self, s: Stream[Any, Any], req: pb.WatchEntriesRequest
    ) -> AsyncIterator[pb.EntryUpdate]:
        since = req.since_revision if req.HasField("since_revision") else None
        source = (await self._upstream(s)).watch_entries(since_revision=since)
        async for upd in self._guarded(s, source):
            yield pb.EntryUpdate(
                revision=upd.revision,
                full=upd.full,
                upserted=[entry_message(e) for e in upd.upserted],
                removed=list(upd.removed),
            )

    @server_stream
    async def WatchBundles(
        self, s: Stream[Any, Any], req: pb.WatchBundlesRequest
    ) -> AsyncIterator[pb.BundleUpdate]:
        source = (await self._upstream(s)).watch_bundles()
        async for upd in self._guarded(s, source):
            yield pb.BundleUpdate(
                bundles=[bundle_message(b) for b in upd.bundles],
                tainted_key_ids=sorted(upd.tainted_key_ids),
            )

    @server_stream
    async def WatchPolicy(
        self, s: Stream[Any, Any], req: pb.WatchPolicyRequest
    ) -> AsyncIterator[policy_pb2.WatchResponse]:
        _, actor = await self._agent(s)
        source = self._plane().upstream_for(actor).watch_policy()
        async for policy in self._guarded(s, source):
            yield policy_pb2.WatchResponse(policy=policy)


class AgentApiServer:
    """The TLS listener for agents, with the server's own SVID, renewed at half life."""

    def __init__(
        self,
        core: ServerCore,
        registry: Registry,
        hub: ChangeHub,
        executor: Executor | None,
        policy: PolicyPlane | None = None,
    ) -> None:
        self.core = core
        self.hub = hub
        self.executor = executor
        self.api = AgentApi(registry, hub, executor, policy)
        self._server: grpclib.server.Server | None = None
        self._ctx: ssl.SSLContext | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._bundle_task: asyncio.Task[None] | None = None
        self.port: int | None = None

    def _server_svid(
        self,
    ) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey, dt.datetime]:
        from cryptography.hazmat.primitives import hashes, serialization

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        sid = SpiffeId.parse(f"spiffe://{self.core.trust_domain}{SERVER_PATH}")
        entry = RegistrationEntry(
            id="server", spiffe_id=sid, selectors=(), created_at=self.core.clock.now()
        )
        res = self.core.issue_internal_svid(
            SYSTEM, EntrySvidRequest(entry=entry, csr=csr), source="server"
        )
        chain = [x509.load_der_x509_certificate(d) for d in res.chain_der]
        return chain, key, res.not_after

    server_svid = _server_svid  # the bundle endpoint (https_spiffe) serves the same identity

    async def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        chain, key, not_after = await self.api.run(self._server_svid)
        bundle_pem = self.core.bundle().to_pem()
        self._ctx = tlsutil.server_context(bundle_pem)
        tlsutil.load_identity(self._ctx, chain, key)
        self._server = grpclib.server.Server([self.api, Health()])
        await self._server.start(host or "127.0.0.1", int(port), ssl=self._ctx, reuse_address=True)
        listener: Any = self._server._server  # grpclib keeps the asyncio.Server privately
        sockets = listener.sockets if listener is not None else []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        self._renew_task = asyncio.create_task(self._renew_loop(not_after))
        self._bundle_task = asyncio.create_task(self._bundle_loop())
        log.info("agent api listening", address=f"{host}:{self.port}")
        return self.port

    async def _renew_loop(self, not_after: dt.datetime) -> None:
        while True:
            now = self.core.clock.now()
            wait = max(5.0, (not_after - now).total_seconds() / 2)
            await asyncio.sleep(wait)
            try:
                chain, key, not_after = await self.api.run(self._server_svid)
                assert self._ctx is not None
                tlsutil.load_identity(self._ctx, chain, key)
                log.info("server svid renewed", not_after=not_after.isoformat())
            except TrustdError as exc:
                log.warning("server svid renewal failed; retrying", error=str(exc))
                not_after = now + dt.timedelta(seconds=20)

    async def _bundle_loop(self) -> None:
        """New CAs are trusted for new handshakes as soon as they are in the bundle."""
        seen = self.hub.version("bundle")
        while True:
            seen = await self.hub.wait("bundle", seen, 30.0)
            assert self._ctx is not None
            pem = (await self.api.run(self.core.bundle)).to_pem()
            self._ctx.load_verify_locations(cadata=pem.decode())

    async def stop(self) -> None:
        for task in (self._renew_task, self._bundle_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


__all__ = ["AgentApi", "AgentApiServer"]
