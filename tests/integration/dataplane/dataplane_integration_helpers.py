"""Helpers for the data-plane integration tests (no pytest-asyncio in the venv)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any


def run(coro_fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop, bounded in time."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(240):
                await coro_fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


async def eventually(check: Callable[[], bool], *, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.02)
