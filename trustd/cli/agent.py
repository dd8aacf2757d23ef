"""trustd agent list|evict (admin); `trustd agent --config F` runs a node agent."""

from __future__ import annotations

from typing import Annotated

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import emit

app = typer.Typer(
    help="Run a node agent (--config F), or list and evict agents.",
    invoke_without_command=True,
)
COLUMNS = ["id", "spiffe_id", "not_after", "last_seen", "evicted"]
NARROW = ["id", "not_after", "last_seen", "evicted"]  # the SPIFFE ID ends with the id
EXTRA = ["serial", "joined_at", "hostname"]


@app.callback()
def agent(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", help="agent config file (YAML)")] = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from trustd.cli.run import run_agent

    run_agent(config)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List agents that joined."""
    emit(
        views.agents(call(ctx, "AgentList")),
        fmt(ctx, output),
        columns=COLUMNS,
        rows_key="agents",
        narrow=NARROW,
        extra=EXTRA,
    )


@app.command("evict")
def evict(
    ctx: typer.Context,
    agent_id: Annotated[str, typer.Argument(metavar="ID")],
    output: OutputOpt = None,
) -> None:
    """Cut an agent off: it can no longer sync or get SVIDs signed."""
    emit(views.evicted(call(ctx, "AgentEvict", pb.AgentIdRequest(id=agent_id))), fmt(ctx, output))
