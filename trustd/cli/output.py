"""Rendering CLI results: ``-o table|wide|json|yaml``; data on stdout, one error line on stderr.

``table`` and ``wide`` are the human forms. On a terminal ``table`` shows the columns a command
names as its narrow set (dropping trailing ones rather than squeezing an ID), ``wide`` all of
them; times read as ``in 23m`` / ``2h ago`` and TTLs as ``1h``. Piped, both print tab-separated
columns with the exact values (RFC 3339 times, TTLs in seconds), for scripts.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trustd import durations


class Format(enum.StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"

    @property
    def tabular(self) -> bool:
        """table or wide: the same output but for the columns shown."""
        return self in (Format.table, Format.wide)


_CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")
_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_keys(data: Any) -> Any:
    """JSON and YAML output in one case, snake_case, as SPIRE prints and as audit events
    and SPIFFE bundles are written: every camelCase key (``stepIndex``) becomes
    ``step_index``. Keys that are data rather than names (SPIFFE IDs, ``Kind/ns/name``
    refs) contain other characters and are left as they are."""
    if isinstance(data, dict):
        return {
            (_HUMP.sub(r"_\1", k).lower() if isinstance(k, str) and _CAMEL.fullmatch(k) else k): (
                snake_keys(v)
            )
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def clock() -> dt.datetime:
    """What relative times are relative to (a seam for tests)."""
    return dt.datetime.now(dt.UTC)


_GAP = 2  # between two columns: each side's padding of one


def emit(
    data: Any,
    fmt: Format,
    *,
    columns: Sequence[str] | None = None,
    rows_key: str | None = None,
    narrow: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> None:
    """Print ``data`` (one row, or the list under ``rows_key``) in ``fmt``.

    ``columns`` are those ``table`` prints when piped; ``narrow`` (default: ``columns``) those
    it shows on a terminal, the last giving way first; ``wide`` shows ``columns`` and ``extra``.
    """
    if fmt is Format.json:
        sys.stdout.write(json.dumps(snake_keys(data), indent=2, default=str) + "\n")
        return
    if fmt is Format.yaml:
        sys.stdout.write(
            yaml.safe_dump(snake_keys(data), sort_keys=False, default_flow_style=False)
        )
        return
    rows: list[dict[str, Any]] = data.get(rows_key, []) if rows_key else [data]
    if not columns:
        columns = list(rows[0].keys()) if rows else []
    console = Console(highlight=False, soft_wrap=True)
    if fmt is Format.wide:
        shown = [*columns, *(c for c in extra if c not in columns)]
    elif console.is_terminal and narrow is not None:
        shown = list(narrow)
    else:
        shown = list(columns)
    if not console.is_terminal:
        # Plain, stable columns when piped: tab-separated with a header.
        sys.stdout.write("\t".join(c.upper() for c in shown) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(_cell(row.get(c)) for c in shown) + "\n")
        return
    now = clock()
    cells = {c: [_human(c, row.get(c), now) for row in rows] for c in shown}
    widths, console.width = _fit(shown, cells, console.width, drop=fmt is Format.table)
    table = Table(box=None, pad_edge=False)
    for c, w in widths.items():
        table.add_column(c.upper(), overflow="fold", width=w)
    for i in range(len(rows)):
        table.add_row(*(Text(cells[c][i]) for c in widths))
    console.print(table)


def _is_id_column(name: str) -> bool:
    """Columns holding an identifier: never dropped to make room, folded only when wider
    than the terminal."""
    return name in ("id", "serial", "proxy") or name.endswith("_id")


def _is_time_column(name: str) -> bool:
    return name.endswith(("_at", "At")) or name in ("not_after", "not_before", "last_seen")


def _is_duration_column(name: str) -> bool:
    return name == "ttl" or name.endswith("_ttl")


def _fit(
    columns: Sequence[str], cells: dict[str, list[str]], width: int, *, drop: bool
) -> tuple[dict[str, int], int]:
    """The columns to show, each with its width, and the table's width.

    A column other than an ID may wrap between words, never inside one. When that leaves no
    room for them all, ``drop`` (table) leaves out trailing columns other than IDs, and then
    folds the widest IDs over lines; otherwise (wide) the table is wider than ``width``.
    """
    natural = {c: max([cell_len(c), *(cell_len(v) for v in cells[c])]) for c in columns}
    least = {
        c: natural[c]
        if _is_id_column(c)
        else max(cell_len(w) for v in [c, *cells[c]] for w in v.split() or [""])
        for c in columns
    }
    kept = list(columns)

    def room(names: list[str]) -> int:
        return width - _GAP * max(len(names) - 1, 0)

    while drop and sum(least[c] for c in kept) > room(kept):
        droppable = [c for c in kept if not _is_id_column(c)]
        if not droppable:
            break
        kept.remove(droppable[-1])
    widths = {c: natural[c] for c in kept}
    excess = sum(widths.values()) - room(kept)
    while excess > 0:
        slack = [c for c in kept if not _is_id_column(c) and widths[c] > least[c]]
        if not slack:
            break
        widths[max(slack, key=lambda c: widths[c] - least[c])] -= 1
        excess -= 1
    while drop and excess > 0:
        widest = max(kept, key=lambda c: widths[c])
        if widths[widest] <= 1:
            break
        widths[widest] -= 1
        excess -= 1
    return widths, width + max(excess, 0)


def _human(column: str, value: Any, now: dt.datetime) -> str:
    """A cell as a person reads it: relative times, compact durations."""
    if isinstance(value, str) and _is_time_column(column):
        return _relative(value, now)
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and _is_duration_column(column)
    ):
        return durations.format(dt.timedelta(seconds=value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return _cell(value)


def _relative(value: str, now: dt.datetime) -> str:
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is None:
        return value
    delta = when - now
    if abs(delta) < dt.timedelta(seconds=1):
        return "now"
    if delta > dt.timedelta(0):
        return f"in {durations.approximate(delta)}"
    return f"{durations.approximate(-delta)} ago"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
