"""How the server records security events: an ``Auditor`` that fails loudly.

The action waits for the event. When the event cannot be written, the action
fails (and is undone where that is possible), so nothing happens unrecorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from trustd.audit.events import Actor

__all__ = ["SYSTEM", "Actor", "Auditor", "MemoryAuditor"]


SYSTEM = Actor.system()


class Auditor(Protocol):
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
        """Append one event; raise UnavailableError when it cannot be written."""
        ...

    def check(self) -> None:
        """Raise UnavailableError when events cannot be written right now."""
        ...


@dataclass
class MemoryAuditor:
    """Keeps events in a list: for unit tests."""

    events: list[dict[str, Any]] = field(default_factory=list)
    fail_with: Exception | None = None

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
        if self.fail_with is not None:
            raise self.fail_with
        self.events.append(
            {
                "type": type,
                "actor": actor,
                "action": action,
                "resource": resource,
                "outcome": outcome,
                "reason": reason,
                "details": details or {},
            }
        )
        return len(self.events)

    def check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with
