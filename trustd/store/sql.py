"""A Store over SQL, shared by the SQLite and PostgreSQL backends.

Queries are written with ``?`` placeholders; a backend translates them to its
own paramstyle. Each public method is one transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustd.ca.kms.base import KeyRef
from trustd.entries import RegistrationEntry
from trustd.errors import AlreadyExistsError, NotFoundError
from trustd.selectors import Selector
from trustd.spiffeid import SpiffeId, TrustDomain
from trustd.store.base import (
    AgentRecord,
    AuthorityRecord,
    EntryChange,
    FederationRecord,
    JoinTokenRecord,
    LedgerRecord,
    ProxyReportRecord,
)
from trustd.store.migrations import MIGRATIONS


def _ts(when: dt.datetime | None) -> int | None:
    return None if when is None else int(when.timestamp())


def _dt(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(int(value), dt.UTC)


def _dtn(value: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(value), dt.UTC)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pems(certs: Sequence[x509.Certificate]) -> str:
    return json.dumps([_pem(c) for c in certs])


def _load_pems(text: str) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificate(p.encode()) for p in json.loads(text))


Cursor = Any
Connection = Any


class SqlStore:
    """Holds one connection, serialised by a lock (SQLite) or per-thread (subclass)."""

    kind = "sql"
    integrity_errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._lock = threading.RLock()

    # -- backend hooks -------------------------------------------------------
    def _conn(self) -> Connection:
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query

    @contextmanager
    def _tx(self) -> Iterator[Callable[..., Cursor]]:
        with self._lock:
            conn = self._conn()
            cur = conn.cursor()

            def run(query: str, params: Sequence[object] = ()) -> Cursor:
                cur.execute(self._sql(query), tuple(params))
                return cur

            try:
                yield run
            except BaseException:
                conn.rollback()
                raise
            else:
                conn.commit()

    # -- migrations ----------------------------------------------------------
    def migrate(self) -> int:
        """Bring the schema to the newest version; returns it."""
        with self._tx() as run:
            run("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            row = run("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            for version, script in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in filter(None, (s.strip() for s in script.split(";"))):
                    run(statement)
                run("INSERT INTO schema_version (version) VALUES (?)", (version,))
                current = version
        return current

    def schema_version(self) -> int:
        with self._tx() as run:
            row = run("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- entries -------------------------------------------------------------
    @staticmethod
    def _entry(row: Sequence[Any]) -> RegistrationEntry:
        return RegistrationEntry(
            id=row[0],
            spiffe_id=SpiffeId.parse(row[1]),
            selectors=tuple(Selector.parse(s) for s in json.loads(row[2])),
            ttl=dt.timedelta(seconds=row[3]) if row[3] is not None else None,
            dns_names=tuple(json.loads(row[4])),
            revision=int(row[5]),
            created_at=_dtn(row[6]),
            agent_id=row[7],
            federates_with=tuple(TrustDomain.parse(td) for td in json.loads(row[8] or "[]")),
        )

    _ENTRY_COLS = (
        "id, spiffe_id, selectors, ttl_seconds, dns_names, revision, created_at, agent_id, "
        "federates_with"
    )

    def _next_revision(self, run: Callable[..., Cursor], entry_id: str, op: str) -> int:
        row = run("SELECT MAX(revision) FROM entry_changes").fetchone()
        rev = (int(row[0]) if row and row[0] is not None else 0) + 1
        run(
            "INSERT INTO entry_changes (revision, entry_id, op) VALUES (?, ?, ?)",
            (rev, entry_id, op),
        )
        return rev

    def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        selectors = json.dumps(sorted(str(s) for s in entry.selectors))
        try:
            with self._tx() as run:
                dup = run(
                    "SELECT id FROM entries WHERE spiffe_id = ? AND selectors = ?",
                    (str(entry.spiffe_id), selectors),
                ).fetchone()  # one per identity and selectors, whichever agent serves it
                if dup:
                    raise AlreadyExistsError(
                        f"an entry for {entry.spiffe_id} with the same selectors exists "
                        f"already (id {dup[0]})"
                    )
                rev = self._next_revision(run, entry.id, "put")
                run(
                    f"INSERT INTO entries ({self._ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.id,
                        str(entry.spiffe_id),
                        selectors,
                        int(entry.ttl.total_seconds()) if entry.ttl else None,
                        json.dumps(list(entry.dns_names)),
                        rev,
                        _ts(entry.created_at),
                        entry.agent_id,
                        json.dumps([td.name for td in entry.federates_with]),
                    ),
                )
        except self.integrity_errors as exc:
            raise AlreadyExistsError(
                f"an entry for {entry.spiffe_id} with the same selectors exists already"
            ) from exc
        return self.get_entry(entry.id)

    def get_entry(self, entry_id: str) -> RegistrationEntry:
        with self._tx() as run:
            row = run(
                f"SELECT {self._ENTRY_COLS} FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no entry with id {entry_id!r}: see 'trustd entry list'")
        return self._entry(row)

    def list_entries(self) -> list[RegistrationEntry]:
        with self._tx() as run:
            rows = run(f"SELECT {self._ENTRY_COLS} FROM entries ORDER BY spiffe_id, id").fetchall()
        return [self._entry(r) for r in rows]

    def find_entries_by_spiffe_id(self, spiffe_id: str) -> list[RegistrationEntry]:
        with self._tx() as run:
            rows = run(
                f"SELECT {self._ENTRY_COLS} FROM entries WHERE spiffe_id = ? ORDER BY id",
                (spiffe_id,),
            ).fetchall()
        return [self._entry(r) for r in rows]

    def delete_entry(self, entry_id: str) -> RegistrationEntry:
        entry = self.get_entry(entry_id)
        with self._tx() as run:
            run("DELETE FROM entries WHERE id = ?", (entry_id,))
            self._next_revision(run, entry_id, "delete")
        return entry

    def entry_changes_since(self, revision: int) -> tuple[int, list[EntryChange]]:
        with self._tx() as run:
            row = run("SELECT MAX(revision) FROM entry_changes").fetchone()
            head = int(row[0]) if row and row[0] is not None else 0
            changes = run(
                "SELECT revision, entry_id, op FROM entry_changes WHERE revision > ? "
                "ORDER BY revision",
                (revision,),
            ).fetchall()
            latest: dict[str, tuple[int, str]] = {}
            for rev, entry_id, op in changes:
                latest[entry_id] = (int(rev), op)
            out: list[EntryChange] = []
            for entry_id, (rev, op) in sorted(latest.items(), key=lambda kv: kv[1][0]):
                entry = None
                if op == "put":
                    r = run(
                        f"SELECT {self._ENTRY_COLS} FROM entries WHERE id = ?", (entry_id,)
                    ).fetchone()
                    entry = self._entry(r) if r else None
                out.append(EntryChange(revision=rev, entry_id=entry_id, entry=entry))
        return head, out

    # -- authorities ---------------------------------------------------------
    _AUTH_COLS = (
        "id, state, tainted, revoked, key_ref, certificate, upstream_chain, upstream_roots, "
        "created_at, activated_at"
    )

    @staticmethod
    def _authority(row: Sequence[Any]) -> AuthorityRecord:
        return AuthorityRecord(
            id=row[0],
            state=row[1],
            tainted=bool(row[2]),
            revoked=bool(row[3]),
            key_ref=KeyRef.from_json(json.loads(row[4])),
            certificate=x509.load_pem_x509_certificate(row[5].encode()),
            upstream_chain=_load_pems(row[6]),
            upstream_roots=_load_pems(row[7]),
            created_at=_dtn(row[8]),
            activated_at=_dt(row[9]),
        )

    def _authority_params(self, r: AuthorityRecord) -> tuple[object, ...]:
        return (
            r.id,
            r.state,
            int(r.tainted),
            int(r.revoked),
            json.dumps(r.key_ref.to_json()),
            _pem(r.certificate),
            _pems(r.upstream_chain),
            _pems(r.upstream_roots),
            _ts(r.created_at),
            _ts(r.activated_at),
        )

    def save_authority(self, record: AuthorityRecord) -> None:
        with self._tx() as run:
            run("DELETE FROM authorities WHERE id = ?", (record.id,))
            run(
                f"INSERT INTO authorities ({self._AUTH_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._authority_params(record),
            )

    def replace_authorities(
        self,
        records: Sequence[AuthorityRecord],
        *,
        expect: str | None = None,
        before_write: Callable[[], None] | None = None,
        bump: str | None = None,
    ) -> bool:
        """Write the whole slot set at once: a rotation never leaves half of it behind.

        With ``expect`` (a fingerprint of the slots the caller read), nothing is written
        and False is returned when the slots changed meanwhile: two servers on one
        database cannot both rotate. ``before_write`` runs once the check has passed,
        with the slots locked until the commit (the audit event is written there, so it
        records a change that is sure to happen); if it raises, nothing is written.
        ``bump`` names a counter document (the bundle sequence) raised in the same
        transaction, so a server killed after the write cannot leave the new slots under
        the old sequence (agents follow the sequence).
        """
        with self._tx() as run:
            if self.kind == "postgresql":  # SQLite's transactions are BEGIN IMMEDIATE already
                run("LOCK TABLE authorities IN EXCLUSIVE MODE")
            if expect is not None:
                rows = run("SELECT id, state, tainted FROM authorities").fetchall()
                current = ",".join(sorted(f"{r[0]}:{r[1]}:{int(r[2])}" for r in rows))
                if current != expect:
                    return False
            if before_write is not None:
                before_write()
            run("DELETE FROM authorities")
            for record in records:
                run(
                    f"INSERT INTO authorities ({self._AUTH_COLS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    self._authority_params(record),
                )
            if bump is not None:
                self._bump(run, bump)
        return True

    def list_authorities(self) -> list[AuthorityRecord]:
        with self._tx() as run:
            rows = run(f"SELECT {self._AUTH_COLS} FROM authorities ORDER BY created_at").fetchall()
        return [self._authority(r) for r in rows]

    def delete_authority(self, authority_id: str) -> None:
        with self._tx() as run:
            run("DELETE FROM authorities WHERE id = ?", (authority_id,))

    # -- ledger --------------------------------------------------------------
    _LEDGER_COLS = "serial, spiffe_id, not_after, authority_id, caller, entry_id, issued_at"

    @staticmethod
    def _ledger_params(r: LedgerRecord) -> tuple[object, ...]:
        return (
            r.serial,
            r.spiffe_id,
            _ts(r.not_after),
            r.authority_id,
            r.caller,
            r.entry_id,
            _ts(r.issued_at),
        )

    def record_issued(self, record: LedgerRecord) -> None:
        self.record_issued_many([record])

    def record_issued_many(self, records: Sequence[LedgerRecord]) -> None:
        with self._tx() as run:
            for r in records:  # one transaction for the batch
                run(
                    f"INSERT INTO ledger ({self._LEDGER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    self._ledger_params(r),
                )

    def list_issued(self, *, authority_id: str | None = None) -> list[LedgerRecord]:
        with self._tx() as run:
            if authority_id is None:
                rows = run(f"SELECT {self._LEDGER_COLS} FROM ledger ORDER BY issued_at").fetchall()
            else:
                rows = run(
                    f"SELECT {self._LEDGER_COLS} FROM ledger WHERE authority_id = ? "
                    "ORDER BY issued_at",
                    (authority_id,),
                ).fetchall()
        return [
            LedgerRecord(
                serial=r[0],
                spiffe_id=r[1],
                not_after=_dtn(r[2]),
                authority_id=r[3],
                caller=r[4],
                entry_id=r[5],
                issued_at=_dtn(r[6]),
            )
            for r in rows
        ]

    def latest_not_after(self, authority_id: str) -> dt.datetime | None:
        with self._tx() as run:
            row = run(
                "SELECT MAX(not_after) FROM ledger WHERE authority_id = ?", (authority_id,)
            ).fetchone()
        return _dt(row[0]) if row and row[0] is not None else None

    # -- join tokens and agents ----------------------------------------------
    def create_token(self, record: JoinTokenRecord) -> None:
        with self._tx() as run:
            run(
                "INSERT INTO join_tokens (token_hash, expires_at, created_at, used_at, agent_id) "
                "VALUES (?, ?, ?, NULL, NULL)",
                (record.token_hash, _ts(record.expires_at), _ts(record.created_at)),
            )

    def consume_token(self, token_hash: str, agent_id: str, now: dt.datetime) -> bool:
        """Mark the token used, atomically: of two racing joins exactly one gets True."""
        with self._tx() as run:
            cur = run(
                "UPDATE join_tokens SET used_at = ?, agent_id = ? "
                "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                (_ts(now), agent_id, token_hash, _ts(now)),
            )
            return bool(cur.rowcount == 1)

    def release_token(self, token_hash: str, agent_id: str) -> bool:
        """Make a token usable again when the join that consumed it as ``agent_id`` failed."""
        with self._tx() as run:
            cur = run(
                "UPDATE join_tokens SET used_at = NULL, agent_id = NULL "
                "WHERE token_hash = ? AND agent_id = ? AND used_at IS NOT NULL",
                (token_hash, agent_id),
            )
            return bool(cur.rowcount == 1)

    _AGENT_COLS = "id, spiffe_id, serial, not_after, joined_at, last_seen, evicted, hostname, meta"

    def save_agent(self, record: AgentRecord) -> None:
        with self._tx() as run:
            run("DELETE FROM agents WHERE id = ?", (record.id,))
            run(
                f"INSERT INTO agents ({self._AGENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.spiffe_id,
                    record.serial,
                    _ts(record.not_after),
                    _ts(record.joined_at),
                    _ts(record.last_seen),
                    int(record.evicted),
                    record.hostname,
                    json.dumps(record.meta),
                ),
            )

    @staticmethod
    def _agent(r: Sequence[Any]) -> AgentRecord:
        return AgentRecord(
            id=r[0],
            spiffe_id=r[1],
            serial=r[2],
            not_after=_dtn(r[3]),
            joined_at=_dtn(r[4]),
            last_seen=_dtn(r[5]),
            evicted=bool(r[6]),
            hostname=r[7],
            meta=json.loads(r[8]),
        )

    def get_agent(self, agent_id: str) -> AgentRecord:
        with self._tx() as run:
            row = run(f"SELECT {self._AGENT_COLS} FROM agents WHERE id = ?", (agent_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no agent with id {agent_id!r}: see 'trustd agent list'")
        return self._agent(row)

    def list_agents(self) -> list[AgentRecord]:
        with self._tx() as run:
            rows = run(f"SELECT {self._AGENT_COLS} FROM agents ORDER BY joined_at").fetchall()
        return [self._agent(r) for r in rows]

    # -- federation relationships --------------------------------------------
    _FED_COLS = (
        "trust_domain, endpoint_url, profile, endpoint_spiffe_id, bundle, sequence, "
        "refreshed_at, next_refresh_at, last_error, created_at"
    )

    @staticmethod
    def _federation(r: Sequence[Any]) -> FederationRecord:
        return FederationRecord(
            trust_domain=r[0],
            endpoint_url=r[1],
            profile=r[2],
            endpoint_spiffe_id=r[3],
            bundle=r[4],
            sequence=int(r[5]),
            refreshed_at=_dt(r[6]),
            next_refresh_at=_dtn(r[7]),
            last_error=r[8],
            created_at=_dtn(r[9]),
        )

    def create_federation(self, record: FederationRecord) -> None:
        try:
            with self._tx() as run:
                if run(
                    "SELECT 1 FROM federations WHERE trust_domain = ?", (record.trust_domain,)
                ).fetchone():
                    raise AlreadyExistsError(
                        f"a federation with {record.trust_domain} exists already: delete it "
                        "first to change it"
                    )
                run(
                    f"INSERT INTO federations ({self._FED_COLS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.trust_domain,
                        record.endpoint_url,
                        record.profile,
                        record.endpoint_spiffe_id,
                        record.bundle,
                        record.sequence,
                        _ts(record.refreshed_at),
                        _ts(record.next_refresh_at),
                        record.last_error,
                        _ts(record.created_at),
                    ),
                )
        except self.integrity_errors as exc:
            raise AlreadyExistsError(
                f"a federation with {record.trust_domain} exists already"
            ) from exc

    def get_federation(self, trust_domain: str) -> FederationRecord:
        with self._tx() as run:
            row = run(
                f"SELECT {self._FED_COLS} FROM federations WHERE trust_domain = ?",
                (trust_domain,),
            ).fetchone()
        if row is None:
            raise NotFoundError(
                f"no federation with trust domain {trust_domain!r}: see 'trustd federation list'"
            )
        return self._federation(row)

    def list_federations(self) -> list[FederationRecord]:
        with self._tx() as run:
            rows = run(f"SELECT {self._FED_COLS} FROM federations ORDER BY trust_domain").fetchall()
        return [self._federation(r) for r in rows]

    def update_federation(self, record: FederationRecord, *, expect_sequence: int) -> bool:
        """Write the refresh state; only while the stored sequence is still
        ``expect_sequence`` (two servers on one database never move it backwards)."""
        with self._tx() as run:
            cur = run(
                "UPDATE federations SET bundle = ?, sequence = ?, refreshed_at = ?, "
                "next_refresh_at = ?, last_error = ? WHERE trust_domain = ? AND sequence = ?",
                (
                    record.bundle,
                    record.sequence,
                    _ts(record.refreshed_at),
                    _ts(record.next_refresh_at),
                    record.last_error,
                    record.trust_domain,
                    expect_sequence,
                ),
            )
            return bool(cur.rowcount == 1)

    def delete_federation(self, trust_domain: str) -> None:
        with self._tx() as run:
            run("DELETE FROM federations WHERE trust_domain = ?", (trust_domain,))

    # -- documents -----------------------------------------------------------
    def get_doc(self, key: str) -> str | None:
        with self._tx() as run:
            row = run("SELECT value FROM docs WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_doc(self, key: str, value: str, *, expect: str | None = "\0any") -> bool:
        """Write a document. With ``expect``, only if the current value equals it (None: absent).

        The comparison is part of the write (``UPDATE ... WHERE value = ?``; an INSERT that
        the primary key refuses), so of two servers racing on one PostgreSQL exactly one
        wins, whatever the isolation level.
        """
        try:
            with self._tx() as run:
                if expect == "\0any":
                    cur = run("UPDATE docs SET value = ? WHERE key = ?", (value, key))
                    if cur.rowcount == 0:
                        run("INSERT INTO docs (key, value) VALUES (?, ?)", (key, value))
                    return True
                if expect is None:
                    run("INSERT INTO docs (key, value) VALUES (?, ?)", (key, value))
                    return True
                cur = run(
                    "UPDATE docs SET value = ? WHERE key = ? AND value = ?", (value, key, expect)
                )
                return bool(cur.rowcount == 1)
        except self.integrity_errors:
            return False  # inserted meanwhile by someone else

    def _bump(self, run: Callable[..., Cursor], key: str) -> int:
        cur = run(
            "UPDATE docs SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = ?", (key,)
        )
        if cur.rowcount == 0:
            run("INSERT INTO docs (key, value) VALUES (?, ?)", (key, "1"))
        row = run("SELECT value FROM docs WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def bump_counter(self, key: str) -> int:
        """Raise a counter document by one, atomically (two servers never both get N)."""
        with self._tx() as run:
            return self._bump(run, key)

    # -- proxy reports -------------------------------------------------------
    _REPORT_COLS = "proxy_id, spiffe_id, acked_version, report, server_id, updated_at"

    def save_proxy_report(self, record: ProxyReportRecord) -> None:
        """The proxy's latest report; an ACK newer than the report's version is kept."""
        with self._tx() as run:
            run(
                f"INSERT INTO proxy_statuses ({self._REPORT_COLS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (proxy_id) DO UPDATE SET spiffe_id = excluded.spiffe_id, "
                "acked_version = CASE WHEN proxy_statuses.acked_version > excluded.acked_version "
                "THEN proxy_statuses.acked_version ELSE excluded.acked_version END, "
                "report = excluded.report, server_id = excluded.server_id, "
                "updated_at = excluded.updated_at",
                (
                    record.proxy_id,
                    record.spiffe_id,
                    record.acked_version,
                    record.report,
                    record.server_id,
                    _ts(record.updated_at),
                ),
            )

    def ack_proxy(self, proxy_id: str, version: int, now: dt.datetime) -> bool:
        """Raise a reporting proxy's acknowledged version (never lowers it); False when the
        proxy has not reported yet (an ACK alone names no identity)."""
        with self._tx() as run:
            cur = run(
                "UPDATE proxy_statuses SET acked_version = ?, updated_at = ? "
                "WHERE proxy_id = ? AND acked_version < ?",
                (version, _ts(now), proxy_id, version),
            )
            return bool(cur.rowcount == 1)

    def list_proxy_reports(self, *, since: dt.datetime | None = None) -> list[ProxyReportRecord]:
        with self._tx() as run:
            if since is None:
                rows = run(
                    f"SELECT {self._REPORT_COLS} FROM proxy_statuses ORDER BY proxy_id"
                ).fetchall()
            else:
                rows = run(
                    f"SELECT {self._REPORT_COLS} FROM proxy_statuses WHERE updated_at >= ? "
                    "ORDER BY proxy_id",
                    (_ts(since),),
                ).fetchall()
        return [
            ProxyReportRecord(
                proxy_id=r[0],
                spiffe_id=r[1],
                acked_version=int(r[2]),
                report=r[3],
                server_id=r[4],
                updated_at=_dtn(r[5]),
            )
            for r in rows
        ]

    def delete_proxy_report(self, proxy_id: str) -> None:
        with self._tx() as run:
            run("DELETE FROM proxy_statuses WHERE proxy_id = ?", (proxy_id,))

    def prune_proxy_reports(self, before: dt.datetime) -> int:
        """Forget proxies no server heard from since ``before``; returns how many."""
        with self._tx() as run:
            cur = run("DELETE FROM proxy_statuses WHERE updated_at < ?", (_ts(before),))
            return int(cur.rowcount or 0)

    # -- audit mirror --------------------------------------------------------
    def audit_mirror_head(self, server_id: str) -> int:
        """The newest seq of ``server_id``'s chain the store holds (0: none)."""
        with self._tx() as run:
            row = run(
                "SELECT MAX(seq) FROM audit_events WHERE server_id = ?", (server_id,)
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def mirror_audit_events(self, server_id: str, rows: Sequence[tuple[int, str, str]]) -> None:
        """(seq, time, exact line) rows; one already held is left as it is."""
        with self._tx() as run:
            for seq, at, line in rows:
                run(
                    "INSERT INTO audit_events (server_id, seq, at, line) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (server_id, seq) DO NOTHING",
                    (server_id, seq, at, line),
                )

    def audit_mirror_checkpoint_count(self, server_id: str) -> int:
        with self._tx() as run:
            row = run(
                "SELECT MAX(n) FROM audit_checkpoints WHERE server_id = ?", (server_id,)
            ).fetchone()
        return int(row[0]) + 1 if row and row[0] is not None else 0

    def mirror_audit_checkpoints(self, server_id: str, first: int, lines: Sequence[str]) -> None:
        """Checkpoint lines ``first``, ``first + 1``... of the server's checkpoint file."""
        with self._tx() as run:
            for i, line in enumerate(lines):
                run(
                    "INSERT INTO audit_checkpoints (server_id, n, line) VALUES (?, ?, ?) "
                    "ON CONFLICT (server_id, n) DO NOTHING",
                    (server_id, first + i, line),
                )

    def mirror_audit_key(self, server_id: str, key_file: str) -> None:
        """The server's audit-key.json (key references, never keys)."""
        with self._tx() as run:
            run(
                "INSERT INTO audit_keys (server_id, key_file) VALUES (?, ?) "
                "ON CONFLICT (server_id) DO UPDATE SET key_file = excluded.key_file",
                (server_id, key_file),
            )

    def audit_mirror_servers(self) -> list[str]:
        with self._tx() as run:
            rows = run(
                "SELECT server_id FROM audit_events UNION SELECT server_id FROM audit_keys"
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def audit_mirror_lines(
        self, server_id: str, *, after: int, limit: int
    ) -> list[tuple[int, str]]:
        with self._tx() as run:
            rows = run(
                "SELECT seq, line FROM audit_events WHERE server_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (server_id, after, limit),
            ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def audit_mirror_checkpoint_lines(self, server_id: str) -> list[str]:
        with self._tx() as run:
            rows = run(
                "SELECT line FROM audit_checkpoints WHERE server_id = ? ORDER BY n", (server_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def audit_mirror_key(self, server_id: str) -> str | None:
        with self._tx() as run:
            row = run(
                "SELECT key_file FROM audit_keys WHERE server_id = ?", (server_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    # -- leases --------------------------------------------------------------
    def take_lease(self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool:
        """Take or renew the lease ``name`` until ``now + ttl``: True when ``holder`` has it.

        Compare-and-set in one statement: it is taken over only once it expired, so a
        holder that died loses it after ``ttl`` and two servers never hold it together.
        """
        expires = _ts(now + ttl)
        try:
            with self._tx() as run:
                cur = run(
                    "UPDATE leases SET holder = ?, expires_at = ? "
                    "WHERE name = ? AND (holder = ? OR expires_at <= ?)",
                    (holder, expires, name, holder, _ts(now)),
                )
                if cur.rowcount == 1:
                    return True
                row = run("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
                if row is not None:
                    return False
                run(
                    "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)",
                    (name, holder, expires),
                )
                return True
        except self.integrity_errors:
            return False  # another holder inserted it first

    def release_lease(self, name: str, holder: str) -> None:
        with self._tx() as run:
            run("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def check(self) -> None:
        with self._tx() as run:
            run("SELECT 1").fetchone()
