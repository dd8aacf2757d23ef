"""``trustd audit verify``: walk the chain and the signed checkpoints, report the first damage.

What is detected, and the ``first_bad_seq`` reported:

- an edited event (its content no longer matches its hash): that event;
- an event rewritten *with* a recomputed hash: that event (the next one no longer
  chains to it); a rewrite of the whole rest of the chain: the first event after
  the last checkpoint (or head) that still matches;
- a deleted or reordered event (seq out of order): the first seq missing from its place;
- an inserted event (a seq that appears twice, or a line that does not chain): that seq;
- a truncated tail (the log ends before the last signed checkpoint, or before the
  ``head`` of the running writer): the first missing seq;
- a torn last line (the newest segment ends with bytes that are not a complete,
  newline-terminated line: a crash in the middle of a write, or a truncate inside an
  event): the seq that line would hold. With ``head``, bytes after the head's event
  are an append in progress, not damage;
- deleted old events that retention did not delete (the log starts after the anchor
  in the last checkpoint): the anchored first seq.

Online (``AuditLog.verify``, which ``trustd audit verify`` reaches through the admin
API) the files are compared with the head the running writer holds in memory, so a
tail that was cut, torn or rewritten is found whether or not a checkpoint covers it.

Offline (``trustd audit verify --offline``, the server stopped) the newest signed
checkpoint is the only record of the head: trustd signs one every
``checkpoint_interval``, on retention and at every clean shutdown. Offline
verification finds an edited event anywhere, a deleted, inserted or reordered event
that a later event follows, a torn last line, and a cut or rewritten tail up to the
newest checkpoint (after a clean shutdown: the whole log). It cannot find, after a
crash or a kill, whole events written after the newest checkpoint (at most one
``checkpoint_interval`` of them) that were cut from the end or rewritten with
recomputed hashes; nor events removed together with the checkpoints that cover them
(checkpoints.jsonl cut back to an older line). Anchor the head elsewhere (syslog
forwarding, ``min_seq`` from a remote copy) to close that gap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from trustd.audit.checkpoint import Checkpoint, signature_valid
from trustd.audit.errors import AuditCorruptError
from trustd.audit.record import (
    GENESIS_HASH,
    ChainHead,
    SealedLines,
    check_line_hash,
    parse_json_line,
    record_from_json,
    validate,
)
from trustd.audit.segments import CHECKPOINT_FILE, KEY_FILE, LOCK_FILE, list_segments
from trustd.ca.kms.base import KeyManager, KeyRef, PublicKey
from trustd.errors import TrustdError

_BLOCK = 64 * 1024  # bytes read at a time from a segment


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The outcome of ``verify``. ``ok`` is False exactly when ``problem`` is set."""

    ok: bool  # the chain, the checkpoints and their signatures are all intact
    first_bad_seq: int | None  # the first damaged (or missing) seq; None when ok or not seq-bound
    problem: str  # what is wrong, in one line; "" when ok
    events_checked: int  # events read and found intact before the first problem
    first_seq: int | None = None  # the oldest event found
    last_seq: int | None = None  # the newest event found
    checkpoints_checked: int = 0  # checkpoints whose signature was verified
    last_checkpoint_seq: int | None = None  # the head the newest valid checkpoint signed
    head_seq: int | None = None  # the running writer's head compared against; None offline


def load_key_refs(directory: Path) -> list[KeyRef]:
    """The audit key (and earlier ones after a key manager change) recorded in audit-key.json."""
    path = directory / KEY_FILE
    try:
        data = json.loads(path.read_text())
        refs = [KeyRef.from_json(data["current"])]
        refs += [KeyRef.from_json(r) for r in data.get("previous", [])]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditCorruptError(
            f"audit key file {path} is unreadable: restore it from a backup"
        ) from exc
    return refs


