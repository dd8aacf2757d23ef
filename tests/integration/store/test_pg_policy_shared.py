"""Two servers' policy planes on one real PostgreSQL act as one: proxy reports, the policy
and the rollout are shared through the store; one server at a time advances the rollout."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from trustd.audit import Actor, MemoryAuditSink
from trustd.clock import FakeClock
from trustd.policy import (
    Destination,
    InboundStats,
    PolicySet,
    ProxyStatus,
    RolloutError,
    RolloutState,
    load_text,
)
from trustd.policy.effective import PolicyLayer
from trustd.policy.hub import PublishConflictError
from trustd.server.changes import ChangeHub
from trustd.server.policy_plane import (
    LEASE_TTL,
    ROLLOUT_LEASE,
    STATUS_MAX_AGE,
    LeaseBusyError,
    PolicyPlane,
    RolloutConflictError,
    StoreRolloutStore,
)
from trustd.spiffeid import SpiffeId
from trustd.store.postgresql import PostgresStore

pytestmark = pytest.mark.integration

TD = "spiffe://td"
SERVER = SpiffeId.parse(f"{TD}/ns/shop/sa/backend")
CLIENT = SpiffeId.parse(f"{TD}/ns/shop/sa/frontend")
PORT = 16006
SELECTOR = str(SERVER)
SETTLE = dt.timedelta(seconds=30)
PA = (
    "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
    "metadata: {name: n, namespace: shop}\nspec:\n  mtls: {mode: DISABLE}\n"
)


class Mesh:
    """Servers A and B on one database; the backend proxy's agent talks to B, the
    frontend's to A (each proxy reports only through its own server)."""

    def __init__(self, dsn: str) -> None:
        self.clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        self.stores = [PostgresStore(dsn), PostgresStore(dsn)]
        self.stores[0].put_doc(
            "policy.current",
            json.dumps(PolicySet(version=1, layer=PolicyLayer(objects=load_text(PA))).to_json()),
        )
        self.audit = [MemoryAuditSink(), MemoryAuditSink()]
        self.a, self.b = (
            PolicyPlane(
                store=store,
                clock=self.clock,
                audit=audit,
                changes=ChangeHub(),
                settle_period=SETTLE,
                server_id=name,
            )
            for store, audit, name in zip(self.stores, self.audit, ("srv-a", "srv-b"), strict=True)
        )
        self.status = {
            "backend-0": ProxyStatus(
                proxy_id="backend-0", spiffe_id=SERVER, acked_version=0,
                inbound=(InboundStats(port=PORT),),
            ),
            "frontend-0": ProxyStatus(
                proxy_id="frontend-0", spiffe_id=CLIENT, acked_version=0,
                destinations=(Destination(spiffe_id=SERVER, port=PORT),),
            ),
        }  # fmt: skip
        self.via = {"backend-0": self.b, "frontend-0": self.a}

    def ack(self) -> None:
        """Each proxy takes the policy its own server serves and reports what it enforces."""
        for pid, st in self.status.items():
            plane = self.via[pid]
            ps = plane.current()
            inbound = tuple(
                replace(
                    i, mode=ps.peer_mode(st.spiffe_id, i.port, pid).value, mode_version=ps.version
                )
                for i in st.inbound
            )
            dests = tuple(
                replace(
                    d, transport=ps.client_transport(st.spiffe_id, d.spiffe_id, d.port, pid).value
                )
                for d in st.destinations
            )
            self.status[pid] = replace(
                st,
                acked_version=ps.version,
                inbound=inbound,
                destinations=dests,
                reported_at=self.clock.now(),
            )
            plane.report(self.status[pid])

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def mesh(fresh_db: str) -> Iterator[Mesh]:
    m = Mesh(fresh_db)
    try:
        yield m
    finally:
        m.close()


def _ids(statuses: tuple[ProxyStatus, ...]) -> list[str]:
    return [s.proxy_id for s in statuses]


