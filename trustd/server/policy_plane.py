"""The policy control plane inside the server: policy, rollouts, proxy ACKs and reports.

It wraps :class:`trustd.policy.hub.PolicyHub` (publication, settling, safety
checks) and :class:`trustd.policy.rollout.RolloutEngine`, records every change
in the audit log, and tells agents (through the ChangeHub topic ``policy``)
that a new version exists. Proxies' ACKs, reports and denials arrive through
agents. Everything here runs on the server's event loop.

Everything it knows lives in the store, so that several servers on one
PostgreSQL act as one and a restart resumes where it was:

- the policy (doc ``policy.current``), published by compare-and-set: of two
  servers publishing the same successor one wins, the other re-reads and
  refuses (an admin retries; a settle or rollout step is retried by the next tick);
- every proxy's latest report and ACK (table ``proxy_statuses``, whichever
  server the proxy's agent talks to), aged out when no server heard from the
  proxy for a while;
- the rollout (doc ``rollout.state``), saved by compare-and-set: a second
  ``rollout start`` racing the first is refused in the database. Its steps are
  advanced, and commands applied, only under the ``rollout`` lease (table
  ``leases``), so one server at a time moves it; a server killed holding the
  lease loses it when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import structlog

from trustd.api.agent.v1 import agent_pb2
from trustd.api.convert import denial_of, policy_set_message, proxy_status_of
from trustd.api.policy.v1 import policy_pb2
from trustd.audit import AuditEvent, AuditSink
from trustd.audit.events import Actor, Outcome
from trustd.backoff import Backoff, Retry
from trustd.clock import Clock
from trustd.dataplane.proxy import DenialEvent
from trustd.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    TrustdError,
    UnavailableError,
)
from trustd.policy.effective import PolicySet
from trustd.policy.hub import ApplyResult, PolicyHub, PublishConflictError
from trustd.policy.model import PolicyObject, dump
from trustd.policy.rollout import ACTIVE_STATES, RolloutEngine, RolloutEvent, RolloutStatus
from trustd.policy.status import ProxyStatus
from trustd.server.changes import ChangeHub
from trustd.store.base import ProxyReportRecord, Store

log = structlog.get_logger(__name__)

SYSTEM = Actor.system()

POLICY_DOC = "policy.current"
ROLLOUT_DOC = "rollout.state"
ROLLOUT_LEASE = "rollout"  # who advances the rollout or applies a command to it, now
LEASE_TTL = dt.timedelta(seconds=15)  # a holder killed mid-step loses the lease after this
LEASE_WAIT = dt.timedelta(seconds=25)  # how long a command waits for another server's step
LEASE_BACKOFF = Backoff(initial=0.05, maximum=1.0)
TICK_SECONDS = 1.0
STATUS_MAX_AGE = dt.timedelta(minutes=2)  # a proxy silent this long no longer counts
STATUS_RETENTION = dt.timedelta(minutes=10)  # ... and is forgotten after this
PRUNE_EVERY_TICKS = 60
FALLBACK_RECHECK = 5.0  # seconds: catches a policy written by another server


class RolloutConflictError(FailedPreconditionError):
    """The rollout was changed through another server between reading and saving it."""


class LeaseBusyError(UnavailableError):
    """Another server is advancing the rollout right now."""


class StoreRolloutStore:
    """The rollout state as one document, saved by compare-and-set on what was read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._text: str | None = None  # the document as last read or written

    def load(self) -> dict[str, Any] | None:
        text = self._store.get_doc(ROLLOUT_DOC)
        self._text = text
        return None if text is None else dict(json.loads(text))

    def save(self, state: dict[str, Any]) -> None:
        text = json.dumps(state, sort_keys=True)
        if text == self._text:
            return  # nothing changed: no write
        if not self._store.put_doc(ROLLOUT_DOC, text, expect=self._text):
            raise RolloutConflictError(
                "the rollout was changed through another server meanwhile: "
                "see `trustd rollout status` and retry"
            )
        self._text = text


