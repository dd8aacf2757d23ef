"""Prometheus metrics of ``trustd proxy`` (one registry per proxy instance).

Labels: ``listener`` is ``inbound:<port>`` or ``outbound:<host>:<port>``;
``mode`` is ``tls`` or ``plaintext``; ``reason`` is a fixed code (see
:data:`DENIAL_REASONS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from trustd.dataplane.verify import REJECT_CODES

DENIAL_REASONS = (
    "plaintext_in_strict",
    "silent_in_strict",
    "sniff_stalled",
    "sniff_overload",
    "handshake_failed",
    "resumed_session",
    "unauthorized",
    "server_identity_mismatch",
    "no_identity",
    *REJECT_CODES,
)


class _Refresh:
    """Registered first: brings counters kept elsewhere (the native core) up to date
    before the registry collects the metrics."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        for hook in list(self.hooks):
            hook()
        return iter(())


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._refresh = _Refresh()
        r.register(self._refresh)
        self.core = Gauge(
            "trustd_proxy_core",
            "The data-plane core this proxy runs: 1 for the core label in use (native or python).",
            ["core"],
            registry=r,
        )
        self.connections = Counter(
            "trustd_proxy_connections_total",
            "Connections accepted and forwarded, by listener and mode (tls or plaintext).",
            ["listener", "mode"],
            registry=r,
        )
        self.active = Gauge(
            "trustd_proxy_active_connections",
            "Connections open now, by listener and mode; inbound plaintext must reach 0 "
            "before a rollout makes the server STRICT.",
            ["listener", "mode"],
            registry=r,
        )
        self.denials = Counter(
            "trustd_proxy_denials_total",
            "Connections refused, by listener and reason.",
            ["listener", "reason"],
            registry=r,
        )
        self.bytes = Counter(
            "trustd_proxy_bytes_total",
            "Bytes forwarded, by listener and direction (to_app or from_app).",
            ["listener", "direction"],
            registry=r,
        )
        self.sniffing = Gauge(
            "trustd_proxy_sniffing_connections",
            "Connections being sniffed or in the TLS handshake now (capped by sniff.maxPending).",
            registry=r,
        )
        self.upstream_failures = Counter(
            "trustd_proxy_upstream_failures_total",
            "Connections dropped because the app (inbound) or the destination (outbound) "
            "could not be reached.",
            ["listener"],
            registry=r,
        )
        self.policy_version = Gauge(
            "trustd_proxy_policy_version",
            "The policy version applied to new connections.",
            registry=r,
        )
        self.svid_expiry = Gauge(
            "trustd_proxy_svid_expiry_timestamp_seconds",
            "NotAfter of the SVID used for new connections, Unix seconds.",
            registry=r,
        )
        self.tls_contexts = Counter(
            "trustd_proxy_tls_contexts_built_total",
            "SSL contexts built (one server and one client context per SVID or bundle change).",
            registry=r,
        )

    def add_refresh(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before every collect (a scrape, :meth:`value`)."""
        self._refresh.hooks.append(hook)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent), for status reports and tests."""
        v = self.registry.get_sample_value(name, labels or {})
        return float(v) if v is not None else 0.0
