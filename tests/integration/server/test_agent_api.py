"""The agent API for real: a TrustdServer on loopback TLS and an agent's ServerLink."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.agent.server_link import ServerLink
from trustd.agent.upstream import SvidRequest
from trustd.config import load_server_config
from trustd.errors import PermissionDeniedError, UnavailableError
from trustd.server.app import TrustdServer
from trustd.server.audit_hook import Actor
from trustd.spiffeid import TrustDomain

pytestmark = pytest.mark.integration
ADMIN = Actor(kind="unix", id="uid:0", uid=0)
TD = TrustDomain.parse("trustd.local")


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


async def _server(tmp: Path) -> TrustdServer:
    cfg = load_server_config(
        None,
        {
            "dataDir": str(tmp / "server"),
            "serverAddress": "127.0.0.1:0",
            "metricsAddress": "127.0.0.1:0",
        },
    )
    srv = TrustdServer(cfg)
    await srv.start()
    await srv.wait_ready()
    return srv


def _link(srv: TrustdServer, tmp: Path, token: str | None, name: str = "agent") -> ServerLink:
    return ServerLink(
        address=f"127.0.0.1:{srv.agent_api_port}",
        trust_domain=TD,
        data_dir=tmp / name,
        join_token=token,
        bootstrap_bundle_pem=srv.core.bundle().to_pem(),
    )


async def _next(it: AsyncIterator[Any], timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(it.__anext__(), timeout)


def test_join_sync_sign_and_deltas(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=5))
            entry = srv.core.create_entry(
                ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", selectors=["unix:uid:1000"]
            )
            link = _link(srv, tmp_path, token)
            await link.start()
            assert link.agent_id
            agents = srv.store.list_agents()
            assert [a.id for a in agents] == [link.agent_id]
            assert (tmp_path / "agent" / "agent-svid.json").stat().st_mode & 0o777 == 0o600

            entries = link.watch_entries(since_revision=None).__aiter__()
            first = await _next(entries)
            assert first.full and [e.id for e in first.upserted] == [entry.id]

            [signed] = await link.sign_x509_svids([SvidRequest(entry_id=entry.id, csr_der=_csr())])
            leaf = x509.load_der_x509_certificate(signed.cert_chain_der[0])
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
                "spiffe://trustd.local/ns/a/sa/b"
            ]

            second = await asyncio.to_thread(
                srv.core.create_entry,
                ADMIN,
                spiffe_id="spiffe://trustd.local/ns/a/sa/c",
                selectors=["unix:uid:1001"],
            )
            delta = await _next(entries)
            assert not delta.full and [e.id for e in delta.upserted] == [second.id]
            await asyncio.to_thread(srv.core.delete_entry, ADMIN, second.id)
            gone = await _next(entries)
            assert gone.removed == (second.id,)

            bundles = link.watch_bundles().__aiter__()
            before = await _next(bundles)
            await asyncio.to_thread(srv.core.authority_op, ADMIN, "prepare")
            after = await _next(bundles)
            assert after.bundles[0].sequence > before.bundles[0].sequence
            assert len(after.bundles[0].x509_authorities) == 2
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_join_token_is_single_use_even_when_joins_race(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=5))
            links = [_link(srv, tmp_path, token, f"agent{i}") for i in range(4)]
            results = await asyncio.gather(*(lk.start() for lk in links), return_exceptions=True)
            ok = [r for r in results if r is None]
            refused = [r for r in results if isinstance(r, PermissionDeniedError)]
            assert len(ok) == 1 and len(refused) == 3, results
            assert len(srv.store.list_agents()) == 1
            for lk in links:
                await lk.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_consume_token_races_across_threads(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=5))
            digest = srv.core.token_hash(token)
            barrier = threading.Barrier(8)
            wins: list[bool] = []

            def race(i: int) -> None:
                barrier.wait()
                wins.append(srv.store.consume_token(digest, f"a{i}", dt.datetime.now(dt.UTC)))

            threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(wins) == [False] * 7 + [True]
        finally:
            await srv.stop()

    asyncio.run(main())


def test_evicted_agent_is_cut_off(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=5))
            entry = srv.core.create_entry(
                ADMIN, spiffe_id="spiffe://trustd.local/ns/a/sa/b", selectors=["unix:uid:1000"]
            )
            link = _link(srv, tmp_path, token)
            await link.start()
            entries = link.watch_entries(since_revision=None).__aiter__()
            await _next(entries)
            assert link.agent_id is not None
            await asyncio.to_thread(srv.core.evict_agent, ADMIN, link.agent_id)
            with pytest.raises(PermissionDeniedError, match="evicted"):
                await _next(entries)
            with pytest.raises(PermissionDeniedError, match="evicted"):
                await link.sign_x509_svids([SvidRequest(entry_id=entry.id, csr_der=_csr())])
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_unknown_token_and_server_down(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        port = srv.agent_api_port
        try:
            with pytest.raises(PermissionDeniedError, match="join token"):
                await _link(srv, tmp_path, "not-a-token").start()
        finally:
            await srv.stop()
        link = ServerLink(
            address=f"127.0.0.1:{port}",
            trust_domain=TD,
            data_dir=tmp_path / "late",
            join_token="x",
            bootstrap_bundle_pem=b"",
            insecure_bootstrap=True,
        )
        with pytest.raises(UnavailableError, match="cannot reach"):
            await link.start()

    asyncio.run(main())


def test_each_agent_gets_only_the_entries_it_may_serve(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            links = []
            for name in ("a", "b"):
                token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=5))
                link = _link(srv, tmp_path, token, name)
                await link.start()
                links.append(link)
            a, b = links
            assert a.agent_id and b.agent_id
            everywhere = srv.core.create_entry(
                ADMIN, spiffe_id="spiffe://trustd.local/ns/x/sa/all", selectors=["unix:uid:1"]
            )
            only_a = srv.core.create_entry(
                ADMIN,
                spiffe_id="spiffe://trustd.local/ns/x/sa/a",
                selectors=["unix:uid:2"],
                agent_id=a.agent_id,
            )
            snap_a = await _next(a.watch_entries(since_revision=None).__aiter__())
            b_entries = b.watch_entries(since_revision=None).__aiter__()
            snap_b = await _next(b_entries)
            assert {e.id for e in snap_a.upserted} == {everywhere.id, only_a.id}
            assert {e.id for e in snap_b.upserted} == {everywhere.id}
            with pytest.raises(PermissionDeniedError, match="another agent"):
                await b.sign_x509_svids([SvidRequest(entry_id=only_a.id, csr_der=_csr())])
            [ok] = await a.sign_x509_svids([SvidRequest(entry_id=only_a.id, csr_der=_csr())])
            assert ok.entry_id == only_a.id
            # a later entry for a: b's delta does not carry it
            await asyncio.to_thread(
                srv.core.create_entry,
                ADMIN,
                spiffe_id="spiffe://trustd.local/ns/x/sa/a2",
                selectors=["unix:uid:3"],
                agent_id=a.agent_id,
            )
            delta_b = await _next(b_entries)
            assert delta_b.upserted == ()
            for link in links:
                await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_agent_svid_is_renewed_at_half_life(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = load_server_config(
            None,
            {
                "dataDir": str(tmp_path / "server"),
                "serverAddress": "127.0.0.1:0",
                "metricsAddress": "127.0.0.1:0",
                "svid": {"defaultTtl": "4s", "maxTtl": "1h"},
            },
        )
        srv = TrustdServer(cfg)
        await srv.start()
        await srv.wait_ready()
        try:
            token, _ = srv.core.create_token(ADMIN, dt.timedelta(minutes=5))
            link = _link(srv, tmp_path, token)
            await link.start()
            assert link.agent_id is not None
            first = srv.store.get_agent(link.agent_id).serial
            deadline = asyncio.get_running_loop().time() + 15
            while srv.store.get_agent(link.agent_id).serial == first:
                assert asyncio.get_running_loop().time() < deadline, "agent svid not renewed"
                await asyncio.sleep(0.2)
            # the renewed identity is used for calls: entries still flow
            update = await _next(link.watch_entries(since_revision=None).__aiter__())
            assert update.full
            events = "".join(p.read_text() for p in (tmp_path / "server" / "audit").glob("audit-*.jsonl"))
            assert '"type":"agent.renew"' in events
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())
