"""An agent given two servers moves to the second when the first is killed, and goes on serving.

Two `trustd server` processes share one store and one key store (a SQLite file and a
local key directory under a shared KEK: the single-host form of PostgreSQL plus a KMS),
each with its own data directory, agent API port and audit chain. The agent's
``serverAddress`` names both. Server A is killed with SIGKILL; the agent keeps
serving the SVID it holds, reconnects to B on its own, and picks up an entry created
through B's admin socket.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from stack_helpers import TRUSTD, free_port

pytestmark = pytest.mark.integration
TD = "trustd.local"
T = TypeVar("T")


def _cli(admin: Path, *args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [TRUSTD, "--admin-socket", str(admin), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _until(what: str, check: Callable[[], T], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the peer is still coming up
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: gave up, last {last!r}")


def _server(
    tmp: Path, name: str, shared: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path, int]:
    data = tmp / name
    port = free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "trustDomain": TD,
                "dataDir": str(data),
                "serverAddress": f"127.0.0.1:{port}",
                "metricsAddress": "127.0.0.1:0",
                "store": {"kind": "sqlite", "path": str(shared / "trustd.db")},
                "keyManager": {"kind": "local", "directory": str(shared / "keys")},
            }
        )
    )
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [TRUSTD, "server", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log, env=env
    )
    admin = data / "admin.sock"
    _until(f"server {name} ready", lambda: "BEGIN CERTIFICATE" in _cli(admin, "bundle", "show"))
    return proc, admin, port


def test_agent_fails_over_to_the_second_server_and_keeps_serving(tmp_path: Path) -> None:
    from spiffe import WorkloadApiClient

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    env = dict(os.environ, TRUSTD_KEK=base64.b64encode(secrets.token_bytes(32)).decode())
    a, admin_a, port_a = _server(tmp_path, "a", shared, env)
    b = agent = None
    try:
        b, admin_b, port_b = _server(tmp_path, "b", shared, env)
        assert _cli(admin_a, "bundle", "show") == _cli(admin_b, "bundle", "show")  # one CA
        bundle = tmp_path / "bundle.pem"
        bundle.write_text(_cli(admin_a, "bundle", "show"))
        token = _cli(admin_a, "token", "create", "--ttl", "5m").strip()
        me = f"unix:uid:{os.getuid()}"
        _cli(
            admin_a,
            "entry",
            "create",
            "--spiffe-id",
            f"spiffe://{TD}/ns/ha/sa/first",
            "--selector",
            me,
        )
        agent_dir = tmp_path / "agent"
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            f"serverAddress: 127.0.0.1:{port_a},127.0.0.1:{port_b}\n"
            f"joinToken: {token}\n"
            f"trustBundlePath: {bundle}\n"
            f"dataDir: {agent_dir}\n"
            "metricsAddress: 127.0.0.1:0\n"
        )
        agent_log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115
        agent = subprocess.Popen(
            [TRUSTD, "agent", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=agent_log
        )
        sock = agent_dir / "public" / "agent.sock"
        _until("agent socket", sock.exists)
        target = f"unix://{sock}"
        with WorkloadApiClient(socket_path=target) as client:
            before = client.fetch_x509_svid()
        assert str(before.spiffe_id) == f"spiffe://{TD}/ns/ha/sa/first"

        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)

        # still serving what it holds while it has no server
        with WorkloadApiClient(socket_path=target) as client:
            assert str(client.fetch_x509_svid().spiffe_id) == str(before.spiffe_id)
        # a change made through the surviving server reaches the agent
        _cli(admin_b, "entry", "delete", _entry_id(admin_b, "first"))
        _cli(
            admin_b,
            "entry",
            "create",
            "--spiffe-id",
            f"spiffe://{TD}/ns/ha/sa/second",
            "--selector",
            me,
        )

        def moved() -> bool:
            with WorkloadApiClient(socket_path=target) as client:
                return str(client.fetch_x509_svid().spiffe_id) == f"spiffe://{TD}/ns/ha/sa/second"

        _until("the agent serves the entry made through server b", moved, timeout=90)
        log_text = (tmp_path / "agent.log").read_text(errors="replace")
        assert "failing over" in log_text, log_text[-3000:]
        assert f"127.0.0.1:{port_b}" in log_text
        # the agent is known to b (its record is in the shared store)
        assert "spiffe://trustd.local/trustd/agent/" in _cli(admin_b, "agent", "list", "-o", "json")
    finally:
        for proc in (agent, b, a):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _entry_id(admin: Path, suffix: str) -> str:
    import json

    entries = json.loads(_cli(admin, "entry", "list", "-o", "json"))
    rows = entries["entries"] if isinstance(entries, dict) else entries
    [row] = [e for e in rows if str(e["spiffe_id"]).endswith("/" + suffix)]
    return str(row["id"])
