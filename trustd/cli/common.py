"""Options and state shared by every CLI noun."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli import client
from trustd.cli.output import Format


@dataclass
class State:
    admin_socket: Path  # where the server listens for admin calls
    output: Format  # table, wide, json or yaml
    debug: bool  # show tracebacks


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def call(ctx: typer.Context, method: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    return client.call(state(ctx).admin_socket, method, doc)


OutputOpt = Annotated[
    Format | None, typer.Option("--output", "-o", help="table, wide (every column), json or yaml")
]


def fmt(ctx: typer.Context, override: Format | None) -> Format:
    return override or state(ctx).output


class CheckFailed(Exception):
    """A check found problems: exit code 3."""
