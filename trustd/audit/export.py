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
"""

from __future__ import annotations

import enum
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Iterator
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
_BATCH = 2000
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))

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
    if event_type in ("authority.taint", "authority.revoke"):
        return 4
    return 1 if outcome == "success" else 3


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


def csv_row(row: Row) -> str:
    """One CSV line (without the line break)."""
    (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
     prev, digest) = row  # fmt: skip
    return ",".join(
        (
            _q(i),
            str(seq),
            _q(t),
            _q(typ),
            _q(kind),
            _q(_cell(aid)),
            "" if uid is None else str(uid),
            _q(_cell(addr or "")),
            _q(_cell(action)),
            _q(_cell(resource)),
            _q(outcome),
            _q(_cell(reason)),
            _q(details),
            _q(prev),
            _q(digest),
        )
    )


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
        _render(records, csv_row),
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


_esc: Callable[[str], str] = json.encoder.encode_basestring_ascii  # JSON string (C code)
_CACHE_MAX = 10_000


def _activity_names(class_uid: int) -> dict[int, str]:
    if class_uid == 6003:
        return _API_ACTIVITY
    return _AUTH_ACTIVITY if class_uid == 3002 else _NET_ACTIVITY


class _Ocsf:
    """Renders OCSF JSON text directly: the parts that repeat (class, activity, severity per
    type and outcome; actor and endpoint per actor) are encoded once and cached."""

    def __init__(self, product_version: str) -> None:
        product = {"name": PRODUCT, "vendor_name": PRODUCT, "version": product_version}
        self.meta = (
            ',"metadata":{"version":' + _esc(OCSF_SCHEMA_VERSION)
            + ',"product":' + _ENCODER.encode(product) + ',"uid":'
        )  # fmt: skip
        self.local = _ENCODER.encode({"hostname": socket.gethostname()})
        self.templates: dict[tuple[str, str, bool, bool], tuple[str, int]] = {}
        self.actors: dict[tuple[Any, ...], str] = {}
        self.words: dict[str, str] = {}  # JSON text of the few values that repeat (action, kind)

    def _word(self, text: str) -> str:
        if len(self.words) > _CACHE_MAX:
            self.words.clear()
        out = self.words[text] = _esc(text)
        return out

    def _template(self, key: tuple[str, str, bool, bool]) -> None:
        """The event as a %-format string: constant parts rendered once per shape."""
        typ, outcome, has_reason, has_resource = key
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
        )[:-1].replace("%", "%%")
        typ_json = _esc(typ).replace("%", "%%")
        # slots, in order: time, message, uid, sequence, actor, [status_detail],
        # (6003: operation, [resource]) (3002: subject, subject) (4001: [resource]),
        # action, actor kind, details, prev_hash, hash
        message = (
            "%s" if has_reason else _esc(f"{typ} {outcome}").replace("%", "%%")
        )  # with a reason, the message is filled in per event
        parts = [
            head,
            ',"time":%s,"message":' + message,
            self.meta.replace("%", "%%"),
            '%s,"sequence":%s,"event_code":',
            typ_json,
            ',"log_name":"audit"}%s',
        ]
        if has_reason:
            parts.append(',"status_detail":%s')
        if class_uid == 6003:
            parts.append(',"api":{"operation":%s,"service":{"name":"trustd"}}')
            if has_resource:
                rtype = _esc(typ.split(".")[-2]).replace("%", "%%")
                parts.append(',"resources":[{"uid":%s,"type":' + rtype + "}]")
        elif class_uid == 3002:
            parts.append(
                ',"user":{"name":%s,"uid":%s,"type_id":99,"type":"Workload"}'
                ',"service":{"name":"trustd"},"auth_protocol_id":99,'
                '"auth_protocol":"SPIFFE X.509-SVID","dst_endpoint":'
                + self.local.replace("%", "%%")
            )
        elif has_resource:
            parts.append(',"dst_endpoint":{"name":%s}')
        else:
            parts.append(',"dst_endpoint":' + self.local.replace("%", "%%"))
        parts.append(
            ',"unmapped":{"action":%s,"actor_kind":%s,"details":%s,"prev_hash":%s,"hash":%s}}'
        )
        template = "".join(parts)
        if len(self.templates) > _CACHE_MAX:
            self.templates.clear()
        self.templates[key] = (template, class_uid)

    def endpoint(self, addr: str | None) -> str:
        split = _split_addr(addr)
        if split is not None:
            return '{"ip":' + _esc(split[0]) + ',"port":' + str(split[1]) + "}"
        if addr:
            return '{"name":' + _esc(addr) + "}"  # a Unix socket path
        return self.local

    def _actor(self, key: tuple[Any, ...]) -> str:
        kind, aid, uid, addr = key
        type_id, type_name = _USER_TYPES.get(kind, (0, "Unknown"))
        user_uid = aid if uid is None else str(int(uid))
        text = (
            ',"actor":{"user":{"name":' + _esc(aid) + ',"uid":' + _esc(user_uid)
            + ',"type_id":' + str(type_id) + ',"type":' + _esc(type_name)
            + '}},"src_endpoint":' + self.endpoint(addr)
        )  # fmt: skip
        if len(self.actors) > _CACHE_MAX:
            self.actors.clear()
        self.actors[key] = text
        return text

    def __call__(self, row: Row) -> str:
        (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
         prev, digest) = row  # fmt: skip
        key = (typ, outcome, reason != "", resource != "")
        found = self.templates.get(key)
        if found is None:
            self._template(key)
            found = self.templates[key]
        template, class_uid = found
        akey = (kind, aid, uid, addr)
        actor = self.actors.get(akey) or self._actor(akey)
        words = self.words
        action_json = words.get(action) or self._word(action)
        if reason:
            args: list[object] = [
                time_ms(t),
                _esc(f"{typ} {outcome}: {reason}"),
                _esc(i),
                seq,
                actor,
                _esc(reason),
            ]
        else:
            args = [time_ms(t), _esc(i), seq, actor]
        if class_uid == 6003:
            args.append(action_json)
            if resource:
                args.append(_esc(resource))
        elif class_uid == 3002:
            subject = _esc(resource or aid)
            args += [subject, subject]
        elif resource:
            args.append(_esc(resource))
        args += [
            action_json,
            words.get(kind) or self._word(kind),
            details,
            _esc(prev),
            _esc(digest),
        ]
        return template % tuple(args)


def to_ocsf(rec: AuditRecord, *, product_version: str = __version__) -> dict[str, Any]:
    """One event as an OCSF object."""
    event: dict[str, Any] = json.loads(_Ocsf(product_version)(row_from_record(rec)))
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
        _render(records, _Ocsf(product_version)),
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


class _Cef:
    def __init__(self, product_version: str) -> None:
        self.prefix = f"CEF:0|{PRODUCT}|{PRODUCT}|{cef_header_escape(product_version)}|"
        self.heads: dict[tuple[str, str], str] = {}
        self.actors: dict[tuple[Any, ...], str] = {}

    def _head(self, typ: str, outcome: str) -> str:
        name = cef_header_escape(typ)
        severity = _CEF_SEVERITY[_severity_of(typ, outcome)]
        head = f"{self.prefix}{name}|{name} {cef_header_escape(outcome)}|{severity}|"
        if len(self.heads) > _CACHE_MAX:
            self.heads.clear()
        self.heads[(typ, outcome)] = head
        return head

    def _actor(self, key: tuple[Any, ...]) -> str:
        kind, aid, uid, addr = key
        parts = [f" suser={cef_value_escape(aid)}"]
        if uid is not None:
            parts.append(f" suid={int(uid)}")
        split = _split_addr(addr)
        if split is not None:
            parts.append(f" src={split[0]} spt={split[1]}")
        parts.append(f" cs5Label=actorKind cs5={cef_value_escape(kind)}")
        if addr is not None:
            parts.append(f" cs6Label=actorAddr cs6={cef_value_escape(addr)}")
        text = "".join(parts)
        if len(self.actors) > _CACHE_MAX:
            self.actors.clear()
        self.actors[key] = text
        return text

    def __call__(self, row: Row) -> str:
        (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
         prev, digest) = row  # fmt: skip
        esc = cef_value_escape
        head = self.heads.get((typ, outcome)) or self._head(typ, outcome)
        akey = (kind, aid, uid, addr)
        actor = self.actors.get(akey) or self._actor(akey)
        return "".join(
            (
                head,
                "rt=", str(time_ms(t)),
                " externalId=", esc(i),
                " cat=", esc(typ),
                " act=", esc(action),
                " outcome=", esc(outcome),
                actor,
                " reason=" + esc(reason) if reason else "",
                " cn1Label=seq cn1=", str(seq),
                " cs1Label=resource cs1=", esc(resource),
                " cs2Label=details cs2=", esc(details),
                " cs3Label=hash cs3=", esc(digest),
                " cs4Label=prevHash cs4=", esc(prev),
            )
        )  # fmt: skip


def to_cef(rec: AuditRecord, *, product_version: str = __version__) -> str:
    """One event as a CEF line (without the newline)."""
    return _Cef(product_version)(row_from_record(rec))


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
        _render(records, _Cef(product_version)),
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
    """The function that turns a row into one line of ``format`` (not jsonl)."""
    if format is ExportFormat.CSV:
        return csv_row
    if format is ExportFormat.OCSF:
        return _Ocsf(product_version)
    if format is ExportFormat.CEF:
        return _Cef(product_version)
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
    """Write rendered lines in batches, calling ``progress``; returns how many."""
    if header is not None:
        out.write(header + line_end)
    n = 0
    every = max(1, progress_every)
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        n += 1
        if len(batch) >= _BATCH:
            batch.append("")
            out.write(line_end.join(batch))
            batch.clear()
        if progress is not None and n % every == 0:
            progress(n)
    if batch:
        batch.append("")
        out.write(line_end.join(batch))
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
