"""Shared helpers for the audit tests (tests/ is not a package; pytest puts this dir on sys.path)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trustd.audit import Actor, AuditEvent, AuditLog

REPO_ROOT = Path(__file__).resolve().parents[3]
OpenLog = Callable[..., AuditLog]

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

AGENT = Actor.spiffe("spiffe://trustd.local/agent/node-1", addr="127.0.0.1:40123")
ADMIN = Actor.unix(uid=0, addr="/var/lib/trustd/admin.sock")


def make_event(i: int = 0, **overrides: Any) -> AuditEvent:
    """An svid.issue event whose resource and serial depend on ``i``."""
    fields: dict[str, Any] = {
        "type": "svid.issue",
        "actor": AGENT,
        "action": "issue",
        "resource": f"spiffe://trustd.local/ns/shop/sa/svc-{i}",
        "details": {
            "serial": f"{i:032x}",
            "not_after": START + dt.timedelta(hours=1),
            "issuer": "authority-1",
        },
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit-*.jsonl"))


def all_lines(directory: Path) -> list[bytes]:
    out: list[bytes] = []
    for path in segment_files(directory):
        out += path.read_bytes().splitlines(keepends=True)
    return out
