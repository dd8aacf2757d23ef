"""A ServerCore and its Registry over real in-memory parts (SQLite, the memory key
manager, a fake clock, an audit sink that keeps its events), for unit tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from trustd.audit import MemoryAuditSink
from trustd.ca.authority import AuthorityManager, RotationSchedule
from trustd.ca.issuer import X509Issuer
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.registry import Registry
from trustd.server.core import ServerCore
from trustd.spiffeid import TrustDomain
from trustd.store.sqlite import SqliteStore
from trustd.telemetry.metrics import ServerMetrics

START = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@dataclass
class Rig:
    core: ServerCore
    registry: Registry
    store: SqliteStore
    audit: MemoryAuditSink
    metrics: ServerMetrics
    clock: FakeClock
    km: MemoryKeyManager


def make_rig(*, km: Any = None, activate: bool = True) -> Rig:
    real_km = MemoryKeyManager()
    clock = FakeClock(START)
    store = SqliteStore(":memory:")
    authorities = AuthorityManager(
        store=store,
        key_manager=real_km,
        trust_domain=TrustDomain.parse("trustd.local"),
        schedule=RotationSchedule(ca_ttl=dt.timedelta(hours=24)),
        clock=clock,
    )
    if activate:
        authorities.ensure_active()
    issuer = X509Issuer(
        key_manager=km(real_km) if km else real_km,
        default_ttl=dt.timedelta(hours=1),
        max_ttl=dt.timedelta(hours=24),
    )
    auditor = MemoryAuditSink()
    metrics = ServerMetrics()
    core = ServerCore(
        trust_domain=TrustDomain.parse("trustd.local"),
        store=store,
        key_manager=real_km,
        authorities=authorities,
        issuer=issuer,
        audit=auditor,
        clock=clock,
        metrics=metrics,
    )
    registry = Registry(
        store=store,
        audit=auditor,
        clock=clock,
        issuance=core,
        max_ttl=issuer.max_ttl,
        notify=core.hub.notify,
    )
    return Rig(
        core=core,
        registry=registry,
        store=store,
        audit=auditor,
        metrics=metrics,
        clock=clock,
        km=real_km,
    )
