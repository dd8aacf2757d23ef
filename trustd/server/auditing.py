"""Connects the server to its audit log (trustd/audit) and to the optional syslog sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustd.audit import AuditEvent, AuditLog
from trustd.audit.syslog import SyslogConfig, SyslogForwarder, tls_client_context
from trustd.ca.kms.base import KeyManager
from trustd.clock import Clock
from trustd.config import ServerConfig
from trustd.errors import ConfigError, UnavailableError
from trustd.server.audit_hook import Actor
from trustd.telemetry.metrics import AuditMetrics


class AuditLogAuditor:
    """The server's Auditor over an AuditLog: every record is appended before the call returns."""

    def __init__(self, log: AuditLog, forwarder: SyslogForwarder | None = None) -> None:
        self.log = log
        self.forwarder = forwarder

    def record(
        self,
        *,
        type: str,
        actor: Actor,
        action: str,
        resource: str,
        outcome: str,
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> int:
        return self.log.append(
            AuditEvent(
                type=type,
                actor=actor,
                action=action,
                resource=resource,
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                details=details or {},
            )
        )

    def record_many(self, events: list[dict[str, Any]]) -> list[int]:
        """Several events in one write (batch issuance): all recorded, or none."""
        return self.log.append_many(
            [
                AuditEvent(
                    type=e["type"],
                    actor=e["actor"],
                    action=e["action"],
                    resource=e["resource"],
                    outcome=e.get("outcome", "success"),
                    reason=e.get("reason", ""),
                    details=e.get("details") or {},
                )
                for e in events
            ]
        )

    def check(self) -> None:
        self.log.check()

    def checkpoint_if_due(self) -> None:
        self.log.checkpoint_if_due()

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        self.log.close()


class DeferredAuditor:
    """Stands in until the audit log is open (its key lives in the KMS, which may be down).

    Until then every record and check fails with UnavailableError, so nothing
    happens unrecorded; once ``open`` succeeds it forwards to the real log.
    """

    def __init__(self) -> None:
        self.target: AuditLogAuditor | None = None
        self.reason = "starting"

    def _need(self) -> AuditLogAuditor:
        if self.target is None:
            raise UnavailableError(
                f"the audit log is not open yet ({self.reason}); nothing is done unrecorded"
            )
        return self.target

    @property
    def log(self) -> AuditLog:
        return self._need().log

    def record(
        self,
        *,
        type: str,
        actor: Actor,
        action: str,
        resource: str,
        outcome: str,
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> int:
        return self._need().record(
            type=type,
            actor=actor,
            action=action,
            resource=resource,
            outcome=outcome,
            reason=reason,
            details=details,
        )

    def record_many(self, events: list[dict[str, Any]]) -> list[int]:
        return self._need().record_many(events)

    def check(self) -> None:
        self._need().check()

    def checkpoint_if_due(self) -> None:
        if self.target is not None:
            self.target.checkpoint_if_due()

    def close(self) -> None:
        if self.target is not None:
            self.target.close()


def audit_directory(cfg: ServerConfig) -> Path:
    return Path(cfg.audit.directory) if cfg.audit.directory else cfg.data_path / "audit"


def open_audit_log(
    cfg: ServerConfig,
    key_manager: KeyManager,
    clock: Clock,
    *,
    metrics: AuditMetrics | None = None,
) -> AuditLogAuditor:
    log = AuditLog(
        audit_directory(cfg),
        key_manager=key_manager,
        clock=clock,
        segment_max_bytes=cfg.audit.segment_max_bytes,
        rotate_daily=cfg.audit.rotate_daily,
        retention=cfg.audit.retention,
        checkpoint_interval=cfg.audit.checkpoint_interval,
        inline_maintenance=False,  # the server's timer checkpoints off the event loop
        metrics=metrics,
    )
    forwarder = None
    sink = cfg.audit.syslog
    if sink is not None:
        host, _, port = sink.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"audit.syslog.address {sink.address!r}: use host:port")
        tls = None
        if sink.tls:
            if not sink.ca_file:
                raise ConfigError("audit.syslog.caFile is required with tls: true")
            tls = tls_client_context(ca_file=Path(sink.ca_file))
        forwarder = SyslogForwarder(
            log, SyslogConfig(host=host, port=int(port), tls=tls, app_name=sink.app_name)
        )
        forwarder.start()
    return AuditLogAuditor(log, forwarder)
