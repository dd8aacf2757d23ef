"""JWT-SVIDs the agent holds: one per (SPIFFE ID, audience set), served until half its life.

- The server signs them (``Upstream.sign_jwt_svid``); before serving one, the
  agent validates it against its own trust bundle, as any validator would, and
  checks that it names the entry's SPIFFE ID and exactly the audience asked for.
- Concurrent requests for the same (SPIFFE ID, audience set) share one signing,
  which runs to its end even when the asking client goes away.
- When the server cannot sign, a held token past half its life is still
  served while it has ``STALE_MARGIN`` left, as X.509-SVIDs are.
- A token whose key left the bundle is dropped; the cache never holds more
  than ``max_size`` tokens (those past half life go first, then the oldest).

Tokens are bearer secrets: they are never logged; ``CachedJwtSvid``'s repr leaves them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from trustd.agent.errors import BadSvidError, SigningFailedError
from trustd.agent.upstream import JwtSvidRequest, SignedJwtSvid, Upstream
from trustd.bundle import Bundle
from trustd.ca.jwt import validate_jwt_svid
from trustd.clock import Clock
from trustd.entries import RegistrationEntry
from trustd.errors import TrustdError, UnavailableError
from trustd.spiffeid import SpiffeId, TrustDomain

log = structlog.get_logger(__name__)

JwtKey = tuple[SpiffeId, frozenset[str]]  # what a cached token is found by
STALE_MARGIN = dt.timedelta(seconds=30)  # a held token is served while the server is down


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedJwtSvid:
    """A JWT-SVID the agent may serve. ``token`` is a bearer secret."""

    spiffe_id: SpiffeId  # its ``sub``
    audience: tuple[str, ...]  # its ``aud``, as asked for
    token: str = field(repr=False)  # JWS compact serialization
    key_id: str  # the ``kid`` that signed it
    issued_at: dt.datetime  # ``iat``
    expires_at: dt.datetime  # ``exp``

    @property
    def renew_at(self) -> dt.datetime:
        """Half its life: from then on the agent asks the server for a new one."""
        return self.issued_at + (self.expires_at - self.issued_at) / 2


class JwtSvidCache:
    def __init__(
        self,
        *,
        upstream: Upstream,
        clock: Clock,
        bundles: Callable[[], Mapping[TrustDomain, Bundle]],
        max_size: int = 4096,
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._bundles = bundles  # the bundles the agent holds now
        self._max_size = max_size
        self._held: dict[JwtKey, CachedJwtSvid] = {}
        self._inflight: dict[JwtKey, asyncio.Task[CachedJwtSvid]] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def get(self, entry: RegistrationEntry, audience: tuple[str, ...]) -> CachedJwtSvid:
        """The entry's token for ``audience``: held if before half life, else newly signed."""
        key: JwtKey = (entry.spiffe_id, frozenset(audience))
        held = self._held.get(key)
        if held is not None and self._clock.now() < held.renew_at:
            return held
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._sign(key, entry, audience))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        try:
            return await asyncio.shield(task)
        except UnavailableError:
            if held is None or self._clock.now() + STALE_MARGIN >= held.expires_at:
                raise
            log.warning(
                "jwt-svid renewal failed; serving the one held",
                spiffe_id=str(held.spiffe_id),
                exp=held.expires_at.isoformat(),
            )
            return held

    def _done(self, key: JwtKey, task: asyncio.Task[CachedJwtSvid]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters may all be gone

    async def _sign(
        self, key: JwtKey, entry: RegistrationEntry, audience: tuple[str, ...]
    ) -> CachedJwtSvid:
        try:
            signed = await self._upstream.sign_jwt_svid(
                JwtSvidRequest(entry_id=entry.id, audience=audience)
            )
        except TrustdError as exc:
            log.warning(
                "jwt-svid signing failed",
                entry_id=entry.id,
                spiffe_id=str(entry.spiffe_id),
                error=str(exc),
            )
            raise
        except Exception as exc:
            log.warning(
                "jwt-svid signing failed",
                entry_id=entry.id,
                spiffe_id=str(entry.spiffe_id),
                error=type(exc).__name__,
            )
            raise SigningFailedError(
                "the agent could not get a jwt-svid signed; check the server and retry"
            ) from exc
        svid = self._checked(entry, audience, signed)
        self._put(key, svid)
        log.info(
            "jwt-svid issued",
            entry_id=entry.id,
            spiffe_id=str(svid.spiffe_id),
            kid=svid.key_id,
            exp=svid.expires_at.isoformat(),
        )
        return svid

    def _checked(
        self, entry: RegistrationEntry, audience: tuple[str, ...], signed: SignedJwtSvid
    ) -> CachedJwtSvid:
        td = entry.spiffe_id.trust_domain
        own = self._bundles().get(td)
        if own is None:
            raise BadSvidError(f"the agent holds no trust bundle of {td} to check a jwt-svid with")
        now = self._clock.now()
        try:
            found = validate_jwt_svid(signed.token, audience[0], bundles={td: own}, now=now)
        except TrustdError as exc:
            raise BadSvidError(
                f"the server returned a jwt-svid that does not validate: {exc}"
            ) from None
        aud = found.claims.get("aud")
        got = {aud} if isinstance(aud, str) else set(aud or ())
        if found.spiffe_id != entry.spiffe_id or got != set(audience):
            raise BadSvidError(
                "the server returned a jwt-svid for another spiffe id or audience than asked"
            )
        iat = found.claims.get("iat")
        issued = (
            dt.datetime.fromtimestamp(iat, dt.UTC)
            if isinstance(iat, int | float) and not isinstance(iat, bool)
            else signed.issued_at
        )
        return CachedJwtSvid(
            spiffe_id=found.spiffe_id,
            audience=audience,
            token=signed.token,
            key_id=found.key_id,
            issued_at=issued,
            expires_at=found.expires_at,
        )

    def _put(self, key: JwtKey, svid: CachedJwtSvid) -> None:
        self._held.pop(key, None)
        self._held[key] = svid  # newest last
        if len(self._held) <= self._max_size:
            return
        now = self._clock.now()
        for k in [k for k, v in self._held.items() if v.renew_at <= now]:
            del self._held[k]
        while len(self._held) > self._max_size:
            del self._held[next(iter(self._held))]

    def drop_keys_not_in(self, bundles: Mapping[TrustDomain, Bundle]) -> None:
        """Forget tokens signed by a key their trust domain's bundle no longer has."""
        gone = []
        for k, v in self._held.items():
            bundle = bundles.get(v.spiffe_id.trust_domain)
            if bundle is None or all(a.key_id != v.key_id for a in bundle.jwt_authorities):
                gone.append(k)
        for k in gone:
            del self._held[k]
        if gone:
            log.info("jwt-svids dropped", count=len(gone), reason="signing key left the bundle")

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._inflight.clear()
        self._held.clear()
