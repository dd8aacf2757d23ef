"""The pure-Python data-plane core: TLS record handling and the byte pump per connection.

Two cores run ``trustd proxy`` (``core: auto | native | python``, or
``TRUSTD_PROXY_CORE``). The native core (:mod:`trustd.dataplane.native`, C on
OpenSSL) takes whole listeners: it accepts, sniffs, handshakes, authorizes and
pumps in its own threads, and :class:`trustd.dataplane.proxy.Proxy` hands it
the listening sockets and a generation of settings per listener. This module
is the fallback, under asyncio: the proxy's per-connection handlers talk to
:class:`Core` only, and :class:`PythonCore` implements it.

:class:`PythonCore` runs TLS on ``ssl.SSLObject`` with memory BIOs over
asyncio streams. That gives it the bytes a sniffer already read (they are fed
to OpenSSL first) and makes the CVE-2023-40217 shape impossible: every byte
from the network goes through OpenSSL, and application data is only read
after ``do_handshake`` has returned, so bytes a peer sent before or instead of
a handshake are never handed out as authenticated data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

CHUNK = 64 * 1024  # bytes read from a socket at a time
_ENCODING_DER: int = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]


class Stream(Protocol):
    """A byte stream, plaintext or TLS, as the pump sees it."""

    async def recv(self) -> bytes:
        """Up to one chunk of data; b"" at end of stream."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def send_eof(self) -> None:
        """Half-close: nothing more will be sent (TLS: close_notify, then FIN)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (RST), without flushing."""
        ...

    async def aclose(self) -> None:
        """Close gracefully and release the socket."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsInfo:
    peer_certificate_der: bytes | None  # the peer's leaf, DER
    verified_chain_der: tuple[bytes, ...]  # leaf to trust anchor, as OpenSSL built it
    version: str  # "TLSv1.3"
    cipher: str  # the negotiated suite
    session_reused: bool  # always False with the contexts of trustd.dataplane.tls


ByteCounter = Callable[[str, int], None]  # ("a_to_b" | "b_to_a", nbytes)


class Core(Protocol):
    """TLS and byte moving for one connection at a time."""

    def plain(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes = b""
    ) -> Stream:
        """A plaintext stream; ``prefix`` (sniffed bytes) is returned first by recv()."""
        ...

    async def tls_server(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        prefix: bytes,
        context: ssl.SSLContext,
    ) -> tuple[Stream, TlsInfo]:
        """Run the server handshake (``prefix``: bytes already read). Raises on failure."""
        ...

    async def tls_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        context: ssl.SSLContext,
    ) -> tuple[Stream, TlsInfo]: ...

    async def pump(self, a: Stream, b: Stream, *, count: ByteCounter | None = None) -> None:
        """Copy both ways until both sides ended; abort both if either breaks."""
        ...


class HandshakeError(ConnectionError):
    """The TLS handshake did not complete (bad certificate, wrong protocol, peer left)."""


class PlainStream:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes = b""
    ) -> None:
        self._r = reader
        self._w = writer
        self._prefix = prefix

    async def recv(self) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._r.read(CHUNK)

    async def send(self, data: bytes) -> None:
        self._w.write(data)
        await self._w.drain()

    async def send_eof(self) -> None:
        if self._w.can_write_eof() and not self._w.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self._w.write_eof()

    def abort(self) -> None:
        self._w.transport.abort()

    async def aclose(self) -> None:
        self._w.close()
        with contextlib.suppress(Exception):
            await self._w.wait_closed()


class TlsStream:
    """TLS over an asyncio stream with ssl.SSLObject and memory BIOs."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        prefix: bytes = b"",
    ) -> None:
        self._r = reader
        self._w = writer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if prefix:
            self._in.write(prefix)
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side)
        self._eof = False
        self._sent_eof = False

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._w.write(data)
            await self._w.drain()

    async def _fill(self) -> bool:
        """Read more ciphertext from the socket; False at end of stream."""
        chunk = await self._r.read(CHUNK)
        if not chunk:
            self._in.write_eof()
            return False
        self._in.write(chunk)
        return True

    async def handshake(self) -> TlsInfo:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise HandshakeError(
                        "the peer closed the connection during the handshake"
                    ) from None
            except ssl.SSLError as exc:
                with contextlib.suppress(Exception):
                    await self._flush()  # let the peer see our alert
                raise HandshakeError(f"tls handshake failed: {exc.reason or exc}") from None
        await self._flush()
        # SSLObject.get_verified_chain() is public from Python 3.13; 3.11 has it one level down.
        sslobj = self._ssl._sslobj  # type: ignore[attr-defined]
        chain = sslobj.get_verified_chain() or []
        return TlsInfo(
            peer_certificate_der=self._ssl.getpeercert(binary_form=True),
            verified_chain_der=tuple(c.public_bytes(_ENCODING_DER) for c in chain),
            version=self._ssl.version() or "",
            cipher=(self._ssl.cipher() or ("", "", 0))[0],
            session_reused=self._ssl.session_reused,
        )

    async def recv(self) -> bytes:
        if self._eof:
            return b""
        while True:
            try:
                data = self._ssl.read(CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()  # post-handshake messages (key update) may need an answer
                await self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True  # close_notify, or a TCP close without one
                return b""
            if not data:
                self._eof = True
                return b""
            if self._ssl.pending() or self._in.pending:
                parts = [data]
                size = len(data)
                while size < CHUNK:
                    try:
                        more = self._ssl.read(CHUNK - size)
                    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        break  # next recv() sees it again
                    if not more:
                        break
                    parts.append(more)
                    size += len(more)
                data = b"".join(parts)
            return data

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._ssl.write(view)
            view = view[n:]
        await self._flush()

    async def send_eof(self) -> None:
        if self._sent_eof or self._w.is_closing():
            return
        self._sent_eof = True
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is out; reading on stays possible (half-close)
        except ssl.SSLError:
            return
        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            await self._flush()
            if self._w.can_write_eof():
                self._w.write_eof()

    def abort(self) -> None:
        self._w.transport.abort()

    async def aclose(self) -> None:
        self._w.close()
        with contextlib.suppress(Exception):
            await self._w.wait_closed()


_BROKEN = (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError)


class PythonCore:
    """The pure-Python core: asyncio streams, ssl.SSLObject, 64 KiB chunks."""

    def plain(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes = b""
    ) -> Stream:
        return PlainStream(reader, writer, prefix)

    async def tls_server(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        prefix: bytes,
        context: ssl.SSLContext,
    ) -> tuple[Stream, TlsInfo]:
        stream = TlsStream(reader, writer, context, server_side=True, prefix=prefix)
        info = await stream.handshake()
        return stream, info

    async def tls_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        context: ssl.SSLContext,
    ) -> tuple[Stream, TlsInfo]:
        stream = TlsStream(reader, writer, context, server_side=False)
        info = await stream.handshake()
        return stream, info

    async def pump(self, a: Stream, b: Stream, *, count: ByteCounter | None = None) -> None:
        async def copy(src: Stream, dst: Stream, label: str) -> None:
            while True:
                data = await src.recv()
                if not data:
                    break
                await dst.send(data)
                if count is not None:
                    count(label, len(data))
            await dst.send_eof()

        t1 = asyncio.create_task(copy(a, b, "a_to_b"))
        t2 = asyncio.create_task(copy(b, a, "b_to_a"))
        broken = False
        try:
            pending: set[asyncio.Task[None]] = {t1, t2}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t.exception() is not None for t in done):
                    broken = True
                    break
        finally:
            for t in (t1, t2):
                if not t.done():
                    t.cancel()
            await asyncio.gather(t1, t2, return_exceptions=True)
            if broken:
                a.abort()
                b.abort()
            else:
                await a.aclose()
                await b.aclose()
