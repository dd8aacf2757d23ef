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


_MICROSECOND = dt.timedelta(microseconds=1)
_SIZES = (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000))


def format(delta: dt.timedelta) -> str:
    """Format a duration the way parse reads it back, exactly: '1d1h', '1h30m', '90s' -> '1m30s',
    '1s500ms', '0.25ms'. Zero parts are left out; zero is '0s'."""
    us = delta // _MICROSECOND
    if us == 0:
        return "0s"
    sign = "-" if us < 0 else ""
    us = abs(us)
    out = []
    for unit, size in _SIZES:
        count, us = divmod(us, size)
        if count:
            out.append(f"{count}{unit}")
    if us:
        ms, frac = divmod(us, 1000)
        out.append(f"{ms}.{frac:03d}".rstrip("0") + "ms" if frac else f"{ms}ms")
    return sign + "".join(out)


def approximate(delta: dt.timedelta) -> str:
    """A duration rounded down for reading at a glance: the largest unit, and the next one
    while the largest is below 10 ('45s', '5m30s', '23m', '2h5m', '13h', '3d4h', '40d').
    Still in the form parse reads."""
    secs = abs(delta) // dt.timedelta(seconds=1)
    step = 1
    for size, smaller in ((86_400, 3_600), (3_600, 60), (60, 1)):
        if secs >= size:
            step = size if secs >= 10 * size else smaller
            break
    text = format(dt.timedelta(seconds=secs - secs % step))
    return "-" + text if delta < dt.timedelta(0) and text != "0s" else text
