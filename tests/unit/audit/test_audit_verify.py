"""verify: each kind of damage is found, and the first damaged seq is named."""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import OpenLog, all_lines, make_event, segment_files

from trustd.audit import AuditCorruptError, AuditLog, verify
from trustd.audit.checkpoint import Checkpoint, sign_checkpoint
from trustd.audit.record import (
    ChainHead,
    SealedLines,
    check_line_hash,
    encode_unhashed,
    parse_json_line,
    record_from_json,
    seal,
    validate,
)
from trustd.audit.verify import in_use
from trustd.ca.kms.memory import MemoryKeyManager

N = 30


@pytest.fixture
def closed_log(open_log: OpenLog, audit_dir: Path) -> Path:
    """30 events in several 4 KiB segments, a checkpoint at seq 10, closed (checkpoint at 30)."""
    log = open_log(segment_max_bytes=4096)
    for i in range(N):
        log.append(make_event(i))
        if i + 1 == 10:
            log.checkpoint()
    log.close()
    assert len(segment_files(audit_dir)) >= 4
    return audit_dir


def locate(directory: Path, seq: int) -> tuple[Path, int]:
    """(segment, line index) of event ``seq``."""
    for path in segment_files(directory):
        for idx, line in enumerate(path.read_bytes().splitlines()):
            if json.loads(line)["seq"] == seq:
                return path, idx
    raise AssertionError(f"seq {seq} not found")


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def resealed(line: bytes, **changes: object) -> bytes:
    """The event with ``changes`` and a freshly computed (valid) hash: a careful forger."""
    event = json.loads(line)
    event.update(changes)
    event.pop("hash")
    unhashed = encode_unhashed(**event)
    return seal(unhashed)[0].encode() + b"\n"


def check(directory: Path, km: MemoryKeyManager) -> tuple[int | None, str]:
    report = verify(directory, key_manager=km)
    assert not report.ok
    assert report.problem
    return report.first_bad_seq, report.problem


def test_an_intact_log_verifies(closed_log: Path, km: MemoryKeyManager) -> None:
    report = verify(closed_log, key_manager=km)
    assert report.ok, report.problem
    assert report.first_bad_seq is None
    assert (report.events_checked, report.first_seq, report.last_seq) == (N, 1, N)
    assert report.checkpoints_checked == 3  # at open (seq 0), at seq 10, at close
    assert report.last_checkpoint_seq == N


def test_edited_event(closed_log: Path, km: MemoryKeyManager) -> None:
    path, idx = locate(closed_log, 17)
    lines = lines_of(path)
    lines[idx] = lines[idx].replace(b'"outcome":"success"', b'"outcome":"failure"')
    write_lines(path, lines)
    seq, problem = check(closed_log, km)
    assert seq == 17 and "modified" in problem


def test_edited_event_with_a_recomputed_hash(closed_log: Path, km: MemoryKeyManager) -> None:
    path, idx = locate(closed_log, 17)
    lines = lines_of(path)
    lines[idx] = resealed(lines[idx], resource="spiffe://trustd.local/ns/evil/sa/x")
    write_lines(path, lines)
    seq, problem = check(closed_log, km)
    assert seq == 17 and "rewritten" in problem


def test_chain_rewritten_from_an_event_to_the_end(closed_log: Path, km: MemoryKeyManager) -> None:
    # A forger who recomputes every hash after seq 17 keeps the chain consistent; the
    # checkpoint at seq 30 no longer matches, and seq 11 is the first one not vouched for.
    prev = None
    for path in segment_files(closed_log):
        lines = lines_of(path)
        for idx, line in enumerate(lines):
            event = json.loads(line)
            if event["seq"] < 17:
                prev = event["hash"]
                continue
            changes: dict[str, object] = {"prev_hash": prev}
            if event["seq"] == 17:
                changes["resource"] = "spiffe://trustd.local/ns/evil/sa/x"
            lines[idx] = resealed(line, **changes)
            prev = json.loads(lines[idx])["hash"]
        write_lines(path, lines)
    seq, problem = check(closed_log, km)
    assert seq == 11 and "rewritten" in problem


def test_deleted_event(closed_log: Path, km: MemoryKeyManager) -> None:
    path, idx = locate(closed_log, 17)
    lines = lines_of(path)
    del lines[idx]
    write_lines(path, lines)
    seq, problem = check(closed_log, km)
    assert seq == 17 and "missing" in problem


