"""Connects the server to its audit log (trustd/audit) and to the optional syslog sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustd.audit import AuditEvent, AuditLog
from trustd.ca.kms.base import KeyManager
from trustd.clock import Clock
from trustd.config import ServerConfig
from trustd.server.audit_hook import Actor


class AuditLogAuditor:
    """The server's Auditor over an AuditLog: every record is appended before the call returns."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

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

    def check(self) -> None:
        self.log.check()

    def checkpoint_if_due(self) -> None:
        self.log.checkpoint_if_due()

    def close(self) -> None:
        self.log.close()


def audit_directory(cfg: ServerConfig) -> Path:
    return Path(cfg.audit.directory) if cfg.audit.directory else cfg.data_path / "audit"


def open_audit_log(cfg: ServerConfig, key_manager: KeyManager, clock: Clock) -> AuditLogAuditor:
    log = AuditLog(
        audit_directory(cfg),
        key_manager=key_manager,
        clock=clock,
        segment_max_bytes=cfg.audit.segment_max_bytes,
        rotate_daily=cfg.audit.rotate_daily,
        retention=cfg.audit.retention,
        checkpoint_interval=cfg.audit.checkpoint_interval,
    )
    return AuditLogAuditor(log)
