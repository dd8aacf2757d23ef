"""JWT-SVIDs end to end in one process: the real server core and node agent (``trustd up``'s
wiring), and the ``spiffe`` package's own client fetching, streaming and validating.

The ``spiffe`` client is synchronous (grpcio), so its calls run in threads while the
agent serves on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import run_async, wait_until

from trustd.agent.cache import workload_key
from trustd.agent.metrics import AgentMetrics
from trustd.agent.service import AgentService
from trustd.audit import Actor
from trustd.clock import FakeClock
from trustd.config import load_server_config
from trustd.registry import CreateEntry
from trustd.registry.upstream import RegistryUpstream
from trustd.selectors import Caller
from trustd.server.app import TrustdServer
from trustd.server.embedded import Embedded

pytestmark = pytest.mark.integration

TD = "trustd.local"
ME = f"spiffe://{TD}/ns/demo/sa/me"
ADMIN = Actor(kind="unix", id="uid:0", uid=0)


def _config(data_dir: Path) -> Any:
    return load_server_config(
        None,
        {
            "dataDir": str(data_dir),
            "serverAddress": "127.0.0.1:0",
            "metricsAddress": "127.0.0.1:0",
        },
    )


def _header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def _audit_text(data_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((data_dir / "audit").glob("audit-*.jsonl")))


async def _entry_for_me(srv: TrustdServer, agent: AgentService) -> None:
    await asyncio.to_thread(
        srv.registry.entries.create,
        ADMIN,
        CreateEntry(spiffe_id=ME, selectors=(f"unix:uid:{os.getuid()}",)),
    )
    me = workload_key(Caller(uid=os.getuid(), gid=os.getgid(), pid=0))
    await wait_until(
        lambda: any(str(e.spiffe_id) == ME for e in agent.cache.matching_entries(me)),
        what="the agent to hold the new entry",
    )


def test_spiffe_client_fetches_and_validates_jwt_svids_from_trustd_up(tmp_path: Path) -> None:
    from spiffe import JwtSource, JwtSvid, TrustDomain, WorkloadApiClient
    from spiffe.workloadapi.errors import ValidateJwtSvidError

    data_dir = tmp_path / "d"
    seen: dict[str, Any] = {}

    def client_side(socket: str) -> None:
        with WorkloadApiClient(socket_path=socket, default_timeout=20) as client:
            svid = client.fetch_jwt_svid(audience={"backend"})
            bundles = client.fetch_jwt_bundles()
            bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TD))
            assert bundle is not None
            seen["svid"] = svid
            seen["kids"] = set(bundle.jwt_authorities)
            seen["parsed"] = JwtSvid.parse_and_validate(svid.token, bundle, {"backend"})
            seen["validated"] = client.validate_jwt_svid(svid.token, "backend")
            with pytest.raises(ValidateJwtSvidError):
                client.validate_jwt_svid(svid.token, "frontend")
            seen["again"] = client.fetch_jwt_svid(audience={"backend"})
        with JwtSource(socket_path=socket, timeout_in_seconds=20) as source:
            from_source = source.fetch_svid(audience={"reports"})
            source_bundle = source.get_bundle_for_trust_domain(TrustDomain(TD))
            assert source_bundle is not None
            seen["from_source"] = JwtSvid.parse_and_validate(
                from_source.token, source_bundle, {"reports"}
            )

    async def main() -> None:
        up = Embedded(_config(data_dir))
        await up.start()
        try:
            assert up.agent is not None
            await _entry_for_me(up.server, up.agent)
            await asyncio.to_thread(client_side, f"unix://{up.cfg.agent_socket_path}")
            seen["bundle"] = await asyncio.to_thread(up.server.core.bundle)
        finally:
            await up.stop()

    asyncio.run(main())

    svid = seen["svid"]
    assert str(svid.spiffe_id) == ME and svid.audience == {"backend"}
    left = svid.expiry - dt.datetime.now(dt.UTC).timestamp()
    assert 240 < left <= 300  # 5 minutes by default
    header = _header(svid.token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert header["kid"] in seen["kids"]
    assert {a.key_id for a in seen["bundle"].jwt_authorities} == seen["kids"]
    assert str(seen["parsed"].spiffe_id) == ME
    assert str(seen["validated"].spiffe_id) == ME
    assert seen["again"].token == svid.token  # held by the agent until half its life
    assert str(seen["from_source"].spiffe_id) == ME

    audit = _audit_text(data_dir)
    assert svid.token not in audit and seen["again"].token not in audit
    issued = [json.loads(line) for line in audit.splitlines()]
    jwt_issued = [e for e in issued if e["type"] == "svid.issue" and e["details"].get("jwt")]
    assert len(jwt_issued) == 2  # backend and reports; the repeat came from the agent's cache
    assert {e["resource"] for e in jwt_issued} == {ME}
    assert all(set(e["details"]) == {"jwt", "jti", "kid", "exp", "entry_id"} for e in jwt_issued)


@contextlib.asynccontextmanager
async def _server_and_agent(
    tmp: Path, clock: FakeClock
) -> AsyncIterator[tuple[TrustdServer, AgentService]]:
    """``trustd up``'s wiring (see trustd.server.embedded), with a clock the test moves."""
    cfg = _config(tmp / "d")
    srv = TrustdServer(cfg, clock=clock)
    await srv.start()
    agent: AgentService | None = None
    try:
        await srv.wait_ready()
        agent = AgentService(
            upstream=RegistryUpstream(
                srv.registry,
                srv.hub,
                srv.executor,
                Actor(kind="spiffe", id=f"spiffe://{TD}/trustd/agent/embedded"),
            ),
            socket_path=cfg.agent_socket_path,
            trust_domain=srv.trust_domain,
            clock=clock,
            metrics=AgentMetrics(srv.metrics.registry),
        )
        await agent.start()
        await agent.wait_ready()
        yield srv, agent
    finally:
        if agent is not None:
            await agent.stop()
        await srv.stop()


