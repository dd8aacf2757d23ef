"""The tamper-evident audit log: append-only, hash-chained, segmented, checkpoint-signed.

``AuditLog.append_many`` is the ``AuditSink`` every action records through. It writes
the lines with one ``write`` and returns only once the kernel has it; if the
line cannot be written it raises ``AuditWriteError`` (an ``UnavailableError``) and
the seq does not advance, so the action that asked must fail. Events are not
fsynced one by one: segments are fsynced at checkpoints, at rotation and on
``close``. A checkpoint is signed at ``checkpoint_interval``, at open when the
head moved, on retention and on ``close``, so a crash loses at most the unsigned
tail, never a signed event. A torn last line (a crash in the middle of a write) is
set aside at open into a ``.torn`` file beside its segment, recorded by an
``audit.torn_tail`` event, and the chain continues from the last complete event.

Thread-safe; one writer process per directory (an advisory ``flock`` on
``audit.lock`` refuses a second one). Readers (``iter_events``, ``tail``,
``verify``, the syslog forwarder) need no lock.

This module writes, checkpoints and retains. The rest of the log lives beside it:
opening and crash recovery in :mod:`~trustd.audit.recovery`, the signing and HMAC
keys in :mod:`~trustd.audit.keyring`, durable file primitives in
:mod:`~trustd.audit.files`, the line format in :mod:`~trustd.audit.record`,
reading and tailing in :mod:`~trustd.audit.reader`, export formats in
:mod:`~trustd.audit.export`, verification in :mod:`~trustd.audit.verify`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import structlog

from trustd.audit.checkpoint import Checkpoint, sign_checkpoint
from trustd.audit.errors import AuditCorruptError, AuditEventError, AuditWriteError
from trustd.audit.events import (
    AUDIT_EXPORT,
    AUDIT_TORN_TAIL,
    Actor,
    AuditEvent,
    format_time,
    hmac_token,
)
from trustd.audit.export import (
    CSV_COLUMNS,
    ExportFormat,
    ProgressCallback,
    renderer,
    write_jsonl,
    write_rendered,
)
from trustd.audit.files import (
    errno_name,
    fsync_dir,
    lock_directory,
    write_all,
    write_error,
)
from trustd.audit.keyring import load_or_create_hmac_key, load_or_create_signing_key
from trustd.audit.reader import EventFilter, count_records, iter_records, iter_rows, tail
from trustd.audit.record import (
    GENESIS_HASH,
    AuditRecord,
    ChainHead,
    encode_unhashed,
    seal,
)
from trustd.audit.recovery import SegInfo, recover
from trustd.audit.segments import (
    CHECKPOINT_FILE,
    list_torn_tails,
    segment_path,
)
from trustd.audit.verify import VerifyReport, verify
from trustd.ca.kms.base import KeyManager, KeyRef, PublicKey
from trustd.clock import Clock
from trustd.telemetry.metrics import AuditMetrics

log = structlog.get_logger(__name__)

MiB = 1 << 20
MAX_LINE_BYTES = 1 * MiB
_MIN_FREE_BYTES = 64 * 1024  # check() reports the disk full below this
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class _Ids:
    """Random UUID4 text from a pool of urandom bytes (uuid.uuid4() costs several times more:
    one getrandom call per id). Called under the log's lock."""

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        if self._pos >= len(self._hex):
            self._hex = os.urandom(16 * 256).hex()
            self._pos = 0
        x = self._hex[self._pos : self._pos + 32]
        self._pos += 32
        # version 4 in the 13th hex digit; variant 10xx in the 17th
        return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{'89ab'[int(x[16], 16) & 3]}{x[17:20]}-{x[20:]}"


