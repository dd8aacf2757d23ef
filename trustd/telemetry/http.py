"""The HTTP side of operations: /metrics (Prometheus), /healthz and /readyz.

A deliberately small HTTP/1.1 responder on asyncio: three GET routes, one
response per connection, bounded request size and time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger(__name__)

Readiness = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, *, registries: list[CollectorRegistry], readiness: Readiness) -> None:
        self._registries = registries
        self._readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self, address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        self._server = await asyncio.start_server(self._handle, host or "127.0.0.1", int(port))
        sock = self._server.sockets[0].getsockname()
        log.info("metrics and health listening", address=f"{sock[0]}:{sock[1]}")
        return sock[0], sock[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = (
                    "405 Method Not Allowed",
                    "text/plain",
                    b"method not allowed\n",
                )
            elif path == "/metrics":
                body = b"".join(generate_latest(r) for r in self._registries)
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                ready, reason = self._readiness()
                status = "200 OK" if ready else "503 Service Unavailable"
                ctype, body = "text/plain", (reason + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
