"""trustd entry create|list|show|delete"""

from __future__ import annotations

from typing import Annotated

import typer

from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import emit

app = typer.Typer(
    help="Register workloads: which selectors get which SPIFFE ID.", no_args_is_help=True
)
COLUMNS = ["id", "spiffe_id", "selectors", "ttl", "dns_names", "agent_id"]


@app.command("create")
def create(
    ctx: typer.Context,
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://TD/path")],
    selector: Annotated[
        list[str], typer.Option("--selector", help="T:K:V, e.g. unix:uid:1000; repeatable")
    ],
    ttl: Annotated[str | None, typer.Option(help="SVID TTL, e.g. 1h")] = None,
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="extra DNS SAN; repeatable")
    ] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="only this agent (node) serves it; default: all")
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Register a workload; prints the entry id."""
    from trustd.cli.main import parse_ttl
    from trustd.selectors import Selector
    from trustd.spiffeid import SpiffeId

    SpiffeId.parse(spiffe_id)  # validated here first: a bad ID is a local error (exit 1)
    for s in selector:
        Selector.parse(s)
    ttl_s = parse_ttl(ttl)
    entry = call(
        ctx,
        "EntryCreate",
        {
            "spiffe_id": spiffe_id,
            "selectors": selector,
            "ttl": ttl_s,
            "dns_names": dns or [],
            "agent_id": agent,
        },
    )
    f = fmt(ctx, output)
    if f.value == "table":
        typer.echo(entry["id"])
    else:
        emit(entry, f)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List registration entries."""
    emit(call(ctx, "EntryList"), fmt(ctx, output), columns=COLUMNS, rows_key="entries")


@app.command("show")
def show(
    ctx: typer.Context,
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    output: OutputOpt = None,
) -> None:
    """Show one entry."""
    emit(call(ctx, "EntryShow", {"id": entry_id}), fmt(ctx, output), columns=COLUMNS)


@app.command("delete")
def delete(
    ctx: typer.Context,
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    output: OutputOpt = None,
) -> None:
    """Delete an entry; agents stop serving its SVID."""
    emit(call(ctx, "EntryDelete", {"id": entry_id}), fmt(ctx, output), columns=COLUMNS)
