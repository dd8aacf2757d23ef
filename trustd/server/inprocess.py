"""The agent's upstream when server and agent share a process (``trustd up``).

Same contract as the remote agent API: entries as a snapshot then deltas,
bundles on every change, CSRs signed by the server's issuer, JWT-SVIDs by its
JWT key. Blocking work (store, key manager) runs in the server's thread pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from trustd.agent.upstream import (
    BundleUpdate,
    EntryUpdate,
    JwtSvidRequest,
    SignedJwtSvid,
    SignedSvid,
    SvidRequest,
)
from trustd.bundle import Bundle
from trustd.entries import RegistrationEntry
from trustd.errors import NotFoundError, PermissionDeniedError, TrustdError, UnavailableError
from trustd.server import core as core_mod
from trustd.server.audit_hook import Actor
from trustd.server.changes import ChangeHub
from trustd.server.core import ServerCore

T = TypeVar("T")
FALLBACK_RECHECK = 5.0  # seconds: catches changes written by another server


def bundle_update(bundle: Bundle) -> BundleUpdate:
    return BundleUpdate(
        bundles=(bundle,),
        tainted_key_ids=frozenset(bytes.fromhex(k) for k in bundle.tainted_key_ids),
    )


class ServerUpstream:
    """Serves one agent identity (``actor``) from a ServerCore."""

    def __init__(
        self, core: ServerCore, hub: ChangeHub, executor: Executor | None, actor: Actor
    ) -> None:
        self.core = core
        self.hub = hub
        self.executor = executor
        self.actor = actor
        # the agent's id: the last part of spiffe://TD/trustd/agent/<id>
        self.agent_id = actor.id.rsplit("/trustd/agent/", 1)[-1]

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    async def watch_entries(self, *, since_revision: int | None) -> AsyncIterator[EntryUpdate]:
        store = self.core.store
        seen = self.hub.version("entries")
        try:
            if since_revision is None:
                head, _ = await self._run(store.entry_changes_since, 2**62)
                entries = await self._run(store.list_entries)
                revision = int(head)
                mine = tuple(e for e in entries if e.served_by(self.agent_id))
                yield EntryUpdate(revision=revision, full=True, upserted=mine)
            else:
                revision = since_revision
            while True:
                head, changes = await self._run(store.entry_changes_since, revision)
                if changes:
                    # only this agent's entries; one it may no longer serve is removed for it
                    yield EntryUpdate(
                        revision=int(head),
                        full=False,
                        upserted=tuple(
                            c.entry
                            for c in changes
                            if c.entry is not None and c.entry.served_by(self.agent_id)
                        ),
                        removed=tuple(
                            c.entry_id
                            for c in changes
                            if c.entry is None or not c.entry.served_by(self.agent_id)
                        ),
                    )
                    revision = int(head)
                seen = await self.hub.wait("entries", seen, FALLBACK_RECHECK)
        except TrustdError as exc:
            raise UnavailableError(f"entry sync failed: {exc}") from exc

    async def watch_bundles(self) -> AsyncIterator[BundleUpdate]:
        seen = self.hub.version("bundle")
        last_seq = -1
        while True:
            try:
                bundle = await self._run(self.core.bundle)
            except TrustdError as exc:
                raise UnavailableError(f"bundle sync failed: {exc}") from exc
            if bundle.sequence != last_seq:
                last_seq = bundle.sequence
                yield bundle_update(bundle)
            seen = await self.hub.wait("bundle", seen, FALLBACK_RECHECK)

    def _served_entry(self, entry_id: str) -> RegistrationEntry:
        try:
            entry = self.core.store.get_entry(entry_id)
        except NotFoundError:
            raise PermissionDeniedError(
                f"entry {entry_id} does not exist (deleted?); this agent may not serve it"
            ) from None
        if not entry.served_by(self.agent_id):
            raise PermissionDeniedError(
                f"entry {entry_id} is pinned to another agent; this agent may not serve it"
            )
        return entry

    def _sign_blocking(self, requests: Sequence[SvidRequest]) -> list[SignedSvid]:
        reqs = []
        for r in requests:
            entry = self._served_entry(r.entry_id)
            reqs.append(core_mod.SvidRequest(entry=entry, csr=r.csr_der))
        results = self.core.issue_svids(self.actor, reqs, source="agent")
        out = []
        for r, res in zip(requests, results, strict=True):
            if isinstance(res, TrustdError):
                raise res
            out.append(
                SignedSvid(
                    entry_id=r.entry_id,
                    cert_chain_der=_without_root(res.chain_der),
                    not_after=res.not_after,
                )
            )
        return out

    async def sign_x509_svids(self, requests: Sequence[SvidRequest]) -> list[SignedSvid]:
        return await self._run(self._sign_blocking, requests)

    def _sign_jwt_blocking(self, request: JwtSvidRequest) -> SignedJwtSvid:
        entry = self._served_entry(request.entry_id)
        svid = self.core.issue_jwt_svid(
            self.actor, entry=entry, audience=request.audience, source="agent"
        )
        return SignedJwtSvid(
            entry_id=request.entry_id,
            token=svid.token,
            issued_at=svid.issued_at,
            expires_at=svid.expires_at,
        )

    async def sign_jwt_svid(self, request: JwtSvidRequest) -> SignedJwtSvid:
        return await self._run(self._sign_jwt_blocking, request)


def _without_root(chain: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Leaf first, then intermediates; a self-signed CA at the end is left out (it is in the bundle)."""
    from cryptography import x509

    if len(chain) <= 1:
        return chain
    last = x509.load_der_x509_certificate(chain[-1])
    if last.issuer == last.subject:
        return chain[:-1]
    return chain


class PolicyUpstreamInProcess:
    """The agent's policy relay wired straight into the server's policy plane."""

    def __init__(self, plane: Any, hub: ChangeHub, actor: Actor) -> None:
        self.plane = plane
        self.hub = hub
        self.actor = actor

    async def watch_policy(self) -> AsyncIterator[dict[str, Any]]:
        seen = self.hub.version("policy")
        last = -1
        while True:
            current = self.plane.current()
            if current.version != last:
                last = current.version
                yield current.to_json()
            seen = await self.hub.wait("policy", seen, FALLBACK_RECHECK)

    async def send_policy_reports(
        self,
        *,
        acks: list[tuple[str, int]],
        statuses: list[dict[str, Any]],
        denials: list[dict[str, Any]],
    ) -> None:
        apply_policy_reports(self.plane, self.actor, acks=acks, statuses=statuses, denials=denials)


def apply_policy_reports(
    plane: Any,
    actor: Actor,
    *,
    acks: list[tuple[str, int]],
    statuses: list[dict[str, Any]],
    denials: list[dict[str, Any]],
) -> None:
    from trustd.policy.status import ProxyStatus

    for proxy_id, version in acks:
        plane.ack(proxy_id, version)
    for doc in statuses:
        try:
            plane.report(ProxyStatus.from_json(doc))
        except (ValueError, KeyError, TypeError, TrustdError):
            continue  # a malformed report is dropped, never fatal
    for event in denials:
        plane.denial(actor, event)
