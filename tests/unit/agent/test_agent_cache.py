"""AgentCache: signing on demand, renewal, server outages and fan-out, on a FakeClock."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence

import pytest
from agent_fakes import FakeUpstream, metric, run_async, uri_of
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.agent.cache import AgentCache, AgentSettings
from trustd.agent.errors import BadSvidError, NoIdentityError, SigningFailedError
from trustd.agent.metrics import AgentMetrics
from trustd.agent.upstream import SvidRequest
from trustd.ca.issuer import IssuedSvid
from trustd.clock import FakeClock
from trustd.entries import RegistrationEntry
from trustd.selectors import Selector

A_ID = "spiffe://trustd.local/ns/a/sa/a"
B_ID = "spiffe://trustd.local/ns/b/sa/b"
KEY_A = frozenset({Selector.parse("unix:uid:1000"), Selector.parse("unix:gid:1000")})
KEY_B = frozenset({Selector.parse("unix:uid:1001"), Selector.parse("unix:gid:1001")})


class _Recorder:
    def __init__(self) -> None:
        self.count = 0

    def notify(self) -> None:
        self.count += 1


async def _synced(up: FakeUpstream, clock: FakeClock) -> AgentCache:
    cache = AgentCache(
        upstream=up, trust_domain=up.trust_domain, clock=clock, metrics=AgentMetrics()
    )
    await _pull(up, cache)
    return cache


async def _pull(up: FakeUpstream, cache: AgentCache) -> None:
    entries = up.watch_entries(since_revision=None)
    cache.apply_entries(await anext(entries))
    await entries.aclose()
    bundles = up.watch_bundles()
    cache.apply_bundles(await anext(bundles))
    await bundles.aclose()


def _setup() -> tuple[FakeUpstream, FakeClock, RegistrationEntry, RegistrationEntry]:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    a = up.add_entry(A_ID, ["unix:uid:1000"])
    b = up.add_entry(B_ID, ["unix:uid:1001"])
    return up, clock, a, b


@run_async
async def test_concurrent_first_requests_share_one_signing() -> None:
    up, clock, a, _ = _setup()
    cache = await _synced(up, clock)
    results = await asyncio.gather(*(cache.identities(KEY_A) for _ in range(50)))
    serials = {r[0][1].serial for r in results}
    assert len(serials) == 1
    assert up.sign_calls == [[a.id]]
    assert uri_of(results[0][0][1].chain[0]) == A_ID


@run_async
async def test_only_a_csr_leaves_the_agent() -> None:
    up, clock, _a, _ = _setup()
    seen: list[SvidRequest] = []
    orig = up.sign_x509_svids

    async def spy(requests: Sequence[SvidRequest]) -> list[IssuedSvid]:
        seen.extend(requests)
        return await orig(requests)

    up.sign_x509_svids = spy  # type: ignore[method-assign]
    cache = await _synced(up, clock)
    [(_, svid)] = await cache.identities(KEY_A)
    csr = x509.load_der_x509_csr(seen[0].csr_der)
    assert csr.is_signature_valid
    assert csr.public_key() == svid.private_key.public_key()
    assert isinstance(svid.private_key, ec.EllipticCurvePrivateKey)
    assert svid.private_key.curve.name == "secp256r1"


@run_async
async def test_unmatched_caller_has_no_identity() -> None:
    up, clock, _, _ = _setup()
    cache = await _synced(up, clock)
    with pytest.raises(NoIdentityError):
        await cache.identities(frozenset({Selector.parse("unix:uid:7")}))
    assert up.sign_calls == []


@run_async
async def test_entry_needs_every_selector() -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    up = FakeUpstream(clock=clock)
    up.add_entry(A_ID, ["unix:uid:1000", "unix:path:/usr/bin/envoy"])
    cache = await _synced(up, clock)
    assert cache.matching_entries(KEY_A) == ()
    key = KEY_A | {Selector.parse("unix:path:/usr/bin/envoy")}
    assert [str(e.spiffe_id) for e in cache.matching_entries(key)] == [A_ID]


@run_async
async def test_renewal_is_due_before_half_life_with_jitter() -> None:
    up, clock, a, _b = _setup()
    cache = await _synced(up, clock)
    fractions = []
    for _ in range(20):
        [(_, svid)] = await cache.identities(KEY_A)
        life = svid.not_after - svid.not_before
        fractions.append((svid.renew_at - svid.not_before) / life)
        cache._svids.pop(a.id)  # force a fresh signing to sample the jitter again
    assert all(0.47 <= f <= 0.49 for f in fractions)
    assert len({round(f, 6) for f in fractions}) > 1, "renewal times must be jittered"


@run_async
async def test_rotate_due_renews_only_what_is_due() -> None:
    up, clock, a, _b = _setup()
    cache = await _synced(up, clock)
    assert await cache.rotate_due() == 2  # both entries signed ahead of any request
    [(_, first)] = await cache.identities(KEY_A)
    assert await cache.rotate_due() == 0
    clock.set(first.renew_at - dt.timedelta(seconds=1))
    assert a.id not in {e.id for e in cache.due()}
    clock.set(first.renew_at)
    assert a.id in {e.id for e in cache.due()}
    assert await cache.rotate_due() >= 1
    [(_, second)] = await cache.identities(KEY_A)
    assert second.serial != first.serial


@run_async
async def test_server_down_keeps_serving_cached_svids_and_backs_off() -> None:
    up, clock, a, _ = _setup()
    metrics = AgentMetrics()
    cache = AgentCache(
        upstream=up,
        trust_domain=up.trust_domain,
        clock=clock,
        metrics=metrics,
        settings=AgentSettings(retry_initial_seconds=1, retry_max_seconds=60),
    )
    await _pull(up, cache)
    [(_, held)] = await cache.identities(KEY_A)
    up.go_down()
    clock.set(held.renew_at + dt.timedelta(seconds=1))
    calls = len(up.sign_calls)
    assert await cache.rotate_due() == 0
    assert len(up.sign_calls) == calls + 1
    assert metric(metrics, "trustd_agent_svid_signings_total", outcome="failure") >= 1
    # Still served while the server is down.
    [(_, served)] = await cache.identities(KEY_A)
    assert served.serial == held.serial
    # Backing off: nothing is retried until the backoff has passed, and it grows.
    assert a.id not in {e.id for e in cache.due()}
    first_wait = cache._retry[a.id].next_at - clock.now()
    clock.set(cache._retry[a.id].next_at)
    assert await cache.rotate_due() == 0
    second_wait = cache._retry[a.id].next_at - clock.now()
    assert second_wait > first_wait / 2  # equal jitter: [base/2, base], base doubles
    assert cache._retry[a.id].attempts == 2
    left = cache.seconds_until_expiry()
    assert 0 < left < (held.not_after - held.not_before).total_seconds()
    # The server comes back: the next try succeeds.
    up.come_back()
    clock.set(cache._retry[a.id].next_at)
    assert await cache.rotate_due() >= 1
    [(_, fresh)] = await cache.identities(KEY_A)
    assert fresh.serial != held.serial
    assert a.id not in cache._retry


@run_async
async def test_brand_new_workload_while_server_down_fails_with_unavailable() -> None:
    up, clock, _, _ = _setup()
    cache = await _synced(up, clock)
    up.go_down()
    with pytest.raises(SigningFailedError):
        await cache.identities(KEY_A)


@run_async
async def test_removed_entry_drops_its_svid_and_changed_id_reissues() -> None:
    up, clock, a, b = _setup()
    cache = await _synced(up, clock)
    await cache.identities(KEY_A)
    await cache.identities(KEY_B)
    entries = up.watch_entries(since_revision=cache.entry_revision)
    await anext(entries)  # snapshot
    up.remove_entry(a.id)
    cache.apply_entries(await anext(entries))
    assert cache.svid(a.id) is None
    with pytest.raises(NoIdentityError):
        await cache.identities(KEY_A)
    up.update_entry(b.id, spiffe_id="spiffe://trustd.local/ns/b/sa/renamed")
    cache.apply_entries(await anext(entries))
    assert cache.svid(b.id) is None
    [(_, svid)] = await cache.identities(KEY_B)
    assert uri_of(svid.chain[0]) == "spiffe://trustd.local/ns/b/sa/renamed"
    await entries.aclose()


@run_async
async def test_tainted_authority_forces_immediate_resign() -> None:
    up, clock, a, _ = _setup()
    cache = await _synced(up, clock)
    [(_, old)] = await cache.identities(KEY_A)
    up.rotate_ca()
    cache.apply_bundles(up.bundle_update())
    assert a.id not in {e.id for e in cache.due()}  # old CA still trusted: no hurry
    up.taint_old_ca()
    cache.apply_bundles(up.bundle_update())
    assert a.id in {e.id for e in cache.due()}
    await cache.rotate_due()
    [(_, new)] = await cache.identities(KEY_A)
    assert new.chain[0].issuer == up.ca.active.cert.subject
    assert new.serial != old.serial


@run_async
async def test_bundle_that_drops_the_issuing_ca_forces_resign() -> None:
    up, clock, a, _ = _setup()
    cache = await _synced(up, clock)
    await cache.identities(KEY_A)
    up.rotate_ca()
    up.drop_old_cas()
    cache.apply_bundles(up.bundle_update())
    assert a.id in {e.id for e in cache.due()}


@run_async
async def test_fan_out_reaches_only_streams_that_can_see_the_change() -> None:
    up, clock, a, _b = _setup()
    cache = await _synced(up, clock)
    await cache.rotate_due()
    ra, rb = _Recorder(), _Recorder()
    cache.subscribe(KEY_A, ra)
    cache.subscribe(KEY_B, rb)
    cache._forced.add(a.id)
    await cache.rotate_due()
    assert (ra.count, rb.count) == (1, 0)
    up.rotate_ca()
    cache.apply_bundles(up.bundle_update())
    assert (ra.count, rb.count) == (2, 1)
    cache.apply_bundles(up.bundle_update())  # same content: nobody is bothered
    assert (ra.count, rb.count) == (2, 1)
    cache.unsubscribe(KEY_A, ra)
    cache.unsubscribe(KEY_B, rb)
    assert cache.subscriber_count == 0


@run_async
async def test_svid_for_another_identity_from_server_is_refused() -> None:
    _up, clock, _a, _ = _setup()

    class Liar(FakeUpstream):
        async def sign_x509_svids(self, requests: Sequence[SvidRequest]) -> list[IssuedSvid]:
            swapped = [SvidRequest(entry_id=r.entry_id, csr_der=r.csr_der) for r in requests]
            for e in self.entries.values():
                self.entries[e.id] = RegistrationEntry(
                    id=e.id, spiffe_id=e.spiffe_id.parse(B_ID), selectors=e.selectors
                )
            return await super().sign_x509_svids(swapped)

    liar = Liar(clock=clock)
    liar.add_entry(A_ID, ["unix:uid:1000"])
    cache = await _synced(liar, clock)
    with pytest.raises(BadSvidError):
        await cache.identities(KEY_A)
    assert cache.svid(next(iter(liar.entries))) is None


@run_async
async def test_expiry_metrics() -> None:
    up, clock, _a, _ = _setup()
    metrics = AgentMetrics()
    cache = AgentCache(upstream=up, trust_domain=up.trust_domain, clock=clock, metrics=metrics)
    assert math.isnan(metric(metrics, "trustd_agent_svid_earliest_expiry_timestamp_seconds"))
    await _pull(up, cache)
    [(_, svid)] = await cache.identities(KEY_A)
    assert (
        metric(metrics, "trustd_agent_svid_earliest_expiry_timestamp_seconds")
        == svid.not_after.timestamp()
    )
    assert metric(metrics, "trustd_agent_svids") == 1
    clock.advance(dt.timedelta(minutes=10))
    assert cache.seconds_until_expiry() == (svid.not_after - clock.now()).total_seconds()
    # sync age: time since the last message while no watch is live
    assert metric(metrics, "trustd_agent_server_sync_age_seconds") == pytest.approx(600, abs=1)
    cache.watches_live = 1
    assert metric(metrics, "trustd_agent_server_sync_age_seconds") == 0


@run_async
async def test_one_refused_entry_does_not_hold_back_the_others() -> None:
    up, clock, a, b = _setup()
    cache = await _synced(up, clock)
    del up.entries[a.id]  # the server no longer knows it; the agent has not heard yet
    assert await cache.rotate_due() == 1
    assert cache.svid(b.id) is not None
    assert cache.svid(a.id) is None
    assert cache._retry[a.id].attempts == 1
    assert [len(c) for c in up.sign_calls] == [2, 1, 1]


@run_async
async def test_tainted_ca_without_successor_does_not_cause_a_signing_loop() -> None:
    up, clock, a, _ = _setup()
    cache = await _synced(up, clock)
    await cache.rotate_due()
    up.tainted = frozenset({up.ca.active.ski})  # the only CA is tainted; no new one yet
    cache.apply_bundles(up.bundle_update())
    assert a.id in {e.id for e in cache.due()}
    calls = len(up.sign_calls)
    await cache.rotate_due()
    assert len(up.sign_calls) == calls + 1
    assert cache.svid(a.id) is not None  # still served
    assert cache.due() == []  # and not asked again at once
    clock.set(cache._retry[a.id].next_at)
    assert a.id in {e.id for e in cache.due()}
