"""Waiting in tests: poll a condition with a safety net, and let the event loop settle.

The safety net only stops a broken test from hanging; it is never the measure (tests
assert counts, sizes and order, not elapsed time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

SAFETY_S = 30.0


def wait_for(check: Callable[[], bool], safety_s: float = SAFETY_S) -> None:
    """Poll ``check`` (blocking) until it holds."""
    deadline = time.monotonic() + safety_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {safety_s}s")


async def wait_until(check: Callable[[], bool], safety_s: float = SAFETY_S) -> None:
    """Poll ``check`` from async code: for state another process or a socket changes."""
    async with asyncio.timeout(safety_s):
        while not check():  # noqa: ASYNC110 - nothing here to wait on but the state itself
            await asyncio.sleep(0.01)


async def poll_until(check: Callable[[], Awaitable[bool]],
                     safety_s: float = SAFETY_S) -> None:
    """Poll an async ``check`` (one that asks a service over HTTP) until it holds."""
    async with asyncio.timeout(safety_s):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.05)


async def settle_loop(turns: int = 20) -> None:
    """Let callbacks already due run, and drop the loop's cancelled timers.

    asyncio keeps cancelled timers (a finished turn's timeouts, each holding its context)
    until over half of 100+ are cancelled; this tips it over, so what is alive afterwards
    does not depend on when that last happened. (uvloop, which serves production, stops a
    cancelled timer at once.)
    """
    loop = asyncio.get_running_loop()
    for handle in [loop.call_later(3600, lambda: None) for _ in range(300)]:
        handle.cancel()
    for _ in range(turns):
        await asyncio.sleep(0)


async def settle_tasks(quiet_polls: int = 5, poll_s: float = 0.02,
                       safety_s: float = SAFETY_S) -> None:
    """Wait until no task starts or ends for ``quiet_polls`` polls in a row.

    A finished conversation may still have work in flight for a moment (a tenant slot
    released after the stream's last event, a Redis client closing a connection it
    replaced): that is not something left behind, and on a loaded machine it can outlive
    a few loop turns. A task that never ends still counts once things are quiet.
    """
    me = asyncio.current_task()
    async with asyncio.timeout(safety_s):
        seen: set[asyncio.Task[object]] = set()
        quiet = 0
        while quiet < quiet_polls:
            await asyncio.sleep(poll_s)
            now = {task for task in asyncio.all_tasks() if task is not me}
            quiet = quiet + 1 if now == seen else 0
            seen = now
