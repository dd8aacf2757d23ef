"""The HTTP side of operations: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/metrics`` is prometheus_client's own WSGI exposition (content negotiation,
OpenMetrics, gzip, ``name[]`` filters) over the process's one registry
(:mod:`trustd.telemetry.metrics`). The two health routes sit beside it in the
same WSGI app. It is served by prometheus_client's threading WSGI server on a
daemon thread, so a slow scrape never holds up the event loop, and the
readiness check (which may ask the store and the key manager) runs there too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = structlog.get_logger(__name__)

Readiness = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: scrapes every few seconds would drown the real log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def health_app(registry: CollectorRegistry, readiness: Readiness) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: prometheus_client's exposition at /metrics, and the two health routes."""
    metrics = make_wsgi_app(registry)

    def plain(start: StartResponse, status: str, text: str, method: str) -> list[bytes]:
        body = (text + "\n").encode()
        start(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body] if method != "HEAD" else [b""]

    def app(environ: Environ, start: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        if method not in ("GET", "HEAD"):
            return plain(start, "405 Method Not Allowed", "method not allowed", method)
        if path == "/metrics":
            return metrics(environ, start)  # type: ignore[no-any-return]
        if path == "/healthz":
            return plain(start, "200 OK", "ok", method)
        if path == "/readyz":
            try:
                ready, reason = readiness()
            except Exception as exc:  # a failing check is "not ready", never a 500 with a trace
                ready, reason = False, f"readiness check failed: {type(exc).__name__}"
            return plain(start, "200 OK" if ready else "503 Service Unavailable", reason, method)
        return plain(start, "404 Not Found", "not found", method)

    return app


class HealthServer:
    """Serves :func:`health_app` on ``host:port`` (port 0: any free port)."""

    def __init__(self, *, registry: CollectorRegistry, readiness: Readiness) -> None:
        self._app = health_app(registry, readiness)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self, address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server_class = _Ipv6Server if ":" in host else ThreadingWSGIServer
        server = make_server(host, int(port), self._app, server_class, handler_class=_QuietHandler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="trustd-metrics", daemon=True
        )
        self._thread.start()
        bound_host, bound_port = server.socket.getsockname()[:2]
        log.info("metrics and health listening", address=f"{bound_host}:{bound_port}")
        return str(bound_host), int(bound_port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Ipv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6
