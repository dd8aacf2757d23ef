"""verify: each kind of damage is found, and the first damaged seq is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_helpers import OpenLog, make_event, segment_files

from trustd.audit import AuditCorruptError, AuditLog, verify
from trustd.audit.record import encode_unhashed, seal
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
