"""trustd audit export|verify|tail"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli import client
from trustd.cli.common import CheckFailed, OutputOpt, call, fmt, state
from trustd.cli.output import Format, emit

app = typer.Typer(help="The tamper-evident audit log: verify it, export it to a SIEM, follow it.", no_args_is_help=True)


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    ocsf = "ocsf"
    cef = "cef"


@app.command("verify")
def verify(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Check the hash chain and signed checkpoints; exit 3 naming the first damaged seq."""
    report = call(ctx, "AuditVerify")
    f = fmt(ctx, output)
    if f is not Format.table:
        emit(report, f)
    elif report["ok"]:
        typer.echo(
            f"ok: {report['events_checked']} events (seq {report['first_seq']}..{report['last_seq']}), "
            f"{report['checkpoints_checked']} signed checkpoints"
        )
    if not report["ok"]:
        seq = report.get("first_bad_seq")
        raise CheckFailed(f"audit log damaged at seq {seq}: {report['problem']}" if seq is not None else f"audit log damaged: {report['problem']}")


@app.command("export")
def export(
    ctx: typer.Context,
    format_: Annotated[ExportFormat, typer.Option("--format", help="jsonl, csv, ocsf or cef")] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option(help="RFC 3339 time, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339 time, exclusive")] = None,
    type_: Annotated[list[str] | None, typer.Option("--type", help="event type (or prefix*); repeatable")] = None,
    outcome: Annotated[str | None, typer.Option(help="success or failure")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--output-file", help="write here instead of stdout")] = None,
) -> None:
    """Export events for a SIEM. The export itself is audited."""
    doc = {"format": format_.value, "since": since, "until": until, "types": type_ or [], "outcome": outcome}
    asyncio.run(_export(state(ctx).admin_socket, doc, out))


async def _export(socket: Path, doc: dict[str, Any], out: Path | None) -> None:
    from rich.progress import Progress

    sink = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    progress: Progress | None = None
    task: Any = None
    written = 0
    try:
        async for msg in client.stream(socket, "AuditExport", doc):
            if "total" in msg:
                if out is not None and sys.stderr.isatty() and msg["total"] > 10_000:
                    progress = Progress(transient=True)
                    progress.start()
                    task = progress.add_task("exporting", total=msg["total"])
            elif "data" in msg:
                sink.write(msg["data"])
                if progress is not None:
                    written += msg["data"].count("\n")
                    progress.update(task, completed=written)
            elif "done" in msg and out is not None:
                sys.stderr.write(f"exported {msg['done']} events to {out}\n")
    finally:
        if progress is not None:
            progress.stop()
        if out is not None:
            sink.close()


@app.command("tail")
def tail(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep printing new events")] = False,
    last: Annotated[int, typer.Option("-n", help="how many recent events first")] = 10,
) -> None:
    """The newest events as JSON lines; with -f, follow live events."""

    async def run() -> None:
        async for msg in client.stream(state(ctx).admin_socket, "AuditTail", {"follow": follow, "last": last}):
            sys.stdout.write(msg["event"] + "\n")
            sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


__all__ = ["app"]
