"""`python -m trustd.dataplane --config F` (what `trustd proxy --config F` runs) as a real process."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dataplane_integration_helpers import eventually, run
from dataplane_testing import RecordingApp, ThrowawayCA

pytestmark = pytest.mark.integration

SERVER = "spiffe://trustd.local/ns/shop/sa/backend"
CLIENT = "spiffe://trustd.local/ns/shop/sa/frontend"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mesh(mode: str) -> str:
    return (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: mesh, namespace: trustd-system}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


async def plaintext_echo(port: int) -> bytes:
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"plain")
        await w.drain()
        async with asyncio.timeout(5):
            data = await r.read(5)
        w.close()
        return data
    except (OSError, TimeoutError):
        return b""


@run
async def test_proxy_process_serves_reloads_policy_and_stops_cleanly(tmp_path: Path) -> None:
    ca = ThrowawayCA("trustd.local")
    cert, key = ca.issue(SERVER).write(tmp_path / "id")
    bundle = tmp_path / "id" / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "mesh.yaml").write_text(mesh("PERMISSIVE"))
    app = await RecordingApp().start()
    port, metrics = free_port(), free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"proxyId: backend-1\n"
        f"inbound:\n  - port: {port}\n    app: {app.address}\n    bind: 127.0.0.1\n"
        f"metricsAddress: 127.0.0.1:{metrics}\n"
        f"identity: {{kind: files, certFile: {cert}, keyFile: {key}, bundleFile: {bundle}}}\n"
        f"policy: {{kind: files, paths: [{policies}], pollInterval: 100ms}}\n"
        "drainTimeout: 2s\n"
    )
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustd.dataplane", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = f"http://127.0.0.1:{metrics}/readyz"
        await eventually(lambda: http_get(ready)[0] == 200 or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "proxy.log").read_text()

        assert await plaintext_echo(port) == b"plain"  # PERMISSIVE: plaintext
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=ca.bundle_pem.decode())
        ccert, ckey = ca.issue(CLIENT).write(tmp_path / "client")
        ctx.load_cert_chain(ccert, ckey)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(b"over mtls")
        assert await r.readexactly(9) == b"over mtls"  # PERMISSIVE: mTLS
        w.close()

        _, text = http_get(f"http://127.0.0.1:{metrics}/metrics")
        assert f'trustd_proxy_connections_total{{listener="inbound:{port}",mode="tls"}} 1.0' in text
        assert "trustd_proxy_policy_version 1.0" in text

        (policies / "mesh.yaml").write_text(mesh("STRICT"))  # the file changes: a new version
        await eventually(
            lambda: (
                "trustd_proxy_policy_version 2.0"
                in http_get(f"http://127.0.0.1:{metrics}/metrics")[1]
            )
        )
        assert await plaintext_echo(port) == b""  # STRICT now
        assert bytes(app.received) == b"plainover mtls"  # nothing of the refused client

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        await app.stop()


@pytest.mark.parametrize("busy", ["inbound", "metrics"])
def test_a_busy_port_is_one_line_and_exit_1(tmp_path: Path, busy: str) -> None:
    ca = ThrowawayCA("trustd.local")
    cert, key = ca.issue(SERVER).write(tmp_path / "id")
    bundle = tmp_path / "id" / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        used = taken.getsockname()[1]
        port = used if busy == "inbound" else free_port()
        metrics = used if busy == "metrics" else free_port()
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"inbound:\n  - port: {port}\n    app: 127.0.0.1:9\n    bind: 127.0.0.1\n"
            f"metricsAddress: 127.0.0.1:{metrics}\npolicy: {{kind: none}}\n"
            f"identity: {{kind: files, certFile: {cert}, keyFile: {key}, bundleFile: {bundle}}}\n"
        )
        trustd = str(Path(sys.executable).parent / "trustd")
        done = subprocess.run([trustd, "proxy", "--config", str(config)], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.splitlines()[-1]
    what = f"inbound port {port}" if busy == "inbound" else f"metricsAddress 127.0.0.1:{metrics}"
    assert last.startswith(f"trustd: cannot listen on {what}") and "in use" in last, last
