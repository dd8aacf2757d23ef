"""Changes made through one server, woken on every other server sharing the PostgreSQL.

Each server's :class:`~trustd.server.changes.ChangeHub` wakes the watchers of that
server when a topic changes ("entries", "bundle", "policy", "agents"). With
several servers on one database, a change written through server A must also
wake the agents' watches held by server B. :class:`PgChangeFeed` does that
through PostgreSQL itself, with no messaging of trustd's own:

- every local change is published as ``NOTIFY trustd_changes, '<topic> <server>'``
  (from a thread of its own, so neither the event loop nor a request waits on it);
- a ``LISTEN trustd_changes`` connection wakes the local hub for every change
  another server published;
- when the listening connection is lost, it reconnects with backoff, and then
  wakes every topic once, since a change may have been missed meanwhile. The hub's
  periodic re-check stays as the last fallback.

Watchers re-read the store when woken, so a notification carries no data: a
lost or duplicated one costs a read, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable

import psycopg
import structlog

from trustd.backoff import Backoff, Retry

log = structlog.get_logger(__name__)

CHANNEL = "trustd_changes"
TOPICS = ("entries", "bundle", "policy", "agents")
_RECONNECT = Backoff(initial=0.2, maximum=5.0)
_STOP = object()


class PgChangeFeed:
    def __init__(
        self,
        dsn: str,
        *,
        server_id: str,
        wake: Callable[[str], None],
        topics: Iterable[str] = TOPICS,
        connect_timeout: int = 5,
    ) -> None:
        self._dsn = dsn
        self._server_id = server_id
        self._wake = wake  # the local hub's notify, without publishing again
        self._topics = tuple(topics)
        self._timeout = connect_timeout
        self._outbox: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listening = threading.Event()  # set while the LISTEN connection is up
        self.published = 0
        self.received = 0

    def start(self) -> None:
        for target, name in ((self._listen, "listen"), (self._publish_loop, "notify")):
            t = threading.Thread(target=target, name=f"trustd-pg-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(_STOP)
        for t in self._threads:
            t.join(timeout=5)

    def publish(self, topic: str) -> None:
        """Tell the other servers ``topic`` changed (returns at once)."""
        self._outbox.put(topic)

    # -- the threads

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)

    def _publish_loop(self) -> None:
        conn: psycopg.Connection | None = None
        retry = Retry(_RECONNECT)
        while not self._stop.is_set():
            item = self._outbox.get()
            if item is _STOP:
                break
            topics = {str(item)}
            with contextlib.suppress(queue.Empty):  # send what piled up in one go
                while len(topics) < len(self._topics) + 1:
                    more = self._outbox.get_nowait()
                    if more is _STOP:
                        self._stop.set()
                        break
                    topics.add(str(more))
            while not self._stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    for topic in sorted(topics):
                        conn.execute(
                            "SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic} {self._server_id}")
                        )
                        self.published += 1
                    retry.reset()
                    break
                except psycopg.Error as exc:
                    log.warning("change notification not sent; retrying", error=_first_line(exc))
                    conn = None
                    self._stop.wait(retry.next_delay())
        if conn is not None:
            conn.close()

    def _listen(self) -> None:
        retry = Retry(_RECONNECT)
        first = True
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if not first:
                        # Changes made while we were not listening: wake every topic once.
                        for topic in self._topics:
                            self._wake(topic)
                        log.info("change notifications restored")
                    first = False
                    retry.reset()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._received(note.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                if self._stop.is_set():
                    break
                log.warning("change notifications lost; reconnecting", error=_first_line(exc))
                self._stop.wait(retry.next_delay())
        self.listening.clear()

    def _received(self, payload: str) -> None:
        topic, _, origin = payload.partition(" ")
        if origin == self._server_id or topic not in self._topics:
            return
        self.received += 1
        self._wake(topic)


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
