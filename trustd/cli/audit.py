"""trustd audit export|verify|tail"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import client, views
from trustd.cli.client import ServerError
from trustd.cli.common import CheckFailed, OutputOpt, call, fmt, state
from trustd.cli.output import Format, emit
from trustd.errors import TrustdError

app = typer.Typer(
    help="The tamper-evident audit log: verify it, export it to a SIEM, follow it.",
    no_args_is_help=True,
)


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    ocsf = "ocsf"
    cef = "cef"


@app.command("verify")
def verify(
    ctx: typer.Context,
    output: OutputOpt = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="read the files with the server stopped: no head to compare with, so whole events cut after the newest checkpoint (a crash skips the one signed at shutdown) go unseen",
        ),
    ] = False,
    config: Annotated[
        str | None, typer.Option("--config", help="with --offline: the server's config file (YAML)")
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir",
            envvar="TRUSTD_DATA_DIR",
            help="with --offline: the server's data directory",
        ),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]", help="with --offline: a copied audit directory, checked with --keys"
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys", help="with --offline DIR: the audit public keys from `trustd audit keys`"
        ),
    ] = None,
) -> None:
    """Check the hash chain, the signed checkpoints and the running server's head; exit 3 naming the first damaged seq."""
    if (directory is not None or keys is not None) and not offline:
        raise typer.BadParameter("DIR and --keys are for --offline", param_hint="--offline")
    if offline and directory is not None:
        if keys is None:
            raise typer.BadParameter(
                "a copied log is checked against audit public keys kept apart from it: "
                "pass --keys FILE (saved from `trustd audit keys -o json`)",
                param_hint="--keys",
            )
        report = _verify_copy(directory, keys)
    elif offline:
        with _progress("verifying"):
            report = _verify_offline(config, data_dir)
    else:
        if config is not None:
            raise typer.BadParameter("--config is for --offline", param_hint="--config")
        try:
            with _progress("verifying"):
                report = views.verified(call(ctx, "AuditVerify"))
        except ServerError as exc:
            if exc.status is not None:
                raise
            raise ServerError(
                f"{exc}; with the server stopped, use trustd audit verify --offline"
            ) from None
    f = fmt(ctx, output)
    if not f.tabular:
        emit(report, f)
    else:
        _print_verified(report)
    if not report["ok"]:
        seq = report.get("first_bad_seq")
        raise CheckFailed(
            f"audit log damaged at seq {seq}: {report['problem']}"
            if seq is not None
            else f"audit log damaged: {report['problem']}"
        )


def _print_verified(report: dict[str, Any]) -> None:
    """The table form of a verify report: one line, or one per chain with several servers."""
    if report.get("servers"):  # several servers on one PostgreSQL: one line per chain
        head = report.get("head_seq")
        own = report["problem"]
        if own.startswith("the chain of server "):
            own = ""  # the top-level problem names a mirrored chain, reported below
        typer.echo(
            f"{report.get('server_id') or 'this server'} (this server): "
            + (f"damaged: {own}" if own else
               f"ok: {report['events_checked']} events (seq {report['first_seq']}..{report['last_seq']}), "
               f"{report['checkpoints_checked']} signed checkpoints"
               + (f", head (seq {head}) on disk" if head is not None else ""))
        )  # fmt: skip
        for o in report["servers"]:
            typer.echo(
                f"{o['server_id']} (mirrored): "
                + (f"ok: {o['events_checked']} events (seq {o['first_seq']}..{o['last_seq']}), "
                   f"{o['checkpoints_checked']} signed checkpoints"
                   if o["ok"] else f"damaged at seq {o['first_bad_seq']}: {o['problem']}")
            )  # fmt: skip
    elif report["ok"]:
        head = report.get("head_seq")
        typer.echo(
            f"ok: {report['events_checked']} events (seq {report['first_seq']}..{report['last_seq']}), "
            f"{report['checkpoints_checked']} signed checkpoints"
            + (f", the running server's head (seq {head}) is on disk" if head is not None else "")
        )


def _verify_copy(directory: Path, keys_file: Path) -> dict[str, Any]:
    """A copied audit directory, checked with exported public keys: no server, no KMS."""
    from trustd.audit.keyring import PublicKeyring
    from trustd.audit.verify import verify as verify_files
    from trustd.cli.main import UsageError

    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory (give the copied D/audit directory)")
    ring = PublicKeyring.load(keys_file)
    with _progress("verifying"):
        report = verify_files(directory, key_manager=ring, trusted_keys=ring.refs)  # type: ignore[arg-type]
    return dataclasses.asdict(report)


