"""The agent's memory: entries, bundles and SVIDs, and the one place that knows what changed.

- Entries and bundles arrive from the server (``apply_entries``,
  ``apply_bundles``).
- SVIDs are signed on demand (a brand-new workload is answered as soon as the
  server signs), ahead of time for every entry the agent may serve, and again
  before half their life (``rotate_due``). Keys are generated here and never
  leave memory.
- JWT-SVIDs are signed by the server when a workload asks, and held per
  (SPIFFE ID, audience set) until half their life (``trustd.agent.jwt_cache``).
- Every change is fanned out to the open streams that can see it, through
  ``subscribe``. Streams never poll.
- When the server is down, what is held keeps being served; signing is retried
  with exponential backoff and jitter, and the time left until the earliest
  SVID expires is logged and measured.

The clock is injected: rotation decisions use ``clock.now()`` only, so tests
drive renewal with ``await cache.rotate_due()`` after moving a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import math
import random
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.agent.errors import (
    BadSvidError,
    NoIdentityError,
    NotEntitledError,
    NotReadyError,
    SigningFailedError,
)
from trustd.agent.jwt_cache import CachedJwtSvid, JwtSvidCache
from trustd.agent.keys import Svid, build_svid, make_csr, new_key
from trustd.agent.metrics import AgentMetrics
from trustd.agent.upstream import BundleUpdate, EntryUpdate, SvidRequest, Upstream
from trustd.backoff import Backoff
from trustd.bundle import Bundle
from trustd.ca.jwt import check_audience
from trustd.clock import Clock
from trustd.entries import RegistrationEntry, default_order
from trustd.errors import TrustdError, UnavailableError
from trustd.selectors import Caller, Selector
from trustd.spiffeid import SpiffeId, TrustDomain

log = structlog.get_logger(__name__)

WorkloadKey = frozenset[Selector]  # every selector a caller satisfies; what matching depends on


def workload_key(caller: Caller) -> WorkloadKey:
    """The selectors of a caller, remembered across connections of the same kind of process."""
    return _selectors_of(caller.uid, caller.gid, caller.exe, caller.supplementary_gids)


@functools.lru_cache(maxsize=4096)
def _selectors_of(uid: int, gid: int, exe: str | None, groups: frozenset[int]) -> WorkloadKey:
    # user and group names come from the name service; the pid plays no part in matching.
    return Caller(uid=uid, gid=gid, pid=0, exe=exe, supplementary_gids=groups).selectors()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Tuning of the agent's renewal and retry behaviour."""

    # Renew when this share of an SVID's lifetime has passed. Istio uses 0.5 +/- 0.01;
    # SPEC §6 wants the new SVID pushed *before* half life, so the centre sits below 0.5.
    renew_fraction: float = 0.48
    renew_jitter: float = 0.01  # +/- uniformly around renew_fraction, so renewals spread out
    retry_initial_seconds: float = 1.0  # first backoff after a failed signing
    retry_max_seconds: float = 60.0  # backoff cap while the server stays down
    sign_batch_size: int = 100  # CSRs per upstream call
    rotation_max_sleep_seconds: float = 30.0  # the renewal loop re-checks at least this often


class Subscriber(Protocol):
    def notify(self) -> None:
        """Something this subscriber can see changed; must not block."""
        ...


@dataclass(slots=True)
class _Retry:
    attempts: int  # failed signings in a row
    next_at: dt.datetime  # not before this time


