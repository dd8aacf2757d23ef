"""Policy on the agent socket: proxies watch versioned policy and send ACKs, reports, denials.

Service ``trustd.policy.v1.PolicyRelay`` (JSON over gRPC, like the admin API):

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

from trustd.agent.cache import AgentCache, workload_key
from trustd.errors import PermissionDeniedError, TrustdError
from trustd.selectors import Caller
from trustd.server.rpc import JsonService

log = structlog.get_logger(__name__)

SERVICE = "trustd.policy.v1.PolicyRelay"


class PolicyUpstream(Protocol):
    def watch_policy(self) -> AsyncIterator[dict[str, Any]]:
        """The current policy (PolicySet.to_json()), then every new version."""
        ...

    async def send_policy_reports(
        self,
        *,
        acks: list[tuple[str, int]],
        statuses: list[dict[str, Any]],
        denials: list[dict[str, Any]],
    ) -> None: ...


class PolicyRelay(JsonService):
    service_name = SERVICE

    def __init__(
        self,
        *,
        upstream: PolicyUpstream,
        cache: Callable[[], AgentCache],
        caller_of: Callable[[grpclib.server.Stream[Any, Any]], Caller],
    ) -> None:
        super().__init__()
        self._upstream = upstream
        self._cache = cache
        self._caller_of = caller_of
        self._current: dict[str, Any] | None = None
        self._version = 0
        self._changed = asyncio.Condition()
        self._acks: list[tuple[str, int]] = []
        self._statuses: list[dict[str, Any]] = []
        self._denials: list[dict[str, Any]] = []
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.unary("Ack", self._ack)
        self.unary("Report", self._report)
        self.unary("Deny", self._deny)
        self.server_stream("Watch", self._watch)

    # -- callers ---------------------------------------------------------------
    def _entitled(self, stream: grpclib.server.Stream[Any, Any]) -> set[str]:
        caller = self._caller_of(stream)
        ids = {str(e.spiffe_id) for e in self._cache().matching_entries(workload_key(caller))}
        if not ids:
            raise PermissionDeniedError("this process has no identity here: register an entry for it")
        return ids

    async def _watch(self, stream: Any, d: dict[str, Any]) -> AsyncIterator[Any]:
        self._entitled(stream)
        seen = [-1]
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self._version != seen[0] and self._current is not None
                )
                seen[0] = self._version
                doc = self._current
            yield {"policy": doc}

    async def _ack(self, stream: Any, d: dict[str, Any]) -> Any:
        self._entitled(stream)
        self._acks.append((str(d.get("proxy_id", ""))[:200], int(d.get("version", 0))))
        self._flush.set()
        return {}

    async def _report(self, stream: Any, d: dict[str, Any]) -> Any:
        ids = self._entitled(stream)
        status = d.get("status")
        if not isinstance(status, dict) or str(status.get("spiffeId")) not in ids:
            raise PermissionDeniedError("a report may only be made for this process's own identity")
        self._statuses.append(status)
        self._flush.set()
        return {}

    async def _deny(self, stream: Any, d: dict[str, Any]) -> Any:
        ids = self._entitled(stream)
        event = d.get("event")
        if not isinstance(event, dict) or str(event.get("local_spiffe_id")) not in ids:
            raise PermissionDeniedError("a denial may only be reported by the proxy that made it")
        self._denials.append(event)
        self._flush.set()
        return {}

    # -- upstream --------------------------------------------------------------
    async def _follow(self) -> None:
        delay = 0.5
        while True:
            try:
                async for doc in self._upstream.watch_policy():
                    async with self._changed:
                        self._current = doc
                        self._version += 1
                        self._changed.notify_all()
                    delay = 0.5
            except TrustdError as exc:
                log.warning("policy watch lost; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _send(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await asyncio.sleep(0.05)  # batch what arrives together
            acks, self._acks = self._acks, []
            statuses, self._statuses = self._statuses, []
            denials, self._denials = self._denials, []
            try:
                await self._upstream.send_policy_reports(acks=acks, statuses=statuses, denials=denials)
            except TrustdError as exc:
                log.warning("policy reports not delivered; will retry", error=str(exc))
                self._acks[:0], self._statuses[:0], self._denials[:0] = acks, statuses, denials
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