def test_reordered_events(closed_log: Path, km: MemoryKeyManager) -> None:
    path, idx = locate(closed_log, 17)
    lines = lines_of(path)
    if idx + 1 == len(lines):
        path, idx = locate(closed_log, 16)
        lines = lines_of(path)
        expected = 16
    else:
        expected = 17
    lines[idx], lines[idx + 1] = lines[idx + 1], lines[idx]
    write_lines(path, lines)
    seq, _ = check(closed_log, km)
    assert seq == expected


def test_duplicated_event(closed_log: Path, km: MemoryKeyManager) -> None:
    path, idx = locate(closed_log, 17)
    lines = lines_of(path)
    lines.insert(idx + 1, lines[idx])
    write_lines(path, lines)
    seq, problem = check(closed_log, km)
    assert seq == 17 and "again" in problem


def test_inserted_forged_event(closed_log: Path, km: MemoryKeyManager) -> None:
    # a well-formed event with the next seq, chained to 16, slipped in before the real 17
    path, idx = locate(closed_log, 16)
    lines = lines_of(path)
    sixteen = json.loads(lines[idx])
    forged = resealed(
        lines[idx],
        seq=17,
        id="00000000-0000-4000-8000-000000000000",
        prev_hash=sixteen["hash"],
        resource="spiffe://trustd.local/ns/evil/sa/x",
    )
    lines.insert(idx + 1, forged)
    write_lines(path, lines)
    seq, _ = check(closed_log, km)
    assert seq == 17


def test_truncated_tail(closed_log: Path, km: MemoryKeyManager) -> None:
    last = segment_files(closed_log)[-1]
    lines = lines_of(last)
    first_cut = json.loads(lines[-2])["seq"]
    write_lines(last, lines[:-2])
    seq, problem = check(closed_log, km)
    assert seq == first_cut == N - 1 and "truncated" in problem


def test_last_segment_deleted(closed_log: Path, km: MemoryKeyManager) -> None:
    last = segment_files(closed_log)[-1]
    first = json.loads(lines_of(last)[0])["seq"]
    last.unlink()
    seq, problem = check(closed_log, km)
    assert seq == first and "truncated" in problem


def test_middle_segment_deleted(closed_log: Path, km: MemoryKeyManager) -> None:
    middle = segment_files(closed_log)[2]
    first = json.loads(lines_of(middle)[0])["seq"]
    middle.unlink()
    seq, _ = check(closed_log, km)
    assert seq == first


def test_damage_inside_a_middle_segment(closed_log: Path, km: MemoryKeyManager) -> None:
    middle = segment_files(closed_log)[2]
    lines = lines_of(middle)
    target = json.loads(lines[1])["seq"]
    lines[1] = lines[1].replace(b'"action":"issue"', b'"action":"revoke"')
    write_lines(middle, lines)
    seq, _ = check(closed_log, km)
    assert seq == target


def test_first_segment_deleted(closed_log: Path, km: MemoryKeyManager) -> None:
    segment_files(closed_log)[0].unlink()
    seq, problem = check(closed_log, km)
    assert seq == 1 and "start" in problem


def test_first_line_of_a_segment_deleted(closed_log: Path, km: MemoryKeyManager) -> None:
    second = segment_files(closed_log)[1]
    lines = lines_of(second)
    first = json.loads(lines[0])["seq"]
    write_lines(second, lines[1:])
    seq, _ = check(closed_log, km)
    assert seq == first


def test_garbage_line(closed_log: Path, km: MemoryKeyManager) -> None:
    path, idx = locate(closed_log, 20)
    lines = lines_of(path)
    lines[idx] = b"not json at all\n"
    write_lines(path, lines)
    seq, _ = check(closed_log, km)
    assert seq == 20


def test_a_torn_last_line_is_found_offline(closed_log: Path, km: MemoryKeyManager) -> None:
    last = segment_files(closed_log)[-1]
    size = last.stat().st_size
    with last.open("ab") as fh:
        fh.write(b'{"id":"half a line')
    seq, problem = check(closed_log, km)
    assert seq == N + 1 and "torn" in problem and f"byte {size} (18 bytes" in problem


