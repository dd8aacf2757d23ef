"""Inbound listeners on real sockets: modes, sniffing, refusals, and nothing leaking to the app."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

from dataplane_helpers import (
    CLIENT_ID,
    SERVER_ID,
    client_ssl_context,
    eventually,
    half_close,
    mesh,
    read_until_closed,
    run,
    server_proxy,
)
from dataplane_testing import ThrowawayCA

from trustd.dataplane.tls import client_context

ALLOW_FRONTEND_ONLY = (
    "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
    "metadata: {name: only-frontend, namespace: shop}\n"
    f"spec:\n  rules:\n  - from: [{{principals: ['{CLIENT_ID}']}}]\n---\n"
)


async def tls_echo(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping") -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    w.write(payload)
    await w.drain()
    got = await r.readexactly(len(payload))
    w.close()
    return got


# -- STRICT -------------------------------------------------------------------------


@run
async def test_strict_closes_a_plaintext_client_and_forwards_nothing(ca: ThrowawayCA) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        w.write(b"GET /secret HTTP/1.1\r\nHost: backend\r\n\r\n")
        await w.drain()
        assert await read_until_closed(r) == b""
        await eventually(lambda: bool(h.denials))
        assert h.app.connections == 0 and bytes(h.app.received) == b""
        [d] = h.denials
        assert d.reason == "plaintext_in_strict" and d.local_spiffe_id == SERVER_ID
        labels = {"listener": f"inbound:{h.server.inbound_port()}", "reason": "plaintext_in_strict"}
        assert h.server.metrics.value("trustd_proxy_denials_total", labels) == 1


@run
async def test_strict_closes_a_silent_server_first_client(ca: ThrowawayCA) -> None:
    async with server_proxy(
        ca.identity(SERVER_ID),
        mesh("STRICT"),
        greeting=b"220 hello\r\n",
        sniff={"timeout": "200ms"},
    ) as h:
        r, _ = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        assert await read_until_closed(r) == b""  # no greeting: the app was never reached
        assert h.app.connections == 0
        assert [d.reason for d in h.denials] == ["silent_in_strict"]


@run
async def test_strict_accepts_mtls(ca: ThrowawayCA, tmp_path: Path) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
        ctx = client_ssl_context(ca.issue(CLIENT_ID), tmp_path, trust=ca.bundle_pem)
        assert await tls_echo(h.server.inbound_port(), ctx) == b"ping"
        assert bytes(h.app.received) == b"ping" and not h.denials


# -- PERMISSIVE ---------------------------------------------------------------------


@run
async def test_permissive_takes_tls_and_plaintext_on_one_port(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("PERMISSIVE")) as h:
        port = h.server.inbound_port()
        ctx = client_ssl_context(ca.issue(CLIENT_ID), tmp_path)
        assert await tls_echo(port, ctx, b"over tls") == b"over tls"
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"plain")
        assert await r.readexactly(5) == b"plain"
        w.close()
        listener = f"inbound:{port}"
        m = h.server.metrics
        assert m.value("trustd_proxy_connections_total", {"listener": listener, "mode": "tls"}) == 1
        assert (
            m.value("trustd_proxy_connections_total", {"listener": listener, "mode": "plaintext"})
            == 1
        )


@run
async def test_client_hello_in_one_byte_segments_is_recognised(ca: ThrowawayCA) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("PERMISSIVE")) as h:
        ident = ca.identity(CLIENT_ID)
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        sock = w.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(ident).wrap_bio(incoming, outgoing, server_side=False)
        first_flight = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                if first_flight:  # the ClientHello, one byte per segment
                    for i in range(len(data)):
                        w.write(data[i : i + 1])
                        await w.drain()
                        await asyncio.sleep(0.001)
                    first_flight = False
                else:
                    w.write(data)
                    await w.drain()
                incoming.write(await r.read(65536))
        w.write(outgoing.read())
        tls.write(b"hello in pieces")
        w.write(outgoing.read())
        await w.drain()
        got = b""
        while len(got) < 15:
            incoming.write(await r.read(65536))
            try:
                got += tls.read(100)
            except ssl.SSLWantReadError:
                continue
        assert got == b"hello in pieces"
        w.close()
        port = h.server.inbound_port()
        labels = {"listener": f"inbound:{port}", "mode": "tls"}
        assert h.server.metrics.value("trustd_proxy_connections_total", labels) == 1


@run
async def test_permissive_falls_back_to_plaintext_for_server_first_protocols(
    ca: ThrowawayCA,
) -> None:
    async with server_proxy(
        ca.identity(SERVER_ID),
        mesh("PERMISSIVE"),
        greeting=b"220 mysql-ish\r\n",
        sniff={"timeout": "200ms"},
    ) as h:
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        assert await r.readexactly(15) == b"220 mysql-ish\r\n"
        w.write(b"QUIT\r\n")
        assert await r.readexactly(6) == b"QUIT\r\n"
        w.close()
        assert h.app.connections == 1 and not h.denials


@run
async def test_sniff_cap_refuses_connections_beyond_it(ca: ThrowawayCA) -> None:
    async with server_proxy(
        ca.identity(SERVER_ID), mesh("PERMISSIVE"), sniff={"timeout": "30s", "maxPending": 2}
    ) as h:
        port = h.server.inbound_port()
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await eventually(lambda: h.server.metrics.value("trustd_proxy_sniffing_connections") == 2)
        try:  # a native core may reset it before the client has seen its connect complete
            r, _ = await asyncio.open_connection("127.0.0.1", port)
            assert await read_until_closed(r) == b""
        except ConnectionError:
            pass
        await eventually(lambda: bool(h.denials))
        assert [d.reason for d in h.denials] == ["sniff_overload"]
        for _, w in held:
            w.close()
        await eventually(lambda: h.server.metrics.value("trustd_proxy_sniffing_connections") == 0)
        r, w = await asyncio.open_connection("127.0.0.1", port)  # a slot is free again
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()


@run
async def test_a_stalled_partial_record_header_is_closed(ca: ThrowawayCA) -> None:
    async with server_proxy(
        ca.identity(SERVER_ID), mesh("PERMISSIVE"), sniff={"timeout": "200ms"}
    ) as h:
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        w.write(b"\x16")  # slowloris: one byte of a TLS header, then nothing
        await w.drain()
        assert await read_until_closed(r) == b""
        assert [d.reason for d in h.denials] == ["sniff_stalled"]
        assert h.app.connections == 0


# -- data that arrives before (or instead of) a handshake ---------------------------


@run
async def test_bytes_after_a_tls_header_then_fin_never_reach_the_app(ca: ThrowawayCA) -> None:
    # CVE-2023-40217 shape: a peer sends data and FIN before any handshake completes.
    for mode in ("STRICT", "PERMISSIVE"):
        async with server_proxy(ca.identity(SERVER_ID), mesh(mode)) as h:
            r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
            w.write(b"\x16\x03\x01GET /admin HTTP/1.1\r\n\r\n")
            half_close(w)
            answer = await read_until_closed(r)
            assert answer == b"" or answer[0] == 0x15  # nothing, or a TLS alert record
            await eventually(lambda: bool(h.denials))
            assert h.app.connections == 0 and bytes(h.app.received) == b""
            assert h.denials[0].reason == "handshake_failed"


@run
async def test_a_client_hello_followed_by_data_and_fin_never_reaches_the_app(
    ca: ThrowawayCA,
) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
        ident = ca.identity(CLIENT_ID)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(ident).wrap_bio(incoming, outgoing, server_side=False)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        w.write(outgoing.read() + b"GET /admin HTTP/1.1\r\n\r\n")
        half_close(w)
        await read_until_closed(r)
        await eventually(lambda: bool(h.denials))
        assert h.app.connections == 0 and bytes(h.app.received) == b""
        assert h.denials[0].reason == "handshake_failed"


@run
async def test_plaintext_in_permissive_is_never_authenticated(ca: ThrowawayCA) -> None:
    policy = mesh("PERMISSIVE", ALLOW_FRONTEND_ONLY)
    async with server_proxy(ca.identity(SERVER_ID), policy) as h:
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        w.write(b"I am " + CLIENT_ID.encode())
        half_close(w)
        assert await read_until_closed(r) == b""
        await eventually(lambda: bool(h.denials))
        assert h.app.connections == 0
        [d] = h.denials
        assert d.reason == "unauthorized" and d.peer_spiffe_id is None
        assert "a plaintext peer" in d.detail


# -- DISABLE ------------------------------------------------------------------------


@run
async def test_disable_passes_plaintext_at_once(ca: ThrowawayCA) -> None:
    async with server_proxy(
        ca.identity(SERVER_ID), mesh("DISABLE"), greeting=b"hi\n", sniff={"timeout": "30s"}
    ) as h:
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        assert await r.readexactly(3) == b"hi\n"  # no sniffing delay for a server-first app
        w.write(b"data")
        assert await r.readexactly(4) == b"data"
        w.close()


# -- authorization ------------------------------------------------------------------


@run
async def test_authorization_refuses_a_peer_the_policy_does_not_allow(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT", ALLOW_FRONTEND_ONLY)) as h:
        port = h.server.inbound_port()
        intruder = client_ssl_context(
            ca.issue("spiffe://trustd.local/ns/shop/sa/intruder"), tmp_path
        )
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=intruder)
        w.write(b"let me in")
        assert await read_until_closed(r) == b""
        await eventually(lambda: bool(h.denials))
        [d] = h.denials
        assert d.reason == "unauthorized"
        assert d.peer_spiffe_id == "spiffe://trustd.local/ns/shop/sa/intruder"
        assert h.app.connections == 0
        friend = client_ssl_context(ca.issue(CLIENT_ID), tmp_path)
        assert await tls_echo(port, friend) == b"ping"


# -- status for the control plane ---------------------------------------------------


@run
async def test_open_plaintext_connections_are_counted_for_the_rollout(ca: ThrowawayCA) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("PERMISSIVE")) as h:
        r, w = await asyncio.open_connection("127.0.0.1", h.server.inbound_port())
        w.write(b"x")
        await r.readexactly(1)
        st = h.server.status()
        assert st is not None and st.inbound[0].plaintext_active == 1
        labels = {"listener": f"inbound:{h.server.inbound_port()}", "mode": "plaintext"}
        assert h.server.metrics.value("trustd_proxy_active_connections", labels) == 1
        w.close()
        await eventually(
            lambda: h.server.metrics.value("trustd_proxy_active_connections", labels) == 0
        )
        st = h.server.status()
        assert st is not None
        assert st.inbound[0].plaintext_active == 0 and st.inbound[0].plaintext_total == 1
        assert st.inbound[0].last_plaintext_at is not None
        await eventually(
            lambda: any(r.inbound and r.inbound[0].plaintext_total for r in h.server_policy.reports)
        )


@run
async def test_a_new_policy_is_acknowledged_and_applies_to_new_connections(ca: ThrowawayCA) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("PERMISSIVE")) as h:
        port = h.server.inbound_port()
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"a")
        assert await r1.readexactly(1) == b"a"
        strict = mesh("STRICT").successor()
        h.server_policy.set(strict)
        assert (
            h.server_policy.acks[-1] == strict.version and h.server.acked_version == strict.version
        )
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"b")
        assert await read_until_closed(r2) == b""  # new connection: STRICT
        w1.write(b"still here")  # the open plaintext connection is not dropped
        assert await r1.readexactly(10) == b"still here"
        w1.close()
