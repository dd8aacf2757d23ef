"""The test that matters: a lossless TLS rollout under a steady request loop.

client app -> client `trustd proxy` (outbound) -> server `trustd proxy` (inbound) -> server app,
real TCP and TLS on 127.0.0.1, a real PolicyHub and RolloutEngine in between. The
request loop never stops while policy moves DISABLE -> STRICT and back, and no
request may fail. The server proxy's own metrics show how traffic ended.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from dataplane_integration_helpers import eventually, run
from dataplane_testing import RecordingApp, ThrowawayCA

from trustd.clock import SystemClock
from trustd.dataplane import Proxy, StaticIdentitySource, parse_config
from trustd.dataplane.proxy import DenialEvent
from trustd.policy import (
    MemoryRolloutStore,
    PeerMode,
    PolicyHub,
    PolicySet,
    RolloutEngine,
    RolloutEvent,
    RolloutState,
    UnsafeChangeError,
    load_text,
)
from trustd.policy.effective import PolicyLayer

pytestmark = pytest.mark.integration

SERVER = "spiffe://trustd.local/ns/shop/sa/backend"
CLIENT = "spiffe://trustd.local/ns/shop/sa/frontend"
SELECTOR = "spiffe://trustd.local/ns/shop/sa/backend"


def doc(kind: str, name: str, ns: str, spec: str) -> str:
    return (
        f"apiVersion: trustd.io/v1alpha1\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )


MESH_DISABLE = doc("PeerAuthentication", "mesh", "trustd-system", "  mtls: {mode: DISABLE}\n")


@dataclass
class Loop:
    """Steady requests: 4 workers, 1 KiB each, 5 requests per connection (a recycling pool)."""

    address: tuple[str, int]
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    running: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, workers: int = 4) -> None:
        self.tasks = [asyncio.create_task(self._worker(i)) for i in range(workers)]

    async def _worker(self, wid: int) -> None:
        n = 0
        while self.running:
            try:
                r, w = await asyncio.open_connection(*self.address)
            except OSError as exc:
                self.failures.append(f"connect: {exc!r}")
                continue
            try:
                for _ in range(5):
                    n += 1
                    payload = f"{wid}:{n}:".encode() + os.urandom(512).hex().encode()[:1000]
                    w.write(payload)
                    await w.drain()
                    async with asyncio.timeout(10):
                        got = await r.readexactly(len(payload))
                    if got != payload:
                        self.failures.append(f"worker {wid} request {n}: wrong answer")
                        break
                    self.ok += 1
                    if not self.running:
                        break
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.failures.append(f"worker {wid} request {n}: {exc!r}")
            finally:
                w.close()

    async def more(self, count: int) -> None:
        """Wait until ``count`` more requests have succeeded."""
        target = self.ok + count
        await eventually(lambda: self.ok >= target or bool(self.failures), limit=60)
        assert not self.failures, self.failures[:5]

    async def stop(self) -> None:
        self.running = False
        await asyncio.gather(*self.tasks)


class Mesh:
    def __init__(self, hub: PolicyHub) -> None:
        self.hub = hub
        self.denials: list[DenialEvent] = []
        self.app: RecordingApp
        self.server: Proxy
        self.client: Proxy

    async def start(self, ca: ThrowawayCA) -> None:
        self.app = await RecordingApp().start()
        self.server = Proxy(
            config=parse_config(
                {
                    "inbound": [{"port": 0, "app": self.app.address, "bind": "127.0.0.1"}],
                    "reportInterval": "50ms",
                }
            ),
            identity=StaticIdentitySource(ca.identity(SERVER)),
            policy=self.hub.source("backend-1"),
            proxy_id="backend-1",
            on_denial=self.denials.append,
        )
        await self.server.start()
        self.client = Proxy(
            config=parse_config(
                {
                    "outbound": [
                        {
                            "listen": "127.0.0.1:0",
                            "destination": SERVER,
                            "address": f"127.0.0.1:{self.server.inbound_port()}",
                        }
                    ],
                    "reportInterval": "50ms",
                }
            ),
            identity=StaticIdentitySource(ca.identity(CLIENT)),
            policy=self.hub.source("frontend-1"),
            proxy_id="frontend-1",
            on_denial=self.denials.append,
        )
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop(grace=2)
        await self.server.stop(grace=2)
        await self.app.stop()

    def server_total(self, mode: str) -> float:
        labels = {"listener": f"inbound:{self.server.inbound_port()}", "mode": mode}
        return self.server.metrics.value("trustd_proxy_connections_total", labels)

    def server_active(self, mode: str) -> float:
        labels = {"listener": f"inbound:{self.server.inbound_port()}", "mode": mode}
        return self.server.metrics.value("trustd_proxy_active_connections", labels)

    def converged(self) -> bool:
        v = self.hub.current().version
        return self.server.acked_version == v and self.client.acked_version == v


async def drive(
    engine: RolloutEngine, hub: PolicyHub, loop: Loop, on_step: Callable[[], None]
) -> RolloutState:
    """Tick the rollout as a server would, requiring traffic to flow at every step.

    Proxies here acknowledge at once (same process), so each published phase is
    given 20 requests (new connections among them) before the next tick.
    """
    seen = (engine.status().step, engine.status().phase)
    on_step()
    await loop.more(20)
    async with asyncio.timeout(120):
        while True:
            st = engine.tick(hub.statuses())
            assert st is not None
            if (st.step, st.phase) != seen:
                seen = (st.step, st.phase)
                on_step()
                await loop.more(20)  # requests go through in every step and phase
            if st.state is not RolloutState.RUNNING:
                return st.state
            await asyncio.sleep(0.05)


@run
async def test_rollout_to_strict_and_back_loses_no_request() -> None:
    ca = ThrowawayCA("trustd.local")
    clock = SystemClock()
    hub = PolicyHub(
        clock=clock,
        initial=PolicySet(version=1, layer=PolicyLayer(objects=load_text(MESH_DISABLE))),
    )
    mesh = Mesh(hub)
    await mesh.start(ca)
    events: list[RolloutEvent] = []
    engine = RolloutEngine(
        publisher=hub,
        store=MemoryRolloutStore(),
        clock=clock,
        on_event=events.append,
        settle_period=dt.timedelta(seconds=1),
    )
    loop = Loop(mesh.client.outbound_address())
    loop.start()
    try:
        await loop.more(50)
        assert mesh.server_total("tls") == 0 and mesh.server_total("plaintext") > 0

        # DISABLE -> STRICT: servers PERMISSIVE, clients mTLS, servers STRICT.
        steps: list[tuple[str, str]] = []
        engine.start(selector=SELECTOR, target="STRICT", canary=0, statuses=hub.statuses())
        state = await drive(
            engine, hub, loop, lambda: steps.append((engine.status().step, engine.status().phase))
        )
        assert state is RolloutState.COMPLETE, engine.status()
        assert [s for s, p in steps if p == "all"] == [
            "servers-permissive",
            "clients-mtls",
            "servers-strict",
        ]
        server_status = mesh.server.status()
        assert server_status is not None
        assert (
            hub.current().peer_mode(server_status.spiffe_id, mesh.server.inbound_port())
            is PeerMode.STRICT
        )
        await eventually(mesh.converged)
        plain_before, tls_before = mesh.server_total("plaintext"), mesh.server_total("tls")
        await loop.more(100)
        # Traffic ended as mTLS: only new mTLS connections since, and no plaintext left open.
        assert mesh.server_total("plaintext") == plain_before
        assert mesh.server_total("tls") > tls_before
        assert mesh.server_active("plaintext") == 0
        assert not mesh.denials, mesh.denials

        # STRICT -> DISABLE, the reverse order.
        engine.start(selector=SELECTOR, target="DISABLE", statuses=hub.statuses())
        state = await drive(engine, hub, loop, lambda: None)
        assert state is RolloutState.COMPLETE, engine.status()
        await eventually(mesh.converged)
        plain_before, tls_before = mesh.server_total("plaintext"), mesh.server_total("tls")
        await loop.more(100)
        assert mesh.server_total("tls") == tls_before
        assert mesh.server_total("plaintext") > plain_before
    finally:
        await loop.stop()
        await mesh.stop()
    assert loop.failures == [], loop.failures[:10]
    assert not mesh.denials
    assert [e.action for e in events].count("completed") == 2
    assert loop.ok > 500


@run
async def test_policy_applied_by_hand_in_a_safe_order_loses_no_request() -> None:
    """DISABLE -> PERMISSIVE -> client MUTUAL -> STRICT -> back, each by `policy apply`."""
    ca = ThrowawayCA("trustd.local")
    hub = PolicyHub(
        clock=SystemClock(),
        initial=PolicySet(version=1, layer=PolicyLayer(objects=load_text(MESH_DISABLE))),
        recent_plaintext=dt.timedelta(seconds=1),
    )
    mesh = Mesh(hub)
    await mesh.start(ca)
    loop = Loop(mesh.client.outbound_address())
    loop.start()

    def pa(mode: str) -> str:
        return doc("PeerAuthentication", "backend", "shop", f"  mtls: {{mode: {mode}}}\n")

    def ct(mode: str) -> str:
        return doc(
            "ClientTLSPolicy",
            "frontend",
            "shop",
            f"  destination: {{spiffeIds: ['{SERVER}']}}\n  tls: {{mode: {mode}}}\n",
        )

    refusals: list[str] = []

    async def apply(text: str) -> None:
        """Apply as an operator would: retry while the safety check says it would drop traffic."""
        async with asyncio.timeout(60):
            while True:
                await eventually(mesh.converged)
                try:
                    hub.apply(load_text(text))
                    break
                except UnsafeChangeError as exc:
                    refusals.extend(exc.reasons)
                    await asyncio.sleep(0.1)
        await eventually(lambda: mesh.converged() and not hub.current().pending)
        await loop.more(30)

    try:
        await loop.more(30)
        await apply(pa("PERMISSIVE"))
        assert mesh.server_total("tls") > 0  # AUTO followed once the server had acknowledged
        await apply(ct("MUTUAL"))
        plain = mesh.server_total("plaintext")
        await apply(pa("STRICT"))  # refused while plaintext is recent or open, then accepted
        assert all("plaintext" in r or "older than" in r for r in refusals), refusals
        tls = mesh.server_total("tls")
        await loop.more(50)
        assert mesh.server_total("tls") > tls and mesh.server_total("plaintext") == plain
        # and back: servers PERMISSIVE, clients plaintext, servers DISABLE
        await apply(pa("PERMISSIVE"))
        await apply(ct("DISABLE"))
        await apply(pa("DISABLE"))
        tls = mesh.server_total("tls")
        await loop.more(50)
        assert mesh.server_total("tls") == tls
    finally:
        await loop.stop()
        await mesh.stop()
    assert loop.failures == [], loop.failures[:10]
    assert not mesh.denials
