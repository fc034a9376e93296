"""``Janitor``: the one background task for periodic cleanup.

Parts of the app register a sweep (a name and a function returning how many things it
removed); the janitor runs each every ``interval_s``, or at the sweep's own interval when
it gave one. A failing sweep is logged and the others still run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from app.observability.metrics import Metrics

logger = logging.getLogger(__name__)

Sweep = Callable[[], int | Awaitable[int]]
#: a sweep as a part of the app offers it: its name, itself, and its own interval or None
SweepSpec = tuple[str, Sweep, float | None]


class Janitor:
    def __init__(self, interval_s: float, metrics: Metrics | None = None) -> None:
        self.interval_s = interval_s
        self._metrics = metrics or Metrics()
        self._sweeps: dict[str, Sweep] = {}
        self._intervals: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add(self, name: str, sweep: Sweep, interval_s: float | None = None) -> None:
        self._sweeps[name] = sweep
        self._intervals[name] = interval_s or self.interval_s

    async def run_once(self, names: list[str] | None = None) -> dict[str, int]:
        """Run the named sweeps (all by default) now."""
        removed: dict[str, int] = {}
        for name in names if names is not None else list(self._sweeps):
            sweep = self._sweeps[name]
            try:
                result = sweep()
                count = await result if inspect.isawaitable(result) else result
            except Exception:
                logger.exception("janitor sweep %s failed", name)
                continue
            removed[name] = count
            if count:
                self._metrics.janitor_removed.labels(name).inc(count)
                logger.info("janitor: %s removed %d", name, count)
        return removed

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = {name: loop.time() + interval for name, interval in self._intervals.items()}
        while True:
            await asyncio.sleep(max(0.0, min(due.values(), default=loop.time() + 60)
                                    - loop.time()))
            now = loop.time()
            ready = [name for name, at in due.items() if at <= now]
            for name in ready:
                due[name] = now + self._intervals[name]
            await self.run_once(ready)

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
