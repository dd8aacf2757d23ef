"""Admin API methods for the audit log: verify, export (streamed), tail (streamed)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from trustd.audit import parse_time
from trustd.errors import InvalidArgumentError, TrustdError, UnavailableError
from trustd.server.auditing import AuditLogAuditor, DeferredAuditor

if TYPE_CHECKING:
    from trustd.server.admin import AdminService

CHUNK = 256 * 1024


def _time(value: Any, name: str, now: dt.datetime) -> dt.datetime | None:
    """RFC 3339, a date, or a duration ago ("24h")."""
    if value in (None, ""):
        return None
    try:
        return parse_time(str(value), now=now)
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


def register(admin: AdminService, auditor: AuditLogAuditor | DeferredAuditor) -> None:
    class _Log:
        """Resolves the audit log on each use: it may open after the admin API starts."""

        def __getattr__(self, name: str) -> Any:
            return getattr(auditor.log, name)

    log: Any = _Log()

    async def verify(s: Any, d: dict[str, Any]) -> Any:
        report = await admin._run(log.verify)
        return {
            "ok": report.ok,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
            "events_checked": report.events_checked,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "checkpoints_checked": report.checkpoints_checked,
            "last_checkpoint_seq": report.last_checkpoint_seq,
            "head_seq": report.head_seq,
        }

    async def keys(s: Any, d: dict[str, Any]) -> Any:
        from trustd.audit.keyring import export_keys

        return export_keys(await admin._run(log.public_keys))

    def _filters(d: dict[str, Any]) -> dict[str, Any]:
        types = d.get("types") or []
        outcome = d.get("outcome")
        if outcome not in (None, "", "success", "failure"):
            raise InvalidArgumentError("invalid --outcome: use success or failure")
        return {
            "since": _time(d.get("since"), "since", admin.core.clock.now()),
            "until": _time(d.get("until"), "until", admin.core.clock.now()),
            "types": [str(t) for t in types],
            "outcome": outcome or None,
        }

    async def export(s: Any, d: dict[str, Any]) -> AsyncIterator[Any]:
        filters = _filters(d)
        fmt = str(d.get("format", "jsonl"))
        actor = admin.actor(s)
        total = await admin._run(lambda: log.count(**filters))
        yield {"total": total}
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        writer = _QueueWriter(loop, queue)
        failure: list[BaseException] = []

        def produce() -> int:
            try:
                n = log.export(writer, format=fmt, actor=actor, **filters)
                writer.flush()
                return int(n)
            except BaseException as exc:
                failure.append(exc)
                return 0
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        task = loop.run_in_executor(admin.executor, produce)
        while (chunk := await queue.get()) is not None:
            yield {"data": chunk}
        count = await task
        if failure:
            raise failure[0]
        yield {"done": count}

    async def tail(s: Any, d: dict[str, Any]) -> AsyncIterator[Any]:
        follow = bool(d.get("follow"))
        last = int(d.get("last") or 10)
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1024)

        def produce() -> None:
            try:
                for rec in log.tail(follow=follow, last=last, stop=stop):
                    if stop.is_set():
                        break
                    asyncio.run_coroutine_threadsafe(queue.put({"event": rec.raw}), loop).result()
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

    admin.unary("AuditVerify", verify)
    admin.unary("AuditKeys", keys)
    admin.server_stream("AuditExport", export)
    admin.server_stream("AuditTail", tail)


__all__ = ["UnavailableError", "register"]
