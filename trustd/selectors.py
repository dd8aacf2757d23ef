"""Workload selectors (SPEC §5) and the kernel-attested caller they are matched against.

``unix:uid:N``, ``unix:gid:N``, ``unix:user:NAME``, ``unix:group:NAME`` and
``unix:path:/abs/exe``. An entry matches a caller when every one of its
selectors matches.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
from dataclasses import dataclass, field

from trustd.errors import InvalidArgumentError

SELECTOR_TYPES = ("uid", "gid", "user", "group", "path")


class InvalidSelectorError(InvalidArgumentError):
    pass


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    type: str  # the attestor: "unix"
    key: str  # "uid", "gid", "user", "group" or "path"
    value: str  # e.g. "1000", "/usr/bin/envoy"

    @classmethod
    def parse(cls, text: str) -> Selector:
        parts = text.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise InvalidSelectorError(
                f"invalid selector {text[:80]!r}: expected TYPE:KEY:VALUE, e.g. unix:uid:1000"
            )
        typ, key, value = parts
        if typ != "unix":
            raise InvalidSelectorError(
                f"unknown selector type {typ!r} in {text[:80]!r}: the supported type is 'unix'"
            )
        if key not in SELECTOR_TYPES:
            raise InvalidSelectorError(
                f"unknown unix selector {key!r} in {text[:80]!r}: "
                f"use one of {', '.join(SELECTOR_TYPES)}"
            )
        if key in ("uid", "gid") and not (value.isdigit() and int(value) < 2**32):
            raise InvalidSelectorError(
                f"invalid selector {text[:80]!r}: {key} must be a whole number from 0 to "
                f"4294967295{' (uids and gids are never negative)' if value.startswith('-') else ''}"
            )
        if key == "path" and not value.startswith("/"):
            raise InvalidSelectorError(
                f"invalid selector {text[:80]!r}: path must be an absolute path"
            )
        return cls(typ, key, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.key}:{self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """A process on a Unix socket, as the kernel reports it (SO_PEERCRED).

    Never built from anything the caller says about itself.
    """

    uid: int  # effective uid at connect()
    gid: int  # effective gid at connect()
    pid: int  # pid at connect(); /proc/PID/exe is only trusted while it is the same process
    exe: str | None = None  # resolved /proc/PID/exe, or None when it could not be read safely
    supplementary_gids: frozenset[int] = field(default_factory=frozenset)  # from /proc/PID/status

    def selectors(self) -> frozenset[Selector]:
        """Every selector this caller satisfies."""
        out = {Selector("unix", "uid", str(self.uid)), Selector("unix", "gid", str(self.gid))}
        with contextlib.suppress(KeyError):  # a uid with no passwd entry has no user name
            out.add(Selector("unix", "user", pwd.getpwuid(self.uid).pw_name))
        for gid in {self.gid, *self.supplementary_gids}:
            out.add(Selector("unix", "gid", str(gid)))
            with contextlib.suppress(KeyError):
                out.add(Selector("unix", "group", grp.getgrgid(gid).gr_name))
        if self.exe:
            out.add(Selector("unix", "path", self.exe))
        return frozenset(out)


def matches(entry_selectors: frozenset[Selector] | tuple[Selector, ...], caller: Caller) -> bool:
    """True when every selector of the entry holds for the caller (and there is at least one)."""
    if not entry_selectors:
        return False
    have = caller.selectors()
    return all(s in have for s in entry_selectors)