class AgentCache:
    def __init__(
        self,
        *,
        upstream: Upstream,
        trust_domain: TrustDomain,
        clock: Clock,
        metrics: AgentMetrics,
        settings: AgentSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._upstream = upstream
        self.trust_domain = trust_domain
        self._clock = clock
        self._metrics = metrics
        self._settings = settings or AgentSettings()
        # Jitter only spreads load; it needs no cryptographic randomness.
        self._rng = rng or random.Random()  # noqa: S311
        self._backoff = Backoff(
            initial=self._settings.retry_initial_seconds,
            maximum=self._settings.retry_max_seconds,
        )

        self._entries: dict[str, RegistrationEntry] = {}
        self._entry_revision: int | None = None
        self._entries_synced = False
        self._bundles: dict[TrustDomain, Bundle] = {}
        self._bundle_versions: dict[TrustDomain, str] = {}
        self._jwt_bundle_versions: dict[TrustDomain, str] = {}
        self._jwt = JwtSvidCache(upstream=upstream, clock=clock, bundles=lambda: self._bundles)
        self._tainted: frozenset[bytes] = frozenset()  # key ids of CAs the server tainted
        self._svids: dict[str, Svid] = {}
        self._forced: set[str] = set()  # entry ids to renew now (tainted CA, bundle dropped CA)
        self._retry: dict[str, _Retry] = {}
        self._inflight: dict[str, asyncio.Future[Svid]] = {}
        self._queued: list[RegistrationEntry] = []
        self._flush_scheduled = False
        self._matching: dict[WorkloadKey, tuple[str, ...]] = {}
        self._subscribers: dict[WorkloadKey, set[Subscriber]] = {}
        self._wake_rotation = asyncio.Event()
        self._ready = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.generation = (
            0  # bumped on every change that is fanned out; answers may be memoized by it
        )
        self.last_sync: dt.datetime | None = None  # last message or signing from the server
        self.watches_live = 0  # open watch streams to the server

        metrics.bind_sync_age(self._sync_age)
        metrics.bind_seconds_until_expiry(self.seconds_until_expiry)

    # ------------------------------------------------------------------ state from the server

    @property
    def entry_revision(self) -> int | None:
        return self._entry_revision

    @property
    def ready(self) -> bool:
        """The first entries and the own bundle have arrived."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def mark_synced(self) -> None:
        self.last_sync = self._clock.now()

    def now(self) -> dt.datetime:
        """The agent's clock: what expiry is judged against."""
        return self._clock.now()

    def apply_entries(self, update: EntryUpdate) -> None:
        old = self._entries
        if update.full:
            new = {e.id: e for e in update.upserted}
        else:
            new = dict(old)
            for e in update.upserted:
                new[e.id] = e
            for entry_id in update.removed:
                new.pop(entry_id, None)
        gone = old.keys() - new.keys()
        reissue = {
            eid
            for eid, e in new.items()
            if eid in old
            and (
                old[eid].spiffe_id != e.spiffe_id
                or old[eid].ttl != e.ttl
                or old[eid].dns_names != e.dns_names
            )
        }
        for eid in gone | reissue:
            if self._svids.pop(eid, None) is not None:
                log.info(
                    "svid dropped",
                    entry_id=eid,
                    reason="entry removed" if eid in gone else "entry changed",
                )
            self._retry.pop(eid, None)
            self._forced.discard(eid)
        self._entries = new
        self._entry_revision = update.revision
        self._entries_synced = True
        self._matching.clear()
        self.mark_synced()
        log.info(
            "entries synced",
            revision=update.revision,
            full=update.full,
            entries=len(new),
            added=len(new.keys() - old.keys()),
            removed=len(gone),
            reissued=len(reissue),
        )
        self._update_svid_metrics()
        self._check_ready()
        self._notify_all()
        self._wake_rotation.set()  # sign for new entries ahead of time

    def apply_bundles(self, update: BundleUpdate) -> None:
        new = {b.trust_domain: b for b in update.bundles}
        versions = {td: _bundle_version(b) for td, b in new.items()}
        jwt_versions = {td: _jwt_bundle_version(b) for td, b in new.items()}
        changed = {
            td
            for td in new.keys() | self._bundles.keys()
            if versions.get(td) != self._bundle_versions.get(td)
        }
        jwt_changed = {
            td
            for td in new.keys() | self._bundles.keys()
            if jwt_versions.get(td) != self._jwt_bundle_versions.get(td)
        }
        self._bundles = new
        self._bundle_versions = versions
        self._jwt_bundle_versions = jwt_versions
        if jwt_changed:
            self._jwt.drop_keys_not_in(new)
        self.mark_synced()
        own = new.get(self.trust_domain)
        recheck = bool(changed) or update.tainted_key_ids != self._tainted
        self._tainted = update.tainted_key_ids
        for eid, svid in self._svids.items() if recheck else ():
            if update.tainted_key_ids & svid.issuer_key_ids:
                self._forced.add(eid)
                log.warning(
                    "svid signed by a tainted authority",
                    entry_id=eid,
                    spiffe_id=str(svid.spiffe_id),
                    serial=f"{svid.serial:x}",
                )
            elif own is not None and not _anchored(svid, own):
                self._forced.add(eid)
                log.warning(
                    "svid no longer chains to the trust bundle",
                    entry_id=eid,
                    spiffe_id=str(svid.spiffe_id),
                    serial=f"{svid.serial:x}",
                )
        if changed or jwt_changed:
            log.info(
                "bundles changed",
                trust_domains=sorted(str(td) for td in changed),
                jwt_trust_domains=sorted(str(td) for td in jwt_changed),
            )
            self._notify_all()
        if self._forced:
            self._wake_rotation.set()
        self._check_ready()

    def _check_ready(self) -> None:
        if self._entries_synced and self.trust_domain in self._bundles:
            self._ready.set()

    # ------------------------------------------------------------------ reads for the endpoints

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReadyError("the agent is still syncing with its server; retry shortly")

    def matching_entries(self, key: WorkloadKey) -> tuple[RegistrationEntry, ...]:
        """The caller's entries, ``default`` first (see trustd.entries.default_order)."""
        ids = self._matching.get(key)
        if ids is None:
            found = [
                e
                for e in self._entries.values()
                if e.selectors and all(s in key for s in e.selectors)
            ]
            found.sort(key=default_order)
            ids = tuple(e.id for e in found)
            self._matching[key] = ids
        return tuple(self._entries[i] for i in ids)

    def svid(self, entry_id: str) -> Svid | None:
        return self._svids.get(entry_id)

    @property
    def bundles(self) -> Mapping[TrustDomain, Bundle]:
        return self._bundles

    def bundles_for(self, entries: Iterable[RegistrationEntry]) -> dict[TrustDomain, Bundle]:
        """The bundles a caller with these entries may see: its own trust domain's and those
        of the foreign trust domains its entries federate with (``federates_with``)."""
        allowed = {self.trust_domain} | {td for e in entries for td in e.federates_with}
        return {td: b for td, b in self._bundles.items() if td in allowed}

    def bundle_version(self, td: TrustDomain) -> str:
        return self._bundle_versions.get(td, "")

    def jwt_bundle_version(self, td: TrustDomain) -> str:
        """Changes when the JWT keys of ``td``'s bundle do (and only then)."""
        return self._jwt_bundle_versions.get(td, "")

    @property
    def own_bundle(self) -> Bundle | None:
        return self._bundles.get(self.trust_domain)

    async def identities(
        self, key: WorkloadKey, *, entries: Sequence[RegistrationEntry] | None = None
    ) -> list[tuple[RegistrationEntry, Svid]]:
        """The SVIDs of ``entries`` (default: all the caller's), signing what is missing."""
        self.require_ready()
        wanted = self.matching_entries(key) if entries is None else tuple(entries)
        if not wanted:
            raise NoIdentityError(
                "no registration entry matches this process; create one with "
                "'trustd entry create --selector unix:uid:N ...'"
            )
        missing = [e for e in wanted if e.id not in self._svids]
        if missing:
            await self._sign_now(missing)
        out = []
        for e in wanted:
            svid = self._svids.get(e.id)
            if svid is not None and self._entries.get(e.id) is not None:
                out.append((e, svid))
        if len(out) != len(wanted):
            raise NoIdentityError("the workload's registration entry was removed while signing")
        return out

    async def jwt_svids(
        self,
        key: WorkloadKey,
        audience: Sequence[str],
        *,
        spiffe_id: SpiffeId | None = None,
    ) -> list[CachedJwtSvid]:
        """JWT-SVIDs for ``audience``: one per SPIFFE ID of the caller (``default`` first),
        or only ``spiffe_id``'s. Held ones are served until half their life."""
        self.require_ready()
        aud = check_audience(audience)
        entries = self.matching_entries(key)
        if not entries:
            raise NoIdentityError(
                "no registration entry matches this process; create one with "
                "'trustd entry create --selector unix:uid:N ...'"
            )
        chosen: dict[SpiffeId, RegistrationEntry] = {}
        for e in entries:
            if (spiffe_id is None or e.spiffe_id == spiffe_id) and e.spiffe_id not in chosen:
                chosen[e.spiffe_id] = e
        if not chosen:
            raise NotEntitledError(f"this process is not entitled to {spiffe_id}")
        return list(await asyncio.gather(*(self._jwt.get(e, aud) for e in chosen.values())))

    # ------------------------------------------------------------------ fan-out

    def subscribe(self, key: WorkloadKey, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(key, set()).add(subscriber)

    def unsubscribe(self, key: WorkloadKey, subscriber: Subscriber) -> None:
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.discard(subscriber)
            if not subs:
                del self._subscribers[key]
                self._matching.pop(key, None)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def _notify_all(self) -> None:
        self.generation += 1
        for subs in self._subscribers.values():
            for s in subs:
                s.notify()

    def _notify_entries(self, entry_ids: set[str]) -> None:
        self.generation += 1
        for key, subs in self._subscribers.items():
            if any(e.id in entry_ids for e in self.matching_entries(key)):
                for s in subs:
                    s.notify()

    # ------------------------------------------------------------------ signing

    async def _sign_now(self, entries: Iterable[RegistrationEntry]) -> None:
        """Sign on demand; concurrent requests for one entry share one signing."""
        futures = []
        for e in entries:
            fut = self._inflight.get(e.id)
            if fut is None:
                fut = asyncio.get_running_loop().create_future()
                self._inflight[e.id] = fut
                self._queued.append(e)
            futures.append(fut)
        if self._queued and not self._flush_scheduled:
            self._flush_scheduled = True
            # One event-loop turn lets concurrent first requests join the same batch.
            asyncio.get_running_loop().call_soon(self._start_flush)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, TrustdError):
                    raise r
                raise SigningFailedError(
                    "the agent could not get an svid signed; check the server and retry"
                ) from r

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._queued = self._queued, []
        if batch:
            self._spawn(self._sign_batch_reporting(batch))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sign_batch_reporting(self, batch: list[RegistrationEntry]) -> None:
        # Failures are already resolved into the waiting futures and logged.
        with contextlib.suppress(TrustdError):
            await self._sign(batch)

    async def _sign(self, batch: list[RegistrationEntry]) -> int:
        """Sign ``batch`` (futures for each entry are in ``_inflight`` or created here)."""
        loop = asyncio.get_running_loop()
        for e in batch:
            if e.id not in self._inflight:
                self._inflight[e.id] = loop.create_future()
        done = 0
        size = max(1, self._settings.sign_batch_size)
        for start in range(0, len(batch), size):
            try:
                done += await self._sign_chunk(batch[start : start + size])
            except UnavailableError as err:
                # The server is down: do not hammer it with the rest of the batch now.
                rest = batch[start + size :]
                if rest:
                    self._signing_failed(rest, err)
                    for e in rest:
                        self._resolve(e.id, err)
                raise
            except TrustdError:
                continue  # this entry was refused; the others still get their SVIDs
        return done

    async def _sign_chunk(self, chunk: list[RegistrationEntry]) -> int:
        keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        requests = []
        for e in chunk:
            keys[e.id] = new_key()
            csr = make_csr(keys[e.id], e.spiffe_id)
            requests.append(SvidRequest(entry_id=e.id, csr_der=csr))
        try:
            signed = await self._upstream.sign_x509_svids(requests)
            if len(signed) != len(requests):
                raise BadSvidError("server answered a different number of svids than asked")
        except Exception as exc:
            refused = isinstance(exc, TrustdError) and not isinstance(exc, UnavailableError)
            if refused and len(chunk) > 1:
                # One entry the server refuses (deleted meanwhile, not this agent's) must not
                # hold back the others: ask for each on its own.
                done = 0
                for e in chunk:
                    with contextlib.suppress(TrustdError):
                        done += await self._sign_chunk([e])
                return done
            self._signing_failed(chunk, exc)
            err = self._as_signing_error(exc)
            for e in chunk:
                self._resolve(e.id, err)
            raise err from exc
        self.mark_synced()
        done = 0
        changed: set[str] = set()
        for e, s in zip(chunk, signed, strict=True):
            current = self._entries.get(e.id)
            try:
                if s.entry_id != e.id:
                    raise BadSvidError("server answered svids out of order")
                svid = build_svid(
                    entry_id=e.id,
                    spiffe_id=e.spiffe_id,
                    key=keys[e.id],
                    chain_der=s.chain_der,
                    renew_fraction=self._renew_fraction(),
                )
            except BadSvidError as exc:
                self._signing_failed([e], exc)
                self._resolve(e.id, exc)
                continue
            if current is None or current.spiffe_id != e.spiffe_id:
                # Removed or re-pointed while we were signing: do not serve it.
                self._resolve(e.id, NoIdentityError("the registration entry changed"))
                continue
            old = self._svids.get(e.id)
            self._svids[e.id] = svid
            self._retry.pop(e.id, None)
            self._forced.discard(e.id)
            if self._tainted & svid.issuer_key_ids:
                # Signed by a CA the server has tainted (it may have no other yet): serve it,
                # and ask again after a backoff rather than at once.
                self._forced.add(e.id)
                self._back_off(e.id)
            self._metrics.svid_renewals.labels(outcome="success").inc()
            log.info(
                "svid rotated" if old else "svid issued",
                entry_id=e.id,
                spiffe_id=str(e.spiffe_id),
                serial=f"{svid.serial:x}",
                not_after=svid.not_after.isoformat(),
                renew_at=svid.renew_at.isoformat(),
            )
            changed.add(e.id)
            done += 1
            self._resolve(e.id, svid)
        if changed:
            self._update_svid_metrics()
            self._notify_entries(changed)
        return done

    def _resolve(self, entry_id: str, result: Svid | BaseException) -> None:
        fut = self._inflight.pop(entry_id, None)
        if fut is None or fut.done():
            return
        if isinstance(result, BaseException):
            fut.set_exception(result)
            fut.exception()  # mark retrieved: nobody may be waiting (ahead-of-time signing)
        else:
            fut.set_result(result)

    @staticmethod
    def _as_signing_error(exc: BaseException) -> TrustdError:
        if isinstance(exc, TrustdError) and not isinstance(exc, UnavailableError):
            return exc
        return SigningFailedError(
            "the server could not sign svids right now; the agent keeps serving what it has "
            "and retries"
        )

    def _back_off(self, entry_id: str) -> None:
        r = self._retry.get(entry_id)
        attempts = 1 if r is None else r.attempts + 1
        delay = self._backoff.delay(attempts, self._rng)
        self._retry[entry_id] = _Retry(attempts, self._clock.now() + dt.timedelta(seconds=delay))

    def _signing_failed(self, entries: Sequence[RegistrationEntry], exc: BaseException) -> None:
        now = self._clock.now()
        for e in entries:
            self._back_off(e.id)
            self._metrics.svid_renewals.labels(outcome="failure").inc()
        held = [self._svids[e.id] for e in entries if e.id in self._svids]
        left = min((s.not_after for s in held), default=None)
        log.warning(
            "svid signing failed",
            entries=len(entries),
            error=str(exc) or type(exc).__name__,
            attempts=self._retry[entries[0].id].attempts if entries else 0,
            retry_in_seconds=round((self._retry[entries[0].id].next_at - now).total_seconds(), 2)
            if entries
            else None,
            seconds_until_svid_expiry=round((left - now).total_seconds()) if left else None,
        )

    def _renew_fraction(self) -> float:
        j = self._settings.renew_jitter
        return self._settings.renew_fraction + self._rng.uniform(-j, j)

    # ------------------------------------------------------------------ rotation

    def due(self, now: dt.datetime | None = None) -> list[RegistrationEntry]:
        """Entries whose SVID is missing, forced or past its renewal time, and not backing off."""
        now = now or self._clock.now()
        out = []
        for eid, e in self._entries.items():
            if eid in self._inflight:
                continue
            r = self._retry.get(eid)
            if r is not None and now < r.next_at:
                continue
            svid = self._svids.get(eid)
            if svid is None or eid in self._forced or svid.renew_at <= now:
                out.append(e)
        return out

    async def rotate_due(self, now: dt.datetime | None = None) -> int:
        """Renew every SVID that is due at ``now`` (default: the clock's now).

        Returns how many were signed. Failures are logged, counted and retried later.
        """
        batch = self.due(now)
        if not batch:
            return 0
        try:
            return await self._sign(batch)
        except TrustdError:
            return 0

    def next_wakeup(self) -> dt.datetime | None:
        """When ``rotate_due`` next has something to do (None: nothing held or queued)."""
        times: list[dt.datetime] = []
        now = self._clock.now()
        for eid in self._entries:
            r = self._retry.get(eid)
            svid = self._svids.get(eid)
            if r is not None:
                times.append(r.next_at)
            elif svid is None or eid in self._forced:
                times.append(now)
            else:
                times.append(svid.renew_at)
        return min(times, default=None)

    def wake_rotation(self) -> None:
        """Make the renewal loop look again now (e.g. after a ``FakeClock`` moved)."""
        self._wake_rotation.set()

    async def run_rotation(self) -> None:
        """Background renewal loop (started by the agent service)."""
        while True:
            self._wake_rotation.clear()
            await self.rotate_due()
            nxt = self.next_wakeup()
            delay = self._settings.rotation_max_sleep_seconds
            if nxt is not None:
                delay = min(delay, max(0.0, (nxt - self._clock.now()).total_seconds()))
            if delay <= 0:
                delay = 0.05  # something is due but in flight: look again shortly
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_rotation.wait(), timeout=delay)

    # ------------------------------------------------------------------ metrics

    def _update_svid_metrics(self) -> None:
        self._metrics.svids.set(len(self._svids))
        earliest = min((s.not_after for s in self._svids.values()), default=None)
        self._metrics.earliest_svid_expiry.set(
            earliest.timestamp() if earliest is not None else math.nan
        )

    def _sync_age(self) -> float:
        if self.watches_live > 0 or self.last_sync is None:
            return 0.0 if self.watches_live > 0 else math.nan
        return max(0.0, (self._clock.now() - self.last_sync).total_seconds())

    def seconds_until_expiry(self) -> float:
        earliest = min((s.not_after for s in self._svids.values()), default=None)
        if earliest is None:
            return math.nan
        return (earliest - self._clock.now()).total_seconds()

    async def close(self) -> None:
        await self._jwt.close()
        for t in list(self._background):
            t.cancel()
        for t in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for fut in self._inflight.values():
            if not fut.done():
                fut.cancel()
        self._inflight.clear()


def _bundle_version(bundle: Bundle) -> str:
    h = hashlib.sha256()
    for der in bundle.to_der_list():
        h.update(len(der).to_bytes(4, "big"))
        h.update(der)
    return h.hexdigest()[:16]


def _jwt_bundle_version(bundle: Bundle) -> str:
    return hashlib.sha256(bundle.to_jwks()).hexdigest()[:16]


def _key_id(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return None


def _anchored(svid: Svid, bundle: Bundle) -> bool:
    """Whether the top of the SVID's chain was issued by (or is) a CA in the bundle."""
    top = svid.chain[-1]
    aki = _key_id(top, x509.AuthorityKeyIdentifier)
    for ca in bundle.x509_authorities:
        if ca == top:
            return True
        if ca.subject != top.issuer:
            continue
        ski = _key_id(ca, x509.SubjectKeyIdentifier)
        if aki is None or ski is None or aki == ski:
            return True
    return False


__all__ = [
    "AgentCache",
    "AgentSettings",
    "Subscriber",
    "UnavailableError",
    "WorkloadKey",
    "workload_key",
]
