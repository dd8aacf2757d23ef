"""Fixtures for the audit log tests: a fake clock, an in-memory key manager, a log factory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import START, OpenLog

from trustd.audit import AuditLog
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def km() -> MemoryKeyManager:
    return MemoryKeyManager()


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def open_log(audit_dir: Path, km: MemoryKeyManager, clock: FakeClock) -> Iterator[OpenLog]:
    """Open an AuditLog on ``audit_dir`` (keyword overrides allowed); closed at teardown."""
    opened: list[AuditLog] = []

    def factory(**kw: Any) -> AuditLog:
        kw.setdefault("key_manager", km)
        kw.setdefault("clock", clock)
        log = AuditLog(kw.pop("directory", audit_dir), **kw)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        with contextlib.suppress(Exception):
            log.close()
