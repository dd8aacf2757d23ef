"""The one audit API the rest of trustd writes through: ``AuditSink.append_many``.

``event`` builds an event, ``record`` writes events (in one write) and fails when it
cannot; ``record_failure`` is how an action that is failing anyway records why: it tries,
and when the event cannot be written it logs that (the action still fails).
``MemoryAuditSink`` keeps events in a list, for unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from trustd.audit.events import Actor, AuditEvent, AuditSink, Outcome
from trustd.errors import TrustdError

log = structlog.get_logger(__name__)


def event(
    type_: str,
    actor: Actor,
    action: str,
    resource: str = "",
    outcome: Outcome = "success",
    reason: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """An ``AuditEvent`` by position, its reason cut to what an event may hold."""
    return AuditEvent(
        type=type_,
        actor=actor,
        action=action,
        resource=resource,
        outcome=outcome,
        reason=reason[:4000],
        details=details or {},
    )


def record(sink: AuditSink, *events: AuditEvent) -> None:
    """Write the events in one write; raises when they cannot be written."""
    sink.append_many(events)


def record_failure(sink: AuditSink, event: AuditEvent) -> None:
    """Write a failure event; if that fails too, say so in the log and carry on."""
    try:
        sink.append_many([event])
    except TrustdError:
        log.error("audit event could not be written", type=event.type, action=event.action)


@dataclass
class MemoryAuditSink:
    """An AuditSink that keeps its events in a list: for unit tests."""

    events: list[AuditEvent] = field(default_factory=list)  # every event written, in order
    fail_with: Exception | None = None  # raised by every write and check while set

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        if self.fail_with is not None:
            raise self.fail_with
        first = len(self.events) + 1
        self.events.extend(events)
        return list(range(first, first + len(events)))

    def check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with


__all__ = ["AuditSink", "MemoryAuditSink", "event", "record", "record_failure"]
