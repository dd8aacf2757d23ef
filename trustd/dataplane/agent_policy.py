"""The proxy's policy from the local agent: a versioned watch stream it acknowledges.

Talks to ``trustd.policy.v1.PolicyRelay`` on the agent socket (typed messages from
``trustd/api/policy/v1/policy.proto``). The first
version is waited for at start (a proxy never serves on a guess); after that
the last version is kept through agent restarts while the stream reconnects
with backoff. ACKs, reports and denials are sent in the background and never
block a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from trustd.api.convert import denial_message, policy_set_of, proxy_status_message
from trustd.api.policy.v1 import policy_pb2 as pb
from trustd.api.policy.v1.policy_grpc import PolicyRelayStub
from trustd.backoff import Backoff, Retry
from trustd.dataplane.policysource import PolicyListener
from trustd.dataplane.proxy import DenialEvent
from trustd.errors import TrustdError, UnavailableError
from trustd.policy.effective import PolicySet
from trustd.policy.status import ProxyStatus

log = structlog.get_logger(__name__)


class AgentPolicySource:
    def __init__(
        self, *, socket_path: str, proxy_id: str, first_policy_timeout: float = 15.0
    ) -> None:
        self._path = socket_path
        self.proxy_id = proxy_id
        self._timeout = first_policy_timeout
        self._policy: PolicySet | None = None
        self._listeners: dict[int, PolicyListener] = {}
        self._next = 0
        self._first = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None

    def _channel(self) -> Channel:
        return Channel(path=self._path)

    async def start(self) -> None:
        self._watch = asyncio.ensure_future(self._follow())
        try:
            await asyncio.wait_for(self._first.wait(), self._timeout)
        except TimeoutError:
            raise UnavailableError(
                f"no policy from the agent at {self._path} within {self._timeout:.0f}s: "
                "is the agent running, and does this process have an entry?"
            ) from None

    async def _follow(self) -> None:
        retry = Retry(Backoff(initial=0.2, maximum=10.0))
        while True:
            channel = self._channel()
            try:
                async with PolicyRelayStub(channel).Watch.open() as st:
                    await st.send_message(pb.WatchRequest(proxy_id=self.proxy_id), end=True)
                    async for msg in st:
                        self._set(policy_set_of(msg.policy))
                        retry.reset()
            except (
                GRPCError,
                OSError,
                StreamTerminatedError,
                ValueError,
                KeyError,
                TrustdError,
            ) as exc:
                log.warning("policy stream from the agent lost; retrying", error=str(exc))
            finally:
                channel.close()
            await retry.sleep()

    def _set(self, policy: PolicySet) -> None:
        if self._policy is not None and policy.version <= self._policy.version:
            return
        self._policy = policy
        self._first.set()
        for listener in list(self._listeners.values()):
            listener(policy)

    # -- PolicySource ------------------------------------------------------------
    def current(self) -> PolicySet:
        return self._policy if self._policy is not None else PolicySet.empty()

    def subscribe(self, listener: PolicyListener) -> Callable[[], None]:
        key = self._next
        self._next += 1
        self._listeners[key] = listener

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def _send(self, method: str, call_on: Callable[[PolicyRelayStub], Awaitable[pb.Empty]]) -> None:
        async def call() -> None:
            channel = self._channel()
            try:
                await call_on(PolicyRelayStub(channel))
            except (GRPCError, OSError, StreamTerminatedError, TimeoutError) as exc:
                log.warning("could not send to the agent", method=method, error=str(exc))
            finally:
                channel.close()

        task = asyncio.ensure_future(call())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ack(self, version: int) -> None:
        request = pb.AckRequest(ack=pb.Ack(proxy_id=self.proxy_id, version=version))
        self._send("Ack", lambda stub: stub.Ack(request, timeout=10))

    def report(self, status: ProxyStatus) -> None:
        request = pb.ReportRequest(status=proxy_status_message(status))
        self._send("Report", lambda stub: stub.Report(request, timeout=10))

    def deny(self, event: DenialEvent) -> None:
        request = pb.DenyRequest(denial=denial_message(event))
        self._send("Deny", lambda stub: stub.Deny(request, timeout=10))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)
