"""Go-style durations ('1h', '10m', '1h30m', '500ms', '7d'), as operators write them in SPIRE and Vault."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {
    "ms": dt.timedelta(milliseconds=1),
    "s": dt.timedelta(seconds=1),
    "m": dt.timedelta(minutes=1),
    "h": dt.timedelta(hours=1),
    "d": dt.timedelta(days=1),
}
_PART = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse(text: str) -> dt.timedelta:
    """Parse a duration. A bare number means seconds. Raises ValueError on anything else."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if re.fullmatch(r"-?\d+", s):
        return dt.timedelta(seconds=int(s))
    pos = 0
    total = dt.timedelta()
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r}: use forms like 90s, 10m, 1h, 1h30m, 7d")
    return total


def format(delta: dt.timedelta) -> str:  # noqa: A001 - mirrors parse
    """Format a duration the way parse reads it back ('1h30m', '45s')."""
    secs = int(delta.total_seconds())
    if secs == 0:
        return "0s"
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out.append(f"{secs // size}{unit}")
            secs %= size
    return sign + "".join(out)
