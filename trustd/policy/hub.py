"""An in-memory control plane for policy: publish, fan out, collect ACKs and reports.

:class:`PolicyHub` is what the rollout engine publishes through
(:class:`trustd.policy.rollout.PolicyPublisher`) and what proxies in the same
process read (:meth:`PolicyHub.source` gives each one a
:class:`trustd.dataplane.policysource.PolicySource`). The server's own
implementation keeps the PolicySet in its store and relays it to agents, but
follows the same rules:

- every publication is a successor with a higher version;
- after every ACK or report, once every server proxy runs the current version,
  the pending layers are dropped in a new version (:meth:`PolicySet.settle`),
  so AUTO clients follow a server only after it really accepts mTLS;
- ``apply`` refuses a change that would drop traffic unless forced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from trustd.clock import Clock
from trustd.errors import FailedPreconditionError
from trustd.policy.effective import PolicySet
from trustd.policy.errors import UnsafeChangeError
from trustd.policy.model import PolicyObject
from trustd.policy.safety import RECENT_PLAINTEXT, PolicyDiff, check_change, diff
from trustd.policy.status import ProxyStatus

log = structlog.get_logger(__name__)

Listener = Callable[[PolicySet], None]


class StatusBook(Protocol):
    """Where the proxies' reports and ACKs are kept: this process's memory
    (:class:`MemoryStatusBook`) or, with several servers, the shared store."""

    def report(self, status: ProxyStatus) -> None: ...
    def ack(self, proxy_id: str, version: int) -> None: ...
    def forget(self, proxy_id: str) -> None: ...
    def statuses(
        self, *, now: dt.datetime, max_age: dt.timedelta | None
    ) -> tuple[ProxyStatus, ...]: ...


class PublishConflictError(FailedPreconditionError):
    """The policy changed elsewhere (another server) between reading and publishing."""


Commit = Callable[[PolicySet, PolicySet], None]


class MemoryStatusBook:
    """The latest report of every proxy and its newest ACK, in memory."""

    def __init__(self) -> None:
        self._statuses: dict[str, ProxyStatus] = {}
        self._acks: dict[str, int] = {}

    def report(self, status: ProxyStatus) -> None:
        self._statuses[status.proxy_id] = status
        self.ack(status.proxy_id, status.acked_version)

    def ack(self, proxy_id: str, version: int) -> None:
        if version > self._acks.get(proxy_id, 0):
            self._acks[proxy_id] = version

    def forget(self, proxy_id: str) -> None:
        self._statuses.pop(proxy_id, None)
        self._acks.pop(proxy_id, None)

    def statuses(
        self, *, now: dt.datetime, max_age: dt.timedelta | None
    ) -> tuple[ProxyStatus, ...]:
        out = []
        for pid, st in sorted(self._statuses.items()):
            if (
                max_age is not None
                and st.reported_at is not None
                and now - st.reported_at > max_age
            ):
                continue
            acked = max(st.acked_version, self._acks.get(pid, 0))
            out.append(replace(st, acked_version=acked) if acked != st.acked_version else st)
        return tuple(out)


def merge_objects(
    current: Sequence[PolicyObject], new: Sequence[PolicyObject]
) -> tuple[PolicyObject, ...]:
    """``kubectl apply`` semantics: objects in ``new`` replace those with the same
    kind, namespace and name, or are added; every other object stays."""
    incoming = {o.key: o for o in new}
    out = [incoming.pop(o.key, o) for o in current]
    out.extend(o for o in new if o.key in incoming)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    policy: PolicySet  # what was published (with dry_run: what would have been)
    diff: PolicyDiff  # the change against the previous version
    forced_reasons: tuple[str, ...]  # safety problems overridden with force (audit them)
    published: bool  # False for dry runs and for changes that change nothing


class PolicyHub:
    """Holds the current PolicySet. Single-threaded: use it from one event loop."""

    def __init__(
        self,
        *,
        clock: Clock,
        initial: PolicySet | None = None,
        recent_plaintext: dt.timedelta = RECENT_PLAINTEXT,
        book: StatusBook | None = None,
        commit: Commit | None = None,
    ) -> None:
        """``book``: where reports are kept (memory by default). ``commit(previous, new)``
        runs before a publication takes effect and may refuse it by raising
        :class:`PublishConflictError` (the server compares-and-sets the stored policy)."""
        self._clock = clock
        self._recent = recent_plaintext  # plaintext this recent blocks a server going STRICT
        self._current = initial or PolicySet.empty()
        self._listeners: dict[int, tuple[str | None, Listener]] = {}
        self._next_listener = 0
        self._book: StatusBook = book or MemoryStatusBook()
        self._commit = commit
        self._publishing = False
        self.published: list[tuple[int, str]] = []  # (version, reason), for tests and status

    # -- PolicyPublisher ---------------------------------------------------

    def current(self) -> PolicySet:
        return self._current

    def publish(self, policy: PolicySet, *, reason: str) -> PolicySet:
        if policy.version <= self._current.version:
            raise FailedPreconditionError(
                f"policy version {policy.version} is not newer than {self._current.version}: "
                "build it as a successor of the current policy"
            )
        if self._commit is not None:
            self._commit(self._current, policy)
        self._current = policy
        self.published.append((policy.version, reason))
        log.info(
            "policy published",
            policy_version=policy.version,
            policy_hash=policy.content_hash,
            reason=reason,
        )
        self._publishing = True
        try:
            for _, listener in list(self._listeners.values()):
                listener(policy)
        finally:
            self._publishing = False
        self._maybe_settle()
        return policy

    def adopt(self, policy: PolicySet) -> bool:
        """Take a newer policy published elsewhere (another server) as the current one,
        telling the local listeners; an older or equal version is ignored."""
        if policy.version <= self._current.version:
            return False
        self._current = policy
        log.info("policy adopted", policy_version=policy.version, policy_hash=policy.content_hash)
        self._publishing = True
        try:
            for _, listener in list(self._listeners.values()):
                listener(policy)
        finally:
            self._publishing = False
        return True

    # -- admin operations ----------------------------------------------------

    def apply(
        self,
        objects: Sequence[PolicyObject],
        *,
        prune: bool = False,
        force: bool = False,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Apply validated objects (merged by key, or replacing all with ``prune``)."""
        cur = self._current
        objs = tuple(objects) if prune else merge_objects(cur.objects, objects)
        return self._change(cur.successor(objects=objs), force=force, dry_run=dry_run)

    def set_client_tls_off_global(
        self, off: bool, *, force: bool = False, dry_run: bool = False
    ) -> ApplyResult:
        """The emergency switch: ``policy client-tls off --global`` (and back on)."""
        cur = self._current
        return self._change(cur.successor(client_tls_off_global=off), force=force, dry_run=dry_run)

    def _change(self, proposed: PolicySet, *, force: bool, dry_run: bool) -> ApplyResult:
        cur = self._current
        change = diff(cur, proposed)
        reasons = check_change(
            cur, proposed, self.statuses(), now=self._clock.now(), recent=self._recent
        )
        if reasons and not force:
            raise UnsafeChangeError(reasons)
        if dry_run or change.is_empty:
            return ApplyResult(
                policy=proposed, diff=change, forced_reasons=tuple(reasons), published=False
            )
        published = self.publish(proposed, reason="policy apply" + (" (forced)" if reasons else ""))
        return ApplyResult(
            policy=published, diff=change, forced_reasons=tuple(reasons), published=True
        )

    # -- proxies -------------------------------------------------------------

    def subscribe(self, listener: Listener, *, proxy_id: str | None = None) -> Callable[[], None]:
        key = self._next_listener
        self._next_listener += 1
        self._listeners[key] = (proxy_id, listener)

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def ack(self, proxy_id: str, version: int) -> None:
        self._book.ack(proxy_id, version)
        self._maybe_settle()

    def report(self, status: ProxyStatus) -> None:
        self._book.report(status)
        self._maybe_settle()

    def forget(self, proxy_id: str) -> None:
        """Drop a proxy that went away (its ACKs no longer hold anything back)."""
        self._book.forget(proxy_id)
        self._maybe_settle()

    def statuses(self, *, max_age: dt.timedelta | None = None) -> tuple[ProxyStatus, ...]:
        """The latest report of every proxy, with its newest ACK folded in."""
        return self._book.statuses(now=self._clock.now(), max_age=max_age)

    def source(self, proxy_id: str) -> HubPolicySource:
        return HubPolicySource(self, proxy_id)

    def _maybe_settle(self) -> None:
        if self._publishing or not self._current.pending:
            return
        servers = [st for st in self.statuses() if st.is_server]
        floor = min((st.acked_version for st in servers), default=self._current.version)
        settled = self._current.settle(floor)
        if settled is not None:
            try:
                self.publish(settled, reason=f"every server proxy runs version {floor}")
            except PublishConflictError as exc:  # another server published first; it settles
                log.info("policy not settled here", reason=str(exc))


class HubPolicySource:
    """One proxy's view of a hub: what :class:`trustd.dataplane.Proxy` reads policy from."""

    def __init__(self, hub: PolicyHub, proxy_id: str) -> None:
        self._hub = hub
        self.proxy_id = proxy_id

    def current(self) -> PolicySet:
        return self._hub.current()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._hub.subscribe(listener, proxy_id=self.proxy_id)

    def ack(self, version: int) -> None:
        self._hub.ack(self.proxy_id, version)

    def report(self, status: ProxyStatus) -> None:
        self._hub.report(status)
