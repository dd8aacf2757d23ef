"""PostgreSQL store: several stateless ``trustd server`` processes share one database.

Same SQL and migrations as SQLite (``?`` placeholders become ``%s``). A
connection per thread; a lost connection becomes ``UnavailableError`` and is
re-opened on the next call. Migrations run under an advisory lock so two
servers starting together do not race.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from trustd.errors import UnavailableError
from trustd.store.sql import Connection, Cursor, SqlStore

_MIGRATION_LOCK = 0x7472757374  # "trust"


class PostgresStore(SqlStore):
    kind = "postgresql"
    integrity_errors = (psycopg.errors.UniqueViolation,)

    def __init__(self, dsn: str, *, connect_timeout: int = 5) -> None:
        super().__init__()
        self._dsn = dsn
        self._timeout = connect_timeout
        self._local = threading.local()
        self._migrate_locked()

    def _migrate_locked(self) -> None:
        conn = self._conn()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            self.migrate()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
            conn.commit()

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self._dsn, connect_timeout=self._timeout)
            except psycopg.OperationalError as exc:
                raise UnavailableError(f"cannot connect to postgresql: {_safe(exc)}") from None
            self._local.conn = conn
        return conn

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    @contextmanager
    def _tx(self) -> Iterator[Callable[..., Cursor]]:
        conn = self._conn()
        cur = conn.cursor()

        def run(query: str, params: Any = ()) -> Cursor:
            cur.execute(self._sql(query), tuple(params))
            return cur

        try:
            yield run
        except psycopg.OperationalError as exc:
            self._local.conn = None
            raise UnavailableError(f"postgresql is unavailable: {_safe(exc)}") from None
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        else:
            conn.commit()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def _safe(exc: Exception) -> str:
    """The first line of a driver error, which names the host but never the password."""
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
