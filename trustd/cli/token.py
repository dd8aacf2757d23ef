"""trustd token create"""

from __future__ import annotations

from typing import Annotated

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import emit

app = typer.Typer(help="One-time join tokens for agents.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    ttl: Annotated[str, typer.Option(help="how long it may be used, e.g. 10m")] = "10m",
    output: OutputOpt = None,
) -> None:
    """Create a one-time join token; prints it once (only its HMAC is kept)."""
    from trustd.cli.main import parse_ttl

    result = views.token(
        call(ctx, "TokenCreate", pb.CreateTokenRequest(ttl_seconds=parse_ttl(ttl)))
    )
    f = fmt(ctx, output)
    if f.tabular:
        typer.echo(result["token"])
    else:
        emit(result, f)
