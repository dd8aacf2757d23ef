"""trustd audit export|verify|tail"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli import client
from trustd.cli.client import ServerError
from trustd.cli.common import CheckFailed, OutputOpt, call, fmt, state
from trustd.cli.output import Format, emit

app = typer.Typer(help="The tamper-evident audit log: verify it, export it to a SIEM, follow it.", no_args_is_help=True)


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    ocsf = "ocsf"
    cef = "cef"


@app.command("verify")
def verify(
    ctx: typer.Context,
    output: OutputOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="read the files with the server stopped: no head to compare with, so whole events cut after the newest checkpoint (a crash skips the one signed at shutdown) go unseen")] = False,
    config: Annotated[str | None, typer.Option("--config", help="with --offline: the server's config file (YAML)")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", envvar="TRUSTD_DATA_DIR", help="with --offline: the server's data directory")] = None,
) -> None:
    """Check the hash chain, the signed checkpoints and the running server's head; exit 3 naming the first damaged seq."""
    if offline:
        report = _verify_offline(config, data_dir)
    else:
        if config is not None:
            raise typer.BadParameter("--config is for --offline", param_hint="--config")
        try:
            report = call(ctx, "AuditVerify")
        except ServerError as exc:
            if exc.status is not None:
                raise
            raise ServerError(f"{exc}; with the server stopped, use trustd audit verify --offline") from None
    f = fmt(ctx, output)
    if f is not Format.table:
        emit(report, f)
    elif report["ok"]:
        head = report.get("head_seq")
        typer.echo(
            f"ok: {report['events_checked']} events (seq {report['first_seq']}..{report['last_seq']}), "
            f"{report['checkpoints_checked']} signed checkpoints"
            + (f", the running server's head (seq {head}) is on disk" if head is not None else "")
        )
    if not report["ok"]:
        seq = report.get("first_bad_seq")
        raise CheckFailed(f"audit log damaged at seq {seq}: {report['problem']}" if seq is not None else f"audit log damaged: {report['problem']}")


def _verify_offline(config: str | None, data_dir: str | None) -> dict[str, Any]:
    from trustd.audit.verify import in_use
    from trustd.audit.verify import verify as verify_files
    from trustd.config import LocalKeyManagerConfig, load_server_config
    from trustd.errors import FailedPreconditionError
    from trustd.server.auditing import audit_directory
    from trustd.server.factory import make_key_manager

    cfg = load_server_config(config, {"dataDir": data_dir})
    directory = audit_directory(cfg)
    if not directory.is_dir():
        raise FailedPreconditionError(f"there is no audit log in {directory}: pass the server's --config or --data-dir")
    if in_use(directory):
        raise FailedPreconditionError(
            f"the audit log in {directory} is open in a running trustd: verify through it "
            "(without --offline), which also compares the files with the head it wrote"
        )
    km = cfg.key_manager
    if isinstance(km, LocalKeyManagerConfig) and km.kek_file is None:
        # read the key-encryption key the server created; never create one here
        cfg = cfg.model_copy(update={"key_manager": km.model_copy(update={"kek_file": str(cfg.data_path / "kek")})})
    return dataclasses.asdict(verify_files(directory, key_manager=make_key_manager(cfg)))


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