@contextlib.contextmanager
def _progress(what: str) -> Iterator[None]:
    """A spinner on a terminal (stderr) while a long check runs; nothing when piped."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(f"{what}..."):
        yield


@app.command("keys")
def keys_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """The audit keys' public keys (JSON): keep them off the host to verify a copied log
    with `trustd audit verify --offline DIR --keys FILE`."""
    f = fmt(ctx, output)
    keys: pb.AuditKeysResponse = call(ctx, "AuditKeys")
    emit(json.loads(keys.keys), f if not f.tabular else Format.json)


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
        raise FailedPreconditionError(
            f"there is no audit log in {directory}: pass the server's --config or --data-dir"
        )
    if in_use(directory):
        raise FailedPreconditionError(
            f"the audit log in {directory} is open in a running trustd: verify through it "
            "(without --offline), which also compares the files with the head it wrote"
        )
    km = cfg.key_manager
    if isinstance(km, LocalKeyManagerConfig) and km.kek_file is None:
        # read the key-encryption key the server created; never create one here
        cfg = cfg.model_copy(
            update={"key_manager": km.model_copy(update={"kek_file": str(cfg.data_path / "kek")})}
        )
    return dataclasses.asdict(verify_files(directory, key_manager=make_key_manager(cfg)))


@app.command("export")
def export(
    ctx: typer.Context,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl, csv, ocsf or cef")
    ] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option(help="RFC 3339 time, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339 time, exclusive")] = None,
    type_: Annotated[
        list[str] | None, typer.Option("--type", help="event type (or prefix*); repeatable")
    ] = None,
    outcome: Annotated[str | None, typer.Option(help="success or failure")] = None,
    out: Annotated[
        Path | None, typer.Option("-o", "--output-file", help="write here instead of stdout")
    ] = None,
) -> None:
    """Export events for a SIEM. The export itself is audited."""
    import datetime as dt

    from trustd.audit.reader import parse_time
    from trustd.cli.main import UsageError

    for name, value in (("since", since), ("until", until)):
        if value is not None:
            try:  # a local mistake (exit 1), before the server is asked
                parse_time(value, now=dt.datetime.now(dt.UTC))
            except (ValueError, TrustdError) as exc:
                raise UsageError(f"invalid --{name} {value!r}: {exc}") from None
    if outcome is not None and outcome not in ("success", "failure"):
        raise UsageError(f"invalid --outcome {outcome!r}: use success or failure")
    if out is not None:
        if str(out) in {f.value for f in Format}:
            raise UsageError(
                f"audit export -o is the file to write, and {str(out)!r} looks like an output "
                "format: the export format is --format jsonl|csv|ocsf|cef (write to a file with "
                "-o FILE, or leave -o out for stdout)"
            )
        if not out.parent.is_dir():
            raise UsageError(f"-o {out}: the directory {out.parent} does not exist")
        if out.is_dir():
            raise UsageError(f"-o {out}: is a directory; name a file")
    request = pb.ExportAuditRequest(
        format=format_.value,
        since=since or "",
        until=until or "",
        types=type_ or [],
        outcome=outcome or "",
    )
    asyncio.run(_export(state(ctx).admin_socket, request, out))


async def _export(socket: Path, request: pb.ExportAuditRequest, out: Path | None) -> None:
    from rich.progress import Progress

    sink = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    progress: Progress | None = None
    task: Any = None
    written = 0
    try:
        msg: pb.ExportAuditChunk
        async for msg in client.stream(socket, "AuditExport", request):
            part = msg.WhichOneof("part")
            if part == "total":
                if out is not None and sys.stderr.isatty() and msg.total > 10_000:
                    progress = Progress(transient=True)
                    progress.start()
                    task = progress.add_task("exporting", total=msg.total)
            elif part == "data":
                sink.write(msg.data)
                if progress is not None:
                    written += msg.data.count("\n")
                    progress.update(task, completed=written)
            elif part == "done" and out is not None:
                sys.stderr.write(f"exported {msg.done} events to {out}\n")
    finally:
        if progress is not None:
            progress.stop()
        if out is not None:
            sink.close()


@app.command("tail")
def tail(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="keep printing new events")
    ] = False,
    last: Annotated[int, typer.Option("-n", help="how many recent events first")] = 10,
    output: OutputOpt = None,
) -> None:
    """The newest events (JSON lines, as stored; -o table: one short line each); -f follows."""
    explicit = output is not None or state(ctx).output is not Format.table
    f = fmt(ctx, output) if explicit else Format.json

    async def run() -> None:
        msg: pb.AuditLine
        request = pb.TailAuditRequest(follow=follow, last=last)
        async for msg in client.stream(state(ctx).admin_socket, "AuditTail", request):
            if f is Format.json:
                sys.stdout.write(msg.line + "\n")
            elif f is Format.yaml:
                import json

                import yaml

                sys.stdout.write(
                    yaml.safe_dump(json.loads(msg.line), sort_keys=False, explicit_start=True)
                )
            else:
                import json

                e = json.loads(msg.line)
                actor = e["actor"]["id"] + (
                    f" (uid {e['actor']['uid']})" if e["actor"].get("uid") is not None else ""
                )
                sys.stdout.write(
                    f"{e['seq']}\t{e['time']}\t{e['type']}\t{e['outcome']}\t{actor}\t{e['resource']}"
                    + (f"\t{e['reason']}" if e.get("reason") else "")
                    + "\n"
                )
            sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


__all__ = ["app"]
