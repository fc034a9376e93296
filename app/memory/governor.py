"""``MemoryGovernor``: pressure levels from usage against the limit, and what each level does.

Usage is sampled every ``memory_sample_s`` (a janitor sweep; the files are read in a worker
thread, since a process's ``smaps_rollup`` takes milliseconds). Each level is entered at its
threshold and left only ``memory_hysteresis`` of the limit below it, so a service hovering
at a threshold does not flap. Every transition is logged once and counted.

- moderate: the parts that hold memory are told (``Relief`` callbacks): the agent cache
  works to half its budget and drops idle agents;
- high: the in-memory conversation store works to half its byte budget, ``gc.collect()``
  runs (at most every ``memory_gc_interval_s``), and new streams are refused;
- critical: new turns are refused too. Turns in flight are never touched: they finish and
  are stored.
Refusals are 503 ``memory_pressure`` with ``Retry-After``. Liveness (``/health``) never
depends on any of this.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import enum
import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from app.errors import MemoryPressure
from app.memory.trend import LeakDetector
from app.memory.usage import MIB, Limit, rss_bytes
from app.observability.metrics import Metrics
from config.settings import Settings

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: hands freed heap pages back to the system. CPython frees
    into malloc's arenas, which keep them: without it, memory freed after a burst stays
    resident, and a service could stay at high pressure with nothing left to free."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Pressure(enum.IntEnum):
    LOW = 0
    MODERATE = 1
    HIGH = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


#: told the level after every sample; does what that level asks of the part it owns
Relief = Callable[[Pressure], object]


class Meter(Protocol):
    limit: Limit
    usage_source: str

    def usage_bytes(self) -> int: ...


class MemoryGovernor:
    def __init__(self, settings: Settings, meter: Meter, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.meter = meter
        self.metrics = metrics or Metrics()
        self._clock = clock
        self.limit = meter.limit
        self.thresholds = {Pressure.MODERATE: settings.memory_moderate,
                           Pressure.HIGH: settings.memory_high,
                           Pressure.CRITICAL: settings.memory_critical}
        self.level = Pressure.LOW
        self.usage = 0
        self.sampled_at: float | None = None
        self.transitions = 0
        self.gc_runs = 0
        self.refusals: dict[str, int] = {}
        self._last_gc: float | None = None
        self._reliefs: list[Relief] = []
        self._leak_reported = False
        self._trim = _malloc_trim()
        self.leak = LeakDetector(window_s=settings.memory_leak_window_s,
                                 warmup_s=settings.memory_leak_warmup_s,
                                 threshold_mb_per_hour=settings.memory_leak_mb_per_hour,
                                 started_at=clock())
        self.metrics.memory_limit.set(self.limit.bytes)
        self.metrics.memory_pressure.set(0)

    def on_pressure(self, relief: Relief) -> None:
        self._reliefs.append(relief)

    @property
    def usage_fraction(self) -> float:
        return self.usage / self.limit.bytes

    # --- sampling ---

    async def sample(self) -> int:
        """The janitor's sweep: read usage off the event loop, then act on it."""
        self.observe(await asyncio.to_thread(self.meter.usage_bytes))
        return 0

    def observe(self, usage_bytes: int) -> Pressure:
        """Take one usage reading: set the level, tell the reliefs, watch the trend."""
        now = self._clock()
        self.usage, self.sampled_at = usage_bytes, now
        self.metrics.memory_usage.set(usage_bytes)
        level = self._level_for(usage_bytes / self.limit.bytes)
        if level != self.level:
            self._transition(level)
        for relief in self._reliefs:
            try:
                relief(level)
            except Exception:
                logger.exception("memory relief %r failed", relief)
        if level >= Pressure.HIGH:
            self._collect(now)
        self._watch_trend(now, usage_bytes)
        return level

    def _level_for(self, fraction: float) -> Pressure:
        margin = self.settings.memory_hysteresis
        level = Pressure.LOW
        for candidate, threshold in self.thresholds.items():
            if fraction >= threshold or (self.level >= candidate
                                         and fraction >= threshold - margin):
                level = candidate
        return level

    def _transition(self, level: Pressure) -> None:
        before = self.level
        self.level = level
        self.transitions += 1
        self.metrics.memory_pressure.set(int(level))
        self.metrics.memory_transitions.labels(before.label, level.label).inc()
        log = logger.warning if level > before else logger.info
        log("memory pressure %s -> %s: %.0f of %.0f MiB (%.1f %%, %s)%s", before.label,
            level.label, self.usage / MIB, self.limit.bytes / MIB, 100 * self.usage_fraction,
            self.meter.usage_source, _ACTIONS.get(level, ""))

    def _collect(self, now: float) -> None:
        interval = self.settings.memory_gc_interval_s
        if self._last_gc is not None and now - self._last_gc < interval:
            return
        self._last_gc = now
        freed = gc.collect()
        if self._trim is not None:
            self._trim()
        self.gc_runs += 1
        self.metrics.memory_gc_runs.inc()
        logger.info("memory pressure %s: gc.collect() found %d unreachable objects%s",
                    self.level.label, freed,
                    "; malloc_trim returned freed heap pages" if self._trim else "")

    def _watch_trend(self, now: float, usage_bytes: int) -> None:
        self.leak.add(now, usage_bytes)
        slope = self.leak.slope_mb_per_hour()
        if slope is not None:
            self.metrics.memory_leak_slope.set(slope * MIB / 3600)
        suspected = self.leak.suspected()
        if suspected and not self._leak_reported:
            logger.warning("memory grows %.1f MiB/hour over the last %.0f s (threshold %g): "
                           "a leak is suspected; see GET /health/memory", slope,
                           self.leak.span_s, self.leak.threshold)
        elif self._leak_reported and not suspected:
            logger.info("memory growth is back under %g MiB/hour", self.leak.threshold)
        self._leak_reported = suspected

    # --- admission ---

    def admit(self, route: str) -> None:
        """Refuse new work the level cannot take: streams from high, all turns at critical."""
        level = self.level
        if level >= Pressure.CRITICAL or (route == "stream" and level >= Pressure.HIGH):
            self.refusals[route] = self.refusals.get(route, 0) + 1
            self.metrics.memory_refusals.labels(route, level.label).inc()
            raise MemoryPressure(
                f"the service is under {level.label} memory pressure and takes no new "
                f"{'streams' if route == 'stream' else 'turns'} now; retry shortly",
                headers={"Retry-After": str(self.settings.memory_retry_after_s)},
            )

    # --- reporting ---

    def report(self) -> dict[str, Any]:
        slope = self.leak.slope_mb_per_hour()
        leak = self.leak.suspected()
        if self.level >= Pressure.CRITICAL:
            status = "unhealthy"
        elif self.level > Pressure.LOW or leak:
            status = "degraded"
        else:
            status = "healthy"
        return {
            "status": status,
            "pressure": self.level.label,
            "rss_mb": round(rss_bytes() / MIB, 1),
            "usage_mb": round(self.usage / MIB, 1),
            "usage_source": self.meter.usage_source,
            "limit_mb": round(self.limit.bytes / MIB, 1),
            "limit_source": self.limit.source,
            "usage_pct": round(100 * self.usage_fraction, 1),
            "thresholds_pct": {level.label: round(100 * fraction, 1)
                               for level, fraction in self.thresholds.items()},
            "sampled_s_ago": (round(self._clock() - self.sampled_at, 3)
                              if self.sampled_at is not None else None),
            "trend_mb_per_hour": round(slope, 2) if slope is not None else None,
            "trend_window_s": round(self.leak.span_s, 1),
            "leak_suspected": leak,
            "transitions": self.transitions,
            "gc_runs": self.gc_runs,
            "refusals": dict(self.refusals),
        }


_ACTIONS = {
    Pressure.MODERATE: "; agent cache to half its budget",
    Pressure.HIGH: "; conversation store to half its budget, gc, new streams refused",
    Pressure.CRITICAL: "; new turns refused, turns in flight finish",
}
