"""The JWT-SVID profile of the Workload API, with a grpcio client and a fake upstream whose
JWT keys are a real ``JwtKeyring`` (memory key manager, fake clock)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_fakes import (
    FakeUpstream,
    agent_channel,
    read_error,
    run_async,
    running_agent,
    wait_until,
)
from google.protobuf import json_format
from spiffe._proto import workload_pb2

from trustd.agent.upstream import BundleUpdate, JwtSvidRequest, SignedJwtSvid
from trustd.ca.jwt import JwtKeyring
from trustd.ca.kms.memory import MemoryKeyManager
from trustd.clock import FakeClock
from trustd.errors import PermissionDeniedError, UnavailableError
from trustd.spiffeid import TrustDomain
from trustd.store.sqlite import SqliteStore

ME = f"unix:uid:{os.getuid()}"
MY_ID = "spiffe://trustd.local/ns/demo/sa/me"
MY_SECOND_ID = "spiffe://trustd.local/ns/demo/sa/me-too"
OTHER_ID = "spiffe://trustd.local/ns/other/sa/secret"
HEADER = (("workload.spiffe.io", "true"),)
TD_ID = "spiffe://trustd.local"


class JwtFakeUpstream(FakeUpstream):
    """The fake server, with JWT keys that rotate when told and sign JWT-SVIDs."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.jwt_keys = _ring(clock)
        self.jwt_calls: list[tuple[str, tuple[str, ...]]] = []
        self.rogue: JwtKeyring | None = None  # signs instead, with a key not in the bundle

    def bundle_update(self) -> BundleUpdate:
        update = super().bundle_update()
        own, *rest = update.bundles
        return replace(
            update, bundles=(replace(own, jwt_authorities=self.jwt_keys.authorities()), *rest)
        )

    def prepare_next_jwt_key(self, clock: FakeClock) -> None:
        """Move the clock to the active key's half life: the next key is published."""
        active = self.jwt_keys.active()
        clock.set(active.not_before + (active.not_after - active.not_before) / 2)
        assert self.jwt_keys.rotate(lambda event, rec: None) == "prepared"
        self._push_bundles()

    async def sign_jwt_svid(self, request: JwtSvidRequest) -> SignedJwtSvid:
        self.jwt_calls.append((request.entry_id, request.audience))
        if not self.available:
            raise UnavailableError("server is down")
        entry = self.entries.get(request.entry_id)
        if entry is None:
            raise PermissionDeniedError(f"entry {request.entry_id} is not served by this agent")
        keys = self.rogue or self.jwt_keys
        svid = keys.sign(
            spiffe_id=entry.spiffe_id, audience=request.audience, ttl=dt.timedelta(minutes=5)
        )
        return SignedJwtSvid(
            entry_id=request.entry_id,
            token=svid.token,
            issued_at=svid.issued_at,
            expires_at=svid.expires_at,
        )


def _ring(clock: FakeClock) -> JwtKeyring:
    ring = JwtKeyring(
        store=SqliteStore(":memory:"),
        key_manager=MemoryKeyManager(),
        trust_domain=TrustDomain.parse("trustd.local"),
        clock=clock,
    )
    ring.ensure_active(lambda event, rec: None)
    return ring


def _setup(tmp_path: Path) -> tuple[JwtFakeUpstream, FakeClock, Path]:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = JwtFakeUpstream(clock=clock)
    up.add_entry(MY_ID, [ME], created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    return up, clock, tmp_path / "agent.sock"


async def _fetch(
    ch: grpc.aio.Channel,
    audience: Sequence[str] = ("backend",),
    spiffe_id: str = "",
    metadata: Any = HEADER,
) -> workload_pb2.JWTSVIDResponse:
    call = ch.unary_unary(
        "/SpiffeWorkloadAPI/FetchJWTSVID",
        request_serializer=workload_pb2.JWTSVIDRequest.SerializeToString,
        response_deserializer=workload_pb2.JWTSVIDResponse.FromString,
    )
    resp: workload_pb2.JWTSVIDResponse = await call(
        workload_pb2.JWTSVIDRequest(audience=list(audience), spiffe_id=spiffe_id),
        metadata=metadata,
    )
    return resp


async def _validate(
    ch: grpc.aio.Channel, token: str, audience: str, metadata: Any = HEADER
) -> workload_pb2.ValidateJWTSVIDResponse:
    call = ch.unary_unary(
        "/SpiffeWorkloadAPI/ValidateJWTSVID",
        request_serializer=workload_pb2.ValidateJWTSVIDRequest.SerializeToString,
        response_deserializer=workload_pb2.ValidateJWTSVIDResponse.FromString,
    )
    resp: workload_pb2.ValidateJWTSVIDResponse = await call(
        workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=metadata
    )
    return resp


def _bundles_call(ch: grpc.aio.Channel, metadata: Any = HEADER) -> Any:
    return ch.unary_stream(
        "/SpiffeWorkloadAPI/FetchJWTBundles",
        request_serializer=workload_pb2.JWTBundlesRequest.SerializeToString,
        response_deserializer=workload_pb2.JWTBundlesResponse.FromString,
    )(workload_pb2.JWTBundlesRequest(), metadata=metadata)


async def _code(coro: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    code: grpc.StatusCode = err.value.code()
    return code


def _claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return tuple(json.loads(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))) for x in (h, p))


