"""Reading the log: filtered iteration across segments, and following new events.

Readers never take the writer's lock. The writer puts each line down with one
``write`` of the whole line, so a reader only ever has to ignore an unterminated
last line (an append in progress, or torn by a crash).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from trustd import durations
from trustd.audit.errors import AuditEventError
from trustd.audit.events import format_time
from trustd.audit.record import (
    AuditRecord,
    Row,
    parse_json_line,
    parse_line,
    record_from_json,
    row_from_line,
    row_from_record,
)
from trustd.audit.segments import Segment, last_lines, list_segments

log = structlog.get_logger(__name__)

_CHUNK = 1 << 20
_BLOCK = 64 * 1024  # what iter_rows reads at a time: the lines stay in the CPU caches
_SEQ_RE = re.compile(rb'\{"id":"[^"\\]*","seq":(\d+),')


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events an export, a count or a tail wants."""

    since: dt.datetime | None = None  # inclusive lower bound on the event time
    until: dt.datetime | None = None  # exclusive upper bound on the event time
    types: tuple[str, ...] = ()  # exact types, or prefixes ending in "*" ("admin.*"); () = all
    outcome: str | None = None  # "success" or "failure"; None = both

    def __post_init__(self) -> None:
        if self.outcome not in (None, "success", "failure"):
            raise AuditEventError(f"invalid outcome {self.outcome!r}: use success or failure")
        for bound in (self.since, self.until):
            if bound is not None and bound.tzinfo is None:
                raise AuditEventError("since and until must be timezone-aware datetimes")

    def matcher(self) -> _Matcher:
        return _Matcher(self)


class _Matcher:
    """The filter compiled for speed: times compare as fixed-width RFC 3339 text."""

    __slots__ = ("exact", "outcome", "prefixes", "since", "until")

    def __init__(self, f: EventFilter) -> None:
        self.since = format_time(f.since) if f.since else None
        self.until = format_time(f.until) if f.until else None
        self.exact = frozenset(t for t in f.types if not t.endswith("*"))
        self.prefixes = tuple(t[:-1] for t in f.types if t.endswith("*"))
        self.outcome = f.outcome

    @property
    def everything(self) -> bool:
        return not (self.since or self.until or self.exact or self.prefixes or self.outcome)

    def row(self, row: Row) -> bool:
        t = row[2]
        if self.since is not None and t < self.since:
            return False
        if self.until is not None and t >= self.until:
            return False
        if self.outcome is not None and row[10] != self.outcome:
            return False
        if self.exact or self.prefixes:
            typ = row[3]
            return typ in self.exact or (bool(self.prefixes) and typ.startswith(self.prefixes))
        return True

    def __call__(self, data: dict[str, Any]) -> bool:
        t = data["time"]
        if self.since is not None and t < self.since:
            return False
        if self.until is not None and t >= self.until:
            return False
        if self.outcome is not None and data["outcome"] != self.outcome:
            return False
        if self.exact or self.prefixes:
            typ = data["type"]
            return typ in self.exact or (bool(self.prefixes) and typ.startswith(self.prefixes))
        return True


