"""Running the long-lived processes: up, server, agent, proxy."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from trustd.config import ServerConfig, load_server_config
from trustd.telemetry import logging as tlog

log = structlog.get_logger(__name__)


async def _until_signalled() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _configure(cfg: ServerConfig) -> None:
    tlog.configure(cfg.log_level, cfg.log_format)


def run_server(config: str | None, overrides: dict[str, Any]) -> None:
    cfg = load_server_config(config, overrides)
    _configure(cfg)
    from trustd.server.app import TrustdServer

    async def main() -> None:
        server = TrustdServer(cfg)
        await server.start()
        try:
            await _until_signalled()
        finally:
            await server.stop()

    _run(main)


def run_up(config: str | None, overrides: dict[str, Any]) -> None:
    cfg = load_server_config(config, overrides)
    _configure(cfg)
    from trustd.server.embedded import Embedded

    async def main() -> None:
        up = Embedded(cfg)
        await up.start()
        sys.stdout.write(up.banner())
        sys.stdout.flush()
        try:
            await _until_signalled()
        finally:
            await up.stop()

    _run(main)


def run_agent(config: str) -> None:
    from trustd.agent.agent_config import load_agent_config
    from trustd.agent.server_link import run_remote_agent

    cfg = load_agent_config(config)
    tlog.configure(cfg.log_level, cfg.log_format)
    _run(lambda: run_remote_agent(cfg, _until_signalled))
