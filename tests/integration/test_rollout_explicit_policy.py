"""A rollout next to an explicit policy object, as an admin really runs one.

The shape the other full-stack test does not take: entries by **uid** (the
server side as uid 0, the client side as uid 65534 under `setpriv`), a
mesh-wide ``PeerAuthentication`` applied by the CLI *before* the rollout, a
real HTTP app (``python -m http.server``) and a plaintext probe that reads the
server proxy's reply to EOF. Two server proxies, so the rollout runs with
``--canary 1``.

What must hold:
- a selector that matches no server proxy is refused at once, naming the
  servers that do report (``ns/shop/*`` is one segment, the IDs have two);
- the rollout to STRICT completes only once both server proxies enforce
  STRICT: afterwards the plaintext probe gets not one byte of the app, while
  every request through the client proxy works, and `policy show`, `policy
  status` and `rollout status` say the same as the wire;
- a later `policy apply` that says otherwise wins, and the wire follows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import TRUSTD, cli, cli_fails, free_port, metric_sum, metrics

pytestmark = pytest.mark.integration

SERVER_ID = "spiffe://trustd.local/ns/shop/sa/server"
CLIENT_ID = "spiffe://trustd.local/ns/shop/sa/client"
CLIENT_UID = 65534
MESH_DISABLE = """\
apiVersion: trustd.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: trustd-system}
spec:
  mtls: {mode: DISABLE}
"""
SHOP_PERMISSIVE = """\
apiVersion: trustd.io/v1alpha1
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec:
  mtls: {mode: PERMISSIVE}
"""


async def http_get(port: int, timeout: float = 10) -> bytes:
    """``GET /`` over HTTP/1.0 and the whole reply, read to EOF (b"" if refused)."""
    try:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
            await w.drain()
            data = await r.read()  # to EOF
            w.close()
            return data
    except ConnectionError:
        return b""


class Traffic:
    """Steady HTTP requests through the client proxy's outbound listeners, round robin."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.ok = 0
        self.failures: list[str] = []
        self.running = True
        self.tasks: list[asyncio.Task[None]] = []

    async def _worker(self, wid: int) -> None:
        n = 0
        while self.running:
            port = self.ports[n % len(self.ports)]
            n += 1
            reply = await http_get(port)
            if reply.startswith(b"HTTP/1.0 200") and reply.rstrip().endswith(b"</html>"):
                self.ok += 1
            else:
                self.failures.append(f"worker {wid} request {n} via {port}: {reply[:80]!r}")
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(i)) for i in range(3)]

    async def stop(self) -> None:
        self.running = False
        await asyncio.gather(*self.tasks)