class AuditLog:
    """The audit log in ``directory`` (created 0700; files 0600).

    Parameters:
        directory: where segments, checkpoints and the key reference live.
        key_manager: signs checkpoints with the audit key (created on first use as
            ``audit-<random>``, or ``key_name``; its KeyRef is kept in audit-key.json
            so a restart reuses it).
        clock: decides event times, day rotation, checkpoint and retention times.
        segment_max_bytes: a new segment starts before a line would make it bigger.
        rotate_daily: a new segment starts with the first event of each UTC day.
        retention: whole segments whose newest event is older than this are deleted
            (never the segment being written); None keeps everything.
        checkpoint_interval: how often ``append`` (or ``checkpoint_if_due``) signs one.
        key_name: the audit key's name when it has to be created.
        inline_maintenance: sign due checkpoints and apply retention inside ``append``.
            Set it to False when a timer in a worker thread calls ``checkpoint_if_due``,
            so that no append ever waits for the key manager.

    Raises ``AuditWriteError`` when the directory cannot be set up,
    ``AuditCorruptError`` when the log on disk cannot be continued (its tail is
    damaged or shorter than its last signed checkpoint), and the key manager's
    errors when the audit key cannot be created or used.
    """

    def __init__(
        self,
        directory: Path,
        *,
        key_manager: KeyManager,
        clock: Clock,
        segment_max_bytes: int = 64 * MiB,
        rotate_daily: bool = True,
        retention: dt.timedelta | None = None,
        checkpoint_interval: dt.timedelta = dt.timedelta(minutes=5),
        key_name: str | None = None,
        inline_maintenance: bool = True,
        metrics: AuditMetrics | None = None,
    ) -> None:
        if segment_max_bytes < 4096:
            raise AuditEventError("audit segment_max_bytes must be at least 4096")
        if checkpoint_interval <= dt.timedelta(0):
            raise AuditEventError("audit checkpoint_interval must be positive")
        if retention is not None and retention <= dt.timedelta(0):
            raise AuditEventError("audit retention must be positive, or None to keep everything")
        self._dir = Path(directory)
        self.metrics = metrics if metrics is not None else AuditMetrics()
        self._events_ok = self.metrics.events.labels("success")
        self._events_failed = self.metrics.events.labels("failure")
        self._km = key_manager
        self._clock = clock
        self._max_bytes = segment_max_bytes
        self._rotate_daily = rotate_daily
        self._retention = retention
        self._interval = checkpoint_interval
        self._inline = inline_maintenance
        self._lock = threading.RLock()
        self._retention_lock = threading.Lock()  # verify holds it so retention waits
        self._ids = _Ids()
        self._subscribers: set[threading.Event] = set()
        self._stops: set[threading.Event] = set()  # tails to end on close
        self._closed = False
        self._fd: int | None = None  # the current segment, opened on first append
        self._needs_repair = False  # a failed write may have left bytes past _seg_size
        self._dir_dirty = False  # a file was created since the directory was fsynced
        self._segments: list[SegInfo] = []
        self._seg_size = 0
        self._seq = 0
        self._hash = GENESIS_HASH
        self._anchor = (1, GENESIS_HASH)
        self._last_cp: Checkpoint | None = None
        self._lock_fd: int | None = None

        self._lock_fd = lock_directory(self._dir)
        try:
            self._key_ref, self._previous_keys = load_or_create_signing_key(
                self._dir, self._km, key_name
            )
            self._hmac_key = load_or_create_hmac_key(self._dir)
            state = recover(self._dir)
            self._segments = state.segments
            self._seq, self._hash = state.seq, state.hash
            self._seg_size = state.segment_size
            self._anchor = state.anchor
            last_cp = state.checkpoint
            self._last_cp = last_cp
            now = self._clock.now()
            self._next_cp_at = now + self._interval
            if last_cp is None or (last_cp.seq, last_cp.hash) != (self._seq, self._hash):
                self._checkpoint_locked(now)
            self._record_torn_tails()
        except BaseException:
            self._release_lock_file()
            raise
        self.metrics.last_seq.set_function(lambda: self._seq)  # read at scrape time, not per append
        log.info(
            "audit log opened",
            directory=str(self._dir),
            seq=self._seq,
            segments=len(self._segments),
            key_id=self._key_ref.key_id,
        )

    # ------------------------------------------------------------------ setup

    def _release_lock_file(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _record_torn_tails(self) -> None:
        """Append an ``audit.torn_tail`` event for each torn end set aside and not yet
        recorded, sign a checkpoint over them, then mark their files recorded."""
        pending = [t for t in list_torn_tails(self._dir) if t.pending]
        if not pending:
            return
        for torn in pending:
            try:
                data = torn.path.read_bytes()
            except OSError as exc:
                raise write_error("read a torn audit line set aside", torn.path, exc) from exc
            self.append(
                AuditEvent(
                    type=AUDIT_TORN_TAIL,
                    actor=Actor.system(),
                    action="recover",
                    resource=torn.segment,
                    reason="the segment ended with an incomplete line: kept aside, the chain "
                    "continues from the last complete event",
                    details={
                        "segment": torn.segment,
                        "offset": torn.offset,
                        "length": len(data),
                        "file": torn.recorded_path.name,
                        "sha256": hashlib.sha256(data).hexdigest(),
                    },
                )
            )
        self._checkpoint_locked(self._clock.now())
        try:
            for torn in pending:
                os.replace(torn.path, torn.recorded_path)
            fsync_dir(self._dir)
        except OSError as exc:
            raise write_error("mark a torn audit line recorded", self._dir, exc) from exc

    # ------------------------------------------------------------------ writing

    def append(self, event: AuditEvent) -> int:
        """``append_many`` of one event (the log's own events use it); returns its seq."""
        if not isinstance(event, AuditEvent):
            raise AuditEventError("append takes an AuditEvent")
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        """Write several events in one write; all are recorded, or none is (AuditWriteError).

        The events share one timestamp and land in one segment; the chain is the same
        as appending them one by one. This is what batch issuance uses.
        """
        if not events:
            return []
        if not all(isinstance(e, AuditEvent) for e in events):
            raise AuditEventError("append_many takes AuditEvents")
        with self._lock:
            if self._closed:
                raise AuditWriteError("the audit log is closed: the action cannot be recorded")
            now = self._clock.now()
            ts = format_time(now)
            first = self._seq + 1
            prev = self._hash
            chunks: list[bytes] = []
            for i, event in enumerate(events):
                unhashed = encode_unhashed(
                    id=self._ids.next(),
                    seq=first + i,
                    time=ts,
                    type=event.type,
                    actor=event.actor.to_json(),
                    action=event.action,
                    resource=event.resource,
                    outcome=event.outcome,
                    reason=event.reason,
                    details=event.details,  # type: ignore[arg-type]  # normalised to a dict
                    prev_hash=prev,
                )
                line, prev = seal(unhashed)
                data = line.encode("ascii") + b"\n"
                if len(data) > MAX_LINE_BYTES:
                    raise AuditEventError(
                        f"audit event of type {event.type} is {len(data)} bytes: keep details "
                        f"under {MAX_LINE_BYTES} bytes"
                    )
                chunks.append(data)
            rotated = self._write_line(first, ts, b"".join(chunks))
            self._seq, self._hash = first + len(events) - 1, prev
            self._segments[-1].last_time = ts
            for event in events:
                (self._events_ok if event.outcome == "success" else self._events_failed).inc()
            if self._inline:
                if rotated and self._retention is not None:
                    self._retention_quietly(now)
                if now >= self._next_cp_at:
                    self._checkpoint_quietly(now)
            subscribers = list(self._subscribers)
        for ev in subscribers:
            ev.set()
        return list(range(first, first + len(events)))

    def check(self) -> None:
        """Raise ``AuditWriteError`` when an event could not be written right now (closed
        log, segment not writable, disk full): for readiness checks and pre-flight."""
        with self._lock:
            if self._closed:
                raise AuditWriteError("the audit log is closed: the action cannot be recorded")
            if not self._segments:
                path = self._dir
                try:
                    ok = os.access(self._dir, os.W_OK)
                except OSError:
                    ok = False
                if not ok:
                    raise AuditWriteError(
                        f"cannot write the audit log: trustd may not write {path}: fix its "
                        "permissions or mount it read-write"
                    )
                stat = os.statvfs(self._dir)
            else:
                path = self._segments[-1].path
                if self._fd is None:
                    try:
                        self._fd = os.open(path, _OPEN_FLAGS, 0o600)
                    except OSError as exc:
                        raise write_error("open the audit segment", path, exc) from exc
                if self._needs_repair:
                    try:
                        os.ftruncate(self._fd, self._seg_size)
                    except OSError as exc:
                        raise write_error("repair the audit segment", path, exc) from exc
                    self._needs_repair = False
                stat = os.fstatvfs(self._fd)
            if stat.f_bavail * stat.f_frsize < _MIN_FREE_BYTES:
                raise AuditWriteError(
                    f"cannot write the audit log (ENOSPC): the disk holding {path} is full: "
                    "free space, then retry"
                )

    def _write_line(self, seq: int, ts: str, data: bytes) -> bool:
        """Put ``data`` at the end of the right segment; True if a new segment was started."""
        day = ts[:10]
        rotated = False
        cur = self._segments[-1] if self._segments else None
        if cur is None or (
            self._seg_size > 0
            and (
                self._seg_size + len(data) > self._max_bytes
                or (self._rotate_daily and day != cur.day)
            )
        ):
            self._open_new_segment(seq, day)
            rotated = True
        elif self._fd is None:
            try:
                self._fd = os.open(cur.path, _OPEN_FLAGS, 0o600)
            except OSError as exc:
                self.metrics.write_failures.labels(errno_name(exc)).inc()
                raise write_error("open the audit segment", cur.path, exc) from exc
        assert self._fd is not None
        path = self._segments[-1].path
        try:
            if self._needs_repair:
                os.ftruncate(self._fd, self._seg_size)
                self._needs_repair = False
            write_all(self._fd, data)
        except OSError as exc:
            self.metrics.write_failures.labels(errno_name(exc)).inc()
            try:  # take back a partly written line so the next append starts clean
                os.ftruncate(self._fd, self._seg_size)
            except OSError:
                self._needs_repair = True
            log.error("audit write failed", segment=path.name, seq=seq, errno=errno_name(exc))
            raise write_error(f"write audit event {seq}", path, exc) from exc
        self._seg_size += len(data)
        return rotated

    def _open_new_segment(self, seq: int, day: str) -> None:
        path = segment_path(self._dir, seq)
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o600)
            if os.fstat(fd).st_size != 0:
                os.close(fd)
                raise AuditCorruptError(
                    f"audit segment {path.name} exists already and is not empty: "
                    "run trustd audit verify"
                )
        except OSError as exc:
            self.metrics.write_failures.labels(errno_name(exc)).inc()
            log.error("audit segment not created", segment=path.name, errno=errno_name(exc))
            raise write_error("start a new audit segment", path, exc) from exc
        old_fd = self._fd
        if self._segments and self._segments[-1].first_seq == seq:
            self._segments.pop()  # a segment created earlier whose first write failed
        self._segments.append(
            SegInfo(first_seq=seq, path=path, first_prev_hash=self._hash, day=day, last_time="")
        )
        self._fd = fd
        self._seg_size = 0
        self._needs_repair = False
        self._dir_dirty = True
        if old_fd is not None:
            try:
                os.fsync(old_fd)
            except OSError as exc:
                log.error("audit segment fsync failed", errno=errno_name(exc))
            os.close(old_fd)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> Checkpoint:
        """Fsync and sign the current head now. Raises ``AuditWriteError`` or the KMS's error."""
        with self._lock:
            if self._closed:
                raise AuditWriteError("the audit log is closed")
            return self._checkpoint_locked(self._clock.now())

    def checkpoint_if_due(self) -> Checkpoint | None:
        """For a timer: apply retention and sign a checkpoint when the interval has passed."""
        with self._lock:
            if self._closed:
                return None
            now = self._clock.now()
            if self._retention is not None:
                self.apply_retention()
            if now < self._next_cp_at:
                return None
            if self._last_cp is not None and self._last_cp.seq == self._seq:
                self._next_cp_at = now + self._interval  # nothing new to vouch for
                return None
            return self._checkpoint_locked(now)

    def _checkpoint_locked(self, now: dt.datetime) -> Checkpoint:
        try:
            if self._fd is not None:
                os.fsync(self._fd)
            if self._dir_dirty:
                fsync_dir(self._dir)
                self._dir_dirty = False
        except OSError as exc:
            self.metrics.checkpoint_failures.inc()
            raise write_error("sync the audit log to disk", self._dir, exc) from exc
        cp = sign_checkpoint(
            self._km,
            self._key_ref,
            seq=self._seq,
            hash=self._hash,
            time=format_time(now),
            first_seq=self._anchor[0],
            first_prev_hash=self._anchor[1],
        )
        path = self._dir / CHECKPOINT_FILE
        data = cp.to_line().encode("ascii") + b"\n"
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            self.metrics.checkpoint_failures.inc()
            raise write_error("write an audit checkpoint", path, exc) from exc
        try:
            size = os.fstat(fd).st_size
            try:
                write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                self.metrics.checkpoint_failures.inc()
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    log.error("audit checkpoint file left with a torn line", path=str(path))
                raise write_error("write an audit checkpoint", path, exc) from exc
        finally:
            os.close(fd)
        if size == 0:
            try:
                fsync_dir(self._dir)
            except OSError as exc:
                raise write_error("sync the audit directory", self._dir, exc) from exc
        self._last_cp = cp
        self._next_cp_at = now + self._interval
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint.set(now.timestamp())
        log.info("audit checkpoint signed", seq=cp.seq, key_id=cp.key.key_id)
        return cp

    def _checkpoint_quietly(self, now: dt.datetime) -> None:
        # The event is written already: a failed checkpoint must not fail its action
        # (a retry would record it twice). Log, count, and retry soon.
        try:
            self._checkpoint_locked(now)
        except Exception as exc:
            self.metrics.checkpoint_failures.inc()
            self._next_cp_at = now + min(self._interval, dt.timedelta(minutes=1))
            log.error("audit checkpoint failed", error=str(exc), error_type=type(exc).__name__)

    # ------------------------------------------------------------------ retention

    def apply_retention(self) -> list[Path]:
        """Delete whole segments whose newest event is older than ``retention``.

        A checkpoint anchoring the oldest kept event is signed first, so ``verify``
        still accepts the shorter chain. Returns the deleted files. Skipped (returns
        []) while a ``verify`` is reading the directory.
        """
        if self._retention is None:
            return []
        with self._lock:
            if not self._retention_lock.acquire(blocking=False):
                return []
            try:
                return self._apply_retention_locked(self._clock.now())
            finally:
                self._retention_lock.release()

    def _apply_retention_locked(self, now: dt.datetime) -> list[Path]:
        assert self._retention is not None
        cutoff = format_time(now - self._retention)
        doomed: list[SegInfo] = []
        for info in self._segments[:-1]:  # never the segment being written
            if info.last_time and info.last_time < cutoff:
                doomed.append(info)
            else:
                break
        if not doomed:
            return []
        keep = self._segments[len(doomed)]
        old_anchor = self._anchor
        self._anchor = (keep.first_seq, keep.first_prev_hash)
        try:
            self._checkpoint_locked(now)
        except BaseException:
            self._anchor = old_anchor
            raise
        removed: list[Path] = []
        for info in doomed:
            with contextlib.suppress(FileNotFoundError):
                info.path.unlink()
            removed.append(info.path)
            self.metrics.segments_deleted.inc()
        self._segments = self._segments[len(doomed) :]
        try:
            fsync_dir(self._dir)
        except OSError as exc:
            log.error("audit directory fsync failed", errno=errno_name(exc))
        log.info(
            "audit segments deleted by retention",
            segments=len(removed),
            first_kept_seq=keep.first_seq,
        )
        return removed

    def _retention_quietly(self, now: dt.datetime) -> None:
        if not self._retention_lock.acquire(blocking=False):
            return
        try:
            self._apply_retention_locked(now)
        except Exception as exc:
            log.error("audit retention failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            self._retention_lock.release()

    # ------------------------------------------------------------------ reading

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def key_manager(self) -> KeyManager:
        """Where the audit key lives (what verifies this log's checkpoints)."""
        return self._km

    @property
    def key_ref(self) -> KeyRef:
        """The audit key that signs checkpoints."""
        return self._key_ref

    @property
    def head(self) -> ChainHead:
        with self._lock:
            return ChainHead(seq=self._seq, hash=self._hash)

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        with self._lock:
            return self._last_cp

    def token_hmac(self, secret: str) -> str:
        """``hmac_token`` with this deployment's salt key: how a token may appear in an event."""
        return hmac_token(secret, self._hmac_key)

    def iter_events(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        types: Iterable[str] = (),
        outcome: str | None = None,
        from_seq: int = 1,
    ) -> Iterator[AuditRecord]:
        """Events in seq order across segments. ``since`` inclusive, ``until`` exclusive;
        ``types`` exact or ``prefix*``; ``outcome`` "success" or "failure"."""
        where = EventFilter(since=since, until=until, types=tuple(types), outcome=outcome)
        return iter_records(self._dir, where=where, from_seq=from_seq)

    def export(
        self,
        out: TextIO,
        *,
        format: ExportFormat | str,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        types: Iterable[str] = (),
        outcome: str | None = None,
        progress: ProgressCallback | None = None,
        progress_every: int = 10_000,
        actor: Actor | None = None,
    ) -> int:
        """Export matching events to ``out`` (see ``trustd.audit.export``); returns the count.

        With ``actor``, an ``audit.export`` event naming the format and filters is
        appended first, so an export that cannot be audited does not happen.
        """
        try:
            fmt = ExportFormat(format)
        except ValueError as exc:
            raise AuditEventError(
                f"unknown export format {str(format)[:20]!r}: use jsonl, csv, ocsf or cef"
            ) from exc
        where = EventFilter(since=since, until=until, types=tuple(types), outcome=outcome)
        if actor is not None:
            self.append(
                AuditEvent(
                    type=AUDIT_EXPORT,
                    actor=actor,
                    action="export",
                    resource="audit",
                    details={
                        "format": str(fmt),
                        "since": since,
                        "until": until,
                        "types": list(where.types),
                        "outcome": outcome,
                    },
                )
            )
        if fmt == ExportFormat.JSONL:
            return write_jsonl(
                iter_records(self._dir, where=where, lazy=True),
                out,
                progress=progress,
                progress_every=progress_every,
            )
        fmt = ExportFormat(fmt)
        return write_rendered(
            map(renderer(fmt), iter_rows(self._dir, where=where)),
            out,
            progress=progress,
            progress_every=progress_every,
            header=",".join(CSV_COLUMNS) if fmt is ExportFormat.CSV else None,
            line_end="\r\n" if fmt is ExportFormat.CSV else "\n",
        )

    def count(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        types: Iterable[str] = (),
        outcome: str | None = None,
    ) -> int:
        """How many events ``iter_events`` would yield (the total for a progress bar)."""
        where = EventFilter(since=since, until=until, types=tuple(types), outcome=outcome)
        if not (since or until or where.types or outcome):
            with self._lock:
                if not self._segments:
                    return 0
                return self._seq - self._segments[0].first_seq + 1
        return count_records(self._dir, where=where)

    def tail(
        self,
        *,
        follow: bool = False,
        last: int = 10,
        types: Iterable[str] = (),
        outcome: str | None = None,
        poll_interval: float = 0.25,
        stop: threading.Event | None = None,
    ) -> Iterator[AuditRecord]:
        """The last ``last`` events, then (``follow``) each new one as it is appended,
        until ``stop`` is set, the log is closed (which sets ``stop``) or the consumer
        stops iterating."""
        wake = self.subscribe()
        where = EventFilter(types=tuple(types), outcome=outcome)
        done = stop or threading.Event()
        with self._lock:
            if self._closed:
                done.set()
            self._stops.add(done)

        def generate() -> Iterator[AuditRecord]:
            try:
                yield from tail(
                    self._dir,
                    follow=follow,
                    last=last,
                    where=where,
                    poll_interval=poll_interval,
                    stop=done,
                    wake=wake,
                )
            finally:
                self.unsubscribe(wake)
                with self._lock:
                    self._stops.discard(done)

        return generate()

    def subscribe(self) -> threading.Event:
        """An Event set after every append (and on close): wakes followers without polling."""
        ev = threading.Event()
        with self._lock:
            self._subscribers.add(ev)
        return ev

    def unsubscribe(self, ev: threading.Event) -> None:
        with self._lock:
            self._subscribers.discard(ev)

    def verify(
        self, *, min_seq: int | None = None, trusted_keys: Sequence[KeyRef] | None = None
    ) -> VerifyReport:
        """Verify the whole log (see ``trustd.audit.verify``) against the head this writer
        appended, so that a tail cut or torn after the last checkpoint is found too;
        retention waits meanwhile."""
        if trusted_keys is None:
            trusted_keys = [
                r for r in (self._key_ref, *self._previous_keys) if r.backend == self._km.kind
            ]
        keys = trusted_keys
        with self._retention_lock:
            head = self.head  # every event up to it is written: later ones may be in progress
            return verify(
                self._dir, key_manager=self._km, trusted_keys=keys, min_seq=min_seq, head=head
            )

    def public_keys(self) -> list[tuple[KeyRef, PublicKey]]:
        """The audit keys whose checkpoints this log's key manager can check, with their
        public keys: what ``trustd audit keys`` hands out for verifying a copy offline."""
        refs = [r for r in (self._key_ref, *self._previous_keys) if r.backend == self._km.kind]
        return [(r, self._km.public_key(r)) for r in dict.fromkeys(refs)]

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Sign a final checkpoint, fsync and close. Idempotent. Raises if the final
        checkpoint could not be written (the log is closed all the same)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            error: BaseException | None = None
            try:
                if self._last_cp is None or self._last_cp.seq != self._seq:
                    self._checkpoint_locked(self._clock.now())
            except Exception as exc:
                error = exc
                log.error("final audit checkpoint failed", error=str(exc))
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    log.error("audit segment fsync failed", errno=errno_name(exc))
                os.close(self._fd)
                self._fd = None
            self._release_lock_file()
            subscribers = list(self._subscribers) + list(self._stops)
        for ev in subscribers:
            ev.set()
        log.info("audit log closed", seq=self._seq)
        if error is not None:
            raise error

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
