"""Compliance exports: JSON lines, CSV, OCSF and CEF.

Every writer takes an iterable of ``AuditRecord`` (``AuditLog.iter_events``), a
text stream and an optional ``progress(count)`` callback called every
``progress_every`` events and once at the end; it returns the number written.
The CLI shows the progress bar (``AuditLog.count`` gives its total).
``AuditLog.export`` feeds the same renderers from the files directly
(``iter_rows``), skipping the per-event objects, for > 100k events/s.

OCSF (schema 1.3): SVID issuance and denial, agent join and renewal are
Authentication (class 3002); connections denied by a proxy are Network Activity
(4001, activity Refuse); everything else, the admin actions, is API Activity
(6003) with Create/Read/Update/Delete taken from the verb of the event type.
``type_uid = class_uid * 100 + activity_id``, ``time`` in ms since the epoch;
the chain fields (seq, hash, prev_hash) travel in ``metadata`` and ``unmapped``.

CEF: ``CEF:0|trustd|trustd|VERSION|<type>|<type> <outcome>|<severity>|<extension>``,
with ``\\`` and ``|`` escaped in the header, ``\\``, ``=`` and newlines (as ``\\n``,
``\\r``) in extension values, and ``rt`` in ms.

How the renderers are fast: in an audit log the type, outcome, reason, actor and
action of an event repeat (one agent issues thousands of SVIDs), so a renderer turns
each distinct combination of them into constant text once, already encoded, escaped
and quoted (the caches are per renderer: one per export). An event then costs a cache
lookup, its time in ms (the seconds are mostly those of the event before), a check
that its own values (id, resource, details, hashes) need no escaping, and one f-string.
Lines are written joined, about ``_BATCH_BYTES`` at a time. ``test_audit_export.py`` holds plain
reference renderers that every writer must match byte for byte.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TextIO

import structlog

from trustd import __version__
from trustd.audit.errors import AuditEventError
from trustd.audit.record import AuditRecord, Row, row_from_record, time_ms

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[int], None]


class ExportFormat(enum.StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    OCSF = "ocsf"
    CEF = "cef"


PRODUCT = "trustd"
OCSF_SCHEMA_VERSION = "1.3.0"
# Lines are written joined, about _BATCH_BYTES at a time: 64 KB batches of OCSF lines export
# 1.6x faster than 350 KB ones (large blocks of fresh memory for each write cost page faults).
_BATCH_BYTES = 64 * 1024
_FIRST_BATCH = 16  # lines in the first batch, which measures how long lines are
_BATCH_MAX = 4096
_CACHE_MAX = 10_000  # entries per renderer cache; cleared when full (events come in bursts)
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_esc: Callable[[str], str] = json.encoder.encode_basestring_ascii  # JSON string (C code)

# A renderer's cache key: the fields that repeat from event to event (type, outcome,
# reason, actor kind, id, uid and addr, action).
_Key = tuple[str, str, str, str, str, int | None, str | None, str]

# ------------------------------------------------------------------ shared helpers


def _split_addr(addr: str | None) -> tuple[str, int] | None:
    """("ip", port) for an "IP:PORT" / "[IPv6]:PORT" address, else None."""
    if not addr:
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def _severity_of(event_type: str, outcome: str) -> int:
    """OCSF severity_id: 1 informational, 3 medium (failures, denials), 4 high (CA taint/revoke)."""
    if event_type.endswith(("authority.taint", "authority.revoke")):  # by hand (admin.) or not
        return 4
    return 1 if outcome == "success" else 3


_MILLIS = frozenset(f"{n:03d}" for n in range(1000))


class _Timed:
    """Base of the renderers that write ``time`` as ms since the epoch, ``str(time_ms(t))``.

    For the stored form (``2026-01-01T00:00:00.123456Z``) that is the whole seconds
    followed by the three millisecond digits, and the seconds are those of the previous
    event more often than not, so renderers check inline::

        if t.startswith(self._second) and len(t) == 27 and t[26] == "Z" and (
            (ms := t[20:23]) in _MILLIS
        ):
            when = self._seconds + ms
        else:
            when = self._ms(t)
    """

    __slots__ = ("_second", "_seconds")

    def __init__(self) -> None:
        self._second = "-" * 28  # "YYYY-MM-DDTHH:MM:SS." of the last time; none starts so yet
        self._seconds = ""  # its seconds since the epoch, as text (always > 0)

    def _ms(self, t: str) -> str:
        """``str(time_ms(t))``, remembering the seconds of a stored-form time."""
        if len(t) == 27 and t[19] == "." and t[26] == "Z" and t[20:23] in _MILLIS:
            seconds = time_ms(t[:19] + ".000000Z") // 1000  # what time_ms(t) adds ms to
            if seconds > 0:  # not "0" + "123": that would not be 123
                self._second, self._seconds = t[:20], str(seconds)
                return self._seconds + t[20:23]
        return str(time_ms(t))


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


# ------------------------------------------------------------------ JSON lines


def write_jsonl(
    records: Iterable[AuditRecord],
    out: TextIO,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 10_000,
) -> int:
    """The stored lines as they are (hash chain included), one per line."""
    return write_rendered(
        (r.line() for r in records), out, progress=progress, progress_every=progress_every
    )


# ------------------------------------------------------------------ CSV

CSV_COLUMNS = (
    "id",
    "seq",
    "time",
    "type",
    "actor_kind",
    "actor_id",
    "actor_uid",
    "actor_addr",
    "action",
    "resource",
    "outcome",
    "reason",
    "details",
    "prev_hash",
    "hash",
)
_FORMULA_START = frozenset("=+-@\t\r")


def _cell(value: Any) -> str:
    # A cell starting with = + - @ is run as a formula by spreadsheets (CSV injection):
    # prefix such cells with ' so they stay text. Stored data is unchanged.
    text = str(value)
    return "'" + text if text and text[0] in _FORMULA_START else text


def _q(value: Any) -> str:
    """One RFC 4180 field: quoted when it holds a comma, quote or line break."""
    text = value if type(value) is str else str(value)
    if '"' in text or "," in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


class _Csv:
    """CSV lines, with the columns that repeat rendered once per (type, outcome, reason,
    actor, action)."""

    __slots__ = ("_templates",)

    def __init__(self) -> None:
        self._templates: dict[_Key, tuple[str, str]] = {}

    def _template(self, key: _Key) -> tuple[str, str]:
        """(",type,...,action,", ",outcome,reason,"): the text around the resource."""
        typ, outcome, reason, kind, aid, uid, addr, action = key
        before = (
            _q(typ),
            _q(kind),
            _q(_cell(aid)),
            "" if uid is None else str(uid),
            _q(_cell(addr or "")),
            _q(_cell(action)),
        )
        found = ("," + ",".join(before) + ",", "," + _q(outcome) + "," + _q(_cell(reason)) + ",")
        _remember(self._templates, key, found)
        return found

    def render(self, row: Row) -> str:
        """One CSV line (without the line break)."""
        (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
         prev, digest) = row  # fmt: skip
        key = (typ, outcome, reason, kind, aid, uid, addr, action)
        before, after = self._templates.get(key) or self._template(key)
        own = i + t + resource + prev + digest
        if '"' in own or "," in own or "\n" in own or "\r" in own or resource[:1] in _FORMULA_START:
            i, t, resource, prev, digest = _q(i), _q(t), _q(_cell(resource)), _q(prev), _q(digest)
        if '"' in details or "," in details or "\n" in details or "\r" in details:
            quoted = details.replace('"', '""')
            return f'{i},{seq},{t}{before}{resource}{after}"{quoted}",{prev},{digest}'
        return f"{i},{seq},{t}{before}{resource}{after}{details},{prev},{digest}"


def csv_row(row: Row) -> str:
    """One CSV line (without the line break); writers keep one renderer for all rows."""
    return _Csv().render(row)


def write_csv(
    records: Iterable[AuditRecord],
    out: TextIO,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 10_000,
) -> int:
    """RFC 4180 CSV (CRLF line ends) with a header row (CSV_COLUMNS); details as compact JSON.

    Cells an attacker could shape (actor id and addr, action, resource, reason) that
    start with = + - @ get a leading ' so spreadsheets do not run them as formulas.
    """
    return write_rendered(
        _render(records, _Csv().render),
        out,
        progress=progress,
        progress_every=progress_every,
        header=",".join(CSV_COLUMNS),
        line_end="\r\n",
    )


# ------------------------------------------------------------------ OCSF

_CLASSES = {
    6003: ("API Activity", 6, "Application Activity"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    4001: ("Network Activity", 4, "Network Activity"),
}
_API_ACTIVITY = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_AUTH_ACTIVITY = {
    1: "Logon",
    2: "Logoff",
    3: "Authentication Ticket",
    4: "Service Ticket Request",
    5: "Service Ticket Renew",
    99: "Other",
}
_NET_ACTIVITY = {5: "Refuse", 99: "Other"}
_VERB_ACTIVITY = {
    **dict.fromkeys(("create", "prepare", "apply", "start", "mint", "join", "add"), 1),
    **dict.fromkeys(
        ("read", "show", "list", "get", "export", "status", "diff", "tail", "verify"), 2
    ),
    **dict.fromkeys(
        ("update", "activate", "taint", "pause", "resume", "step", "rotate", "set", "switch"), 3
    ),
    **dict.fromkeys(("delete", "revoke", "evict", "abort", "remove", "retire"), 4),
}
_AUTH_TYPES = {
    "svid.issue": 3,  # an X.509-SVID is the workload's identity credential
    "admin.svid.mint": 3,  # one minted by hand is one too
    "svid.deny": 3,
    "svid.renew": 5,
    "agent.join": 1,  # a node agent logs on with its join token
    "agent.renew": 5,
}
_SEVERITY_NAMES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
_USER_TYPES = {"unix": (1, "User"), "spiffe": (99, "Workload"), "system": (3, "System")}


def ocsf_class(event_type: str) -> tuple[int, int]:
    """(class_uid, activity_id) for an event type."""
    auth = _AUTH_TYPES.get(event_type)
    if auth is not None:
        return 3002, auth
    if event_type.startswith("svid."):
        return 3002, 99
    if event_type == "proxy.connection.deny":
        return 4001, 5
    verb = event_type.rsplit(".", 1)[-1]
    return 6003, _VERB_ACTIVITY.get(verb, 99)


def _resource_type(event_type: str) -> str:
    """The noun of "<area>.<noun>.<verb>" or "<noun>.<verb>"; a type without a verb (only
    a damaged line has one) is its own noun."""
    parts = event_type.split(".")
    return parts[-2] if len(parts) > 1 else event_type


def _activity_names(class_uid: int) -> dict[int, str]:
    if class_uid == 6003:
        return _API_ACTIVITY
    return _AUTH_ACTIVITY if class_uid == 3002 else _NET_ACTIVITY


_OcsfKey = tuple[str, str, str, str, str, int | None, str | None, str, bool]


class _Ocsf(_Timed):
    """OCSF JSON lines from the constant text per (type, outcome, reason, actor, action,
    whether there is a resource): class, activity, severity, message, actor and endpoints
    are encoded once per template."""

    __slots__ = ("_actors", "_clean", "_heads", "_local", "_meta", "_templates")

    def __init__(self, product_version: str) -> None:
        super().__init__()
        product = {"name": PRODUCT, "vendor_name": PRODUCT, "version": product_version}
        self._meta = (
            ',"metadata":{"version":' + _esc(OCSF_SCHEMA_VERSION)
            + ',"product":' + _ENCODER.encode(product) + ',"uid":"'
        )  # fmt: skip
        self._local = _ENCODER.encode({"hostname": socket.gethostname()})
        self._heads: dict[tuple[str, str], tuple[str, int]] = {}
        self._actors: dict[tuple[str, str, int | None, str | None], str] = {}
        self._templates: dict[_OcsfKey, tuple[tuple[str, ...], bool]] = {}
        self._clean = ""  # the last hash seen to need no JSON escapes

    def _head(self, typ: str, outcome: str) -> tuple[str, int]:
        """The class, activity, severity and status members (without the closing brace)."""
        class_uid, activity_id = ocsf_class(typ)
        class_name, category_uid, category_name = _CLASSES[class_uid]
        activity_name = _activity_names(class_uid).get(activity_id, "Other")
        severity_id = _severity_of(typ, outcome)
        success = outcome == "success"
        head = _ENCODER.encode(
            {
                "category_uid": category_uid,
                "category_name": category_name,
                "class_uid": class_uid,
                "class_name": class_name,
                "activity_id": activity_id,
                "activity_name": activity_name,
                "type_uid": class_uid * 100 + activity_id,
                "type_name": f"{class_name}: {activity_name}",
                "severity_id": severity_id,
                "severity": _SEVERITY_NAMES[severity_id],
                "status_id": 1 if success else 2,
                "status": "Success" if success else "Failure",
            }
        )[:-1]
        _remember(self._heads, (typ, outcome), (head, class_uid))
        return head, class_uid

    def _endpoint(self, addr: str | None) -> str:
        split = _split_addr(addr)
        if split is not None:
            return '{"ip":' + _esc(split[0]) + ',"port":' + str(split[1]) + "}"
        if addr:
            return '{"name":' + _esc(addr) + "}"  # a Unix socket path
        return self._local

    def _actor(self, key: tuple[str, str, int | None, str | None]) -> str:
        kind, aid, uid, addr = key
        type_id, type_name = _USER_TYPES.get(kind, (0, "Unknown"))
        user_uid = aid if uid is None else str(int(uid))
        text = (
            ',"actor":{"user":{"name":' + _esc(aid) + ',"uid":' + _esc(user_uid)
            + ',"type_id":' + str(type_id) + ',"type":' + _esc(type_name)
            + '}},"src_endpoint":' + self._endpoint(addr)
        )  # fmt: skip
        _remember(self._actors, key, text)
        return text

    def _template(self, key: _OcsfKey) -> tuple[tuple[str, ...], bool]:
        """The constant text between the event's own values, and whether the resource
        goes in twice (Authentication: user name and uid).

        An event is ``head, time, message+metadata, id, seq, before, resource, between,
        [resource, after,] details, prev_hash, hash``; the values in quotes (id, resource,
        hashes) go in without their quotes, which the constant text holds.
        """
        typ, outcome, reason, kind, aid, uid, addr, action, has_resource = key
        head, class_uid = self._heads.get((typ, outcome)) or self._head(typ, outcome)
        akey = (kind, aid, uid, addr)
        actor = self._actors.get(akey) or self._actor(akey)
        action_json = _esc(action)
        message = f"{typ} {outcome}: {reason}" if reason else f"{typ} {outcome}"
        head += ',"time":'
        meta = ',"message":' + _esc(message) + self._meta
        unmapped = ',"unmapped":{"action":' + action_json + ',"actor_kind":' + _esc(kind)
        unmapped += ',"details":'
        before = ',"event_code":' + _esc(typ) + ',"log_name":"audit"}' + actor
        if reason:
            before += ',"status_detail":' + _esc(reason)
        between = ""
        if class_uid == 6003:
            before += ',"api":{"operation":' + action_json + ',"service":{"name":"trustd"}}'
            if has_resource:
                before += ',"resources":[{"uid":"'
                between = '","type":' + _esc(_resource_type(typ)) + "}]"
        elif class_uid == 3002:
            after = (
                ',"type_id":99,"type":"Workload"},"service":{"name":"trustd"},'
                '"auth_protocol_id":99,"auth_protocol":"SPIFFE X.509-SVID","dst_endpoint":'
                + self._local
            )
            if has_resource:  # the resource is the subject
                before += ',"user":{"name":"'
                pieces = (head, meta, before, '","uid":"', '"' + after + unmapped)
                found: tuple[tuple[str, ...], bool] = (pieces, True)
                _remember(self._templates, key, found)
                return found
            subject = _esc(aid)  # else the actor is
            before += ',"user":{"name":' + subject + ',"uid":' + subject + after
        elif has_resource:
            before += ',"dst_endpoint":{"name":"'
            between = '"}'
        else:
            before += ',"dst_endpoint":' + self._local
        found = ((head, meta, before, between + unmapped), False)
        _remember(self._templates, key, found)
        return found

    def render(self, row: Row) -> str:
        """One OCSF event as a JSON line (without the newline)."""
        (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
         prev, digest) = row  # fmt: skip
        key = (typ, outcome, reason, kind, aid, uid, addr, action, resource != "")
        pieces, twice = self._templates.get(key) or self._template(key)
        if (
            t.startswith(self._second)
            and len(t) == 27
            and t[26] == "Z"
            and ((ms := t[20:23]) in _MILLIS)
        ):
            seconds = self._seconds  # the time in ms is seconds + ms
        else:
            seconds, ms = self._ms(t), ""
        # JSON escapes nothing in printable ASCII without " and \: the usual event. Its
        # prev_hash is the hash of the event before, checked then, more often than not.
        # For ASCII text, repr escapes \ and what is not printable (and ' when " is there
        # too): without ", repr adding nothing but its quotes means what isprintable and
        # no \ would, and is faster to find.
        own = i + resource + digest if prev == self._clean else i + resource + prev + digest
        if own.isascii() and '"' not in own and len(repr(own)) == len(own) + 2:
            self._clean = digest
        else:
            i, resource, prev, digest = (
                _esc(i)[1:-1], _esc(resource)[1:-1], _esc(prev)[1:-1], _esc(digest)[1:-1]
            )  # fmt: skip
        # the constant ends: ',"sequence":' after the id, the hashes' members, "}}"
        if twice:
            head, meta, before, between, after = pieces
            return (
                f'{head}{seconds}{ms}{meta}{i}","sequence":{seq}{before}{resource}{between}'
                f'{resource}{after}{details},"prev_hash":"{prev}","hash":"{digest}"}}}}'
            )
        head, meta, before, after = pieces
        return (
            f'{head}{seconds}{ms}{meta}{i}","sequence":{seq}{before}{resource}{after}{details}'
            f',"prev_hash":"{prev}","hash":"{digest}"}}}}'
        )


def to_ocsf(rec: AuditRecord, *, product_version: str = __version__) -> dict[str, Any]:
    """One event as an OCSF object."""
    event: dict[str, Any] = json.loads(_Ocsf(product_version).render(row_from_record(rec)))
    return event


def write_ocsf(
    records: Iterable[AuditRecord],
    out: TextIO,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 10_000,
    product_version: str = __version__,
) -> int:
    """OCSF events, one JSON object per line (what SIEM OCSF ingestion takes)."""
    return write_rendered(
        _render(records, _Ocsf(product_version).render),
        out,
        progress=progress,
        progress_every=progress_every,
    )


# ------------------------------------------------------------------ CEF

_CEF_SEVERITY = {1: 3, 2: 4, 3: 6, 4: 8}  # OCSF severity_id -> CEF 0..10


def cef_header_escape(text: str) -> str:
    """Header fields: backslash and pipe escaped; newlines cannot appear, so become spaces."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "|" in text:
        text = text.replace("|", "\\|")
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text


