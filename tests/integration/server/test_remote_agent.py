"""`trustd server` and `trustd agent --config` as separate processes, joined by a token."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from stack_helpers import TRUSTD, free_port

pytestmark = pytest.mark.integration


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


def _cli(admin: Path, *args: str) -> str:
    out = subprocess.run(
        [TRUSTD, "--admin-socket", str(admin), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_agent_joins_remote_server_and_serves_workload_api(tmp_path: Path) -> None:
    from spiffe import WorkloadApiClient

    port = free_port()
    server_dir = tmp_path / "server"
    admin = server_dir / "admin.sock"
    server = subprocess.Popen(
        [
            TRUSTD,
            "server",
            "--data-dir",
            str(server_dir),
            "--server-address",
            f"127.0.0.1:{port}",
            "--metrics-address",
            "127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    agent = None
    try:
        _wait_for(admin, server)
        # the admin socket exists before the CA is up; bundle show waits for readiness
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(
                [TRUSTD, "--admin-socket", str(admin), "bundle", "show"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and "BEGIN CERTIFICATE" in out.stdout:
                break
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.2)
        bundle = tmp_path / "bundle.pem"
        bundle.write_text(out.stdout)
        token = _cli(admin, "token", "create", "--ttl", "5m").strip()
        _cli(
            admin,
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://trustd.local/ns/ops/sa/me",
            "--selector",
            f"unix:uid:{os.getuid()}",
        )
        agent_dir = tmp_path / "agent"
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            f"serverAddress: 127.0.0.1:{port}\n"
            f"joinToken: {token}\n"
            f"trustBundlePath: {bundle}\n"
            f"dataDir: {agent_dir}\n"
            "metricsAddress: 127.0.0.1:0\n"
        )
        agent = subprocess.Popen(
            [TRUSTD, "agent", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sock = agent_dir / "public" / "agent.sock"
        _wait_for(sock, agent)
        listed = _cli(admin, "agent", "list", "-o", "json")
        assert "spiffe://trustd.local/trustd/agent/" in listed
        with WorkloadApiClient(socket_path=f"unix://{sock}") as client:
            svid = client.fetch_x509_svid()
        assert str(svid.spiffe_id) == "spiffe://trustd.local/ns/ops/sa/me"
        # the join token is gone from nothing but the config: the server kept only its HMAC
        db = (server_dir / "trustd.db").read_bytes() + (server_dir / "trustd.db-wal").read_bytes()
        assert token.encode() not in db
        agent.terminate()
        assert agent.wait(timeout=20) == 0
        agent = None
    finally:
        for proc in (agent, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
    assert server.returncode == 0