def test_a_signed_event_cut_in_half_is_a_truncated_tail(
    closed_log: Path, km: MemoryKeyManager
) -> None:
    last = segment_files(closed_log)[-1]
    lines = lines_of(last)
    write_lines(last, [*lines[:-1], lines[-1][:40]])
    seq, problem = check(closed_log, km)
    assert seq == N and "truncated" in problem and "torn" in problem


def test_a_line_being_appended_after_the_head_is_not_damage(
    closed_log: Path, open_log: OpenLog
) -> None:
    log = open_log()
    with segment_files(closed_log)[-1].open("ab") as fh:
        fh.write(b'{"id":"half a line')  # the writer's next append, half-way through its write
    report = log.verify()
    assert report.ok, report.problem
    assert report.head_seq == N


def test_altered_checkpoint(closed_log: Path, km: MemoryKeyManager) -> None:
    path = closed_log / "checkpoints.jsonl"
    lines = lines_of(path)
    lines[-1] = lines[-1].replace(f'"seq":{N}'.encode(), f'"seq":{N - 5}'.encode())
    write_lines(path, lines)
    report = verify(closed_log, key_manager=km)
    assert not report.ok and "signature" in report.problem


def test_checkpoint_signed_by_another_key(closed_log: Path, km: MemoryKeyManager) -> None:
    from trustd.audit.checkpoint import Checkpoint, sign_checkpoint

    path = closed_log / "checkpoints.jsonl"
    lines = lines_of(path)
    real = Checkpoint.from_line(lines[-1])
    rogue_km = MemoryKeyManager()
    rogue = rogue_km.create_key(real.key.key_id)  # same name, different key
    forged = sign_checkpoint(
        rogue_km,
        rogue,
        seq=N - 2,
        hash=real.hash,
        time=real.time,
        first_seq=real.first_seq,
        first_prev_hash=real.first_prev_hash,
    )
    lines[-1] = forged.to_line().encode() + b"\n"
    write_lines(path, lines)
    report = verify(closed_log, key_manager=km)
    assert not report.ok and "signature" in report.problem


def test_checkpoint_file_removed(closed_log: Path, km: MemoryKeyManager) -> None:
    (closed_log / "checkpoints.jsonl").unlink()
    report = verify(closed_log, key_manager=km)
    assert not report.ok and "checkpoint" in report.problem


def test_audit_key_file_removed(closed_log: Path, km: MemoryKeyManager) -> None:
    (closed_log / "audit-key.json").unlink()
    report = verify(closed_log, key_manager=km)
    assert not report.ok and "audit-key.json" in report.problem


def test_external_anchor_catches_a_cut_beyond_the_last_checkpoint(
    closed_log: Path, km: MemoryKeyManager
) -> None:
    report = verify(closed_log, key_manager=km, min_seq=N + 5)  # a SIEM has seen seq 35
    assert not report.ok and report.first_bad_seq == N + 1


def test_reopening_a_truncated_log_is_refused(
    closed_log: Path, km: MemoryKeyManager, open_log: OpenLog
) -> None:
    last = segment_files(closed_log)[-1]
    write_lines(last, lines_of(last)[:-3])
    with pytest.raises(AuditCorruptError, match="cut off"):
        open_log()


def test_reopening_with_a_signed_event_torn_is_refused_and_changes_nothing(
    closed_log: Path, open_log: OpenLog
) -> None:
    last = segment_files(closed_log)[-1]
    lines = lines_of(last)
    write_lines(last, [*lines[:-1], lines[-1][:40]])
    before = {p.name: p.read_bytes() for p in closed_log.iterdir()}
    with pytest.raises(AuditCorruptError, match="cut off"):
        open_log()
    assert {p.name: p.read_bytes() for p in closed_log.iterdir()} == before  # kept as evidence


def test_reopening_without_checkpoints_is_refused(closed_log: Path, open_log: OpenLog) -> None:
    (closed_log / "checkpoints.jsonl").unlink()
    with pytest.raises(AuditCorruptError, match="checkpoint"):
        open_log()


def test_auditlog_verify_matches_offline_verify(
    closed_log: Path, km: MemoryKeyManager, open_log: OpenLog
) -> None:
    log: AuditLog = open_log()
    path, idx = locate(closed_log, 5)
    lines = lines_of(path)
    lines[idx] = lines[idx].replace(b"authority-1", b"authority-2")
    write_lines(path, lines)
    online = log.verify()
    assert online == verify(closed_log, key_manager=km, head=log.head)
    assert online.first_bad_seq == 5


