"""The SPIFFE bundle endpoint: this trust domain's bundle over HTTPS, for federated peers.

``GET`` on any path answers ``200`` with the SPIFFE bundle document
(``application/json``: the ``x509-svid`` and ``jwt-svid`` keys,
``spiffe_sequence`` and ``spiffe_refresh_hint``); anything else is ``405``.
The server authenticates with

- ``https_spiffe``: its own X.509-SVID, ``spiffe://TD/trustd/server``, renewed at
  half life (clients check that ID against our bundle);
- ``https_web``: a configured certificate chain and key (Web PKI).

A small HTTP/1.1 server on asyncio: one request per connection, bounded
request size and time, nothing else served.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import Awaitable, Callable

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from trustd import tlsutil
from trustd.bundle import Bundle
from trustd.errors import TrustdError

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT = 10.0

ServerSvid = tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey, dt.datetime]


class BundleEndpoint:
    def __init__(
        self,
        *,
        bundle: Callable[[], Awaitable[Bundle]],
        refresh_hint: dt.timedelta,
        svid: Callable[[], Awaitable[ServerSvid]] | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._bundle = bundle  # the own bundle, as it is now
        self._hint = int(refresh_hint.total_seconds())  # the spiffe_refresh_hint served
        self._svid = svid  # https_spiffe: our SVID; None: https_web with cert_file/key_file
        self._cert_file = cert_file
        self._key_file = key_file
        self._now = now
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server: asyncio.Server | None = None
        self._renew: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        if self._svid is not None:
            chain, key, not_after = await self._svid()
            tlsutil.load_identity(self._ctx, chain, key)
            self._renew = asyncio.create_task(self._renew_loop(not_after))
        else:
            assert self._cert_file and self._key_file
            self._ctx.load_cert_chain(self._cert_file, self._key_file)
        self._server = await asyncio.start_server(
            self._serve,
            host or "127.0.0.1",
            int(port),
            ssl=self._ctx,
            reuse_address=True,
            limit=MAX_REQUEST_BYTES,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("bundle endpoint listening", address=f"{host}:{self.port}")
        return self.port

    async def _renew_loop(self, not_after: dt.datetime) -> None:
        assert self._svid is not None
        while True:
            now = self._now()
            await asyncio.sleep(max(5.0, (not_after - now).total_seconds() / 2))
            try:
                chain, key, not_after = await self._svid()
                tlsutil.load_identity(self._ctx, chain, key)
                log.info("bundle endpoint svid renewed", not_after=not_after.isoformat())
            except TrustdError as exc:
                log.warning("bundle endpoint svid renewal failed; retrying", error=str(exc))
                not_after = now + dt.timedelta(seconds=20)

    async def document(self) -> bytes:
        bundle = await self._bundle()
        doc = bundle.to_spiffe_json()
        doc["spiffe_refresh_hint"] = self._hint
        return json.dumps(doc, indent=2).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method = head.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                await self._answer(writer, 405, b"only GET is served here\n", "text/plain")
                return
            try:
                body = await self.document()
            except TrustdError as exc:
                log.warning("bundle endpoint cannot serve the bundle", error=str(exc))
                await self._answer(writer, 503, b"bundle unavailable\n", "text/plain")
                return
            await self._answer(writer, 200, body, "application/json", head_only=method == b"HEAD")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except (OSError, ssl.SSLError) as exc:
            log.debug("bundle endpoint connection failed", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head_only: bool = False,
    ) -> None:
        reason = {200: "OK", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        if not head_only:
            writer.write(body)
        await writer.drain()

    async def stop(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
