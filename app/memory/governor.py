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

Turns in flight are bounded as well, at every level: each admitted turn reserves what a turn
may hold at most (``turn_reserve_bytes``: ``REPLY_AMPLIFICATION`` times the largest reply
the upstream client accepts, plus ``TURN_BASE_BYTES``), and a turn is admitted only while
the reservations of this worker fit in its share of the room left below the critical line.
A burst of large replies is then refused at the door instead of taking the process past its
limit after admission (the soak in bench/soak.py with ``--burst-reply-kb``). One turn is
always admitted when none is in flight, so a small container still makes progress.
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


#: what one turn holds at its peak, per character of its reply: the reply read, decoded,
#: made a message, serialized into the checkpoint (and compressed), and encoded in the
#: response. Measured, and pinned, by tests/memory/test_turn_reserve.py (~10-14 with the
#: test's own client in the same process).
REPLY_AMPLIFICATION = 16
#: what a turn with a short reply holds (messages, graph state, buffers)
TURN_BASE_BYTES = 256 * 1024


class Admission:
    """An admitted turn's reservation; released once, when the turn ends."""

    __slots__ = ("_governor",)

    def __init__(self, governor: MemoryGovernor) -> None:
        self._governor: MemoryGovernor | None = governor

    def release(self) -> None:
        governor, self._governor = self._governor, None
        if governor is not None:
            governor._release()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Meter(Protocol):
    limit: Limit
    usage_source: str

    def usage_bytes(self) -> int: ...


class MemoryGovernor:
    def __init__(self, settings: Settings, meter: Meter, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, workers: int = 1) -> None:
        self.settings = settings
        #: processes whose memory ``meter`` counts, each admitting its own turns
        self.workers = max(1, workers)
        self.turn_reserve_bytes = (REPLY_AMPLIFICATION * settings.llm_max_reply_kb * 1024
                                   + TURN_BASE_BYTES)
        self.in_flight = 0
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

    def turns_allowed(self) -> int:
        """Turns this worker may have in flight: its share of the room below the critical
        line, in turn reservations."""
        ceiling = self.thresholds[Pressure.CRITICAL] * self.limit.bytes
        room = max(0.0, ceiling - self.usage) / self.workers
        return int(room // self.turn_reserve_bytes)

    def warn_if_no_turn_fits(self) -> bool:
        """At start: say so when not even one turn's reservation fits (a reply cap too large
        for the limit), since such a turn can take the process past its limit."""
        if self.turns_allowed() >= 1:
            return False
        logger.warning(
            "a turn may hold up to %.0f MiB (%d x AGENTHOST_LLM_MAX_REPLY_KB=%d KiB, plus "
            "%d KiB), more than the %.0f MiB this worker has below the critical line: turns "
            "run one at a time, and a reply that large could still reach the limit; lower "
            "AGENTHOST_LLM_MAX_REPLY_KB or raise the memory limit",
            self.turn_reserve_bytes / MIB, REPLY_AMPLIFICATION, self.settings.llm_max_reply_kb,
            TURN_BASE_BYTES // 1024,
            max(0.0, self.thresholds[Pressure.CRITICAL] * self.limit.bytes - self.usage)
            / self.workers / MIB)
        return True

    def admit(self, route: str) -> Admission:
        """Admit a turn (``route`` "turn" or "stream") or refuse it: streams from high, all
        turns at critical, and any turn whose reservation does not fit. The caller releases
        the admission when the turn ends."""
        level = self.level
        what = "streams" if route == "stream" else "turns"
        if level >= Pressure.CRITICAL or (route == "stream" and level >= Pressure.HIGH):
            self._refuse(route, level.label, f"the service is under {level.label} memory "
                         f"pressure and takes no new {what} now; retry shortly")
        if self.in_flight and self.in_flight >= self.turns_allowed():
            self._refuse(route, "reserve", f"the {self.in_flight} turns in flight hold the "
                         f"memory this worker has left; it takes no new {what} now; retry "
                         "shortly")
        self.in_flight += 1
        self.metrics.turns_in_flight.inc()
        return Admission(self)

    def _release(self) -> None:
        self.in_flight -= 1
        self.metrics.turns_in_flight.dec()

    def _refuse(self, route: str, reason: str, message: str) -> None:
        self.refusals[route] = self.refusals.get(route, 0) + 1
        self.metrics.memory_refusals.labels(route, reason).inc()
        raise MemoryPressure(
            message, headers={"Retry-After": str(self.settings.memory_retry_after_s)})

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
            "turns_in_flight": self.in_flight,
            "turns_allowed": self.turns_allowed(),
            "turn_reserve_mb": round(self.turn_reserve_bytes / MIB, 2),
            "workers_sharing": self.workers,
        }


_ACTIONS = {
    Pressure.MODERATE: "; agent cache to half its budget",
    Pressure.HIGH: "; conversation store to half its budget, finished streams' replay "
                   "dropped, gc, new streams refused",
    Pressure.CRITICAL: "; new turns refused, turns in flight finish",
}
