"""SPIFFE IDs and trust domains, validated as the SPIFFE ID specification says.

A SPIFFE ID is ``spiffe://<trust-domain><path>``:

- the trust domain is lower-case ``[a-z0-9.-_]``, with no userinfo or port;
- the path is empty or a series of ``/segment``, each of ``[A-Za-z0-9.-_]``,
  none empty, ``.`` or ``..``, and no trailing ``/``;
- no percent-encoding, query or fragment; at most 2048 bytes in all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trustd.errors import InvalidArgumentError

SCHEME = "spiffe://"
MAX_LENGTH = 2048
_TD_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeIdError(InvalidArgumentError):
    """A SPIFFE ID or trust domain that the specification does not allow."""


def _fail(value: str, why: str) -> InvalidSpiffeIdError:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return InvalidSpiffeIdError(f"invalid spiffe id {shown!r}: {why}")


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    name: str  # e.g. "trustd.local"; already validated

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept a bare name ("example.org") or an ID with no path ("spiffe://example.org")."""
        name = text[len(SCHEME) :] if text.startswith(SCHEME) else text
        if not name:
            raise InvalidSpiffeIdError("invalid trust domain: it is empty")
        if not _TD_RE.fullmatch(name):
            raise InvalidSpiffeIdError(
                f"invalid trust domain {name[:80]!r}: use only lower-case letters, digits, "
                "'.', '-' and '_' (no port, userinfo or path)"
            )
        return cls(name)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own ID, with no path: the SAN of its signing certificates."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    trust_domain: TrustDomain  # the authority part
    path: str  # "" or "/a/b"; already validated

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not isinstance(text, str):
            raise InvalidSpiffeIdError("invalid spiffe id: expected a string")
        if len(text.encode("utf-8")) > MAX_LENGTH:
            raise _fail(text, f"longer than {MAX_LENGTH} bytes")
        if not text.startswith(SCHEME):
            if text.lower().startswith(SCHEME):
                raise _fail(text, "the scheme must be lower-case 'spiffe://'")
            raise _fail(text, "the scheme must be 'spiffe://'")
        rest = text[len(SCHEME) :]
        slash = rest.find("/")
        authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if not authority:
            raise _fail(text, "the trust domain is missing")
        if "@" in authority:
            raise _fail(text, "userinfo is not allowed")
        if ":" in authority:
            raise _fail(text, "a port is not allowed")
        for bad, what in (("%", "percent-encoding"), ("?", "a query"), ("#", "a fragment")):
            if bad in text:
                raise _fail(text, f"{what} is not allowed")
        if not _TD_RE.fullmatch(authority):
            if authority.lower() != authority and _TD_RE.fullmatch(authority.lower()):
                raise _fail(text, "the trust domain must be lower-case")
            raise _fail(
                text, "the trust domain may contain only lower-case letters, digits, '.', '-', '_'"
            )
        if path:
            segments = path[1:].split("/")
            for seg in segments:
                if seg == "":
                    raise _fail(text, "empty path segment (double or trailing '/')")
                if seg in (".", ".."):
                    raise _fail(text, "'.' and '..' path segments are not allowed")
                if not _SEGMENT_RE.fullmatch(seg):
                    raise _fail(
                        text, "path segments may contain only letters, digits, '.', '-' and '_'"
                    )
        return cls(TrustDomain(authority), path)

    def is_member_of(self, td: TrustDomain) -> bool:
        return self.trust_domain == td

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The Kubernetes-style namespace of a '/ns/<namespace>/...' path, if it has one."""
        segs = self.segments
        return segs[1] if len(segs) >= 2 and segs[0] == "ns" else None

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain.name}{self.path}"


def is_valid(text: str) -> bool:
    try:
        SpiffeId.parse(text)
    except InvalidSpiffeIdError:
        return False
    return True
