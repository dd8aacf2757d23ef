"""SPIFFE Workload API on the agent socket, with a grpcio client and the fake upstream."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import grpc
from agent_fakes import (
    FakeUpstream,
    TestCA,
    agent_channel,
    metric,
    read_error,
    run_async,
    running_agent,
    split_der,
    uri_of,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2

from trustd.clock import FakeClock
from trustd.spiffeid import TrustDomain

ME = f"unix:uid:{os.getuid()}"
MY_ID = "spiffe://trustd.local/ns/demo/sa/me"
MY_SECOND_ID = "spiffe://trustd.local/ns/demo/sa/me-too"
OTHER_ID = "spiffe://trustd.local/ns/other/sa/secret"
HEADER = (("workload.spiffe.io", "true"),)


def _setup(
    tmp_path: Path, federates_with: tuple[str, ...] = ()
) -> tuple[FakeUpstream, FakeClock, Path]:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    up.add_entry(
        MY_ID,
        [ME],
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        federates_with=federates_with,
    )
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    return up, clock, tmp_path / "agent.sock"


def _svid_call(ch: grpc.aio.Channel, metadata: Any = HEADER) -> Any:
    return ch.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=workload_pb2.X509SVIDRequest.SerializeToString,
        response_deserializer=workload_pb2.X509SVIDResponse.FromString,
    )(workload_pb2.X509SVIDRequest(), metadata=metadata)


def _bundles_call(ch: grpc.aio.Channel, metadata: Any = HEADER) -> Any:
    return ch.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509Bundles",
        request_serializer=workload_pb2.X509BundlesRequest.SerializeToString,
        response_deserializer=workload_pb2.X509BundlesResponse.FromString,
    )(workload_pb2.X509BundlesRequest(), metadata=metadata)


def _leaf(svid: workload_pb2.X509SVID) -> x509.Certificate:
    return split_der(svid.x509_svid)[0]


@run_async
async def test_missing_security_header_is_invalid_argument(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await read_error(_svid_call(ch, metadata=None)) == grpc.StatusCode.INVALID_ARGUMENT
        assert await read_error(_bundles_call(ch, metadata=None)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        wrong = (("workload.spiffe.io", "false"),)
        assert await read_error(_svid_call(ch, metadata=wrong)) == grpc.StatusCode.INVALID_ARGUMENT


@run_async
async def test_fetch_x509_svid_gives_the_callers_svid_key_and_bundle(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = _svid_call(ch)
        resp = await call.read()
        assert [s.spiffe_id for s in resp.svids] == [MY_ID]
        svid = resp.svids[0]
        leaf = _leaf(svid)
        assert uri_of(leaf) == MY_ID
        key = serialization.load_der_private_key(svid.x509_svid_key, None)
        assert key.public_key() == leaf.public_key()
        assert split_der(svid.bundle) == [up.ca.active.cert]
        call.cancel()


@run_async
async def test_each_message_carries_the_complete_set(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = _svid_call(ch)
        first = await call.read()
        assert [s.spiffe_id for s in first.svids] == [MY_ID]
        up.add_entry(MY_SECOND_ID, [ME])
        second = await call.read()
        assert [s.spiffe_id for s in second.svids] == [MY_ID, MY_SECOND_ID]
        clock.advance(dt.timedelta(minutes=40))
        await agent.cache.rotate_due()
        third = await call.read()
        while len(
            {_leaf(s).serial_number for s in third.svids}
            & {_leaf(s).serial_number for s in second.svids}
        ):
            third = await call.read()  # renewals may arrive one entry at a time
        assert [s.spiffe_id for s in third.svids] == [MY_ID, MY_SECOND_ID]
        call.cancel()


@run_async
async def test_caller_without_identity_is_permission_denied(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    sock = tmp_path / "agent.sock"
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await read_error(_svid_call(ch)) == grpc.StatusCode.PERMISSION_DENIED
        assert await read_error(_bundles_call(ch)) == grpc.StatusCode.PERMISSION_DENIED


@run_async
async def test_unavailable_until_first_sync(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    up.go_down()
    async with running_agent(sock, up, ready=False), agent_channel(sock) as ch:
        assert await read_error(_svid_call(ch)) == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_fetch_x509_bundles_streams_bundle_changes(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path, federates_with=("partner.example",))
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = _bundles_call(ch)
        first = await call.read()
        assert set(first.bundles) == {"spiffe://trustd.local"}
        assert split_der(first.bundles["spiffe://trustd.local"]) == [up.ca.active.cert]
        partner = TestCA(
            TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1)
        )
        up.set_federated(partner.bundle())
        second = await call.read()
        assert set(second.bundles) == {"spiffe://trustd.local", "spiffe://partner.example"}
        up.rotate_ca()
        third = await call.read()
        assert len(split_der(third.bundles["spiffe://trustd.local"])) == 2
        call.cancel()


@run_async
async def test_federated_bundles_ride_along_with_svids(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path, federates_with=("partner.example",))
    partner = TestCA(TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1))
    up.set_federated(partner.bundle())
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = _svid_call(ch)
        resp = await call.read()
        assert set(resp.federated_bundles) == {"spiffe://partner.example"}
        call.cancel()


@run_async
async def test_federated_bundles_only_for_entries_that_federate_with_them(
    tmp_path: Path,
) -> None:
    up, clock, sock = _setup(tmp_path)  # our entry does not federate with partner.example
    partner = TestCA(TrustDomain.parse("partner.example"), clock=clock, ttl=dt.timedelta(days=1))
    up.set_federated(partner.bundle())
    async with running_agent(sock, up), agent_channel(sock) as ch:
        call = _svid_call(ch)
        resp = await call.read()
        assert dict(resp.federated_bundles) == {}
        call.cancel()
        bundles = _bundles_call(ch)
        first = await bundles.read()
        assert set(first.bundles) == {"spiffe://trustd.local"}
        bundles.cancel()


@run_async
async def test_removed_entry_ends_the_svid_stream(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    mine = next(e for e in up.entries.values() if str(e.spiffe_id) == MY_ID)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = _svid_call(ch)
        await call.read()
        assert metric(agent.metrics, "trustd_agent_workloadapi_streams") == 1
        up.remove_entry(mine.id)
        assert await read_error(call) == grpc.StatusCode.PERMISSION_DENIED
