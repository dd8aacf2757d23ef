"""trustd entry create|list|show|delete"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.api.types.v1 import types_pb2
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import emit

if TYPE_CHECKING:
    from trustd.entries import RegistrationEntry
    from trustd.selectors import Caller

app = typer.Typer(
    help="Register workloads: which selectors get which SPIFFE ID.", no_args_is_help=True
)
COLUMNS = ["id", "spiffe_id", "selectors", "ttl", "dns_names", "agent_id"]
NARROW = ["id", "spiffe_id", "selectors", "ttl"]
EXTRA = ["revision", "created_at"]


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
    federates_with: Annotated[
        list[str] | None,
        typer.Option(
            "--federates-with",
            help="a federated trust domain (spiffe://other.td) whose bundle the workload "
            "gets; repeatable",
        ),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Register a workload; prints the entry id."""
    from trustd.cli.main import parse_ttl
    from trustd.selectors import Selector
    from trustd.spiffeid import SpiffeId

    SpiffeId.parse(spiffe_id)  # validated here first: a bad ID is a local error (exit 1)
    from trustd.dnsnames import check_dns_name

    for name in dns or []:
        check_dns_name(name)
    for s in selector:
        Selector.parse(s)
    from trustd.spiffeid import TrustDomain

    for td in federates_with or []:
        TrustDomain.parse(td)
    request = pb.CreateEntryRequest(
        spiffe_id=spiffe_id,
        selectors=selector,
        ttl_seconds=parse_ttl(ttl),
        dns_names=dns or [],
        agent_id=agent,
        federates_with=federates_with or [],
    )
    entry: types_pb2.Entry = call(ctx, "EntryCreate", request)
    f = fmt(ctx, output)
    if f.tabular:
        typer.echo(entry.id)
    else:
        emit(views.entry(entry), f)
    _warn_overlaps(ctx, entry)


def _all_entries(ctx: typer.Context) -> list[RegistrationEntry]:
    from trustd.api.convert import entry_of

    listed: pb.ListEntriesResponse = call(ctx, "EntryList")
    return [entry_of(e) for e in listed.entries]


def _warn_overlaps(ctx: typer.Context, created: types_pb2.Entry) -> None:
    """On stderr: the entries a process could match together with the new one, and which
    identity such a process gets as ``default`` (the older entry's)."""
    from trustd.api.convert import entry_of
    from trustd.entries import default_order, may_overlap

    new = entry_of(created)
    others = _all_entries(ctx)
    for other in sorted(others, key=default_order):
        if other.id == new.id or not may_overlap(new.selectors, other.selectors):
            continue
        first = min((new, other), key=default_order)
        typer.echo(
            f"warning: a process matching both this entry ({', '.join(map(str, new.selectors))}) "
            f"and entry {other.id} ({other.spiffe_id}: {', '.join(map(str, other.selectors))}) "
            f"gets {first.spiffe_id} as its default SVID (the older entry); "
            "make the selectors disjoint (e.g. by uid) or check with `trustd entry show --caller`",
            err=True,
        )


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List registration entries."""
    emit(
        views.entries(call(ctx, "EntryList")),
        fmt(ctx, output),
        columns=COLUMNS,
        rows_key="entries",
        narrow=NARROW,
        extra=EXTRA,
    )


@app.command("show")
def show(
    ctx: typer.Context,
    entry_id: Annotated[str | None, typer.Argument(metavar="ID")] = None,
    caller: Annotated[
        str | None,
        typer.Option(
            "--caller",
            help="which identity a process would get: PID, pid:N, uid:N or user:NAME (this host)",
        ),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Show one entry, or (--caller) the entries a process matches, default first."""
    f = fmt(ctx, output)
    if caller is None:
        if entry_id is None:
            raise typer.BadParameter("give an entry ID, or --caller PID|uid:N")
        emit(
            views.entry(call(ctx, "EntryShow", pb.EntryIdRequest(id=entry_id))),
            f,
            columns=COLUMNS,
            narrow=NARROW,
            extra=EXTRA,
        )
        return
    if entry_id is not None:
        raise typer.BadParameter("give an entry ID or --caller, not both")
    who = _caller(caller)
    from trustd.entries import entries_for

    found = entries_for(_all_entries(ctx), who)
    result = {
        "caller": {
            "pid": who.pid or None,
            "uid": who.uid,
            "gid": who.gid,
            "groups": sorted(who.supplementary_gids),
            "exe": who.exe,
        },
        "default": found[0].to_json() if found else None,
        "entries": [e.to_json() for e in found],
    }
    if not f.tabular:
        emit(result, f)
        return
    desc = f"pid {who.pid}" if who.pid else f"uid {who.uid}"
    typer.echo(
        f"{desc}: uid {who.uid}, gid {who.gid}, groups {','.join(map(str, sorted(who.supplementary_gids))) or '-'}"
        + (f", exe {who.exe}" if who.exe else "")
    )
    if not found:
        typer.echo("no entry matches: the agent gives it no SVID")
        return
    typer.echo(f"default SVID: {found[0].spiffe_id} (entry {found[0].id})")
    rows = [{**e.to_json(), "default": i == 0} for i, e in enumerate(found)]
    emit(
        {"entries": rows},
        f,
        columns=["id", "spiffe_id", "selectors", "default"],
        rows_key="entries",
        narrow=["id", "spiffe_id", "default", "selectors"],
        extra=[c for c in COLUMNS + EXTRA if c not in ("id", "spiffe_id", "selectors")],
    )


def _caller(text: str) -> Caller:
    from trustd.agent.attestation import describe_process, describe_uid

    kind, _, value = text.rpartition(":")
    kind = kind or "pid"
    if kind == "user":
        import pwd

        try:
            return describe_uid(pwd.getpwnam(value).pw_uid)
        except KeyError:
            raise typer.BadParameter(f"no user named {value!r} on this host") from None
    if kind not in ("pid", "uid") or not value.isdigit():
        raise typer.BadParameter(f"invalid --caller {text!r}: use PID, pid:N, uid:N or user:NAME")
    return describe_process(int(value)) if kind == "pid" else describe_uid(int(value))


@app.command("delete")
def delete(
    ctx: typer.Context,
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    output: OutputOpt = None,
) -> None:
    """Delete an entry; agents stop serving its SVID."""
    emit(
        views.entry(call(ctx, "EntryDelete", pb.EntryIdRequest(id=entry_id))),
        fmt(ctx, output),
        columns=COLUMNS,
        narrow=NARROW,
        extra=EXTRA,
    )
