"""The agent's only way to its server: entries, bundles and CSR signing.

Two implementations are planned: an in-process one (``trustd up`` runs server
and agent in one asyncio loop) and a remote one (gRPC over mTLS to ``trustd
server``). The agent treats both the same way:

- ``watch_entries`` and ``watch_bundles`` are long-lived async iterators. The
  first item of each is the full current state; later items are changes. When
  the server goes away the iterator raises (``UnavailableError`` preferably) and
  the agent calls it again after a backoff, passing the last entry revision it
  holds so the server can send only what changed since.
- ``sign_x509_svids`` receives CSRs made by the agent (the key never leaves the
  agent) and returns the signed chains in the same order. It raises
  ``UnavailableError`` when the server or its KMS is down; the agent keeps
  serving what it holds and retries with backoff.
- ``sign_jwt_svid`` asks the server for a JWT-SVID of one entry for an
  audience; the server signs it with its JWT key (in its key manager).

The server decides the identity from the registration entry, never from the
CSR: the agent still checks that what comes back carries the entry's SPIFFE ID
and the CSR's public key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trustd.bundle import Bundle
from trustd.ca.issuer import IssuedSvid
from trustd.entries import RegistrationEntry


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryUpdate:
    """One message of the entry watch: a full snapshot or a set of changes."""

    revision: int  # the server's entry revision after this update; passed back on reconnect
    full: bool  # True: ``upserted`` is the complete set, anything not in it is gone
    upserted: tuple[RegistrationEntry, ...] = ()  # entries added or changed
    removed: tuple[str, ...] = ()  # ids of entries removed (ignored when ``full``)


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleUpdate:
    """One message of the bundle watch: always the complete set of bundles."""

    bundles: tuple[Bundle, ...]  # own trust domain's bundle and every federated one
    # Subject key identifiers of CA certificates that must stop being used (tainted or being
    # revoked): SVIDs whose chain contains one of them are re-signed at once, not at half life.
    tainted_key_ids: frozenset[bytes] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class SvidRequest:
    """A CSR for one registration entry."""

    entry_id: str  # which entry the SVID is for; the server takes the identity from it
    csr_der: bytes  # PKCS#10, DER; only its public key is used by the server


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSvidRequest:
    """A JWT-SVID for one registration entry and audience."""

    entry_id: str  # which entry; the server takes the SPIFFE ID from it
    audience: tuple[str, ...]  # the ``aud`` claim, at least one value


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedJwtSvid:
    """The server's answer to a ``JwtSvidRequest``. ``token`` is a bearer secret."""

    entry_id: str  # the entry it was signed for
    token: str = field(repr=False)  # JWS compact serialization
    issued_at: dt.datetime  # ``iat``, timezone-aware UTC
    expires_at: dt.datetime  # ``exp``, timezone-aware UTC


class Upstream(Protocol):
    """What the agent needs from its server. All methods are safe to call concurrently."""

    def watch_entries(self, *, since_revision: int | None) -> AsyncIterator[EntryUpdate]:
        """Entries this agent may serve: first a snapshot (or the changes since
        ``since_revision`` when the server still has them), then changes as they happen."""
        ...

    def watch_bundles(self) -> AsyncIterator[BundleUpdate]:
        """The trust bundles: the current set first, then the new set on every change."""
        ...

    async def sign_x509_svids(self, requests: Sequence[SvidRequest]) -> list[IssuedSvid]:
        """Sign the CSRs; one answer per request, in order, each with its ``entry_id`` and
        its chain (leaf first, then intermediates; no root). Raises ``UnavailableError``
        when the server cannot sign now and ``PermissionDeniedError`` for an entry this
        agent may not serve."""
        ...

    async def sign_jwt_svid(self, request: JwtSvidRequest) -> SignedJwtSvid:
        """A JWT-SVID for the entry's SPIFFE ID. Raises ``UnavailableError`` when the server
        cannot sign now and ``PermissionDeniedError`` for an entry this agent may not serve."""
        ...
