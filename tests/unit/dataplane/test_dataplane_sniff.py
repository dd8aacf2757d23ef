"""Telling TLS from plaintext: every verdict, however the bytes are split."""

from __future__ import annotations

import asyncio

import pytest
from dataplane_helpers import run

from trustd.dataplane.sniff import SniffResult, classify, sniff

HELLO_HEAD = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize(
    ("prefix", "verdict"),
    [
        (b"", None),
        (b"\x16", None),
        (b"\x16\x03", None),
        (b"\x16\x03\x01", SniffResult.TLS),
        (b"\x16\x03\x03", SniffResult.TLS),
        (b"\x16\x03\x04", SniffResult.TLS),
        (b"\x16\x03\x05", SniffResult.PLAINTEXT),
        (b"\x16\x02", SniffResult.PLAINTEXT),
        (b"G", SniffResult.PLAINTEXT),
        (b"\x00", SniffResult.PLAINTEXT),
        (b"PRI * HTTP/2.0", SniffResult.PLAINTEXT),
    ],
)
def test_classify(prefix: bytes, verdict: SniffResult | None) -> None:
    assert classify(prefix) is verdict


async def feed(reader: asyncio.StreamReader, data: bytes, *, eof: bool = False) -> None:
    for i in range(len(data)):
        reader.feed_data(data[i : i + 1])
        await asyncio.sleep(0.001)
    if eof:
        reader.feed_eof()


@run
async def test_one_byte_segments_are_still_recognised_and_returned() -> None:
    reader = asyncio.StreamReader()
    task = asyncio.create_task(feed(reader, HELLO_HEAD))
    verdict, prefix = await sniff(reader, timeout=10)
    await task
    assert verdict is SniffResult.TLS
    assert HELLO_HEAD.startswith(prefix) and len(prefix) >= 3  # nothing read is lost


@run
async def test_plaintext_is_decided_on_the_first_byte() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"GET / HTTP/1.1\r\n")
    verdict, prefix = await sniff(reader, timeout=10)
    assert verdict is SniffResult.PLAINTEXT and prefix == b"GET / HTTP/1.1\r\n"


@run
async def test_silence_is_a_server_first_protocol() -> None:
    verdict, prefix = await sniff(asyncio.StreamReader(), timeout=0.05)
    assert verdict is SniffResult.SILENT and prefix == b""


@run
async def test_a_stalled_header_is_reported_as_stalled() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"\x16\x03")
    verdict, prefix = await sniff(reader, timeout=0.05)
    assert verdict is SniffResult.STALLED and prefix == b"\x16\x03"


@run
async def test_a_close_before_any_verdict_is_closed() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"\x16")
    reader.feed_eof()
    verdict, prefix = await sniff(reader, timeout=10)
    assert verdict is SniffResult.CLOSED and prefix == b"\x16"