def parse_time(text: str, *, now: dt.datetime) -> dt.datetime:
    """A time bound as operators write it: RFC 3339 (``2026-01-01T00:00:00Z``), a date
    (``2026-01-01``, midnight UTC), or a duration ago (``24h`` means ``now - 24h``)."""
    s = text.strip()
    try:
        return now - durations.parse(s)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError as exc:
        raise AuditEventError(
            f"invalid time {text[:60]!r}: use RFC 3339 (2026-01-01T00:00:00Z), "
            "a date (2026-01-01) or a duration ago (24h)"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def iter_records(
    directory: Path,
    *,
    where: EventFilter | None = None,
    from_seq: int = 1,
    lazy: bool = False,
) -> Iterator[AuditRecord]:
    """Events in seq order across segments, filtered; unreadable lines are logged and skipped
    (``verify`` is what judges damage).

    ``lazy`` (without filters): records parse on first access, so a JSON lines export
    copies lines as they are; reading a field of a damaged line then raises ValueError
    instead of the line being skipped here.
    """
    match = (where or EventFilter()).matcher()
    everything = match.everything
    if lazy and everything and from_seq <= 1:
        yield from _iter_lazy(list_segments(directory))
        return
    segments = list_segments(directory)
    for i, seg in enumerate(segments):
        if i + 1 < len(segments) and segments[i + 1].first_seq <= from_seq:
            continue
        try:
            fh = seg.path.open("r", encoding="utf-8", errors="replace", newline="\n")
        except FileNotFoundError:  # removed by retention since it was listed
            continue
        with fh:
            for lineno, line in enumerate(fh, 1):
                if line[-1:] != "\n":
                    break  # an append in progress, or a torn line
                try:
                    data = parse_json_line(line[:-1])
                    if (from_seq > 1 and data["seq"] < from_seq) or not (everything or match(data)):
                        continue
                    rec = record_from_json(data, raw=line[:-1])
                except (ValueError, KeyError, TypeError):
                    log.warning(
                        "audit line unreadable, skipped", segment=seg.path.name, line=lineno
                    )
                    continue
                yield rec


def iter_rows(directory: Path, *, where: EventFilter | None = None) -> Iterator[Row]:
    """Events as export rows, in seq order across segments, filtered: the export fast path
    (a regex instead of a JSON parse for the usual line, no per-event object)."""
    match = (where or EventFilter()).matcher()
    everything = match.everything
    skipped = 0
    for seg in list_segments(directory):
        try:
            fh = seg.path.open("rb")
        except FileNotFoundError:
            continue
        with fh:
            for lines in _line_blocks(fh):
                for raw in lines:
                    row = row_from_line(raw)
                    if row is None:  # escapes in the head, or not the canonical shape
                        try:
                            row = row_from_record(parse_line(raw))
                        except (ValueError, KeyError, TypeError):
                            skipped += 1
                            continue
                    if everything or match.row(row):
                        yield row
    if skipped:
        log.warning("audit lines unreadable, skipped", lines=skipped)


def _line_blocks(fh: IO[bytes]) -> Iterator[list[str]]:
    """The complete lines of a file, without their newlines, about ``_BLOCK`` bytes at a
    time; an unterminated last line (an append in progress, or torn) is left out.

    UTF-8 errors become U+FFFD as in a text file opened with ``errors="replace"``: a block
    ends after a newline, which is never part of a multi-byte sequence.
    """
    pending: list[bytes] = []  # the start of a line whose newline is not read yet
    while chunk := fh.read(_BLOCK):
        end = chunk.rfind(b"\n") + 1
        if not end:
            pending.append(chunk)
            continue
        block = chunk[:end]
        if pending:
            pending.append(block)
            block = b"".join(pending)
            pending.clear()
        if end < len(chunk):
            pending.append(chunk[end:])
        lines = block.decode("utf-8", errors="replace").split("\n")
        lines.pop()  # "": the block ends with a newline
        yield lines


def _iter_lazy(segments: list[Segment]) -> Iterator[AuditRecord]:
    lazy = AuditRecord.lazy
    for seg in segments:
        try:
            fh = seg.path.open("r", encoding="utf-8", errors="replace", newline="\n")
        except FileNotFoundError:
            continue
        with fh:
            for line in fh:
                if line[-1:] != "\n":
                    break
                yield lazy(line[:-1])


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """Where a line starts, so a reader can come back to it."""

    segment: int  # first_seq of the segment file
    offset: int  # byte offset of the line in it


class Follower:
    """Reads events in seq order from a given seq, across segment rotation, never blocking.

    ``read`` returns what has been appended since the last call; call it again
    later (``tail`` and the syslog forwarder poll it, woken by the writer).
    """

    def __init__(self, directory: Path, *, from_seq: int = 1) -> None:
        self._dir = directory
        self._next_seq = from_seq
        self._seg: Segment | None = None
        self._fh: IO[bytes] | None = None
        self._buf = b""
        self._buf_offset = 0  # file offset of _buf[0]

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._seg = None
        self._buf = b""

    def _open(self, seg: Segment, offset: int) -> bool:
        self.close()
        try:
            fh = seg.path.open("rb")
        except FileNotFoundError:
            return False
        fh.seek(offset)
        self._fh, self._seg, self._buf, self._buf_offset = fh, seg, b"", offset
        return True

    def reposition(self, pos: Position, seq: int) -> None:
        """Go back to the line at ``pos``, which holds event ``seq``."""
        self.close()
        self._next_seq = seq
        for seg in list_segments(self._dir):
            if seg.first_seq == pos.segment and self._open(seg, pos.offset):
                return
        # the segment is gone (retention): _start finds the oldest kept event

    def _start(self) -> bool:
        """Open the segment holding next_seq (or the oldest one, if it was deleted)."""
        segments = list_segments(self._dir)
        if not segments:
            return False
        chosen = segments[0]
        for seg in segments:
            if seg.first_seq <= self._next_seq:
                chosen = seg
        if chosen.first_seq > self._next_seq:
            log.warning(
                "audit events missing before the oldest segment",
                wanted_seq=self._next_seq,
                oldest_seq=chosen.first_seq,
            )
        return self._open(chosen, 0)

    def _newer_segment(self) -> Segment | None:
        assert self._seg is not None
        for seg in list_segments(self._dir):
            if seg.first_seq > self._seg.first_seq:
                return seg
        return None

    def read(self, max_events: int = 1000) -> list[tuple[AuditRecord, Position]]:
        out: list[tuple[AuditRecord, Position]] = []
        if self._fh is None and not self._start():
            return out
        while len(out) < max_events:
            assert self._fh is not None and self._seg is not None
            nl = self._buf.find(b"\n")
            if nl < 0:
                newer = self._newer_segment()  # looked up before the read: see below
                data = self._fh.read(_CHUNK)
                if data:
                    self._buf += data
                    continue
                if newer is None:
                    break
                # The writer finishes a segment before it creates the next one, so once a
                # newer segment exists and this one reads to its end, this one is complete.
                if not self._open(newer, 0):
                    break
                continue
            line = self._buf[: nl + 1]
            pos = Position(segment=self._seg.first_seq, offset=self._buf_offset)
            self._buf = self._buf[nl + 1 :]
            self._buf_offset += nl + 1
            m = _SEQ_RE.match(line)
            if m is not None and int(m.group(1)) < self._next_seq:
                continue  # seeking forward: no need to parse what is skipped
            try:
                rec = parse_line(line)
            except (ValueError, KeyError, TypeError):
                log.warning(
                    "audit line unreadable, skipped", segment=self._seg.path.name, offset=pos.offset
                )
                continue
            if rec.seq < self._next_seq:
                continue
            if rec.seq > self._next_seq:
                log.warning("audit events missing", wanted_seq=self._next_seq, found_seq=rec.seq)
            self._next_seq = rec.seq + 1
            out.append((rec, pos))
        return out


def last_records(directory: Path, count: int) -> list[AuditRecord]:
    """The last ``count`` events, oldest first, reading segments from their end."""
    if count <= 0:
        return []
    picked: list[AuditRecord] = []
    for seg in reversed(list_segments(directory)):
        lines, _ = last_lines(seg.path, count - len(picked))
        recs: list[AuditRecord] = []
        for line in lines:
            try:
                recs.append(parse_line(line))
            except (ValueError, KeyError, TypeError):
                log.warning("audit line unreadable, skipped", segment=seg.path.name)
        picked = recs + picked
        if len(picked) >= count:
            break
    return picked[-count:]


def tail(
    directory: Path,
    *,
    follow: bool = False,
    last: int = 10,
    where: EventFilter | None = None,
    poll_interval: float = 0.25,
    stop: threading.Event | None = None,
    wake: threading.Event | None = None,
) -> Iterator[AuditRecord]:
    """The last ``last`` events; with ``follow``, then every new event as it is appended,
    across segment rotation, until ``stop`` is set or the consumer stops iterating.

    New events are found by polling the files every ``poll_interval`` seconds, or
    sooner when ``wake`` is set (``AuditLog.tail`` passes one the writer sets).
    """
    match = (where or EventFilter()).matcher()
    recent = last_records(directory, last) if last > 0 else []
    for rec in recent:
        if match.everything or match(rec.data):
            yield rec
    if not follow:
        return
    if recent:
        start = recent[-1].seq + 1
    else:
        segments = list_segments(directory)
        start = 1
        if segments:
            lines, _ = last_lines(segments[-1].path, 1)
            start = parse_line(lines[0]).seq + 1 if lines else segments[-1].first_seq
    follower = Follower(directory, from_seq=start)
    try:
        while stop is None or not stop.is_set():
            batch = follower.read()
            for rec, _ in batch:
                if match.everything or match(rec.data):
                    yield rec
            if batch:
                continue
            if wake is not None:
                wake.wait(poll_interval)
                wake.clear()
            elif stop is not None:
                stop.wait(poll_interval)
            else:
                time.sleep(poll_interval)
    finally:
        follower.close()


def count_records(directory: Path, *, where: EventFilter | None = None) -> int:
    """How many events an export with this filter would write (a progress bar's total)."""
    match = (where or EventFilter()).matcher()
    if match.everything:
        return sum(1 for _ in _raw_lines(directory))
    n = 0
    loads = json.loads
    for line in _raw_lines(directory):
        try:
            if match(loads(line)):
                n += 1
        except (ValueError, KeyError, TypeError):
            continue
    return n


def _raw_lines(directory: Path) -> Iterable[bytes]:
    for seg in list_segments(directory):
        try:
            fh = seg.path.open("rb")
        except FileNotFoundError:
            continue
        with fh:
            for line in fh:
                if line.endswith(b"\n"):
                    yield line
