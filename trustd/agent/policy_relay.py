"""Policy on the agent socket: proxies watch versioned policy and send ACKs, reports, denials.

Service ``trustd.policy.v1.PolicyRelay`` (``trustd/api/policy/v1/policy.proto``):

- ``Watch``: the current PolicySet, then every new version;
- ``Ack`` / ``Report``: what a proxy applies and sees (the rollout waits on these);
- ``Deny``: a connection the proxy refused, for the audit log.

Callers are attested like every caller of the agent socket. Only a workload
with an identity here may talk to it, and a report is accepted only for a
SPIFFE ID that caller is entitled to, so no local process can fake "no
plaintext left" for someone else's server.

Upstream, the agent relays to its server through a ``PolicyUpstream``:
in-process for ``trustd up``, the agent API for a remote server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpclib.server
import structlog
from grpclib.server import Stream

from trustd.agent.cache import AgentCache, workload_key
from trustd.api.agent.v1 import agent_pb2
from trustd.api.edge import Edge, server_stream, unary
from trustd.api.policy.v1 import policy_grpc
from trustd.api.policy.v1 import policy_pb2 as pb
from trustd.backoff import Backoff, Retry
from trustd.errors import PermissionDeniedError, TrustdError
from trustd.selectors import Caller

log = structlog.get_logger(__name__)


class PolicyUpstream(Protocol):
    def watch_policy(self) -> AsyncIterator[pb.PolicySet]:
        """The current policy, then every new version."""
        ...

    async def send_policy_reports(self, reports: agent_pb2.ReportPolicyRequest) -> None: ...


class PolicyRelay(policy_grpc.PolicyRelayBase, Edge):
    def __init__(
        self,
        *,
        upstream: PolicyUpstream,
        cache: Callable[[], AgentCache],
        caller_of: Callable[[grpclib.server.Stream[Any, Any]], Caller],
    ) -> None:
        self._upstream = upstream
        self._cache = cache
        self._caller_of = caller_of
        self._current: pb.PolicySet | None = None
        self._version = 0
        self._changed = asyncio.Condition()
        self._pending = agent_pb2.ReportPolicyRequest()  # what goes upstream next
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- callers ---------------------------------------------------------------
    def _entitled(self, stream: Stream[Any, Any]) -> set[str]:
        caller = self._caller_of(stream)
        ids = {str(e.spiffe_id) for e in self._cache().matching_entries(workload_key(caller))}
        if not ids:
            raise PermissionDeniedError(
                "this process has no identity here: register an entry for it"
            )
        return ids

    @server_stream
    async def Watch(
        self, s: Stream[Any, Any], req: pb.WatchRequest
    ) -> AsyncIterator[pb.WatchResponse]:
        self._entitled(s)
        seen = [-1]
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self._version != seen[0] and self._current is not None
                )
                seen[0] = self._version
                policy = self._current
            yield pb.WatchResponse(policy=policy)

    @unary
    async def Ack(self, s: Stream[Any, Any], req: pb.AckRequest) -> pb.Empty:
        self._entitled(s)
        self._pending.acks.append(pb.Ack(proxy_id=req.ack.proxy_id[:200], version=req.ack.version))
        self._flush.set()
        return pb.Empty()

    @unary
    async def Report(self, s: Stream[Any, Any], req: pb.ReportRequest) -> pb.Empty:
        if not req.HasField("status") or req.status.spiffe_id not in self._entitled(s):
            raise PermissionDeniedError("a report may only be made for this process's own identity")
        self._pending.statuses.append(req.status)
        self._flush.set()
        return pb.Empty()

    @unary
    async def Deny(self, s: Stream[Any, Any], req: pb.DenyRequest) -> pb.Empty:
        if not req.HasField("denial") or req.denial.local_spiffe_id not in self._entitled(s):
            raise PermissionDeniedError("a denial may only be reported by the proxy that made it")
        self._pending.denials.append(req.denial)
        self._flush.set()
        return pb.Empty()

    # -- upstream --------------------------------------------------------------
    async def _follow(self) -> None:
        retry = Retry(Backoff(initial=0.5, maximum=30.0))
        while True:
            try:
                async for policy in self._upstream.watch_policy():
                    async with self._changed:
                        self._current = policy
                        self._version += 1
                        self._changed.notify_all()
                    retry.reset()
            except TrustdError as exc:
                log.warning("policy watch lost; retrying", error=str(exc))
            await retry.sleep()

    async def _send(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await asyncio.sleep(0.05)  # batch what arrives together
            reports, self._pending = self._pending, agent_pb2.ReportPolicyRequest()
            try:
                await self._upstream.send_policy_reports(reports)
            except TrustdError as exc:
                log.warning("policy reports not delivered; will retry", error=str(exc))
                reports.MergeFrom(self._pending)  # what came meanwhile goes after
                self._pending = reports
                await asyncio.sleep(1.0)
                self._flush.set()

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._follow()), asyncio.ensure_future(self._send())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
