"""Every Prometheus metric of the server, declared in one place.

Names carry the ``trustd_`` prefix and base units; counters end in ``_total``;
expiries are ``*_expiry_timestamp_seconds``. Label sets are fixed and small.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    """One instance per server; a private registry keeps two servers in one process apart."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.svids_issued = Counter(
            "trustd_svids_issued_total",
            "X.509-SVIDs issued, by who asked for them (agent, admin mint).",
            ["source"],
            registry=r,
        )
        self.svids_denied = Counter(
            "trustd_svids_denied_total",
            "SVID requests refused, by reason (invalid_csr, invalid_ttl, not_entitled, unavailable).",
            ["reason"],
            registry=r,
        )
        self.signing_seconds = Histogram(
            "trustd_signing_duration_seconds",
            "Time to sign one batch of certificates, CSR checks included.",
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
            ),
            registry=r,
        )
        self.ca_expiry = Gauge(
            "trustd_ca_expiry_timestamp_seconds",
            "NotAfter of the CA in each slot (old: the earliest), Unix seconds.",
            ["slot"],
            registry=r,
        )
        self.ca_rotations = Counter(
            "trustd_ca_rotations_total",
            "CA slot changes, by event (prepared, activated, tainted, revoked, pruned).",
            ["event"],
            registry=r,
        )
        self.admin_requests = Counter(
            "trustd_admin_requests_total",
            "Admin API calls, by method and gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.entries = Gauge(
            "trustd_registration_entries", "Registration entries in the store.", registry=r
        )
        self.ready = Gauge(
            "trustd_ready",
            "1 when the server can issue (store, key manager, active CA).",
            registry=r,
        )


def default_registry() -> CollectorRegistry:
    return REGISTRY
