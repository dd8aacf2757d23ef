"""The SQLite store: versioned migrations, entries, changes, authorities, ledger, tokens, documents."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.entries import RegistrationEntry
from trustd.errors import AlreadyExistsError, NotFoundError, UnavailableError
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId
from trustd.store import migrations
from trustd.store.base import AgentRecord, AuthorityRecord, JoinTokenRecord, LedgerRecord
from trustd.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "trustd.db")
    yield s
    s.close()


def _entry(
    spiffe_id: str = "spiffe://trustd.local/ns/a/sa/web", *selectors: str
) -> RegistrationEntry:
    return RegistrationEntry(
        id=str(uuid.uuid4()),
        spiffe_id=SpiffeId.parse(spiffe_id),
        selectors=tuple(sorted(Selector.parse(s) for s in (selectors or ("unix:uid:1000",)))),
        ttl=dt.timedelta(minutes=30),
        dns_names=("web.a.svc",),
        created_at=NOW,
    )


# -- migrations -------------------------------------------------------------------------


def test_schema_is_versioned_and_at_the_newest_migration(store: SqliteStore) -> None:
    assert store.schema_version() == len(migrations.MIGRATIONS)
    assert store.migrate() == len(migrations.MIGRATIONS)  # running again changes nothing


def test_file_is_0600(tmp_path: Path, store: SqliteStore) -> None:
    assert stat.S_IMODE((tmp_path / "trustd.db").stat().st_mode) == 0o600


def test_reopening_keeps_data_and_version(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "trustd.db")
    e = s.create_entry(_entry())
    s.close()
    again = SqliteStore(tmp_path / "trustd.db")
    assert again.schema_version() == len(migrations.MIGRATIONS)
    assert again.get_entry(e.id).spiffe_id == e.spiffe_id
    again.close()


def test_a_new_migration_runs_once_on_an_existing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = SqliteStore(tmp_path / "trustd.db")
    e = s.create_entry(_entry())
    s.close()
    n = len(migrations.MIGRATIONS)
    monkeypatch.setattr(
        migrations,
        "MIGRATIONS",
        [
            *migrations.MIGRATIONS,
            "CREATE TABLE extra (k TEXT PRIMARY KEY); ALTER TABLE entries ADD COLUMN note TEXT",
        ],
    )
    monkeypatch.setattr("trustd.store.sql.MIGRATIONS", migrations.MIGRATIONS)
    upgraded = SqliteStore(tmp_path / "trustd.db")
    assert upgraded.schema_version() == n + 1
    assert upgraded.get_entry(e.id).id == e.id  # old data kept
    with upgraded._tx() as run:
        versions = [
            r[0] for r in run("SELECT version FROM schema_version ORDER BY version").fetchall()
        ]
        run("INSERT INTO extra (k) VALUES ('x')")
    assert versions == list(range(1, n + 2))
    assert upgraded.migrate() == n + 1  # and it does not run twice
    upgraded.close()


def test_a_failing_migration_leaves_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteStore(tmp_path / "trustd.db").close()
    bad = [*migrations.MIGRATIONS, "CREATE TABLE ok_table (k TEXT); THIS IS NOT SQL"]
    monkeypatch.setattr("trustd.store.sql.MIGRATIONS", bad)
    with pytest.raises(UnavailableError):
        SqliteStore(tmp_path / "trustd.db")
    monkeypatch.undo()
    s = SqliteStore(tmp_path / "trustd.db")
    assert s.schema_version() == len(migrations.MIGRATIONS)
    with s._tx() as run:
        tables = {r[0] for r in run("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
    assert "ok_table" not in tables  # rolled back with the failing statement
    s.close()


# -- entries ----------------------------------------------------------------------------


def test_entry_create_get_list_delete(store: SqliteStore) -> None:
    e = _entry()
    created = store.create_entry(e)
    assert created.id == e.id
    assert created.spiffe_id == e.spiffe_id
    assert created.selectors == e.selectors
    assert created.ttl == dt.timedelta(minutes=30)
    assert created.dns_names == ("web.a.svc",)
    assert created.created_at == NOW
    assert created.revision == 1
    assert store.get_entry(e.id) == created
    assert store.list_entries() == [created]
    assert store.find_entries_by_spiffe_id(str(e.spiffe_id)) == [created]
    assert store.find_entries_by_spiffe_id("spiffe://trustd.local/other") == []
    assert store.delete_entry(e.id) == created
    assert store.list_entries() == []
    with pytest.raises(NotFoundError, match="trustd entry list"):
        store.get_entry(e.id)


def test_entry_without_ttl_keeps_none(store: SqliteStore) -> None:
    e = RegistrationEntry(
        id="e1",
        spiffe_id=SpiffeId.parse("spiffe://trustd.local/x"),
        selectors=(Selector.parse("unix:uid:1"),),
        created_at=NOW,
    )
    assert store.create_entry(e).ttl is None


def test_duplicate_entry_is_already_exists(store: SqliteStore) -> None:
    first = store.create_entry(_entry("spiffe://trustd.local/a", "unix:uid:1", "unix:gid:2"))
    with pytest.raises(AlreadyExistsError, match=first.id):
        store.create_entry(_entry("spiffe://trustd.local/a", "unix:gid:2", "unix:uid:1"))
    assert len(store.list_entries()) == 1
    # same ID with other selectors, or other ID with the same selectors: both fine
    store.create_entry(_entry("spiffe://trustd.local/a", "unix:uid:1"))
    store.create_entry(_entry("spiffe://trustd.local/b", "unix:uid:1", "unix:gid:2"))
    assert len(store.list_entries()) == 3


def test_duplicate_entry_id_is_already_exists(store: SqliteStore) -> None:
    e = store.create_entry(_entry("spiffe://trustd.local/a"))
    clash = RegistrationEntry(
        id=e.id,
        spiffe_id=SpiffeId.parse("spiffe://trustd.local/b"),
        selectors=(Selector.parse("unix:uid:5"),),
        created_at=NOW,
    )
    with pytest.raises(AlreadyExistsError):
        store.create_entry(clash)
    assert store.get_entry(e.id).spiffe_id == e.spiffe_id


def test_deleting_an_unknown_entry_is_not_found(store: SqliteStore) -> None:
    with pytest.raises(NotFoundError):
        store.delete_entry("nope")
    assert store.entry_changes_since(0) == (0, [])


def test_entry_changes_since_gives_deltas_including_deletes(store: SqliteStore) -> None:
    a = store.create_entry(_entry("spiffe://trustd.local/a"))
    b = store.create_entry(_entry("spiffe://trustd.local/b"))
    head, changes = store.entry_changes_since(0)
    assert head == 2
    assert [(c.entry_id, c.entry is not None) for c in changes] == [(a.id, True), (b.id, True)]
    assert changes[1].entry == b

    store.delete_entry(a.id)
    c = store.create_entry(_entry("spiffe://trustd.local/c"))
    head, changes = store.entry_changes_since(2)
    assert head == 4
    assert [(ch.revision, ch.entry_id, ch.entry) for ch in changes] == [
        (3, a.id, None),
        (4, c.id, c),
    ]

    # From the start, a created-then-deleted entry shows up once, as deleted.
    _, changes = store.entry_changes_since(0)
    assert [(ch.entry_id, ch.entry is None) for ch in changes] == [
        (b.id, False),
        (a.id, True),
        (c.id, False),
    ]
    assert store.entry_changes_since(head) == (head, [])


# -- authorities ------------------------------------------------------------------------


def _ca_cert(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _authority(aid: str, state: str, **kw: object) -> AuthorityRecord:
    return AuthorityRecord(
        id=aid,
        state=state,
        tainted=bool(kw.get("tainted", False)),
        revoked=False,
        key_ref=KeyRef(backend="local", key_id=f"ca-{aid}", algorithm=KeyAlgorithm.EC_P384),
        certificate=_ca_cert(aid),
        upstream_chain=tuple(kw.get("chain", ())),  # type: ignore[arg-type]
        upstream_roots=tuple(kw.get("roots", ())),  # type: ignore[arg-type]
        created_at=NOW + dt.timedelta(seconds=int(str(kw.get("offset", 0)))),
        activated_at=NOW if state == "active" else None,
    )


def test_authorities_round_trip_whole(store: SqliteStore) -> None:
    root = _ca_cert("root")
    active = _authority("aa", "active", chain=[root], roots=[root])
    prepared = _authority("bb", "prepared", tainted=True, offset=5)
    store.replace_authorities([active, prepared])
    got = store.list_authorities()
    assert [r.id for r in got] == ["aa", "bb"]  # oldest first
    assert got[0] == active
    assert got[1] == prepared
    assert got[0].key_ref.algorithm is KeyAlgorithm.EC_P384
    assert got[0].upstream_roots == (root,)


def test_replace_authorities_replaces_the_whole_set(store: SqliteStore) -> None:
    store.replace_authorities([_authority("aa", "active"), _authority("bb", "prepared", offset=1)])
    store.replace_authorities([_authority("bb", "active", offset=1)])
    assert [(r.id, r.state) for r in store.list_authorities()] == [("bb", "active")]
    store.save_authority(_authority("cc", "prepared", offset=2))
    store.delete_authority("bb")
    assert [r.id for r in store.list_authorities()] == ["cc"]


# -- ledger -----------------------------------------------------------------------------


def _ledger(
    serial: str, authority: str, not_after: dt.datetime, entry: str | None = "e1"
) -> LedgerRecord:
    return LedgerRecord(
        serial=serial,
        spiffe_id="spiffe://trustd.local/a",
        not_after=not_after,
        authority_id=authority,
        caller="uid:0",
        entry_id=entry,
        issued_at=NOW,
    )


def test_ledger_records_every_issued_certificate(store: SqliteStore) -> None:
    store.record_issued(_ledger("01", "aa", NOW + dt.timedelta(hours=1)))
    store.record_issued_many(
        [
            _ledger("02", "aa", NOW + dt.timedelta(hours=3)),
            _ledger("03", "bb", NOW + dt.timedelta(hours=2), entry=None),
        ]
    )
    assert [r.serial for r in store.list_issued()] == ["01", "02", "03"]
    assert [r.serial for r in store.list_issued(authority_id="aa")] == ["01", "02"]
    [rec] = store.list_issued(authority_id="bb")
    assert rec == _ledger("03", "bb", NOW + dt.timedelta(hours=2), entry=None)
    assert store.latest_not_after("aa") == NOW + dt.timedelta(hours=3)
    assert store.latest_not_after("zz") is None


def test_a_ledger_batch_is_all_or_nothing(store: SqliteStore) -> None:
    store.record_issued(_ledger("01", "aa", NOW))
    with pytest.raises(sqlite3.IntegrityError):
        store.record_issued_many([_ledger("02", "aa", NOW), _ledger("01", "aa", NOW)])
    assert [r.serial for r in store.list_issued()] == ["01"]


# -- join tokens ------------------------------------------------------------------------


def _token(h: str = "hmac-1", ttl: dt.timedelta = dt.timedelta(minutes=10)) -> JoinTokenRecord:
    return JoinTokenRecord(token_hash=h, expires_at=NOW + ttl, created_at=NOW)


def test_token_is_consumed_once(store: SqliteStore) -> None:
    store.create_token(_token())
    assert store.consume_token("hmac-1", "agent-1", NOW)
    assert not store.consume_token("hmac-1", "agent-2", NOW)
    assert not store.consume_token("unknown", "agent-3", NOW)


def test_expired_token_cannot_be_consumed(store: SqliteStore) -> None:
    store.create_token(_token(ttl=dt.timedelta(minutes=1)))
    assert not store.consume_token("hmac-1", "agent-1", NOW + dt.timedelta(minutes=1))


@pytest.mark.parametrize("connections", ["one shared store", "one store per thread"])
def test_racing_joins_consume_a_token_exactly_once(tmp_path: Path, connections: str) -> None:
    path = tmp_path / "race.db"
    setup = SqliteStore(path)
    tokens = [f"hmac-{i}" for i in range(20)]
    for t in tokens:
        setup.create_token(_token(t))
    threads_n = 8
    stores = (
        [setup] * threads_n
        if connections == "one shared store"
        else [SqliteStore(path) for _ in range(threads_n)]
    )
    wins: dict[str, list[int]] = {t: [] for t in tokens}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def join(i: int) -> None:
        try:
            for t in tokens:
                barrier.wait()
                if stores[i].consume_token(t, f"agent-{i}", NOW):
                    with lock:
                        wins[t].append(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    barrier = threading.Barrier(threads_n)
    threads = [threading.Thread(target=join, args=(i,)) for i in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    assert all(len(w) == 1 for w in wins.values()), wins
    with setup._tx() as run:
        rows = run(
            "SELECT token_hash, agent_id FROM join_tokens WHERE used_at IS NOT NULL"
        ).fetchall()
    assert {h: f"agent-{wins[h][0]}" for h in tokens} == dict(rows)
    for s in set(stores):
        s.close()


# -- agents and documents ---------------------------------------------------------------


def test_agents_round_trip(store: SqliteStore) -> None:
    rec = AgentRecord(
        id="a1",
        spiffe_id="spiffe://trustd.local/trustd/agent/join_token/a1",
        serial="0f",
        not_after=NOW + dt.timedelta(hours=1),
        joined_at=NOW,
        last_seen=NOW,
        hostname="node-1",
        meta={"svids": 3},
    )
    store.save_agent(rec)
    assert store.get_agent("a1") == rec
    store.save_agent(dataclasses.replace(rec, evicted=True))
    assert store.get_agent("a1").evicted
    assert [a.id for a in store.list_agents()] == ["a1"]
    with pytest.raises(NotFoundError):
        store.get_agent("a2")


def test_documents_with_compare_and_set(store: SqliteStore) -> None:
    assert store.get_doc("k") is None
    assert store.put_doc("k", "1", expect=None)
    assert not store.put_doc("k", "2", expect=None)  # exists already
    assert not store.put_doc("k", "2", expect="0")
    assert store.put_doc("k", "2", expect="1")
    assert store.put_doc("k", "3")  # unconditional
    assert store.get_doc("k") == "3"


# -- failures ---------------------------------------------------------------------------


def test_a_database_that_refuses_writes_is_unavailable(store: SqliteStore) -> None:
    store._db.execute("PRAGMA query_only = 1")
    with pytest.raises(UnavailableError, match="unavailable"):
        store.create_entry(_entry())
    store._db.execute("PRAGMA query_only = 0")
    store.create_entry(_entry())


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "trustd.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UnavailableError, match="cannot open the store"):
        SqliteStore(path)


def test_an_unusable_location_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnavailableError, match="cannot open the store"):
        SqliteStore(blocker / "trustd.db")


def test_check_passes_on_a_healthy_store(store: SqliteStore) -> None:
    store.check()
