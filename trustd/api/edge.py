"""The gRPC edge of every trustd API: one error-to-status table, both directions.

Servers (the admin API, the agent API, the agent's policy relay) answer a
``TrustdError`` with the status chosen here from its class; clients (the agent's
server link, the CLI, the proxy) turn a status back into the error class. Nothing
else in trustd chooses a gRPC status for a trustd error.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

import structlog
from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from trustd import errors

log = structlog.get_logger(__name__)

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

STATUS_OF: tuple[tuple[type[errors.TrustdError], Status], ...] = (
    # A KMS or store that timed out is a dependency that is down: clients retry UNAVAILABLE.
    (errors.DeadlineExceededError, Status.UNAVAILABLE),
    (errors.UnavailableError, Status.UNAVAILABLE),
    (errors.InvalidArgumentError, Status.INVALID_ARGUMENT),
    (errors.NotFoundError, Status.NOT_FOUND),
    (errors.AlreadyExistsError, Status.ALREADY_EXISTS),
    (errors.PermissionDeniedError, Status.PERMISSION_DENIED),
    (errors.UnauthenticatedError, Status.UNAUTHENTICATED),
    (errors.FailedPreconditionError, Status.FAILED_PRECONDITION),
    # A server whose own configuration is wrong (an upstream authority's mount, say):
    # not the caller's mistake, and not fixed by retrying.
    (errors.ConfigError, Status.FAILED_PRECONDITION),
)

# What a client makes of a status; any other status is the server being unavailable.
ERROR_OF: dict[Status, type[errors.TrustdError]] = {
    Status.PERMISSION_DENIED: errors.PermissionDeniedError,
    Status.UNAUTHENTICATED: errors.UnauthenticatedError,
    Status.INVALID_ARGUMENT: errors.InvalidArgumentError,
    Status.NOT_FOUND: errors.NotFoundError,
}


def status_of(exc: errors.TrustdError) -> Status:
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return status
    return Status.INTERNAL


def to_grpc_error(exc: errors.TrustdError) -> GRPCError:
    """The status for ``exc``; its message goes along (trustd messages never hold a secret)."""
    return GRPCError(status_of(exc), str(exc))


def error_of(exc: GRPCError) -> errors.TrustdError:
    """A status a trustd server answered with, as the error class it came from."""
    message = exc.message or exc.status.name.lower()
    cls = ERROR_OF.get(exc.status)
    return cls(message) if cls is not None else errors.UnavailableError(f"server: {message}")


async def _request(stream: Stream[Req, Any], method: str) -> Req:
    """The call's one request message; INVALID_ARGUMENT when its bytes are not one."""
    try:
        request = await stream.recv_message()
    except DecodeError:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"the {method} request is not a valid message of its type"
        ) from None
    assert request is not None
    return request


class Edge:
    """What every trustd gRPC service shares: the caller check, the error mapping and a
    hook per call. Subclasses implement the generated ``...Base`` methods as handlers on
    typed messages, ``async def Name(self, stream, request) -> Response``, marked
    ``@unary`` or ``@server_stream``."""

    executor: Executor | None = None  # where blocking calls (store, KMS, audit fsync) run

    async def authorize(self, stream: Stream[Any, Any], method: str) -> None:
        """Raise GRPCError (or a TrustdError) when the caller may not call ``method``."""

    def on_result(self, method: str, code: Status) -> None:
        """Called once per unary call with its status (for metrics)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking call, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def serve_unary(
        self,
        stream: Stream[Req, Resp],
        method: str,
        handler: Callable[[Stream[Req, Resp], Req], Awaitable[Resp]],
    ) -> None:
        code = Status.OK
        try:
            request = await _request(stream, method)
            await self.authorize(stream, method)
            await stream.send_message(await handler(stream, request))
        except errors.TrustdError as exc:
            code = status_of(exc)
            raise to_grpc_error(exc) from None
        except GRPCError as exc:
            code = exc.status
            raise
        except Exception:
            code = Status.INTERNAL
            log.exception("request failed", method=method)
            raise GRPCError(Status.INTERNAL, "internal error; see the server log") from None
        finally:
            self.on_result(method, code)

    async def serve_stream(
        self,
        stream: Stream[Req, Resp],
        method: str,
        handler: Callable[[Stream[Req, Resp], Req], AsyncIterator[Resp]],
    ) -> None:
        try:
            request = await _request(stream, method)
            await self.authorize(stream, method)
            async for item in handler(stream, request):
                await stream.send_message(item)
        except errors.TrustdError as exc:
            raise to_grpc_error(exc) from None


E = TypeVar("E", bound=Edge)
Handler = Callable[[E, Stream[Any, Any], Req], Awaitable[Resp]]
StreamHandler = Callable[[E, Stream[Any, Any], Req], AsyncIterator[Resp]]


def unary(
    handler: Handler[E, Req, Resp],
) -> Callable[[E, Stream[Req, Resp]], Coroutine[Any, Any, None]]:
    """A unary method of a generated service base, from a handler on its messages."""

    @functools.wraps(handler)
    async def serve(self: E, stream: Stream[Req, Resp]) -> None:
        await self.serve_unary(stream, handler.__name__, functools.partial(handler, self))

    return serve


def server_stream(
    handler: StreamHandler[E, Req, Resp],
) -> Callable[[E, Stream[Req, Resp]], Coroutine[Any, Any, None]]:
    """A server-streaming method of a generated service base, from a handler that yields."""

    @functools.wraps(handler)
    async def serve(self: E, stream: Stream[Req, Resp]) -> None:
        await self.serve_stream(stream, handler.__name__, functools.partial(handler, self))

    return serve


__all__ = [
    "ERROR_OF",
    "STATUS_OF",
    "Edge",
    "error_of",
    "server_stream",
    "status_of",
    "to_grpc_error",
    "unary",
]
