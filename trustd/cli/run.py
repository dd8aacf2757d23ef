"""Running the long-lived processes: up, server, agent, proxy."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from trustd.config import ServerConfig, load_server_config
from trustd.telemetry import logging as tlog

log = structlog.get_logger(__name__)


def _stop_event() -> asyncio.Event:
    """SIGINT/SIGTERM set the returned event; installed before anything starts."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _start_unless_stopped(start: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``start``; a signal meanwhile cancels it. True when it finished."""
    starting = asyncio.ensure_future(start)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return False
    starting.result()
    return True


async def _until_signalled() -> None:
    await _stop_event().wait()


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
        stop = _stop_event()
        server = TrustdServer(cfg)
        try:
            if await _start_unless_stopped(server.start(), stop):
                await stop.wait()
        finally:
            await server.stop()

    _run(main)


def run_up(config: str | None, overrides: dict[str, Any]) -> None:
    cfg = load_server_config(config, overrides)
    _configure(cfg)
    from trustd.server.embedded import Embedded

    async def main() -> None:
        stop = _stop_event()
        up = Embedded(cfg)
        try:
            if await _start_unless_stopped(up.start(), stop):
                sys.stdout.write(up.banner())
                sys.stdout.flush()
                await stop.wait()
        finally:
            await up.stop()

    _run(main)


def run_agent(config: str) -> None:
    from trustd.agent.agent_config import load_agent_config
    from trustd.agent.server_link import run_remote_agent

    cfg = load_agent_config(config)
    tlog.configure(cfg.log_level, cfg.log_format)
    _run(lambda: run_remote_agent(cfg, _until_signalled))
