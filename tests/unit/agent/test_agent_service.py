"""AgentService: the socket, health, lifecycle and the watches to the server."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import stat
from pathlib import Path

import grpc
import pytest
from agent_fakes import (
    FakeUpstream,
    agent_channel,
    leaf_of,
    metric,
    run_async,
    running_agent,
    sds_call,
    sds_fetch,
    sds_request,
    secrets_of,
    wait_until,
)
from grpclib.health.v1 import health_pb2
from spiffe._proto import workload_pb2

from trustd.agent.errors import SocketInUseError
from trustd.agent.service import AgentService
from trustd.clock import FakeClock

ME = f"unix:uid:{os.getuid()}"
MY_ID = "spiffe://trustd.local/ns/demo/sa/me"


def _up() -> FakeUpstream:
    up = FakeUpstream(clock=FakeClock(dt.datetime.now(dt.UTC)))
    up.add_entry(MY_ID, [ME])
    return up


@run_async
async def test_socket_and_directory_modes(tmp_path: Path) -> None:
    sock = tmp_path / "d" / "public" / "agent.sock"
    old = os.umask(0o077)  # a strict umask must not leak into the modes
    try:
        async with running_agent(sock, _up()):
            assert stat.S_ISSOCK(sock.stat().st_mode)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o666
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755
    finally:
        os.umask(old)
    assert not sock.exists(), "stop() removes the socket"


@run_async
async def test_second_agent_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    up = _up()
    async with running_agent(sock, up), agent_channel(sock) as ch:
        second = AgentService(upstream=up, socket_path=sock, trust_domain=up.trust_domain)
        with pytest.raises(SocketInUseError):
            await second.start()
        resp = await sds_fetch(ch, ["ROOTCA"])  # the first agent still serves
        assert set(secrets_of(resp)) == {"ROOTCA"}


@run_async
async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # bound, never listening: what a crashed agent leaves behind
    async with running_agent(sock, _up()), agent_channel(sock) as ch:
        resp = await sds_fetch(ch, ["ROOTCA"])
        assert set(secrets_of(resp)) == {"ROOTCA"}


@run_async
async def test_regular_file_in_the_way_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    sock.write_text("not a socket")
    up = _up()
    agent = AgentService(upstream=up, socket_path=sock, trust_domain=up.trust_domain)
    with pytest.raises(SocketInUseError):
        await agent.start()
    assert sock.read_text() == "not a socket"


@run_async
async def test_health_is_served_and_follows_readiness(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    up = _up()
    up.go_down()
    async with running_agent(sock, up, ready=False) as agent, agent_channel(sock) as ch:
        check = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        resp = await check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        up.come_back()
        # The agent retries on its clock: move it past the longest backoff.
        up.clock.advance(dt.timedelta(seconds=31))  # type: ignore[attr-defined]
        await agent.wait_ready()
        await wait_until(lambda: agent._health.__status__() is True, what="health flips")
        for service in ("", "SpiffeWorkloadAPI", "envoy.service.secret.v3.SecretDiscoveryService"):
            resp = await check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


@run_async
async def test_watch_reconnects_and_catches_up_after_server_outage(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    up = _up()
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        await wait_until(lambda: agent.cache.watches_live == 2, what="both watches live")
        assert metric(agent.metrics, "trustd_agent_server_sync_age_seconds") == 0
        up.go_down()
        await wait_until(lambda: agent.cache.watches_live == 0, what="watches lost")
        up.clock.advance(dt.timedelta(minutes=5))  # type: ignore[attr-defined]
        assert metric(agent.metrics, "trustd_agent_server_sync_age_seconds") >= 300
        # Still serving what it has while the server is down.
        resp = await sds_fetch(ch, ["default"])
        assert set(secrets_of(resp)) == {"default"}
        up.come_back()
        up.add_entry("spiffe://trustd.local/ns/demo/sa/late", [ME])
        # The watches retry on the agent's clock: nothing reconnects until it moves.
        await asyncio.sleep(0.2)
        assert agent.cache.watches_live == 0
        up.clock.advance(dt.timedelta(seconds=31))  # type: ignore[attr-defined]
        await wait_until(
            lambda: agent.cache.entry_revision == up.revision, what="caught up after reconnect"
        )
        resp = await sds_fetch(ch, ["spiffe://trustd.local/ns/demo/sa/late"])
        assert len(resp.resources) == 1


@run_async
async def test_two_agents_side_by_side(tmp_path: Path) -> None:
    up1, up2 = _up(), FakeUpstream("other.test", clock=FakeClock(dt.datetime.now(dt.UTC)))
    up2.add_entry("spiffe://other.test/w", [ME])
    async with (
        running_agent(tmp_path / "a.sock", up1) as a1,
        running_agent(tmp_path / "b.sock", up2) as a2,
        agent_channel(a1.socket_path) as c1,
        agent_channel(a2.socket_path) as c2,
    ):
        r1 = await sds_fetch(c1, ["default"])
        r2 = await sds_fetch(c2, ["default"])
        assert r1.resources[0] != r2.resources[0]
        assert a1.metrics.registry is not a2.metrics.registry


@run_async
async def test_unattested_connection_is_unauthenticated(tmp_path: Path) -> None:
    # A stream whose connection was not attested (no peer credentials) gets UNAUTHENTICATED.
    sock = tmp_path / "agent.sock"
    up = _up()

    def broken(_: object) -> object:
        raise OSError("no peer credentials")

    agent = AgentService(
        upstream=up,
        socket_path=sock,
        trust_domain=up.trust_domain,
        attestor=broken,  # type: ignore[arg-type]
    )
    await agent.start()
    try:
        await agent.wait_ready()
        async with agent_channel(sock) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await sds_fetch(ch, ["ROOTCA"])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await agent.stop()


@run_async
async def test_background_loop_renews_and_pushes_without_being_asked(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    up = _up()
    clock = up.clock
    assert isinstance(clock, FakeClock)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        first = await call.read()
        await call.write(sds_request(["default"], version=first.version_info, nonce=first.nonce))
        old = leaf_of(secrets_of(first)["default"])
        clock.advance(dt.timedelta(minutes=31))  # past 0.48 +/- 0.01 of a 1 h SVID
        agent.cache.wake_rotation()
        second = await call.read()
        new = leaf_of(secrets_of(second)["default"])
        assert new.serial_number != old.serial_number
        call.cancel()


@run_async
async def test_stream_gauges_follow_open_streams(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    async with running_agent(sock, _up()) as agent, agent_channel(sock) as ch:
        calls = []
        for _ in range(3):
            c = sds_call(ch)
            await c.write(sds_request(["ROOTCA"]))
            await c.read()
            calls.append(c)
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_sds_streams") == 3, what="3 sds streams"
        )
        wapi = ch.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509Bundles",
            request_serializer=workload_pb2.X509BundlesRequest.SerializeToString,
            response_deserializer=workload_pb2.X509BundlesResponse.FromString,
        )(workload_pb2.X509BundlesRequest(), metadata=(("workload.spiffe.io", "true"),))
        await wapi.read()
        assert metric(agent.metrics, "trustd_agent_workloadapi_streams") == 1
        for c in calls:
            c.cancel()
        wapi.cancel()
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_sds_streams") == 0,
            what="sds streams closed",
        )
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_workloadapi_streams") == 0,
            what="workload api stream closed",
        )
        assert metric(agent.metrics, "trustd_agent_pushes_total", api="sds") == 3
        assert metric(agent.metrics, "trustd_agent_pushes_total", api="workloadapi") == 1
