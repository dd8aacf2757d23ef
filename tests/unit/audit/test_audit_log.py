"""AuditLog: the stored format, the chain, segments, checkpoints, retention, restart, reading."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import (
    ADMIN,
    REPO_ROOT,
    START,
    OpenLog,
    all_lines,
    make_event,
    segment_files,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from trustd.audit import (
    GENESIS_HASH,
    Actor,
    AuditEvent,
    AuditSink,
    AuditWriteError,
    Checkpoint,
    tail,
    verify,
)
from trustd.audit.record import FIELDS
from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.errors import UnavailableError


def read_events(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in all_lines(directory)]


def checkpoints(directory: Path) -> list[Checkpoint]:
    path = directory / "checkpoints.jsonl"
    return [Checkpoint.from_line(line) for line in path.read_bytes().splitlines()]


# ------------------------------------------------------------------ format and chain


def test_append_returns_consecutive_seqs(open_log: OpenLog) -> None:
    log = open_log()
    assert [log.append(make_event(i)) for i in range(5)] == [1, 2, 3, 4, 5]
    assert log.head.seq == 5


def test_lines_hold_exactly_the_spec_fields(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log()
    log.append(make_event(1, outcome="failure", reason="no matching entry"))
    (event,) = read_events(audit_dir)
    assert tuple(event) == FIELDS
    assert tuple(event) == (
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
    assert event["actor"] == {
        "kind": "spiffe",
        "id": "spiffe://trustd.local/agent/node-1",
        "uid": None,
        "addr": "127.0.0.1:40123",
    }
    assert event["time"] == "2026-03-01T12:00:00.000000Z"  # RFC 3339, UTC
    assert dt.datetime.fromisoformat(str(event["time"])) == START
    assert event["outcome"] == "failure"
    assert event["reason"] == "no matching entry"
    assert event["details"] == {
        "issuer": "authority-1",
        "not_after": "2026-03-01T13:00:00.000000Z",
        "serial": f"{1:032x}",
    }
    assert len(str(event["id"])) == 36


def test_hash_is_sha256_of_canonical_json_and_chains(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log()
    for i in range(4):
        log.append(make_event(i, details={"b": 1, "a": {"z": "é", "c": [1, "x"]}}))
    prev = GENESIS_HASH
    for event in read_events(audit_dir):
        body = {k: v for k, v in event.items() if k != "hash"}
        canonical = json.dumps(body, separators=(",", ":"), ensure_ascii=True)
        assert event["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert event["prev_hash"] == prev
        prev = str(event["hash"])
    assert log.head.hash == prev


def test_append_is_on_disk_before_it_returns(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log()
    seq = log.append(make_event(1))
    # a separate reader sees it at once: written and flushed, not buffered
    assert json.loads(all_lines(audit_dir)[-1])["seq"] == seq


def test_directory_is_0700_and_files_0600(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log()
    log.append(make_event(1))
    log.close()
    assert stat.S_IMODE(audit_dir.stat().st_mode) == 0o700
    files = list(audit_dir.iterdir())
    assert {p.name for p in files} >= {
        "checkpoints.jsonl",
        "audit-key.json",
        "token-hmac.key",
        "audit-0000000000000001.jsonl",
    }
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_existing_directory_with_loose_mode_is_tightened(
    open_log: OpenLog, audit_dir: Path
) -> None:
    audit_dir.mkdir(mode=0o755)
    os.chmod(audit_dir, 0o755)
    open_log()
    assert stat.S_IMODE(audit_dir.stat().st_mode) == 0o700


def test_a_second_writer_on_the_same_directory_is_refused(open_log: OpenLog) -> None:
    open_log()
    with pytest.raises(AuditWriteError, match="in use"):
        open_log()


def test_concurrent_appends_get_unique_seqs_and_one_chain(open_log: OpenLog) -> None:
    log = open_log()
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(150):
            seq = log.append(make_event(n * 1000 + i))
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 901))
    report = log.verify()
    assert report.ok, report.problem
    assert report.events_checked == 900


def test_the_log_is_the_audit_sink_and_append_many_returns_the_seqs_in_order(
    open_log: OpenLog,
) -> None:
    log = open_log()
    sink: AuditSink = log
    actor = Actor(kind="unix", id="uid:0", uid=0, addr="/tmp/admin.sock")
    seqs = sink.append_many(
        [
            AuditEvent(type="admin.entry.delete", actor=actor, action="delete", resource="e-1"),
            AuditEvent(type="admin.entry.delete", actor=actor, action="delete", resource="e-2"),
        ]
    )
    recs = list(log.iter_events())
    assert [r.seq for r in recs] == seqs == [seqs[0], seqs[0] + 1]
    assert [r.resource for r in recs] == ["e-1", "e-2"] and recs[0].actor.uid == 0


# ------------------------------------------------------------------ segments


def test_segments_rotate_by_size_and_chain_across_them(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log(segment_max_bytes=4096)
    for i in range(40):
        log.append(make_event(i))
    files = segment_files(audit_dir)
    assert len(files) > 3
    for path in files:
        assert path.stat().st_size <= 4096
        first = json.loads(path.read_bytes().splitlines()[0])
        assert path.name == f"audit-{first['seq']:016d}.jsonl"
    assert [r.seq for r in log.iter_events()] == list(range(1, 41))
    report = log.verify()
    assert report.ok and report.events_checked == 40


def test_segments_rotate_at_utc_midnight(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    clock.set(dt.datetime(2026, 3, 1, 23, 59, 58, tzinfo=dt.UTC))
    log = open_log()
    log.append(make_event(1))
    log.append(make_event(2))
    clock.set(dt.datetime(2026, 3, 2, 0, 0, 1, tzinfo=dt.UTC))
    log.append(make_event(3))
    files = segment_files(audit_dir)
    assert [f.name for f in files] == [
        "audit-0000000000000001.jsonl",
        "audit-0000000000000003.jsonl",
    ]
    assert log.verify().ok


def test_daily_rotation_can_be_turned_off(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    log = open_log(rotate_daily=False)
    log.append(make_event(1))
    clock.advance(dt.timedelta(days=2))
    log.append(make_event(2))
    assert len(segment_files(audit_dir)) == 1


# ------------------------------------------------------------------ checkpoints


def test_checkpoints_at_open_interval_and_close(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    log = open_log(checkpoint_interval=dt.timedelta(minutes=5))
    assert [(c.seq, c.hash) for c in checkpoints(audit_dir)] == [(0, GENESIS_HASH)]
    log.append(make_event(1))
    clock.advance(dt.timedelta(minutes=4))
    log.append(make_event(2))
    assert len(checkpoints(audit_dir)) == 1
    clock.advance(dt.timedelta(minutes=2))
    log.append(make_event(3))
    cps = checkpoints(audit_dir)
    assert len(cps) == 2 and cps[-1].seq == 3 and cps[-1].hash == log.head.hash
    log.append(make_event(4))
    log.close()
    cps = checkpoints(audit_dir)
    assert cps[-1].seq == 4 and cps[-1].hash == log.head.hash
    assert cps[-1].time == "2026-03-01T12:06:00.000000Z"


def test_checkpoint_if_due_is_for_timers(open_log: OpenLog, clock: FakeClock) -> None:
    log = open_log(checkpoint_interval=dt.timedelta(minutes=5))
    log.append(make_event(1))
    assert log.checkpoint_if_due() is None
    clock.advance(dt.timedelta(minutes=5))
    cp = log.checkpoint_if_due()
    assert cp is not None and cp.seq == 1
    clock.advance(dt.timedelta(minutes=5))
    assert log.checkpoint_if_due() is None  # nothing new since


def test_checkpoint_is_signed_by_the_audit_key_in_the_key_manager(
    open_log: OpenLog, audit_dir: Path, km: MemoryKeyManager
) -> None:
    log = open_log()
    log.append(make_event(1))
    cp = log.checkpoint()
    assert cp.key == log.key_ref and cp.key.key_id.startswith("audit-")
    line = json.loads((audit_dir / "checkpoints.jsonl").read_bytes().splitlines()[-1])
    signature = base64.b64decode(line.pop("signature"))
    payload = json.dumps(line, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(b"trustd audit checkpoint v1\n" + payload).digest()
    public = km.public_key(cp.key)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert line["seq"] == 1 and line["hash"] == log.head.hash


def test_audit_key_ref_is_persisted_and_reused(
    open_log: OpenLog, audit_dir: Path, km: MemoryKeyManager
) -> None:
    log = open_log(key_name="audit-main")
    ref = log.key_ref
    log.close()
    stored = json.loads((audit_dir / "audit-key.json").read_text())
    assert KeyRef.from_json(stored["current"]) == ref
    again = open_log()
    assert again.key_ref == ref  # no second key was created (the name would clash)


class FlakyKms(MemoryKeyManager):
    """A key manager whose signing can be switched off, like a sealed OpenBao."""

    down = False

    def sign(self, ref: KeyRef, digest: bytes) -> bytes:
        if self.down:
            raise UnavailableError("key manager is sealed: unseal it")
        return super().sign(ref, digest)


def test_a_failed_checkpoint_does_not_fail_the_append(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    kms = FlakyKms()
    log = open_log(key_manager=kms, checkpoint_interval=dt.timedelta(minutes=5))
    kms.down = True
    clock.advance(dt.timedelta(minutes=6))
    assert log.append(make_event(1)) == 1  # recorded; the checkpoint is retried later
    assert len(checkpoints(audit_dir)) == 1
    with pytest.raises(UnavailableError):
        log.checkpoint()
    kms.down = False
    clock.advance(dt.timedelta(minutes=1))
    log.append(make_event(2))
    assert checkpoints(audit_dir)[-1].seq == 2


def test_p384_and_rsa_audit_keys_sign_verifiable_checkpoints(audit_dir: Path) -> None:
    from trustd.audit.checkpoint import sign_checkpoint, signature_valid

    km = MemoryKeyManager()
    for alg in (KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048):
        ref = km.create_key(f"audit-{alg.value}", alg)
        cp = sign_checkpoint(
            km, ref, seq=3, hash="a" * 64, time="t", first_seq=1, first_prev_hash=GENESIS_HASH
        )
        assert signature_valid(cp, km.public_key(ref))
        forged = Checkpoint.from_line(cp.to_line().replace('"seq":3', '"seq":4'))
        assert not signature_valid(forged, km.public_key(ref))


# ------------------------------------------------------------------ restart


def test_restart_continues_the_chain(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log()
    for i in range(3):
        log.append(make_event(i))
    head = log.head
    log.close()
    again = open_log()
    assert again.head == head
    assert again.append(make_event(9)) == 4
    events = read_events(audit_dir)
    assert events[-1]["prev_hash"] == head.hash
    report = again.verify()
    assert report.ok and report.events_checked == 4


CRASH_SCRIPT = """
import datetime as dt, json, os, sys
from pathlib import Path
from trustd.audit import Actor, AuditEvent, AuditLog
from trustd.ca.kms.local import LocalKeyManager
from trustd.clock import SystemClock
d = Path(sys.argv[1])
km = LocalKeyManager(d / "keys", b"k" * 32)
log = AuditLog(d / "audit", key_manager=km, clock=SystemClock())
for i in range(int(sys.argv[2])):
    log.append(AuditEvent(type="svid.issue", actor=Actor.system(), action="issue"))
