"""Proxy reports and leases in the store (SQLite; the same SQL runs on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustd.store.base import ProxyReportRecord
from trustd.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(seconds=15)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "trustd.db")
    yield s
    s.close()


def _report(pid: str, acked: int, at: dt.datetime, server: str = "srv-a") -> ProxyReportRecord:
    return ProxyReportRecord(
        proxy_id=pid,
        spiffe_id="spiffe://td/w",
        acked_version=acked,
        report=json.dumps({"proxyId": pid}),
        server_id=server,
        updated_at=at,
    )


def test_a_report_replaces_the_last_one_and_never_lowers_the_ack(store: SqliteStore) -> None:
    store.save_proxy_report(_report("p1", 3, NOW))
    assert store.ack_proxy("p1", 5, NOW)
    assert not store.ack_proxy("p1", 4, NOW)  # older ACK: nothing changes
    assert not store.ack_proxy("unknown", 9, NOW)  # no report yet: nothing to raise
    store.save_proxy_report(_report("p1", 4, NOW + TTL, server="srv-b"))
    [row] = store.list_proxy_reports()
    assert (row.acked_version, row.server_id, row.updated_at) == (5, "srv-b", NOW + TTL)


def test_reports_age_out_and_are_pruned(store: SqliteStore) -> None:
    store.save_proxy_report(_report("old", 1, NOW))
    store.save_proxy_report(_report("new", 1, NOW + dt.timedelta(minutes=5)))
    since = NOW + dt.timedelta(minutes=1)
    assert [r.proxy_id for r in store.list_proxy_reports(since=since)] == ["new"]
    assert store.prune_proxy_reports(since) == 1
    assert [r.proxy_id for r in store.list_proxy_reports()] == ["new"]
    store.delete_proxy_report("new")
    assert store.list_proxy_reports() == []


def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: SqliteStore) -> None:
    assert store.take_lease("rollout", "a", NOW, TTL)
    assert store.take_lease("rollout", "a", NOW + dt.timedelta(seconds=5), TTL)  # renewed
    assert not store.take_lease("rollout", "b", NOW + TTL, TTL)  # renewed until NOW+20s
    assert store.take_lease("rollout", "b", NOW + TTL + dt.timedelta(seconds=5), TTL)
    assert not store.take_lease("rollout", "a", NOW + TTL + dt.timedelta(seconds=6), TTL)
    store.release_lease("rollout", "a")  # not a's: nothing happens
    assert not store.take_lease("rollout", "a", NOW + TTL + dt.timedelta(seconds=6), TTL)
    store.release_lease("rollout", "b")
    assert store.take_lease("rollout", "a", NOW + TTL + dt.timedelta(seconds=6), TTL)
    assert store.take_lease("other", "b", NOW, TTL)  # leases are independent
