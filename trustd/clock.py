"""Time, injected everywhere a rotation, expiry or retry is decided, so tests never sleep.

A :class:`Clock` tells the time and sleeps. :class:`SystemClock` is the real
one. :class:`FakeClock` only moves when a test moves it: ``await
clock.sleep(s)`` returns once the test has advanced the clock past the sleeper's
deadline, so a retry loop under test waits exactly as long as the test says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to; sleepers wake when it passes their deadline."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self._lock = threading.Lock()
        self._sleepers: list[
            tuple[dt.datetime, asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = []

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        with self._lock:
            self._now += delta
            now = self._now
        self._wake(now)
        return now

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            self._now = when
        self._wake(when)

    @property
    def sleepers(self) -> int:
        """How many coroutines are waiting for this clock to move."""
        with self._lock:
            return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            deadline = self._now + dt.timedelta(seconds=max(0.0, seconds))
            if deadline <= self._now:
                fut.set_result(None)
            else:
                self._sleepers.append((deadline, loop, fut))
        await fut

    def _wake(self, now: dt.datetime) -> None:
        with self._lock:
            due = [s for s in self._sleepers if s[0] <= now]
            self._sleepers = [s for s in self._sleepers if s[0] > now and not s[2].done()]
        for _, loop, fut in due:
            loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
