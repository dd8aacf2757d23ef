"""Running ``trustd proxy --config F``: build the seams from the config and serve.

The lead's CLI calls :func:`run` (or :func:`serve` from an existing loop). The
policy source of ``policy: {kind: agent}`` is the agent's policy stream, which
the caller passes in as ``policy=``; the file and none kinds are built here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path

import structlog

from trustd.dataplane.config import (
    FilesIdentityConfig,
    FilesPolicyConfig,
    NoPolicyConfig,
    ProxyConfig,
    SdsIdentityConfig,
    load_config,
)
from trustd.dataplane.errors import ProxyConfigError
from trustd.dataplane.identity import FileIdentitySource, IdentitySource
from trustd.dataplane.policysource import FilePolicySource, PolicySource, StaticPolicySource
from trustd.dataplane.proxy import DenialEvent, Proxy, default_proxy_id
from trustd.dataplane.sds import SdsIdentitySource

log = structlog.get_logger(__name__)


def build_identity_source(config: ProxyConfig, *, proxy_id: str) -> IdentitySource:
    ident = config.identity
    if isinstance(ident, FilesIdentityConfig):
        return FileIdentitySource(
            cert_file=ident.cert_file,
            key_file=ident.key_file,
            bundle_file=ident.bundle_file,
            poll_interval=ident.poll_interval.total_seconds(),
        )
    assert isinstance(ident, SdsIdentityConfig)
    return SdsIdentitySource(
        socket_path=config.agent_socket,
        node_id=proxy_id,
        svid_name=ident.svid_name,
        bundle_name=ident.bundle_name,
    )


def build_policy_source(config: ProxyConfig, *, proxy_id: str) -> PolicySource:
    pol = config.policy
    if isinstance(pol, FilesPolicyConfig):
        return FilePolicySource(pol.paths, poll_interval=pol.poll_interval.total_seconds())
    if isinstance(pol, NoPolicyConfig):
        return StaticPolicySource()
    from trustd.dataplane.agent_policy import AgentPolicySource

    return AgentPolicySource(socket_path=str(config.agent_socket), proxy_id=proxy_id)


async def serve(
    config: ProxyConfig,
    *,
    identity: IdentitySource | None = None,
    policy: PolicySource | None = None,
    on_denial: Callable[[DenialEvent], None] | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[Proxy], None] | None = None,
) -> None:
    """Run one proxy until ``stop`` is set (or the task is cancelled), then drain."""
    proxy_id = config.proxy_id or default_proxy_id()
    identity = identity or build_identity_source(config, proxy_id=proxy_id)
    policy = policy or build_policy_source(config, proxy_id=proxy_id)
    starter = getattr(policy, "start", None)
    if starter is not None:
        await starter()
    if on_denial is None:
        on_denial = getattr(policy, "deny", None)  # the agent relays denials to the audit log
    proxy = Proxy(
        config=config, identity=identity, policy=policy, proxy_id=proxy_id, on_denial=on_denial
    )
    health = None
    try:
        await proxy.start()
        if config.metrics_address:
            from trustd.telemetry.http import HealthServer  # the lead's /metrics server

            health = HealthServer(
                registry=proxy.metrics.registry, readiness=lambda: (True, "serving")
            )
            try:
                await health.start(config.metrics_address)
            except OSError as exc:
                raise ProxyConfigError(
                    f"cannot listen on metricsAddress {config.metrics_address}: "
                    f"{exc.strerror or exc}"
                ) from None
        if ready is not None:
            ready(proxy)
        await (stop or asyncio.Event()).wait()
    finally:
        await proxy.stop()
        if health is not None:
            await health.stop()
        await identity.close()
        closer = getattr(policy, "close", None)
        if closer is not None:
            await closer()


def run(config_path: str | Path) -> int:
    """``trustd proxy --config F``: serve until SIGINT or SIGTERM; 0 on a clean stop."""
    config = load_config(config_path)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop)

    asyncio.run(main())
    return 0
