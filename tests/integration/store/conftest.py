"""A real PostgreSQL server (Debian's), initialised and started in a temp dir by the tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError(
            f"PostgreSQL's {name} is missing: install Debian's postgresql (make system-deps)"
        )
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    user = "postgres"
    pw = pwd.getpwnam(user)
    root = tempfile.mkdtemp(prefix="trustd-pg-")
    os.chown(root, pw.pw_uid, pw.pw_gid)
    data = os.path.join(root, "data")
    port = _free_port()

    def as_pg(*cmd: str) -> subprocess.CompletedProcess[str]:
        if os.getuid() == 0:
            cmd = ("runuser", "-u", user, "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    out = as_pg(_bin("initdb"), "-D", data, "-A", "trust", "-U", "trustd", "--no-sync")
    assert out.returncode == 0, out.stderr
    out = as_pg(
        _bin("pg_ctl"),
        "-D",
        data,
        "-l",
        os.path.join(root, "log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    assert out.returncode == 0, out.stderr + Path(root, "log").read_text()
    try:
        deadline = time.monotonic() + 30
        dsn = f"postgresql://trustd@127.0.0.1:{port}/postgres"
        while True:
            try:
                import psycopg

                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except Exception:
                assert time.monotonic() < deadline, "postgresql did not accept connections"
                time.sleep(0.2)
        yield dsn
    finally:
        as_pg(_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_db(postgres_dsn: str) -> Iterator[str]:
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_dsn.rsplit("/", 1)[0] + "/" + name
