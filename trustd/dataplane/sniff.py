"""Telling TLS from plaintext on one port, as PERMISSIVE needs.

A TLS connection starts with a handshake record: content type ``0x16``,
then the record-layer version ``0x03 0x00``-``0x03 0x04``. The sniffer reads
until it has those three bytes, or until one of them rules TLS out. It keeps
reading however the bytes are split, so a ClientHello sent one byte per TCP
segment is still recognised. Every byte read is returned so it can be fed to
the TLS engine or forwarded to the application.

A client that sends nothing within the timeout may be speaking a server-first
protocol (MySQL, SMTP): that is :attr:`SniffResult.SILENT`, which a PERMISSIVE
listener treats as plaintext. A client that sent part of a TLS record header
and then stalled is :attr:`SniffResult.STALLED`, and is closed: slowloris gets
a bounded wait (the timeout) on a bounded number of slots (see the proxy's
``sniff.maxPending``).
"""

from __future__ import annotations

import asyncio
import enum

HANDSHAKE = 0x16
TLS_MAJOR = 0x03
MAX_MINOR = 0x04


class SniffResult(enum.StrEnum):
    TLS = "tls"  # a TLS handshake record header
    PLAINTEXT = "plaintext"  # some byte that cannot start a TLS record
    SILENT = "silent"  # no byte before the timeout (server-first protocol?)
    STALLED = "stalled"  # a partial TLS record header, then nothing before the timeout
    CLOSED = "closed"  # the peer closed before the bytes told anything


def classify(prefix: bytes) -> SniffResult | None:
    """The verdict for the bytes so far, or None when more are needed."""
    if len(prefix) >= 1 and prefix[0] != HANDSHAKE:
        return SniffResult.PLAINTEXT
    if len(prefix) >= 2 and prefix[1] != TLS_MAJOR:
        return SniffResult.PLAINTEXT
    if len(prefix) >= 3:
        return SniffResult.TLS if prefix[2] <= MAX_MINOR else SniffResult.PLAINTEXT
    return None


async def sniff(reader: asyncio.StreamReader, *, timeout: float) -> tuple[SniffResult, bytes]:
    """Read the first bytes of a connection and classify them; never waits past ``timeout``."""
    buf = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        verdict = classify(buf)
        if verdict is not None:
            return verdict, buf
        remaining = deadline - loop.time()
        if remaining <= 0:
            return (SniffResult.STALLED if buf else SniffResult.SILENT), buf
        try:
            async with asyncio.timeout(remaining):
                chunk = await reader.read(4096)
        except TimeoutError:
            return (SniffResult.STALLED if buf else SniffResult.SILENT), buf
        if not chunk:
            return SniffResult.CLOSED, buf
        buf += chunk
