"""Exponential backoff with jitter: the one retry schedule of every loop that reconnects.

A :class:`Backoff` is the policy (first delay, cap, jitter); a :class:`Retry`
follows one loop's attempts under it and sleeps on the injected
:class:`~trustd.clock.Clock`, so a test decides when the next attempt comes::

    retry = Retry(Backoff(initial=0.5, maximum=30.0), clock=clock)
    while True:
        try:
            await connect()
            retry.reset()
        except ConnectionError:
            await retry.sleep()

Jitter is "equal jitter": the delay is drawn from ``[base * (1 - jitter), base]``
where ``base = min(maximum, initial * 2**(attempt - 1))``. Many agents that lost
the same server therefore come back spread out, not in one wave.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trustd.clock import Clock, SystemClock


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    initial: float = 0.5  # seconds before the first retry
    maximum: float = 30.0  # the cap, reached after a few failures
    jitter: float = 0.5  # fraction of the delay drawn at random (0: none)

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not (0.0 <= self.jitter <= 1.0):
            raise ValueError("backoff jitter is a fraction between 0 and 1")

    def base(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1 = the first), without jitter."""
        if attempt < 1:
            return 0.0
        # 2**exp overflows floats only far beyond any cap; stop doubling once capped.
        exp = min(attempt - 1, 64)
        return min(self.maximum, self.initial * (2.0**exp))

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = self.base(attempt)
        return base * rng.uniform(1.0 - self.jitter, 1.0) if self.jitter else base


@dataclass(slots=True)
class Retry:
    """The attempts of one loop under a :class:`Backoff`."""

    policy: Backoff
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0  # failures since the last reset

    def reset(self) -> None:
        """The operation worked: the next failure starts again from ``initial``."""
        self.attempt = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        self.attempt += 1
        return self.policy.delay(self.attempt, self.rng)

    async def sleep(self) -> float:
        """Count one more failure and wait (on the clock) before the next attempt."""
        delay = self.next_delay()
        await self.clock.sleep(delay)
        return delay
