"""JWT-SVIDs through the agent API: `trustd server` and `trustd agent` as separate processes,
the ``spiffe`` client on the agent's socket, and `trustd svid mint --jwt` for admins."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import TRUSTD, free_port

from trustd.agent.server_link import ServerLink
from trustd.agent.upstream import JwtSvidRequest
from trustd.audit import Actor
from trustd.config import load_server_config
from trustd.errors import InvalidArgumentError, PermissionDeniedError
from trustd.registry import CreateEntry, CreateToken
from trustd.server.app import TrustdServer
from trustd.spiffeid import TrustDomain

pytestmark = pytest.mark.integration
TD = "trustd.local"
ME = f"spiffe://{TD}/ns/ops/sa/me"
TOOL = f"spiffe://{TD}/ns/ops/sa/tool"
ADMIN = Actor(kind="unix", id="uid:0", uid=0)


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


def _cli(admin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRUSTD, "--admin-socket", str(admin), *args], capture_output=True, text=True, timeout=60
    )


def _ok(admin: Path, *args: str) -> str:
    out = _cli(admin, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _retry(fn: Any, timeout: float = 30) -> Any:
    """The agent learns of a new entry a moment after it is created."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_remote_agent_serves_jwt_svids_and_admins_mint_them(tmp_path: Path) -> None:
    from spiffe import JwtSvid, WorkloadApiClient
    from spiffe import TrustDomain as SpiffeTrustDomain

    port = free_port()
    server_dir = tmp_path / "server"
    admin = server_dir / "admin.sock"
    server_log = tmp_path / "server.log"
    agent_log = tmp_path / "agent.log"
    with server_log.open("wb") as slog:
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
            stdout=slog,
            stderr=subprocess.STDOUT,
        )
    agent = None
    try:
        _wait_for(admin, server)
        pem = _retry(lambda: _ok(admin, "bundle", "show"))
        bundle_file = tmp_path / "bundle.pem"
        bundle_file.write_text(pem)
        token = _ok(admin, "token", "create", "--ttl", "5m").strip()
        _ok(admin, "entry", "create", "--spiffe-id", ME, "--selector", f"unix:uid:{os.getuid()}")
        agent_dir = tmp_path / "agent"
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            f"serverAddress: 127.0.0.1:{port}\n"
            f"joinToken: {token}\n"
            f"trustBundlePath: {bundle_file}\n"
            f"dataDir: {agent_dir}\n"
            "metricsAddress: 127.0.0.1:0\n"
        )
        with agent_log.open("wb") as alog:
            agent = subprocess.Popen(
                [TRUSTD, "agent", "--config", str(cfg)], stdout=alog, stderr=subprocess.STDOUT
            )
        sock = agent_dir / "public" / "agent.sock"
        _wait_for(sock, agent)
        with WorkloadApiClient(socket_path=f"unix://{sock}", default_timeout=20) as client:
            svid = _retry(lambda: client.fetch_jwt_svid(audience={"backend"}))
            bundles = client.fetch_jwt_bundles()
            jwt_bundle = bundles.get_bundle_for_trust_domain(SpiffeTrustDomain(TD))
            assert jwt_bundle is not None
            assert (
                str(JwtSvid.parse_and_validate(svid.token, jwt_bundle, {"backend"}).spiffe_id) == ME
            )
            assert str(client.validate_jwt_svid(svid.token, "backend").spiffe_id) == ME

            # an admin mints one for an identity no workload has; the agent validates it
            minted = _ok(
                admin,
                "svid",
                "mint",
                "--jwt",
                "--spiffe-id",
                TOOL,
                "--audience",
                "backend",
                "--audience",
                "reports",
                "--ttl",
                "2m",
            )
            tool_token = minted.strip()
            assert "\n" not in tool_token and tool_token.count(".") == 2
            checked = client.validate_jwt_svid(tool_token, "reports")
            assert str(checked.spiffe_id) == TOOL
            parsed = JwtSvid.parse_and_validate(tool_token, jwt_bundle, {"backend", "reports"})
            assert 100 < parsed.expiry - time.time() <= 120

        doc = json.loads(
            _ok(
                admin,
                "svid",
                "mint",
                "--jwt",
                "--spiffe-id",
                TOOL,
                "--audience",
                "backend",
                "-o",
                "json",
            )
        )
        assert doc["spiffe_id"] == TOOL and doc["audience"] == ["backend"]
        assert doc["token"].count(".") == 2 and doc["jti"] and doc["kid"] and doc["expires_at"]

        no_audience = _cli(admin, "svid", "mint", "--jwt", "--spiffe-id", TOOL)
        assert no_audience.returncode == 1 and "--audience" in no_audience.stderr
        too_long = _cli(
            admin,
            "svid",
            "mint",
            "--jwt",
            "--spiffe-id",
            TOOL,
            "--audience",
            "backend",
            "--ttl",
            "2h",
        )
        assert too_long.returncode == 2 and "above the server maximum" in too_long.stderr

        spiffe_bundle = json.loads(_ok(admin, "bundle", "show", "--format", "spiffe"))
        jwt_keys = [k for k in spiffe_bundle["keys"] if k["use"] == "jwt-svid"]
        assert {k["kid"] for k in jwt_keys} == set(jwt_bundle.jwt_authorities)
        agent.terminate()
        assert agent.wait(timeout=20) == 0
        agent = None
    finally:
        for proc in (agent, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    audit = "".join(p.read_text() for p in sorted((server_dir / "audit").glob("audit-*.jsonl")))
    events = [json.loads(line) for line in audit.splitlines()]
    mints = [e for e in events if e["type"] == "admin.svid.mint" and e["details"].get("jwt")]
    assert [e["outcome"] for e in mints] == ["success", "success", "failure"]
    assert mints[1]["details"]["jti"] == doc["jti"] and mints[1]["details"]["kid"] == doc["kid"]
    issued = [e for e in events if e["type"] == "svid.issue" and e["details"].get("jwt")]
    assert [e["resource"] for e in issued] == [ME]
    logs = server_log.read_text() + agent_log.read_text()
    for secret in (svid.token, tool_token, doc["token"]):
        assert secret not in audit and secret not in logs


def test_agent_api_signs_jwt_svids_only_for_the_agents_own_entries(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = load_server_config(
            None,
            {
                "dataDir": str(tmp_path / "server"),
                "serverAddress": "127.0.0.1:0",
                "metricsAddress": "127.0.0.1:0",
            },
        )
        srv = TrustdServer(cfg)
        await srv.start()
        links: list[ServerLink] = []
        try:
            await srv.wait_ready()
            for name in ("one", "two"):
                token = srv.registry.tokens.create(
                    ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
                ).token
                link = ServerLink(
                    address=f"127.0.0.1:{srv.agent_api_port}",
                    trust_domain=TrustDomain.parse(TD),
                    data_dir=tmp_path / name,
                    join_token=token,
                    bootstrap_bundle_pem=srv.core.bundle().to_pem(),
                )
                await link.start()
                links.append(link)
            one, two = links
            mine = srv.registry.entries.create(
                ADMIN, CreateEntry(spiffe_id=ME, selectors=("unix:uid:1000",))
            )
            pinned = srv.registry.entries.create(
                ADMIN,
                CreateEntry(spiffe_id=TOOL, selectors=("unix:uid:1001",), agent_id=two.agent_id),
            )
            signed = await one.sign_jwt_svid(
                JwtSvidRequest(entry_id=mine.id, audience=("backend",))
            )
            assert signed.entry_id == mine.id and signed.token.count(".") == 2
            assert signed.expires_at - signed.issued_at == dt.timedelta(minutes=5)
            assert signed.token not in repr(signed)
            with pytest.raises(PermissionDeniedError, match="pinned to another agent"):
                await one.sign_jwt_svid(JwtSvidRequest(entry_id=pinned.id, audience=("b",)))
            with pytest.raises(PermissionDeniedError, match="does not exist"):
                await one.sign_jwt_svid(JwtSvidRequest(entry_id="nope", audience=("b",)))
            with pytest.raises(InvalidArgumentError, match="audience"):
                await one.sign_jwt_svid(JwtSvidRequest(entry_id=mine.id, audience=()))
            assert (
                await two.sign_jwt_svid(JwtSvidRequest(entry_id=pinned.id, audience=("b",)))
            ).entry_id == pinned.id
        finally:
            for link in links:
                await link.close()
            await srv.stop()

    asyncio.run(main())
