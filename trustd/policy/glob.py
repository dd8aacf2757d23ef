"""SPIFFE ID globs: the pattern language of ``spiffeIds`` and ``principals``.

A glob is either ``*`` (any SPIFFE ID) or ``spiffe://`` followed by a trust
domain and path segments, written like a SPIFFE ID, where:

- ``*`` inside a segment (or the trust domain) matches any run of characters
  within that one segment, never a ``/``: ``spiffe://td/ns/*/sa/web``,
  ``spiffe://td/ns/shop/sa/front-*``;
- ``**`` as a whole path segment matches zero or more whole segments:
  ``spiffe://td/ns/shop/**`` matches ``spiffe://td/ns/shop`` and everything
  below it;
- every other character must be one a SPIFFE ID allows (lower-case trust
  domain ``[a-z0-9._-]``, segments ``[A-Za-z0-9._-]``); there is no ``?``,
  no ``[...]`` class and no escaping;
- no empty, ``.`` or ``..`` segment and no trailing ``/``, as in SPIFFE IDs;
  ``**`` mixed with other characters in a segment (``a**``) and ``**`` in the
  trust domain are errors.

Matching is on the whole ID (anchored at both ends) and case-sensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from trustd.policy.errors import InvalidGlobError
from trustd.spiffeid import SCHEME, SpiffeId

_TD_CHARS = re.compile(r"[a-z0-9._*-]+")
_SEG_CHARS = re.compile(r"[A-Za-z0-9._*-]+")
MAX_LENGTH = 2048


def _fail(pattern: str, why: str) -> InvalidGlobError:
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    return InvalidGlobError(f"invalid spiffe id glob {shown!r}: {why}")


def _part(text: str) -> str:
    return "[^/]*".join(re.escape(p) for p in text.split("*"))


@dataclass(frozen=True, slots=True)
class SpiffeGlob:
    """A compiled glob. Build with :meth:`parse`; ``str()`` gives the pattern back."""

    pattern: str  # the text as written, already validated
    _regex: re.Pattern[str] = field(compare=False, repr=False)  # the anchored compiled form

    @classmethod
    def parse(cls, pattern: str) -> SpiffeGlob:
        if not isinstance(pattern, str):
            raise InvalidGlobError("invalid spiffe id glob: expected a string")
        if pattern == "*":
            return cls(pattern, re.compile(r"spiffe://.*", re.DOTALL))
        if len(pattern.encode()) > MAX_LENGTH:
            raise _fail(pattern, f"longer than {MAX_LENGTH} bytes")
        if not pattern.startswith(SCHEME):
            raise _fail(pattern, "start it with 'spiffe://' (or write '*' for any id)")
        rest = pattern[len(SCHEME) :]
        parts = rest.split("/")
        td, segments = parts[0], parts[1:]
        if not td:
            raise _fail(pattern, "the trust domain is missing")
        if "**" in td:
            raise _fail(pattern, "'**' is only allowed as a whole path segment")
        if not _TD_CHARS.fullmatch(td):
            raise _fail(
                pattern,
                "the trust domain may contain only lower-case letters, digits, '.', '-', '_' "
                "and '*' (no port, userinfo, '?' or '[')",
            )
        regex = "spiffe://" + _part(td)
        for seg in segments:
            if seg == "":
                raise _fail(pattern, "empty path segment (double or trailing '/')")
            if seg in (".", ".."):
                raise _fail(pattern, "'.' and '..' path segments are not allowed")
            if seg == "**":
                regex += "(?:/[^/]+)*"
                continue
            if "**" in seg:
                raise _fail(pattern, "'**' is only allowed as a whole path segment")
            if not _SEG_CHARS.fullmatch(seg):
                raise _fail(
                    pattern,
                    "path segments may contain only letters, digits, '.', '-', '_' and '*' "
                    "(no '?', '[', '%' or spaces)",
                )
            regex += "/" + _part(seg)
        return cls(pattern, re.compile(regex))

    @property
    def is_exact(self) -> bool:
        """True when the glob has no wildcard and so names exactly one ID."""
        return "*" not in self.pattern

    def matches(self, spiffe_id: SpiffeId | str) -> bool:
        return self._regex.fullmatch(str(spiffe_id)) is not None

    def __str__(self) -> str:
        return self.pattern


def any_match(globs: tuple[SpiffeGlob, ...], spiffe_id: SpiffeId | str) -> bool:
    return any(g.matches(spiffe_id) for g in globs)
