"""The rollout state machine, driven by a fake clock and simulated proxy reports."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from trustd.clock import FakeClock
from trustd.errors import InvalidArgumentError
from trustd.policy import (
    Destination,
    InboundStats,
    MemoryRolloutStore,
    NoRolloutError,
    PeerMode,
    PolicyHub,
    PolicySet,
    ProxyStatus,
    RolloutEngine,
    RolloutError,
    RolloutEvent,
    RolloutState,
    Transport,
    check_change,
    load_text,
)
from trustd.policy.effective import PolicyLayer
from trustd.spiffeid import SpiffeId

TD = "spiffe://td"
SERVER = SpiffeId.parse(f"{TD}/ns/shop/sa/backend")
CLIENT = SpiffeId.parse(f"{TD}/ns/shop/sa/frontend")
PORT = 16006
SELECTOR = f"{TD}/ns/shop/sa/backend"
SETTLE = dt.timedelta(seconds=30)


class Fleet:
    """Simulated proxies: they report, and acknowledge what the hub publishes when told to."""

    def __init__(self, hub: PolicyHub, *, servers: int = 1, clients: int = 1) -> None:
        self.hub = hub
        self.status: dict[str, ProxyStatus] = {}
        for i in range(servers):
            pid = f"backend-{i}"
            self.status[pid] = ProxyStatus(
                proxy_id=pid, spiffe_id=SERVER, acked_version=0, inbound=(InboundStats(port=PORT),)
            )
        for i in range(clients):
            pid = f"frontend-{i}"
            self.status[pid] = ProxyStatus(
                proxy_id=pid,
                spiffe_id=CLIENT,
                acked_version=0,
                destinations=(Destination(spiffe_id=SERVER, port=PORT),),
            )
        self.ack_all()

    def ack(self, *pids: str) -> None:
        """The proxies take the current version and report what they now enforce (as the
        real proxy does: the mode its accept path applies to new connections)."""
        ps = self.hub.current()
        for pid in pids:
            st = self.status[pid]
            inbound = []
            for old in st.inbound:
                mode = ps.peer_mode(st.spiffe_id, old.port, pid).value
                inbound.append(
                    old
                    if mode == old.mode
                    else replace(old, mode=mode, mode_version=ps.version, plaintext_since_mode=0)
                )
            dests = tuple(
                replace(
                    d, transport=ps.client_transport(st.spiffe_id, d.spiffe_id, d.port, pid).value
                )
                for d in st.destinations
            )
            self.status[pid] = replace(
                st, acked_version=ps.version, inbound=tuple(inbound), destinations=dests
            )
            self.hub.report(self.status[pid])

    def ack_all(self) -> None:
        # Acking may make the hub publish a settled version: ack until nothing moves.
        for _ in range(5):
            before = self.hub.current().version
            self.ack(*self.status)
            if self.hub.current().version == before:
                return

    def plaintext(self, pid: str, *, active: int, total: int) -> None:
        st = self.status[pid]
        self.status[pid] = replace(
            st, inbound=(replace(st.inbound[0], plaintext_active=active, plaintext_total=total),)
        )
        self.hub.report(self.status[pid])

    def tls(self, pid: str, *, total: int) -> None:
        st = self.status[pid]
        self.status[pid] = replace(st, inbound=(replace(st.inbound[0], tls_total=total),))
        self.hub.report(self.status[pid])

    def statuses(self) -> list[ProxyStatus]:
        return list(self.hub.statuses())


def pa(mode: str) -> str:
    return (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: n, namespace: shop}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )


class World:
    def __init__(self, mode: str = "DISABLE", *, servers: int = 1, clients: int = 1) -> None:
        self.clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        self.hub = PolicyHub(
            clock=self.clock,
            initial=PolicySet(version=1, layer=PolicyLayer(objects=load_text(pa(mode)))),
        )
        self.fleet = Fleet(self.hub, servers=servers, clients=clients)
        self.store = MemoryRolloutStore()
        self.events: list[RolloutEvent] = []
        self.engine = self.new_engine()
        self.unsafe: list[str] = []
        self._last = self.hub.current()
        self.hub.subscribe(self._check_safe)

    def new_engine(self) -> RolloutEngine:
        return RolloutEngine(
            publisher=self.hub,
            store=self.store,
            clock=self.clock,
            on_event=self.events.append,
            settle_period=SETTLE,
        )

    def _check_safe(self, new: PolicySet) -> None:
        # Every publication of the rollout must be safe for the proxies that exist.
        self.unsafe += check_change(
            self._last, new, self.fleet.statuses(), now=self.clock.now(), require_converged=False
        )
        self._last = new

    def tick(self) -> RolloutState:
        st = self.engine.tick(self.fleet.statuses())
        assert st is not None
        return st.state

    def server_mode(self, pid: str = "backend-0") -> PeerMode:
        return self.hub.current().peer_mode(SERVER, PORT, pid)

    def client(self, pid: str = "frontend-0") -> Transport:
        return self.hub.current().client_transport(CLIENT, SERVER, PORT, pid)

    def settle(self) -> None:
        self.tick()
        self.clock.advance(SETTLE)
        self.tick()


def test_rollout_to_strict_moves_servers_then_clients_then_servers() -> None:
    w = World("DISABLE")
    st = w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    assert (st.state, st.step, st.phase) == (RolloutState.RUNNING, "servers-permissive", "all")
    assert w.server_mode() is PeerMode.PERMISSIVE
    assert w.client() is Transport.PLAINTEXT  # clients are held during step 1
    assert w.tick() is RolloutState.RUNNING
    assert w.engine.status().waiting_for == ("backend-0", "frontend-0")

    w.fleet.ack_all()
    assert w.client() is Transport.PLAINTEXT  # still held, even after the servers acked
    w.tick()
    assert w.engine.status().step == "clients-mtls"
    assert w.client() is Transport.MTLS and w.server_mode() is PeerMode.PERMISSIVE

    w.fleet.ack_all()
    w.tick()
    st = w.engine.status()
    assert (st.step, st.phase) == ("servers-strict", "gate")
    assert w.server_mode() is PeerMode.PERMISSIVE  # not before the settling period
    w.settle()
    assert w.engine.status().phase == "all" and w.server_mode() is PeerMode.STRICT

    w.fleet.ack_all()
    st_final = w.engine.tick(w.fleet.statuses())
    assert st_final is not None and st_final.state is RolloutState.COMPLETE
    assert w.server_mode() is PeerMode.STRICT and w.client() is Transport.MTLS
    assert w.unsafe == []
    assert st_final.to_json()["state"] == "complete"
    assert {"state", "step", "target"} <= st_final.to_json().keys()
    actions = [e.action for e in w.events]
    assert actions[0] == "started" and actions[-1] == "completed"
    assert [e.step for e in w.events if e.action == "step"] == [
        "servers-permissive",
        "clients-mtls",
        "servers-strict",
    ]


def test_strict_waits_until_no_plaintext_is_seen_for_the_settling_period() -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    for _ in range(2):
        w.fleet.ack_all()
        w.tick()
    assert w.engine.status().phase == "gate"
    w.fleet.plaintext("backend-0", active=1, total=5)
    w.clock.advance(SETTLE * 2)
    w.tick()
    assert w.engine.status().phase == "gate" and w.engine.status().waiting_for == ("backend-0",)
    w.fleet.plaintext("backend-0", active=0, total=6)  # the last one closed, one more came
    w.tick()
    w.clock.advance(SETTLE / 2)
    w.tick()
    assert w.engine.status().phase == "gate"
    w.clock.advance(SETTLE / 2)
    w.tick()
    assert w.engine.status().phase == "all" and w.server_mode() is PeerMode.STRICT


def test_canary_instances_go_first_and_auto_clients_wait_for_every_instance() -> None:
    w = World("DISABLE", servers=3, clients=2)
    st = w.engine.start(selector=SELECTOR, target="STRICT", canary=1, statuses=w.fleet.statuses())
    assert st.phase == "canary" and st.canary_instances == ("backend-0",)
    assert w.server_mode("backend-0") is PeerMode.PERMISSIVE
    assert w.server_mode("backend-1") is PeerMode.DISABLE
    assert w.client("frontend-0") is Transport.PLAINTEXT
    w.fleet.ack_all()
    w.tick()
    assert w.engine.status().phase == "all"
    assert w.server_mode("backend-2") is PeerMode.PERMISSIVE
    w.fleet.ack_all()
    w.tick()
    st = w.engine.status()
    assert (st.step, st.phase, st.canary_instances) == ("clients-mtls", "canary", ("frontend-0",))
    assert (
        w.client("frontend-0") is Transport.MTLS and w.client("frontend-1") is Transport.PLAINTEXT
    )
    w.fleet.ack_all()
    w.tick()
    assert w.client("frontend-1") is Transport.MTLS
    w.fleet.ack_all()
    w.tick()
    w.settle()
    st = w.engine.status()
    assert (st.step, st.phase) == ("servers-strict", "canary")
    assert (
        w.server_mode("backend-0") is PeerMode.STRICT
        and w.server_mode("backend-1") is PeerMode.PERMISSIVE
    )
    w.fleet.ack_all()
    w.tick()
    w.fleet.ack_all()
    w.tick()
    assert w.engine.status().state is RolloutState.COMPLETE
    assert all(w.server_mode(f"backend-{i}") is PeerMode.STRICT for i in range(3))
    assert w.unsafe == []


def test_each_step_waits_for_every_affected_proxy_to_ack() -> None:
    w = World("DISABLE", servers=2, clients=2)
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    w.fleet.ack("backend-0", "backend-1", "frontend-0")
    w.tick()
    st = w.engine.status()
    assert st.step == "servers-permissive" and st.waiting_for == ("frontend-1",)
    w.fleet.ack("frontend-1")
    w.tick()
    assert w.engine.status().step == "clients-mtls"


def test_step_timeout_fails_the_rollout_and_resume_retries() -> None:
    w = World("DISABLE")
    w.engine.start(
        selector=SELECTOR,
        target="STRICT",
        step_timeout=dt.timedelta(minutes=1),
        statuses=w.fleet.statuses(),
    )
    w.clock.advance(dt.timedelta(minutes=2))
    assert w.tick() is RolloutState.FAILED
    st = w.engine.status()
    assert "did not acknowledge policy version" in (st.reason or "") and "backend-0" in (
        st.reason or ""
    )
    assert w.events[-1].action == "failed"
    w.fleet.ack_all()
    assert w.tick() is RolloutState.FAILED  # a failed rollout stays put until resumed
    w.engine.resume()
    w.tick()
    assert w.engine.status().step == "clients-mtls"


def test_gate_timeout_fails_naming_the_noisy_server() -> None:
    w = World("DISABLE")
    w.engine.start(
        selector=SELECTOR,
        target="STRICT",
        step_timeout=dt.timedelta(minutes=1),
        statuses=w.fleet.statuses(),
    )
    for _ in range(2):
        w.fleet.ack_all()
        w.tick()
    w.fleet.plaintext("backend-0", active=2, total=2)
    w.clock.advance(dt.timedelta(minutes=2))
    assert w.tick() is RolloutState.FAILED
    assert "plaintext still seen" in (w.engine.status().reason or "")
    assert w.server_mode() is PeerMode.PERMISSIVE


def test_pause_stops_progress_and_resume_continues() -> None:
    w = World("DISABLE")
    w.engine.start(
        selector=SELECTOR,
        target="STRICT",
        step_timeout=dt.timedelta(minutes=1),
        statuses=w.fleet.statuses(),
    )
    assert w.engine.pause().state is RolloutState.PAUSED
    w.fleet.ack_all()
    w.clock.advance(dt.timedelta(minutes=5))  # no timeout while paused
    assert w.tick() is RolloutState.PAUSED
    assert w.engine.status().step == "servers-permissive"
    w.engine.resume()
    w.tick()
    assert w.engine.status().step == "clients-mtls"
    assert [e.action for e in w.events][1:4] == ["step", "paused", "resumed"]


@pytest.mark.parametrize(
    ("advance_steps", "server", "client"),
    [
        (0, PeerMode.DISABLE, Transport.PLAINTEXT),  # step 1 running: back to before the rollout
        (1, PeerMode.PERMISSIVE, Transport.PLAINTEXT),  # step 2 running: back to after step 1
        (2, PeerMode.PERMISSIVE, Transport.MTLS),  # step 3 (gate) running: back to after step 2
    ],
)
def test_abort_returns_to_the_last_safe_step(
    advance_steps: int, server: PeerMode, client: Transport
) -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    for _ in range(advance_steps):
        w.fleet.ack_all()
        w.tick()
    st = w.engine.abort()
    assert st.state is RolloutState.ABORTED
    w.fleet.ack_all()
    assert w.server_mode() is server
    assert w.client() is client
    assert w.unsafe == []
    assert w.events[-1].action == "aborted"


def test_abort_during_the_strict_canary_goes_back_to_permissive() -> None:
    w = World("DISABLE", servers=2)
    w.engine.start(selector=SELECTOR, target="STRICT", canary=1, statuses=w.fleet.statuses())
    for _ in range(4):
        w.fleet.ack_all()
        w.tick()
    w.settle()
    assert w.engine.status().phase == "canary" and w.server_mode("backend-0") is PeerMode.STRICT
    w.engine.abort()
    assert w.server_mode("backend-0") is PeerMode.PERMISSIVE
    assert w.client() is Transport.MTLS
    assert w.unsafe == []


def test_rollout_to_disable_moves_clients_to_plaintext_before_servers() -> None:
    w = World("STRICT")
    w.engine.start(selector=SELECTOR, target="DISABLE", statuses=w.fleet.statuses())
    assert w.server_mode() is PeerMode.PERMISSIVE and w.client() is Transport.MTLS
    w.fleet.ack_all()
    w.tick()
    assert w.engine.status().step == "clients-plaintext" and w.client() is Transport.PLAINTEXT
    w.fleet.ack_all()
    w.tick()
    assert w.engine.status().phase == "gate"
    w.fleet.tls("backend-0", total=10)
    w.tick()
    w.fleet.tls("backend-0", total=11)  # new mTLS connections are still arriving
    w.clock.advance(SETTLE)
    w.tick()
    assert w.engine.status().phase == "gate"
    w.settle()
    assert w.server_mode() is PeerMode.DISABLE
    w.fleet.ack_all()
    assert w.tick() is RolloutState.COMPLETE
    assert w.unsafe == []


def test_a_rollout_back_after_a_complete_one_is_safe() -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    for _ in range(2):
        w.fleet.ack_all()
        w.tick()
    w.settle()
    w.fleet.ack_all()
    assert w.tick() is RolloutState.COMPLETE
    w.engine.start(selector=SELECTOR, target="DISABLE", statuses=w.fleet.statuses())
    assert w.client() is Transport.MTLS  # the previous overlay's MUTUAL is kept in step 1
    for _ in range(2):
        w.fleet.ack_all()
        w.tick()
    w.settle()
    w.fleet.ack_all()
    assert w.tick() is RolloutState.COMPLETE
    assert w.server_mode() is PeerMode.DISABLE and w.client() is Transport.PLAINTEXT
    assert w.unsafe == []


def test_state_survives_a_restart_through_the_store() -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    w.fleet.ack_all()
    w.tick()
    saved = w.engine.status()
    engine2 = w.new_engine()
    assert engine2.status() == saved
    w.fleet.ack_all()
    engine2.tick(w.fleet.statuses())
    assert engine2.status().step == "servers-strict"
    assert w.store.saves > 3


def test_commands_that_do_not_fit_the_state_are_refused() -> None:
    w = World("DISABLE")
    with pytest.raises(NoRolloutError):
        w.engine.status()
    with pytest.raises(NoRolloutError):
        w.engine.abort()
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    with pytest.raises(RolloutError, match="rollout abort"):
        w.engine.start(selector=SELECTOR, target="STRICT")
    with pytest.raises(RolloutError, match="only a paused or failed"):
        w.engine.resume()
    w.engine.abort()
    with pytest.raises(RolloutError, match="other way"):
        w.engine.abort()
    with pytest.raises(RolloutError, match="only a running"):
        w.engine.pause()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"selector": "backend", "target": "STRICT"}, "spiffe://"),
        ({"selector": SELECTOR, "target": "SIMPLE"}, "use STRICT or DISABLE"),
        ({"selector": SELECTOR, "target": "STRICT", "canary": -1}, "--canary"),
        (
            {"selector": SELECTOR, "target": "STRICT", "step_timeout": dt.timedelta(0)},
            "--step-timeout",
        ),
    ],
)
def test_invalid_start_arguments_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    w = World("DISABLE")
    with pytest.raises(InvalidArgumentError, match=fragment.replace("-", r"\-")):
        w.engine.start(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ complete means enforced


def _report(w: World, pid: str, **inbound: object) -> None:
    """A proxy that acknowledges the current version but reports its own enforcement."""
    st = w.fleet.status[pid]
    ib = replace(st.inbound[0], **inbound)  # type: ignore[arg-type]
    w.fleet.status[pid] = replace(st, acked_version=w.hub.current().version, inbound=(ib,))
    w.hub.report(w.fleet.status[pid])


def _to_last_phase(w: World) -> None:
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    for _ in range(2):
        w.fleet.ack_all()
        w.tick()
    w.settle()
    assert (w.engine.status().step, w.engine.status().phase) == ("servers-strict", "all")


def test_an_acknowledged_version_that_is_not_enforced_never_completes() -> None:
    w = World("DISABLE")
    _to_last_phase(w)
    w.fleet.ack_all()
    _report(w, "backend-0", mode="DISABLE")  # acked the STRICT version, still enforces DISABLE
    assert w.tick() is RolloutState.RUNNING
    st = w.engine.status()
    assert st.waiting_for == ()
    assert st.not_enforced == ("backend-0 port 16006 enforces DISABLE, not STRICT",)
    row = next(r for r in st.enforcement if r["side"] == "server")
    assert (row["enforced"], row["wanted"], row["ok"]) == ("DISABLE", "STRICT", False)
    w.clock.advance(dt.timedelta(minutes=6))
    assert w.tick() is RolloutState.FAILED
    assert "acknowledged but not enforced" in (w.engine.status().reason or "")
    assert "backend-0 port 16006 enforces DISABLE" in (w.engine.status().reason or "")


def test_a_proxy_that_does_not_report_its_mode_holds_the_step() -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    w.fleet.ack_all()
    _report(w, "backend-0", mode=None)
    w.tick()
    st = w.engine.status()
    assert st.step == "servers-permissive"
    assert st.not_enforced == ("backend-0 port 16006 enforces an unknown mode, not PERMISSIVE",)


def test_a_client_that_keeps_sending_plaintext_holds_the_clients_step() -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    w.fleet.ack_all()
    w.tick()
    assert w.engine.status().step == "clients-mtls"
    w.fleet.ack_all()
    st = w.fleet.status["frontend-0"]
    w.fleet.status["frontend-0"] = replace(
        st, destinations=(replace(st.destinations[0], transport="plaintext"),)
    )
    w.hub.report(w.fleet.status["frontend-0"])
    w.tick()
    assert w.engine.status().step == "clients-mtls"
    assert w.engine.status().not_enforced == (
        f"frontend-0 -> {SERVER}:{PORT} uses plaintext, not mtls",
    )


def test_to_strict_completes_only_with_no_plaintext_accepted_after_strict() -> None:
    w = World("DISABLE")
    _to_last_phase(w)
    w.fleet.ack_all()
    _report(w, "backend-0", mode="STRICT", plaintext_since_mode=2)
    assert w.tick() is RolloutState.RUNNING
    assert w.engine.status().not_enforced == (
        "backend-0 port 16006 accepted 2 plaintext connection(s) after going STRICT",
    )
    _report(w, "backend-0", mode="STRICT", plaintext_since_mode=0)
    assert w.tick() is RolloutState.COMPLETE


def test_a_selector_that_matches_no_server_is_refused_with_the_reason() -> None:
    w = World("DISABLE")
    with pytest.raises(RolloutError) as err:
        w.engine.start(selector=f"{TD}/ns/shop/*", target="STRICT", statuses=w.fleet.statuses())
    text = str(err.value)
    assert "matches no server proxy" in text
    assert str(SERVER) in text  # the servers that do report
    assert f"{TD}/ns/shop/**" in text  # and the glob that covers them
    assert not w.engine.has_rollout() and w.hub.current().version == 1  # nothing published
    with pytest.raises(RolloutError, match="nothing is registered and no server proxy reports"):
        w.engine.start(selector=SELECTOR, target="STRICT", statuses=[])
    with pytest.raises(RolloutError, match=f"registered workloads: {SERVER}"):
        w.engine.start(
            selector=f"{TD}/ns/shop/*", target="STRICT", statuses=[], registered=[SERVER]
        )


def test_a_registered_server_that_has_not_reported_yet_holds_the_first_step() -> None:
    w = World("DISABLE")
    clients_only = [st for st in w.fleet.statuses() if not st.is_server]
    st = w.engine.start(
        selector=SELECTOR, target="STRICT", statuses=clients_only, registered=[SERVER]
    )
    assert st.state is RolloutState.RUNNING
    w.engine.tick(clients_only)
    assert (
        w.engine.status().not_enforced[0] == f"no server proxy matched by {SELECTOR} reports (yet)"
    )
    w.fleet.ack_all()  # the server proxy comes up and reports
    w.tick()
    assert w.engine.status().step == "clients-mtls"


def test_servers_that_stop_reporting_hold_the_step() -> None:
    w = World("DISABLE")
    w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    w.fleet.ack_all()
    clients_only = [st for st in w.fleet.statuses() if not st.is_server]
    w.engine.tick(clients_only)
    st = w.engine.status()
    assert st.step == "servers-permissive"
    assert st.not_enforced[0].startswith("no server proxy matched by")


# ------------------------------------------------------------------ rollouts and explicit objects


def mesh_pa(mode: str) -> str:
    return (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: default, namespace: trustd-system}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )


def test_a_rollout_beats_older_objects_and_a_later_apply_beats_the_rollout() -> None:
    w = World("DISABLE")
    w.hub.apply(load_text(mesh_pa("DISABLE")), force=True)
    w.fleet.ack_all()
    _to_last_phase(w)
    w.fleet.ack_all()
    assert w.tick() is RolloutState.COMPLETE
    show = w.hub.current().show(SERVER, PORT)["peerAuthentication"]
    assert show["mode"] == "STRICT" and show["source"] == f"overlay rollout:{SELECTOR}"
    assert show["overrides"] == "PeerAuthentication/shop/n"  # the most specific object it beats
    # re-applying the same objects changes nothing: the rollout still decides
    w.hub.apply(load_text(pa("DISABLE") + "---\n" + mesh_pa("DISABLE")), force=True)
    assert w.server_mode() is PeerMode.STRICT
    # a later apply that says otherwise wins, and show says so
    w.hub.apply(load_text(pa("PERMISSIVE")))
    show = w.hub.current().show(SERVER, PORT)["peerAuthentication"]
    assert (show["mode"], show["source"]) == ("PERMISSIVE", "PeerAuthentication/shop/n")
    assert show["overrides"] == f"overlay rollout:{SELECTOR}"
    assert w.server_mode() is PeerMode.PERMISSIVE


def test_the_wire_follows_policy_show_whatever_the_order() -> None:
    """Every order of objects and rollouts: what show says is what a proxy decides."""
    w = World("STRICT")
    w.hub.apply(load_text(mesh_pa("DISABLE")), force=True)
    w.fleet.ack_all()
    st = w.engine.start(selector=SELECTOR, target="DISABLE", statuses=w.fleet.statuses())
    assert st.state is RolloutState.RUNNING
    for _ in range(6):
        w.fleet.ack_all()
        w.tick()
        w.settle()
        ps = w.hub.current()
        assert ps.show(SERVER, PORT)["peerAuthentication"]["mode"] == w.server_mode().value
    assert w.engine.status().state is RolloutState.COMPLETE
    assert w.server_mode() is PeerMode.DISABLE


def test_a_rollout_to_disable_that_authorization_would_turn_into_denials_is_refused() -> None:
    w = World("STRICT")
    allow = (
        "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: callers, namespace: shop}\nspec:\n  action: ALLOW\n  rules:\n"
        f"    - from: [{{principals: ['{CLIENT}']}}]\n"
    )
    w.hub.apply(load_text(allow), force=True)
    w.fleet.ack_all()
    with pytest.raises(RolloutError) as err:
        w.engine.start(selector=SELECTOR, target="DISABLE", statuses=w.fleet.statuses())
    assert "the rollout to DISABLE would end in denied calls" in str(err.value)
    assert f"client {CLIENT} (proxy frontend-0, plaintext) calls {SERVER} port {PORT}" in str(
        err.value
    )
    assert not w.engine.has_rollout()
    st = w.engine.start(selector=SELECTOR, target="STRICT", statuses=w.fleet.statuses())
    assert st.state is RolloutState.RUNNING  # mTLS keeps the caller's identity: allowed
