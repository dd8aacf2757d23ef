"""trustd bundle show"""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer

from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import emit

app = typer.Typer(help="The trust bundle.", no_args_is_help=True)


class BundleFormat(enum.StrEnum):
    pem = "pem"
    spiffe = "spiffe"


@app.command("show")
def show(
    ctx: typer.Context,
    format_: Annotated[
        BundleFormat, typer.Option("--format", help="pem or spiffe")
    ] = BundleFormat.pem,
    output: OutputOpt = None,
) -> None:
    """Print the trust bundle on stdout (-o json|yaml: both forms in one document)."""
    result = views.bundle(call(ctx, "BundleShow"))
    f = fmt(ctx, output)
    if not f.tabular:
        emit(result, f)
    elif format_ is BundleFormat.spiffe:
        typer.echo(json.dumps(result["spiffe"], indent=2))
    else:
        typer.echo(result["pem"], nl=False)