def _kids(jwks: bytes) -> set[str]:
    doc = json.loads(jwks)
    assert all(k["use"] == "jwt-svid" for k in doc["keys"])
    return {k["kid"] for k in doc["keys"]}


# ---------------------------------------------------------------------- the security header


@run_async
async def test_jwt_calls_without_the_security_header_are_invalid_argument(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await _code(_fetch(ch, metadata=None)) == grpc.StatusCode.INVALID_ARGUMENT
        wrong = (("workload.spiffe.io", "false"),)
        assert await _code(_fetch(ch, metadata=wrong)) == grpc.StatusCode.INVALID_ARGUMENT
        assert await _code(_validate(ch, "x.y.z", "a", metadata=None)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert await read_error(_bundles_call(ch, metadata=None)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert up.jwt_calls == []


# ---------------------------------------------------------------------- FetchJWTSVID


@run_async
async def test_fetch_jwt_svid_without_audience_is_invalid_argument(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await _code(_fetch(ch, audience=())) == grpc.StatusCode.INVALID_ARGUMENT
        assert await _code(_fetch(ch, audience=[""])) == grpc.StatusCode.INVALID_ARGUMENT
        assert up.jwt_calls == []


@run_async
async def test_fetch_jwt_svid_is_for_the_attested_caller(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        resp = await _fetch(ch, audience=["backend"])
        [svid] = resp.svids
        assert svid.spiffe_id == MY_ID
        header, claims = _claims(svid.svid)
        assert header == {"alg": "ES256", "kid": up.jwt_keys.active().key_id, "typ": "JWT"}
        assert claims["sub"] == MY_ID and claims["aud"] == "backend"
        assert claims["exp"] - claims["iat"] == 300
        assert claims["iat"] == int(clock.now().timestamp())


@run_async
async def test_fetch_jwt_svid_gives_one_per_identity_default_first(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    up.add_entry(MY_SECOND_ID, [ME])
    async with running_agent(sock, up), agent_channel(sock) as ch:
        resp = await _fetch(ch)
        assert [s.spiffe_id for s in resp.svids] == [MY_ID, MY_SECOND_ID]
        assert [_claims(s.svid)[1]["sub"] for s in resp.svids] == [MY_ID, MY_SECOND_ID]
        only = await _fetch(ch, spiffe_id=MY_SECOND_ID)
        assert [s.spiffe_id for s in only.svids] == [MY_SECOND_ID]


@run_async
async def test_fetch_jwt_svid_for_an_identity_not_ones_own_is_permission_denied(
    tmp_path: Path,
) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await _code(_fetch(ch, spiffe_id=OTHER_ID)) == grpc.StatusCode.PERMISSION_DENIED
        assert await _code(_fetch(ch, spiffe_id="spiffe://trustd.local/ns/../x")) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert up.jwt_calls == []


@run_async
async def test_fetch_jwt_svid_without_identity_is_permission_denied(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = JwtFakeUpstream(clock=clock)
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    sock = tmp_path / "agent.sock"
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await _code(_fetch(ch)) == grpc.StatusCode.PERMISSION_DENIED


@run_async
async def test_jwt_svid_is_held_per_audience_set_until_half_life(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        first = (await _fetch(ch, audience=["a", "b"])).svids[0].svid
        again = (await _fetch(ch, audience=["b", "a"])).svids[0].svid
        assert again == first and len(up.jwt_calls) == 1  # the same set, in any order
        other = (await _fetch(ch, audience=["a"])).svids[0].svid
        assert other != first and len(up.jwt_calls) == 2
        clock.advance(dt.timedelta(seconds=149))
        assert (await _fetch(ch, audience=["a", "b"])).svids[0].svid == first
        clock.advance(dt.timedelta(seconds=1))  # half of 5 minutes
        renewed = (await _fetch(ch, audience=["a", "b"])).svids[0].svid
        assert renewed != first and len(up.jwt_calls) == 3


@run_async
async def test_concurrent_fetches_share_one_signing(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        answers = await asyncio.gather(*(_fetch(ch) for _ in range(8)))
        assert len({a.svids[0].svid for a in answers}) == 1
        assert len(up.jwt_calls) == 1


@run_async
async def test_a_token_that_does_not_validate_is_never_served(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    up.rogue = _ring(clock)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await _code(_fetch(ch)) == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_server_down_is_unavailable(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        up.go_down()
        assert await _code(_fetch(ch)) == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_a_held_token_is_served_while_the_server_is_down(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        first = (await _fetch(ch)).svids[0].svid
        up.go_down()
        clock.advance(dt.timedelta(minutes=4))  # past half life, 1 minute left
        assert (await _fetch(ch)).svids[0].svid == first
        assert len(up.jwt_calls) == 2  # it did try
        clock.advance(dt.timedelta(seconds=31))  # less than 30 seconds left: not any more
        assert await _code(_fetch(ch)) == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_held_tokens_of_a_key_that_left_the_bundle_are_dropped(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        first = (await _fetch(ch)).svids[0].svid
        old_kid = _claims(first)[0]["kid"]
        up.jwt_keys = _ring(clock)  # the server's keys replaced at once (no time passes)
        up._push_bundles()

        def old_key_gone() -> bool:
            own = agent.cache.own_bundle
            return own is not None and old_kid not in {a.key_id for a in own.jwt_authorities}

        await wait_until(old_key_gone, what="the old jwt key to leave the agent's bundle")
        newer = (await _fetch(ch)).svids[0].svid
        assert _claims(newer)[0]["kid"] == up.jwt_keys.active().key_id != old_kid


# ---------------------------------------------------------------------- FetchJWTBundles


@run_async
async def test_fetch_jwt_bundles_streams_the_jwks_and_pushes_on_rotation(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up) as agent, agent_channel(sock) as ch:
        call = _bundles_call(ch)
        first = await call.read()
        assert set(first.bundles) == {TD_ID}
        [kid] = _kids(first.bundles[TD_ID])
        assert kid == up.jwt_keys.active().key_id
        up.rotate_ca()  # an X.509-only change: nothing new for JWT validators
        await wait_until(
            lambda: len(agent.cache.bundles[up.trust_domain].x509_authorities) == 2,
            what="the agent to hold the new CA",
        )
        await asyncio.sleep(0.05)  # the stream has looked at it
        up.prepare_next_jwt_key(clock)
        second = await call.read()
        assert _kids(second.bundles[TD_ID]) == {kid, up.jwt_keys.records()[-1].key_id}
        assert len(_kids(second.bundles[TD_ID])) == 2
        call.cancel()


@run_async
async def test_fetch_jwt_bundles_without_identity_is_permission_denied(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = JwtFakeUpstream(clock=clock)
    up.add_entry(OTHER_ID, ["unix:uid:4242"])
    sock = tmp_path / "agent.sock"
    async with running_agent(sock, up), agent_channel(sock) as ch:
        assert await read_error(_bundles_call(ch)) == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------------- ValidateJWTSVID


@run_async
async def test_validate_jwt_svid_gives_the_spiffe_id_and_claims(tmp_path: Path) -> None:
    up, _, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        token = (await _fetch(ch, audience=["backend"])).svids[0].svid
        resp = await _validate(ch, token, "backend")
        assert resp.spiffe_id == MY_ID
        claims = json_format.MessageToDict(resp.claims)
        assert claims["sub"] == MY_ID and claims["aud"] == "backend"
        assert claims["exp"] == _claims(token)[1]["exp"]
        assert set(claims) == {"sub", "aud", "exp", "iat", "jti"}


@run_async
async def test_validate_jwt_svid_refusals_are_invalid_argument(tmp_path: Path) -> None:
    up, clock, sock = _setup(tmp_path)
    async with running_agent(sock, up), agent_channel(sock) as ch:
        token = (await _fetch(ch, audience=["backend"])).svids[0].svid
        for bad_token, audience in [
            (token, "frontend"),  # wrong audience
            (token, ""),  # no audience
            ("", "backend"),  # no token
            ("garbage", "backend"),  # malformed
            (token[:-4] + "AAAA", "backend"),  # bad signature
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _validate(ch, bad_token, audience)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad_token, audience)
            assert token not in (err.value.details() or "")
        clock.advance(dt.timedelta(minutes=10))  # expired
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _validate(ch, token, "backend")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expired" in (err.value.details() or "")
