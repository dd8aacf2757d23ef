"""Fail closed: an event that cannot be written raises AuditWriteError, and nothing moves.

Permission cases run in a child process that drops to an unprivileged user when
the tests run as root (root ignores file modes), so the kernel really refuses.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_helpers import REPO_ROOT, OpenLog, all_lines, make_event, segment_files

from trustd.audit import AuditWriteError
from trustd.audit import log as audit_log_module
from trustd.errors import UnavailableError


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int, *, after_bytes: int = 0) -> None:
    """Make the segment writer fail with ``code``, optionally after writing part of the line."""

    def broken(fd: int, data: bytes) -> None:
        if after_bytes:
            os.write(fd, data[:after_bytes])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(audit_log_module, "write_all", broken)


@pytest.mark.parametrize(
    ("code", "hint"),
    [(errno.ENOSPC, "full"), (errno.EIO, "check the disk"), (errno.EDQUOT, "full")],
)
def test_write_error_raises_and_the_seq_does_not_advance(
    open_log: OpenLog, audit_dir: Path, monkeypatch: pytest.MonkeyPatch, code: int, hint: str
) -> None:
    log = open_log()
    log.append(make_event(1))
    head = log.head
    size = segment_files(audit_dir)[0].stat().st_size
    fail_writes(monkeypatch, code)
    with pytest.raises(AuditWriteError, match=hint) as info:
        log.append(make_event(2))
    assert isinstance(info.value, UnavailableError)  # the action maps it to UNAVAILABLE
    assert errno.errorcode[code] in str(info.value)
    assert log.head == head
    assert segment_files(audit_dir)[0].stat().st_size == size
    monkeypatch.undo()
    assert log.append(make_event(3)) == 2  # the next event takes the seq that failed
    assert log.verify().ok


def test_a_partly_written_line_is_taken_back(
    open_log: OpenLog, audit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    log.append(make_event(1))
    fail_writes(monkeypatch, errno.ENOSPC, after_bytes=40)
    with pytest.raises(AuditWriteError):
        log.append(make_event(2))
    assert len(all_lines(audit_dir)) == 1
    assert all_lines(audit_dir)[-1].endswith(b"\n")
    monkeypatch.undo()
    log.append(make_event(3))
    report = log.verify()
    assert report.ok and report.events_checked == 2


def test_a_failing_new_segment_raises_and_nothing_moves(
    open_log: OpenLog, audit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(segment_max_bytes=4096)
    while len(segment_files(audit_dir)) < 2:
        log.append(make_event(log.head.seq))
    head = log.head
    real_open = os.open

    def no_new_files(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".jsonl") and "audit-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(audit_log_module.os, "open", no_new_files)
    with pytest.raises(AuditWriteError, match="new audit segment"):
        for i in range(20):  # until a rotation is needed
            log.append(make_event(100 + i))
    assert log.head.seq >= head.seq
    failed_at = log.head
    monkeypatch.undo()
    assert log.append(make_event(200)) == failed_at.seq + 1
    assert log.verify().ok


def test_append_after_close_is_refused(open_log: OpenLog) -> None:
    log = open_log()
    log.close()
    with pytest.raises(AuditWriteError):
        log.append(make_event(1))


# ------------------------------------------------------------------ real permission refusals

SCRIPT = r"""
import datetime as dt, json, os, sys
from pathlib import Path
from trustd.audit import Actor, AuditEvent, AuditLog, AuditWriteError
from trustd.ca.kms.local import LocalKeyManager
from trustd.clock import SystemClock

base = Path(sys.argv[1])
case = sys.argv[2]

def ev(i):
    return AuditEvent(type="admin.entry.create", actor=Actor.unix(uid=os.getuid()),
                      action="create", resource=f"entry-{i}")

if os.geteuid() == 0:
    # Root ignores file modes. Warm up (so every lazy import is done while the interpreter
    # under /root is still readable), then become nobody for the real run.
    warm = AuditLog(base / "warm", key_manager=LocalKeyManager(base / "warm-keys", b"k" * 32),
                    clock=SystemClock(), segment_max_bytes=4096)
    for i in range(10):
        warm.append(ev(i))
    warm.check()
    warm.verify()
    warm.close()
    try:
        raise AuditWriteError("warm-up")
    except AuditWriteError as exc:
        str(exc)
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)

km = LocalKeyManager(base / "keys", b"k" * 32)
d = base / "audit"

result = {"uid": os.getuid()}
if case == "readonly-dir":
    log = AuditLog(d, key_manager=km, clock=SystemClock(), segment_max_bytes=4096)
    log.append(ev(0))
    os.chmod(d, 0o500)  # nobody may create files in it any more
    before = log.head.seq
    try:
        for i in range(1, 50):  # the segment fills up and a new one is needed
            log.append(ev(i))
        result["error"] = None
    except AuditWriteError as exc:
        result["error"] = str(exc)
    result["before_failure"] = log.head.seq
    result["grew"] = log.head.seq > before
    try:
        log.append(ev(99))
        result["again"] = None
    except AuditWriteError as exc:
        result["again"] = str(exc)
    result["seq_after_retry"] = log.head.seq
    os.chmod(d, 0o700)
    result["next"] = log.append(ev(100))
    result["verify_ok"] = log.verify().ok
    log.close()
elif case == "unwritable-file":
    log = AuditLog(d, key_manager=km, clock=SystemClock())
    log.append(ev(0))
    log.close()
    for seg in d.glob("audit-*.jsonl"):
        os.chmod(seg, 0o400)
    log = AuditLog(d, key_manager=km, clock=SystemClock())
    try:
        log.check()
        result["check"] = None
    except AuditWriteError as exc:
        result["check"] = str(exc)
    try:
        log.append(ev(1))
        result["error"] = None
    except AuditWriteError as exc:
        result["error"] = str(exc)
    result["seq"] = log.head.seq
    try:
        log.close()
    except AuditWriteError:
        pass
print(json.dumps(result))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged child can use (pytest's tmp dirs are root-only)."""
    base = Path(tempfile.mkdtemp(prefix="trustd-audit-", dir="/tmp"))
    os.chmod(base, 0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_unprivileged(base: Path, case: str) -> dict[str, object]:
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(base), case],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["uid"] != 0  # the kernel, not root's override, decides
    return result


def test_read_only_directory_fails_the_append(shared_dir: Path) -> None:
    result = run_unprivileged(shared_dir, "readonly-dir")
    assert result["error"] is not None
    assert "may not write" in str(result["error"]) and "EACCES" in str(result["error"])
    assert result["again"] is not None  # still refused, and still no seq consumed
    assert result["seq_after_retry"] == result["before_failure"]
    assert result["next"] == int(str(result["before_failure"])) + 1
    assert result["verify_ok"] is True


def test_unwritable_segment_fails_the_append(shared_dir: Path) -> None:
    result = run_unprivileged(shared_dir, "unwritable-file")
    assert result["check"] is not None and "EACCES" in str(result["check"])
    assert result["error"] is not None and "may not write" in str(result["error"])
    assert result["seq"] == 1
