"""Every Prometheus metric of the server, declared in one place.

Names carry the ``trustd_`` prefix and base units; counters end in ``_total``;
expiries are ``*_expiry_timestamp_seconds``. Label sets are fixed and small.

**One registry per process.** A process (``trustd server``, ``trustd agent``,
``trustd up``, ``trustd proxy``) makes one :class:`CollectorRegistry` and hands
it to every metrics group it runs: :class:`ServerMetrics` carries the audit
log's (:class:`AuditMetrics`) and the key managers' (:class:`VaultMetrics`,
:class:`Pkcs11Metrics`), and ``trustd up`` gives the agent the server's
registry. Nothing registers on prometheus_client's global registry, so two
servers in one test process stay apart and ``/metrics``
(:mod:`trustd.telemetry.http`) serves everything the process counts.
A component made without metrics (a unit test, ``audit verify --offline``)
counts into a private registry that nobody serves.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AuditMetrics:
    """The audit log and its syslog forwarder."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.events = Counter(
            "trustd_audit_events_total",
            "Audit events written, by outcome of the recorded action.",
            ["outcome"],
            registry=r,
        )
        self.write_failures = Counter(
            "trustd_audit_write_failures_total",
            "Audit events that could not be written (the recorded action failed), by errno name.",
            ["reason"],
            registry=r,
        )
        self.last_seq = Gauge(
            "trustd_audit_last_seq", "Seq of the newest audit event written.", registry=r
        )
        self.checkpoints = Counter(
            "trustd_audit_checkpoints_total", "Signed audit checkpoints written.", registry=r
        )
        self.checkpoint_failures = Counter(
            "trustd_audit_checkpoint_failures_total",
            "Audit checkpoints that could not be signed or written.",
            registry=r,
        )
        self.last_checkpoint = Gauge(
            "trustd_audit_last_checkpoint_timestamp_seconds",
            "When the newest signed audit checkpoint was written (Unix time).",
            registry=r,
        )
        self.segments_deleted = Counter(
            "trustd_audit_segments_deleted_total",
            "Audit segments deleted by retention.",
            registry=r,
        )
        self.syslog_forwarded = Counter(
            "trustd_audit_syslog_forwarded_total",
            "Audit events sent to the syslog receiver.",
            registry=r,
        )
        self.syslog_confirmed_seq = Gauge(
            "trustd_audit_syslog_confirmed_seq",
            "Newest audit seq the syslog receiver is known to have (the persisted cursor).",
            registry=r,
        )
        self.syslog_connected = Gauge(
            "trustd_audit_syslog_connected",
            "1 while the syslog forwarder is connected, else 0.",
            registry=r,
        )
        self.syslog_reconnects = Counter(
            "trustd_audit_syslog_reconnects_total",
            "Syslog connections lost or refused.",
            registry=r,
        )


class VaultMetrics:
    """Requests to OpenBao/Vault (transit key manager, PKI upstream). Outcomes: ok,
    unavailable, timeout, denied, not_found, invalid, config."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "trustd_vault_requests_total",
            "Requests trustd sent to OpenBao/Vault, by secrets engine, operation and outcome.",
            ["engine", "operation", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "trustd_vault_request_duration_seconds",
            "Time from sending a request to OpenBao/Vault to its answer (or failure).",
            ["engine", "operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


class Pkcs11Metrics:
    """Operations on the PKCS#11 token."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.operations = Counter(
            "trustd_pkcs11_operations_total",
            "Operations trustd asked of its PKCS#11 token, by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.operation_seconds = Histogram(
            "trustd_pkcs11_operation_duration_seconds",
            "Time a PKCS#11 operation took, lock wait included.",
            ["operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )


class FederationMetrics:
    """Federation with other trust domains: bundle refreshes from their endpoints."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.refresh_failures = Counter(
            "trustd_federation_refresh_failures_total",
            "Foreign bundle refreshes that failed or were refused, by trust domain and reason "
            "(unreachable, wrong_endpoint_id, http_status, malformed, empty, not_ca, "
            "wrong_trust_domain, sequence_regressed); the last good bundle stays in force.",
            ["trust_domain", "reason"],
            registry=r,
        )
        self.bundle_updates = Counter(
            "trustd_federation_bundle_updates_total",
            "Foreign bundles replaced by a newer good one from their endpoint, by trust domain.",
            ["trust_domain"],
            registry=r,
        )
        self.bundle_sequence = Gauge(
            "trustd_federation_bundle_sequence",
            "spiffe_sequence of the foreign bundle in force, by trust domain.",
            ["trust_domain"],
            registry=r,
        )
        self.last_refresh = Gauge(
            "trustd_federation_last_refresh_timestamp_seconds",
            "When each foreign trust domain's endpoint last served a good bundle, Unix seconds.",
            ["trust_domain"],
            registry=r,
        )


class ServerMetrics:
    """One instance per server, on the process's registry (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.audit = AuditMetrics(r)
        self.vault = VaultMetrics(r)
        self.pkcs11 = Pkcs11Metrics(r)
        self.federation = FederationMetrics(r)
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
