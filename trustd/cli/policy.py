"""trustd policy apply|show|diff|status|client-tls"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import views
from trustd.cli.common import CheckFailed, OutputOpt, call, fmt
from trustd.cli.output import Format, emit

app = typer.Typer(
    help="mTLS and authorization policy: PeerAuthentication, ClientTLSPolicy and AuthorizationPolicy objects.",
    no_args_is_help=True,
)


def _files(paths: list[Path]) -> list[pb.PolicyFile]:
    """Validate locally first (exit 1 on an invalid file), then send the text to the server."""
    from trustd.policy.loader import expand, load_files

    load_files(paths)  # the same files as below: both expand the paths one way
    files, _ = expand(paths)
    return [pb.PolicyFile(name=str(t), text=t.read_text()) for t in files]


def _print_apply(result: dict[str, Any], f: Format, *, dry_run: bool) -> None:
    if not f.tabular:
        emit(result, f)
        return
    verb = "would publish" if dry_run else ("published" if result["published"] else "unchanged:")
    typer.echo(f"{verb} policy version {result['version']} ({result['hash'][:12]})")
    for line in result["diff"]:
        typer.echo(line)
    for reason in result["forcedReasons"]:
        typer.echo(f"forced past: {reason}")


FileOpt = Annotated[
    list[Path], typer.Option("-f", "--file", help="policy YAML file or directory; repeatable")
]


@app.command("apply")
def apply(
    ctx: typer.Context,
    file: FileOpt,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate and show the change only")
    ] = False,
    force: Annotated[bool, typer.Option(help="apply even if it would drop traffic")] = False,
    prune: Annotated[bool, typer.Option(help="replace all policy with these files")] = False,
    output: OutputOpt = None,
) -> None:
    """Apply policy files; refused with the reason if it would drop traffic."""
    request = pb.ApplyPolicyRequest(files=_files(file), dry_run=dry_run, force=force, prune=prune)
    result = views.applied(call(ctx, "PolicyApply", request))
    _print_apply(result, fmt(ctx, output), dry_run=dry_run)


@app.command("show")
def show(
    ctx: typer.Context,
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="the workload")],
    port: Annotated[int | None, typer.Option(help="a server port", min=1, max=65535)] = None,
    output: OutputOpt = None,
) -> None:
    """The effective policy for a SPIFFE ID (and port)."""
    from trustd.spiffeid import SpiffeId

    SpiffeId.parse(spiffe_id)
    f = fmt(ctx, output)
    result = views.policy_show(
        call(ctx, "PolicyShow", pb.ShowPolicyRequest(spiffe_id=spiffe_id, port=port))
    )
    emit(result, Format.yaml if f.tabular else f)


@app.command("diff")
def diff(
    ctx: typer.Context,
    file: FileOpt,
    prune: Annotated[bool, typer.Option(help="compare as a full replacement")] = False,
    output: OutputOpt = None,
) -> None:
    """What applying the files would change; exit 3 when something would."""
    result = views.policy_diff(
        call(ctx, "PolicyDiff", pb.DiffPolicyRequest(files=_files(file), prune=prune))
    )
    f = fmt(ctx, output)
    if f.tabular:
        for line in result["lines"]:
            typer.echo(line)
    else:
        emit(result, f)
    if not result["empty"]:
        raise CheckFailed("")


@app.command("status")
def status(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Policy version, and which proxies run it."""
    result = views.policy_status(call(ctx, "PolicyStatus"))
    f = fmt(ctx, output)
    if not f.tabular:
        emit(result, f)
        return
    typer.echo(
        f"policy version {result['version']} ({result['hash'][:12]}), "
        f"{len(result['objects'])} objects, client-tls off --global: {result['clientTlsOffGlobal']}"
    )
    rows = [
        {
            "proxy": p.get("proxyId"),
            "spiffe_id": p.get("spiffeId"),
            "acked": p.get("ackedVersion"),
            "plaintext_active": sum(i.get("plaintextActive", 0) for i in p.get("inbound", [])),
        }
        for p in result["proxies"]
    ]
    emit(
        {"rows": rows},
        f,
        columns=["proxy", "spiffe_id", "acked", "plaintext_active"],
        rows_key="rows",
    )
    enforced = [
        {
            "proxy": e["proxyId"],
            "listener": f"port {e['port']}"
            if e["side"] == "server"
            else f"-> {e['destination']}:{e['port']}",
            "enforced": e.get("enforced") or "unknown",
            "policy": e["policy"],
            "traffic": (
                f"plaintext {e.get('plaintextTotal', 0)}, tls {e.get('tlsTotal', 0)}"
                if e["side"] == "server"
                else f"mtls {e.get('mtlsTotal', 0)}, plaintext {e.get('plaintextTotal', 0)}"
            ),
            "agrees": "yes" if e["agrees"] else "NO",
        }
        for e in result.get("enforcement", [])
    ]
    if enforced:
        typer.echo("")
        emit(
            {"rows": enforced},
            f,
            columns=["proxy", "listener", "enforced", "policy", "traffic", "agrees"],
            rows_key="rows",
        )


class OnOff(enum.StrEnum):
    on = "on"
    off = "off"


@app.command("client-tls")
def client_tls(
    ctx: typer.Context,
    state: Annotated[
        OnOff, typer.Argument(help="off: every client falls back to plaintext where allowed")
    ],
    global_: Annotated[bool, typer.Option("--global", help="mesh-wide (the only scope)")] = False,
    force: Annotated[bool, typer.Option(help="even if it would drop traffic")] = False,
    output: OutputOpt = None,
) -> None:
    """The emergency switch: `trustd policy client-tls off --global`."""
    if not global_:
        raise typer.BadParameter("the switch is mesh-wide: add --global")
    request = pb.ClientTlsRequest(off=state is OnOff.off, force=force)
    result = views.applied(call(ctx, "PolicyClientTls", request))
    _print_apply(result, fmt(ctx, output), dry_run=False)