def test_every_server_sees_every_proxy_and_a_silent_one_ages_out(mesh: Mesh) -> None:
    mesh.ack()
    for plane in (mesh.a, mesh.b):
        assert _ids(plane.hub.statuses(max_age=STATUS_MAX_AGE)) == ["backend-0", "frontend-0"]
    rows = {r.proxy_id: r.server_id for r in mesh.stores[0].list_proxy_reports()}
    assert rows == {"backend-0": "srv-b", "frontend-0": "srv-a"}
    # The backend's ACK through B raises what A sees, too.
    mesh.b.ack("backend-0", 7)
    assert {s.proxy_id: s.acked_version for s in mesh.a.hub.statuses()}["backend-0"] == 7
    # The frontend goes silent; the backend keeps reporting.
    mesh.clock.advance(STATUS_MAX_AGE + dt.timedelta(seconds=5))
    mesh.b.report(replace(mesh.status["backend-0"], reported_at=mesh.clock.now()))
    assert _ids(mesh.a.hub.statuses(max_age=STATUS_MAX_AGE)) == ["backend-0"]


def test_a_rollout_started_through_a_is_driven_by_both_and_shown_by_either(mesh: Mesh) -> None:
    mesh.ack()
    actor = Actor.system()
    st = mesh.a.rollout(actor, "start", selector=SELECTOR, target="STRICT")
    assert st.state is RolloutState.RUNNING
    assert mesh.b.rollout(actor, "status").id == st.id  # B shows A's rollout
    # Only one rollout at a time, whichever server is asked.
    with pytest.raises(RolloutError, match=st.id):
        mesh.b.rollout(actor, "start", selector=SELECTOR, target="STRICT")
    planes = [mesh.a, mesh.b]
    for i in range(40):
        mesh.ack()
        planes[i % 2].tick()  # the servers take turns
        mesh.clock.advance(SETTLE)
        if mesh.b.rollout(actor, "status").state is RolloutState.COMPLETE:
            break
    final = mesh.a.rollout(actor, "status")
    assert final.state is RolloutState.COMPLETE, final
    mesh.ack()
    for plane in planes:
        ps = plane.current()
        assert ps.peer_mode(SERVER, PORT, "backend-0").value == "STRICT"
        assert ps.client_transport(CLIENT, SERVER, PORT, "frontend-0").value == "mtls"
    assert mesh.a.current().version == mesh.b.current().version
    steps = [e for log in mesh.audit for e in log.events if e.type == "rollout.step"]
    assert [e.action for e in steps].count("completed") == 1


def test_two_starts_racing_in_the_database_make_one_rollout(mesh: Mesh) -> None:
    one, two = StoreRolloutStore(mesh.stores[0]), StoreRolloutStore(mesh.stores[1])
    assert one.load() is None and two.load() is None  # both saw no rollout
    one.save({"id": "r-1", "state": "running"})
    with pytest.raises(RolloutConflictError):
        two.save({"id": "r-2", "state": "running"})
    assert two.load() == {"id": "r-1", "state": "running"}


def test_a_server_killed_holding_the_lease_holds_the_rollout_until_it_expires(
    mesh: Mesh,
) -> None:
    mesh.ack()
    actor = Actor.system()
    st = mesh.a.rollout(actor, "start", selector=SELECTOR, target="STRICT")
    mesh.ack()
    # A takes the lease for a step and dies before releasing it.
    assert mesh.stores[0].take_lease(ROLLOUT_LEASE, "srv-a", mesh.clock.now(), LEASE_TTL)
    before = mesh.b.rollout(actor, "status")
    mesh.b.tick()
    assert mesh.b.rollout(actor, "status").updated_at == before.updated_at  # B did not move it
    with pytest.raises(LeaseBusyError):
        mesh.b.rollout(actor, "pause")
    mesh.clock.advance(LEASE_TTL + dt.timedelta(seconds=1))
    mesh.b.tick()  # the lease expired: B advances
    after = mesh.b.rollout(actor, "status")
    assert after.id == st.id and (after.step_index, after.phase) != (
        before.step_index,
        before.phase,
    )
    assert mesh.b.rollout(actor, "pause").state is RolloutState.PAUSED


def test_a_publication_from_a_stale_view_is_refused_and_the_newer_policy_adopted(
    mesh: Mesh,
) -> None:
    base = mesh.b.hub.current()
    mesh.a.client_tls_off(Actor.system(), True, force=True)
    with pytest.raises(PublishConflictError, match="another server"):
        mesh.b.hub.publish(base.successor(client_tls_off_global=True), reason="stale")
    assert mesh.b.hub.current().version == mesh.a.current().version > base.version
