"""The agent API for real: a TrustdServer on loopback TLS and an agent's ServerLink."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from trustd import tlsutil
from trustd.agent.server_link import ServerLink
from trustd.agent.upstream import SvidRequest
from trustd.api.agent.v1 import agent_pb2
from trustd.api.agent.v1.agent_grpc import AgentAPIStub
from trustd.audit import Actor
from trustd.ca.errors import SigningError
from trustd.config import load_server_config
from trustd.errors import PermissionDeniedError, UnavailableError
from trustd.registry import CreateEntry, CreateToken
from trustd.server.app import TrustdServer
from trustd.spiffeid import SpiffeId, TrustDomain

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


async def _join_status(srv: TrustdServer, request: agent_pb2.JoinRequest) -> tuple[Status, str]:
    """Call Join with a hand-made request; return the gRPC status and message it fails with."""
    ctx = tlsutil.client_context(
        srv.core.bundle().to_pem(), SpiffeId.parse(f"spiffe://{TD}/trustd/server")
    )
    channel = Channel("127.0.0.1", srv.agent_api_port, ssl=ctx)
    try:
        with pytest.raises(GRPCError) as err:
            await AgentAPIStub(channel).Join(request, timeout=10)
    finally:
        channel.close()
    return err.value.status, err.value.message or ""


def _signed_csr(key: Any, algorithm: Any = None) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, algorithm)
        .public_bytes(serialization.Encoding.DER)
    )


def _audit_text(tmp: Path) -> str:
    return "".join(p.read_text() for p in (tmp / "server" / "audit").glob("audit-*.jsonl"))


def test_join_sync_sign_and_deltas(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            entry = srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/b", selectors=("unix:uid:1000",)
                ),
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
            leaf = x509.load_der_x509_certificate(signed.chain_der[0])
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
                "spiffe://trustd.local/ns/a/sa/b"
            ]

            second = await asyncio.to_thread(
                srv.registry.entries.create,
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/c", selectors=("unix:uid:1001",)
                ),
            )
            delta = await _next(entries)
            assert not delta.full and [e.id for e in delta.upserted] == [second.id]
            await asyncio.to_thread(srv.registry.entries.delete, ADMIN, second.id)
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
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
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


def test_join_with_bytes_that_are_no_csr_is_invalid_and_logs_no_traceback(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            with structlog.testing.capture_logs() as logs:
                for bad in (b"not a csr at all!", b"\x30\x03ABC", b"@@@@"):
                    status, message = await _join_status(
                        srv, agent_pb2.JoinRequest(token=token, csr_der=bad)
                    )
                    assert status is Status.INVALID_ARGUMENT, message
                    assert "csr" in message and "\n" not in message
                    assert token not in message
            assert not [e for e in logs if e.get("exc_info") or e["log_level"] == "error"], logs
            assert token not in repr(logs)
            link = _link(srv, tmp_path, token)
            await link.start()  # the token was not spent
            assert link.agent_id
            await link.close()
            assert token not in _audit_text(tmp_path)
        finally:
            await srv.stop()

    asyncio.run(main())


def test_join_with_a_malformed_csr_leaves_the_token_for_a_retry(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            with structlog.testing.capture_logs() as logs:
                for bad in (b"garbage", _csr()[:-7], b""):
                    status, message = await _join_status(
                        srv, agent_pb2.JoinRequest(token=token, csr_der=bad, hostname="h")
                    )
                    assert status is Status.INVALID_ARGUMENT, message
                    assert "csr" in message and "\n" not in message
                    assert token not in message
            assert not [e for e in logs if e.get("exc_info")], logs
            assert srv.store.list_agents() == []
            link = _link(srv, tmp_path, token)
            await link.start()
            assert [a.id for a in srv.store.list_agents()] == [link.agent_id]
            await link.close()
            status, message = await _join_status(
                srv, agent_pb2.JoinRequest(token=token, csr_der=_csr())
            )
            assert status is Status.PERMISSION_DENIED, message  # spent by the good join only
            events = [json.loads(line) for line in _audit_text(tmp_path).splitlines()]
            joins = [e for e in events if e["type"] == "agent.join"]
            # the empty csr is refused before it reaches the join (nothing to audit)
            assert [e["outcome"] for e in joins] == ["failure"] * 2 + ["success", "failure"]
            assert "csr" in joins[0]["reason"]
            assert token not in _audit_text(tmp_path)
        finally:
            await srv.stop()

    asyncio.run(main())


def test_join_with_a_wrong_key_type_or_bad_signature_keeps_the_token(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            tampered = bytearray(_csr())
            tampered[-3] ^= 0x55
            cases: list[tuple[bytes, str]] = [
                (_signed_csr(ed25519.Ed25519PrivateKey.generate()), "not supported"),
                (_signed_csr(ec.generate_private_key(ec.SECP521R1()), hashes.SHA256()), "curve"),
                (
                    _signed_csr(
                        rsa.generate_private_key(public_exponent=65537, key_size=1024),
                        hashes.SHA256(),
                    ),
                    "bits",
                ),
                (bytes(tampered), "csr"),
                (b"", "csr"),
            ]
            for csr_der, words in cases:
                status, message = await _join_status(
                    srv, agent_pb2.JoinRequest(token=token, csr_der=csr_der)
                )
                assert status is Status.INVALID_ARGUMENT, message
                assert words in message, message
            status, message = await _join_status(
                srv, agent_pb2.JoinRequest(token=token, csr_der=_csr(), hostname="h\x00st")
            )
            assert status is Status.INVALID_ARGUMENT and "hostname" in message, message
            assert srv.store.list_agents() == []
            link = _link(srv, tmp_path, token)
            await link.start()
            assert link.agent_id
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_a_join_whose_issuance_fails_gives_the_token_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            real_sign = srv.core.issuer.sign

            def failing(*args: Any, **kwargs: Any) -> Any:
                raise SigningError("the key manager is unavailable")

            monkeypatch.setattr(srv.core.issuer, "sign", failing)
            status, message = await _join_status(
                srv, agent_pb2.JoinRequest(token=token, csr_der=_csr())
            )
            assert status is Status.UNAVAILABLE, message
            assert srv.store.list_agents() == []
            monkeypatch.setattr(srv.core.issuer, "sign", real_sign)
            link = _link(srv, tmp_path, token)
            await link.start()
            assert [a.id for a in srv.store.list_agents()] == [link.agent_id]
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_consume_token_races_across_threads(tmp_path: Path) -> None:
    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            digest = srv.registry.tokens.hmac(token)
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
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            entry = srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/b", selectors=("unix:uid:1000",)
                ),
            )
            link = _link(srv, tmp_path, token)
            await link.start()
            entries = link.watch_entries(since_revision=None).__aiter__()
            await _next(entries)
            assert link.agent_id is not None
            await asyncio.to_thread(srv.registry.agents.evict, ADMIN, link.agent_id)
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
                token = srv.registry.tokens.create(
                    ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
                ).token
                link = _link(srv, tmp_path, token, name)
                await link.start()
                links.append(link)
            a, b = links
            assert a.agent_id and b.agent_id
            everywhere = srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/x/sa/all", selectors=("unix:uid:1",)
                ),
            )
            only_a = srv.registry.entries.create(
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/x/sa/a",
                    selectors=("unix:uid:2",),
                    agent_id=a.agent_id,
                ),
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
                srv.registry.entries.create,
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/x/sa/a2",
                    selectors=("unix:uid:3",),
                    agent_id=a.agent_id,
                ),
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
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
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
            events = "".join(
                p.read_text() for p in (tmp_path / "server" / "audit").glob("audit-*.jsonl")
            )
            assert '"type":"agent.renew"' in events
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_a_remote_agent_gets_federated_bundles_and_federates_with(tmp_path: Path) -> None:
    from dataplane_testing import ThrowawayCA

    from trustd.bundle import Bundle
    from trustd.federation.model import CreateFederation

    partner = ThrowawayCA("partner.example")
    partner_bundle = Bundle(
        trust_domain=TrustDomain.parse("partner.example"),
        x509_authorities=(partner.cert,),
        sequence=4,
    )

    async def main() -> None:
        srv = await _server(tmp_path)
        try:
            token = srv.registry.tokens.create(
                ADMIN, CreateToken(ttl=dt.timedelta(minutes=5))
            ).token
            link = _link(srv, tmp_path, token)
            await link.start()
            bundles = link.watch_bundles().__aiter__()
            before = await _next(bundles)
            assert [b.trust_domain.name for b in before.bundles] == ["trustd.local"]
            await asyncio.to_thread(
                srv.federation.create,
                ADMIN,
                CreateFederation(
                    trust_domain="partner.example",
                    endpoint_url="https://127.0.0.1:1/",
                    profile="https_spiffe",
                    endpoint_spiffe_id="spiffe://partner.example/trustd/server",
                    bundle=partner_bundle.to_spiffe().encode(),
                ),
            )
            after = await _next(bundles)
            assert [b.trust_domain.name for b in after.bundles] == [
                "trustd.local",
                "partner.example",
            ]
            assert after.bundles[1].x509_authorities == (partner.cert,)
            assert after.bundles[1].sequence == 4
            entry = await asyncio.to_thread(
                srv.registry.entries.create,
                ADMIN,
                CreateEntry(
                    spiffe_id="spiffe://trustd.local/ns/a/sa/b",
                    selectors=("unix:uid:1000",),
                    federates_with=("spiffe://partner.example",),
                ),
            )
            entries = link.watch_entries(since_revision=None).__aiter__()
            first = await _next(entries)
            [got] = [e for e in first.upserted if e.id == entry.id]
            assert got.federates_with == (TrustDomain.parse("partner.example"),)
            await link.close()
        finally:
            await srv.stop()

    asyncio.run(main())
