"""The JSON-over-gRPC convention of trustd's own APIs (admin and agent).

Requests and responses are JSON documents carried in
``google.protobuf.BytesValue``, so the services need no generated code while
staying plain gRPC (grpcurl and health checks work). Errors carry a gRPC
status chosen here, at the edge, from the class of the TrustdError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpclib
import grpclib.const
import grpclib.server
import structlog
from google.protobuf.wrappers_pb2 import BytesValue
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from trustd import errors

log = structlog.get_logger(__name__)

T = TypeVar("T")

_STATUS: list[tuple[type[errors.TrustdError], Status]] = [
    # A KMS or store that timed out is a dependency that is down: clients retry UNAVAILABLE.
    (errors.DeadlineExceededError, Status.UNAVAILABLE),
    (errors.UnavailableError, Status.UNAVAILABLE),
    (errors.InvalidArgumentError, Status.INVALID_ARGUMENT),
    (errors.ConfigError, Status.INVALID_ARGUMENT),
    (errors.NotFoundError, Status.NOT_FOUND),
    (errors.AlreadyExistsError, Status.ALREADY_EXISTS),
    (errors.PermissionDeniedError, Status.PERMISSION_DENIED),
    (errors.UnauthenticatedError, Status.UNAUTHENTICATED),
    (errors.FailedPreconditionError, Status.FAILED_PRECONDITION),
]


def status_for(exc: errors.TrustdError) -> Status:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return Status.INTERNAL


def to_grpc_error(exc: errors.TrustdError) -> GRPCError:
    return GRPCError(status_for(exc), str(exc))


def encode(doc: Any) -> BytesValue:
    return BytesValue(value=json.dumps(doc, separators=(",", ":"), default=str).encode())


def decode(msg: BytesValue) -> dict[str, Any]:
    try:
        doc = json.loads(msg.value or b"{}")
    except ValueError:
        raise GRPCError(Status.INVALID_ARGUMENT, "request is not valid JSON") from None
    if not isinstance(doc, dict):
        raise GRPCError(Status.INVALID_ARGUMENT, "request must be a JSON object")
    return doc


UnaryFn = Callable[[grpclib.server.Stream[Any, Any], dict[str, Any]], Awaitable[Any]]
StreamFn = Callable[[grpclib.server.Stream[Any, Any], dict[str, Any]], AsyncIterator[Any]]


class JsonService:
    """A gRPC service whose methods are registered as plain async functions on JSON."""

    service_name = ""

    def __init__(self) -> None:
        self._unary: dict[str, UnaryFn] = {}
        self._streams: dict[str, StreamFn] = {}

    def unary(self, name: str, fn: UnaryFn) -> None:
        self._unary[name] = fn

    def server_stream(self, name: str, fn: StreamFn) -> None:
        self._streams[name] = fn

    async def authorize(self, stream: grpclib.server.Stream[Any, Any], method: str) -> None:
        """Raise GRPCError when the caller may not call ``method``."""

    def on_result(self, method: str, code: Status) -> None:
        """Hook for metrics."""

    def _unary_handler(self, name: str, fn: UnaryFn) -> Callable[..., Awaitable[None]]:
        async def handle(stream: grpclib.server.Stream[BytesValue, BytesValue]) -> None:
            code = Status.OK
            try:
                req = await stream.recv_message()
                await self.authorize(stream, name)
                doc = decode(req or BytesValue())
                result = await fn(stream, doc)
                await stream.send_message(encode(result))
            except errors.TrustdError as exc:
                code = status_for(exc)
                raise to_grpc_error(exc) from None
            except GRPCError as exc:
                code = exc.status
                raise
            except Exception:
                code = Status.INTERNAL
                log.exception("request failed", method=name)
                raise GRPCError(Status.INTERNAL, "internal error; see the server log") from None
            finally:
                self.on_result(name, code)

        return handle

    def _stream_handler(self, name: str, fn: StreamFn) -> Callable[..., Awaitable[None]]:
        async def handle(stream: grpclib.server.Stream[BytesValue, BytesValue]) -> None:
            try:
                req = await stream.recv_message()
                await self.authorize(stream, name)
                async for item in fn(stream, decode(req or BytesValue())):
                    await stream.send_message(encode(item))
            except errors.TrustdError as exc:
                raise to_grpc_error(exc) from None

        return handle

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        out = {}
        for name, fn in self._unary.items():
            out[f"/{self.service_name}/{name}"] = grpclib.const.Handler(
                self._unary_handler(name, fn),
                grpclib.const.Cardinality.UNARY_UNARY,
                BytesValue,
                BytesValue,
            )
        for name, sfn in self._streams.items():
            out[f"/{self.service_name}/{name}"] = grpclib.const.Handler(
                self._stream_handler(name, sfn),
                grpclib.const.Cardinality.UNARY_STREAM,
                BytesValue,
                BytesValue,
            )
        return out


async def run_blocking(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (store, KMS, audit fsync) off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)
