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
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_BAD = "use forms like 90s, 10m, 1h, 1h30m, 7d"


def parse(text: str) -> dt.timedelta:
    """Parse a duration. A bare number means seconds. Raises ValueError on anything else.

    As in Go, one sign may lead the whole duration ('-1h30m'); parts carry none.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    shown = s if len(s) <= 40 else s[:37] + "..."
    sign = -1 if s[0] == "-" else 1
    body = s[1:] if s[0] in "+-" else s
    try:
        if re.fullmatch(r"[0-9]+", body):
            return sign * dt.timedelta(seconds=int(body))
        pos = 0
        total = dt.timedelta()
        for m in _PART.finditer(body):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not body or pos != len(body):
            raise ValueError(f"invalid duration {shown!r}: {_BAD}")
        return sign * total
    except OverflowError:
        raise ValueError(f"duration {shown!r} is too long: {_BAD}") from None


def format(delta: dt.timedelta) -> str:
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
