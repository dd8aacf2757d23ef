"""``trustd up``: the server and one node agent in one process, wired in-process.

The agent is the same ``AgentService`` that ``trustd agent`` runs; only its
upstream differs: the registry and the policy plane called directly
(``RegistryUpstream``, ``PolicyPlane.upstream_for``) instead of through the agent API.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import structlog

from trustd import envoy_bootstrap
from trustd.agent.metrics import AgentMetrics
from trustd.agent.service import AgentService
from trustd.audit.events import Actor
from trustd.config import ServerConfig
from trustd.registry.upstream import RegistryUpstream
from trustd.server.app import TrustdServer

log = structlog.get_logger(__name__)


class Embedded:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.server = TrustdServer(cfg)
        self.envoy_bootstrap: Path = cfg.data_path / "envoy-sidecar.yaml"
        td = self.server.trust_domain
        self.agent_actor = Actor(kind="spiffe", id=f"spiffe://{td}/trustd/agent/embedded")
        self.agent: AgentService | None = None

    async def start(self) -> None:
        await self.server.start()
        # A sealed or unreachable KMS may hold the first CA back for long: the server
        # retries with backoff and says why on /readyz, so `up` waits as long as it takes.
        await self.server.wait_ready(timeout=math.inf)
        upstream = RegistryUpstream(
            self.server.registry, self.server.hub, self.server.executor, self.agent_actor
        )
        self.agent = AgentService(
            upstream=upstream,
            socket_path=self.cfg.agent_socket_path,
            trust_domain=self.server.trust_domain,
            clock=self.server.clock,
            metrics=AgentMetrics(self.server.metrics.registry),
            policy_upstream=self.server.policy.upstream_for(self.agent_actor),
        )
        await self.agent.start()
        await self.agent.wait_ready()
        self._write_bootstrap()

    def _write_bootstrap(self) -> None:
        text = envoy_bootstrap.render(
            agent_socket=self.cfg.agent_socket_path, trust_domain=str(self.server.trust_domain)
        )
        tmp = self.envoy_bootstrap.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, self.envoy_bootstrap)

    def banner(self) -> str:
        c = self.cfg
        metrics = self.server.metrics_address
        lines = [
            "trustd is up",
            f"  trust domain     {self.server.trust_domain}",
            f"  admin socket     {c.admin_socket_path}",
            f"  agent socket     {c.agent_socket_path}",
            f"  agent api        127.0.0.1:{self.server.agent_api_port}",
            f"  envoy bootstrap  {self.envoy_bootstrap}",
        ]
        if metrics:
            lines.append(f"  metrics          http://{metrics[0]}:{metrics[1]}/metrics")
        ep = c.federation.bundle_endpoint
        if ep is not None and self.server.bundle_endpoint_port is not None:
            host = ep.address.rpartition(":")[0] or "127.0.0.1"
            lines.append(
                f"  bundle endpoint  https://{host}:{self.server.bundle_endpoint_port}/ "
                f"({ep.profile}, spiffe://{self.server.trust_domain}/trustd/server)"
            )
        lines.append(
            f"  next: export TRUSTD_ADMIN_SOCKET={c.admin_socket_path} "
            f"SPIFFE_ENDPOINT_SOCKET=unix://{c.agent_socket_path}"
        )
        return "\n".join(lines) + "\n"

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
        await self.server.stop()
