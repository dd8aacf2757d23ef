"""SDS v3 on the agent socket: one test per protocol edge case.

The agent runs for real on a Unix socket in a temp dir, with the fake upstream
(a real throwaway CA). The client is grpcio, a real gRPC client; the test
process (root) is the caller, attested by SO_PEERCRED.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog.testing
from agent_fakes import (
    FakeUpstream,
    TestCA,
    agent_channel,
    leaf_of,
    metric,
    read_error,
    run_async,
    running_agent,
    sds_call,
    sds_fetch,
    sds_request,
    secrets_of,
    uri_of,
    wait_until,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryResponse,
)

from trustd.clock import FakeClock
from trustd.spiffeid import TrustDomain

ME = f"unix:uid:{os.getuid()}"
MY_ID = "spiffe://trustd.local/ns/demo/sa/me"
OTHER_ID = "spiffe://trustd.local/ns/other/sa/secret"


def _setup(
    tmp_path: Path, federates_with: tuple[str, ...] = ()
) -> tuple[FakeUpstream, FakeClock, Path]:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    up.add_entry(MY_ID, [ME], federates_with=federates_with)
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    return up, clock, tmp_path / "public" / "agent.sock"


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


@run_async
async def test_first_request_gets_default_and_rootca(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default", "ROOTCA"]))
        resp = await call.read()
        assert resp.type_url.endswith("tls.v3.Secret")
        assert resp.nonce and resp.version_info
        secrets = secrets_of(resp)
        assert set(secrets) == {"default", "ROOTCA"}
        leaf = leaf_of(secrets["default"])
        assert uri_of(leaf) == MY_ID
        key = serialization.load_pem_private_key(
            secrets["default"].tls_certificate.private_key.inline_bytes, None
        )
        assert key.public_key() == leaf.public_key()
        assert b"BEGIN PRIVATE KEY" in secrets["default"].tls_certificate.private_key.inline_bytes
        roots = _pem_certs(secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes)
        assert roots == [up.ca.active.cert]
        call.cancel()


@run_async
async def test_brand_new_workload_is_signed_on_demand(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    sock = tmp_path / "agent.sock"
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        # The entry appears only now; the very first request must be answered with it.
        up.add_entry(MY_ID, [ME])
        await wait_until(lambda: agent.cache.entry_revision == up.revision, what="entry synced")
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        resp = await call.read()
        assert uri_of(leaf_of(secrets_of(resp)["default"])) == MY_ID
        call.cancel()


UNKNOWN_METRIC = "trustd_agent_sds_unknown_resources_total"


async def _read(call: Any) -> DiscoveryResponse:
    """The next response; a stream that ended (or went quiet) fails the test."""
    msg = await asyncio.wait_for(call.read(), 30)
    assert msg is not grpc.aio.EOF, "stream ended"
    resp: DiscoveryResponse = msg
    return resp


def _not_served(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "sds resource not served" and e["name"] == name]


@run_async
async def test_unknown_name_is_left_out_and_the_stream_stays_open(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
            call = sds_call(ch)
            await call.write(sds_request(["default", "defualt"]))
            r1 = await _read(call)
            assert set(secrets_of(r1)) == {"default"}
            assert uri_of(leaf_of(secrets_of(r1)["default"])) == MY_ID
            assert r1.nonce and r1.version_info
            await call.write(
                sds_request(["default", "defualt"], version=r1.version_info, nonce=r1.nonce)
            )
            # The client asks again with the name still in (another subscription joins):
            # answered, and the name is not logged or counted again.
            await call.write(
                sds_request(
                    ["defualt", "default", "ROOTCA"], version=r1.version_info, nonce=r1.nonce
                )
            )
            r2 = await _read(call)
            assert set(secrets_of(r2)) == {"default", "ROOTCA"}
            await call.write(
                sds_request(
                    ["defualt", "default", "ROOTCA"], version=r2.version_info, nonce=r2.nonce
                )
            )
            pushes = metric(agent.metrics, "trustd_agent_pushes_total", api="sds")
            # A change the answer does not depend on sends nothing (no resend of r2)...
            partner = TestCA(
                TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1)
            )
            up.set_federated(partner.bundle())
            await wait_until(
                lambda: TrustDomain.parse("partner.example") in agent.cache.bundles,
                what="federated bundle synced",
            )
            # ...and rotation still reaches the stream: the very next message.
            clock.advance(dt.timedelta(minutes=40))
            await agent.cache.rotate_due()
            r3 = await _read(call)
            assert metric(agent.metrics, "trustd_agent_pushes_total", api="sds") == pushes + 1
            assert set(secrets_of(r3)) == {"default", "ROOTCA"}
            assert r3.version_info != r2.version_info and r3.nonce != r2.nonce
            assert (
                leaf_of(secrets_of(r3)["default"]).serial_number
                != leaf_of(secrets_of(r1)["default"]).serial_number
            )
            assert metric(agent.metrics, UNKNOWN_METRIC, reason="unknown") == 1
            assert metric(agent.metrics, UNKNOWN_METRIC, reason="not_entitled") == 0
            assert metric(agent.metrics, "trustd_agent_sds_nacks_total") == 0
            call.cancel()
    [logged] = _not_served(logs, "defualt")
    assert logged["log_level"] == "warning"
    assert logged["reason"] == "unknown"
    assert logged["uid"] == os.getuid()
    assert all("PRIVATE KEY" not in repr(e) and "CERTIFICATE" not in repr(e) for e in logs)


@run_async
async def test_only_unknown_names_get_an_empty_answer_and_wait(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path, federates_with=("partner.example",))
    partner = TestCA(TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1))
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["spiffe://partner.example"]))
        r1 = await _read(call)
        assert list(r1.resources) == [] and r1.nonce
        await call.write(
            sds_request(["spiffe://partner.example"], version=r1.version_info, nonce=r1.nonce)
        )
        # The trust domain is federated later: its bundle is sent on the same stream.
        up.set_federated(partner.bundle())
        r2 = await _read(call)
        roots = secrets_of(r2)["spiffe://partner.example"].validation_context.trusted_ca
        assert _pem_certs(roots.inline_bytes) == [partner.active.cert]
        assert r2.version_info != r1.version_info
        assert metric(agent.metrics, UNKNOWN_METRIC, reason="unknown") == 1
        # FetchSecrets has nothing to wait with: only unknown names are NOT_FOUND.
        code = None
        try:
            await sds_fetch(ch, ["defualt", "spiffe://unknown.example"])
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code == grpc.StatusCode.NOT_FOUND
        call.cancel()


@run_async
async def test_name_the_caller_becomes_entitled_to_is_sent_then(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    second = "spiffe://trustd.local/ns/demo/sa/second"
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default", second]))
        r1 = await _read(call)
        assert set(secrets_of(r1)) == {"default"}
        await call.write(sds_request(["default", second], version=r1.version_info, nonce=r1.nonce))
        up.add_entry(second, [ME])
        r2 = await _read(call)
        assert set(secrets_of(r2)) == {"default", second}
        assert uri_of(leaf_of(secrets_of(r2)[second])) == second
        assert uri_of(leaf_of(secrets_of(r2)["default"])) == MY_ID
        assert metric(agent.metrics, UNKNOWN_METRIC, reason="not_entitled") == 1
        call.cancel()


@run_async
async def test_not_entitled_name_beside_default_gets_default_only(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    other = next(e for e in up.entries.values() if str(e.spiffe_id) == OTHER_ID)
    with structlog.testing.capture_logs() as logs:
        async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
            await wait_until(
                lambda: agent.cache.svid(other.id) is not None,
                what="other workload's svid held by the agent",
            )
            other_svid = agent.cache.svid(other.id)
            assert other_svid is not None
            call = sds_call(ch)
            await call.write(sds_request([OTHER_ID, "default"]))
            resp = await _read(call)
            fetched = await sds_fetch(ch, ["default", OTHER_ID])
            for r in (resp, fetched):
                assert set(secrets_of(r)) == {"default"}
                assert uri_of(leaf_of(secrets_of(r)["default"])) == MY_ID
                raw = r.SerializeToString()
                assert OTHER_ID.encode() not in raw
                assert other_svid.key_pkcs8_pem not in raw
                assert other_svid.key_pkcs8_der not in raw
                other_leaf = other_svid.chain[0]
                assert other_leaf.public_bytes(serialization.Encoding.PEM) not in raw
                assert other_leaf.public_bytes(serialization.Encoding.DER) not in raw
            assert metric(agent.metrics, UNKNOWN_METRIC, reason="not_entitled") == 2
            assert metric(agent.metrics, UNKNOWN_METRIC, reason="unknown") == 0
            await call.write(
                sds_request([OTHER_ID, "default"], version=resp.version_info, nonce=resp.nonce)
            )
            clock.advance(dt.timedelta(minutes=40))
            await agent.cache.rotate_due()
            rotated = await _read(call)
            assert set(secrets_of(rotated)) == {"default"}
            assert uri_of(leaf_of(secrets_of(rotated)["default"])) == MY_ID
            assert OTHER_ID.encode() not in rotated.SerializeToString()
            assert metric(agent.metrics, UNKNOWN_METRIC, reason="not_entitled") == 2
            call.cancel()
    logged = _not_served(logs, OTHER_ID)
    assert len(logged) == 2  # the stream once, the fetch once
    assert {e["reason"] for e in logged} == {"not_entitled"}


@run_async
async def test_only_names_the_caller_may_not_have_are_permission_denied(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        for names in (
            [OTHER_ID],
            ["spiffe://trustd.local/ns/nobody/sa/none"],
            [OTHER_ID, "spiffe://trustd.local/ns/nobody/sa/none"],
        ):
            call = sds_call(ch)
            await call.write(sds_request(names))
            # Same answer whether or not another workload holds the identity.
            assert await asyncio.wait_for(read_error(call), 30) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            code = None
            try:
                await sds_fetch(ch, names)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            assert code == grpc.StatusCode.PERMISSION_DENIED


@run_async
async def test_malformed_name_beside_default_is_left_out(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default", "spiffe://trustd.local/ns/../x"]))
        assert set(secrets_of(await _read(call))) == {"default"}
        assert metric(agent.metrics, UNKNOWN_METRIC, reason="malformed") == 1
        call.cancel()


@run_async
async def test_invalid_spiffe_id_name_is_invalid_argument(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["spiffe://trustd.local/ns/../x"]))
        assert await read_error(call) == grpc.StatusCode.INVALID_ARGUMENT


@run_async
async def test_caller_without_entry_gets_no_default_but_may_get_bundle(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    sock = tmp_path / "agent.sock"
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        assert await read_error(call) == grpc.StatusCode.PERMISSION_DENIED
        resp = await sds_fetch(ch, ["ROOTCA"])
        assert set(secrets_of(resp)) == {"ROOTCA"}


@run_async
async def test_stale_nonce_is_ignored(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default", "ROOTCA"]))
        r1 = await call.read()
        clock.advance(dt.timedelta(minutes=40))
        await agent.cache.rotate_due()
        r2 = await call.read()
        assert r2.nonce != r1.nonce
        # A request carrying the older nonce, even one that changes the names, is ignored.
        await call.write(sds_request(["ROOTCA"], version=r1.version_info, nonce=r1.nonce))
        clock.advance(dt.timedelta(minutes=40))
        await agent.cache.rotate_due()
        r3 = await call.read()
        assert set(secrets_of(r3)) == {"default", "ROOTCA"}, "stale request must not resubscribe"
        assert (
            leaf_of(secrets_of(r3)["default"]).serial_number
            != leaf_of(secrets_of(r2)["default"]).serial_number
        )
        assert metric(agent.metrics, "trustd_agent_sds_nacks_total") == 0
        call.cancel()


@run_async
async def test_nack_is_counted_and_not_resent(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default", "ROOTCA"]))
        r1 = await call.read()
        await call.write(
            sds_request(["default", "ROOTCA"], version="", nonce=r1.nonce, error="bad key")
        )
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_sds_nacks_total") == 1, what="nack counted"
        )
        pushes = metric(agent.metrics, "trustd_agent_pushes_total", api="sds")
        # Something unrelated changes (a federated bundle this stream did not ask for):
        # the stream re-derives its answer, finds the same version, and sends nothing.
        other = TestCA(TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1))
        up.set_federated(other.bundle())
        await wait_until(
            lambda: TrustDomain.parse("partner.example") in agent.cache.bundles,
            what="federated bundle synced",
        )
        # A real change: the very next message must be the new SVID, not a resend of r1.
        clock.advance(dt.timedelta(minutes=40))
        await agent.cache.rotate_due()
        r2 = await call.read()
        assert r2.version_info != r1.version_info
        assert (
            leaf_of(secrets_of(r2)["default"]).serial_number
            != leaf_of(secrets_of(r1)["default"]).serial_number
        )
        assert metric(agent.metrics, "trustd_agent_pushes_total", api="sds") == pushes + 1
        call.cancel()


@run_async
async def test_version_mismatch_on_current_nonce_is_a_nack(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        r1 = await call.read()
        await call.write(sds_request(["default"], version="some-older-version", nonce=r1.nonce))
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_sds_nacks_total") == 1, what="nack counted"
        )
        call.cancel()


@run_async
async def test_ack_without_change_sends_nothing(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        r1 = await call.read()
        await call.write(sds_request(["default"], version=r1.version_info, nonce=r1.nonce))
        # A bundle change does not touch 'default': nothing is sent for it.
        up.rotate_ca()

        def synced() -> bool:
            own = agent.cache.own_bundle
            return own is not None and len(own.x509_authorities) == 2

        await wait_until(synced, what="bundle synced")
        clock.advance(dt.timedelta(minutes=40))
        await agent.cache.rotate_due()
        r2 = await call.read()
        # The next message is the rotation, signed by the new CA.
        assert leaf_of(secrets_of(r2)["default"]).issuer == up.ca.active.cert.subject
        assert metric(agent.metrics, "trustd_agent_sds_nacks_total") == 0
        call.cancel()


@run_async
async def test_resubscribe_with_a_different_name_set(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        r1 = await call.read()
        assert set(secrets_of(r1)) == {"default"}
        await call.write(sds_request(["ROOTCA", MY_ID], version=r1.version_info, nonce=r1.nonce))
        r2 = await call.read()
        assert set(secrets_of(r2)) == {"ROOTCA", MY_ID}
        assert uri_of(leaf_of(secrets_of(r2)[MY_ID])) == MY_ID
        assert r2.nonce != r1.nonce and r2.version_info != r1.version_info
        # Asking for a name it may not have, on the same stream, ends the stream with an error.
        await call.write(sds_request([OTHER_ID], version=r2.version_info, nonce=r2.nonce))
        assert await read_error(call) == grpc.StatusCode.PERMISSION_DENIED


@run_async
async def test_client_gone_mid_push(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent:
        stay = agent_channel(sock)
        leave = agent_channel(sock)
        call_stay, call_leave = sds_call(stay), sds_call(leave)
        for call in (call_stay, call_leave):
            await call.write(sds_request(["default"]))
            await call.read()
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_sds_streams") == 2, what="2 streams"
        )
        # Rotation starts, the server holds the signing: both streams are about to be pushed.
        up.hold_signing()
        clock.advance(dt.timedelta(minutes=40))
        calls = len(up.sign_calls)
        rotation = asyncio.ensure_future(agent.cache.rotate_due())
        await wait_until(lambda: len(up.sign_calls) > calls, what="rotation signing")
        await leave.close()  # the client disappears while its push is in flight
        up.release_signing()
        assert await rotation >= 1
        r2 = await call_stay.read()
        assert uri_of(leaf_of(secrets_of(r2)["default"])) == MY_ID
        await wait_until(
            lambda: metric(agent.metrics, "trustd_agent_sds_streams") == 1,
            what="gone stream cleaned up",
        )
        await wait_until(lambda: agent.cache.subscriber_count == 1, what="unsubscribed")
        # The agent still serves new streams.
        call = sds_call(stay)
        await call.write(sds_request(["ROOTCA"]))
        assert set(secrets_of(await call.read())) == {"ROOTCA"}
        await stay.close()


@run_async
async def test_rotation_is_pushed_on_open_stream_before_half_life(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        r1 = await call.read()
        leaf1 = leaf_of(secrets_of(r1)["default"])
        await call.write(sds_request(["default"], version=r1.version_info, nonce=r1.nonce))
        half = (
            leaf1.not_valid_before_utc
            + (leaf1.not_valid_after_utc - leaf1.not_valid_before_utc) / 2
        )
        clock.set(half - dt.timedelta(seconds=1))  # just before half life: must be due already
        assert await agent.cache.rotate_due() >= 1
        r2 = await call.read()
        leaf2 = leaf_of(secrets_of(r2)["default"])
        assert leaf2.serial_number != leaf1.serial_number
        assert uri_of(leaf2) == MY_ID
        call.cancel()


@run_async
async def test_bundle_change_is_pushed(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["ROOTCA"]))
        r1 = await call.read()
        await call.write(sds_request(["ROOTCA"], version=r1.version_info, nonce=r1.nonce))
        up.rotate_ca()
        r2 = await call.read()
        roots = _pem_certs(secrets_of(r2)["ROOTCA"].validation_context.trusted_ca.inline_bytes)
        assert roots == [a.cert for a in up.ca.authorities]
        assert len(roots) == 2
        call.cancel()


@run_async
async def test_trust_domain_names_and_all(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path, federates_with=("partner.example",))
    partner = TestCA(TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1))
    up.set_federated(partner.bundle())
    async with running_agent(sock, up), agent_channel(sock) as ch:
        resp = await sds_fetch(ch, ["spiffe://partner.example", "spiffe://trustd.local", "ALL"])
        secrets = secrets_of(resp)
        assert _pem_certs(
            secrets["spiffe://partner.example"].validation_context.trusted_ca.inline_bytes
        ) == [partner.active.cert]
        assert _pem_certs(
            secrets["spiffe://trustd.local"].validation_context.trusted_ca.inline_bytes
        ) == [up.ca.active.cert]
        validator = secrets["ALL"].validation_context.custom_validator_config
        assert validator.name == "envoy.tls.cert_validator.spiffe"
        cfg = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
        assert validator.typed_config.Unpack(cfg)
        assert sorted(td.name for td in cfg.trust_domains) == ["partner.example", "trustd.local"]
        try:
            await sds_fetch(ch, ["spiffe://unknown.example"])
            code = None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code == grpc.StatusCode.NOT_FOUND


@run_async
async def test_a_federated_bundle_is_served_only_to_entries_that_federate_with_it(
    tmp_path: Path,
) -> None:
    up, clock, sock = _setup(tmp_path)  # our entry does not federate with partner.example
    partner = TestCA(TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1))
    up.set_federated(partner.bundle())
    async with running_agent(sock, up), agent_channel(sock) as ch:
        resp = await sds_fetch(ch, ["spiffe://trustd.local", "ALL"])
        secrets = secrets_of(resp)
        validator = secrets["ALL"].validation_context.custom_validator_config
        cfg = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
        assert validator.typed_config.Unpack(cfg)
        assert [td.name for td in cfg.trust_domains] == ["trustd.local"]
        code = None
        try:
            await sds_fetch(ch, ["spiffe://partner.example"])
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code == grpc.StatusCode.NOT_FOUND  # the same answer as for no bundle at all


@run_async
async def test_fetch_secrets_answers_once(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        resp = await sds_fetch(ch, ["default", "ROOTCA"])
        assert set(secrets_of(resp)) == {"default", "ROOTCA"}
        assert uri_of(leaf_of(secrets_of(resp)["default"])) == MY_ID
        assert resp.nonce == ""


@run_async
async def test_empty_name_list_means_everything_the_caller_may_see(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        resp = await sds_fetch(ch, [])
        assert set(secrets_of(resp)) == {MY_ID, "spiffe://trustd.local"}


@run_async
async def test_delta_secrets_is_unimplemented(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = ch.stream_stream(
            "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
            request_serializer=DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=DeltaDiscoveryResponse.FromString,
        )()
        with contextlib.suppress(grpc.aio.AioRpcError):  # the answer may beat the write
            await call.write(DeltaDiscoveryRequest(resource_names_subscribe=["default"]))
        assert await call.code() == grpc.StatusCode.UNIMPLEMENTED


@run_async
async def test_wrong_type_url_is_invalid_argument(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        req = sds_request(["default"])
        req.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        await call.write(req)
        assert await read_error(call) == grpc.StatusCode.INVALID_ARGUMENT


@run_async
async def test_removed_entry_ends_the_stream(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    mine = next(e for e in up.entries.values() if str(e.spiffe_id) == MY_ID)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        await call.read()
        up.remove_entry(mine.id)
        assert await read_error(call) == grpc.StatusCode.PERMISSION_DENIED


@run_async
async def test_stream_waits_for_first_sync_instead_of_failing(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    up.go_down()
    async with running_agent(sock, up, ready=False) as agent, agent_channel(sock) as ch:
        call = sds_call(ch)
        await call.write(sds_request(["default"]))
        assert not agent.cache.ready
        up.come_back()  # the agent reconnects with backoff and answers the waiting stream
        up.clock.advance(dt.timedelta(seconds=31))  # type: ignore[attr-defined]  # backoff is on its clock
        resp = await call.read()
        assert uri_of(leaf_of(secrets_of(resp)["default"])) == MY_ID
        call.cancel()
