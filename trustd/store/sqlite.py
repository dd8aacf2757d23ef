"""SQLite store: the embedded default, one file under the data dir (WAL mode)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from trustd.errors import UnavailableError
from trustd.store.sql import Connection, SqlStore


class SqliteStore(SqlStore):
    kind = "sqlite"
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.path.exists(self.path):
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        except sqlite3.Error as exc:
            raise UnavailableError(f"cannot open the store at {self.path}: {exc}") from exc
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def _conn(self) -> Connection:
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()