class StoreStatusBook:
    """Every proxy's latest report and ACK in the store, shared by the servers on it.

    Freshness is when a server last heard from the proxy (``updated_at``): a proxy
    whose agent talks to another server counts as much as a local one, and a dead
    one ages out of ``max_age`` (and of ``retention`` when none is given).
    """

    def __init__(
        self,
        store: Store,
        *,
        server_id: str,
        clock: Clock,
        retention: dt.timedelta = STATUS_RETENTION,
    ) -> None:
        self._store = store
        self._server_id = server_id
        self._clock = clock
        self._retention = retention

    def report(self, status: ProxyStatus) -> None:
        self._store.save_proxy_report(
            ProxyReportRecord(
                proxy_id=status.proxy_id,
                spiffe_id=str(status.spiffe_id),
                acked_version=status.acked_version,
                report=json.dumps(status.to_json()),
                server_id=self._server_id,
                updated_at=self._clock.now(),
            )
        )

    def ack(self, proxy_id: str, version: int) -> None:
        self._store.ack_proxy(proxy_id, version, self._clock.now())

    def forget(self, proxy_id: str) -> None:
        self._store.delete_proxy_report(proxy_id)

    def statuses(
        self, *, now: dt.datetime, max_age: dt.timedelta | None
    ) -> tuple[ProxyStatus, ...]:
        since = now - (max_age if max_age is not None else self._retention)
        out: list[ProxyStatus] = []
        for row in self._store.list_proxy_reports(since=since):
            try:
                st = ProxyStatus.from_json(json.loads(row.report))
            except (ValueError, KeyError, TypeError):
                continue  # unreadable: as if it had not reported
            if row.acked_version > st.acked_version:
                st = replace(st, acked_version=row.acked_version)
            out.append(st)
        return tuple(out)

    def prune(self) -> int:
        return self._store.prune_proxy_reports(self._clock.now() - self._retention)


