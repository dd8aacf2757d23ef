"""Opening an audit log directory: where the chain ends, and what a crash left behind.

:func:`recover` reads the segments and the checkpoint file and returns the head
of the chain (:class:`Recovered`). It refuses, with what to do, every state a
crash cannot produce (an unterminated line that is not the last, a newest event
that does not match its hash, events without a checkpoint, a tail shorter than
the last checkpoint, deleted old segments). The one state a crash does produce,
a torn last line, is set aside into a pending ``.torn`` file beside its segment
and the segment is cut back to its last complete line; the log then records it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from trustd.audit.checkpoint import Checkpoint
from trustd.audit.errors import AuditCorruptError
from trustd.audit.files import fsync_dir, write_error, write_file_atomic
from trustd.audit.record import GENESIS_HASH, check_line_hash, parse_line
from trustd.audit.segments import (
    CHECKPOINT_FILE,
    last_lines,
    list_segments,
    read_first_line,
    torn_path,
)

log = structlog.get_logger(__name__)


@dataclass(slots=True, kw_only=True)
class SegInfo:
    first_seq: int  # from the file name
    path: Path
    first_prev_hash: str  # prev_hash of its first event: the anchor if older ones go
    day: str  # UTC date (YYYY-MM-DD) of its first event
    last_time: str  # time of its newest event


@dataclass(slots=True, kw_only=True)
class Recovered:
    """The head of the chain as the directory holds it."""

    segments: list[SegInfo]
    seq: int = 0  # the newest complete event (0: none yet)
    hash: str = GENESIS_HASH  # its hash
    segment_size: int = 0  # bytes of complete lines in the newest segment
    anchor: tuple[int, str] = (1, GENESIS_HASH)  # (first kept seq, its prev_hash)
    checkpoint: Checkpoint | None = None  # the newest signed checkpoint


def recover(directory: Path) -> Recovered:
    """Find the head of the chain and the segments, set a torn last line aside."""
    segments = list_segments(directory)
    # A segment is created just before its first line is written: a crash in between
    # leaves an empty file, which holds nothing to keep.
    while segments and segments[-1].path.stat().st_size == 0:
        segments.pop().path.unlink()
    torn: tuple[Path, int, int] | None = None  # (segment, offset, length)
    if segments:
        newest = segments[-1].path
        _, complete = last_lines(newest, 0)
        size = newest.stat().st_size
        if size > complete:
            torn = (newest, complete, size - complete)
            if complete == 0:
                segments.pop()  # nothing in it but the torn line
    out = Recovered(segments=[])
    for i, seg in enumerate(segments):
        is_last = i == len(segments) - 1
        lines, complete = last_lines(seg.path, 1)
        if is_last and seg.path.stat().st_size > complete and torn and torn[0] != seg.path:
            raise AuditCorruptError(
                f"audit segment {seg.path.name} ends with an unterminated line: run trustd "
                "audit verify, keep the directory as evidence and start a new one"
            )
        try:
            first_rec = parse_line(read_first_line(seg.path) or b"")
            last_rec = parse_line(lines[-1] if lines else b"")
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditCorruptError(
                f"audit segment {seg.path.name} is damaged: run trustd audit verify, "
                "keep the directory as evidence and start a new one"
            ) from exc
        out.segments.append(
            SegInfo(
                first_seq=seg.first_seq,
                path=seg.path,
                first_prev_hash=first_rec.prev_hash,
                day=first_rec.time[:10],
                last_time=last_rec.time,
            )
        )
        if is_last:
            hashes = check_line_hash(lines[-1])
            if hashes is None or hashes[0] != hashes[1]:
                raise AuditCorruptError(
                    f"the newest audit event (seq {last_rec.seq}) does not match its hash: "
                    "run trustd audit verify, keep the directory as evidence and start a new one"
                )
            out.seq, out.hash = last_rec.seq, last_rec.hash
            out.segment_size = complete
    if out.segments:
        out.anchor = (out.segments[0].first_seq, out.segments[0].first_prev_hash)
    cp = read_last_checkpoint(directory)
    if cp is None:
        if out.segments or torn is not None:
            # Events are only ever written after the first checkpoint.
            raise AuditCorruptError(
                f"the audit log in {directory} has events but no signed checkpoint: the "
                "checkpoint file was removed; keep the directory as evidence and start a new one"
            )
        return out
    out.anchor = (cp.first_seq, cp.first_prev_hash)
    out.checkpoint = cp
    if cp.seq > out.seq:
        raise AuditCorruptError(
            f"the audit log ends at seq {out.seq} but checkpoint {cp.time} signed seq "
            f"{cp.seq}: the tail was cut off; keep the directory as evidence and "
            "start a new one"
        )
    if out.segments and out.segments[0].first_seq > cp.first_seq:
        raise AuditCorruptError(
            f"the audit log starts at seq {out.segments[0].first_seq} but checkpoint {cp.time} "
            f"anchors it at seq {cp.first_seq}: old segments were deleted; keep the "
            "directory as evidence and start a new one"
        )
    if torn is not None:
        set_torn_aside(directory, *torn)
    return out


def set_torn_aside(directory: Path, segment: Path, offset: int, length: int) -> None:
    """Keep the bytes after the last complete line of ``segment`` in a pending .torn file
    beside it, then cut the segment back to that line, so that appends continue the
    chain from the last complete event. The log records it (``audit.torn_tail``)."""
    try:
        with segment.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
        n = 0
        while True:
            aside = torn_path(segment, offset, n)
            if aside.exists() and aside.read_bytes() == data:
                break  # set aside already by a start that stopped before the cut
            if not aside.exists() and not torn_path(segment, offset, n, pending=False).exists():
                write_file_atomic(aside, data)
                break
            n += 1
        if offset == 0:
            segment.unlink()
        else:
            fd = os.open(segment, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)
    except OSError as exc:
        raise write_error("set aside the torn end of the audit segment", segment, exc) from exc
    log.warning(
        "audit segment ends with a torn line: set aside",
        segment=segment.name,
        offset=offset,
        bytes=length,
        file=aside.name,
    )


def read_last_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest signed checkpoint; a torn last line of the checkpoint file is cut off."""
    path = directory / CHECKPOINT_FILE
    lines, complete = last_lines(path, 1)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > complete:
        log.warning("audit checkpoint file ends with a torn line: removing it")
        try:
            os.truncate(path, complete)
        except OSError as exc:
            raise write_error("repair the audit checkpoint file", path, exc) from exc
    if not lines:
        return None
    try:
        return Checkpoint.from_line(lines[-1])
    except ValueError as exc:
        raise AuditCorruptError(
            f"the newest audit checkpoint is damaged ({exc}): run trustd audit verify"
        ) from exc
