"""Every server's audit chain, mirrored into the shared PostgreSQL.

Each ``trustd server`` keeps its own hash chain on its own disk, named by its
server ID (``D/server-id``). With several servers on one PostgreSQL,
:class:`AuditShipper` copies this server's chain into the store: the exact
stored lines (table ``audit_events``), the signed checkpoint lines
(``audit_checkpoints``, by line number) and the audit key references
(``audit_keys``: ``audit-key.json``, never a key). It follows the local log
like the syslog forwarder does, from the newest seq the database holds for this
server, so a server that was killed or lost its database for a while catches
up on its own, and copying a line twice changes nothing.

:func:`mirror_directory` rebuilds one mirrored chain as an audit directory, so
the one verifier (:func:`trustd.audit.verify.verify`) and the one reader check
and export it exactly as they do a local log: ``trustd audit verify`` and
``trustd audit export`` through any server cover every chain of the deployment.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from trustd.audit.reader import EventFilter, Follower, iter_records
from trustd.audit.record import AuditRecord
from trustd.audit.segments import CHECKPOINT_FILE, KEY_FILE, segment_path
from trustd.audit.verify import VerifyReport, verify
from trustd.backoff import Backoff, Retry
from trustd.ca.kms.base import KeyManager, KeyRef
from trustd.errors import TrustdError
from trustd.store.base import AuditMirrorStore

log = structlog.get_logger(__name__)

BATCH = 500  # events per transaction
POLL_SECONDS = 1.0  # checkpoints and the key file are looked at this often
_BACKOFF = Backoff(initial=0.5, maximum=10.0)
_PAGE = 5000


MirrorStore = AuditMirrorStore  # the part of the Store the mirror uses


class _Log(Protocol):
    @property
    def directory(self) -> Path: ...
    def subscribe(self) -> threading.Event: ...
    def unsubscribe(self, ev: threading.Event) -> None: ...


class AuditShipper:
    """Copies one server's audit chain into the store, from a thread of its own."""

    def __init__(self, audit_log: _Log, store: MirrorStore, server_id: str) -> None:
        self._log = audit_log
        self._dir = audit_log.directory
        self._store = store
        self.server_id = server_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cp_size = -1  # checkpoint file size at the last copy
        self._cp_count: int | None = None  # checkpoint lines the store holds
        self._key_text: str | None = None  # audit-key.json as last copied
        self.shipped_seq = 0  # the newest seq known to be in the store

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trustd-audit-mirror", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop; what was appended until now is copied first if the store answers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        wake = self._log.subscribe()
        retry = Retry(_BACKOFF)
        follower: Follower | None = None
        try:
            while True:
                stopping = self._stop.is_set()
                try:
                    if follower is None:
                        self.shipped_seq = self._store.audit_mirror_head(self.server_id)
                        follower = Follower(self._dir, from_seq=self.shipped_seq + 1)
                        self._cp_size, self._cp_count, self._key_text = -1, None, None
                    moved = self.ship_once(follower)
                    retry.reset()
                except (TrustdError, OSError) as exc:
                    log.warning("audit mirror behind; retrying", error=str(exc)[:300])
                    if follower is not None:
                        follower.close()
                    follower = None  # start again from what the store holds
                    if stopping:
                        break
                    self._stop.wait(retry.next_delay())
                    continue
                if stopping and not moved:
                    break
                if not moved:
                    wake.wait(POLL_SECONDS)
                    wake.clear()
        finally:
            if follower is not None:
                follower.close()
            self._log.unsubscribe(wake)

    def ship_once(self, follower: Follower) -> bool:
        """Copy what is new (a batch of events, new checkpoints, a changed key file)."""
        moved = False
        records = follower.read(BATCH)
        if records:
            self._store.mirror_audit_events(
                self.server_id, [(r.seq, r.time, r.raw) for r, _ in records]
            )
            self.shipped_seq = records[-1][0].seq
            moved = True
        self._ship_checkpoints()
        self._ship_key()
        return moved

    def _ship_checkpoints(self) -> None:
        path = self._dir / CHECKPOINT_FILE
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size == self._cp_size:
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line is not a checkpoint yet
        lines = [ln.decode("ascii", "replace") for ln in complete.splitlines() if ln.strip()]
        if self._cp_count is None:
            self._cp_count = self._store.audit_mirror_checkpoint_count(self.server_id)
        if len(lines) > self._cp_count:
            self._store.mirror_audit_checkpoints(
                self.server_id, self._cp_count, lines[self._cp_count :]
            )
            self._cp_count = len(lines)
        self._cp_size = len(complete)

    def _ship_key(self) -> None:
        try:
            text = (self._dir / KEY_FILE).read_text()
        except FileNotFoundError:
            return
        if text != self._key_text:
            self._store.mirror_audit_key(self.server_id, text)
            self._key_text = text


def mirror_directory(store: MirrorStore, server_id: str, directory: Path) -> bool:
    """Write ``server_id``'s mirrored chain into ``directory`` as an audit directory
    (one segment from its oldest mirrored seq, the checkpoints, the key file).
    False when the store holds nothing of that server."""
    first = store.audit_mirror_lines(server_id, after=0, limit=1)
    key_file = store.audit_mirror_key(server_id)
    if not first and key_file is None:
        return False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if first:
        with segment_path(directory, first[0][0]).open("w", encoding="utf-8") as out:
            after = 0
            while page := store.audit_mirror_lines(server_id, after=after, limit=_PAGE):
                out.write("".join(line + "\n" for _, line in page))
                after = page[-1][0]
    cps = store.audit_mirror_checkpoint_lines(server_id)
    (directory / CHECKPOINT_FILE).write_text("".join(line + "\n" for line in cps))
    if key_file is not None:
        (directory / KEY_FILE).write_text(key_file)
    return True


def verify_mirror(
    store: MirrorStore,
    server_id: str,
    directory: Path,
    *,
    key_manager: KeyManager,
    trusted_keys: Sequence[KeyRef] | None = None,
) -> VerifyReport:
    """Verify one mirrored chain as ``trustd audit verify --offline`` verifies a copy."""
    mirror_directory(store, server_id, directory)
    return verify(directory, key_manager=key_manager, trusted_keys=trusted_keys)


def merge_by_time(chains: Iterable[Iterator[AuditRecord]]) -> Iterator[AuditRecord]:
    """Events of several chains in time order (each chain is in time order already)."""
    return heapq.merge(*chains, key=lambda r: r.time)


def mirrored_records(directory: Path, where: EventFilter) -> Iterator[AuditRecord]:
    return iter_records(directory, where=where)


__all__ = [
    "AuditShipper",
    "MirrorStore",
    "merge_by_time",
    "mirror_directory",
    "mirrored_records",
    "verify_mirror",
]
