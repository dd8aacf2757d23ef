"""The policy control plane inside the server: policy, rollouts, proxy ACKs and reports.

It wraps the in-memory :class:`trustd.policy.hub.PolicyHub` (publication,
settling, safety checks) and :class:`trustd.policy.rollout.RolloutEngine`,
keeps both in the store so a restart resumes where it was, records every
change in the audit log, and tells agents (through the ChangeHub topic
``policy``) that a new version exists. Proxies' ACKs, reports and denials
arrive through agents. Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog

from trustd.api.agent.v1 import agent_pb2
from trustd.api.convert import denial_of, policy_set_message, proxy_status_of
from trustd.api.policy.v1 import policy_pb2
from trustd.audit import AuditEvent, AuditSink
from trustd.audit.events import Actor, Outcome
from trustd.clock import Clock
from trustd.dataplane.proxy import DenialEvent
from trustd.errors import FailedPreconditionError, InvalidArgumentError, TrustdError
from trustd.policy.effective import PolicySet
from trustd.policy.hub import ApplyResult, PolicyHub
from trustd.policy.model import PolicyObject, dump
from trustd.policy.rollout import ACTIVE_STATES, RolloutEngine, RolloutEvent, RolloutStatus
from trustd.policy.status import ProxyStatus
from trustd.server.changes import ChangeHub
from trustd.store.base import Store

log = structlog.get_logger(__name__)

SYSTEM = Actor.system()

POLICY_DOC = "policy.current"
ROLLOUT_DOC = "rollout.state"
TICK_SECONDS = 1.0
STATUS_MAX_AGE = dt.timedelta(minutes=2)  # a proxy silent this long no longer counts
FALLBACK_RECHECK = 5.0  # seconds: catches a policy written by another server


class StoreRolloutStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def load(self) -> dict[str, Any] | None:
        text = self._store.get_doc(ROLLOUT_DOC)
        return None if text is None else dict(json.loads(text))

    def save(self, state: dict[str, Any]) -> None:
        self._store.put_doc(ROLLOUT_DOC, json.dumps(state))


class PolicyPlane:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        audit: AuditSink,
        changes: ChangeHub,
        settle_period: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        self._store = store
        self._clock = clock
        self._audit_sink = audit
        self._changes = changes
        text = store.get_doc(POLICY_DOC)
        initial = PolicySet.from_json(json.loads(text)) if text else None
        self.hub = PolicyHub(clock=clock, initial=initial)
        self.hub.subscribe(self._published)
        self.engine = RolloutEngine(
            publisher=self.hub,
            store=StoreRolloutStore(store),
            clock=clock,
            on_event=self._rollout_event,
            settle_period=settle_period,
        )
        self._task: asyncio.Task[None] | None = None

    # -- publication ---------------------------------------------------------
    def _published(self, policy: PolicySet) -> None:
        self._store.put_doc(POLICY_DOC, json.dumps(policy.to_json()))
        self._changes.notify("policy")

    def current(self) -> PolicySet:
        return self.hub.current()

    def _audit(self, type_: str, actor: Actor, action: str, resource: str,
               outcome: Outcome = "success", reason: str = "",
               details: dict[str, Any] | None = None) -> None:
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
            if not force:
                self._refuse_during_rollout(objects, prune=prune)
            result = self.hub.apply(objects, prune=prune, force=force, dry_run=dry_run)
        except TrustdError as exc:
            if not dry_run:
                self._audit("admin.policy.apply", actor, "apply", ",".join(names)[:1000], "failure", str(exc))
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
            if ref.split("/")[0] in ("PeerAuthentication", "ClientTLSPolicy") and before.get(ref) != obj
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
        result = self.hub.set_client_tls_off_global(off, force=force)
        self._audit(
            "admin.policy.client_tls",
            actor,
            "off" if off else "on",
            "client-tls/global",
            details={"version": result.policy.version, "forced_reasons": list(result.forced_reasons)},
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
                    **{k: v for k, v in event.details.items() if isinstance(v, str | int | float | bool | list)},
                },
            )
        except TrustdError:
            log.error("rollout event could not be audited", rollout=event.rollout_id, action=event.action)

    def rollout(self, actor: Actor, command: str, **kwargs: Any) -> RolloutStatus:
        if command == "status":
            return self.engine.status()
        self._audit_sink.check()
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
            target = f"rollout/{self.engine.status().id}" if self.engine.has_rollout() else "rollout"
            details = {k: v for k, v in kwargs.items() if isinstance(v, str | int)}
            self._audit("admin.rollout." + command, actor, command, target, "failure", str(exc),
                        details)  # fmt: skip
            raise
        self._audit(
            "admin.rollout." + command,
            actor,
            command,
            f"rollout/{status.id}",
            details={"state": status.state.value, "step": status.step, "target": status.target.value},
        )
        return status

    def tick(self) -> None:
        if not self.engine.has_rollout():
            return
        try:
            self.engine.tick(self.hub.statuses(max_age=STATUS_MAX_AGE))
        except TrustdError as exc:
            log.warning("rollout tick failed", error=str(exc))

    # -- proxies (through agents) ------------------------------------------
    def ack(self, proxy_id: str, version: int) -> None:
        self.hub.ack(proxy_id, version)

    def report(self, status: ProxyStatus) -> None:
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
