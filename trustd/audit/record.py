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
from collections.abc import Callable
from dataclasses import dataclass
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
_HASH_SUFFIX_RE = re.compile(rb',"hash":"([0-9a-f]{64})"\}\n?$')
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
_esc: Callable[[str], str] = json.encoder.encode_basestring_ascii  # what JSONEncoder uses


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainHead:
    """The newest event of the chain, as the writer that appended it knows it."""

    seq: int  # the newest event's seq (0 for an empty log)
    hash: str  # its hash (GENESIS_HASH for an empty log)


def _no_default(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON data")


try:  # the C encoder JSONEncoder.encode ends up in, without its Python-level layers
    from _json import make_encoder as _make_encoder

    _c_encode = _make_encoder(
        None, _no_default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def encode_json(obj: Any) -> str:
        """Compact, ASCII-only JSON, exactly as ``_ENCODER.encode`` would produce."""
        if isinstance(obj, str):
            return _esc(obj)
        return "".join(_c_encode(obj, 0))
except ImportError:  # pragma: no cover - CPython always has _json

    def encode_json(obj: Any) -> str:
        return _ENCODER.encode(obj)


class AuditRecord:
    """A stored event: a read-only view over its stored line.

    Not a dataclass on purpose: readers go through millions of these, so fields are
    read from the parsed JSON on access instead of being copied at construction, and
    ``actor`` is built on first use.
    """

    __slots__ = ("_actor", "_d", "raw")

    def __init__(self, data: dict[str, Any] | None, raw: str = "") -> None:
        self._d = data  # the parsed line, fields in FIELDS order; None until parsed (lazy)
        self._actor: Actor | None = None
        self.raw = raw  # the stored line without its newline ("" when built in memory)

    @classmethod
    def lazy(cls, raw: str) -> AuditRecord:
        """A record parsed on first access (a JSON lines export never needs to parse).
        Reading a field of a damaged line raises ValueError."""
        return cls(None, raw)

    @property
    def data(self) -> dict[str, Any]:
        """The event as parsed (do not modify)."""
        if self._d is None:
            self._d = parse_line(self.raw).data
        return self._d

    @property
    def id(self) -> str:  # random UUID4 text, unique per event
        return str(self.data["id"])

    @property
    def seq(self) -> int:  # 1, 2, 3 ... with no gap, across segments
        return int(self.data["seq"])

    @property
    def time(self) -> str:  # RFC 3339 UTC with microseconds, "2026-01-01T00:00:00.000000Z"
        return str(self.data["time"])

    @property
    def type(self) -> str:  # dotted event type, e.g. "svid.issue"
        return str(self.data["type"])

    @property
    def actor(self) -> Actor:  # who did it
        if self._actor is None:
            a = self.data["actor"]
            # Built without Actor.__post_init__: stored data is reported as it is, even if odd.
            act = object.__new__(Actor)
            object.__setattr__(act, "kind", a["kind"])
            object.__setattr__(act, "id", a["id"])
            object.__setattr__(act, "uid", a["uid"])
            object.__setattr__(act, "addr", a["addr"])
            self._actor = act
        return self._actor

    @property
    def action(self) -> str:  # the operation
        return str(self.data["action"])

    @property
    def resource(self) -> str:  # what it was done to
        return str(self.data["resource"])

    @property
    def outcome(self) -> Outcome:  # "success" or "failure"
        return "success" if self.data["outcome"] == "success" else "failure"

    @property
    def reason(self) -> str:  # why it failed or was denied
        return str(self.data["reason"])

    @property
    def details(self) -> dict[str, Any]:  # extra JSON data, keys sorted
        details: dict[str, Any] = self.data["details"]
        return details

    @property
    def prev_hash(self) -> str:  # hash of the event before (GENESIS_HASH for seq 1)
        return str(self.data["prev_hash"])

    @property
    def hash(self) -> str:  # SHA-256 hex of this event's canonical encoding without "hash"
        return str(self.data["hash"])

    @property
    def timestamp(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.time)

    @property
    def time_ms(self) -> int:
        """Milliseconds since the Unix epoch (what OCSF ``time`` and CEF ``rt`` carry)."""
        return time_ms(self.time)

    def details_json(self) -> str:
        """``details`` as canonical JSON, cut from the stored line when there is one."""
        raw = self.raw
        if raw and _tail_ok(raw):
            start = raw.find(',"details":')
            if start > 0:
                return raw[start + 11 : len(raw) - _TAIL_LEN]
        return encode_json(self.data["details"])

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object with the SPEC §9 fields in order."""
        return dict(self.data)

    def line(self) -> str:
        """The stored JSON line (without the newline)."""
        return self.raw or _ENCODER.encode(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuditRecord) and self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data["hash"])

    def __repr__(self) -> str:
        if self._d is None:
            return f"AuditRecord(raw={self.raw[:60]!r})"
        return f"AuditRecord(seq={self._d.get('seq')!r}, type={self._d.get('type')!r})"


# ',"prev_hash":"<64>","hash":"<64>"}' closes every stored line
_TAIL_LEN = len(',"prev_hash":"","hash":""}') + 128


def _tail_ok(raw: str) -> bool:
    return (
        raw[-_TAIL_LEN : -_TAIL_LEN + 14] == ',"prev_hash":"'
        and raw[-76:-66] == '","hash":"'
        and raw[-2:] == '"}'
    )


# A stored event flattened for exports: (id, seq, time, type, actor kind, actor id, actor
# uid, actor addr, action, resource, outcome, reason, details as JSON text, prev_hash, hash).
Row = tuple[str, int, str, str, str, str, int | None, str | None, str, str, str, str, str, str, str]

# A stored line is read with regexes when the strings in its head (everything before
# "details") hold no backslash, i.e. need no unescaping: that is almost every line.
# [^"] scans much faster than a class like [^"\\] (the regex engine has a fast loop for
# one negated character), so backslashes are looked for separately, with str.find.
_STRING = r'"([^"]*)"'  # a JSON string without escapes; its text is its value
_SKIP = r'"[^"]*"'  # the same, not captured


def _who_pattern(string: str, number: str) -> str:
    """Who did what: type, actor and action, the part of a line between time and resource."""
    return (
        r',"type":' + string + r',"actor":\{"kind":' + string + r',"id":' + string
        + r',"uid":(?:null|' + number + r'),"addr":(?:null|' + string + r')\},"action":' + string
    )  # fmt: skip


def _how_pattern(string: str) -> str:
    """How it went: outcome and reason, the part of a line between resource and details."""
    return r',"outcome":' + string + r',"reason":' + string


# who and how repeat from event to event: the head regex captures each as one text, and a
# text is split into its fields once (_who, _how) and remembered.
_WHO_RE = re.compile(_who_pattern(_STRING, r"(\d+)"))
_HOW_RE = re.compile(_how_pattern(_STRING))
_ROW_RE = re.compile(
    r'\{"id":' + _STRING + r',"seq":(\d+),"time":' + _STRING
    + "(" + _who_pattern(_SKIP, r"\d+") + ")"
    + r',"resource":' + _STRING
    + "(" + _how_pattern(_SKIP) + ")"
    + r',"details":'
)  # fmt: skip
# What _tail_ok checks, with the two hashes as groups (match at len(raw) - _TAIL_LEN).
_TAIL_RE = re.compile(r',"prev_hash":"(.{64})","hash":"(.{64})"\}\Z', re.DOTALL)
_match_head = _ROW_RE.match
_match_tail = _TAIL_RE.match
# who and how by their text: repeated events share one tuple of strings, which also makes
# the strings cheap dictionary keys for the renderers (each hash is computed once).
_Who = tuple[str, str, str, int | None, str | None, str]
_WHO_SEEN: dict[str, _Who] = {}
_HOW_SEEN: dict[str, tuple[str, str]] = {}
_SEEN_MAX = 4096


def _who(text: str) -> _Who:
    m = _WHO_RE.fullmatch(text)
    assert m is not None  # _ROW_RE matched the same text
    typ, kind, aid, uid, addr, action = m.groups()
    if len(_WHO_SEEN) >= _SEEN_MAX:
        _WHO_SEEN.clear()
    found = _WHO_SEEN[text] = (typ, kind, aid, None if uid is None else int(uid), addr, action)
    return found


def _how(text: str) -> tuple[str, str]:
    m = _HOW_RE.fullmatch(text)
    assert m is not None  # _ROW_RE matched the same text
    outcome, reason = m.groups()
    if len(_HOW_SEEN) >= _SEEN_MAX:
        _HOW_SEEN.clear()
    found = _HOW_SEEN[text] = (outcome, reason)
    return found


def row_from_line(raw: str) -> Row | None:
    """The row of a stored line whose head strings need no unescaping (almost all of them),
    read with regexes instead of a JSON parse; None otherwise (use ``row_from_record``)."""
    m = _match_head(raw)
    if m is None:
        return None
    details_end = len(raw) - _TAIL_LEN
    tail = _match_tail(raw, details_end)
    head_end = m.end()
    if tail is None or ("\\" in raw and raw.find("\\", 0, head_end) >= 0):
        return None
    i, seq, t, who_text, resource, how_text = m.groups()
    typ, kind, aid, uid, addr, action = _WHO_SEEN.get(who_text) or _who(who_text)
    outcome, reason = _HOW_SEEN.get(how_text) or _how(how_text)
    prev, digest = tail.groups()
    return (
        i,
        int(seq),
        t,
        typ,
        kind,
        aid,
        uid,
        addr,
        action,
        resource,
        outcome,
        reason,
        raw[head_end:details_end],
        prev,
        digest,
    )


def row_from_record(rec: AuditRecord) -> Row:
    d = rec.data
    a = d["actor"]
    uid = a["uid"]
    addr = a["addr"]
    return (
        str(d["id"]),
        int(d["seq"]),
        str(d["time"]),
        str(d["type"]),
        str(a["kind"]),
        str(a["id"]),
        None if uid is None else int(uid),
        None if addr is None else str(addr),
        str(d["action"]),
        str(d["resource"]),
        str(d["outcome"]),
        str(d["reason"]),
        rec.details_json(),
        rec.prev_hash,
        rec.hash,
    )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECONDS: dict[str, int] = {}


def time_ms(text: str) -> int:
    """Milliseconds since the epoch for an RFC 3339 time (fast for the stored form)."""
    if len(text) == 27 and text[19] == "." and text[26] == "Z":
        sec = _SECONDS.get(text[:19])
        if sec is None:
            delta = dt.datetime.fromisoformat(text[:19] + "+00:00") - _EPOCH
            sec = delta.days * 86_400 + delta.seconds
            if len(_SECONDS) > 100_000:
                _SECONDS.clear()
            _SECONDS[text[:19]] = sec
        return sec * 1000 + int(text[20:23])
    delta = dt.datetime.fromisoformat(text) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def encode_unhashed(
    *,
    id: str,
    seq: int,
    time: str,
    type: str,
    actor: dict[str, Any],
    action: str,
    resource: str,
    outcome: str,
    reason: str,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    """The canonical encoding of an event without ``hash`` (details must be normalised).

    Byte for byte what ``JSONEncoder(ensure_ascii=True, separators=(",", ":"))`` makes of
    the object, assembled by hand because this is on every action's path.
    """
    uid = actor["uid"]
    addr = actor["addr"]
    return (
        '{"id":' + _esc(id)
        + ',"seq":' + str(int(seq))
        + ',"time":' + _esc(time)
        + ',"type":' + _esc(type)
        + ',"actor":{"kind":' + _esc(actor["kind"])
        + ',"id":' + _esc(actor["id"])
        + ',"uid":' + ("null" if uid is None else str(int(uid)))
        + ',"addr":' + ("null" if addr is None else _esc(addr))
        + '},"action":' + _esc(action)
        + ',"resource":' + _esc(resource)
        + ',"outcome":' + _esc(outcome)
        + ',"reason":' + _esc(reason)
        + ',"details":' + encode_json(details)
        + ',"prev_hash":' + _esc(prev_hash)
        + "}"
    )  # fmt: skip


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


# A stored line in the canonical shape, read without a JSON parse (bytes patterns). Its
# strings hold printable ASCII other than " and \ (what the canonical encoding leaves
# unescaped: their bytes are their values), numbers are plain JSON ones, and details
# nests at most two levels: a line that parse_line and validate accept, every time.
# [ !#-\[\]-~] is that set of bytes spelled as ranges, which the regex engine scans
# faster than the same set negated ([^"\\\x00-\x1f\x7f-\xff]). Every repeat is
# possessive (*+, ?+): what follows it is never a byte it could take, so giving some back
# could not help a match, and not keeping that option makes matching 20% faster.
_PLAIN = rb"[ !#-\[\]-~]"
_PLAIN_STRING = b'"' + _PLAIN + b'*+"'
_INTEGER = rb"-?+(?:0|[1-9][0-9]{0,17}+)"
_NUMBER = _INTEGER + rb"(?:\.[0-9]{1,17}+)?+(?:[eE][-+]?+[0-9]{1,3}+)?+"
_SCALAR = b"(?:" + _PLAIN_STRING + b"|" + _NUMBER + b"|true|false|null)"


def _members(value: bytes) -> bytes:
    member = _PLAIN_STRING + b":" + value
    return b"(?:" + member + b"(?:," + member + b")*+)?+"


_VALUE = (
    b"(?:" + _SCALAR
    + rb"|\[(?:" + _SCALAR + b"(?:," + _SCALAR + rb")*+)?+\]"
    + rb"|\{" + _members(_SCALAR) + rb"\})"
)  # fmt: skip
_SEALED_RE = re.compile(
    rb'\{"id":' + _PLAIN_STRING + rb',"seq":([1-9][0-9]{0,17}+)'
    + rb',"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.[0-9]{6}Z"'
    + rb',"type":' + _PLAIN_STRING + rb',"actor":\{"kind":' + _PLAIN_STRING
    + rb',"id":' + _PLAIN_STRING + rb',"uid":(?:null|' + _INTEGER + b")"
    + rb',"addr":(?:null|' + _PLAIN_STRING + rb')\},"action":' + _PLAIN_STRING
    + rb',"resource":' + _PLAIN_STRING + rb',"outcome":"(?:success|failure)"'
    + rb',"reason":' + _PLAIN_STRING + rb',"details":\{' + _members(_VALUE) + rb"\}"
    + rb',"prev_hash":"(' + _PLAIN + rb'{64})","hash":"([^"]{64})"\}'
)  # fmt: skip
_match_sealed = _SEALED_RE.fullmatch
_HASHED_TAIL = len(',"hash":""}') + 64  # what seal puts in place of the hashed text's last "}"


class SealedLines:
    """The chain fields of stored lines, read from their bytes when they are canonical.

    ``fields(line)`` (a line without its newline) is ``(seq, prev_hash, hash)`` when the
    line has the canonical shape and its stored hash is the SHA-256 of its bytes without
    the ``hash`` member: exactly what ``parse_line``, ``validate`` and ``check_line_hash``
    would find. None for any other line (escapes, spaces, odd numbers, deep details, a
    wrong hash ...): the full parse has to judge it. One per walk over a log: it
    remembers the last second it found to be a valid time.
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second = b""

    def fields(self, line: bytes) -> tuple[int, str, str] | None:
        m = _match_sealed(line)
        if m is None:
            return None
        seq, second, prev, stored = m.groups()
        if second != self._second:
            try:  # what validate checks of the time: it depends on its seconds only
                time_ms(second.decode("ascii") + ".000000Z")
            except ValueError:
                return None
            self._second = second
        digest = hashlib.sha256(line[:-_HASHED_TAIL] + b"}").hexdigest()
        if digest.encode("ascii") != stored:
            return None
        return int(seq), prev.decode("ascii"), digest


def record_from_json(data: Any, raw: str = "") -> AuditRecord:
    """A record over a parsed line; ValueError when its fields are not the SPEC's.

    Checks the field names only (cheap enough for exports); ``validate`` checks types.
    """
    if not isinstance(data, dict) or tuple(data) != FIELDS:
        raise ValueError(_field_problem(data))
    actor = data["actor"]
    if not isinstance(actor, dict) or tuple(actor) != ACTOR_FIELDS:
        raise ValueError("event actor must have exactly kind, id, uid and addr, in that order")
    return AuditRecord(data, raw)


def _field_problem(data: Any) -> str:
    if not isinstance(data, dict):
        return "event is not a JSON object"
    missing = [f for f in FIELDS if f not in data]
    extra = [f for f in data if f not in FIELDS]
    if missing or extra:
        return f"event fields differ from the spec: missing {missing}, extra {extra}"
    return "event fields are not in the canonical order"


def validate(rec: AuditRecord) -> None:
    """ValueError when a field of a stored event has the wrong type or value."""
    data = rec.data
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
    actor = data["actor"]
    for name in ("kind", "id"):
        if not isinstance(actor[name], str):
            raise ValueError(f"event actor {name} must be a string")
    uid = actor["uid"]
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool)):
        raise ValueError("event actor uid must be an integer or null")
    if actor["addr"] is not None and not isinstance(actor["addr"], str):
        raise ValueError("event actor addr must be a string or null")
    if data["outcome"] not in ("success", "failure"):
        raise ValueError("event outcome must be success or failure")
    try:
        time_ms(data["time"])
    except ValueError as exc:
        raise ValueError("event time is not RFC 3339") from exc


_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads minus wrappers


def parse_json_line(text: str) -> Any:
    """Parse one line of JSON (no surrounding whitespace, no newline) quickly."""
    try:
        obj, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError("not JSON") from exc
    if end != len(text):
        raise ValueError("trailing data after the JSON value")
    return obj


def parse_line(line: bytes | str) -> AuditRecord:
    """Parse one stored line (with or without its newline); ValueError when it is not an event."""
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    if text.endswith("\n"):
        text = text[:-1]
    return record_from_json(parse_json_line(text), raw=text)
