"""trustd authority list|prepare|activate|taint|revoke|blockers"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import Format, emit

app = typer.Typer(help="Rotate the CA by hand.", no_args_is_help=True)
COLUMNS = ["id", "state", "tainted", "not_after", "key_backend", "upstream"]
NARROW = ["id", "state", "tainted", "not_after"]
EXTRA = ["revoked", "not_before", "key_algorithm", "subject"]


def _emit(result: dict[str, Any], f: Format, rows_key: str | None = None) -> None:
    emit(result, f, columns=COLUMNS, rows_key=rows_key, narrow=NARROW, extra=EXTRA)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List CA slots: prepared, active, old."""
    _emit(views.authorities(call(ctx, "AuthorityList")), fmt(ctx, output), rows_key="authorities")


@app.command("prepare")
def prepare(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Create the next CA; it joins the bundle now and signs nothing yet."""
    _emit(views.authority(call(ctx, "AuthorityPrepare", pb.AuthorityRequest())), fmt(ctx, output))


@app.command("activate")
def activate(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Make the prepared CA sign; the active one becomes old and stays in the bundle."""
    _emit(views.authority(call(ctx, "AuthorityActivate", pb.AuthorityRequest())), fmt(ctx, output))


@app.command("taint")
def taint(
    ctx: typer.Context,
    authority_id: Annotated[str, typer.Argument(metavar="ID")],
    output: OutputOpt = None,
) -> None:
    """Force every SVID signed by an old CA to be reissued."""
    request = pb.AuthorityRequest(id=authority_id)
    _emit(views.authority(call(ctx, "AuthorityTaint", request)), fmt(ctx, output))


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    authority_id: Annotated[str, typer.Argument(metavar="ID")],
    force: Annotated[
        bool, typer.Option(help="even if valid SVIDs it signed were not reissued")
    ] = False,
    output: OutputOpt = None,
) -> None:
    """Drop a tainted CA from the bundle once nothing valid depends on it."""
    request = pb.AuthorityRequest(id=authority_id, force=force)
    _emit(views.authority(call(ctx, "AuthorityRevoke", request)), fmt(ctx, output))


@app.command("blockers")
def blockers(
    ctx: typer.Context,
    authority_id: Annotated[str, typer.Argument(metavar="ID")],
    output: OutputOpt = None,
) -> None:
    """The valid certificates a CA signed that were not reissued: what holds a revoke back."""
    result = views.blockers(call(ctx, "AuthorityBlockers", pb.AuthorityRequest(id=authority_id)))
    emit(
        result,
        fmt(ctx, output),
        columns=["serial", "spiffe_id", "not_after", "holder", "reissued_by_agents"],
        rows_key="certificates",
        narrow=["serial", "spiffe_id", "not_after"],
        extra=["entry_id", "issued_at"],
    )
