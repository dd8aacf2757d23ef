"""Rendering CLI results: ``-o table|json|yaml``; data on stdout, one error line on stderr."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(
    data: Any, fmt: Format, *, columns: Sequence[str] | None = None, rows_key: str | None = None
) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if fmt is Format.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
        return
    rows = data.get(rows_key, []) if rows_key else [data]
    if not columns:
        columns = list(rows[0].keys()) if rows else []
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Plain, stable columns when piped: tab-separated with a header.
        sys.stdout.write("\t".join(c.upper() for c in columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(_cell(row.get(c)) for c in columns) + "\n")
        return
    table = Table(*[c.upper() for c in columns], box=None, pad_edge=False)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
