"""Connects the server to its audit log (trustd/audit) and to the optional syslog sink."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trustd.audit import AuditEvent, AuditLog
from trustd.audit.mirror import AuditShipper, MirrorStore
from trustd.audit.syslog import SyslogConfig, SyslogForwarder, tls_client_context
from trustd.ca.kms.base import KeyManager
from trustd.clock import Clock
from trustd.config import ServerConfig
from trustd.errors import ConfigError, UnavailableError
from trustd.telemetry.metrics import AuditMetrics


class ServerAudit:
    """The server's AuditSink: its audit log, once that is open.

    The log's key lives in the KMS, which may be down at start. Until ``open``
    succeeds every write and check fails with UnavailableError, so nothing happens
    unrecorded; after that it writes straight to the log (and its syslog forwarder,
    if one is configured, follows the log).
    """

    def __init__(self, *, server_id: str = "", mirror: MirrorStore | None = None) -> None:
        self._log: AuditLog | None = None
        self._forwarder: SyslogForwarder | None = None
        self._shipper: AuditShipper | None = None
        self.reason = "starting"  # why the log is not open yet
        self.server_id = server_id  # names this server's chain among several
        self.mirror = mirror  # with PostgreSQL: where every server's chain is mirrored

    @property
    def is_open(self) -> bool:
        return self._log is not None

    def open(self, log: AuditLog, forwarder: SyslogForwarder | None = None) -> None:
        self._log, self._forwarder = log, forwarder
        if self.mirror is not None and self.server_id:
            self._shipper = AuditShipper(log, self.mirror, self.server_id)
            self._shipper.start()

    @property
    def shipper(self) -> AuditShipper | None:
        return self._shipper

    @property
    def log(self) -> AuditLog:
        if self._log is None:
            raise UnavailableError(
                f"the audit log is not open yet ({self.reason}); nothing is done unrecorded"
            )
        return self._log

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        return self.log.append_many(events)

    def check(self) -> None:
        self.log.check()

    def checkpoint_if_due(self) -> None:
        if self._log is not None:
            self._log.checkpoint_if_due()

    def close(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
        if self._log is not None:
            self._log.close()
        if self._shipper is not None:  # after the close: its final checkpoint is copied too
            self._shipper.stop()


def audit_directory(cfg: ServerConfig) -> Path:
    return Path(cfg.audit.directory) if cfg.audit.directory else cfg.data_path / "audit"


def open_audit_log(
    cfg: ServerConfig,
    key_manager: KeyManager,
    clock: Clock,
    *,
    metrics: AuditMetrics | None = None,
) -> tuple[AuditLog, SyslogForwarder | None]:
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
    return log, forwarder
