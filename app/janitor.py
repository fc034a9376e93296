"""``Janitor``: the one background task for periodic cleanup.

Parts of the app register a sweep (a name and a function returning how many things it
removed); the janitor runs them all every ``interval_s``. A failing sweep is logged and
the others still run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from app.observability.metrics import JANITOR_REMOVED

logger = logging.getLogger(__name__)

Sweep = Callable[[], int | Awaitable[int]]


class Janitor:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sweeps: dict[str, Sweep] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add(self, name: str, sweep: Sweep) -> None:
        self._sweeps[name] = sweep

    async def run_once(self) -> dict[str, int]:
        removed: dict[str, int] = {}
        for name, sweep in self._sweeps.items():
            try:
                result = sweep()
                count = await result if inspect.isawaitable(result) else result
            except Exception:
                logger.exception("janitor sweep %s failed", name)
                continue
            removed[name] = count
            if count:
                JANITOR_REMOVED.labels(name).inc(count)
                logger.info("janitor: %s removed %d", name, count)
        return removed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.run_once()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="janitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
