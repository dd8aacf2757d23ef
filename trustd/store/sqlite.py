"""SQLite store: the embedded default, one file under the data dir (WAL mode)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trustd.errors import UnavailableError
from trustd.store.sql import Connection, Cursor, SqlStore


class SqliteStore(SqlStore):
    kind = "sqlite"
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not os.path.exists(self.path):
                    os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # isolation_level=None: transactions are begun explicitly in _tx, so that DDL
            # (migrations) and the reads before a write are inside them too.
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=10, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise UnavailableError(f"cannot open the store at {self.path}: {exc}") from None
        self.migrate()

    def _conn(self) -> Connection:
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[Callable[..., Cursor]]:
        """One transaction; a failing database (locked, read-only, disk error) is UnavailableError.

        Constraint violations stay sqlite3.IntegrityError for the callers that map them,
        and misuse (ProgrammingError) stays a bug.
        """
        try:
            with self._lock:
                if not self._db.in_transaction:
                    # IMMEDIATE: take the write lock up front, so two connections never
                    # deadlock upgrading a read to a write (consume_token, revisions).
                    self._db.execute("BEGIN IMMEDIATE")
                with super()._tx() as run:
                    yield run
        except sqlite3.OperationalError as exc:
            raise UnavailableError(f"the store at {self.path} is unavailable: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:
                raise
            raise UnavailableError(f"the store at {self.path} is unusable: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
