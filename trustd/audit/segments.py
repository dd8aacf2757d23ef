"""The audit directory on disk.

::

    audit/                          0700
      audit-0000000000000001.jsonl  0600  one event per line, named by its first seq
      audit-0000000000004711.jsonl        (a new segment by size or by UTC day)
      audit-<seq>.jsonl.<offset>.torn     a torn last line set aside at start (never deleted;
                                          ".pending" until its audit.torn_tail event is written)
      checkpoints.jsonl                   signed (seq, hash, time) heads, append-only
      audit-key.json                      the KeyRef of the checkpoint signing key
      token-hmac.key                      the salt key for hmac_token (never exported)
      syslog-<name>.cursor                the last seq a syslog forwarder delivered
      audit.lock                          flock'ed by the one writer process
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SEGMENT_PREFIX = "audit-"
SEGMENT_SUFFIX = ".jsonl"
CHECKPOINT_FILE = "checkpoints.jsonl"
KEY_FILE = "audit-key.json"
HMAC_KEY_FILE = "token-hmac.key"
LOCK_FILE = "audit.lock"
PENDING_SUFFIX = ".pending"
_SEGMENT_RE = re.compile(r"audit-(\d{16})\.jsonl")
_TORN_RE = re.compile(r"(audit-\d{16}\.jsonl)\.(\d+)(?:\.\d+)?\.torn(\.pending)?")
_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Segment:
    first_seq: int  # seq of the first event in it (from the file name)
    path: Path  # the segment file


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class TornTail:
    segment: str  # the segment file name the bytes were cut from
    offset: int  # where they started in it
    path: Path  # the file that keeps them
    pending: bool  # no audit event records it yet

    @property
    def recorded_path(self) -> Path:
        """Its name once an audit event records it."""
        return self.path.with_name(self.path.name.removesuffix(PENDING_SUFFIX))


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{SEGMENT_PREFIX}{first_seq:016d}{SEGMENT_SUFFIX}"


def torn_path(segment: Path, offset: int, n: int = 0, *, pending: bool = True) -> Path:
    """Where the torn end of ``segment`` at ``offset`` is kept (``n`` tells apart several)."""
    extra = f".{n}" if n else ""
    tail = PENDING_SUFFIX if pending else ""
    return segment.with_name(f"{segment.name}.{offset}{extra}.torn{tail}")


def list_torn_tails(directory: Path) -> list[TornTail]:
    """The torn ends set aside so far, in the order they were cut."""
    out: list[TornTail] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _TORN_RE.fullmatch(entry.name)
        if m:
            out.append(
                TornTail(
                    segment=m.group(1),
                    offset=int(m.group(2)),
                    path=Path(entry.path),
                    pending=m.group(3) is not None,
                )
            )
    out.sort()
    return out


def list_segments(directory: Path) -> list[Segment]:
    """All segment files, oldest first (by the first seq in their name)."""
    out: list[Segment] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _SEGMENT_RE.fullmatch(entry.name)
        if m:
            out.append(Segment(first_seq=int(m.group(1)), path=Path(entry.path)))
    out.sort()
    return out


def read_first_line(path: Path) -> bytes | None:
    """The first complete line (with its newline), or None."""
    try:
        with path.open("rb") as fh:
            line = fh.readline()
    except FileNotFoundError:
        return None
    return line if line.endswith(b"\n") else None


def last_lines(path: Path, count: int) -> tuple[list[bytes], int]:
    """Up to ``count`` last complete lines (with newlines), oldest first, and the size of the
    complete part of the file (everything after it is a torn, unterminated line)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return [], 0
    with fh:
        pos = fh.seek(0, os.SEEK_END)
        complete = 0
        while pos > 0:
            start = max(0, pos - _BLOCK)
            fh.seek(start)
            nl = fh.read(pos - start).rfind(b"\n")
            if nl >= 0:
                complete = start + nl + 1
                break
            pos = start
        if complete == 0 or count <= 0:
            return [], complete
        data = b""
        pos = complete
        while pos > 0 and data.count(b"\n") <= count:
            start = max(0, pos - _BLOCK)
            fh.seek(start)
            data = fh.read(pos - start) + data
            pos = start
        lines = data.split(b"\n")[:-1]
        if pos > 0:
            lines = lines[1:]  # the first piece may be the end of an earlier line
        return [ln + b"\n" for ln in lines[-count:]], complete
