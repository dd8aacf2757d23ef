"""The CLI's way into the server: ``trustd.admin.v1.Admin`` on the admin socket, typed
messages both ways (``trustd/api/admin/v1/admin.proto``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from trustd.api.admin.v1.admin_grpc import AdminStub

DEFAULT_ADMIN_SOCKET = ".trustd/admin.sock"
TIMEOUT = 60.0


class ServerError(Exception):
    """The server refused, or could not be reached (exit code 2). ``status`` is the gRPC
    status it refused with (``trustd.api.edge`` maps each to its error class), or None
    when it could not be reached."""

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.status = status


def admin_socket(flag: str | None) -> Path:
    return Path(flag or os.environ.get("TRUSTD_ADMIN_SOCKET") or DEFAULT_ADMIN_SOCKET)


def _unreachable(path: Path, exc: BaseException) -> ServerError:
    if isinstance(exc, PermissionError):
        return ServerError(
            f"permission denied on the admin socket {path}: only the user the server runs as, "
            "or root, may use it"
        )
    return ServerError(
        f"cannot reach the trustd server at {path} ({exc.__class__.__name__}): "
        "is it running? (start it with 'trustd up', or set --admin-socket)"
    )


async def _call(path: Path, method: str, request: Message) -> Any:
    """``Admin/<method>`` with ``request``; its response message."""
    if not path.exists():
        raise _unreachable(path, FileNotFoundError())
    channel = Channel(path=str(path))
    try:
        return await getattr(AdminStub(channel), method)(request, timeout=TIMEOUT)
    except GRPCError as exc:
        raise ServerError(exc.message or exc.status.name.lower(), exc.status) from None
    except (TimeoutError, OSError, StreamTerminatedError) as exc:
        raise _unreachable(path, exc) from None
    finally:
        channel.close()


def call(socket: Path, method: str, request: Message) -> Any:
    return asyncio.run(_call(socket, method, request))


async def stream(socket: Path, method: str, request: Message) -> AsyncIterator[Any]:
    """The messages of the server stream ``Admin/<method>``."""
    channel = Channel(path=str(socket))
    try:
        async with getattr(AdminStub(channel), method).open() as st:
            await st.send_message(request, end=True)
            async for msg in st:
                yield msg
    except GRPCError as exc:
        raise ServerError(exc.message or exc.status.name.lower(), exc.status) from None
    except (OSError, StreamTerminatedError) as exc:
        raise _unreachable(socket, exc) from None
    finally:
        channel.close()