def test_rollout_over_an_explicit_mesh_object_with_uid_selectors_and_a_canary() -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to start the client proxy as another uid")
    # pytest's tmp_path sits in a 0700 directory: uid 65534 could reach neither its config
    # nor the agent socket. A directory of its own in /tmp, open to traverse, instead.
    tmp = Path(tempfile.mkdtemp(prefix="trustd-e2e-"))
    try:
        asyncio.run(_main(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _wait_metrics(port: int, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            metrics(port)
            return
        except OSError:
            assert all(p.poll() is None for p in procs), log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.3)


async def _main(tmp: Path) -> None:
    os.chmod(tmp, 0o755)
    data = tmp / "td"
    cfg = tmp / "server.yaml"
    cfg.write_text("rollout: {settlePeriod: 3s}\n")
    env = dict(os.environ, TRUSTD_ADMIN_SOCKET=str(data / "admin.sock"))
    agent_sock = data / "public" / "agent.sock"
    up = subprocess.Popen(
        [TRUSTD, "up", "--config", str(cfg), "--data-dir", str(data),
         "--server-address", f"127.0.0.1:{free_port()}", "--metrics-address", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "up.log").open("wb"),
    )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = [up]
    traffic: Traffic | None = None
    try:
        deadline = time.monotonic() + 60
        while not agent_sock.exists():
            assert up.poll() is None, (tmp / "up.log").read_text()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        cli(env, "entry", "create", "--spiffe-id", SERVER_ID, "--selector", "unix:uid:0")
        cli(
            env, "entry", "create", "--spiffe-id", CLIENT_ID, "--selector", f"unix:uid:{CLIENT_UID}"
        )
        (tmp / "mesh.yaml").write_text(MESH_DISABLE)
        cli(env, "policy", "apply", "-f", str(tmp / "mesh.yaml"), "--force")

        app_port = free_port()
        site = tmp / "site"
        site.mkdir()
        (site / "index.html").write_text("<html>" + "x" * 2000 + "</html>\n")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1"],
            cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip

        inbound = [free_port(), free_port()]
        outbound = [free_port(), free_port()]
        server_metrics = [free_port(), free_port()]
        client_metrics = free_port()
        for i in range(2):
            conf = tmp / f"server-{i + 1}.yaml"
            conf.write_text(
                f"agentSocket: {agent_sock}\nproxyId: server-{i + 1}\nreportInterval: 500ms\n"
                f"metricsAddress: 127.0.0.1:{server_metrics[i]}\n"
                f"inbound:\n  - port: {inbound[i]}\n    app: 127.0.0.1:{app_port}\n"
            )
            procs.append(subprocess.Popen(
                [TRUSTD, "proxy", "--config", str(conf)], stdout=subprocess.DEVNULL,
                stderr=(tmp / f"server-{i + 1}.log").open("wb"),
            ))  # fmt: skip
        conf = tmp / "client.yaml"
        conf.write_text(
            f"agentSocket: {agent_sock}\nproxyId: client-1\nreportInterval: 500ms\n"
            f"metricsAddress: 127.0.0.1:{client_metrics}\noutbound:\n"
            + "".join(
                f"  - listen: 127.0.0.1:{outbound[i]}\n    destination: {SERVER_ID}\n"
                f"    address: 127.0.0.1:{inbound[i]}\n"
                for i in range(2)
            )
        )
        os.chmod(conf, 0o644)
        procs.append(subprocess.Popen(
            ["setpriv", f"--reuid={CLIENT_UID}", f"--regid={CLIENT_UID}", "--clear-groups",
             TRUSTD, "proxy", "--config", str(conf)],
            stdout=subprocess.DEVNULL, stderr=(tmp / "client.log").open("wb"), cwd="/",
            env=dict(os.environ, HOME="/", PYTHONDONTWRITEBYTECODE="1"),
        ))  # fmt: skip
        for port, name in [*zip(server_metrics, ("server-1", "server-2"), strict=True),
                           (client_metrics, "client")]:  # fmt: skip
            await _wait_metrics(port, procs, tmp / f"{name}.log")

        # Before: everything plaintext, as the mesh object says; the probe reaches the app.
        for port in inbound:
            assert (await http_get(port)).startswith(b"HTTP/1.0 200")
        traffic = Traffic(outbound)
        traffic.start()
        await asyncio.sleep(2)
        assert traffic.ok > 0 and not traffic.failures, traffic.failures[:5]

        # One path segment: the selector covers no server, and the CLI says so at once.
        refused = cli_fails(env, "rollout", "start", "--selector", "spiffe://trustd.local/ns/shop/*",
                            "--to", "STRICT")  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        assert "matches no server proxy" in refused.stderr and SERVER_ID in refused.stderr
        assert "spiffe://trustd.local/ns/shop/**" in refused.stderr
        assert cli_fails(env, "rollout", "status").returncode == 2  # nothing was started

        started = cli(env, "rollout", "start", "--selector", "spiffe://trustd.local/ns/shop/**",
                      "--to", "STRICT", "--canary", "1")  # fmt: skip
        assert started["state"] == "running" and started["phase"] == "canary", started
        assert started["canary_instances"] == ["server-1"], started
        # While the rollout runs, the mode objects are its own: a change is refused, naming it.
        (tmp / "shop.yaml").write_text(SHOP_PERMISSIVE)
        during = cli_fails(env, "policy", "apply", "-f", str(tmp / "shop.yaml"))
        assert during.returncode == 2 and started["id"] in during.stderr, during.stderr
        status = await _until_complete(env, traffic)
        assert status["target"] == "STRICT" and status["step"] == "servers-strict"
        assert status["not_enforced"] == [] and status["waiting_for"] == []
        servers = [e for e in status["enforcement"] if e["side"] == "server"]
        assert sorted(e["port"] for e in servers) == sorted(inbound)
        assert all(e["enforced"] == "STRICT" and e["ok"] for e in servers), servers
        clients = [e for e in status["enforcement"] if e["side"] == "client"]
        assert len(clients) == 2 and all(e["enforced"] == "mtls" for e in clients), clients

        # The wire: no plaintext reaches the app on either server proxy, read to EOF.
        await asyncio.sleep(1)
        before = [metrics(p) for p in server_metrics]
        for port in inbound:
            assert await http_get(port) == b"", f"plaintext reached the app through port {port}"
        await asyncio.sleep(2)
        for port, old in zip(server_metrics, before, strict=True):
            new = metrics(port)
            plain = metric_sum(new, "trustd_proxy_connections_total", 'mode="plaintext"') - metric_sum(
                old, "trustd_proxy_connections_total", 'mode="plaintext"')  # fmt: skip
            tls = metric_sum(new, "trustd_proxy_connections_total", 'mode="tls"') - metric_sum(
                old, "trustd_proxy_connections_total", 'mode="tls"')  # fmt: skip
            assert plain == 0 and tls > 0, (port, plain, tls)
            denied = metric_sum(new, "trustd_proxy_denials_total", "plaintext_in_strict")
            assert denied >= 1, port
        # ... and what the CLI says is the same.
        for port in inbound:
            show = cli(env, "policy", "show", "--spiffe-id", SERVER_ID, "--port", str(port))
            peer = show["peer_authentication"]
            assert peer["mode"] == "STRICT", show
            assert peer["overrides"] == "PeerAuthentication/trustd-system/default", show
        await _agrees(env, {p: "STRICT" for p in inbound}, "mtls")

        # The canary went first in both server steps (one client: its step has no canary).
        audit = [json.loads(line) for f in sorted((data / "audit").glob("audit-*.jsonl"))
                 for line in f.read_text().splitlines()]  # fmt: skip
        canaries = [(e["details"]["step"], e["details"]["canary_instances"]) for e in audit
                    if e["type"] == "rollout.step" and e["details"].get("canary_instances")]  # fmt: skip
        assert canaries == [("servers-permissive", ["server-1"]), ("servers-strict", ["server-1"])]

        # A later apply that says otherwise wins (no rollout is active now), and the wire follows.
        cli(env, "policy", "apply", "-f", str(tmp / "shop.yaml"))
        show = cli(env, "policy", "show", "--spiffe-id", SERVER_ID, "--port", str(inbound[0]))
        assert show["peer_authentication"]["mode"] == "PERMISSIVE", show
        assert show["peer_authentication"]["source"] == "PeerAuthentication/shop/shop", show
        deadline = time.monotonic() + 30
        while not (await http_get(inbound[0])).startswith(b"HTTP/1.0 200"):
            assert time.monotonic() < deadline, "the later PERMISSIVE object never took effect"
            await asyncio.sleep(0.5)
        await _agrees(env, {p: "PERMISSIVE" for p in inbound}, "mtls")

        await traffic.stop()
        assert not traffic.failures, traffic.failures[:5]
        assert traffic.ok > 50, traffic.ok
    finally:
        if traffic is not None and traffic.running:
            await traffic.stop()
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


async def _until_complete(
    env: dict[str, str], traffic: Traffic, limit: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        await asyncio.sleep(0.5)
        status: dict[str, Any] = await asyncio.to_thread(cli, env, "rollout", "status")
        assert not traffic.failures, traffic.failures[:5]
        if status["state"] == "complete":
            return status
        assert status["state"] == "running", status
        assert time.monotonic() < deadline, f"the rollout did not complete: {status}"


async def _agrees(env: dict[str, str], ports: dict[int, str], transport: str) -> None:
    """`policy status`: every server port and client destination enforces what the policy says."""
    deadline = time.monotonic() + 20
    while True:
        status = await asyncio.to_thread(cli, env, "policy", "status")
        rows = status["enforcement"]
        servers = {r["port"]: r["enforced"] for r in rows if r["side"] == "server"}
        clients = {r["enforced"] for r in rows if r["side"] == "client"}
        if status["converged"] and servers == ports and clients == {transport}:
            assert all(r["agrees"] for r in rows), rows
            return
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)
