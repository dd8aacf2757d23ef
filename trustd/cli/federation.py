"""trustd federation create|list|show|delete|refresh"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import emit

app = typer.Typer(
    help="Federate with other trust domains: their bundle endpoints and bundles.",
    no_args_is_help=True,
)
COLUMNS = [
    "trust_domain",
    "profile",
    "endpoint_url",
    "sequence",
    "refreshed_at",
    "last_error",
]
NARROW = ["trust_domain", "profile", "endpoint_url", "sequence", "refreshed_at"]
EXTRA = ["endpoint_spiffe_id", "x509_authorities", "jwt_authorities", "next_refresh_at"]


class Profile(enum.StrEnum):
    https_spiffe = "https_spiffe"
    https_web = "https_web"


def _show(ctx: typer.Context, msg: pb.Federation, output: OutputOpt) -> None:
    f = fmt(ctx, output)
    row = views.federation(msg)
    if f.tabular:
        row = {k: v for k, v in row.items() if k != "bundle"}
    emit(row, f, columns=COLUMNS + EXTRA if f.tabular else None)


@app.command("create")
def create(
    ctx: typer.Context,
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="the foreign trust domain, e.g. other.example")
    ],
    endpoint_url: Annotated[
        str, typer.Option("--endpoint-url", help="https URL of its bundle endpoint")
    ],
    bundle: Annotated[
        Path,
        typer.Option(
            "--bundle",
            help="bootstrap bundle: its 'trustd bundle show --format spiffe' (or PEM CAs)",
        ),
    ],
    profile: Annotated[
        Profile, typer.Option("--profile", help="https_spiffe or https_web")
    ] = Profile.https_spiffe,
    endpoint_spiffe_id: Annotated[
        str | None,
        typer.Option(
            "--endpoint-spiffe-id",
            help="https_spiffe: the SPIFFE ID its endpoint presents, e.g. "
            "spiffe://other.example/trustd/server",
        ),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Federate with a foreign trust domain; its bundle is refreshed on its refresh hint."""
    from trustd.errors import InvalidArgumentError
    from trustd.spiffeid import SpiffeId, TrustDomain

    TrustDomain.parse(trust_domain)  # a bad name is a local error (exit 1)
    if endpoint_spiffe_id:
        SpiffeId.parse(endpoint_spiffe_id)
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(
            f"cannot read the bundle file {bundle}: {exc.strerror}"
        ) from None
    request = pb.CreateFederationRequest(
        trust_domain=trust_domain,
        endpoint_url=endpoint_url,
        profile=profile.value,
        endpoint_spiffe_id=endpoint_spiffe_id or "",
        bundle=data,
    )
    _show(ctx, call(ctx, "FederationCreate", request), output)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Every federation relationship and the sequence of its bundle in force."""
    result = views.federations(call(ctx, "FederationList"))
    f = fmt(ctx, output)
    if f.tabular:
        for row in result["federations"]:
            row.pop("bundle", None)
    emit(result, f, columns=COLUMNS, rows_key="federations", narrow=NARROW, extra=EXTRA)


@app.command("show")
def show(
    ctx: typer.Context,
    trust_domain: Annotated[str, typer.Argument(help="the foreign trust domain")],
    output: OutputOpt = None,
) -> None:
    """One relationship (-o json|yaml: with its bundle in force)."""
    _show(ctx, call(ctx, "FederationShow", pb.FederationRequest(trust_domain=trust_domain)), output)


@app.command("delete")
def delete(
    ctx: typer.Context,
    trust_domain: Annotated[str, typer.Argument(help="the foreign trust domain")],
    output: OutputOpt = None,
) -> None:
    """Stop federating (refused while an entry federates with it)."""
    req = pb.FederationRequest(trust_domain=trust_domain)
    _show(ctx, call(ctx, "FederationDelete", req), output)


@app.command("refresh")
def refresh(
    ctx: typer.Context,
    trust_domain: Annotated[str, typer.Argument(help="the foreign trust domain")],
    output: OutputOpt = None,
) -> None:
    """Fetch its bundle now (exit 2 naming why when it fails or is refused)."""
    req = pb.FederationRequest(trust_domain=trust_domain)
    _show(ctx, call(ctx, "FederationRefresh", req), output)
