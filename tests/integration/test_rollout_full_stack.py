"""The test that matters: a lossless rollout through the whole product, driven by the CLI.

`trustd up` (server and agent), a server app, a server-side `trustd proxy`, a
client-side `trustd proxy` and a steady request loop, each proxy a separate
process under its own gid (so the kernel gives each its own identity; they
stay root otherwise because the interpreter lives under /root). The
admin drives `trustd rollout start` to DISABLE, then to STRICT, then back to
DISABLE. Not one request may fail, and the server proxy's metrics must show
mTLS at the end of the STRICT rollout and plaintext at the end of DISABLE.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from stack_helpers import TRUSTD, cli, free_port, metric_sum, metrics

pytestmark = pytest.mark.integration

SERVER_ID = "spiffe://trustd.local/ns/shop/sa/backend"
CLIENT_ID = "spiffe://trustd.local/ns/shop/sa/frontend"
SERVER_GID, CLIENT_GID = 1101, 1102


_port = free_port
_cli = cli
_metrics = metrics
_sum = metric_sum


async def _echo_app(port: int) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


class Loop:
    """Steady traffic: 3 workers recycling connections every 5 requests, and one long-lived one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.running = True
        self.tasks: list[asyncio.Task[None]] = []

    async def _exchange(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, tag: str) -> None:
        payload = (tag + ":" + os.urandom(300).hex()).encode()
        w.write(payload)
        await w.drain()
        async with asyncio.timeout(10):
            got = await r.readexactly(len(payload))
        if got != payload:
            raise AssertionError("wrong answer")
        self.ok += 1

    async def _worker(self, wid: int) -> None:
        n = 0
        while self.running:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                self.failures.append(f"connect: {exc!r}")
                await asyncio.sleep(0.05)
                continue
            try:
                for _ in range(5):
                    n += 1
                    await self._exchange(r, w, f"{wid}.{n}")
                    await asyncio.sleep(0.01)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
                self.failures.append(f"worker {wid} request {n}: {exc!r}")
            finally:
                w.close()

    async def _long_lived(self) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        n = 0
        try:
            while self.running:
                n += 1
                await self._exchange(r, w, f"long.{n}")
                await asyncio.sleep(0.2)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
            self.failures.append(f"long-lived connection, request {n}: {exc!r}")
        finally:
            w.close()

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(i)) for i in range(3)]
        self.tasks.append(asyncio.create_task(self._long_lived()))

    async def stop(self) -> None:
        self.running = False
        await asyncio.gather(*self.tasks)


async def _rollout(
    env: dict[str, str], target: str, loop: Loop, limit: float = 180
) -> dict[str, object]:
    started = _cli(
        env, "rollout", "start", "--selector", "spiffe://trustd.local/ns/shop/**", "--to", target
    )
    assert started["state"] == "running", started
    deadline = time.monotonic() + limit
    while True:
        await asyncio.sleep(0.5)
        status = await asyncio.to_thread(_cli, env, "rollout", "status")
        assert not loop.failures, loop.failures[:5]
        if status["state"] == "complete":
            return status
        assert status["state"] in ("running", "paused"), status
        assert time.monotonic() < deadline, f"rollout to {target} did not complete: {status}"


def test_rollout_disable_strict_disable_loses_no_request(tmp_path: Path) -> None:
    asyncio.run(_main(tmp_path))


