"""The agent socket: a grpclib server that knows, per connection, who is calling.

grpclib runs on asyncio transports, so the connected socket is at hand. Each
accepted connection is attested once, in ``connection_made`` (one
``SO_PEERCRED`` read per connection, not per RPC). The protocol then sets the
context variable ``_CALLER`` around each ``data_received``; grpclib starts
every request handler as a task inside that call, and a task copies the
context it is created in, so a handler reads its connection's caller from the
context. Nothing the caller sends (request fields, metadata) takes part in
deciding who it is. The per-connection hook itself is the one private grpclib
seam, kept in :mod:`trustd.agent.grpclib_internals`.

Errors become gRPC statuses through trustd.api.edge, the one table for every
trustd API.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import stat
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import structlog
from grpclib.encoding.proto import ProtoCodec
from grpclib.server import Server, Stream

from trustd.agent import errors
from trustd.agent.attestation import Attestor, attest
from trustd.agent.grpclib_internals import slim_per_stream, wrap_protocol_factory
from trustd.api.edge import to_grpc_error
from trustd.errors import (
    TrustdError,
)
from trustd.selectors import Caller

log = structlog.get_logger(__name__)

SOCKET_MODE = 0o666  # SPEC §3: any local process may connect; the kernel says who it is
SOCKET_DIR_MODE = 0o755

# The attested caller of the connection whose bytes are being processed (see the docstring).
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "trustd_agent_caller", default=None
)


class _AttestingProtocol(asyncio.Protocol):
    """Wraps grpclib's HTTP/2 protocol: attests the peer, then hands everything on."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        attestor: Attestor,
        live: set[asyncio.BaseTransport],
    ) -> None:
        self._inner = inner
        self._attestor = attestor
        self._live = live
        self._transport: asyncio.BaseTransport | None = None
        self._caller: Caller | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._live.add(transport)
        sock = transport.get_extra_info("socket")
        caller: Caller | None = None
        if sock is not None:
            try:
                caller = self._attestor(sock)
            except OSError as exc:
                log.warning("caller attestation failed", error=str(exc))
        self._caller = caller
        self._inner.connection_made(transport)
        slim_per_stream(self._inner)

    def data_received(self, data: bytes) -> None:
        token = _CALLER.set(self._caller)  # handler tasks created below inherit it
        try:
            self._inner.data_received(data)
        finally:
            _CALLER.reset(token)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._live.discard(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class CallerRegistry:
    """Who is calling: the caller of the connection the current request arrived on."""

    def caller_of(self, stream: Stream[Any, Any]) -> Caller:
        """The attested caller of the connection ``stream`` runs on (read from the context
        the request handler was started in; ``stream`` is not consulted)."""
        del stream
        caller = _CALLER.get()
        if caller is None:
            raise errors.CallerUnknownError(
                "the agent could not identify the calling process; connect over the unix socket"
            )
        return caller


class PreEncoded:
    """A reply already serialized (many streams send the same bytes but for the nonce)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data  # the protobuf wire bytes of the reply


class _Codec(ProtoCodec):
    """grpclib's protobuf codec, letting ``PreEncoded`` replies through as they are."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, PreEncoded):
            return message.data
        data: bytes = super().encode(message, message_type)
        return data


class AttestingServer(Server):
    """grpclib ``Server`` whose connections carry their kernel-attested caller."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        callers: CallerRegistry,
        attestor: Attestor = attest,
    ) -> None:
        super().__init__(handlers, codec=_Codec())
        self._callers = callers
        self._attestor = attestor
        self._live: set[asyncio.BaseTransport] = set()
        wrap_protocol_factory(
            self, lambda inner: _AttestingProtocol(inner, self._attestor, self._live)
        )

    @property
    def connection_count(self) -> int:
        return len(self._live)

    def close_connections(self) -> None:
        """Close every client connection. grpclib's ``close()`` only stops accepting and
        cancels handlers; in a process that keeps running (``trustd up``, tests) the
        connections would stay open, and clients like Envoy would not reconnect."""
        for transport in list(self._live):
            transport.close()


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory (0755) if missing; refuse a socket another process serves."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=SOCKET_DIR_MODE, parents=True)
        os.chmod(parent, SOCKET_DIR_MODE)  # mkdir's mode is filtered by the umask
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.SocketInUseError(
            f"{path} exists and is not a socket; remove it or choose another agent socket path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # a stale socket left by a process that is gone
        return
    finally:
        probe.close()
    raise errors.SocketInUseError(
        f"another process serves {path}; stop it or choose another agent socket path"
    )


@contextlib.contextmanager
def grpc_errors() -> Iterator[None]:
    """Turn trustd errors into gRPC statuses (message kept: it never holds a secret)."""
    try:
        yield
    except TrustdError as exc:
        raise to_grpc_error(exc) from exc


CallerOf = Callable[[Stream[Any, Any]], Caller]
