"""Options and state shared by every CLI noun."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.message import Message

from trustd.api.admin.v1 import admin_pb2
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


def call(ctx: typer.Context, method: str, request: Message | None = None) -> Any:
    """``Admin/<method>``: its response message (``request`` defaults to ``Empty``)."""
    return client.call(state(ctx).admin_socket, method, request or admin_pb2.Empty())


OutputOpt = Annotated[
    Format | None, typer.Option("--output", "-o", help="table, wide (every column), json or yaml")
]


def fmt(ctx: typer.Context, override: Format | None) -> Format:
    return override or state(ctx).output


class CheckFailed(Exception):
    """A check found problems: exit code 3."""
