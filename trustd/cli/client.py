"""The CLI's way into the server: JSON over gRPC on the admin socket."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.protobuf.wrappers_pb2 import BytesValue
from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from trustd.server.admin import SERVICE

DEFAULT_ADMIN_SOCKET = ".trustd/admin.sock"
TIMEOUT = 60.0


class ServerError(Exception):
    """The server refused, or could not be reached (exit code 2)."""

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


async def _call(path: Path, method: str, doc: dict[str, Any]) -> dict[str, Any]:
    if not path.exists():
        raise _unreachable(path, FileNotFoundError())
    channel = Channel(path=str(path))
    try:
        stub = UnaryUnaryMethod(channel, f"/{SERVICE}/{method}", BytesValue, BytesValue)
        reply = await stub(BytesValue(value=json.dumps(doc).encode()), timeout=TIMEOUT)
        result: dict[str, Any] = json.loads(reply.value or b"{}")
        return result
    except GRPCError as exc:
        raise ServerError(exc.message or exc.status.name.lower(), exc.status) from None
    except (TimeoutError, OSError, StreamTerminatedError) as exc:
        raise _unreachable(path, exc) from None
    finally:
        channel.close()


def call(socket: Path, method: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    return asyncio.run(_call(socket, method, doc or {}))


async def stream(socket: Path, method: str, doc: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    channel = Channel(path=str(socket))
    try:
        stub = UnaryStreamMethod(channel, f"/{SERVICE}/{method}", BytesValue, BytesValue)
        async with stub.open() as st:
            await st.send_message(BytesValue(value=json.dumps(doc).encode()), end=True)
            async for msg in st:
                yield json.loads(msg.value)
    except GRPCError as exc:
        raise ServerError(exc.message or exc.status.name.lower(), exc.status) from None
    except (OSError, StreamTerminatedError) as exc:
        raise _unreachable(socket, exc) from None
    finally:
        channel.close()
