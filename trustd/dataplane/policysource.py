"""Where the proxy's policy comes from: the PolicySource seam.

A proxy reads :meth:`PolicySource.current` for every new connection, calls
:meth:`PolicySource.ack` with each version it has started applying, and sends
a :class:`~trustd.policy.status.ProxyStatus` through :meth:`PolicySource.report`
periodically (the rollout engine waits on both). Implementations:

- :class:`trustd.policy.hub.HubPolicySource`: an in-process control plane;
- the agent's versioned policy stream (the lead's, over the agent socket);
- :class:`FilePolicySource`: policy YAML files, re-read when they change;
- :class:`StaticPolicySource`: set by the caller (tests, no policy at all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from trustd.policy.effective import PolicyLayer, PolicySet
from trustd.policy.errors import PolicyValidationError
from trustd.policy.loader import load_files
from trustd.policy.status import ProxyStatus

log = structlog.get_logger(__name__)

PolicyListener = Callable[[PolicySet], None]


class PolicySource(Protocol):
    def current(self) -> PolicySet:
        """The newest policy (PolicySet.empty() when there is none)."""
        ...

    def subscribe(self, listener: PolicyListener) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) with every new version; returns an unsubscribe."""
        ...

    def ack(self, version: int) -> None:
        """The proxy applies ``version`` to new connections from now on."""
        ...

    def report(self, status: ProxyStatus) -> None:
        """What the proxy runs and sees (plaintext counts for the rollout)."""
        ...


class StaticPolicySource:
    """A policy set by the caller. Records ACKs and reports for inspection."""

    def __init__(self, policy: PolicySet | None = None) -> None:
        self._policy = policy or PolicySet.empty()
        self._listeners: dict[int, PolicyListener] = {}
        self._next = 0
        self.acks: list[int] = []  # every version acknowledged, in order
        self.reports: list[ProxyStatus] = []  # every report, in order (the last 100)

    def current(self) -> PolicySet:
        return self._policy

    def set(self, policy: PolicySet) -> None:
        self._policy = policy
        for listener in list(self._listeners.values()):
            listener(policy)

    def subscribe(self, listener: PolicyListener) -> Callable[[], None]:
        key = self._next
        self._next += 1
        self._listeners[key] = listener

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def ack(self, version: int) -> None:
        self.acks.append(version)

    def report(self, status: ProxyStatus) -> None:
        self.reports.append(status)
        del self.reports[:-100]


class FilePolicySource(StaticPolicySource):
    """Policy YAML files or directories, re-read when they change.

    An invalid edit is logged and ignored: the previous policy stays, as with
    ``trustd policy apply``. Each accepted change becomes the next version.
    """

    def __init__(self, paths: Sequence[str | Path], *, poll_interval: float = 5.0) -> None:
        super().__init__()
        self._paths = [Path(p) for p in paths]
        self._poll = poll_interval
        self._stamp: tuple[tuple[str, int], ...] | None = None
        self._task: asyncio.Task[None] | None = None

    def _stamps(self) -> tuple[tuple[str, int], ...]:
        out = []
        for p in self._paths:
            files = sorted(p.rglob("*")) if p.is_dir() else [p]
            for f in files:
                try:
                    out.append((str(f), f.stat().st_mtime_ns))
                except OSError:
                    out.append((str(f), -1))
        return tuple(out)

    def load(self) -> bool:
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            objects = load_files(self._paths)
        except PolicyValidationError as exc:
            log.error(
                "policy files rejected, keeping the previous policy", problems=list(exc.problems)
            )
            return False
        cur = self.current()
        if cur.version > 0 and objects == cur.objects:
            return False
        # No control plane collects ACKs here, so there is nothing to keep pending.
        self.set(PolicySet(version=cur.version + 1, layer=PolicyLayer(objects=objects)))
        log.info("policy files loaded", policy_version=self.current().version, objects=len(objects))
        return True

    async def start(self) -> None:
        self.load()
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="policy-files")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            self.load()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
