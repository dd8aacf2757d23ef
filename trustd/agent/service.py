"""The node agent as one object ``trustd up`` and ``trustd agent`` can run in their loop.

    agent = AgentService(upstream=..., socket_path=Path(".trustd/public/agent.sock"),
                         trust_domain=TrustDomain.parse("trustd.local"))
    await agent.start()      # socket open; syncs with the server in the background
    await agent.wait_ready() # optional: first entries and bundle are in
    ...
    await agent.stop()

No global state: two agents can run side by side in one process (tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health

from trustd.agent.attestation import Attestor, attest
from trustd.agent.cache import AgentCache, AgentSettings
from trustd.agent.endpoints import (
    SOCKET_MODE,
    AttestingServer,
    CallerRegistry,
    prepare_socket_path,
)
from trustd.agent.metrics import AgentMetrics
from trustd.agent.policy_relay import PolicyRelay, PolicyUpstream
from trustd.agent.upstream import BundleUpdate, EntryUpdate, Upstream
from trustd.backoff import Backoff, Retry
from trustd.clock import Clock, SystemClock
from trustd.sds.service import SecretDiscoveryService
from trustd.spiffeid import TrustDomain
from trustd.workloadapi.service import WorkloadApiService

log = structlog.get_logger(__name__)

WATCH_BACKOFF = Backoff(initial=0.5, maximum=30.0)  # a lost server watch


class AgentService:
    def __init__(
        self,
        *,
        upstream: Upstream,
        socket_path: Path,
        trust_domain: TrustDomain,
        clock: Clock | None = None,
        metrics: AgentMetrics | None = None,
        settings: AgentSettings | None = None,
        attestor: Attestor = attest,
        policy_upstream: PolicyUpstream | None = None,
    ) -> None:
        self._upstream = upstream
        self.socket_path = Path(socket_path).absolute()
        self.trust_domain = trust_domain
        self._clock = clock or SystemClock()
        self.metrics = metrics or AgentMetrics()
        self._settings = settings or AgentSettings()
        self._attestor = attestor
        self._policy_upstream = policy_upstream  # relays policy to proxies; None: no relay
        self._policy_relay: PolicyRelay | None = None
        self._cache: AgentCache | None = None
        self._server: AttestingServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health = ServiceStatus()
        # Backoff jitter only spreads reconnects; no cryptographic randomness needed.
        self._rng = random.Random()  # noqa: S311

    @property
    def cache(self) -> AgentCache:
        if self._cache is None:
            raise RuntimeError("the agent is not started")
        return self._cache

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the agent is already started")
        cache = AgentCache(
            upstream=self._upstream,
            trust_domain=self.trust_domain,
            clock=self._clock,
            metrics=self.metrics,
            settings=self._settings,
        )
        self._cache = cache
        self._health.set(False)
        callers = CallerRegistry()
        sds = SecretDiscoveryService(cache=cache, caller_of=callers.caller_of, metrics=self.metrics)
        wapi = WorkloadApiService(cache=cache, caller_of=callers.caller_of, metrics=self.metrics)
        health = Health({sds: [self._health], wapi: [self._health]})
        services: list[Any] = [sds, wapi, health]
        if self._policy_upstream is not None:
            self._policy_relay = PolicyRelay(
                upstream=self._policy_upstream, cache=lambda: cache, caller_of=callers.caller_of
            )
            services.append(self._policy_relay)
        prepare_socket_path(self.socket_path)
        server = AttestingServer(services, callers=callers, attestor=self._attestor)
        await server.start(path=str(self.socket_path), backlog=4096)
        os.chmod(self.socket_path, SOCKET_MODE)
        self._server = server
        if self._policy_relay is not None:
            self._policy_relay.start()
        self._tasks = [
            asyncio.ensure_future(self._watch("entries", self._entry_stream, cache.apply_entries)),
            asyncio.ensure_future(self._watch("bundles", self._bundle_stream, cache.apply_bundles)),
            asyncio.ensure_future(cache.run_rotation()),
            asyncio.ensure_future(self._mark_ready(cache)),
        ]
        log.info(
            "agent listening", socket=str(self.socket_path), trust_domain=str(self.trust_domain)
        )

    async def wait_ready(self) -> None:
        """Until the first entries and the own trust bundle are in."""
        await self.cache.wait_ready()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            server.close_connections()
            await server.wait_closed()
        if self._policy_relay is not None:
            await self._policy_relay.stop()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._cache is not None:
            await self._cache.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log.info("agent stopped", socket=str(self.socket_path))

    async def __aenter__(self) -> AgentService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ server sync

    def _entry_stream(self) -> AsyncIterator[EntryUpdate]:
        return self._upstream.watch_entries(since_revision=self.cache.entry_revision)

    def _bundle_stream(self) -> AsyncIterator[BundleUpdate]:
        return self._upstream.watch_bundles()

    async def _mark_ready(self, cache: AgentCache) -> None:
        await cache.wait_ready()
        self._health.set(True)
        log.info("agent ready", entry_revision=cache.entry_revision)

    async def _watch(
        self,
        what: str,
        open_stream: Callable[[], AsyncIterator[Any]],
        apply: Callable[[Any], None],
    ) -> None:
        """Follow one server watch forever; reconnect with backoff and jitter when it breaks."""
        cache = self.cache
        retry = Retry(WATCH_BACKOFF, clock=self._clock, rng=self._rng)
        while True:
            live = False
            try:
                async for update in open_stream():
                    if not live:
                        live = True
                        cache.watches_live += 1
                        if retry.attempt:
                            log.info(
                                "server watch restored", watch=what, after_attempts=retry.attempt
                            )
                        retry.reset()
                    apply(update)
                log.warning("server watch ended", watch=what)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "server watch lost",
                    watch=what,
                    error=str(exc) or type(exc).__name__,
                    seconds_until_svid_expiry=_rounded(cache.seconds_until_expiry()),
                )
            finally:
                if live:
                    cache.watches_live -= 1
            await retry.sleep()


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value)
