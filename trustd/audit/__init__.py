"""Tamper-evident audit log (SPEC §9): hash-chained JSON lines in segments, signed
checkpoints, verification, compliance exports (JSON lines, CSV, OCSF, CEF), tail and
RFC 5424 syslog forwarding.

The public surface::

    from trustd.audit import Actor, AuditEvent, AuditLog, AuditWriteError

    audit = AuditLog(data_dir / "audit", key_manager=km, clock=SystemClock())
    [seq] = audit.append_many([AuditEvent(type="svid.issue", actor=Actor.spiffe(agent_id),
                                          action="issue", resource=str(spiffe_id),
                                          details={"serial": "1f...", "not_after": not_after})])

Everything else writes through the ``AuditSink`` protocol (``append_many`` and
``check``), which ``AuditLog`` implements; ``MemoryAuditSink`` is one for tests.
"""

from trustd.audit.checkpoint import Checkpoint
from trustd.audit.errors import (
    AuditCorruptError,
    AuditEventError,
    AuditSecretError,
    AuditWriteError,
)
from trustd.audit.events import (
    ACTOR_KINDS,
    ADMIN_ENTRY_CREATE,
    ADMIN_ENTRY_DELETE,
    ADMIN_TOKEN_CREATE,
    AGENT_EVICT,
    AGENT_JOIN,
    AGENT_RENEW,
    AUDIT_EXPORT,
    AUDIT_TORN_TAIL,
    AUTHORITY_ACTIVATE,
    AUTHORITY_PREPARE,
    AUTHORITY_REVOKE,
    AUTHORITY_TAINT,
    POLICY_APPLY,
    PROXY_CONNECTION_DENY,
    ROLLOUT_STEP,
    SVID_DENY,
    SVID_ISSUE,
    Actor,
    ActorKind,
    AuditEvent,
    AuditSink,
    Outcome,
    check_no_secrets,
    hmac_token,
)
from trustd.audit.export import (
    CSV_COLUMNS,
    ExportFormat,
    ProgressCallback,
    export_events,
    to_cef,
    to_ocsf,
    write_cef,
    write_csv,
    write_jsonl,
    write_ocsf,
)
from trustd.audit.log import AuditLog
from trustd.audit.reader import EventFilter, iter_records, parse_time, tail
from trustd.audit.record import GENESIS_HASH, AuditRecord, ChainHead
from trustd.audit.sink import MemoryAuditSink, record_failure
from trustd.audit.verify import VerifyReport, verify

__all__ = [
    "ACTOR_KINDS",
    "ADMIN_ENTRY_CREATE",
    "ADMIN_ENTRY_DELETE",
    "ADMIN_TOKEN_CREATE",
    "AGENT_EVICT",
    "AGENT_JOIN",
    "AGENT_RENEW",
    "AUDIT_EXPORT",
    "AUDIT_TORN_TAIL",
    "AUTHORITY_ACTIVATE",
    "AUTHORITY_PREPARE",
    "AUTHORITY_REVOKE",
    "AUTHORITY_TAINT",
    "CSV_COLUMNS",
    "GENESIS_HASH",
    "POLICY_APPLY",
    "PROXY_CONNECTION_DENY",
    "ROLLOUT_STEP",
    "SVID_DENY",
    "SVID_ISSUE",
    "Actor",
    "ActorKind",
    "AuditCorruptError",
    "AuditEvent",
    "AuditEventError",
    "AuditLog",
    "AuditRecord",
    "AuditSecretError",
    "AuditSink",
    "AuditWriteError",
    "ChainHead",
    "Checkpoint",
    "EventFilter",
    "ExportFormat",
    "MemoryAuditSink",
    "Outcome",
    "ProgressCallback",
    "VerifyReport",
    "check_no_secrets",
    "export_events",
    "hmac_token",
    "iter_records",
    "parse_time",
    "record_failure",
    "tail",
    "to_cef",
    "to_ocsf",
    "verify",
    "write_cef",
    "write_csv",
    "write_jsonl",
    "write_ocsf",
]