print(json.dumps({"seq": log.head.seq, "hash": log.head.hash}), flush=True)
os._exit(0)  # no close(): like a crash or a kill -9
"""


def test_restart_after_a_crash_keeps_every_written_event(tmp_path: Path) -> None:
    from trustd.audit import AuditLog
    from trustd.ca.kms.local import LocalKeyManager
    from trustd.clock import SystemClock

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path), "25"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    head = json.loads(out.stdout.strip().splitlines()[-1])
    # the crash also left half a line behind
    segment = segment_files(tmp_path / "audit")[-1]
    with segment.open("ab") as fh:
        fh.write(b'{"id":"torn')
    km = LocalKeyManager(tmp_path / "keys", b"k" * 32)
    log = AuditLog(tmp_path / "audit", key_manager=km, clock=SystemClock())
    try:
        recovered = read_events(tmp_path / "audit")[-1]
        assert (recovered["seq"], recovered["type"]) == (26, "audit.torn_tail")
        assert recovered["prev_hash"] == head["hash"]  # the chain goes on from the last whole event
        assert log.append(AuditEvent(type="svid.issue", actor=Actor.system(), action="x")) == 27
        report = log.verify()
        assert report.ok, report.problem
        assert report.events_checked == 27
    finally:
        log.close()


TORN = b'{"id":"5d2c3f0e-8a1b-4c6d-9e7f-0a1b2c3d4e5f","seq":6,"time":"2026-03-01T12:00:0'


def test_a_torn_last_line_is_set_aside_and_recorded_at_open(
    open_log: OpenLog, audit_dir: Path, km: MemoryKeyManager
) -> None:
    log = open_log()
    for i in range(5):
        log.append(make_event(i))
    head = log.head
    log.close()
    (segment,) = segment_files(audit_dir)
    offset = segment.stat().st_size
    with segment.open("ab") as fh:
        fh.write(TORN)

    again = open_log()
    kept = audit_dir / f"{segment.name}.{offset}.torn"
    assert kept.read_bytes() == TORN  # never deleted
    assert not list(audit_dir.glob("*.pending"))
    events = read_events(audit_dir)  # every line parses: the torn bytes left the segment
    recovered = events[-1]
    assert (recovered["seq"], recovered["type"]) == (6, "audit.torn_tail")
    assert recovered["prev_hash"] == head.hash
    assert recovered["actor"]["kind"] == "system" and recovered["outcome"] == "success"
    assert recovered["details"] == {
        "segment": segment.name,
        "offset": offset,
        "length": len(TORN),
        "file": kept.name,
        "sha256": hashlib.sha256(TORN).hexdigest(),
    }
    assert "5d2c3f0e" not in json.dumps(recovered)  # where and how much, not what
    assert checkpoints(audit_dir)[-1].seq == 6  # the recovery is signed at once
    assert again.append(make_event(9)) == 7
    assert again.verify().ok
    again.close()
    report = verify(audit_dir, key_manager=km)
    assert report.ok, report.problem
    assert report.events_checked == 7


def test_a_segment_holding_only_a_torn_line_is_set_aside_whole(
    open_log: OpenLog, audit_dir: Path
) -> None:
    log = open_log()
    for i in range(3):
        log.append(make_event(i))
    log.close()
    started = audit_dir / "audit-0000000000000004.jsonl"  # a new segment, its first write cut
    started.write_bytes(TORN)
    again = open_log()
    assert (audit_dir / f"{started.name}.0.torn").read_bytes() == TORN
    events = read_events(audit_dir)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[-1]["details"] == {
        "segment": started.name,
        "offset": 0,
        "length": len(TORN),
        "file": f"{started.name}.0.torn",
        "sha256": hashlib.sha256(TORN).hexdigest(),
    }
    assert again.append(make_event(9)) == 5
    assert again.verify().ok


def test_a_torn_line_set_aside_is_recorded_by_the_next_start_if_this_one_fails(
    open_log: OpenLog, audit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustd.audit import AuditLog

    log = open_log()
    for i in range(3):
        log.append(make_event(i))
    log.close()
    (segment,) = segment_files(audit_dir)
    offset = segment.stat().st_size
    with segment.open("ab") as fh:
        fh.write(TORN)

    def full(self: AuditLog, seq: int, ts: str, data: bytes) -> bool:
        raise AuditWriteError("cannot write audit event (ENOSPC): the disk is full")

    monkeypatch.setattr(AuditLog, "_write_line", full)
    with pytest.raises(AuditWriteError):
        open_log()
    monkeypatch.undo()
    pending = audit_dir / f"{segment.name}.{offset}.torn.pending"
    assert pending.read_bytes() == TORN  # set aside, not recorded yet
    assert segment.stat().st_size == offset

    again = open_log()
    assert not pending.exists()
    assert (audit_dir / f"{segment.name}.{offset}.torn").read_bytes() == TORN
    recovered = read_events(audit_dir)[-1]
    assert (recovered["seq"], recovered["type"]) == (4, "audit.torn_tail")
    assert again.verify().ok


# ------------------------------------------------------------------ retention


def _three_days(log_factory: OpenLog, clock: FakeClock) -> list[int]:
    log = log_factory(retention=dt.timedelta(days=1))
    firsts = []
    for day in range(3):
        clock.set(START + dt.timedelta(days=day))
        firsts.append(log.append(make_event(day * 10)))
        for i in range(1, 4):
            log.append(make_event(day * 10 + i))
    return firsts


def test_retention_deletes_whole_old_segments_and_keeps_verify_working(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    log = open_log(retention=dt.timedelta(days=1))
    for day in range(3):
        clock.set(START + dt.timedelta(days=day))
        for i in range(4):
            log.append(make_event(day * 10 + i))
    # rotation on day 3 deleted day 1 (its newest event is 2 days old); day 2 is kept
    names = [p.name for p in segment_files(audit_dir)]
    assert names == ["audit-0000000000000005.jsonl", "audit-0000000000000009.jsonl"]
    assert [r.seq for r in log.iter_events()] == list(range(5, 13))
    cp = log.last_checkpoint
    assert cp is not None and cp.first_seq == 5
    report = log.verify()
    assert report.ok, report.problem
    assert report.first_seq == 5 and report.last_seq == 12
    # and after a restart
    log.close()
    again = open_log(retention=dt.timedelta(days=1))
    assert again.verify().ok
    assert again.count() == 8


def test_apply_retention_on_a_timer(open_log: OpenLog, audit_dir: Path, clock: FakeClock) -> None:
    log = open_log(retention=dt.timedelta(hours=12))
    log.append(make_event(1))
    clock.advance(dt.timedelta(days=1))
    log.append(make_event(2))  # day 2: new segment; day 1 is only 1 day old... and > 12h
    assert len(segment_files(audit_dir)) == 1
    clock.advance(dt.timedelta(days=1))
    assert log.apply_retention() == []  # the segment being written is never deleted
    assert log.verify().ok


def test_segments_deleted_by_hand_are_not_mistaken_for_retention(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    log = open_log(retention=dt.timedelta(days=1))
    for day in range(3):
        clock.set(START + dt.timedelta(days=day))
        for i in range(4):
            log.append(make_event(day * 10 + i))
    segment_files(audit_dir)[0].unlink()  # seq 5-8, kept by retention, removed by someone
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 5


# ------------------------------------------------------------------ reading


def test_iter_events_filters_by_time_type_and_outcome(open_log: OpenLog, clock: FakeClock) -> None:
    log = open_log(segment_max_bytes=4096)
    for i in range(12):
        clock.set(START + dt.timedelta(minutes=i))
        ev = (
            make_event(i)
            if i % 3
            else make_event(i, type="admin.entry.create", actor=ADMIN, action="create")
        )
        if i % 4 == 0:
            ev = make_event(
                i, type="svid.deny", action="issue", outcome="failure", reason="no entry"
            )
        log.append(ev)
    since = START + dt.timedelta(minutes=3)
    until = START + dt.timedelta(minutes=9)
    assert [r.seq for r in log.iter_events(since=since, until=until)] == [4, 5, 6, 7, 8, 9]
    assert [r.seq for r in log.iter_events(types=["admin.entry.create"])] == [4, 7, 10]
    assert [r.seq for r in log.iter_events(types=["admin.*", "svid.deny"])] == [1, 4, 5, 7, 9, 10]
    assert [r.seq for r in log.iter_events(outcome="failure")] == [1, 5, 9]
    assert log.count(types=["svid.*"]) == 9
    assert log.count() == 12


def test_tail_returns_the_last_events(open_log: OpenLog) -> None:
    log = open_log(segment_max_bytes=4096)
    for i in range(20):
        log.append(make_event(i))
    assert [r.seq for r in log.tail(last=3)] == [18, 19, 20]
    assert [r.seq for r in log.tail(last=50)] == list(range(1, 21))


def test_tail_follow_yields_new_events_across_rotation(open_log: OpenLog, audit_dir: Path) -> None:
    log = open_log(segment_max_bytes=4096)
    log.append(make_event(0))
    stop = threading.Event()
    follow = log.tail(follow=True, last=1, poll_interval=0.01, stop=stop)
    assert next(follow).seq == 1
    for i in range(1, 16):  # crosses at least two segment boundaries
        log.append(make_event(i))
    assert len(segment_files(audit_dir)) >= 3
    assert [next(follow).seq for _ in range(15)] == list(range(2, 17))
    # a reader in another process would use the directory alone
    reader = tail(audit_dir, follow=True, last=1, poll_interval=0.01)
    assert next(reader).seq == 16
    log.append(make_event(99))
    assert next(follow).seq == 17
    assert next(reader).seq == 17
    assert isinstance(reader, Generator)  # tail's iterator is a generator: close() releases it
    reader.close()
    stop.set()
    log.append(make_event(100))
    assert list(follow) == []  # stopped: the generator ends


def test_tail_follow_ends_when_the_log_closes(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_event(0))
    follow = log.tail(follow=True, last=0, poll_interval=0.01)
    log.close()
    assert list(follow) == []


def test_token_hmac_uses_a_per_deployment_salt(
    open_log: OpenLog, tmp_path: Path, audit_dir: Path
) -> None:
    log = open_log()
    tok = log.token_hmac("join-token-1")
    assert tok.startswith("hmac-sha256:") and "join-token-1" not in tok
    log.close()
    assert open_log().token_hmac("join-token-1") == tok  # stable across restarts
    other = open_log(directory=tmp_path / "other")
    assert other.token_hmac("join-token-1") != tok


def test_export_records_an_audit_export_event_first(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_event(1))
    out = io.StringIO()
    n = log.export(out, format="jsonl", types=["svid.*"], actor=ADMIN)
    assert n == 1  # the export event is not an svid.* event
    last = list(log.iter_events())[-1]
    assert last.type == "admin.audit.export" and last.actor.id == ADMIN.id
    assert last.details["format"] == "jsonl" and last.details["types"] == ["svid.*"]


def test_check_reports_a_closed_log(open_log: OpenLog) -> None:
    log = open_log()
    log.check()
    log.close()
    with pytest.raises(AuditWriteError):
        log.check()
    with pytest.raises(AuditWriteError, match="closed"):
        log.append(make_event(1))


def test_event_guard_runs_before_anything_is_written(open_log: OpenLog) -> None:
    from trustd.audit import AuditSecretError

    log = open_log()
    with pytest.raises(AuditSecretError):
        log.append(AuditEvent(type="agent.join", actor=Actor.system(), action="join",
                              details={"join_token": "abc"}))  # fmt: skip
    assert log.head.seq == 0


def test_without_inline_maintenance_only_the_timer_signs(
    open_log: OpenLog, audit_dir: Path, clock: FakeClock
) -> None:
    log = open_log(checkpoint_interval=dt.timedelta(minutes=5), inline_maintenance=False)
    clock.advance(dt.timedelta(minutes=10))
    log.append(make_event(1))
    assert len(checkpoints(audit_dir)) == 1  # append did not sign
    cp = log.checkpoint_if_due()
    assert cp is not None and cp.seq == 1


def test_parse_time_accepts_rfc3339_dates_and_durations_ago() -> None:
    from trustd.audit import AuditEventError, parse_time

    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    assert parse_time("2026-02-28T10:00:00Z", now=now) == dt.datetime(
        2026, 2, 28, 10, tzinfo=dt.UTC
    )
    assert parse_time("2026-02-28T12:00:00+02:00", now=now) == dt.datetime(
        2026, 2, 28, 10, tzinfo=dt.UTC
    )
    assert parse_time("2026-02-28", now=now) == dt.datetime(2026, 2, 28, tzinfo=dt.UTC)
    assert parse_time("24h", now=now) == now - dt.timedelta(hours=24)
    with pytest.raises(AuditEventError, match="RFC 3339"):
        parse_time("yesterday", now=now)


def test_follower_starts_mid_log_and_crosses_segments(open_log: OpenLog, audit_dir: Path) -> None:
    from trustd.audit.reader import Follower

    log = open_log(segment_max_bytes=4096)
    for i in range(30):
        log.append(make_event(i))
    follower = Follower(audit_dir, from_seq=12)
    got = [rec.seq for rec, _ in follower.read(5)]
    assert got == [12, 13, 14, 15, 16]
    rest = [rec.seq for rec, _ in follower.read(100)]
    assert rest == list(range(17, 31))
    assert follower.read(10) == []
    log.append(make_event(99))
    assert [rec.seq for rec, _ in follower.read(10)] == [31]
    follower.close()


def test_append_many_chains_like_single_appends_and_verifies(tmp_path: Path) -> None:
    from trustd.audit import Actor, AuditEvent, AuditLog
    from trustd.ca.kms.memory import MemoryKeyManager
    from trustd.clock import FakeClock

    log = AuditLog(tmp_path / "a", key_manager=MemoryKeyManager(), clock=FakeClock())
    actor = Actor.spiffe("spiffe://trustd.local/trustd/agent/x")
    first = log.append(AuditEvent(type="svid.issue", actor=actor, action="issue", resource="r0"))
    seqs = log.append_many(
        [
            AuditEvent(type="svid.issue", actor=actor, action="issue", resource=f"r{i}")
            for i in range(1, 6)
        ]
    )
    assert seqs == list(range(first + 1, first + 6))
    assert log.append(AuditEvent(type="svid.issue", actor=actor, action="issue")) == first + 6
    report = log.verify()
    assert report.ok and report.events_checked == 7, report
    lines = [
        json.loads(x)
        for p in sorted((tmp_path / "a").glob("audit-*.jsonl"))
        for x in p.read_text().splitlines()
    ]
    assert [e["resource"] for e in lines[:6]] == [f"r{i}" for i in range(6)]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
    log.close()


def test_append_many_is_all_or_nothing_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import trustd.audit.log as audit_log
    from trustd.audit import Actor, AuditEvent, AuditLog, AuditWriteError
    from trustd.ca.kms.memory import MemoryKeyManager
    from trustd.clock import FakeClock

    log = AuditLog(tmp_path / "a", key_manager=MemoryKeyManager(), clock=FakeClock())
    actor = Actor.system()
    log.append(AuditEvent(type="svid.issue", actor=actor, action="issue"))
    head = log.head

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_log, "write_all", full)
    with pytest.raises(AuditWriteError):
        log.append_many(
            [AuditEvent(type="svid.issue", actor=actor, action="issue") for _ in range(3)]
        )
    monkeypatch.undo()
    assert log.head == head
    assert log.append(AuditEvent(type="svid.issue", actor=actor, action="issue")) == head.seq + 1
    assert log.verify().ok
    log.close()
