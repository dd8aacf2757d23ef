"""Outbound listeners: ClientTLSPolicy (AUTO resolved), the destination's SPIFFE ID, drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dataplane_helpers import (
    CLIENT_ID,
    SERVER_ID,
    Harness,
    eventually,
    mesh,
    read_until_closed,
    run,
    server_proxy,
)
from dataplane_testing import ThrowawayCA

from trustd.dataplane import Proxy, StaticIdentitySource, StaticPolicySource, parse_config
from trustd.dataplane.identity import Identity
from trustd.dataplane.proxy import DenialEvent
from trustd.policy import PolicySet


class Pair:
    def __init__(
        self, h: Harness, client: Proxy, policy: StaticPolicySource, denials: list[DenialEvent]
    ):
        self.h = h
        self.client = client
        self.client_policy = policy
        self.client_denials = denials

    def set_policy(self, ps: PolicySet) -> None:
        self.h.server_policy.set(ps)
        self.client_policy.set(ps)

    def server_connections(self, mode: str) -> float:
        labels = {"listener": f"inbound:{self.h.server.inbound_port()}", "mode": mode}
        return self.h.server.metrics.value("trustd_proxy_connections_total", labels)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.client.outbound_address()
        return await asyncio.open_connection(host, port)

    async def refused(self, payload: bytes) -> bytes:
        """What the app gets back on a connection the client proxy refuses (b"": nothing).
        A native core may reset it before this loop has seen its connect complete."""
        try:
            r, w = await self.open()
        except ConnectionError:
            return b""
        w.write(payload)
        return await read_until_closed(r)


@asynccontextmanager
async def pair(
    server_ident: Identity, client_ident: Identity, policy: PolicySet, **kw: Any
) -> AsyncIterator[Pair]:
    async with server_proxy(server_ident, policy, **kw) as h:
        denials: list[DenialEvent] = []
        cps = StaticPolicySource(policy)
        cfg = parse_config(
            {
                "outbound": [
                    {
                        "listen": "127.0.0.1:0",
                        "destination": SERVER_ID,
                        "address": f"127.0.0.1:{h.server.inbound_port()}",
                    }
                ]
            }
        )
        client = Proxy(
            config=cfg,
            identity=StaticIdentitySource(client_ident),
            policy=cps,
            proxy_id="frontend-1",
            on_denial=denials.append,
        )
        await client.start()
        try:
            yield Pair(h, client, cps, denials)
        finally:
            await client.stop(grace=1)


async def roundtrip(p: Pair, data: bytes = b"hello") -> bytes:
    r, w = await p.open()
    w.write(data)
    got = await r.readexactly(len(data))
    w.close()
    return got


@run
async def test_auto_uses_mtls_when_the_server_accepts_it(ca: ThrowawayCA) -> None:
    async with pair(ca.identity(SERVER_ID), ca.identity(CLIENT_ID), mesh("PERMISSIVE")) as p:
        assert await roundtrip(p) == b"hello"
        assert p.server_connections("tls") == 1 and p.server_connections("plaintext") == 0


@run
async def test_auto_uses_plaintext_when_the_server_does_not(ca: ThrowawayCA) -> None:
    async with pair(ca.identity(SERVER_ID), ca.identity(CLIENT_ID), mesh("DISABLE")) as p:
        assert await roundtrip(p) == b"hello"
        assert p.server_connections("plaintext") == 1


@run
async def test_global_switch_uses_plaintext_only_where_the_server_accepts_it(
    ca: ThrowawayCA,
) -> None:
    async with pair(ca.identity(SERVER_ID), ca.identity(CLIENT_ID), mesh("PERMISSIVE")) as p:
        p.set_policy(mesh("PERMISSIVE").successor(client_tls_off_global=True))
        assert await roundtrip(p) == b"hello"
        assert p.server_connections("plaintext") == 1
        p.set_policy(mesh("STRICT").successor(client_tls_off_global=True).successor())
        assert await roundtrip(p) == b"hello"
        assert p.server_connections("tls") == 1


@run
async def test_a_server_with_another_spiffe_id_is_refused(ca: ThrowawayCA) -> None:
    impostor = ca.identity("spiffe://trustd.local/ns/shop/sa/impostor")
    async with pair(impostor, ca.identity(CLIENT_ID), mesh("STRICT")) as p:
        assert await p.refused(b"card number") == b""
        await eventually(lambda: bool(p.client_denials))
        [d] = p.client_denials
        assert d.reason == "server_identity_mismatch"
        assert d.peer_spiffe_id == "spiffe://trustd.local/ns/shop/sa/impostor"
        assert bytes(p.h.app.received) == b""


@run
async def test_a_server_from_an_untrusted_ca_is_refused(ca: ThrowawayCA) -> None:
    stranger = ThrowawayCA("trustd.local").identity(SERVER_ID)
    async with pair(stranger, ca.identity(CLIENT_ID), mesh("PERMISSIVE")) as p:
        assert await p.refused(b"x") == b""
        await eventually(lambda: bool(p.client_denials))
        assert p.client_denials[0].reason == "handshake_failed"


@run
async def test_a_tls_decision_change_applies_to_new_connections_and_open_ones_drain(
    ca: ThrowawayCA,
) -> None:
    async with pair(ca.identity(SERVER_ID), ca.identity(CLIENT_ID), mesh("PERMISSIVE")) as p:
        r1, w1 = await p.open()
        w1.write(b"one")
        assert await r1.readexactly(3) == b"one"
        assert p.server_connections("tls") == 1
        p.set_policy(mesh("DISABLE").successor())
        assert await roundtrip(p, b"two") == b"two"
        assert p.server_connections("plaintext") == 1
        w1.write(b"still mtls")  # the open mTLS connection was not cut
        assert await r1.readexactly(10) == b"still mtls"
        w1.close()
        assert p.client.acked_version == 2
