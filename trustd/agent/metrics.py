"""Node agent metrics (trustd_agent_*), declared in one place.

Each ``AgentMetrics`` registers in the registry it is given, so two agents in
one process (tests) do not collide; ``trustd up`` passes the process registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        self.sds_streams = Gauge(
            "trustd_agent_sds_streams",
            "SDS StreamSecrets streams open on the agent socket",
            registry=reg,
        )
        self.workloadapi_streams = Gauge(
            "trustd_agent_workloadapi_streams",
            "Workload API FetchX509SVID/FetchX509Bundles streams open on the agent socket",
            registry=reg,
        )
        self.pushes = Counter(
            "trustd_agent_pushes_total",
            "Responses sent on open streams (first answers, rotations, bundle changes)",
            ["api"],
            registry=reg,
        )
        self.sds_nacks = Counter(
            "trustd_agent_sds_nacks_total",
            "SDS responses a client rejected (error_detail or rolled-back version)",
            registry=reg,
        )
        self.sds_unknown_resources = Counter(
            "trustd_agent_sds_unknown_resources_total",
            "SDS resource names not served, by reason (once per stream or fetch and name)",
            ["reason"],
            registry=reg,
        )
        self.svid_renewals = Counter(
            "trustd_agent_svid_signings_total",
            "SVID signing attempts by the agent, by outcome",
            ["outcome"],
            registry=reg,
        )
        self.svids = Gauge(
            "trustd_agent_svids",
            "X.509-SVIDs held in agent memory",
            registry=reg,
        )
        self.earliest_svid_expiry = Gauge(
            "trustd_agent_svid_earliest_expiry_timestamp_seconds",
            "NotAfter of the SVID that expires first (Unix time); NaN when there is none",
            registry=reg,
        )
        self.earliest_svid_expiry.set(math.nan)
        self.server_sync_age = Gauge(
            "trustd_agent_server_sync_age_seconds",
            "Seconds since the agent last heard from its server (0 while the watch is live)",
            registry=reg,
        )
        self.seconds_until_svid_expiry = Gauge(
            "trustd_agent_svid_seconds_until_expiry",
            "Seconds until the earliest SVID expires; what is left if the server stays down",
            registry=reg,
        )

    def bind_sync_age(self, fn: Callable[[], float]) -> None:
        self.server_sync_age.set_function(fn)

    def bind_seconds_until_expiry(self, fn: Callable[[], float]) -> None:
        self.seconds_until_svid_expiry.set_function(fn)
