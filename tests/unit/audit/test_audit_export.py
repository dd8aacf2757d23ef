"""Exports: JSON lines, CSV, OCSF and CEF fields and escaping; no secrets anywhere."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re

import pytest
from audit_helpers import ADMIN, AGENT, START, OpenLog, make_event
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


def ocsf_events(log: AuditLog) -> dict[int, dict[str, object]]:
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
        assert ev["unmapped"]["hash"] == rec.hash  # type: ignore[index]
        assert ev["unmapped"]["details"] == rec.details  # type: ignore[index]
        assert "src_endpoint" in ev
    assert events[1]["time"] % 1000 == 123
    assert events[1]["src_endpoint"] == {"ip": "127.0.0.1", "port": 40123}
    assert events[6]["src_endpoint"] == {"ip": "::1", "port": 5000}
    assert events[3]["src_endpoint"] == {"name": "/var/lib/trustd/admin.sock"}
    assert events[3]["actor"]["user"]["uid"] == "0"  # type: ignore[index]
    assert events[3]["api"] == {"operation": "create", "service": {"name": "trustd"}}
    assert events[3]["resources"] == [{"uid": "entry-1", "type": "entry"}]
    assert events[1]["user"]["uid"] == "spiffe://trustd.local/ns/shop/sa/svc-1"  # type: ignore[index]
    assert events[2]["status_detail"] == TRICKY
    assert events[7]["dst_endpoint"] == {"name": "spiffe://trustd.local/ns/b/sa/server"}


def test_to_ocsf_matches_the_writer(log: AuditLog) -> None:
    rec = records(log)[2]
    assert to_ocsf(rec) == ocsf_events(log)[3]


# ------------------------------------------------------------------ CEF


def split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    parts, cur, i = [], "", 0
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


def cef_lines(log: AuditLog, **kw: str) -> list[str]:
    out = io.StringIO()
    write_cef(log.iter_events(), out, **kw)
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
    leaks = [
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
