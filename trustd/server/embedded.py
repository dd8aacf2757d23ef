"""``trustd up``: the server and one node agent in one process, wired in-process."""

from __future__ import annotations

from pathlib import Path

import structlog

from trustd.config import ServerConfig
from trustd.server.app import TrustdServer

log = structlog.get_logger(__name__)


class Embedded:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.server = TrustdServer(cfg)
        self.envoy_bootstrap: Path = cfg.data_path / "envoy-sidecar.yaml"

    async def start(self) -> None:
        await self.server.start()
        await self.server.wait_ready()

    def banner(self) -> str:
        c = self.cfg
        metrics = self.server.metrics_address
        return (
            "trustd is up\n"
            f"  trust domain     {self.server.trust_domain}\n"
            f"  admin socket     {c.admin_socket_path}\n"
            f"  agent socket     {c.agent_socket_path}\n"
            f"  envoy bootstrap  {self.envoy_bootstrap}\n"
            f"  metrics          http://{metrics[0]}:{metrics[1]}/metrics\n" if metrics else ""
        )

    async def stop(self) -> None:
        await self.server.stop()
