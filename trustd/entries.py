"""Registration entries: which workload (selectors) gets which SPIFFE ID."""

from __future__ import annotations

import contextlib
import datetime as dt
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trustd.selectors import Caller, Selector, matches
from trustd.spiffeid import SpiffeId, TrustDomain


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationEntry:
    id: str  # server-assigned, opaque (UUID4 text)
    spiffe_id: SpiffeId  # the identity every SVID for this entry carries
    selectors: tuple[Selector, ...]  # all must match the caller; sorted, no duplicates
    ttl: dt.timedelta | None = None  # SVID TTL; None means the server's default
    dns_names: tuple[str, ...] = ()  # extra DNS SANs (the first URI SAN stays the SPIFFE ID)
    revision: int = 0  # bumped on every change; agents sync by revision
    agent_id: str | None = None  # only this agent (node) may serve it; None: every agent
    created_at: dt.datetime = field(  # when it was registered
        default_factory=lambda: dt.datetime.now(dt.UTC)
    )
    # foreign trust domains whose bundles its workloads get (SPIRE's federates_with); sorted
    federates_with: tuple[TrustDomain, ...] = ()

    def served_by(self, agent_id: str) -> bool:
        """Whether the agent with this id may serve the entry."""
        return self.agent_id is None or self.agent_id == agent_id

    def matches(self, caller: Caller) -> bool:
        return matches(self.selectors, caller)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "spiffe_id": str(self.spiffe_id),
            "selectors": [str(s) for s in self.selectors],
            "ttl": int(self.ttl.total_seconds()) if self.ttl else None,
            "dns_names": list(self.dns_names),
            "revision": self.revision,
            "agent_id": self.agent_id,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "federates_with": [str(td.id) for td in self.federates_with],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RegistrationEntry:
        ttl = data.get("ttl")
        created = str(data.get("created_at") or "")
        return cls(
            id=str(data["id"]),
            spiffe_id=SpiffeId.parse(str(data["spiffe_id"])),
            selectors=tuple(Selector.parse(str(s)) for s in data["selectors"]),  # type: ignore[attr-defined]
            ttl=dt.timedelta(seconds=int(str(ttl))) if ttl is not None else None,
            dns_names=tuple(str(d) for d in data.get("dns_names") or ()),  # type: ignore[attr-defined]
            revision=int(str(data.get("revision", 0))),
            agent_id=str(data["agent_id"]) if data.get("agent_id") else None,
            created_at=(
                dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
                if created
                else dt.datetime.now(dt.UTC)
            ),
            federates_with=tuple(
                TrustDomain.parse(str(td))
                for td in data.get("federates_with") or ()  # type: ignore[attr-defined]
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SvidRequest:
    """What the issuer is asked for: an SVID for this entry, for the key in this CSR."""

    entry: RegistrationEntry  # the identity comes from here only
    csr: bytes  # PEM or DER; only its public key is used


def default_order(entry: RegistrationEntry) -> tuple[dt.datetime, int, str]:
    """How a caller's entries are ordered: the first is its ``default`` SVID, as the agent
    serves them. The oldest entry first; ``created_at`` is kept to the second, so among
    entries of the same second the registry's revision (which grows with every change)
    tells which came first."""
    return (entry.created_at, entry.revision, entry.id)


def entries_for(entries: Iterable[RegistrationEntry], caller: Caller) -> list[RegistrationEntry]:
    """The entries a caller matches, ``default`` first."""
    return sorted((e for e in entries if e.matches(caller)), key=default_order)


def _uid_of(selector: Selector) -> str | None:
    """The uid a uid or user selector pins, as text (None: another kind, or an unknown user)."""
    if selector.key == "uid":
        return selector.value
    if selector.key == "user":
        with contextlib.suppress(KeyError):
            return str(pwd.getpwnam(selector.value).pw_uid)
        return f"user:{selector.value}"  # unknown here: compared by name
    return None


def may_overlap(a: Sequence[Selector], b: Sequence[Selector]) -> bool:
    """Could one process match both selector sets?

    A process has exactly one uid and one executable, so two sets that pin different
    uids (``uid`` or ``user``) or different paths never meet. It has one primary and
    any number of supplementary groups, so group selectors never keep two sets apart.
    """
    if not a or not b:
        return False
    for pin in (_uid_of, lambda s: s.value if s.key == "path" else None):
        left = {v for s in a if (v := pin(s)) is not None}
        right = {v for s in b if (v := pin(s)) is not None}
        if left and right and left != right:
            return False
    return True