def in_use(directory: Path) -> bool:
    """True while a writer (a running trustd) holds the log's lock."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing drops a lock taken here
    return False


class _Damage(Exception):
    def __init__(self, seq: int | None, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


def verify(
    directory: Path,
    *,
    key_manager: KeyManager,
    trusted_keys: Sequence[KeyRef] | None = None,
    min_seq: int | None = None,
    head: ChainHead | None = None,
) -> VerifyReport:
    """Verify every segment and checkpoint in ``directory``.

    ``trusted_keys`` defaults to the refs in audit-key.json that belong to
    ``key_manager``'s backend; each checkpoint's signature is checked against the
    public key the key manager returns for it. ``min_seq``: an externally anchored
    seq the log must reach (e.g. the last seq a SIEM received). ``head``: the
    newest event the running writer appended, taken before the files are read; the
    log must hold it, with its hash.
    """
    state = _Walk()
    head_seq = head.seq if head is not None else None
    try:
        checkpoints = _load_checkpoints(directory, key_manager, trusted_keys, state)
        _walk_events(directory, checkpoints, state, head)
        _check_tail(checkpoints, state, min_seq, head)
    except _Damage as damage:
        return VerifyReport(
            ok=False,
            first_bad_seq=damage.seq,
            problem=damage.problem,
            events_checked=state.events,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            checkpoints_checked=state.checkpoints,
            last_checkpoint_seq=state.last_cp_seq,
            head_seq=head_seq,
        )
    return VerifyReport(
        ok=True,
        first_bad_seq=None,
        problem="",
        events_checked=state.events,
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        checkpoints_checked=state.checkpoints,
        last_checkpoint_seq=state.last_cp_seq,
        head_seq=head_seq,
    )


class _Walk:
    __slots__ = ("checkpoints", "events", "first_seq", "last_cp_seq", "last_seq", "torn")

    def __init__(self) -> None:
        self.events = 0
        self.checkpoints = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.last_cp_seq: int | None = None
        self.torn: tuple[str, int, int] | None = None  # (segment, offset, length) of a torn end


def _load_checkpoints(
    directory: Path,
    key_manager: KeyManager,
    trusted_keys: Sequence[KeyRef] | None,
    state: _Walk,
) -> list[Checkpoint]:
    if trusted_keys is None:
        try:
            recorded = load_key_refs(directory)
        except AuditCorruptError as exc:
            raise _Damage(None, str(exc)) from exc
        if not recorded and (list_segments(directory) or (directory / CHECKPOINT_FILE).exists()):
            raise _Damage(
                None, f"{KEY_FILE} is missing: the checkpoints cannot be checked; restore it"
            )
        trusted_keys = [r for r in recorded if r.backend == key_manager.kind]
    trusted = set(trusted_keys)
    publics: dict[KeyRef, PublicKey] = {}
    path = directory / CHECKPOINT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    out: list[Checkpoint] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for n, line in enumerate(lines, 1):
        try:
            cp = Checkpoint.from_line(line)
        except ValueError as exc:
            if n == len(lines) and not raw.endswith(b"\n"):
                break  # a checkpoint being written right now, or torn by a crash
            raise _Damage(None, f"checkpoint {n} in {CHECKPOINT_FILE} is malformed: {exc}") from exc
        if cp.key not in trusted:
            if cp.key.backend != key_manager.kind:
                continue  # signed under an earlier key manager: cannot be checked here
            raise _Damage(
                None, f"checkpoint {n} is signed by key {cp.key.key_id!r}, not a trusted audit key"
            )
        if cp.key not in publics:
            try:
                publics[cp.key] = key_manager.public_key(cp.key)
            except TrustdError as exc:
                raise _Damage(
                    None, f"cannot get the public key of audit key {cp.key.key_id!r}: {exc}"
                ) from exc
        if not signature_valid(cp, publics[cp.key]):
            raise _Damage(
                cp.seq if cp.seq > 0 else None,
                f"checkpoint {n} (seq {cp.seq}) has an invalid signature: "
                "the checkpoint file was altered",
            )
        if out and (cp.seq < out[-1].seq or cp.first_seq < out[-1].first_seq):
            raise _Damage(
                cp.seq if cp.seq > 0 else None,
                f"checkpoint {n} (seq {cp.seq}) goes backwards from seq {out[-1].seq}",
            )
        out.append(cp)
        state.checkpoints += 1
        state.last_cp_seq = cp.seq
    if not out and trusted:
        raise _Damage(
            None,
            f"no valid signed checkpoint in {CHECKPOINT_FILE}: it was deleted or emptied, "
            "so a truncated tail cannot be ruled out",
        )
    return out


def _walk_events(
    directory: Path, checkpoints: list[Checkpoint], state: _Walk, head: ChainHead | None
) -> None:
    anchor_seq, anchor_prev = 1, GENESIS_HASH
    if checkpoints:
        anchor_seq, anchor_prev = checkpoints[-1].first_seq, checkpoints[-1].first_prev_hash
    expect_at: dict[int, tuple[str, int]] = {}  # seq -> (hash, index of the checkpoint)
    for i, cp in enumerate(checkpoints):
        if cp.seq > 0:
            expect_at[cp.seq] = (cp.hash, i)
    last_good_cp_seq = 0
    expected: int | None = None
    prev_hash = ""
    # seqs where more than the chain is checked: those take the full path below
    special = {anchor_seq, *expect_at}
    if head is not None:
        special.add(head.seq)
    sealed = SealedLines().fields
    segments = [s for s in list_segments(directory) if s.path.stat().st_size > 0]
    for idx, seg in enumerate(segments):
        if idx != len(segments) - 1 and _unterminated(seg.path):
            raise _Damage(
                (expected or seg.first_seq),
                f"segment {seg.path.name} ends with an unterminated line",
            )
        lines = _SegmentLines(seg.path)
        for lineno, line in enumerate(lines, 1):
            fields = sealed(line)
            if fields is not None:
                # a canonical line with a matching hash that continues the chain: what the
                # checks below would find of it, without parsing it
                seq, prev, digest = fields
                if seq == expected and prev == prev_hash and lineno > 1 and seq not in special:
                    prev_hash = digest
                    expected = seq + 1
                    state.events += 1
                    state.last_seq = seq
                    continue
            where = f"{seg.path.name} line {lineno}"
            hashes = check_line_hash(line)
            try:
                rec = record_from_json(parse_json_line(line.decode("utf-8", errors="replace")))
                validate(rec)
            except ValueError as exc:
                raise _Damage(expected, f"{where} is not an audit event: {exc}") from exc
            seq = rec.seq
            if lineno == 1 and seq != seg.first_seq:
                raise _Damage(
                    min(seq, seg.first_seq) if expected is None else expected,
                    f"segment {seg.path.name} starts with seq {seq}, not {seg.first_seq}",
                )
            if expected is None:
                # the first event kept: it must be at or before the signed anchor
                if seq > anchor_seq:
                    raise _Damage(
                        anchor_seq,
                        f"events {anchor_seq} to {seq - 1} are missing from the start of the log",
                    )
                if seq == anchor_seq and rec.prev_hash != anchor_prev:
                    raise _Damage(seq, f"event {seq} does not chain to the signed anchor")
                state.first_seq = seq
                last_good_cp_seq = seq - 1  # nothing before the oldest kept event to vouch for
            elif seq > expected:
                raise _Damage(
                    expected,
                    f"event {expected} is missing at {where} (found seq {seq}): deleted or moved",
                )
            elif seq < expected:
                raise _Damage(
                    seq,
                    f"seq {seq} appears again at {where} (expected {expected}): "
                    "an event was inserted, duplicated or moved",
                )
            if hashes is None or hashes[0] != hashes[1] or hashes[0] != rec.hash:
                raise _Damage(seq, f"event {seq} was modified: its content does not match its hash")
            if expected is not None and rec.prev_hash != prev_hash:
                raise _Damage(
                    seq - 1,
                    f"event {seq} does not chain to event {seq - 1}: event {seq - 1} was "
                    f"rewritten with a new hash, or event {seq} was inserted",
                )
            if seq == anchor_seq and rec.prev_hash != anchor_prev:
                raise _Damage(seq, f"event {seq} does not chain to the signed anchor")
            signed = expect_at.get(seq)
            if signed is not None:
                if signed[0] != rec.hash:
                    raise _Damage(
                        last_good_cp_seq + 1,
                        f"event {seq} differs from checkpoint {signed[1] + 1}: the chain after "
                        f"seq {last_good_cp_seq} was rewritten",
                    )
                last_good_cp_seq = seq
            if head is not None and seq == head.seq and rec.hash != head.hash:
                raise _Damage(
                    last_good_cp_seq + 1,
                    f"event {seq} differs from the head the running trustd wrote: the chain "
                    f"after seq {last_good_cp_seq} was rewritten",
                )
            prev_hash = rec.hash
            expected = seq + 1
            state.events += 1
            state.last_seq = seq
        if lines.torn:
            state.torn = (seg.path.name, lines.size - len(lines.torn), len(lines.torn))


def _unterminated(path: Path) -> bool:
    """True when a segment file does not end with a newline."""
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return False
        fh.seek(size - 1)
        return fh.read(1) != b"\n"


class _SegmentLines:
    """The newline-terminated lines of a segment, without their newlines, read a block
    at a time (a whole segment at once is slower: a 64 MiB buffer, lines split from it
    long out of the CPU caches). Once they are all read, ``torn`` holds the bytes after
    the last newline and ``size`` the bytes read."""

    __slots__ = ("_path", "size", "torn")

    def __init__(self, path: Path) -> None:
        self._path = path
        self.size = 0
        self.torn = b""

    def __iter__(self) -> Iterator[bytes]:
        pending: list[bytes] = []  # the start of a line whose newline is not read yet
        with self._path.open("rb") as fh:
            while chunk := fh.read(_BLOCK):
                self.size += len(chunk)
                lines = chunk.split(b"\n")
                if len(lines) > 1:
                    pending.append(lines[0])
                    lines[0] = b"".join(pending)
                    pending.clear()
                pending.append(lines.pop())
                yield from lines
        self.torn = b"".join(pending)


def _missing(first: int, last: int) -> str:
    return f"event {first} is" if first == last else f"events {first}..{last} are"


def _check_tail(
    checkpoints: list[Checkpoint], state: _Walk, min_seq: int | None, head: ChainHead | None
) -> None:
    last = state.last_seq or 0
    torn = ""
    if state.torn is not None:
        name, offset, length = state.torn
        torn = f"; {name} ends with a torn line at byte {offset} ({length} bytes, no newline)"
    if head is not None and head.seq > last:
        raise _Damage(
            last + 1,
            f"truncated: {_missing(last + 1, head.seq)} missing after the last one on disk "
            f"(seq {last}); the running trustd wrote up to seq {head.seq}{torn}",
        )
    if checkpoints and checkpoints[-1].seq > last:
        cp = checkpoints[-1]
        raise _Damage(
            last + 1,
            f"truncated: {_missing(last + 1, cp.seq)} missing after the last one on disk "
            f"(seq {last}); a checkpoint signed at {cp.time} covers seq {cp.seq}{torn}",
        )
    if state.torn is not None and head is None:
        name, offset, length = state.torn
        raise _Damage(
            last + 1,
            f"{name} ends with a torn line at byte {offset} ({length} bytes, no newline): "
            f"event {last + 1} was cut short by a crash or a truncate; starting trustd sets "
            "it aside and records that",
        )
    if min_seq is not None and min_seq > last:
        raise _Damage(last + 1, f"the log ends at seq {last} but seq {min_seq} was expected")
