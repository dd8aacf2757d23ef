"""Changes published through PostgreSQL wake the other servers' hubs (a real PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from trustd.server.changes import ChangeHub
from trustd.store.pg_changes import CHANNEL, TOPICS, PgChangeFeed

pytestmark = pytest.mark.integration


def _until(what: str, ok: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class _Server:
    def __init__(self, dsn: str, name: str) -> None:
        self.hub = ChangeHub()
        self.feed = PgChangeFeed(
            dsn, server_id=name, wake=lambda t: self.hub.notify(t, remote=True)
        )
        self.hub.set_broadcast(self.feed.publish)
        self.feed.start()
        assert self.feed.listening.wait(20), "LISTEN did not start"


@pytest.fixture
def pair(fresh_db: str) -> Iterator[tuple[_Server, _Server]]:
    a, b = _Server(fresh_db, "srv-a"), _Server(fresh_db, "srv-b")
    try:
        yield a, b
    finally:
        a.feed.stop()
        b.feed.stop()


def test_a_change_on_one_server_wakes_the_other_and_is_not_echoed(
    pair: tuple[_Server, _Server],
) -> None:
    a, b = pair
    a.hub.notify("entries")
    _until("b hears about a's entry change", lambda: b.hub.version("entries") == 1)
    b.hub.notify("bundle")
    _until("a hears about b's bundle change", lambda: a.hub.version("bundle") == 1)
    time.sleep(1.0)  # give an echo every chance to arrive
    assert a.hub.version("entries") == 1  # its own change, counted once
    assert b.hub.version("bundle") == 1
    assert b.hub.version("policy") == 0  # other topics untouched
    assert a.feed.received == 1 and b.feed.received == 1


def test_a_burst_of_changes_arrives(pair: tuple[_Server, _Server]) -> None:
    a, b = pair
    for _ in range(200):
        a.hub.notify("entries")
    _until("the burst reached b", lambda: b.hub.version("entries") >= 1)
    # coalescing may merge a burst, but the last change is never lost: b's watchers
    # re-read the store when woken
    assert a.feed.published >= 1


def test_unknown_topics_and_foreign_payloads_are_ignored(
    pair: tuple[_Server, _Server], fresh_db: str
) -> None:
    a, b = pair
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "drop-tables srv-x"))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "garbage"))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "policy srv-x"))
    _until("the valid one reaches b", lambda: b.hub.version("policy") == 1)
    _until("the valid one reaches a", lambda: a.hub.version("policy") == 1)
    time.sleep(0.5)  # anything else would have arrived by now
    assert a.hub.version("policy") == 1 and b.hub.version("policy") == 1
    assert b.feed.received == 1 and a.feed.received == 1


def test_lost_listen_connection_reconnects_and_wakes_every_topic(
    pair: tuple[_Server, _Server], fresh_db: str
) -> None:
    a, b = pair
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"%LISTEN {CHANNEL}%",),
        ).fetchall()
    assert killed, "no LISTEN connection found to cut"
    # each server wakes every topic once after it listens again (it may have missed some)
    for topic in TOPICS:

        def woken(t: str = topic) -> bool:
            return b.hub.version(t) >= 1

        _until(f"{topic} woken after reconnect", woken)
    assert b.feed.listening.is_set()
    a.hub.notify("agents")
    _until("notifications flow again", lambda: b.hub.version("agents") >= 2)