# ------------------------------------------------------------------ against the running head


@pytest.fixture
def running(open_log: OpenLog) -> AuditLog:
    """A writer still running: 30 events in one segment, the last checkpoint at seq 20."""
    log = open_log()
    for i in range(N):
        log.append(make_event(i))
        if i + 1 == 20:
            log.checkpoint()
    return log


def test_a_tail_cut_after_the_last_checkpoint_is_found_against_the_head(
    running: AuditLog, audit_dir: Path, km: MemoryKeyManager
) -> None:
    (path,) = segment_files(audit_dir)
    write_lines(path, lines_of(path)[:-3])
    assert verify(audit_dir, key_manager=km).ok  # the files alone: nothing signed covers 28..30
    report = running.verify()
    assert not report.ok
    assert report.first_bad_seq == N - 2
    assert (
        f"truncated: events {N - 2}..{N} are missing after the last one on disk" in report.problem
    )
    assert report.head_seq == N


def test_a_torn_tail_is_found_against_the_head(running: AuditLog, audit_dir: Path) -> None:
    (path,) = segment_files(audit_dir)
    lines = lines_of(path)
    write_lines(path, [*lines[:-1], lines[-1][:40]])
    report = running.verify()
    assert not report.ok and report.first_bad_seq == N
    assert f"event {N} is missing" in report.problem and "torn line" in report.problem


def test_a_tail_rewritten_after_the_last_checkpoint_is_found_against_the_head(
    running: AuditLog, audit_dir: Path, km: MemoryKeyManager
) -> None:
    (path,) = segment_files(audit_dir)
    lines = lines_of(path)
    prev = json.loads(lines[24])["hash"]
    for idx in range(25, N):  # seq 26..30, rechained with fresh hashes
        changes: dict[str, object] = {"prev_hash": prev}
        if idx == 25:
            changes["resource"] = "spiffe://trustd.local/ns/evil/sa/x"
        lines[idx] = resealed(lines[idx], **changes)
        prev = json.loads(lines[idx])["hash"]
    write_lines(path, lines)
    assert verify(audit_dir, key_manager=km).ok
    report = running.verify()
    assert not report.ok and report.first_bad_seq == 21  # the first event no checkpoint covers
    assert "head" in report.problem and "rewritten" in report.problem


def test_in_use_tells_whether_a_writer_holds_the_log(running: AuditLog, audit_dir: Path) -> None:
    assert in_use(audit_dir)
    running.close()
    assert not in_use(audit_dir)
    assert not in_use(audit_dir / "missing")


# ------------------------------------------------------------------ canonical lines read from bytes


def sealed_bytes(body: bytes) -> bytes:
    """``body`` (an event without ``hash``, as JSON text) with the hash check_line_hash
    expects of it: its SHA-256, whatever its form."""
    digest = hashlib.sha256(body).hexdigest().encode()
    return body[:-1] + b',"hash":"' + digest + b'"}'


def full_parse(line: bytes) -> tuple[int, str, str] | None:
    """(seq, prev_hash, hash) of a line the full parse accepts and whose hash checks out."""
    hashes = check_line_hash(line)
    try:
        rec = record_from_json(parse_json_line(line.decode("utf-8", errors="replace")))
        validate(rec)
    except ValueError:
        return None
    if hashes is None or hashes[0] != hashes[1] or hashes[0] != rec.hash:
        return None
    return rec.seq, rec.prev_hash, rec.hash


def canonical_body(**changes: Any) -> bytes:
    event: dict[str, Any] = {
        "id": "b7a1f80d-021e-4f19-a4c6-f0b9fd96ab45",
        "seq": 7,
        "time": "2026-03-01T12:00:00.123456Z",
        "type": "svid.issue",
        "actor": {"kind": "spiffe", "id": "spiffe://td/agent", "uid": None, "addr": "1.2.3.4:5"},
        "action": "issue",
        "resource": "spiffe://trustd.local/ns/shop/sa/api",
        "outcome": "success",
        "reason": "",
        "details": {"serial": "00ab", "ttl": 3600},
        "prev_hash": "ab" * 32,
    }
    event.update(changes)
    return encode_unhashed(**event).encode()


