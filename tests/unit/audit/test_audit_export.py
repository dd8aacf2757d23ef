"""Exports: JSON lines, CSV, OCSF and CEF fields and escaping; no secrets anywhere."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import ipaddress
import json
import random
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import ADMIN, AGENT, START, OpenLog, make_event, segment_files
from cryptography.hazmat.primitives import serialization

from trustd import __version__
from trustd.audit import (
    CSV_COLUMNS,
    Actor,
    AuditEvent,
    AuditEventError,
    AuditLog,
    AuditRecord,
    AuditSecretError,
    export_events,
    to_cef,
    to_ocsf,
    write_cef,
    write_csv,
    write_jsonl,
    write_ocsf,
)
from trustd.audit import events as audit_events
from trustd.audit import reader as audit_reader
from trustd.audit.export import ExportFormat, ocsf_class, renderer, write_rendered
from trustd.audit.record import (
    GENESIS_HASH,
    Row,
    encode_unhashed,
    parse_line,
    row_from_line,
    row_from_record,
    seal,
    time_ms,
)
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock

TRICKY = "bad | pipe = equals \\ backslash\nnew line\r\ncrlf"


def epoch_ms(text: str) -> int:
    when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


@pytest.fixture
def log(open_log: OpenLog, clock: FakeClock) -> AuditLog:
    log = open_log()
    events = [
        make_event(1),
        make_event(
            2, type="svid.deny", outcome="failure", reason=TRICKY, resource="spiffe://td/x|y=z"
        ),
        AuditEvent(
            type="admin.entry.create",
            actor=ADMIN,
            action="create",
            resource="entry-1",
            details={
                "spiffe_id": "spiffe://trustd.local/ns/shop/sa/api",
                "selectors": ["unix:uid:1000"],
            },
        ),
        AuditEvent(type="admin.entry.delete", actor=ADMIN, action="delete", resource="entry-1"),
        AuditEvent(type="authority.taint", actor=ADMIN, action="taint", resource="authority-1"),
        AuditEvent(
            type="agent.join",
            actor=Actor.spiffe("spiffe://trustd.local/agent/n2", addr="[::1]:5000"),
            action="join",
            resource="spiffe://trustd.local/agent/n2",
            details={"token": log_token_placeholder()},
        ),
        AuditEvent(
            type="proxy.connection.deny",
            actor=Actor.spiffe("spiffe://trustd.local/ns/a/sa/client", addr="10.0.0.5:41000"),
            action="connect",
            resource="spiffe://trustd.local/ns/b/sa/server",
            outcome="failure",
            reason="AuthorizationPolicy deny-all",
        ),
        AuditEvent(
            type="policy.apply",
            actor=ADMIN,
            action="apply",
            resource='=HYPERLINK("http://evil")',
            outcome="failure",
            reason="-1+1",
        ),
    ]
    for i, ev in enumerate(events):
        clock.set(START + dt.timedelta(seconds=i, milliseconds=123))
        log.append(ev)
    return log


def log_token_placeholder() -> str:
    return "hmac-sha256:" + "ab" * 32


def records(log: AuditLog) -> list[AuditRecord]:
    return list(log.iter_events())


# ------------------------------------------------------------------ JSON lines and CSV


def test_jsonl_export_is_the_stored_lines(log: AuditLog) -> None:
    out = io.StringIO()
    assert write_jsonl(log.iter_events(), out) == 8
    stored = b"".join(p.read_bytes() for p in sorted(log.directory.glob("audit-*.jsonl")))
    assert out.getvalue().encode() == stored
    lazy = io.StringIO()
    log.export(lazy, format="jsonl")
    assert lazy.getvalue() == out.getvalue()


def test_csv_export_round_trips_and_defuses_formulas(log: AuditLog) -> None:
    out = io.StringIO()
    assert write_csv(log.iter_events(), out) == 8
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 9
    by_seq = {int(r[1]): dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]}
    deny = by_seq[2]
    assert deny["reason"] == TRICKY and deny["outcome"] == "failure"
    assert deny["resource"] == "spiffe://td/x|y=z"
    create = by_seq[3]
    assert create["actor_kind"] == "unix" and create["actor_uid"] == "0"
    assert json.loads(create["details"])["selectors"] == ["unix:uid:1000"]
    apply = by_seq[8]
    assert apply["resource"] == '\'=HYPERLINK("http://evil")'
    assert apply["reason"] == "'-1+1"
    for rec in records(log):
        assert by_seq[rec.seq]["hash"] == rec.hash and by_seq[rec.seq]["time"] == rec.time


# ------------------------------------------------------------------ OCSF


def ocsf_events(log: AuditLog) -> dict[int, dict[str, Any]]:
    out = io.StringIO()
    write_ocsf(log.iter_events(), out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 8
    events = [json.loads(line) for line in lines]
    return {int(e["metadata"]["sequence"]): e for e in events}


@pytest.mark.parametrize(
    ("seq", "class_uid", "category_uid", "activity_id", "status_id", "severity_id"),
    [
        (1, 3002, 3, 3, 1, 1),  # svid.issue: Authentication / Authentication Ticket
        (2, 3002, 3, 3, 2, 3),  # svid.deny: failure, medium
        (3, 6003, 6, 1, 1, 1),  # admin.entry.create: API Activity / Create
        (4, 6003, 6, 4, 1, 1),  # admin.entry.delete: API Activity / Delete
        (5, 6003, 6, 3, 1, 4),  # authority.taint: Update, high
        (6, 3002, 3, 1, 1, 1),  # agent.join: Authentication / Logon
        (7, 4001, 4, 5, 2, 3),  # proxy.connection.deny: Network Activity / Refuse
        (8, 6003, 6, 1, 2, 3),  # policy.apply failed
    ],
)
def test_ocsf_classes_and_ids(
    log: AuditLog,
    seq: int,
    class_uid: int,
    category_uid: int,
    activity_id: int,
    status_id: int,
    severity_id: int,
) -> None:
    ev = ocsf_events(log)[seq]
    assert ev["class_uid"] == class_uid
    assert ev["category_uid"] == category_uid
    assert ev["activity_id"] == activity_id
    assert ev["type_uid"] == class_uid * 100 + activity_id
    assert ev["status_id"] == status_id
    assert ev["severity_id"] == severity_id


def test_ocsf_common_fields(log: AuditLog) -> None:
    events = ocsf_events(log)
    recs = {r.seq: r for r in records(log)}
    for seq, ev in events.items():
        rec = recs[seq]
        assert ev["time"] == epoch_ms(rec.time)  # ms since the epoch
        meta = ev["metadata"]
        assert isinstance(meta, dict)
        assert meta["product"] == {
            "name": "trustd",
            "vendor_name": "trustd",
            "version": __version__,
        }
        assert meta["version"].startswith("1.")
        assert meta["uid"] == rec.id and meta["event_code"] == rec.type
        actor = ev["actor"]
        assert isinstance(actor, dict) and actor["user"]["name"] == rec.actor.id
        assert ev["unmapped"]["hash"] == rec.hash
        assert ev["unmapped"]["details"] == rec.details
        assert "src_endpoint" in ev
    assert events[1]["time"] % 1000 == 123
    assert events[1]["src_endpoint"] == {"ip": "127.0.0.1", "port": 40123}
    assert events[6]["src_endpoint"] == {"ip": "::1", "port": 5000}
    assert events[3]["src_endpoint"] == {"name": "/var/lib/trustd/admin.sock"}
    assert events[3]["actor"]["user"]["uid"] == "0"
    assert events[3]["api"] == {"operation": "create", "service": {"name": "trustd"}}
    assert events[3]["resources"] == [{"uid": "entry-1", "type": "entry"}]
    assert events[1]["user"]["uid"] == "spiffe://trustd.local/ns/shop/sa/svc-1"
    assert events[2]["status_detail"] == TRICKY
    assert events[7]["dst_endpoint"] == {"name": "spiffe://trustd.local/ns/b/sa/server"}


def test_to_ocsf_matches_the_writer(log: AuditLog) -> None:
    rec = records(log)[2]
    assert to_ocsf(rec) == ocsf_events(log)[3]


# ------------------------------------------------------------------ CEF


def split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    parts: list[str] = []
    cur, i = "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if c == sep and len(parts) < limit:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def unescape(value: str, header: bool) -> str:
    out, i = "", 0
    while i < len(value):
        if value[i] == "\\":
            nxt = value[i + 1]
            out += {"n": "\n", "r": "\r"}.get(nxt, nxt) if not header else nxt
            i += 2
        else:
            out += value[i]
            i += 1
    return out


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    assert "\n" not in line and "\r" not in line
    fields = split_unescaped(line, "|", 7)
    assert len(fields) == 8, line
    header = [unescape(f, header=True) for f in fields[:7]]
    ext: dict[str, str] = {}
    # a key is a word followed by an unescaped '='; its value runs to the next key
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", fields[7]))
    for k, m in enumerate(keys):
        if m.start() > 0 and fields[7][m.start() - 1] == "\\":
            continue
        end = keys[k + 1].start() if k + 1 < len(keys) else len(fields[7])
        ext[m.group(1)] = unescape(fields[7][m.end() : end], header=False)
    return header, ext


def cef_lines(log: AuditLog, product_version: str = __version__) -> list[str]:
    out = io.StringIO()
    write_cef(log.iter_events(), out, product_version=product_version)
    return out.getvalue().splitlines()


def test_cef_header_and_extension(log: AuditLog) -> None:
    lines = cef_lines(log)
    assert len(lines) == 8
    recs = records(log)
    for line, rec in zip(lines, recs, strict=True):
        assert line.startswith(f"CEF:0|trustd|trustd|{__version__}|")
        header, ext = parse_cef(line)
        assert header[0] == "CEF:0"
        assert header[4] == rec.type
        assert header[5] == f"{rec.type} {rec.outcome}"
        assert 0 <= int(header[6]) <= 10
        assert ext["rt"] == str(epoch_ms(rec.time))
        assert ext["externalId"] == rec.id
        assert ext["outcome"] == rec.outcome
        assert ext["suser"] == rec.actor.id
        assert ext["cn1Label"] == "seq" and ext["cn1"] == str(rec.seq)
        assert ext["cs1"] == rec.resource
        assert json.loads(ext["cs2"]) == rec.details
        assert ext["cs3"] == rec.hash
    _, deny = parse_cef(lines[1])
    assert deny["reason"] == TRICKY  # newlines survive as \n and \r escapes
    assert deny["cs1"] == "spiffe://td/x|y=z"
    assert "\\=" in lines[1] and "\\n" in lines[1] and "\\\\" in lines[1]
    _, issue = parse_cef(lines[0])
    assert issue["src"] == "127.0.0.1" and issue["spt"] == "40123"
    _, create = parse_cef(lines[2])
    assert create["suid"] == "0" and create["cs6"] == "/var/lib/trustd/admin.sock"
    header, _ = parse_cef(lines[4])
    assert int(header[6]) >= 7  # a CA taint is high severity


def test_cef_escapes_pipes_and_backslashes_in_the_header(log: AuditLog) -> None:
    line = cef_lines(log, product_version="1.0|beta\\x")[0]
    assert line.startswith("CEF:0|trustd|trustd|1.0\\|beta\\\\x|svid.issue|")
    header, _ = parse_cef(line)
    assert header[3] == "1.0|beta\\x"


def test_to_cef_matches_the_writer(log: AuditLog) -> None:
    assert to_cef(records(log)[1]) == cef_lines(log)[1]


# ------------------------------------------------------------------ dispatch, progress


def test_export_events_by_format_name_with_progress(log: AuditLog) -> None:
    for fmt in ("jsonl", "csv", "ocsf", "cef"):
        seen: list[int] = []
        out = io.StringIO()
        n = export_events(
            log.iter_events(), out, format=fmt, progress=seen.append, progress_every=3
        )
        assert n == 8
        assert seen == [3, 6, 8]
    with pytest.raises(AuditEventError, match="unknown export format"):
        export_events([], io.StringIO(), format="xml")


def test_log_export_applies_filters(log: AuditLog) -> None:
    out = io.StringIO()
    n = log.export(out, format="cef", types=["admin.*"], outcome="success")
    assert n == 2
    out = io.StringIO()
    n = log.export(
        out,
        format="ocsf",
        since=START + dt.timedelta(seconds=1),
        until=START + dt.timedelta(seconds=3),
    )
    assert n == 2
    assert (
        log.count(since=START + dt.timedelta(seconds=1), until=START + dt.timedelta(seconds=3)) == 2
    )


# ------------------------------------------------------------------ no secrets


def test_no_key_material_or_token_in_the_log_or_any_export(
    open_log: OpenLog, km: MemoryKeyManager
) -> None:
    log = open_log()
    join_token = "trustd-join-" + "Zq9" * 10
    vault_token = "hvs.CAESIOq8a1cP0b6GZbGk2r9fLk3mQ0uW5xT1yY8zA7"
    pin = "83746251"
    # a full run's worth of events, with the secret parts passed the only allowed way
    log.append(AuditEvent(type="admin.token.create", actor=ADMIN, action="create",
                          details={"token": log.token_hmac(join_token), "ttl": "10m"}))  # fmt: skip
    log.append(AuditEvent(type="agent.join", actor=AGENT, action="join",
                          resource="spiffe://trustd.local/agent/node-1",
                          details={"token": log.token_hmac(join_token)}))  # fmt: skip
    for i in range(5):
        log.append(make_event(i))
    log.append(AuditEvent(type="authority.prepare", actor=ADMIN, action="prepare",
                          resource="authority-2", details={"key_id": "ca-2", "kms": "pkcs11",
                          "pin_file": "/etc/trustd/pin"}))  # fmt: skip
    log.checkpoint()
    # and the attempts to leak, all refused before anything is written
    leaks: list[dict[str, Any]] = [
        {"token": join_token},
        {"vault": {"token": vault_token}},
        {"pin": pin},
        {"key": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA\n-----END EC PRIVATE KEY-----"},
    ]
    for details in leaks:
        with pytest.raises(AuditSecretError):
            log.append(AuditEvent(type="agent.join", actor=AGENT, action="join", details=details))
    with pytest.raises(AuditSecretError):
        log.append(AuditEvent(type="agent.join", actor=AGENT, action="join",
                              reason=f"vault said no to {vault_token}"))  # fmt: skip
    texts = {}
    for fmt in ("jsonl", "csv", "ocsf", "cef"):
        out = io.StringIO()
        assert log.export(out, format=fmt) == 8
        texts[fmt] = out.getvalue()
    log.close()
    for path in log.directory.iterdir():
        if path.name != "token-hmac.key":
            texts[path.name] = path.read_text()
    salt = (log.directory / "token-hmac.key").read_text().strip()
    private_keys = [  # the audit key's private half, as hex and base64
        k.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for k in km._keys.values()
    ]
    assert len(private_keys) == 1
    assert len(texts) == 8  # 4 exports, segment, checkpoints, key ref, lock
    for name, text in texts.items():
        assert "PRIVATE KEY" not in text, name
        assert join_token not in text, name
        assert vault_token not in text, name
        assert pin not in text, name
        assert salt not in text, name
        for der in private_keys:
            assert der[-32:].hex() not in text.lower(), name
            assert base64.b64encode(der)[-40:].decode() not in text, name
    assert log.token_hmac(join_token) in texts["jsonl"]  # the token appears only as its HMAC


@pytest.mark.parametrize(
    ("fmt", "writer"),
    [("csv", write_csv), ("ocsf", write_ocsf), ("cef", write_cef), ("jsonl", write_jsonl)],
)
def test_log_export_fast_path_matches_the_record_writers(
    log: AuditLog, fmt: str, writer: object
) -> None:
    # the log mixes plain lines (regex fast path) and lines with escapes (parsed)
    assert callable(writer)
    fast, slow = io.StringIO(), io.StringIO()
    assert log.export(fast, format=fmt) == 8
    writer(log.iter_events(), slow)
    assert fast.getvalue() == slow.getvalue()


# ------------------------------------------------------------------ fast writers = reference
#
# The writers render through caches and prebuilt templates (see trustd/audit/export.py).
# The references below build each line the plain way (a dict encoded by json, csv.writer,
# one escape per CEF value), and were checked byte for byte against the writers as they
# were before the templates. Whatever the row, the writers must give the same bytes.

_STRING = r'"([^"\\]*)"'
_REFERENCE_ROW_RE = re.compile(
    r'\{"id":' + _STRING + r',"seq":(\d+),"time":' + _STRING + r',"type":' + _STRING
    + r',"actor":\{"kind":' + _STRING + r',"id":' + _STRING + r',"uid":(?:null|(\d+))'
    + r',"addr":(?:null|' + _STRING + r')\},"action":' + _STRING + r',"resource":' + _STRING
    + r',"outcome":' + _STRING + r',"reason":' + _STRING + r',"details":'
)  # fmt: skip
_TAIL_LEN = len(',"prev_hash":"","hash":""}') + 128


def reference_row_from_line(raw: str) -> Row | None:
    m = _REFERENCE_ROW_RE.match(raw)
    tail_ok = (
        raw[-_TAIL_LEN : -_TAIL_LEN + 14] == ',"prev_hash":"'
        and raw[-76:-66] == '","hash":"'
        and raw[-2:] == '"}'
    )
    if m is None or not tail_ok:
        return None
    i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason = m.groups()
    return (i, int(seq), t, typ, kind, aid, None if uid is None else int(uid), addr, action,
            resource, outcome, reason, raw[m.end() : len(raw) - _TAIL_LEN], raw[-140:-76],
            raw[-66:-2])  # fmt: skip


def reference_stored_row(raw: str) -> Row | None:
    """What an export makes of a stored line: None for one it skips as unreadable."""
    row = reference_row_from_line(raw)
    if row is not None:
        return row
    try:
        return row_from_record(parse_line(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _ip_port(addr: str | None) -> tuple[str, int] | None:
    host, sep, port = (addr or "").rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit():
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def _formula_safe(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def reference_csv(row: Row) -> str:
    (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
     prev, digest) = row  # fmt: skip
    cells = [i, seq, t, typ, kind, _formula_safe(aid), uid, _formula_safe(addr or ""),
             _formula_safe(action), _formula_safe(resource), outcome, _formula_safe(reason),
             details, prev, digest]  # fmt: skip
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2]


_OCSF_CLASSES = {
    6003: ("API Activity", 6, "Application Activity"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    4001: ("Network Activity", 4, "Network Activity"),
}
_OCSF_ACTIVITIES = {
    6003: {1: "Create", 2: "Read", 3: "Update", 4: "Delete"},
    3002: {1: "Logon", 3: "Authentication Ticket", 5: "Service Ticket Renew"},
    4001: {5: "Refuse"},
}
_SEVERITIES = {1: "Informational", 3: "Medium", 4: "High"}
_USER_TYPES = {"unix": (1, "User"), "spiffe": (99, "Workload"), "system": (3, "System")}
_DETAILS = "\x00details\x00"  # stands for the details JSON text, put in as it is


def _severity(typ: str, outcome: str) -> int:
    if typ.endswith(("authority.taint", "authority.revoke")):
        return 4
    return 1 if outcome == "success" else 3


def reference_ocsf(row: Row, product_version: str = __version__) -> str:
    (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
     prev, digest) = row  # fmt: skip
    class_uid, activity_id = ocsf_class(typ)  # pinned per type by test_every_event_type_...
    class_name, category_uid, category_name = _OCSF_CLASSES[class_uid]
    activity = _OCSF_ACTIVITIES[class_uid].get(activity_id, "Other")
    severity = _severity(typ, outcome)
    local = {"hostname": socket.gethostname()}
    split = _ip_port(addr)
    event: dict[str, Any] = {
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": class_uid,
        "class_name": class_name,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity}",
        "severity_id": severity,
        "severity": _SEVERITIES[severity],
        "status_id": 1 if outcome == "success" else 2,
        "status": "Success" if outcome == "success" else "Failure",
        "time": time_ms(t),
        "message": f"{typ} {outcome}: {reason}" if reason else f"{typ} {outcome}",
        "metadata": {
            "version": "1.3.0",
            "product": {"name": "trustd", "vendor_name": "trustd", "version": product_version},
            "uid": i,
            "sequence": seq,
            "event_code": typ,
            "log_name": "audit",
        },
        "actor": {
            "user": {
                "name": aid,
                "uid": aid if uid is None else str(uid),
                "type_id": _USER_TYPES.get(kind, (0, "Unknown"))[0],
                "type": _USER_TYPES.get(kind, (0, "Unknown"))[1],
            }
        },
        "src_endpoint": (
            {"ip": split[0], "port": split[1]} if split else {"name": addr} if addr else local
        ),
    }
    if reason:
        event["status_detail"] = reason
    if class_uid == 6003:
        event["api"] = {"operation": action, "service": {"name": "trustd"}}
        if resource:
            parts = typ.split(".")
            event["resources"] = [{"uid": resource, "type": parts[-2] if parts[1:] else typ}]
    elif class_uid == 3002:
        subject = resource or aid
        event["user"] = {"name": subject, "uid": subject, "type_id": 99, "type": "Workload"}
        event["service"] = {"name": "trustd"}
        event["auth_protocol_id"] = 99
        event["auth_protocol"] = "SPIFFE X.509-SVID"
        event["dst_endpoint"] = local
    else:
        event["dst_endpoint"] = {"name": resource} if resource else local
    event["unmapped"] = {
        "action": action,
        "actor_kind": kind,
        "details": _DETAILS,
        "prev_hash": prev,
        "hash": digest,
    }
    before, _, after = json.dumps(event, separators=(",", ":")).rpartition(json.dumps(_DETAILS))
    return before + details + after


def _cef_header(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cef_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def reference_cef(row: Row, product_version: str = __version__) -> str:
    (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
     prev, digest) = row  # fmt: skip
    severity = {1: 3, 3: 6, 4: 8}[_severity(typ, outcome)]
    header = ["CEF:0", "trustd", "trustd", product_version, typ, f"{typ} {outcome}"]
    pairs = [("rt", str(time_ms(t))), ("externalId", i), ("cat", typ), ("act", action),
             ("outcome", outcome), ("suser", aid)]  # fmt: skip
    if uid is not None:
        pairs.append(("suid", str(uid)))
    split = _ip_port(addr)
    if split is not None:
        pairs += [("src", split[0]), ("spt", str(split[1]))]
    pairs += [("cs5Label", "actorKind"), ("cs5", kind)]
    if addr is not None:
        pairs += [("cs6Label", "actorAddr"), ("cs6", addr)]
    if reason:
        pairs.append(("reason", reason))
    pairs += [("cn1Label", "seq"), ("cn1", str(seq)), ("cs1Label", "resource"), ("cs1", resource),
              ("cs2Label", "details"), ("cs2", details), ("cs3Label", "hash"), ("cs3", digest),
              ("cs4Label", "prevHash"), ("cs4", prev)]  # fmt: skip
    extension = " ".join(f"{key}={_cef_value(value)}" for key, value in pairs)
    return "|".join([*map(_cef_header, header), str(severity), extension])


REFERENCES: dict[str, Callable[..., str]] = {
    "csv": reference_csv,
    "ocsf": reference_ocsf,
    "cef": reference_cef,
}

# Values that have broken exporters: every escape, quote and separator of the three
# formats, spreadsheet formula starts, control characters, non-ASCII, % for templates.
NASTY = [
    "", "plain", "|", "=", "\\", "\n", "\r", "\r\n", '"', ",", "'", "%", "%s", "%(x)s", "{}", "}",
    "\t", "\x00", "\x01", "\x1f", "\x7f", "\x80", "é", "€", "😀", "\u2028", "\ufffd", "=1+1",
    "+1", "-1", "@SUM(A1)", "\tx", "\rx", " x", "a b", ":", "null", '"}', ',"hash":"', TRICKY,
    '=HYPERLINK("http://evil")', "x=y\\z|w", "it's", "'\"", "\\'", "'\x01'", "'\x7f", "'é",
]  # fmt: skip
EVENT_TYPES = [
    *sorted(v for k, v in vars(audit_events).items() if isinstance(v, str) and k.isupper()),
    "svid.other", "svid.x.y", "admin.thing.list", "admin.thing.frobnicate", "foo.bar.delete",
    "proxy.connection.allow", "x.y", "nodot", "a|b.c=d", "a.b%c", "we\\ird.ty\npe", "é.x",
]  # fmt: skip
TIMES = [
    "2026-03-01T12:00:00.123456Z", "2026-03-01T12:00:00.999999Z", "2026-03-01T12:00:01.000000Z",
    "2026-03-01T12:00:01.000999Z", "1970-01-01T00:00:00.123456Z", "1970-01-01T00:00:01.001000Z",
    "1969-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z",
    "2026-03-01T12:00:00Z", "2026-03-01T12:00:00.5Z", "2026-03-01T12:00:00.123456+00:00",
    "2026-03-01T12:00:00.123456+02:00", "2026-03-01T12:00:00,123456Z",
    "2026-03-01 12:00:00.123456Z", "2026-03-01T12:00:00.12a456Z", "2026-03-01T12:00:00.-12456Z",
    "2026-03-01T12:00:00.\u0661\u0662\u0663456Z",  # Arabic-Indic digits: int() reads them
    "2026-13-01T12:00:00.123456Z", "2026-03-01T12:00:00.123456X", "2026-03-01T12:00:00.123456+",
    "2026-03-01T12:00:00.123456z", "garbage", "",
]  # fmt: skip
ADDRS = [
    None, "", "127.0.0.1:40123", "[::1]:5000", "10.0.0.5:41000", "/var/lib/trustd/admin.sock",
    "[fe80::1%eth0]:443", "[fe80::1%a=b\\c\nd]:443", "[::1]:x", "host:80", "1.2.3.4:", "::1:80",
    "=cmd|' /C calc'!A0",
]  # fmt: skip
DETAILS = [
    "{}", '{"a":1}', '{"serial":"00ab","not_after":"2026-03-01T13:00:00.000000Z"}',
    '{"x":"a=b\\\\c\\n"}', '{"k":"v,w"}', '{"q":"\\"x\\""}', '{"u":"\\u00e9\\ud83d\\ude00"}',
    '{"p":"%s|%d"}', '{"nested":{"list":[1,2,{"b":null}]}}',
]  # fmt: skip


def varied_rows(count: int = 3000) -> list[Row]:
    """Rows mixing every value above (seeded: the same rows every run), with repeats so
    that the renderers' caches are hit as well as filled."""
    rnd = random.Random(6)
    hexes = ["".join(rnd.choice("0123456789abcdef") for _ in range(64)) for _ in range(50)]
    uuid = "b7a1f80d-021e-4f19-a4c6-f0b9fd96ab45"
    rows: list[Row] = []
    for k in range(count):
        nasty = rnd.choice(NASTY)
        rows.append(
            (
                uuid if k % 3 else rnd.choice(NASTY),
                rnd.choice([1, 2, 7, 10**12]),
                TIMES[k // 2 % len(TIMES)] if k % 2 else f"2026-03-01T12:00:{k % 3:02d}.{k:06d}Z",
                EVENT_TYPES[k % len(EVENT_TYPES)] if k % 5 else nasty + ".x",
                rnd.choice(["unix", "spiffe", "system", "weird", "", nasty]),
                rnd.choice(["spiffe://trustd.local/agent/node-1", "/usr/bin/trustd", nasty]),
                rnd.choice([None, None, 0, 1000, 4294967295]),
                ADDRS[k % len(ADDRS)],
                rnd.choice(["issue", "create", "delete", "join", "export", nasty]),
                rnd.choice(["", "spiffe://trustd.local/ns/shop/sa/svc-1", "entry-1", nasty]),
                rnd.choice(["success", "failure", "success", "failure", "other", ""]),
                rnd.choice(["", "", "no registration entry matches the caller", nasty]),
                rnd.choice(DETAILS) if k % 7 else nasty,
                # prev_hash: mostly the hash of the row before, as in a log
                rows[-1][14] if rows and k % 4 else GENESIS_HASH if k % 13 else nasty,
                rnd.choice(hexes) if k % 17 else nasty,
            )
        )
    return rows + rows[: count // 3]


def outcome_of(render: Callable[[Row], str], row: Row) -> str:
    """The line, or the kind of error (a time that is not RFC 3339 cannot be exported)."""
    try:
        return render(row)
    except (ValueError, TypeError) as exc:
        return f"<{type(exc).__name__}>"


@pytest.mark.parametrize("product_version", [__version__, "1.0|beta\\x=%s\n"])
@pytest.mark.parametrize("fmt", ["csv", "ocsf", "cef"])
def test_fast_renderers_match_the_reference_on_varied_rows(fmt: str, product_version: str) -> None:
    fast = renderer(ExportFormat(fmt), product_version)  # one renderer: its caches in play
    reference = REFERENCES[fmt]
    rows = varied_rows()
    checked = 0
    for row in rows:
        expected = outcome_of(
            reference if fmt == "csv" else lambda r: reference(r, product_version), row
        )
        assert outcome_of(fast, row) == expected, row
        checked += not expected.startswith("<")
    assert checked > len(rows) * 3 // 4  # most rows render; the rest have unreadable times


def record_of(row: Row) -> AuditRecord:
    (i, seq, t, typ, kind, aid, uid, addr, action, resource, outcome, reason, details,
     prev, digest) = row  # fmt: skip
    actor = {"kind": kind, "id": aid, "uid": uid, "addr": addr}
    data = {"id": i, "seq": seq, "time": t, "type": typ, "actor": actor, "action": action,
            "resource": resource, "outcome": outcome, "reason": reason,
            "details": json.loads(details), "prev_hash": prev, "hash": digest}  # fmt: skip
    return AuditRecord(data)


@pytest.mark.parametrize("fmt", ["csv", "ocsf", "cef"])
def test_record_writers_match_the_reference(fmt: str) -> None:
    # rows from records (JSON-parsed lines) go through the same renderers
    recs = [record_of(row) for row in varied_rows(600) if row[12] in DETAILS]
    out = io.StringIO()
    n = export_events(recs, out, format=fmt)
    expected = [outcome_of(REFERENCES[fmt], row_from_record(rec)) for rec in recs]
    lines = [line for line in expected if not line.startswith("<")]  # unreadable: skipped
    assert n == len(lines) > 300
    head = ",".join(CSV_COLUMNS) + "\r\n" if fmt == "csv" else ""
    end = "\r\n" if fmt == "csv" else "\n"
    assert out.getvalue() == head + "".join(line + end for line in lines)


def stored_lines(rows: list[Row]) -> list[str]:
    """Rows as stored lines: canonical ones (escapes included, so some need the JSON
    parser), and the same lines damaged in the ways a hand-edited or torn file can be."""
    lines: list[str] = []
    for k, r in enumerate(rows):
        try:
            details = json.loads(r[12])
        except ValueError:
            details = {"text": r[12]}
        line, _ = seal(
            encode_unhashed(
                id=r[0], seq=r[1], time=r[2], type=r[3],
                actor={"kind": r[4], "id": r[5], "uid": r[6], "addr": r[7]}, action=r[8],
                resource=r[9], outcome=r[10], reason=r[11], details=details,
                prev_hash=r[13] if len(r[13]) == 64 else GENESIS_HASH,
            )
        )  # fmt: skip
        lines.append(line)
        junk = NASTY[k % len(NASTY)] or "}"
        at = (k * 37) % len(line)
        lines += [
            line[:at] + junk + line[at:],  # inserted: raw control characters, quotes, ...
            line[:at] + line[at + 1 :],  # a character lost
            line.replace('"seq":', '"seq":0', 1),  # not JSON (leading zero)
            line.replace('"uid":null', '"uid":1}', 1),
            line.replace('"kind"', '"knid"', 1),  # not the canonical fields
            line[: len(line) // 2],  # torn
        ]
    return lines


def test_row_from_line_reads_stored_lines_as_the_reference_does() -> None:
    lines = stored_lines(varied_rows(800))
    fast = 0
    for line in lines:
        expected = reference_row_from_line(line)
        assert row_from_line(line) == expected, line
        fast += expected is not None
    assert 800 < fast < len(lines)  # both the regex path and the JSON parser are used


def _time_readable(raw: str) -> bool:
    row = reference_stored_row(raw)
    try:
        return row is None or time_ms(row[2]) is not None
    except (ValueError, TypeError):  # not RFC 3339, or no time zone
        return False


@pytest.mark.parametrize("fmt", ["csv", "ocsf", "cef"])
def test_log_export_of_odd_stored_lines_matches_the_reference(open_log: OpenLog, fmt: str) -> None:
    log = open_log()
    log.append(make_event(1))
    # damaged lines as a hand-edited file has them (an export skips those it cannot read);
    # not ones with a time that does not parse: those stop an OCSF or CEF export
    lines = [line.replace("\n", " ") for line in stored_lines(varied_rows(300))]
    with segment_files(log.directory)[-1].open("a", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(line + "\n" for line in lines if _time_readable(line)))
    expected: list[str] = []
    with segment_files(log.directory)[-1].open(
        encoding="utf-8", errors="replace", newline="\n"
    ) as fh:
        for stored in fh:
            row = reference_stored_row(stored[:-1])
            if row is not None:
                expected.append(REFERENCES[fmt](row))
    out = io.StringIO()
    n = log.export(out, format=fmt)
    end = "\r\n" if fmt == "csv" else "\n"
    head = ",".join(CSV_COLUMNS) + end if fmt == "csv" else ""
    assert n == len(expected) > 300
    assert out.getvalue() == head + "".join(line + end for line in expected)


# ------------------------------------------------------------------ OCSF classes, fixed bugs

OCSF_CLASS_OF_TYPE = {
    "admin.entry.create": (6003, 1),
    "admin.entry.delete": (6003, 4),
    "admin.token.create": (6003, 1),
    "svid.issue": (3002, 3),
    "svid.deny": (3002, 3),
    "svid.renew": (3002, 5),
    "svid.other": (3002, 99),
    "agent.join": (3002, 1),
    "agent.renew": (3002, 5),
    "admin.agent.evict": (6003, 4),
    "authority.prepare": (6003, 1),
    "authority.activate": (6003, 3),
    "admin.authority.prepare": (6003, 1),
    "admin.authority.activate": (6003, 3),
    "admin.authority.taint": (6003, 3),
    "admin.authority.revoke": (6003, 4),
    "admin.policy.apply": (6003, 1),
    "admin.rollout.abort": (6003, 4),
    "admin.rollout.start": (6003, 1),
    "admin.policy.client_tls": (6003, 99),
    "admin.svid.mint": (3002, 3),
    "rollout.step": (6003, 3),
    "proxy.connection.deny": (4001, 5),
    "proxy.connection.allow": (6003, 99),
    "admin.audit.export": (6003, 2),
    "audit.torn_tail": (6003, 99),
    "admin.thing.frobnicate": (6003, 99),
}


def plain_row(**fields: Any) -> Row:
    """An svid.issue row, with ``fields`` (named as in CSV_COLUMNS) replaced."""
    values: dict[str, Any] = {
        "id": "b7a1f80d-021e-4f19-a4c6-f0b9fd96ab45",
        "seq": 5,
        "time": "2026-03-01T12:00:00.123456Z",
        "type": "svid.issue",
        "actor_kind": "spiffe",
        "actor_id": "spiffe://trustd.local/agent/node-1",
        "actor_uid": None,
        "actor_addr": "127.0.0.1:40123",
        "action": "issue",
        "resource": "spiffe://trustd.local/ns/shop/sa/svc-1",
        "outcome": "success",
        "reason": "",
        "details": '{"serial":"01"}',
        "prev_hash": GENESIS_HASH,
        "hash": "ab" * 32,
    }
    values.update(fields)
    return tuple(values[c] for c in CSV_COLUMNS)


def test_every_event_type_maps_to_its_ocsf_class() -> None:
    known = {v for k, v in vars(audit_events).items() if k.isupper() and isinstance(v, str)}
    assert {t for t in known if "." in t} <= set(OCSF_CLASS_OF_TYPE)  # a new type: add it
    render = renderer(ExportFormat.OCSF)
    for typ, (class_uid, activity_id) in OCSF_CLASS_OF_TYPE.items():
        for outcome in ("success", "failure"):
            event = json.loads(render(plain_row(type=typ, outcome=outcome)))
            assert (event["class_uid"], event["activity_id"]) == (class_uid, activity_id), typ
            assert event["type_uid"] == class_uid * 100 + activity_id
            assert event["status_id"] == (1 if outcome == "success" else 2)
            assert event["severity_id"] == (
                4
                if typ.endswith(("authority.taint", "authority.revoke"))
                else 1
                if outcome == "success"
                else 3
            )


def test_ocsf_renders_a_damaged_type_without_a_verb() -> None:
    # a hand-edited line can hold any type; one without a dot used to stop the export
    # with an IndexError (the resource type is the noun before the verb)
    event = json.loads(renderer(ExportFormat.OCSF)(plain_row(type="nodot", resource="entry-9")))
    assert event["class_uid"] == 6003 and event["activity_id"] == 99
    assert event["resources"] == [{"uid": "entry-9", "type": "nodot"}]


def test_cef_escapes_an_ipv6_zone_in_src() -> None:
    # the zone id of a link-local address is free text: it must not break the CEF line
    line = renderer(ExportFormat.CEF)(plain_row(actor_addr="[fe80::1%a=b\\c\nd]:443"))
    assert "\n" not in line
    assert " src=fe80::1%a\\=b\\\\c\\nd spt=443 " in line


# ------------------------------------------------------------------ progress and batches


class RecordingOut(io.StringIO):
    """A text stream that notes how many lines it holds after each write."""

    def __init__(self, events: list[tuple[str, int]]) -> None:
        super().__init__()
        self.events = events
        self.sizes: list[int] = []

    def write(self, text: str) -> int:
        self.sizes.append(len(text))
        n = super().write(text)
        self.events.append(("written", self.getvalue().count("\n") - 1))  # after the header
        return n


@pytest.mark.parametrize(
    ("lines", "every", "expected"),
    [
        (0, 3, [0]),
        (6, 3, [3, 6, 6]),
        (7, 3, [3, 6, 7]),
        (1000, 300, [300, 600, 900, 1000]),
        (5000, 2000, [2000, 4000, 5000]),  # more lines than one write holds
        (5, 1, [1, 2, 3, 4, 5, 5]),
    ],
)
def test_write_rendered_reports_progress_once_lines_are_written(
    lines: int, every: int, expected: list[int]
) -> None:
    events: list[tuple[str, int]] = []
    out = RecordingOut(events)
    text = [f"line {k}" for k in range(lines)]
    n = write_rendered(
        iter(text),
        out,
        progress=lambda count: events.append(("progress", count)),
        progress_every=every,
        header="h",
    )
    assert n == lines
    assert out.getvalue() == "h\n" + "".join(t + "\n" for t in text)
    assert [count for kind, count in events if kind == "progress"] == expected
    written = 0
    for kind, count in events:
        if kind == "written":
            written = count
        else:
            assert count <= written  # what progress counts is in the stream already


def test_write_rendered_writes_long_lines_in_smaller_batches() -> None:
    # batches are sized in bytes (about 64 KB), not lines: 20 KB lines go a few at a time
    out = RecordingOut([])
    text = [f"{k:05d}" + "x" * 20_000 for k in range(100)]
    assert write_rendered(text, out, line_end="\r\n") == 100
    assert out.getvalue() == "".join(t + "\r\n" for t in text)
    assert len(out.sizes) > 20
    assert max(out.sizes[1:]) <= 64 * 1024 + 20_007


def test_log_export_reports_progress(open_log: OpenLog, clock: FakeClock) -> None:
    log = open_log()
    for i in range(700):
        clock.set(START + dt.timedelta(milliseconds=i))
        log.append(make_event(i))
    for fmt in ("jsonl", "csv", "ocsf", "cef"):
        seen: list[int] = []
        out = io.StringIO()
        assert log.export(out, format=fmt, progress=seen.append, progress_every=300) == 700
        assert seen == [300, 600, 700]
        assert len(out.getvalue().splitlines()) == 700 + (fmt == "csv")


@pytest.mark.parametrize("block", [1, 5, 64, 64 * 1024])
def test_rows_are_read_from_the_files_as_a_text_file_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    # the lines a text file opened with errors="replace" gives, whatever the block size:
    # multi-byte characters and invalid UTF-8 across blocks, long lines, a torn end
    monkeypatch.setattr(audit_reader, "_BLOCK", block)
    rnd = random.Random(block)
    path = tmp_path / "segment"
    pieces = [b"\n", b"ab", b"x" * 300, "é€😀".encode(), "😀".encode()[:2], b"\xff", b"\r", b"\x00"]
    for _ in range(60):
        path.write_bytes(b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(50))))
        with path.open(encoding="utf-8", errors="replace", newline="\n") as fh:
            expected = [line[:-1] for line in fh if line.endswith("\n")]
        with path.open("rb") as fh:
            assert [line for lines in audit_reader._line_blocks(fh) for line in lines] == expected
