"""Admin API methods for the audit log: verify, export (streamed), tail (streamed)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TextIO, cast

from grpclib.server import Stream

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.edge import Edge, server_stream, unary
from trustd.audit import AuditLog, parse_time
from trustd.audit.events import Actor
from trustd.errors import InvalidArgumentError, TrustdError, UnavailableError
from trustd.server.auditing import ServerAudit

if TYPE_CHECKING:
    from trustd.server.core import ServerCore

CHUNK = 256 * 1024


def _time(value: str, name: str, now: dt.datetime) -> dt.datetime | None:
    """RFC 3339, a date, or a duration ago ("24h"); empty: none."""
    if not value:
        return None
    try:
        return parse_time(value, now=now)
    except (ValueError, TrustdError):
        raise InvalidArgumentError(
            f"invalid --{name}: use RFC 3339 (2026-11-26T10:00:00Z), a date, or a duration ago (24h)"
        ) from None


class _QueueWriter:
    """A text stream that hands chunks to the event loop as they fill."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        self._loop = loop
        self._queue = queue
        self._buf: list[str] = []
        self._size = 0

    def write(self, text: str) -> int:
        self._buf.append(text)
        self._size += len(text)
        if self._size >= CHUNK:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._buf:
            chunk = "".join(self._buf)
            self._buf, self._size = [], 0
            asyncio.run_coroutine_threadsafe(self._queue.put(chunk), self._loop).result()


def _filters(req: pb.ExportAuditRequest, now: dt.datetime) -> dict[str, Any]:
    if req.outcome not in ("", "success", "failure"):
        raise InvalidArgumentError("invalid --outcome: use success or failure")
    return {
        "since": _time(req.since, "since", now),
        "until": _time(req.until, "until", now),
        "types": list(req.types),
        "outcome": req.outcome or None,
    }


class AuditAdmin(Edge):
    """The admin API's audit methods (SPEC §9), mixed into AdminService."""

    server_audit: ServerAudit | None
    core: ServerCore

    def actor(self, stream: Stream[Any, Any]) -> Actor:
        raise NotImplementedError

    def _log(self) -> AuditLog:
        """Resolved on each use: the log may open after the admin API starts."""
        if self.server_audit is None:
            raise UnavailableError("this server keeps no audit log of its own")
        return self.server_audit.log

    @unary
    async def AuditVerify(self, s: Stream[Any, Any], req: pb.Empty) -> pb.VerifyAuditResponse:
        r = await self.run(self._log().verify)
        msg = pb.VerifyAuditResponse(
            ok=r.ok,
            problem=r.problem,
            events_checked=r.events_checked,
            checkpoints_checked=r.checkpoints_checked,
        )
        for name in (
            "first_bad_seq",
            "first_seq",
            "last_seq",
            "last_checkpoint_seq",
            "head_seq",
        ):
            if getattr(r, name) is not None:
                setattr(msg, name, getattr(r, name))
        return msg

    @unary
    async def AuditKeys(self, s: Stream[Any, Any], req: pb.Empty) -> pb.AuditKeysResponse:
        from trustd.audit.keyring import export_keys

        exported = export_keys(await self.run(self._log().public_keys))
        return pb.AuditKeysResponse(keys=json.dumps(exported).encode())

    @server_stream
    async def AuditExport(
        self, s: Stream[Any, Any], req: pb.ExportAuditRequest
    ) -> AsyncIterator[pb.ExportAuditChunk]:
        log = self._log()
        filters = _filters(req, self.core.clock.now())
        fmt = req.format or "jsonl"
        actor = self.actor(s)
        total = await self.run(lambda: log.count(**filters))
        yield pb.ExportAuditChunk(total=total)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        writer = _QueueWriter(loop, queue)
        failure: list[BaseException] = []

        def produce() -> int:
            try:
                n = log.export(cast(TextIO, writer), format=fmt, actor=actor, **filters)
                writer.flush()
                return int(n)
            except BaseException as exc:
                failure.append(exc)
                return 0
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        task = loop.run_in_executor(self.executor, produce)
        while (chunk := await queue.get()) is not None:
            yield pb.ExportAuditChunk(data=chunk)
        count = await task
        if failure:
            raise failure[0]
        yield pb.ExportAuditChunk(done=count)

    @server_stream
    async def AuditTail(
        self, s: Stream[Any, Any], req: pb.TailAuditRequest
    ) -> AsyncIterator[pb.AuditLine]:
        log = self._log()
        follow, last = req.follow, req.last or 10
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[pb.AuditLine | None] = asyncio.Queue(maxsize=1024)

        def produce() -> None:
            try:
                for rec in log.tail(follow=follow, last=last, stop=stop):
                    if stop.is_set():
                        break
                    line = pb.AuditLine(line=rec.raw)
                    asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
            finally:
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(queue.put(None), loop).result(timeout=5)

        task = loop.run_in_executor(None, produce)  # long-lived: kept off the bounded pool
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


__all__ = ["AuditAdmin", "TrustdError"]
