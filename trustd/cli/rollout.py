"""trustd rollout start|status|pause|resume|abort"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import Format, emit

app = typer.Typer(
    help="Lossless mTLS rollouts: servers first, clients follow.", no_args_is_help=True
)
COLUMNS = ["id", "state", "step", "phase", "target", "selector", "policyVersion", "waitingFor"]
NARROW = ["id", "state", "step", "phase", "target", "selector"]
EXTRA = ["canary", "canaryInstances", "startedAt", "updatedAt"]


class Target(enum.StrEnum):
    STRICT = "STRICT"
    DISABLE = "DISABLE"


def _show(result: dict[str, Any], f: Format) -> None:
    emit(result, f, columns=COLUMNS, narrow=NARROW, extra=EXTRA)
    if not f.tabular:
        return
    rows = [
        {
            "proxy": e["proxyId"],
            "listener": f"port {e['port']}"
            if e["side"] == "server"
            else f"-> {e['destination']}:{e['port']}",
            "enforced": e.get("enforced") or "unknown",
            "wanted": e.get("wanted") or "(unchanged)",
            "ok": "yes" if e["ok"] else "NO",
        }
        for e in result.get("enforcement") or []
    ]
    if rows:
        typer.echo("")
        emit(
            {"rows": rows},
            f,
            columns=["proxy", "listener", "enforced", "wanted", "ok"],
            rows_key="rows",
        )
    for line in result.get("notEnforced") or []:
        typer.echo(f"not enforced yet: {line}")
    if result.get("reason"):
        typer.echo(f"reason: {result['reason']}")


@app.command("start")
def start(
    ctx: typer.Context,
    selector: Annotated[
        str, typer.Option(help="server SPIFFE ID glob, e.g. spiffe://trustd.local/ns/shop/**")
    ],
    to: Annotated[Target, typer.Option("--to", case_sensitive=False, help="STRICT or DISABLE")],
    canary: Annotated[int, typer.Option(help="instances to change first")] = 0,
    step_timeout: Annotated[str | None, typer.Option("--step-timeout", help="e.g. 5m")] = None,
    output: OutputOpt = None,
) -> None:
    """Start a rollout; each step waits until every affected proxy enforces it."""
    from trustd.cli.main import UsageError
    from trustd.durations import parse
    from trustd.policy.errors import InvalidGlobError
    from trustd.policy.glob import SpiffeGlob

    try:
        SpiffeGlob.parse(selector)  # a bad glob is a local error (exit 1), not the server's
    except InvalidGlobError as exc:
        raise UsageError(str(exc)) from None
    if canary < 0:
        raise UsageError("invalid --canary: use 0 or a positive number of instances")
    if step_timeout is not None:
        try:
            parse(step_timeout)
        except ValueError as exc:
            raise UsageError(f"invalid --step-timeout: {exc}") from None
    request = pb.StartRolloutRequest(
        selector=selector, target=to.value, canary=canary, step_timeout=step_timeout or ""
    )
    result = views.rollout(call(ctx, "RolloutStart", request))
    _show(result, fmt(ctx, output))


def _simple(name: str, method: str, doc: str) -> None:
    def cmd(ctx: typer.Context, output: OutputOpt = None) -> None:
        _show(views.rollout(call(ctx, method)), fmt(ctx, output))

    cmd.__doc__ = doc
    app.command(name)(cmd)


_simple("status", "RolloutStatus", "The current or last rollout: state, step, target.")
_simple("pause", "RolloutPause", "Stop advancing after the current step.")
_simple("resume", "RolloutResume", "Continue a paused or failed rollout.")
_simple("abort", "RolloutAbort", "Roll back to the last safe step.")