# Text put in place of a piece of a canonical line: what the canonical encoding never
# writes (escapes, raw control and non-ASCII bytes, spaces, odd numbers), or writes but
# the fast path leaves to the full parse (deep details, long numbers).
ODD_VALUES = [
    b'""', b'"a\\"b"', b'"\\u0041"', b'"\\\\"', b'"a\\nb"', b'"\x01"', b'"\x7f"', b'"\xc3\xa9"',
    b'"\xff"', b'" "', b"0", b"-0", b"01", b"-1", b"1.5", b"1e3", b"1E+3", b"-1.5e-3", b"1.",
    b".5", b"1e", b"NaN", b"Infinity", b"-Infinity", b"true", b"false", b"null", b"[]", b"{}",
    b"9" * 18, b"9" * 19, b"9" * 5000, b"1." + b"5" * 18, b"1e1234", b'"x" ', b" 1", b"[1,[2]]",
    b'{"a":{"b":1}}', b'[{"a":1}]', b'{"a":[1]}', b"[1,]", b'{"a":1,}', b'{"a"}', b'{"a":1 }',
]  # fmt: skip
# Raw values for one field: 64 bytes that are not a 64-character string (escapes,
# control and non-ASCII bytes), times that are RFC 3339 only in part.
ODD_FIELD_VALUES = {
    b'"prev_hash":': [
        b'"\\u0041' + b"a" * 58 + b'"', b'"\\\\' + b"a" * 62 + b'"', b'"\\"' + b"a" * 62 + b'"',
        b'"\x01' + b"a" * 63 + b'"', b'"\xc3\xa9' + b"a" * 62 + b'"', b'"' + b"a" * 64 + b'"',
        b'"' + b" " * 64 + b'"', b'"' + b"a" * 65 + b'"',
    ],
    b'"time":': [
        b'"2026-03-01T12:00:00.12a456Z"', b'"2026-03-01T12:00:00.123a56Z"',
        b'"2026-03-01T12:00:0a.123456Z"', b'"2026-03-01T12:00:00.\xd9\xa1\xd9\xa2\xd9\xa3456Z"',
        b'"2026-03-01T12:00:00.1234567Z"', b'"2026-03-01T12:00:00 123456Z"',
        b'"2026-03-01T12:00:00.\\u0031\\u0032\\u0033456Z"',
    ],
}  # fmt: skip


def odd_lines() -> list[bytes]:
    """Lines near the canonical shape: each field's value replaced by each odd value,
    sealed with a matching hash, and the same lines with a wrong hash."""
    base = canonical_body()
    lines = [sealed_bytes(base)]
    fields = [
        b'"id":', b'"seq":', b'"time":', b'"type":', b'"kind":', b'"uid":', b'"addr":',
        b'"action":', b'"resource":', b'"outcome":', b'"reason":', b'"details":',
        b'"serial":', b'"ttl":', b'"prev_hash":',
    ]  # fmt: skip
    for field in fields:
        start = base.index(field) + len(field)
        end = _value_end(base, start)
        values = ODD_VALUES + ODD_FIELD_VALUES.get(field, [])
        lines += [sealed_bytes(base[:start] + value + base[end:]) for value in values]
    times = [
        "2026-13-01T12:00:00.123456Z", "2026-02-30T12:00:00.123456Z", "2026-03-01T24:00:00.000000Z",
        "2026-03-01T12:00:00Z", "2026-03-01T12:00:00.12345Z", "2026-03-01T12:00:00.123456z",
        "2026-03-01T12:00:00.123456+00:00", "0000-03-01T12:00:00.123456Z",
        "9999-12-31T23:59:59.999999Z", "1969-12-31T23:59:59.999999Z",
    ]  # fmt: skip
    lines += [sealed_bytes(canonical_body(time=t)) for t in times]
    details: tuple[dict[str, Any], ...] = (
        {}, {"a": []}, {"a": {}}, {"a": [1, "x", None, True]}, {"b": 1, "a": 2},
        {"a": {"b": [1]}}, {"a": 1.25}, {"a": -(10**17)}, {"a": "\u00e9"},
    )  # fmt: skip
    lines += [sealed_bytes(canonical_body(details=d)) for d in details]
    lines += [sealed_bytes(canonical_body(prev_hash=p)) for p in ("A" * 64, "x" * 64, "a" * 63)]
    lines.append(sealed_bytes(base.replace(b":", b": ")))
    lines.append(sealed_bytes(base.replace(b'"outcome":"success"', b'"outcome":"failure"')))
    lines.append(sealed_bytes(base.replace(b'"id":', b'"ID":', 1)))
    lines.append(sealed_bytes(base.replace(b',"reason":""', b"")))
    wrong = [line[:-3] + (b"1" if line[-3:-2] == b"0" else b"0") + line[-2:] for line in lines]
    upper = [line[:-66] + line[-66:-2].upper() + line[-2:] for line in lines]
    cut = [line[:-1] for line in lines]
    spaced = [line + b" " for line in lines]
    return lines + wrong + upper + cut + spaced


