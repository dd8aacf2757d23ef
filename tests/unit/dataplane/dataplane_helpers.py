"""Helpers for data-plane tests: real sockets on 127.0.0.1, no pytest-asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from dataplane_testing import IssuedSvid, RecordingApp

from trustd.dataplane import Proxy, StaticIdentitySource, StaticPolicySource, parse_config
from trustd.dataplane.identity import Identity
from trustd.dataplane.proxy import DenialEvent
from trustd.policy import PolicySet, load_text
from trustd.policy.effective import PolicyLayer

SERVER_ID = "spiffe://trustd.local/ns/shop/sa/backend"
CLIENT_ID = "spiffe://trustd.local/ns/shop/sa/frontend"


def run(coro_fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop, bounded in time."""

    @functools.wraps(coro_fn)  # keeps the signature, so pytest still injects fixtures
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60):
                await coro_fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


def mesh(mode: str, extra: str = "") -> PolicySet:
    text = (
        "apiVersion: trustd.io/v1alpha1\nkind: PeerAuthentication\n"
        f"metadata: {{name: mesh, namespace: trustd-system}}\nspec:\n  mtls: {{mode: {mode}}}\n---\n"
        + extra
    )
    return PolicySet(version=1, layer=PolicyLayer(objects=load_text(text)))


class Harness:
    """One server-side proxy in front of a recording app (and optionally a client proxy)."""

    def __init__(self) -> None:
        self.denials: list[DenialEvent] = []
        self.app: RecordingApp
        self.server: Proxy
        self.server_identity: StaticIdentitySource
        self.server_policy: StaticPolicySource


@asynccontextmanager
async def server_proxy(
    identity: Identity,
    policy: PolicySet,
    *,
    greeting: bytes | None = None,
    sniff: dict[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    h = Harness()
    h.app = await RecordingApp(greeting=greeting).start()
    cfg: dict[str, Any] = {
        "inbound": [{"port": 0, "app": h.app.address, "bind": "127.0.0.1"}],
        "reportInterval": "100ms",
        "handshakeTimeout": "5s",
    }
    if sniff:
        cfg["sniff"] = sniff
    h.server_identity = StaticIdentitySource(identity)
    h.server_policy = StaticPolicySource(policy)
    h.server = Proxy(
        config=parse_config(cfg),
        identity=h.server_identity,
        policy=h.server_policy,
        proxy_id="backend-1",
        on_denial=h.denials.append,
    )
    await h.server.start()
    try:
        yield h
    finally:
        await h.server.stop(grace=1)
        await h.app.stop()


def client_ssl_context(
    svid: IssuedSvid, tmp: Path, *, trust: bytes | None = None, tls12: bool = False
) -> ssl.SSLContext:
    """A stock Python TLS client presenting ``svid`` (the server is not verified unless ``trust``)."""
    cert, key = svid.write(tmp, name=f"client-{svid.cert.serial_number}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if trust is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=trust.decode())
    ctx.load_cert_chain(cert, key)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def read_until_closed(reader: asyncio.StreamReader, limit: float = 5.0) -> bytes:
    """Everything until EOF or reset (a refused connection ends one way or the other)."""
    out = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                out += chunk
    except (ConnectionError, OSError):
        pass
    return out


def half_close(w: asyncio.StreamWriter) -> None:
    """Send FIN; the proxy may already have reset a connection it refused (a native core
    decides while the client is still writing), which refuses it just the same."""
    with contextlib.suppress(OSError):
        w.write_eof()


async def eventually(check: Callable[[], bool], *, limit: float = 5.0) -> None:
    """Wait for a condition the proxy reaches asynchronously (no fixed sleeps)."""
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.01)