class PolicyPlane:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        audit: AuditSink,
        changes: ChangeHub,
        settle_period: dt.timedelta = dt.timedelta(seconds=30),
        server_id: str = "local",
    ) -> None:
        self._store = store
        self._clock = clock
        self._audit_sink = audit
        self._changes = changes
        self._server_id = server_id
        text = store.get_doc(POLICY_DOC)
        self._policy_text = text  # the stored policy as last read or written
        self._adopting = False
        initial = PolicySet.from_json(json.loads(text)) if text else None
        self.book = StoreStatusBook(store, server_id=server_id, clock=clock)
        self.hub = PolicyHub(clock=clock, initial=initial, book=self.book, commit=self._commit)
        self.hub.subscribe(self._published)
        self._rollouts = StoreRolloutStore(store)
        self.engine = RolloutEngine(
            publisher=self.hub,
            store=self._rollouts,
            clock=clock,
            on_event=self._rollout_event,
            settle_period=settle_period,
        )
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0

    # -- publication ---------------------------------------------------------
    def _commit(self, previous: PolicySet, policy: PolicySet) -> None:
        """Store ``policy`` only if the stored one is still what this server last saw."""
        text = json.dumps(policy.to_json())
        if not self._store.put_doc(POLICY_DOC, text, expect=self._policy_text):
            self.refresh()
            raise PublishConflictError(
                f"policy version {policy.version} was not published: the policy changed "
                f"through another server meanwhile (now version {self.hub.current().version}); "
                "retry"
            )
        self._policy_text = text

    def _published(self, policy: PolicySet) -> None:
        if not self._adopting:  # another server's publication woke this one's agents already
            self._changes.notify("policy")

    def refresh(self) -> None:
        """Adopt the policy another server published (one read; parsed only when new)."""
        text = self._store.get_doc(POLICY_DOC)
        if text is None or text == self._policy_text:
            return
        policy = PolicySet.from_json(json.loads(text))
        self._policy_text = text
        self._adopting = True
        try:
            self.hub.adopt(policy)
        finally:
            self._adopting = False

    def current(self) -> PolicySet:
        self.refresh()
        return self.hub.current()

    def _audit(
        self,
        type_: str,
        actor: Actor,
        action: str,
        resource: str,
        outcome: Outcome = "success",
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        self._audit_sink.append_many([AuditEvent(
            type=type_, actor=actor, action=action, resource=resource, outcome=outcome,
            reason=reason[:4000], details=details or {},
        )])  # fmt: skip

    def apply(
        self,
        actor: Actor,
        objects: list[PolicyObject],
        *,
        prune: bool,
        force: bool,
        dry_run: bool,
    ) -> ApplyResult:
        names = [f"{o.kind}/{o.metadata.namespace}/{o.metadata.name}" for o in objects]
        if not dry_run:
            self._audit_sink.check()
        try:
            self.refresh()
            if not force:
                self._reload_rollout()
                self._refuse_during_rollout(objects, prune=prune)
            result = self.hub.apply(objects, prune=prune, force=force, dry_run=dry_run)
        except TrustdError as exc:
            if not dry_run:
                self._audit(
                    "admin.policy.apply",
                    actor,
                    "apply",
                    ",".join(names)[:1000],
                    "failure",
                    str(exc),
                )
            raise
        if not dry_run:
            self._audit(
                "admin.policy.apply",
                actor,
                "apply",
                ",".join(names)[:1000],
                details={
                    "version": result.policy.version,
                    "published": result.published,
                    "forced_reasons": list(result.forced_reasons),
                    "changes": result.diff.lines()[:50],
                },
            )
        return result

    def _refuse_during_rollout(self, objects: list[PolicyObject], *, prune: bool) -> None:
        """While a rollout is active its overlay decides inside the selector, and every step
        republishes it: a PeerAuthentication or ClientTLSPolicy change would be undone by
        the next step. Refuse it, naming the rollout (``--force`` applies it anyway; the
        rollout then waits for the modes it wants and fails rather than report them)."""
        if not self.engine.has_rollout():
            return
        st = self.engine.status()
        if st.state not in ACTIVE_STATES:
            return
        before = {o.ref: dump(o) for o in self.hub.current().objects}
        after: dict[str, dict[str, Any] | None] = {o.ref: dump(o) for o in objects}
        if prune:
            after = {**dict.fromkeys(before), **after}
        changed = sorted(
            ref
            for ref, obj in after.items()
            if ref.split("/")[0] in ("PeerAuthentication", "ClientTLSPolicy")
            and before.get(ref) != obj
        )
        if changed:
            raise FailedPreconditionError(
                f"rollout {st.id} ({st.selector} to {st.target.value}) is {st.state.value}: "
                f"it decides the mTLS modes it covers, so changing {', '.join(changed[:5])} now "
                "would be undone by its next step; wait for it to complete, or "
                "`trustd rollout abort`, or apply with --force"
            )

    def client_tls_off(self, actor: Actor, off: bool, *, force: bool) -> ApplyResult:
        self._audit_sink.check()
        self.refresh()
        result = self.hub.set_client_tls_off_global(off, force=force)
        self._audit(
            "admin.policy.client_tls",
            actor,
            "off" if off else "on",
            "client-tls/global",
            details={
                "version": result.policy.version,
                "forced_reasons": list(result.forced_reasons),
            },
        )
        return result

    # -- rollouts ------------------------------------------------------------
    def _rollout_event(self, event: RolloutEvent) -> None:
        try:
            self._audit(
                "rollout.step",
                SYSTEM,
                event.action,
                f"rollout/{event.rollout_id}",
                "failure" if event.action in ("failed",) else "success",
                event.reason or "",
                {
                    "step": event.step,
                    "phase": event.phase,
                    "policy_version": event.policy_version,
                    **{
                        k: v
                        for k, v in event.details.items()
                        if isinstance(v, str | int | float | bool | list)
                    },
                },
            )
        except TrustdError:
            log.error(
                "rollout event could not be audited", rollout=event.rollout_id, action=event.action
            )

    def _reload_rollout(self) -> None:
        self.engine.reload()

    def _take_lease(self) -> bool:
        return self._store.take_lease(ROLLOUT_LEASE, self._server_id, self._clock.now(), LEASE_TTL)

    def _release_lease(self) -> None:
        try:
            self._store.release_lease(ROLLOUT_LEASE, self._server_id)
        except TrustdError as exc:  # it expires on its own
            log.warning("rollout lease not released", error=str(exc))

    def rollout(self, actor: Actor, command: str, **kwargs: Any) -> RolloutStatus:
        """One rollout command; anything but ``status`` runs under the rollout lease
        (:class:`LeaseBusyError` while another server holds it)."""
        if command == "status":
            self._reload_rollout()
            return self.engine.status()
        self._audit_sink.check()
        if not self._take_lease():
            raise LeaseBusyError(
                "another server is advancing the rollout right now: retry in a moment"
            )
        try:
            return self._rollout_locked(actor, command, **kwargs)
        finally:
            self._release_lease()

    async def rollout_async(self, actor: Actor, command: str, **kwargs: Any) -> RolloutStatus:
        """:meth:`rollout`, waiting (with backoff) while another server holds the lease:
        its step takes milliseconds, or the lease of a server killed meanwhile expires."""
        retry = Retry(LEASE_BACKOFF, clock=self._clock)
        deadline = self._clock.now() + LEASE_WAIT
        while True:
            try:
                return self.rollout(actor, command, **kwargs)
            except LeaseBusyError:
                if self._clock.now() >= deadline:
                    raise
            await retry.sleep()

    def _rollout_locked(self, actor: Actor, command: str, **kwargs: Any) -> RolloutStatus:
        try:
            self.refresh()
            self._reload_rollout()
        except TrustdError as exc:
            self._audit("admin.rollout." + command, actor, command, "rollout", "failure", str(exc))
            raise
        statuses = self.hub.statuses(max_age=STATUS_MAX_AGE)
        try:
            if command == "start":
                registered = [e.spiffe_id for e in self._store.list_entries()]
                status = self.engine.start(statuses=statuses, registered=registered, **kwargs)
            elif command == "pause":
                status = self.engine.pause()
            elif command == "resume":
                status = self.engine.resume()
            elif command == "abort":
                status = self.engine.abort()
            else:
                raise InvalidArgumentError(f"unknown rollout command {command!r}")
        except TrustdError as exc:  # a refused command is an admin action too
            if isinstance(exc, RolloutConflictError | PublishConflictError):
                self._reload_rollout()
            target = (
                f"rollout/{self.engine.status().id}" if self.engine.has_rollout() else "rollout"
            )
            details = {k: v for k, v in kwargs.items() if isinstance(v, str | int)}
            self._audit("admin.rollout." + command, actor, command, target, "failure", str(exc),
                        details)  # fmt: skip
            raise
        self._audit(
            "admin.rollout." + command,
            actor,
            command,
            f"rollout/{status.id}",
            details={
                "state": status.state.value,
                "step": status.step,
                "target": status.target.value,
            },
        )
        return status

    def tick(self) -> None:
        """Advance a running rollout, on whichever server takes the lease first."""
        self._ticks += 1
        try:
            if self._ticks % PRUNE_EVERY_TICKS == 0:
                self.book.prune()
            self.refresh()
            self._reload_rollout()
            if not self.engine.has_rollout() or self.engine.status().state != "running":
                return
            if not self._take_lease():
                return  # another server advances it now
            try:
                self._reload_rollout()  # what the last holder saved
                self.engine.tick(self.hub.statuses(max_age=STATUS_MAX_AGE))
            finally:
                self._release_lease()
        except (RolloutConflictError, PublishConflictError) as exc:
            log.info("rollout tick lost a race; the next tick retries", reason=str(exc))
            with contextlib.suppress(TrustdError):
                self._reload_rollout()
        except TrustdError as exc:
            log.warning("rollout tick failed", error=str(exc))

    # -- proxies (through agents) ------------------------------------------
    def ack(self, proxy_id: str, version: int) -> None:
        self.refresh()
        self.hub.ack(proxy_id, version)

    def report(self, status: ProxyStatus) -> None:
        self.refresh()
        self.hub.report(status)

    def denial(self, agent: Actor, event: DenialEvent) -> None:
        """A proxy refused a connection: one audit event, actor = the proxy's peer as seen."""
        addr = event.peer_address or None
        actor = (
            Actor(kind="spiffe", id=event.peer_spiffe_id, addr=addr)
            if event.peer_spiffe_id
            else Actor(kind="unix", id=f"peer:{event.peer_address or 'unknown'}"[:200], addr=addr)
        )
        self._audit(
            "proxy.connection.deny",
            actor,
            "connect",
            event.listener[:200],
            "failure",
            event.detail[:500],
            {
                "proxy_id": event.proxy_id[:200],
                "reason_code": event.reason[:100],
                "local_spiffe_id": event.local_spiffe_id or "",
                "policy_version": event.policy_version,
                "reported_by": agent.id,
            },
        )

    def apply_reports(self, agent: Actor, reports: agent_pb2.ReportPolicyRequest) -> None:
        """What an agent relays from its proxies: ACKs, statuses and denials."""
        for ack in reports.acks:
            self.ack(ack.proxy_id[:200], ack.version)
        for status in reports.statuses:
            try:
                self.report(proxy_status_of(status))
            except (ValueError, TrustdError):
                continue  # a malformed report is dropped, never fatal
        for denial in reports.denials:
            self.denial(agent, denial_of(denial))

    def upstream_for(self, agent: Actor) -> PlaneUpstream:
        """The agent's PolicyUpstream, served from this plane (in-process or the agent API)."""
        return PlaneUpstream(self, self._changes, agent)

    # -- lifecycle -----------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.tick()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PlaneUpstream:
    """One agent's view of the policy plane: its ``PolicyUpstream``."""

    def __init__(self, plane: PolicyPlane, changes: ChangeHub, agent: Actor) -> None:
        self._plane = plane
        self._changes = changes
        self._agent = agent

    async def watch_policy(self) -> AsyncIterator[policy_pb2.PolicySet]:
        seen = self._changes.version("policy")
        last = -1
        while True:
            current = self._plane.current()
            if current.version != last:
                last = current.version
                yield policy_set_message(current)
            seen = await self._changes.wait("policy", seen, FALLBACK_RECHECK)

    async def send_policy_reports(self, reports: agent_pb2.ReportPolicyRequest) -> None:
        self._plane.apply_reports(self._agent, reports)