def _value_end(text: bytes, start: int) -> int:
    """Where the JSON value starting at ``start`` ends."""
    _, end = json.JSONDecoder().raw_decode(text.decode(), start)
    return end


def test_sealed_lines_find_what_the_full_parse_finds() -> None:
    shared = SealedLines()
    lines = odd_lines()
    fast = 0
    for line in lines:
        found = shared.fields(line)
        assert found == SealedLines().fields(line), line
        if found is not None:
            assert found == full_parse(line), line
            fast += 1
    assert 20 < fast < len(lines) // 2  # the fast path reads some lines, not most of these


def test_sealed_lines_read_every_line_a_log_writes(closed_log: Path) -> None:
    sealed = SealedLines()
    for line in all_lines(closed_log):
        assert sealed.fields(line[:-1]) == full_parse(line[:-1]) is not None


class _FullParseOnly:
    """SealedLines that reads nothing: every line takes the full parse."""

    def fields(self, line: bytes) -> None:
        return None


def damages(directory: Path, km: MemoryKeyManager, rnd: random.Random) -> Iterator[str]:
    """Damage the log in ``directory`` one way after another (restored in between),
    yielding what was done."""
    paths = segment_files(directory)
    originals = {path: path.read_bytes() for path in paths}
    odd = b'"\\\x00\x01\x7f\xff\xc3 0a}{:,\n'
    for n in range(300):
        path = rnd.choice(paths)
        lines = lines_of(path)
        idx = rnd.randrange(len(lines))
        line = lines[idx]
        kind = n % 10
        if kind == 8:  # a segment renamed: its name no longer gives its first seq
            first = int(path.name[6:-6])
            renamed = path.with_name(f"audit-{first + rnd.choice([-1, 1]):016d}.jsonl")
            if renamed.exists():
                continue
            path.rename(renamed)
            yield f"renamed {path.name}"
            renamed.rename(path)
            continue
        if kind == 9:  # the last checkpoint re-signed with its anchor inside the log
            yield from _anchored_inside(directory, km, json.loads(line), rnd)
            continue
        if kind == 0:  # a byte changed, dropped or added
            at = rnd.randrange(len(line) - 1)
            byte = odd[rnd.randrange(len(odd)) :][:1]
            lines[idx] = rnd.choice(
                [
                    line[:at] + byte + line[at + 1 :],
                    line[:at] + line[at + 1 :],
                    line[:at] + byte + line[at:],
                ]
            )
        elif kind == 1:  # a line dropped, doubled or moved
            moved = lines.pop(idx)
            if rnd.random() < 0.7:
                lines.insert(rnd.randrange(len(lines) + 1), moved)
            if rnd.random() < 0.3:
                lines.insert(idx, moved)
        elif kind == 2:  # the same event in another (valid) JSON form, with its hash
            event = json.loads(line)
            event.pop("hash")
            forms: list[dict[str, Any]] = [
                {"separators": (", ", ": ")},
                {"ensure_ascii": False, "separators": (",", ":")},
                {"separators": (",", ":"), "indent": None, "sort_keys": False},
            ]
            form = rnd.choice(forms)
            if rnd.random() < 0.5:
                event["resource"] = rnd.choice(["caf\u00e9", "a\\b", 'q"q', "tab\there", "ok"])
            if rnd.random() < 0.3:
                event["details"] = rnd.choice(
                    [{"deep": {"er": {"est": 1}}}, {"f": 1.5}, {"z": 1, "a": [2, {"b": None}]}]
                )
            lines[idx] = sealed_bytes(json.dumps(event, **form).encode()) + b"\n"
        elif kind == 3:  # a field changed and the line resealed: its hash checks out
            changes = rnd.choice(
                [{"seq": json.loads(line)["seq"] + rnd.choice([-1, 1])}, {"prev_hash": "f" * 64},
                 {"resource": "spiffe://trustd.local/ns/evil/sa/x"}, {"time": "2026-13-01T00:00:00.000000Z"}]
            )  # fmt: skip
            lines[idx] = resealed(line, **changes)
        elif kind == 4:  # the last segment cut anywhere
            path = paths[-1]
            data = originals[path]
            path.write_bytes(data[: rnd.randrange(len(data))])
            yield f"cut {path.name}"
            path.write_bytes(data)
            continue
        elif kind == 5:  # a segment that does not end with a newline
            lines[-1] = lines[-1][:-1]
        elif kind == 6:  # the chain rewritten from an event on, in the canonical form
            prev = json.loads(lines[idx - 1])["hash"] if idx else "0" * 64
            for k in range(idx, len(lines)):
                lines[k] = resealed(
                    lines[k], prev_hash=prev, id=f"{k:08d}-0000-4000-8000-000000000000"
                )
                prev = json.loads(lines[k])["hash"]
        else:  # garbage
            lines[idx] = rnd.choice(
                [b"\n", b"{}\n", b"null\n", b"[1,2]\n", line[: len(line) // 2] + b"\n"]
            )
        write_lines(path, lines)
        yield f"{kind} {path.name}:{idx}"
        path.write_bytes(originals[path])


def _anchored_inside(
    directory: Path, km: MemoryKeyManager, event: dict[str, Any], rnd: random.Random
) -> Iterator[str]:
    path = directory / "checkpoints.jsonl"
    original = path.read_bytes()
    lines = lines_of(path)
    real = Checkpoint.from_line(lines[-1])
    anchor = rnd.choice([event["prev_hash"], "e" * 64])
    forged = sign_checkpoint(
        km, real.key, seq=real.seq, hash=real.hash, time=real.time,
        first_seq=event["seq"], first_prev_hash=anchor,
    )  # fmt: skip
    lines[-1] = forged.to_line().encode() + b"\n"
    write_lines(path, lines)
    yield f"anchored at {event['seq']}"
    path.write_bytes(original)


def test_verify_reports_what_the_full_parse_reports(
    closed_log: Path, km: MemoryKeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the fast path for canonical lines must not change a single report
    verify_module = importlib.import_module("trustd.audit.verify")
    last = json.loads(lines_of(segment_files(closed_log)[-1])[-1])
    heads = [None, ChainHead(seq=N, hash=last["hash"]), ChainHead(seq=N - 3, hash="0" * 64)]
    seen: set[str] = set()
    for n, what in enumerate(damages(closed_log, km, random.Random(7))):
        head = heads[n % len(heads)]
        fast = verify(closed_log, key_manager=km, head=head)
        with monkeypatch.context() as m:
            m.setattr(verify_module, "SealedLines", _FullParseOnly)
            full = verify(closed_log, key_manager=km, head=head)
        assert fast == full, what
        seen.add(fast.problem.split(":")[0].split(" ")[-1] if fast.problem else "ok")
    assert len(seen) > 8  # many kinds of damage were found


@pytest.mark.parametrize("block", [1, 7, 64, 64 * 1024])
def test_segments_are_read_as_a_whole_file_would_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    verify_module = importlib.import_module("trustd.audit.verify")
    monkeypatch.setattr(verify_module, "_BLOCK", block)
    rnd = random.Random(block)
    path = tmp_path / "segment"
    for _ in range(60):
        pieces = [b"\n", b"x" * rnd.randrange(200), b"\xc3\xa9", b"\xff", b"\r"]
        data = b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(40)))
        path.write_bytes(data)
        lines = verify_module._SegmentLines(path)
        expected = data.split(b"\n")
        assert list(lines) == expected[:-1], data
        assert (lines.torn, lines.size) == (expected[-1], len(data))
        assert verify_module._unterminated(path) == (data[-1:] not in (b"", b"\n"))