async def _main(tmp: Path) -> None:
    data = tmp / "td"
    cfg = tmp / "server.yaml"
    cfg.write_text("rollout: {settlePeriod: 3s}\n")
    env = dict(os.environ, TRUSTD_ADMIN_SOCKET=str(data / "admin.sock"))
    agent_sock = data / "public" / "agent.sock"
    up = subprocess.Popen(
        [
            TRUSTD,
            "up",
            "--config",
            str(cfg),
            "--data-dir",
            str(data),
            "--server-address",
            f"127.0.0.1:{_port()}",
            "--metrics-address",
            f"127.0.0.1:{_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "up.log").open("wb"),
    )
    procs: list[subprocess.Popen[bytes]] = [up]
    app = None
    loop = None
    try:
        deadline = time.monotonic() + 60
        while not agent_sock.exists():
            assert up.poll() is None, (tmp / "up.log").read_text()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        _cli(
            env, "entry", "create", "--spiffe-id", SERVER_ID, "--selector", f"unix:gid:{SERVER_GID}"
        )
        _cli(
            env, "entry", "create", "--spiffe-id", CLIENT_ID, "--selector", f"unix:gid:{CLIENT_GID}"
        )

        app_port, inbound, outbound = _port(), _port(), _port()
        server_metrics, client_metrics = _port(), _port()
        app = await _echo_app(app_port)
        os.chmod(tmp, 0o755)
        for name, gid, body, mport in (
            (
                "server",
                SERVER_GID,
                f"inbound:\n  - port: {inbound}\n    app: 127.0.0.1:{app_port}\n",
                server_metrics,
            ),
            (
                "client",
                CLIENT_GID,
                f"outbound:\n  - listen: 127.0.0.1:{outbound}\n    destination: {SERVER_ID}\n"
                f"    address: 127.0.0.1:{inbound}\n",
                client_metrics,
            ),
        ):
            conf = tmp / f"{name}-proxy.yaml"
            conf.write_text(
                f"agentSocket: {agent_sock}\nproxyId: {name}-1\nreportInterval: 500ms\n"
                f"metricsAddress: 127.0.0.1:{mport}\n" + body
            )
            os.chmod(conf, 0o644)
            log = (tmp / f"{name}-proxy.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [TRUSTD, "proxy", "--config", str(conf)],
                    group=gid,
                    extra_groups=[],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    cwd="/",
                    env=dict(os.environ, HOME="/", PYTHONDONTWRITEBYTECODE="1"),
                )
            )
        for mport, name in ((server_metrics, "server"), (client_metrics, "client")):
            deadline = time.monotonic() + 60
            while True:
                try:
                    _metrics(mport)
                    break
                except OSError:
                    assert all(p.poll() is None for p in procs), (
                        tmp / f"{name}-proxy.log"
                    ).read_text()
                    assert time.monotonic() < deadline, (tmp / f"{name}-proxy.log").read_text()
                    await asyncio.sleep(0.3)

        loop = Loop(outbound)
        loop.start()
        await asyncio.sleep(2)
        assert loop.ok > 0 and not loop.failures, loop.failures[:5]

        await _rollout(env, "DISABLE", loop)
        await asyncio.sleep(2)
        before = _metrics(server_metrics)
        await asyncio.sleep(2)
        after = _metrics(server_metrics)
        plain = _sum(after, "trustd_proxy_connections_total", 'mode="plaintext"') - _sum(
            before, "trustd_proxy_connections_total", 'mode="plaintext"'
        )
        tls = _sum(after, "trustd_proxy_connections_total", 'mode="tls"') - _sum(
            before, "trustd_proxy_connections_total", 'mode="tls"'
        )
        assert plain > 0 and tls == 0, (plain, tls)

        await _rollout(env, "STRICT", loop)
        before = _metrics(server_metrics)
        await asyncio.sleep(3)
        after = _metrics(server_metrics)
        plain = _sum(after, "trustd_proxy_connections_total", 'mode="plaintext"') - _sum(
            before, "trustd_proxy_connections_total", 'mode="plaintext"'
        )
        tls = _sum(after, "trustd_proxy_connections_total", 'mode="tls"') - _sum(
            before, "trustd_proxy_connections_total", 'mode="tls"'
        )
        assert tls > 0 and plain == 0, (plain, tls)
        show = _cli(env, "policy", "show", "--spiffe-id", SERVER_ID, "--port", str(inbound))
        assert show["peer_authentication"]["mode"] == "STRICT", show

        await _rollout(env, "DISABLE", loop)
        await asyncio.sleep(2)
        await loop.stop()
        assert not loop.failures, loop.failures[:5]
        assert loop.ok > 100

        audit = "".join(p.read_text() for p in sorted((data / "audit").glob("audit-*.jsonl")))
        assert '"type":"rollout.step"' in audit
    finally:
        if loop is not None and loop.running:
            await loop.stop()
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if app is not None:
            app.close()
