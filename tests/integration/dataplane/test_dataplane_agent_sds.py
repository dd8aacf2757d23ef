"""Two `trustd proxy` instances whose SVIDs and bundle come from a real agent over SDS.

`trustd up` (server and agent in one process) runs in a temporary directory
with its own sockets and ports; one registration entry gives this test's uid
an identity; the proxies fetch it over the agent socket and talk mTLS in STRICT.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dataplane_integration_helpers import eventually, run
from dataplane_testing import RecordingApp

from trustd.dataplane import Proxy, SdsIdentitySource, StaticPolicySource, parse_config
from trustd.dataplane.proxy import DenialEvent
from trustd.policy import PolicySet, load_text
from trustd.policy.effective import PolicyLayer

pytestmark = pytest.mark.integration

WEB = "spiffe://trustd.local/ns/shop/sa/web"
TRUSTD = str(Path(sys.executable).parent / "trustd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STRICT = PolicySet(
    version=1,
    layer=PolicyLayer(
        objects=load_text(
            "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
            "metadata: {name: mesh, namespace: trustd-system}\nspec:\n  mtls: {mode: STRICT}\n"
        )
    ),
)


@run
async def test_proxies_use_svids_from_the_agent_over_sds(tmp_path: Path) -> None:
    data = tmp_path / "td"
    admin, agent = data / "admin.sock", data / "public" / "agent.sock"
    env = dict(os.environ, TRUSTD_ADMIN_SOCKET=str(admin))
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [
            TRUSTD,
            "up",
            "--data-dir",
            str(data),
            "--admin-socket",
            str(admin),
            "--agent-socket",
            str(agent),
            "--server-address",
            f"127.0.0.1:{free_port()}",
            "--metrics-address",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    app = await RecordingApp().start()
    proxies: list[Proxy] = []
    sources: list[SdsIdentitySource] = []
    try:
        await eventually(lambda: (admin.exists() and agent.exists()) or up.poll() is not None)
        assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        created = await asyncio.to_thread(
            subprocess.run,
            [
                TRUSTD,
                "entry",
                "create",
                "--spiffe-id",
                WEB,
                "--selector",
                f"unix:uid:{os.getuid()}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert created.returncode == 0, created.stderr

        def sds(node_id: str) -> SdsIdentitySource:
            sources.append(SdsIdentitySource(socket_path=str(agent), node_id=node_id))
            return sources[-1]

        denials: list[DenialEvent] = []
        server = Proxy(
            config=parse_config(
                {"inbound": [{"port": 0, "app": app.address, "bind": "127.0.0.1"}]}
            ),
            identity=sds("web-server"),
            policy=StaticPolicySource(STRICT),
            proxy_id="web-server",
            on_denial=denials.append,
        )
        await server.start(identity_timeout=30)
        proxies.append(server)
        client = Proxy(
            config=parse_config(
                {
                    "outbound": [
                        {
                            "listen": "127.0.0.1:0",
                            "destination": WEB,
                            "address": f"127.0.0.1:{server.inbound_port()}",
                        }
                    ]
                }
            ),
            identity=sds("web-client"),
            policy=StaticPolicySource(STRICT),
            proxy_id="web-client",
            on_denial=denials.append,
        )
        await client.start(identity_timeout=30)
        proxies.append(client)

        r, w = await asyncio.open_connection(*client.outbound_address())
        w.write(b"hello over agent-issued svids")
        assert await r.readexactly(29) == b"hello over agent-issued svids"
        w.close()
        labels = {"listener": f"inbound:{server.inbound_port()}", "mode": "tls"}
        assert server.metrics.value("trustd_proxy_connections_total", labels) == 1
        assert not denials
        expiry = server.metrics.value("trustd_proxy_svid_expiry_timestamp_seconds")
        assert expiry > 0
    finally:
        for p in proxies:
            await p.stop(grace=1)
        for src in sources:
            await src.close()
        await app.stop()
        up.terminate()
        try:
            await asyncio.to_thread(up.wait, 20)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()
