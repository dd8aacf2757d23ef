"""SSL contexts for the proxy: one server and one client context per identity version.

- The SVID and key are loaded from an anonymous in-memory file (memfd), so the
  private key never touches a file system.
- The trust anchors are every bundle the identity holds; SPIFFE treats every
  bundle certificate as an anchor, so partial chains are allowed.
- A peer certificate is required on both sides; the host name is not checked
  (SVIDs carry no DNS names): :mod:`trustd.dataplane.verify` checks the SPIFFE
  ID after every handshake.
- **No session resumption.** The server context issues no TLS 1.3 tickets
  (``num_tickets = 0``) and no TLS 1.2 tickets (``OP_NO_TICKET``). Python's
  ``ssl`` cannot switch off OpenSSL's TLS 1.2 session-ID cache, and stock
  Envoy clients offer TLS 1.2 session IDs; so a server context that ran a
  TLS 1.2 handshake (and so may hold that session) is retired at once
  (:meth:`TlsContexts.retire_server`) and the next handshake runs on a fresh
  context with an empty cache. TLS 1.3 handshakes keep the context. The
  client never offers a session. On top, the proxy refuses any handshake that
  reports a resumed session (fail closed). Every handshake therefore verifies
  the peer chain against the bundle of the context it runs on, and a new
  bundle means a new context. (The native core builds its own SSL_CTX per
  identity version, resumes only from that context's session cache and
  decides every resumed session again: ``trustd/dataplane/_native.c``.)
- A context is built on first use after the identity changes. The previous
  one is dropped at once; only connections that already use it keep it alive.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from trustd.dataplane.identity import Identity

log = structlog.get_logger(__name__)


def _load_svid(ctx: ssl.SSLContext, ident: Identity) -> None:
    blob = ident.cert_chain_pem + ident.private_key_pem
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("trustd-svid", os.MFD_CLOEXEC)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    # No memfd (not Linux): a private temporary file, removed at once.
    with tempfile.TemporaryDirectory(prefix="trustd-svid-") as d:
        path = Path(d) / "svid.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        ctx.load_cert_chain(str(path))


def _common(ctx: ssl.SSLContext, ident: Identity) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    bundle = ident.bundle_pem()
    if bundle:
        ctx.load_verify_locations(cadata=bundle)
    _load_svid(ctx, ident)
    return ctx


def server_context(ident: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0
    return _common(ctx, ident)


def client_context(ident: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the SPIFFE ID is checked instead, after the handshake
    return _common(ctx, ident)


class TlsContexts:
    """The contexts of the current identity version, built lazily."""

    def __init__(self, on_build: Callable[[], None] | None = None) -> None:
        self._on_build = on_build or (lambda: None)
        self._version: str | None = None
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self.builds = 0  # contexts built so far (a metric and a test hook)

    def _refresh(self, ident: Identity) -> None:
        if ident.version != self._version:
            self._version = ident.version
            self._server = None
            self._client = None

    def server(self, ident: Identity) -> ssl.SSLContext:
        self._refresh(ident)
        if self._server is None:
            self._server = server_context(ident)
            self.builds += 1
            self._on_build()
        return self._server

    def retire_server(self, ctx: ssl.SSLContext) -> None:
        """``ctx`` ran a TLS 1.2 handshake: its session cache may hold that session, so new
        handshakes get a fresh context (open connections keep theirs)."""
        if self._server is ctx:
            self._server = None

    def client(self, ident: Identity) -> ssl.SSLContext:
        self._refresh(ident)
        if self._client is None:
            self._client = client_context(ident)
            self.builds += 1
            self._on_build()
        return self._client
