"""The one retry schedule, and sleeping on an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest

from trustd.backoff import Backoff, Retry
from trustd.clock import FakeClock


def test_base_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=0.5, maximum=4.0)
    assert [b.base(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.base(10_000) == 4.0  # no overflow after a very long outage


def test_equal_jitter_stays_between_half_and_full() -> None:
    b = Backoff(initial=1.0, maximum=8.0, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(1, 8):
        for _ in range(200):
            d = b.delay(attempt, rng)
            assert b.base(attempt) * 0.5 <= d <= b.base(attempt)
    # and it really is spread, not a constant
    assert len({round(b.delay(3, rng), 6) for _ in range(50)}) > 40


def test_no_jitter_is_exact() -> None:
    b = Backoff(initial=0.25, maximum=1.0, jitter=0.0)
    assert [b.delay(n, random.Random()) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"jitter": 1.5}, {"jitter": -0.1}]
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


def test_retry_counts_and_resets() -> None:
    r = Retry(Backoff(initial=1.0, maximum=10.0, jitter=0.0))
    assert [r.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert r.attempt == 5
    r.reset()
    assert r.next_delay() == 1.0


def test_retry_sleeps_on_the_injected_clock_until_it_moves() -> None:
    asyncio.run(_retry_sleeps_on_the_clock())


async def _retry_sleeps_on_the_clock() -> None:
    clock = FakeClock()
    r = Retry(Backoff(initial=5.0, maximum=5.0, jitter=0.0), clock=clock)
    task = asyncio.create_task(r.sleep())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done() and clock.sleepers == 1
    clock.advance(dt.timedelta(seconds=4.9))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # 4.9 s of the clock's time is not 5 s
    clock.advance(dt.timedelta(seconds=0.2))
    assert await asyncio.wait_for(task, timeout=5) == 5.0
    assert clock.sleepers == 0


def test_fake_clock_sleep_of_zero_returns_at_once() -> None:
    asyncio.run(asyncio.wait_for(FakeClock().sleep(0), timeout=1))


def test_fake_clock_wakes_sleepers_from_another_thread() -> None:
    asyncio.run(_wakes_from_thread())


async def _wakes_from_thread() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(60))
    await asyncio.sleep(0)
    await asyncio.to_thread(clock.set, clock.now() + dt.timedelta(minutes=2))
    await asyncio.wait_for(task, timeout=5)
