"""The lossless TLS rollout: a state machine, driven by a clock and by proxy reports.

``trustd rollout start --selector GLOB --to STRICT|DISABLE [--canary N]
[--step-timeout D]`` creates one rollout. It moves the servers the selector
matches, and the clients that call them, through three steps, each published
as a rollout overlay (see :class:`trustd.policy.effective.Overlay`):

=====  ======================  ===================================
step   to STRICT               to DISABLE
=====  ======================  ===================================
1      servers PERMISSIVE      servers PERMISSIVE
2      clients MUTUAL          clients plaintext (overlay DISABLE)
3      servers STRICT          servers DISABLE
=====  ======================  ===================================

During step 1 the clients are *held*: they decide as if the rollout's overlay
did not exist, so they keep sending what they sent before, and going back is
always safe. Step 2 moves every client of the matched servers (AUTO ones and
those a ClientTLSPolicy pinned), once every server instance accepts both.
Step 3 starts only after a settling period in which no affected server proxy
reports a plaintext connection (to STRICT: none open, none new) or a new mTLS
connection (to DISABLE; open ones keep working, as every change only applies
to new connections).

Each step has up to two phases: ``canary`` (the first N affected proxy
instances of the step's side, by proxy id, get the new mode) and ``all``.
Every phase is published as a new policy version and waits until every
affected proxy (servers matched by the selector and clients calling them)
acknowledges that version. A phase that does not finish within the step
timeout makes the rollout ``failed``; ``resume`` retries it, ``abort`` goes
back to the last safe step: the overlay as it was after the last completed
step (or as it was before the rollout).

States: ``running``, ``paused``, ``complete``, ``aborted``, ``failed``. One
rollout exists at a time; the last one's state stays visible until the next
starts. State is saved through :class:`RolloutStore` after every transition
and every step is reported through the ``on_event`` callback (for the audit
log).
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from trustd.clock import Clock
from trustd.errors import InvalidArgumentError
from trustd.policy.effective import ClientMode, Overlay, PeerMode, PolicySet, compile_glob
from trustd.policy.errors import InvalidGlobError, NoRolloutError, RolloutError
from trustd.policy.safety import authz_reasons
from trustd.policy.status import ProxyStatus
from trustd.spiffeid import SpiffeId

log = structlog.get_logger(__name__)

DEFAULT_STEP_TIMEOUT = dt.timedelta(minutes=5)
DEFAULT_SETTLE_PERIOD = dt.timedelta(seconds=30)


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETE = "complete"
    ABORTED = "aborted"
    FAILED = "failed"


ACTIVE_STATES = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.FAILED)


class Target(enum.StrEnum):
    STRICT = "STRICT"
    DISABLE = "DISABLE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str  # as shown by `rollout status`
    side: str  # "servers" or "clients": whose proxies the canary phase picks
    server_mode: PeerMode  # the servers' mode once the step is done
    client_mode: ClientMode | None  # the clients' mode once done; None: they keep what they had
    gate: str | None  # "plaintext" or "tls": what must be quiet before the step starts


def steps_for(target: Target) -> tuple[Step, Step, Step]:
    """Servers accept both first; then clients switch; servers follow once nothing of the
    old transport is left (the gate)."""
    strict = target is Target.STRICT
    client_mode = ClientMode.MUTUAL if strict else ClientMode.DISABLE
    return (
        Step(
            name="servers-permissive",
            side="servers",
            server_mode=PeerMode.PERMISSIVE,
            client_mode=None,
            gate=None,
        ),
        Step(
            name="clients-mtls" if strict else "clients-plaintext",
            side="clients",
            server_mode=PeerMode.PERMISSIVE,
            client_mode=client_mode,
            gate=None,
        ),
        Step(
            name="servers-strict" if strict else "servers-disable",
            side="servers",
            server_mode=PeerMode.STRICT if strict else PeerMode.DISABLE,
            client_mode=client_mode,
            gate="plaintext" if strict else "tls",
        ),
    )


class PolicyPublisher(Protocol):
    """Where the rollout reads the current policy and publishes the next version.

    The server implements it on its store and fans the set out to agents;
    :class:`trustd.policy.hub.PolicyHub` is the in-memory one.
    """

    def current(self) -> PolicySet: ...

    def publish(self, policy: PolicySet, *, reason: str) -> PolicySet:
        """Store and distribute ``policy`` (a successor of current()); return what was stored."""
        ...


class RolloutStore(Protocol):
    """Persistence for the one rollout: a JSON-compatible dict, saved whole."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class MemoryRolloutStore:
    """Keeps the state in memory (tests, or an embedded server without a store)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.saves = 0  # how many times save() was called

    def load(self) -> dict[str, Any] | None:
        return dict(self.state) if self.state is not None else None

    def save(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
        self.saves += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutEvent:
    """One rollout transition, for the audit log (type ``rollout.step`` and friends)."""

    rollout_id: str  # e.g. "r-3f9a1c2b"
    action: str  # started, step, step-complete, paused, resumed, aborted, failed, completed
    step: str | None  # the step name, when there is one
    phase: str | None  # canary, all or gate
    policy_version: int | None  # the version published, when one was
    reason: str | None  # why (failures, aborts)
    details: dict[str, Any] = field(default_factory=dict)  # selector, target, canary instances...


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutStatus:
    id: str  # the rollout's id
    state: RolloutState  # running, paused, complete, aborted or failed
    step: str  # the current (or last) step's name
    step_index: int  # 0-2; 3 when complete
    phase: str  # gate, canary, all or done
    target: Target  # STRICT or DISABLE
    selector: str  # the server glob
    canary: int  # N, as asked
    canary_instances: tuple[str, ...]  # the proxies of the current canary phase
    policy_version: int | None  # the version the current phase waits for
    waiting_for: tuple[str, ...]  # proxies that have not acknowledged it yet (at the last tick)
    not_enforced: tuple[str, ...]  # ports and destinations not yet enforcing the phase's modes
    enforcement: tuple[dict[str, Any], ...]  # per affected port/destination: enforced vs wanted
    reason: str | None  # why it failed or was aborted
    started_at: dt.datetime  # when `rollout start` ran
    updated_at: dt.datetime  # the last transition

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "step": self.step,
            "stepIndex": self.step_index,
            "phase": self.phase,
            "target": self.target.value,
            "selector": self.selector,
            "canary": self.canary,
            "canaryInstances": list(self.canary_instances),
            "policyVersion": self.policy_version,
            "waitingFor": list(self.waiting_for),
            "notEnforced": list(self.not_enforced),
            "enforcement": [dict(e) for e in self.enforcement],
            "reason": self.reason,
            "startedAt": self.started_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


def overlay_name(selector: str) -> str:
    return f"rollout:{selector}"


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _time(v: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(v) if v else None


def _matches_no_server(
    selector: str, statuses: Sequence[ProxyStatus], registered: Sequence[SpiffeId]
) -> str:
    """Why ``rollout start`` refuses a selector that covers no server at all."""
    known = sorted({str(st.spiffe_id) for st in statuses if st.is_server})
    text = (
        f"selector {selector} matches no server proxy that reports to trustd and no "
        "registered workload, so the rollout would change nothing"
    )
    if known:
        shown = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
        text += f"; server proxies reporting now: {shown}"
    elif registered:
        ids = sorted({str(r) for r in registered})
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        text += f"; registered workloads: {shown}"
    else:
        text += "; nothing is registered and no server proxy reports"
    if selector.endswith("/*"):
        text += f"; '*' matches within one path segment: {selector[:-1]}** covers every ID below it"
    return text


class RolloutEngine:
    """Runs one rollout at a time. Not thread-safe: call it from one task or thread."""

    def __init__(
        self,
        *,
        publisher: PolicyPublisher,
        store: RolloutStore,
        clock: Clock,
        on_event: Callable[[RolloutEvent], None] | None = None,
        settle_period: dt.timedelta = DEFAULT_SETTLE_PERIOD,
    ) -> None:
        self._publisher = publisher
        self._store = store
        self._clock = clock
        self._on_event = on_event or (lambda _e: None)
        self._settle = settle_period
        self._s: dict[str, Any] | None = store.load()

    # -- commands ----------------------------------------------------------

    def start(
        self,
        *,
        selector: str,
        target: str,
        canary: int = 0,
        step_timeout: dt.timedelta = DEFAULT_STEP_TIMEOUT,
        statuses: Sequence[ProxyStatus] = (),
        registered: Sequence[SpiffeId] = (),
    ) -> RolloutStatus:
        """Start a rollout over the servers ``selector`` matches.

        Refused when the selector covers no server proxy that reports and no registered
        workload (``registered``: the registry's SPIFFE IDs), since it would change nothing
        and could only "complete" vacuously. A registered server whose proxy has not
        reported yet holds each step until it does (or the step times out).
        """
        try:
            compile_glob(selector)
        except InvalidGlobError as exc:
            raise InvalidArgumentError(str(exc)) from None
        try:
            tgt = Target(target.upper())
        except ValueError:
            raise InvalidArgumentError(
                f"invalid rollout target {target!r}: use STRICT or DISABLE"
            ) from None
        if canary < 0:
            raise InvalidArgumentError("invalid --canary: use 0 or a positive number of instances")
        if step_timeout <= dt.timedelta(0):
            raise InvalidArgumentError("invalid --step-timeout: use a positive duration such as 5m")
        if self._s is not None and RolloutState(self._s["state"]) in ACTIVE_STATES:
            raise RolloutError(
                f"rollout {self._s['id']} is {self._s['state']}: "
                "wait for it to complete or run `trustd rollout abort` first"
            )
        glob = compile_glob(selector)
        if not any(st.is_server and glob.matches(st.spiffe_id) for st in statuses) and not any(
            glob.matches(sid) for sid in registered
        ):
            raise RolloutError(_matches_no_server(selector, statuses, registered))
        now = self._clock.now()
        self._refuse_denials(selector, tgt, statuses, now)
        original = self._publisher.current().overlay(overlay_name(selector))
        self._s = {
            "id": "r-" + secrets.token_hex(4),
            "selector": selector,
            "target": tgt.value,
            "canary": canary,
            "stepTimeoutSeconds": step_timeout.total_seconds(),
            "state": RolloutState.RUNNING.value,
            "stepIndex": 0,
            "phase": "gate",
            "phaseVersion": None,
            "phaseStartedAt": _iso(now),
            "quietSince": None,
            "lastTotals": {},
            "canaryInstances": [],
            "originalOverlay": original.to_json() if original else None,
            "safeOverlay": original.to_json() if original else None,
            "waitingFor": [],
            "notEnforced": [],
            "enforcement": [],
            "reason": None,
            "startedAt": _iso(now),
            "updatedAt": _iso(now),
        }
        self._emit("started", details={"selector": selector, "target": tgt.value, "canary": canary})
        log.info("rollout started", rollout=self._s["id"], selector=selector, target=tgt.value)
        self._enter_step(statuses)
        return self._status()

    def _refuse_denials(
        self, selector: str, target: Target, statuses: Sequence[ProxyStatus], now: dt.datetime
    ) -> None:
        """Refuse a rollout whose end state an AuthorizationPolicy would turn into denials:
        to DISABLE, clients lose their identity (a plaintext peer matches no principal)."""
        last = steps_for(target)[-1]
        final = Overlay(
            name=overlay_name(selector),
            selector=selector,
            server_mode=last.server_mode,
            client_mode=last.client_mode,
        )
        current = self._publisher.current()
        reasons = authz_reasons(
            current, current.with_overlay(final, name=final.name), statuses, now=now
        )
        if reasons:
            raise RolloutError(
                f"the rollout to {target.value} would end in denied calls: "
                + "; ".join(reasons[:5])
            )

    def pause(self) -> RolloutStatus:
        s = self._need()
        if s["state"] != RolloutState.RUNNING:
            raise RolloutError(f"rollout {s['id']} is {s['state']}: only a running rollout pauses")
        s["state"] = RolloutState.PAUSED.value
        self._emit("paused")
        return self._status()

    def resume(self) -> RolloutStatus:
        s = self._need()
        if s["state"] not in (RolloutState.PAUSED, RolloutState.FAILED):
            raise RolloutError(
                f"rollout {s['id']} is {s['state']}: only a paused or failed rollout resumes"
            )
        s["state"] = RolloutState.RUNNING.value
        s["reason"] = None
        s["phaseStartedAt"] = _iso(self._clock.now())  # a fresh step timeout
        s["quietSince"] = None  # the settling period starts over
        self._emit("resumed")
        return self._status()

    def abort(self) -> RolloutStatus:
        s = self._need()
        if s["state"] not in ACTIVE_STATES:
            raise RolloutError(
                f"rollout {s['id']} is {s['state']}: start a rollout the other way to go back"
            )
        safe = s["safeOverlay"]
        overlay = Overlay.from_json(safe) if safe else None
        name = overlay_name(s["selector"])
        published = self._publisher.publish(
            self._publisher.current().with_overlay(overlay, name=name),
            reason=f"rollout {s['id']} aborted: back to the last safe step",
        )
        s["state"] = RolloutState.ABORTED.value
        s["reason"] = "aborted by an operator"
        s["phaseVersion"] = published.version
        self._emit("aborted", version=published.version, reason=s["reason"])
        log.warning("rollout aborted", rollout=s["id"], policy_version=published.version)
        return self._status()

    def status(self) -> RolloutStatus:
        self._need()
        return self._status()

    def reload(self) -> None:
        """Read the state again from the store (another server may have changed it)."""
        self._s = self._store.load()

    def has_rollout(self) -> bool:
        return self._s is not None

    # -- progress ----------------------------------------------------------

    def tick(self, statuses: Sequence[ProxyStatus]) -> RolloutStatus | None:
        """Advance as far as the proxies' reports allow; call it periodically and on reports."""
        s = self._s
        if s is None:
            return None
        for _ in range(8):  # a tick may finish several phases in a row, never loop forever
            if s["state"] != RolloutState.RUNNING:
                break
            if not self._advance(statuses):
                break
        return self._status()

    # -- internals -----------------------------------------------------------

    def _need(self) -> dict[str, Any]:
        if self._s is None:
            raise NoRolloutError("no rollout has been started: use `trustd rollout start`")
        return self._s

    def _steps(self) -> tuple[Step, Step, Step]:
        assert self._s is not None
        return steps_for(Target(self._s["target"]))

    def _affected(self, statuses: Sequence[ProxyStatus]) -> tuple[list[str], list[str]]:
        assert self._s is not None
        glob = compile_glob(self._s["selector"])
        servers = sorted(
            {st.proxy_id for st in statuses if st.is_server and glob.matches(st.spiffe_id)}
        )
        clients = sorted(
            {
                st.proxy_id
                for st in statuses
                if any(glob.matches(d.spiffe_id) for d in st.destinations)
            }
        )
        return servers, clients

    def _timeout(self) -> dt.timedelta:
        assert self._s is not None
        return dt.timedelta(seconds=float(self._s["stepTimeoutSeconds"]))

    def _enter_step(self, statuses: Sequence[ProxyStatus]) -> None:
        s = self._s
        assert s is not None
        step = self._steps()[s["stepIndex"]]
        s["phaseStartedAt"] = _iso(self._clock.now())
        if step.gate is not None:
            s["phase"] = "gate"
            s["quietSince"] = None
            s["lastTotals"] = {}
            s["phaseVersion"] = None
            s["waitingFor"] = []
            self._save()
            self._advance(statuses)
            return
        self._begin_publication(statuses)

    def _begin_publication(self, statuses: Sequence[ProxyStatus]) -> None:
        s = self._s
        assert s is not None
        step = self._steps()[s["stepIndex"]]
        servers, clients = self._affected(statuses)
        side = servers if step.side == "servers" else clients
        canary = side[: int(s["canary"])]
        if canary and len(canary) < len(side):
            self._publish_phase("canary", canary)
        else:
            self._publish_phase("all", [])

    def _safe_overlay(self) -> Overlay | None:
        """The overlay after the last completed step (before the rollout: the original one)."""
        s = self._s
        assert s is not None
        return Overlay.from_json(s["safeOverlay"]) if s["safeOverlay"] else None

    def _step_overlay(self, step: Step) -> Overlay:
        """The overlay once ``step`` is done for every instance."""
        s = self._s
        assert s is not None
        client, hold = step.client_mode, False
        if client is None:
            # Clients keep what they had: the original overlay's explicit mode, or else
            # whatever they would do without this overlay (so AUTO does not follow yet).
            orig = Overlay.from_json(s["originalOverlay"]) if s["originalOverlay"] else None
            client = orig.client_mode if orig is not None else None
            hold = client is None
        return Overlay(
            name=overlay_name(s["selector"]),
            selector=s["selector"],
            server_mode=step.server_mode,
            client_mode=client,
            hold_clients=hold,
        )

    def _publish_phase(self, phase: str, canary: list[str]) -> None:
        s = self._s
        assert s is not None
        step = self._steps()[s["stepIndex"]]
        name = overlay_name(s["selector"])
        target = self._step_overlay(step)
        if phase == "canary":
            before = self._safe_overlay()
            overlay = Overlay(
                name=name,
                selector=s["selector"],
                server_mode=before.server_mode if before else None,
                client_mode=before.client_mode if before else None,
                hold_clients=before.hold_clients if before else True,
                canary_instances=frozenset(canary),
                canary_server_mode=target.server_mode if step.side == "servers" else None,
                canary_client_mode=target.client_mode if step.side == "clients" else None,
            )
        else:
            overlay = target
        published = self._publisher.publish(
            self._publisher.current().with_overlay(overlay, name=name),
            reason=f"rollout {s['id']} step {step.name} ({phase})",
        )
        s["phase"] = phase
        s["phaseVersion"] = published.version
        s["phaseStartedAt"] = _iso(self._clock.now())
        s["canaryInstances"] = canary
        s["waitingFor"] = []
        self._emit(
            "step",
            version=published.version,
            details={"canary_instances": canary} if canary else {},
        )
        log.info(
            "rollout step published",
            rollout=s["id"],
            step=step.name,
            phase=phase,
            policy_version=published.version,
        )

    def _advance(self, statuses: Sequence[ProxyStatus]) -> bool:
        """One transition if its condition holds; True when something moved."""
        s = self._s
        assert s is not None
        now = self._clock.now()
        step = self._steps()[s["stepIndex"]]
        started = _time(s["phaseStartedAt"]) or now
        servers, clients = self._affected(statuses)
        if s["phase"] == "gate" and step.gate is None:
            # Entered but not published (the publication lost a race with another
            # server's): publish it now.
            self._begin_publication(statuses)
            self._save()
            return True
        if s["phase"] == "gate":
            noisy = self._noisy(step.gate or "plaintext", servers, statuses)
            quiet_since = _time(s["quietSince"])
            if noisy or quiet_since is None:
                s["quietSince"] = _iso(now)
                quiet_since = now
            s["waitingFor"] = noisy
            if not noisy and now - quiet_since >= self._settle:
                self._begin_publication(statuses)
                self._save()
                return True
            if now - started >= self._timeout():
                what = "plaintext" if step.gate == "plaintext" else "new mTLS connections"
                seen = ", ".join(noisy) if noisy else "none, but the settling period did not end"
                self._fail(f"step {step.name}: {what} still seen before the step timeout ({seen})")
                return False
            self._save()
            return False
        version = int(s["phaseVersion"])
        acked = {st.proxy_id: st.acked_version for st in statuses}
        waiting = [p for p in sorted(set(servers) | set(clients)) if acked.get(p, 0) < version]
        s["waitingFor"] = waiting
        rows = self._enforcement(step, statuses)
        s["enforcement"] = rows
        unenforced = [r["text"] for r in rows if not r["ok"]]
        if not servers:
            unenforced.insert(0, f"no server proxy matched by {s['selector']} reports (yet)")
        s["notEnforced"] = unenforced
        if waiting or unenforced:
            if now - started >= self._timeout():
                if waiting:
                    self._fail(
                        f"step {step.name} ({s['phase']}): {len(waiting)} proxy(ies) did not "
                        f"acknowledge policy version {version} in time: {', '.join(waiting[:10])}"
                    )
                else:
                    self._fail(
                        f"step {step.name} ({s['phase']}): acknowledged but not enforced "
                        f"before the step timeout: {'; '.join(unenforced[:10])}"
                    )
            else:
                self._save()
            return False
        if s["phase"] == "canary":
            self._publish_phase("all", [])
            self._save()
            return True
        # The step is done everywhere: it becomes the safe point to go back to.
        s["safeOverlay"] = self._step_overlay(step).to_json()
        self._emit("step-complete", version=version)
        if s["stepIndex"] == len(self._steps()) - 1:
            s["stepIndex"] = len(self._steps())
            s["phase"] = "done"
            s["state"] = RolloutState.COMPLETE.value
            s["canaryInstances"] = []
            self._emit("completed", version=version)
            log.info("rollout complete", rollout=s["id"], policy_version=version)
            return False
        s["stepIndex"] += 1
        self._enter_step(statuses)
        return True

    def _wanted(self, step: Step, side: str, proxy_id: str) -> PeerMode | ClientMode | None:
        """The mode the current phase gives one affected proxy (None: nothing to check)."""
        s = self._s
        assert s is not None
        target = self._step_overlay(step)
        if s["phase"] == "canary" and step.side == side and proxy_id not in s["canaryInstances"]:
            safe = self._safe_overlay()  # the instances outside the canary keep the last step's
            if safe is None:
                return None
            return safe.server_mode if side == "servers" else safe.client_mode
        return target.server_mode if side == "servers" else target.client_mode

    def _enforcement(self, step: Step, statuses: Sequence[ProxyStatus]) -> list[dict[str, Any]]:
        """What every affected proxy reports it enforces, against what the phase wants.

        A phase is done only when every row is ok: an acknowledged version is not
        enough, the proxy must report the mode its listeners apply to new connections.
        The last step to STRICT also needs no plaintext accepted since STRICT took effect.
        """
        s = self._s
        assert s is not None
        glob = compile_glob(s["selector"])
        final_strict = step.server_mode is PeerMode.STRICT
        rows: list[dict[str, Any]] = []
        for st in sorted(statuses, key=lambda x: x.proxy_id):
            if st.is_server and glob.matches(st.spiffe_id):
                want = self._wanted(step, "servers", st.proxy_id)
                for ib in st.inbound:
                    ok = want is None or ib.mode == want.value
                    text = (
                        f"{st.proxy_id} port {ib.port} enforces {ib.mode or 'an unknown mode'}"
                        + (f", not {want.value}" if not ok and want is not None else "")
                    )
                    if ok and final_strict and s["phase"] == "all" and ib.plaintext_since_mode:
                        ok = False
                        text = (
                            f"{st.proxy_id} port {ib.port} accepted {ib.plaintext_since_mode} "
                            "plaintext connection(s) after going STRICT"
                        )
                    rows.append({
                        "proxyId": st.proxy_id, "spiffeId": str(st.spiffe_id), "side": "server",
                        "port": ib.port, "enforced": ib.mode,
                        "wanted": want.value if want is not None else None,
                        "plaintextSinceMode": ib.plaintext_since_mode, "ok": ok, "text": text,
                    })  # fmt: skip
            for d in st.destinations:
                if not glob.matches(d.spiffe_id):
                    continue
                cwant = self._wanted(step, "clients", st.proxy_id)
                transport = {ClientMode.MUTUAL: "mtls", ClientMode.DISABLE: "plaintext"}.get(
                    cwant  # type: ignore[arg-type]
                )
                ok = transport is None or d.transport == transport
                text = (
                    f"{st.proxy_id} -> {d.spiffe_id}:{d.port} uses {d.transport or 'unknown'}"
                    + (f", not {transport}" if not ok else "")
                )
                rows.append({
                    "proxyId": st.proxy_id, "spiffeId": str(st.spiffe_id), "side": "client",
                    "destination": str(d.spiffe_id), "port": d.port, "enforced": d.transport,
                    "wanted": transport, "ok": ok, "text": text,
                })  # fmt: skip
        return rows

    def _noisy(self, gate: str, servers: list[str], statuses: Sequence[ProxyStatus]) -> list[str]:
        """Server proxies that saw plaintext (or new mTLS) since the last tick."""
        s = self._s
        assert s is not None
        last: dict[str, int] = s["lastTotals"]
        noisy: list[str] = []
        by_id = {st.proxy_id: st for st in statuses}
        for pid in servers:
            st = by_id[pid]
            if gate == "plaintext":
                total = sum(i.plaintext_total for i in st.inbound)
                active = sum(i.plaintext_active for i in st.inbound)
            else:
                total = sum(i.tls_total for i in st.inbound)
                active = 0  # open mTLS connections keep working after DISABLE; only new ones count
            if active or (pid in last and last[pid] != total):
                noisy.append(pid)
            last[pid] = total
        return noisy

    def _fail(self, reason: str) -> None:
        s = self._s
        assert s is not None
        s["state"] = RolloutState.FAILED.value
        s["reason"] = reason
        self._emit("failed", reason=reason)
        log.warning("rollout failed", rollout=s["id"], reason=reason)

    def _emit(
        self,
        action: str,
        *,
        version: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        s = self._s
        assert s is not None
        s["updatedAt"] = _iso(self._clock.now())
        self._save()
        steps = self._steps()
        idx = min(int(s["stepIndex"]), len(steps) - 1)
        self._on_event(
            RolloutEvent(
                rollout_id=s["id"],
                action=action,
                step=steps[idx].name,
                phase=s["phase"],
                policy_version=version,
                reason=reason,
                details={"selector": s["selector"], "target": s["target"], **(details or {})},
            )
        )

    def _save(self) -> None:
        assert self._s is not None
        self._store.save(self._s)

    def _status(self) -> RolloutStatus:
        s = self._s
        assert s is not None
        steps = self._steps()
        idx = int(s["stepIndex"])
        return RolloutStatus(
            id=s["id"],
            state=RolloutState(s["state"]),
            step=steps[min(idx, len(steps) - 1)].name,
            step_index=idx,
            phase=s["phase"],
            target=Target(s["target"]),
            selector=s["selector"],
            canary=int(s["canary"]),
            canary_instances=tuple(s["canaryInstances"]),
            policy_version=s["phaseVersion"],
            waiting_for=tuple(s["waitingFor"]),
            not_enforced=tuple(s.get("notEnforced", ())),
            enforcement=tuple(s.get("enforcement", ())),
            reason=s["reason"],
            started_at=_time(s["startedAt"]) or self._clock.now(),
            updated_at=_time(s["updatedAt"]) or self._clock.now(),
        )
