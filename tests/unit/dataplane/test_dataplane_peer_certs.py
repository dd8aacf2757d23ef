"""Bad client certificates over a real handshake: refused, counted, and nothing reaches the app."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from dataplane_helpers import SERVER_ID, eventually, mesh, read_until_closed, run, server_proxy
from dataplane_testing import ThrowawayCA

from trustd.dataplane.identity import Identity
from trustd.spiffeid import TrustDomain

DATA = Path(__file__).resolve().parents[2] / "data" / "dataplane"


def server_identity(ca: ThrowawayCA, *, trust_evil: bool = False) -> Identity:
    """Our SVID from a runtime CA, trusting the fixtures' CA for trustd.local."""
    svid = ca.issue(SERVER_ID)
    bundles = {TrustDomain.parse("trustd.local"): (DATA / "ca.pem").read_bytes()}
    if trust_evil:
        bundles[TrustDomain.parse("evil.example")] = (DATA / "other-td-ca.pem").read_bytes()
    return Identity.from_pem(
        cert_chain_pem=svid.chain_pem, private_key_pem=svid.key_pem, bundles_pem=bundles
    )


def client_with(fixture: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(DATA / f"{fixture}.pem", DATA / f"{fixture}.key")
    return ctx


async def attempt(port: int, fixture: str) -> bytes:
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_with(fixture))
    except (ssl.SSLError, ConnectionError):
        return b""  # refused inside the handshake
    try:
        w.write(b"secret request")
        await w.drain()
    except (ssl.SSLError, ConnectionError):
        return b""
    return await read_until_closed(r)


@pytest.mark.parametrize(
    ("fixture", "reasons"),
    [
        ("ca-leaf", {"ca_leaf"}),  # OpenSSL accepts a CA leaf; the SVID check does not
        ("two-uri-sans", {"uri_san_count"}),
        ("dns-spiffe-san", {"spiffe_shaped_san"}),
        ("dns-spiffe-san-and-uri", {"spiffe_shaped_san"}),
        ("expired", {"handshake_failed"}),  # OpenSSL refuses it first
        ("untrusted-td", {"handshake_failed"}),
        ("foreign-id", {"untrusted_trust_domain"}),
        ("server-only-eku", {"handshake_failed"}),  # OpenSSL's purpose check refuses it first
    ],
)
def test_bad_client_certificate_is_refused_with_nothing_forwarded(
    ca: ThrowawayCA, fixture: str, reasons: set[str]
) -> None:
    @run
    async def body() -> None:
        async with server_proxy(server_identity(ca), mesh("STRICT")) as h:
            answer = await attempt(h.server.inbound_port(), fixture)
            await eventually(lambda: bool(h.denials))
            assert answer == b""
            assert h.app.connections == 0 and bytes(h.app.received) == b""
            [d] = h.denials
            assert d.reason in reasons, d

    body()


def test_a_ca_of_one_trust_domain_cannot_vouch_for_another_over_tls(ca: ThrowawayCA) -> None:
    @run
    async def body() -> None:
        async with server_proxy(server_identity(ca, trust_evil=True), mesh("STRICT")) as h:
            assert await attempt(h.server.inbound_port(), "foreign-id") == b""
            await eventually(lambda: bool(h.denials))
            assert [d.reason for d in h.denials] == ["wrong_trust_domain_anchor"]
            assert h.app.connections == 0

    body()


def test_the_good_fixture_is_accepted(ca: ThrowawayCA) -> None:
    @run
    async def body() -> None:
        async with server_proxy(server_identity(ca), mesh("STRICT")) as h:
            r, w = await asyncio.open_connection(
                "127.0.0.1", h.server.inbound_port(), ssl=client_with("good")
            )
            w.write(b"hello")
            assert await r.readexactly(5) == b"hello"
            w.close()
            assert not h.denials

    body()