@run_async
async def test_jwt_bundles_are_pushed_to_a_jwt_source_when_the_keys_rotate(
    tmp_path: Path,
) -> None:
    from spiffe import JwtSource, JwtSvid, TrustDomain

    clock = FakeClock(dt.datetime.now(dt.UTC))
    async with _server_and_agent(tmp_path, clock) as (srv, agent):
        await _entry_for_me(srv, agent)
        socket = f"unix://{agent.socket_path}"
        source = await asyncio.to_thread(JwtSource, socket_path=socket, timeout_in_seconds=20)
        updates = threading.Event()
        source.subscribe_for_updates(updates.set)
        try:

            def kids() -> set[str]:
                bundle = source.get_bundle_for_trust_domain(TrustDomain(TD))
                return set(bundle.jwt_authorities) if bundle is not None else set()

            [first_kid] = kids()
            before = await asyncio.to_thread(source.fetch_svid, {"backend"})
            assert _header(before.token)["kid"] == first_kid

            # half the key's life: the next key is prepared and published, not yet signing
            clock.advance(dt.timedelta(hours=12, minutes=1))
            await asyncio.to_thread(srv.core.rotate_tick)
            await wait_until(lambda: len(kids()) == 2, what="the jwt source to get both keys")
            assert updates.is_set()
            [second_kid] = kids() - {first_kid}
            bundle = source.get_bundle_for_trust_domain(TrustDomain(TD))
            assert bundle is not None
            JwtSvid.parse_and_validate(before.token, bundle, {"backend"})

            # the last sixth: the new key signs; the old one stays published
            clock.advance(dt.timedelta(hours=8))
            await asyncio.to_thread(srv.core.rotate_tick)
            after = await asyncio.to_thread(source.fetch_svid, {"backend"})
            assert _header(after.token)["kid"] == second_kid
            assert kids() == {first_kid, second_kid}
            bundle = source.get_bundle_for_trust_domain(TrustDomain(TD))
            assert bundle is not None
            assert str(JwtSvid.parse_and_validate(after.token, bundle, {"backend"}).spiffe_id) == ME
        finally:
            await asyncio.to_thread(source.close)
