"""Who is on the other end of a Unix socket, as the kernel says (SO_PEERCRED)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCred:
    pid: int  # at connect(); a hint only (pids are reused)
    uid: int  # effective uid at connect()
    gid: int  # effective gid at connect()


def from_socket(sock: socket.socket) -> PeerCred:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return PeerCred(pid=pid, uid=uid, gid=gid)


def from_transport(transport: Any) -> PeerCred | None:
    """Credentials of an asyncio transport's peer, or None if it is not a Unix socket."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    return from_socket(sock)


def from_grpclib_stream(stream: Any) -> PeerCred | None:
    """Credentials of the connection a grpclib server stream arrived on."""
    peer = getattr(stream, "peer", None)
    return from_transport(getattr(peer, "_transport", None))