def cef_value_escape(text: str) -> str:
    """Extension values: backslash and equals escaped, newlines as \\n and \\r."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "=" in text:
        text = text.replace("=", "\\=")
    if "\n" in text or "\r" in text:
        text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text


class _Cef(_Timed):
    """CEF lines, with the header and the fields that repeat rendered once per (type,
    outcome, reason, actor, action)."""

    __slots__ = ("_actors", "_prefix", "_templates")

    def __init__(self, product_version: str) -> None:
        super().__init__()
        self._prefix = f"CEF:0|{PRODUCT}|{PRODUCT}|{cef_header_escape(product_version)}|"
        self._actors: dict[tuple[str, str, int | None, str | None], str] = {}
        self._templates: dict[_Key, tuple[str, str]] = {}

    def _actor(self, key: tuple[str, str, int | None, str | None]) -> str:
        kind, aid, uid, addr = key
        parts = [f" suser={cef_value_escape(aid)}"]
        if uid is not None:
            parts.append(f" suid={int(uid)}")
        split = _split_addr(addr)
        if split is not None:  # escaped too: an IPv6 zone id ("fe80::1%eth0") is free text
            parts.append(f" src={cef_value_escape(split[0])} spt={split[1]}")
        parts.append(f" cs5Label=actorKind cs5={cef_value_escape(kind)}")
        if addr is not None:
            parts.append(f" cs6Label=actorAddr cs6={cef_value_escape(addr)}")
        text = "".join(parts)
        _remember(self._actors, key, text)
        return text

    def _template(self, key: _Key) -> tuple[str, str]:
        """(header up to "rt=", the text from " cat=" to "cn1=")."""
        typ, outcome, reason, kind, aid, uid, addr, action = key
        esc = cef_value_escape
        name = cef_header_escape(typ)
        severity = _CEF_SEVERITY[_severity_of(typ, outcome)]
        akey = (kind, aid, uid, addr)
        actor = self._actors.get(akey) or self._actor(akey)
        found = (
            f"{self._prefix}{name}|{name} {cef_header_escape(outcome)}|{severity}|rt=",
            f" cat={esc(typ)} act={esc(action)} outcome={esc(outcome)}{actor}"
            + (" reason=" + esc(reason) if reason else "")
            + " cn1Label=seq cn1=",
        )
        _remember(self._templates, key, found)
        return found

    def render(self, row: Row) -> str:
        """One CEF line (without the newline)."""
        (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
         prev, digest) = row  # fmt: skip
        key = (typ, outcome, reason, kind, aid, uid, addr, action)
        head, middle = self._templates.get(key) or self._template(key)
        if (
            t.startswith(self._second)
            and len(t) == 27
            and t[26] == "Z"
            and ((ms := t[20:23]) in _MILLIS)
        ):
            when = self._seconds + ms
        else:
            when = self._ms(t)
        own = i + resource + details + digest + prev
        if "\\" in own or "=" in own or "\n" in own or "\r" in own:
            esc = cef_value_escape
            i, resource, details, digest, prev = (
                esc(i), esc(resource), esc(details), esc(digest), esc(prev)
            )  # fmt: skip
        return (
            f"{head}{when} externalId={i}{middle}{seq} cs1Label=resource cs1={resource}"
            f" cs2Label=details cs2={details} cs3Label=hash cs3={digest}"
            f" cs4Label=prevHash cs4={prev}"
        )


def to_cef(rec: AuditRecord, *, product_version: str = __version__) -> str:
    """One event as a CEF line (without the newline)."""
    return _Cef(product_version).render(row_from_record(rec))


def write_cef(
    records: Iterable[AuditRecord],
    out: TextIO,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 10_000,
    product_version: str = __version__,
) -> int:
    """CEF lines, one per event."""
    return write_rendered(
        _render(records, _Cef(product_version).render),
        out,
        progress=progress,
        progress_every=progress_every,
    )


# ------------------------------------------------------------------ dispatch


def _render(records: Iterable[AuditRecord], render: Callable[[Row], str]) -> Iterator[str]:
    skipped = 0
    for rec in records:
        try:
            yield render(row_from_record(rec))
        except (KeyError, TypeError, ValueError):
            skipped += 1  # a damaged line: verify reports it, the export goes on
    if skipped:
        log.warning("audit export skipped damaged events", skipped=skipped)


def renderer(format: ExportFormat, product_version: str = __version__) -> Callable[[Row], str]:
    """The function that turns a row into one line of ``format`` (not jsonl).

    It caches what repeats between rows: use one per export, from one thread.
    """
    if format is ExportFormat.CSV:
        return _Csv().render
    if format is ExportFormat.OCSF:
        return _Ocsf(product_version).render
    if format is ExportFormat.CEF:
        return _Cef(product_version).render
    raise AuditEventError("jsonl lines are the stored lines: no renderer")


def write_rendered(
    lines: Iterable[str],
    out: TextIO,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 10_000,
    header: str | None = None,
    line_end: str = "\n",
) -> int:
    """Write rendered lines in batches, calling ``progress`` every ``progress_every`` lines
    and once at the end; returns how many."""
    if header is not None:
        out.write(header + line_end)
    lines = iter(lines)
    every = max(1, progress_every)
    n = 0
    size = _FIRST_BATCH  # lines per batch, then as many as make about _BATCH_BYTES
    while True:
        # a batch also ends at each multiple of ``every``, where progress is reported
        want = size if progress is None else min(size, every - n % every)
        batch = list(islice(lines, want))  # pulled by C code: no Python loop per line
        if not batch:
            break
        n += len(batch)
        batch.append("")
        text = line_end.join(batch)
        out.write(text)
        size = max(1, min(_BATCH_MAX, _BATCH_BYTES * (len(batch) - 1) // max(1, len(text))))
        if progress is not None and n % every == 0:
            progress(n)
        if len(batch) <= want:  # a short batch: the lines ran out
            break
    if progress is not None:
        progress(n)
    return n


def export_events(
    records: Iterable[AuditRecord],
    out: TextIO,
    *,
    format: ExportFormat | str,
    progress: ProgressCallback | None = None,
    progress_every: int = 10_000,
    product_version: str = __version__,
) -> int:
    """Write ``records`` to ``out`` in ``format``; returns how many were written."""
    try:
        fmt = ExportFormat(format)
    except ValueError as exc:
        raise AuditEventError(
            f"unknown export format {str(format)[:20]!r}: use jsonl, csv, ocsf or cef"
        ) from exc
    if fmt is ExportFormat.JSONL:
        return write_jsonl(records, out, progress=progress, progress_every=progress_every)
    if fmt is ExportFormat.CSV:
        return write_csv(records, out, progress=progress, progress_every=progress_every)
    if fmt is ExportFormat.OCSF:
        return write_ocsf(
            records,
            out,
            progress=progress,
            progress_every=progress_every,
            product_version=product_version,
        )
    return write_cef(
        records,
        out,
        progress=progress,
        progress_every=progress_every,
        product_version=product_version,
    )
