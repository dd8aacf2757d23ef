"""Audit metrics (to move to trustd/telemetry/ with the others). Fixed label sets, base units."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "trustd_audit_events_total",
    "Audit events written, by outcome of the recorded action.",
    ["outcome"],
)
WRITE_FAILURES = Counter(
    "trustd_audit_write_failures_total",
    "Audit events that could not be written (the recorded action failed), by errno name.",
    ["reason"],
)
LAST_SEQ = Gauge("trustd_audit_last_seq", "Seq of the newest audit event written.")
CHECKPOINTS = Counter("trustd_audit_checkpoints_total", "Signed audit checkpoints written.")
CHECKPOINT_FAILURES = Counter(
    "trustd_audit_checkpoint_failures_total",
    "Audit checkpoints that could not be signed or written.",
)
LAST_CHECKPOINT = Gauge(
    "trustd_audit_last_checkpoint_timestamp_seconds",
    "When the newest signed audit checkpoint was written (Unix time).",
)
SEGMENTS_DELETED = Counter(
    "trustd_audit_segments_deleted_total", "Audit segments deleted by retention."
)
SYSLOG_FORWARDED = Counter(
    "trustd_audit_syslog_forwarded_total", "Audit events sent to the syslog receiver."
)
SYSLOG_CONFIRMED_SEQ = Gauge(
    "trustd_audit_syslog_confirmed_seq",
    "Newest audit seq the syslog receiver is known to have (the persisted cursor).",
)
SYSLOG_CONNECTED = Gauge(
    "trustd_audit_syslog_connected", "1 while the syslog forwarder is connected, else 0."
)
SYSLOG_RECONNECTS = Counter(
    "trustd_audit_syslog_reconnects_total", "Syslog connections lost or refused."
)
