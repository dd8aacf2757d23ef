"""Real Envoy against the agent: SDS ``default`` + ``ROOTCA``, mTLS through two Envoys,
rotation seen in Envoy's admin ``/certs``, open connections across rotations, agent restart,
and the real ``spiffe`` client fetching the same SVID and bundle.

The server-side Envoy runs as uid 1000 (spiffe://trustd.local/ns/shop/sa/backend), the
client-side one as uid 1001 (.../frontend); the agent tells them apart by SO_PEERCRED.
Rotations are triggered by asking the agent to renew as if an hour had passed; the
certificates themselves are real and currently valid, signed by the fake server's CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_envoy_harness import (
    DEPLOY_BOOTSTRAP,
    Envoy,
    echo_server,
    envoy_binary,
    fresh_roundtrip,
    render_sidecar,
    roundtrip,
)
from agent_fakes import (
    FakeUpstream,
    other_user_env,
    python_for_other_users,
    run_async,
    wait_until,
    world_dir,
)

from trustd.agent.service import AgentService

pytestmark = pytest.mark.integration

TD = "trustd.local"
BACKEND = f"spiffe://{TD}/ns/shop/sa/backend"
FRONTEND = f"spiffe://{TD}/ns/shop/sa/frontend"


def _hex(serial: int) -> str:
    return f"{serial:x}"


@dataclass
class Mesh:
    up: FakeUpstream
    agent: AgentService
    server: Envoy  # uid 1000, inbound mTLS -> echo app
    client: Envoy  # uid 1001, outbound -> server's inbound over mTLS
    outbound_port: int
    inbound_port: int
    workdir: Path

    def serial_of(self, spiffe_id: str) -> str:
        entry = next(e for e in self.up.entries.values() if str(e.spiffe_id) == spiffe_id)
        svid = self.agent.cache.svid(entry.id)
        assert svid is not None
        return _hex(svid.serial)

    async def wait_current_serials(self, what: str) -> None:
        await self.server.wait_serials({self.serial_of(BACKEND)}, what=what)
        await self.client.wait_serials({self.serial_of(FRONTEND)}, what=what)

    async def rotate_svids(self) -> None:
        """Renew as the renewal loop would once past half life, and wait for Envoy to show it."""
        before = {self.serial_of(BACKEND), self.serial_of(FRONTEND)}
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        assert await self.agent.cache.rotate_due(later) == 2
        after = {self.serial_of(BACKEND), self.serial_of(FRONTEND)}
        assert not before & after
        await self.wait_current_serials("new serial after rotation")


@contextlib.asynccontextmanager
async def mesh(*, unknown_secret: str | None = None) -> AsyncIterator[Mesh]:
    up = FakeUpstream(TD)
    up.add_entry(BACKEND, ["unix:uid:1000"])
    up.add_entry(FRONTEND, ["unix:uid:1001"])
    workdir = world_dir()
    (workdir / "run").mkdir(mode=0o777)
    (workdir / "run").chmod(0o777)
    app, app_port = await echo_server()
    agent = AgentService(
        upstream=up, socket_path=workdir / "public" / "agent.sock", trust_domain=up.trust_domain
    )
    await agent.start()
    envoys: list[Envoy] = []
    try:
        await agent.wait_ready()
        server = Envoy(
            workdir / "run",
            "server",
            render_sidecar(
                agent_socket=agent.socket_path,
                node_id="backend",
                app_port=app_port,
                accept_ids=[FRONTEND],
                unknown_secret=unknown_secret,
            ),
            uid=1000,
        )
        envoys.append(server)
        server.start()
        inbound = await server.listener_port("inbound_mtls")
        client = Envoy(
            workdir / "run",
            "client",
            render_sidecar(
                agent_socket=agent.socket_path,
                node_id="frontend",
                upstream_port=inbound,
                upstream_ids=[BACKEND],
                unknown_secret=unknown_secret,
            ),
            uid=1001,
        )
        envoys.append(client)
        client.start()
        outbound = await client.listener_port("outbound_mtls")
        m = Mesh(up, agent, server, client, outbound, inbound, workdir)
        await m.wait_current_serials("first certificates")
        yield m
    finally:
        for e in envoys:
            e.stop()
        await agent.stop()
        app.close()
        await app.wait_closed()
        shutil.rmtree(workdir, ignore_errors=True)


@run_async
async def test_envoys_get_default_and_rootca_and_serve_mtls() -> None:
    async with mesh() as m:
        # /certs: each Envoy holds its own SVID (never the other's) and the trust bundle.
        assert await m.server.cert_serials() == {m.serial_of(BACKEND)}
        assert await m.client.cert_serials() == {m.serial_of(FRONTEND)}
        root = _hex(m.up.ca.active.cert.serial_number)
        assert await m.server.ca_serials() == {root}
        assert await m.client.ca_serials() == {root}
        # mTLS through both Envoys.
        assert await fresh_roundtrip(m.outbound_port, b"hello through two envoys") == (
            b"hello through two envoys"
        )
        # Plaintext straight at the mTLS listener gets nothing back.
        reader, writer = await asyncio.open_connection("127.0.0.1", m.inbound_port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 30) == b""
        writer.close()


@run_async
async def test_bootstrap_naming_a_secret_the_agent_lacks_still_gets_default_and_rootca() -> None:
    typo = "defualt"
    async with mesh(unknown_secret=typo) as m:
        root = _hex(m.up.ca.active.cert.serial_number)
        for e in (m.server, m.client):
            await e.wait_live()  # it waited for the missing secret its initial_fetch_timeout
            assert await e.ca_serials() == {root}
        assert await fresh_roundtrip(m.outbound_port, b"despite the typo") == b"despite the typo"
        unknown = {"reason": "unknown"}

        def counted() -> float:
            value = m.agent.metrics.registry.get_sample_value(
                "trustd_agent_sds_unknown_resources_total", unknown
            )
            return value or 0.0

        await wait_until(lambda: counted() == 2, what="the unknown name counted per Envoy")
        # Rotations still reach both Envoys...
        await m.rotate_svids()
        assert await fresh_roundtrip(m.outbound_port, b"after rotation") == b"after rotation"
        for e in (m.server, m.client):
            # ...and the stream asking for the missing secret stays open: answered without
            # it, acknowledged, never failed, so Envoy does not reconnect.
            assert await e.stat(f"sds.{typo}.control_plane.connected_state") == 1
            assert await e.stat(f"sds.{typo}.update_rejected") == 0
            assert await e.stat(f"sds.{typo}.update_success") == 0
            assert await e.stat("sds.default.update_rejected") == 0
            assert await e.stat("sds.ROOTCA.update_rejected") == 0
        assert counted() == 2


@run_async
async def test_open_connection_keeps_working_across_rotations() -> None:
    async with mesh() as m:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.outbound_port)
        assert await roundtrip(reader, writer, b"before") == b"before"
        seen = {m.serial_of(BACKEND)}
        for i in range(3):
            await m.rotate_svids()
            new = m.serial_of(BACKEND)
            assert new not in seen
            seen.add(new)
            # The open connection (old certificates) keeps working...
            assert await roundtrip(reader, writer, f"open-{i}".encode()) == f"open-{i}".encode()
            # ...and new connections use the new ones.
            assert await fresh_roundtrip(m.outbound_port, f"new-{i}".encode()) == (
                f"new-{i}".encode()
            )
        writer.close()


@run_async
async def test_ca_rotation_reaches_envoy_without_breaking_traffic() -> None:
    async with mesh() as m:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.outbound_port)
        assert await roundtrip(reader, writer, b"x") == b"x"
        updates = {e.name: await e.stat("sds.ROOTCA.update_success") for e in (m.server, m.client)}
        # A new CA is prepared: the bundle carries both before the new one signs anything.
        m.up.rotate_ca()
        new_root = _hex(m.up.ca.active.cert.serial_number)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        for e in (m.server, m.client):
            while await e.stat("sds.ROOTCA.update_success") <= updates[e.name]:
                assert loop.time() < deadline, f"new bundle never reached {e.name}"
                await asyncio.sleep(0.05)
            assert await e.stat("sds.ROOTCA.update_rejected") == 0
        await m.rotate_svids()  # now signed by the new CA...
        # ...which both Envoys trust only thanks to the pushed bundle.
        assert await fresh_roundtrip(m.outbound_port, b"after rotation") == b"after rotation"
        # The old CA leaves the bundle.
        m.up.drop_old_cas()
        for e in (m.server, m.client):
            while await e.ca_serials() != {new_root}:
                assert loop.time() < deadline + 60, f"bundle without old CA never reached {e.name}"
                await asyncio.sleep(0.05)
        assert await fresh_roundtrip(m.outbound_port, b"old ca gone") == b"old ca gone"
        assert await roundtrip(reader, writer, b"still open") == b"still open"
        writer.close()


@run_async
async def test_agent_restart_envoy_reconnects_and_gets_certificates_again() -> None:
    async with mesh() as m:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.outbound_port)
        assert await roundtrip(reader, writer, b"one") == b"one"
        backend_old = m.serial_of(BACKEND)
        old = {backend_old, m.serial_of(FRONTEND)}
        await m.agent.stop()
        # Agent down: Envoy keeps the certificates it has; listeners keep serving.
        assert await fresh_roundtrip(m.outbound_port, b"agent down") == b"agent down"
        assert await m.server.cert_serials() == {backend_old}
        # A new agent process on the same socket: keys are in memory only, so it signs anew.
        m.agent = AgentService(
            upstream=m.up, socket_path=m.agent.socket_path, trust_domain=m.up.trust_domain
        )
        await m.agent.start()
        await m.agent.wait_ready()
        await m.agent.cache.rotate_due()  # ahead-of-time signing, as the loop would
        assert not old & {m.serial_of(BACKEND), m.serial_of(FRONTEND)}
        await m.wait_current_serials("certificates from the restarted agent")
        assert await fresh_roundtrip(m.outbound_port, b"agent back") == b"agent back"
        assert await roundtrip(reader, writer, b"two") == b"two"
        writer.close()


@run_async
async def test_spiffe_client_fetches_the_same_svid_and_bundle_as_envoy() -> None:
    async with mesh() as m:
        probe = Path(__file__).with_name("agent_probe.py")
        proc = await asyncio.create_subprocess_exec(
            python_for_other_users(),
            str(probe),
            str(m.agent.socket_path),
            json.dumps([["default"]]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=other_user_env(SPIFFE_ENDPOINT_SOCKET=f"unix://{m.agent.socket_path}"),
            user=1000,
            group=1000,
            extra_groups=[],
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-3000:]
        result = json.loads(out)
        [svid] = result["workload"]["ok"]
        assert svid["uri"] == BACKEND
        # The very certificate the uid-1000 Envoy serves.
        assert {svid["serial"]} == await m.server.cert_serials()
        assert result["workload"]["bundles"] == {TD: sorted(await m.server.ca_serials())}


def test_deploy_bootstrap_is_valid_for_the_stock_envoy() -> None:
    out = subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(DEPLOY_BOOTSTRAP),
            "--disable-hot-restart",
            "-l",
            "warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr
