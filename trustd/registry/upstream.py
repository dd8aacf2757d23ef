"""The registry as an agent sees it: the agent's ``Upstream`` seam, served in-process.

``trustd up`` hands this to its agent directly; the agent API (``trustd.server.
agent_api``) serves a remote agent through the same object, so both agents get
the same entries, bundles and signatures. Blocking work runs in the server's pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

from trustd.agent.upstream import (
    BundleUpdate,
    EntryUpdate,
    JwtSvidRequest,
    SignedJwtSvid,
    SvidRequest,
)
from trustd.audit.events import Actor
from trustd.bundle import Bundle
from trustd.ca.issuer import IssuedSvid
from trustd.errors import TrustdError, UnavailableError
from trustd.registry.agents import agent_id_of

if TYPE_CHECKING:
    from trustd.registry import Registry
    from trustd.server.changes import ChangeHub

T = TypeVar("T")
FALLBACK_RECHECK = 5.0  # seconds: catches changes written by another server


def bundle_update(bundle: Bundle, *federated: Bundle) -> BundleUpdate:
    """The own bundle (whose tainted CAs are named) and the federated ones."""
    return BundleUpdate(
        bundles=(bundle, *federated),
        tainted_key_ids=frozenset(bytes.fromhex(k) for k in bundle.tainted_key_ids),
    )


class RegistryUpstream:
    """Serves one agent identity (``actor``, spiffe://TD/trustd/agent/<id>)."""

    def __init__(
        self, registry: Registry, hub: ChangeHub, executor: Executor | None, actor: Actor
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.executor = executor
        self.actor = actor
        self.agent_id = agent_id_of(actor)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def watch_entries(self, *, since_revision: int | None) -> AsyncIterator[EntryUpdate]:
        entries = self.registry.entries
        seen = self.hub.version("entries")
        try:
            if since_revision is None:
                snapshot = await self._run(entries.snapshot_for, self.agent_id)
                yield snapshot
                revision = snapshot.revision
            else:
                revision = since_revision
            while True:
                update = await self._run(entries.changes_for, self.agent_id, revision)
                if update is not None:
                    yield update
                    revision = update.revision
                seen = await self.hub.wait("entries", seen, FALLBACK_RECHECK)
        except TrustdError as exc:
            raise UnavailableError(f"entry sync failed: {exc}") from exc

    async def watch_bundles(self) -> AsyncIterator[BundleUpdate]:
        seen = self.hub.version("bundle")
        last: tuple[tuple[str, str], ...] = ()
        while True:
            try:
                bundles = await self._run(self.registry.bundles)
            except TrustdError as exc:
                raise UnavailableError(f"bundle sync failed: {exc}") from exc
            # the own bundle's sequence, and which foreign bundles with which content
            current = (
                (bundles[0].trust_domain.name, str(bundles[0].sequence)),
                *((b.trust_domain.name, b.to_spiffe()) for b in bundles[1:]),
            )
            if current != last:
                last = current
                yield bundle_update(*bundles)
            seen = await self.hub.wait("bundle", seen, FALLBACK_RECHECK)

    async def sign_x509_svids(self, requests: Sequence[SvidRequest]) -> list[IssuedSvid]:
        return await self._run(self.registry.agents.sign_svids, self.actor, self.agent_id, requests)

    async def sign_jwt_svid(self, request: JwtSvidRequest) -> SignedJwtSvid:
        svid = await self._run(self.registry.agents.sign_jwt, self.actor, self.agent_id, request)
        return SignedJwtSvid(
            entry_id=request.entry_id,
            token=svid.token,
            issued_at=svid.issued_at,
            expires_at=svid.expires_at,
        )
