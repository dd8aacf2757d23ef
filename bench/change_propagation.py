"""Change propagation between servers on one PostgreSQL: from a change on server A's hub
to the wake-up of server B's watchers, through NOTIFY/LISTEN (trustd.store.pg_changes).

Starts a private PostgreSQL (Debian's, as the tests do), two PgChangeFeeds, and times
``--changes`` changes one after another (each waits for the previous to arrive).
Prints p50, p99 and max in milliseconds. A benchmark, not a test.

Usage: ``python bench/change_propagation.py [--changes 500]``
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trustd.server.changes import ChangeHub
from trustd.store.pg_changes import PgChangeFeed


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit(f"PostgreSQL's {name} is missing (make system-deps)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=500)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="trustd-bench-pg-")
    pw = pwd.getpwnam("postgres")
    os.chown(root, pw.pw_uid, pw.pw_gid)
    port = _free_port()

    def as_pg(*cmd: str) -> None:
        pre = ("runuser", "-u", "postgres", "--") if os.getuid() == 0 else ()
        subprocess.run((*pre, *cmd), check=True, capture_output=True, timeout=120)

    data = os.path.join(root, "data")
    as_pg(_pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "trustd", "--no-sync")
    as_pg(
        _pg_bin("pg_ctl"),
        "-D",
        data,
        "-l",
        os.path.join(root, "log"),
        "-w",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        "start",
    )
    dsn = f"postgresql://trustd@127.0.0.1:{port}/postgres"
    try:
        arrived = threading.Event()
        hub_a, hub_b = ChangeHub(), ChangeHub()

        def wake_b(topic: str) -> None:
            hub_b.notify(topic, remote=True)
            arrived.set()

        a = PgChangeFeed(dsn, server_id="srv-a", wake=lambda t: hub_a.notify(t, remote=True))
        b = PgChangeFeed(dsn, server_id="srv-b", wake=wake_b)
        hub_a.set_broadcast(a.publish)
        for f in (a, b):
            f.start()
            assert f.listening.wait(20)
        times: list[float] = []
        for _ in range(args.changes):
            arrived.clear()
            t0 = time.perf_counter()
            hub_a.notify("entries")
            if not arrived.wait(10):
                raise SystemExit("a change did not arrive within 10 s")
            times.append((time.perf_counter() - t0) * 1000)
        a.stop()
        b.stop()
        times.sort()
        p99 = times[int(len(times) * 0.99) - 1]
        print(
            f"{len(times)} changes A -> B: p50 {statistics.median(times):.2f} ms, "
            f"p99 {p99:.2f} ms, max {times[-1]:.2f} ms"
        )
    finally:
        as_pg(_pg_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
