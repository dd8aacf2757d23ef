"""A one-slot wake-up: the cache sets it, one stream task waits on it. Small by design
(one per open stream), so no ``asyncio.Event`` with its waiter deque."""

from __future__ import annotations

import asyncio


class Notifier:
    __slots__ = ("changed", "waiter")

    def __init__(self) -> None:
        self.changed = False  # set by notify(), cleared by wait()
        self.waiter: asyncio.Future[None] | None = None  # present while a task sleeps

    def notify(self) -> None:
        self.changed = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        while not self.changed:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.changed = False
