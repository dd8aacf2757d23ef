"""Reloads: new SVIDs, bundles and policies apply to new connections; open ones carry on.
And TLS session resumption never skips validation."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from dataplane_helpers import (
    CLIENT_ID,
    SERVER_ID,
    client_ssl_context,
    eventually,
    mesh,
    read_until_closed,
    run,
    server_proxy,
)
from dataplane_testing import ThrowawayCA


async def open_tls(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return r, w, x509.load_der_x509_certificate(der).serial_number


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await r.readexactly(len(data))


@run
async def test_a_new_svid_is_used_for_new_connections_and_old_ones_stay(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
        port = h.server.inbound_port()
        ctx = client_ssl_context(ca.issue(CLIENT_ID), tmp_path, trust=ca.bundle_pem)
        r1, w1, serial1 = await open_tls(port, ctx)
        assert await echo(r1, w1, b"before") == b"before"
        h.server_identity.set(ca.identity(SERVER_ID))  # rotation
        r2, w2, serial2 = await open_tls(port, ctx)
        assert serial2 != serial1
        assert await echo(r2, w2, b"new") == b"new"
        assert await echo(r1, w1, b"old still works") == b"old still works"
        assert h.server.metrics.value("trustd_proxy_tls_contexts_built_total") == 2
        w1.close()
        w2.close()


@run
async def test_a_new_bundle_refuses_old_clients_on_new_connections_only(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    ca2 = ThrowawayCA("trustd.local")
    async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
        port = h.server.inbound_port()
        old_client = client_ssl_context(ca.issue(CLIENT_ID), tmp_path)
        r1, w1, _ = await open_tls(port, old_client)
        assert await echo(r1, w1, b"a") == b"a"
        h.server_identity.set(ca2.identity(SERVER_ID))  # the trust domain moved to a new root
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", port, ssl=old_client)
            w2.write(b"x")
            assert await read_until_closed(r2) == b""
        except (ssl.SSLError, ConnectionError):
            pass
        await eventually(lambda: bool(h.denials))
        assert h.denials[-1].reason == "handshake_failed"
        assert await echo(r1, w1, b"open connection kept") == b"open connection kept"
        new_client = client_ssl_context(ca2.issue(CLIENT_ID), tmp_path)
        r3, w3, _ = await open_tls(port, new_client)
        assert await echo(r3, w3, b"b") == b"b"
        for w in (w1, w3):
            w.close()


def _connect(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, session=session) as s,
    ):
        s.sendall(b"x")
        assert s.recv(1) == b"x"  # tickets, if any, have arrived by now
        session, reused = s.session, bool(s.session_reused)
        s.unwrap()  # a clean close_notify: OpenSSL keeps a cleanly closed session resumable
        return session, reused


ALLOW_SOMEONE_ELSE = (
    "apiVersion: trustd.io/v1alpha1\nkind: AuthorizationPolicy\n"
    "metadata: {name: only-admin, namespace: shop}\n"
    "spec:\n  rules:\n  - from: [{principals: ['spiffe://trustd.local/ns/shop/sa/admin']}]\n---\n"
)


@pytest.mark.parametrize("tls12", [True, False], ids=["tls1.2", "tls1.3"])
def test_a_resumed_session_is_decided_like_a_full_handshake(
    ca: ThrowawayCA, tmp_path: Path, tls12: bool, proxy_core: str
) -> None:
    """The Python core never resumes. The native core resumes from the session cache of the
    context (the bundle) that verified the peer, and decides every resumed session again:
    here a policy that no longer allows the peer refuses its resumed session."""

    @run
    async def body() -> None:
        async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
            port = h.server.inbound_port()
            ctx = client_ssl_context(ca.issue(CLIENT_ID), tmp_path, tls12=tls12)
            session, reused = await asyncio.to_thread(_connect, port, ctx, None)
            assert not reused
            session2, reused = await asyncio.to_thread(_connect, port, ctx, session)
            if proxy_core == "python":
                assert session is None or not session.has_ticket
                assert not reused  # a full handshake, so the chain was verified again
            else:
                assert reused
            h.server_policy.set(mesh("STRICT", ALLOW_SOMEONE_ELSE).successor())
            with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
                await asyncio.to_thread(_connect, port, ctx, session2 or session)
            await eventually(lambda: bool(h.denials))
            assert h.denials[-1].reason == "unauthorized"
            assert h.denials[-1].peer_spiffe_id == CLIENT_ID

    body()


def test_an_offered_session_does_not_bypass_a_new_bundle(ca: ThrowawayCA, tmp_path: Path) -> None:
    @run
    async def body() -> None:
        ca2 = ThrowawayCA("trustd.local")
        async with server_proxy(ca.identity(SERVER_ID), mesh("STRICT")) as h:
            port = h.server.inbound_port()
            ctx = client_ssl_context(ca.issue(CLIENT_ID), tmp_path, tls12=True)
            session, _ = await asyncio.to_thread(_connect, port, ctx, None)
            h.server_identity.set(ca2.identity(SERVER_ID))
            with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
                await asyncio.to_thread(_connect, port, ctx, session)
            await eventually(lambda: bool(h.denials))
            assert h.denials[-1].reason == "handshake_failed"

    body()
