"""Admin API methods for the audit log: verify, export (streamed), tail (streamed)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from grpclib.server import Stream

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.edge import Edge, server_stream, unary
from trustd.audit import AuditEvent, AuditLog, parse_time
from trustd.audit.events import AUDIT_EXPORT, Actor
from trustd.audit.export import export_events
from trustd.audit.mirror import merge_by_time, mirror_directory, verify_mirror
from trustd.audit.reader import EventFilter, count_records, iter_records
from trustd.audit.verify import VerifyReport
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

    def _mirrored_servers(self) -> list[str]:
        """The other servers whose chains the shared store mirrors (none with SQLite)."""
        audit = self.server_audit
        if audit is None or audit.mirror is None:
            return []
        return [sid for sid in audit.mirror.audit_mirror_servers() if sid != audit.server_id]

    def _verify_all(self) -> tuple[VerifyReport, list[tuple[str, VerifyReport]]]:
        log = self._log()
        local = log.verify()
        audit = self.server_audit
        others: list[tuple[str, VerifyReport]] = []
        if audit is not None and audit.mirror is not None:
            for sid in self._mirrored_servers():
                with tempfile.TemporaryDirectory(prefix="trustd-audit-mirror-") as tmp:
                    others.append(
                        (
                            sid,
                            verify_mirror(
                                audit.mirror, sid, Path(tmp), key_manager=log.key_manager
                            ),
                        )
                    )
        return local, others

    @unary
    async def AuditVerify(self, s: Stream[Any, Any], req: pb.Empty) -> pb.VerifyAuditResponse:
        r, others = await self.run(self._verify_all)
        msg = pb.VerifyAuditResponse(
            ok=r.ok and all(o.ok for _, o in others),
            problem=r.problem,
            events_checked=r.events_checked,
            checkpoints_checked=r.checkpoints_checked,
            server_id=self.server_audit.server_id if self.server_audit is not None else "",
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
        for sid, o in others:
            sub = msg.servers.add(
                server_id=sid,
                ok=o.ok,
                problem=o.problem,
                events_checked=o.events_checked,
                checkpoints_checked=o.checkpoints_checked,
            )
            for name in ("first_bad_seq", "first_seq", "last_seq", "last_checkpoint_seq"):
                if getattr(o, name) is not None:
                    setattr(sub, name, getattr(o, name))
            if r.ok and not o.ok and not msg.problem:  # the first damaged chain names itself
                msg.problem = f"the chain of server {sid}: {o.problem}"
                if o.first_bad_seq is not None:
                    msg.first_bad_seq = o.first_bad_seq
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
        mirrors = await self.run(self._mirrored_servers)
        if mirrors:
            async for part in self._export_all(log, mirrors, filters, fmt, actor):
                yield part
            return
        total = await self.run(lambda: log.count(**filters))
        yield pb.ExportAuditChunk(total=total)

        def write(out: TextIO) -> int:
            return int(log.export(out, format=fmt, actor=actor, **filters))

        async for part in self._stream_export(write):
            yield part

    async def _stream_export(
        self, write: Callable[[TextIO], int]
    ) -> AsyncIterator[pb.ExportAuditChunk]:
        """Run ``write`` (blocking: it renders the export into the file it is given) in the
        executor and stream what it writes as chunks, then ``done`` with its count."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        writer = _QueueWriter(loop, queue)
        failure: list[BaseException] = []

        def produce() -> int:
            try:
                n = write(cast(TextIO, writer))
                writer.flush()
                return n
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

    async def _export_all(
        self,
        log: AuditLog,
        mirrors: list[str],
        filters: dict[str, Any],
        fmt: str,
        actor: Actor,
    ) -> AsyncIterator[pb.ExportAuditChunk]:
        """Every chain of the deployment (this server's log and the mirrored ones of the
        others), merged in time order."""
        audit = self.server_audit
        assert audit is not None and audit.mirror is not None
        mirror = audit.mirror
        tmp = tempfile.TemporaryDirectory(prefix="trustd-audit-mirror-")
        try:
            where = EventFilter(
                since=filters["since"],
                until=filters["until"],
                types=tuple(filters["types"]),
                outcome=filters["outcome"],
            )

            def prepare() -> tuple[list[Path], int]:
                dirs = []
                for sid in mirrors:
                    d = Path(tmp.name) / sid
                    if mirror_directory(mirror, sid, d):
                        dirs.append(d)
                total = log.count(**filters) + sum(count_records(d, where=where) for d in dirs)
                return dirs, total

            dirs, total = await self.run(prepare)
            yield pb.ExportAuditChunk(total=total)

            def write(out: TextIO) -> int:
                log.append(  # as AuditLog.export does: no export goes unrecorded
                    AuditEvent(
                        type=AUDIT_EXPORT, actor=actor, action="export", resource="audit",
                        details={"format": fmt, "since": where.since, "until": where.until,
                                 "types": list(where.types), "outcome": where.outcome,
                                 "servers": [audit.server_id, *mirrors]},
                    )
                )  # fmt: skip
                chains = [log.iter_events(**filters)]
                chains += [iter_records(d, where=where) for d in dirs]
                return int(export_events(merge_by_time(chains), out, format=fmt))

            async for part in self._stream_export(write):
                yield part
        finally:
            tmp.cleanup()

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
