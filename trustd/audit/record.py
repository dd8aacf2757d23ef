"""The stored form of an event: one JSON line, hash-chained.

A line holds exactly the SPEC §9 fields, in this order::

    {"id":..,"seq":..,"time":..,"type":..,"actor":{"kind":..,"id":..,"uid":..,"addr":..},
     "action":..,"resource":..,"outcome":..,"reason":..,"details":{..},"prev_hash":..,"hash":..}

Canonical encoding: compact JSON (no spaces), ASCII only (``\\uXXXX`` escapes), top-level
keys in the order above, keys of nested objects sorted by code point. ``hash`` is the
lower-case hex SHA-256 of the canonical encoding of the event *without* ``hash``,
which is byte for byte the stored line with its final ``,"hash":"…"`` member removed.
``prev_hash`` is the previous event's ``hash`` (64 zeros before the first event), so
the lines form a chain that any edit, deletion, insertion or reordering breaks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from trustd.audit.events import Actor, Outcome

GENESIS_HASH = "0" * 64
FIELDS = (
    "id",
    "seq",
    "time",
    "type",
    "actor",
    "action",
    "resource",
    "outcome",
    "reason",
    "details",
    "prev_hash",
    "hash",
)
ACTOR_FIELDS = ("kind", "id", "uid", "addr")
_HASH_MEMBER_LEN = len(',"hash":""}') + 64
_HASH_SUFFIX_RE = re.compile(rb',"hash":"([0-9a-f]{64})"\}\n?$')
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """An event as stored: the input fields plus what the log added."""

    id: str  # random UUID4 text, unique per event
    seq: int  # 1, 2, 3 ... with no gap, across segments
    time: str  # RFC 3339 UTC with microseconds, e.g. "2026-01-01T00:00:00.000000Z"
    type: str  # dotted event type, e.g. "svid.issue"
    actor: Actor  # who did it
    action: str  # the operation
    resource: str  # what it was done to
    outcome: Outcome  # "success" or "failure"
    reason: str  # why it failed or was denied
    details: dict[str, Any]  # extra JSON data, keys sorted
    prev_hash: str  # hash of the event before (GENESIS_HASH for seq 1)
    hash: str  # SHA-256 hex of this event's canonical encoding without "hash"
    raw: str = field(default="", repr=False, compare=False)  # the stored line, no newline

    @property
    def timestamp(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.time)

    @property
    def time_ms(self) -> int:
        """Milliseconds since the Unix epoch (what OCSF ``time`` and CEF ``rt`` carry)."""
        return time_ms(self.time)

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object with the SPEC §9 fields in order."""
        return {
            "id": self.id,
            "seq": self.seq,
            "time": self.time,
            "type": self.type,
            "actor": self.actor.to_json(),
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "reason": self.reason,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def line(self) -> str:
        """The stored JSON line (without the newline)."""
        return self.raw or _ENCODER.encode(self.to_json())


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def time_ms(text: str) -> int:
    when = dt.datetime.fromisoformat(text)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def encode_unhashed(
    *,
    id: str,  # noqa: A002 - the SPEC field name
    seq: int,
    time: str,
    type: str,  # noqa: A002 - the SPEC field name
    actor: dict[str, Any],
    action: str,
    resource: str,
    outcome: str,
    reason: str,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    """The canonical encoding of an event without ``hash`` (details must be normalised)."""
    return _ENCODER.encode(
        {
            "id": id,
            "seq": seq,
            "time": time,
            "type": type,
            "actor": actor,
            "action": action,
            "resource": resource,
            "outcome": outcome,
            "reason": reason,
            "details": details,
            "prev_hash": prev_hash,
        }
    )


def seal(unhashed: str) -> tuple[str, str]:
    """Add the ``hash`` member: returns (line without newline, hash)."""
    digest = hashlib.sha256(unhashed.encode("ascii")).hexdigest()
    return unhashed[:-1] + ',"hash":"' + digest + '"}', digest


def check_line_hash(line: bytes) -> tuple[str, str] | None:
    """(hash stored in the line, hash computed over its content), or None if it has no hash."""
    m = _HASH_SUFFIX_RE.search(line)
    if m is None:
        return None
    body = line[: m.start()] + b"}"
    return m.group(1).decode("ascii"), hashlib.sha256(body).hexdigest()


def record_from_json(data: Any, raw: str = "") -> AuditRecord:
    """Build a record from a parsed line; ValueError when a field is missing or of a wrong type."""
    if not isinstance(data, dict):
        raise ValueError("event is not a JSON object")
    if tuple(data) != FIELDS:
        missing = [f for f in FIELDS if f not in data]
        extra = [f for f in data if f not in FIELDS]
        if missing or extra:
            raise ValueError(f"event fields differ from the spec: missing {missing}, extra {extra}")
        raise ValueError("event fields are not in the canonical order")
    actor = data["actor"]
    if not isinstance(actor, dict) or tuple(actor) != ACTOR_FIELDS:
        raise ValueError("event actor must have exactly kind, id, uid and addr")
    seq = data["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("event seq must be a positive integer")
    for name in ("id", "time", "type", "action", "resource", "outcome", "reason"):
        if not isinstance(data[name], str):
            raise ValueError(f"event {name} must be a string")
    for name in ("prev_hash", "hash"):
        value = data[name]
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError(f"event {name} must be 64 hex characters")
    if not isinstance(data["details"], dict):
        raise ValueError("event details must be an object")
    uid = actor["uid"]
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool)):
        raise ValueError("event actor uid must be an integer or null")
    if data["outcome"] not in ("success", "failure"):
        raise ValueError("event outcome must be success or failure")
    # Built without Actor.__post_init__: stored data is reported as it is, even if odd.
    act = object.__new__(Actor)
    object.__setattr__(act, "kind", actor["kind"])
    object.__setattr__(act, "id", actor["id"])
    object.__setattr__(act, "uid", uid)
    object.__setattr__(act, "addr", actor["addr"])
    return AuditRecord(
        id=data["id"],
        seq=seq,
        time=data["time"],
        type=data["type"],
        actor=act,
        action=data["action"],
        resource=data["resource"],
        outcome=data["outcome"],
        reason=data["reason"],
        details=data["details"],
        prev_hash=data["prev_hash"],
        hash=data["hash"],
        raw=raw,
    )


def parse_line(line: bytes | str) -> AuditRecord:
    """Parse one stored line (with or without its newline); ValueError when it is not an event."""
    text = line.decode("utf-8") if isinstance(line, bytes) else line
    text = text.rstrip("\n")
    return record_from_json(json.loads(text), raw=text)
