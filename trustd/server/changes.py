"""One place that knows "entries changed" or "the bundle changed", for every watcher.

Writers run in worker threads; watchers are coroutines on the event loop. A
change bumps a counter and wakes every waiter once; no watcher polls per
stream. A slow periodic re-check (``fallback``) also catches changes written
by another server sharing the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class ChangeHub:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conds: dict[str, asyncio.Condition] = {}
        self._broadcast: Callable[[str], None] | None = None

    def set_broadcast(self, broadcast: Callable[[str], None] | None) -> None:
        """Where local changes go for the other servers (None: this server only)."""
        self._broadcast = broadcast

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def version(self, topic: str) -> int:
        with self._lock:
            return self._versions.get(topic, 0)

    def notify(self, topic: str, *, remote: bool = False) -> None:
        """Thread-safe: callable from worker threads and from the loop. ``remote``: the
        change was made through another server (it is not published again)."""
        with self._lock:
            self._versions[topic] = self._versions.get(topic, 0) + 1
        broadcast = self._broadcast
        if broadcast is not None and not remote:
            broadcast(topic)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._wake(topic))
        else:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._wake(topic), loop)

    def _cond(self, topic: str) -> asyncio.Condition:
        cond = self._conds.get(topic)
        if cond is None:
            cond = self._conds[topic] = asyncio.Condition()
        return cond

    async def _wake(self, topic: str) -> None:
        cond = self._cond(topic)
        async with cond:
            cond.notify_all()

    async def wait(self, topic: str, seen: int, fallback: float | None = None) -> int:
        """Wait until the topic's version passes ``seen`` (or ``fallback`` seconds pass)."""
        cond = self._cond(topic)
        async with cond:
            if self.version(topic) > seen:
                return self.version(topic)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait_for(lambda: self.version(topic) > seen), fallback)
        return self.version(topic)
