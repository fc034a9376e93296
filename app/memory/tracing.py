"""``AllocationTracer``: where memory grew, from tracemalloc snapshot diffs.

Off unless ``AGENTHOST_MEMORY_TRACEMALLOC=true``: tracing every allocation costs CPU (see
README). When on, tracing starts with the app and a baseline snapshot is taken; each report
compares a fresh snapshot with the previous one (or the baseline) by allocation site.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

FRAMES = 1  # one frame per allocation: the site; deeper stacks cost more memory and CPU
# Our own snapshots' bookkeeping would otherwise top every report.
_IGNORED = (tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<unknown>"))


class AllocationTracer:
    def __init__(self) -> None:
        self._started_here = False
        self._previous: tracemalloc.Snapshot | None = None
        self._previous_at = 0.0

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
            self._started_here = True
        self._previous = self._snapshot()
        self._previous_at = time.monotonic()

    def stop(self) -> None:
        self._previous = None
        if self._started_here:
            tracemalloc.stop()
            self._started_here = False

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(_IGNORED)

    def top(self, limit: int = 20) -> dict[str, Any]:
        """The sites that grew most since the last report (the first: since startup)."""
        if self._previous is None:
            raise RuntimeError("allocation tracing is not running")
        snapshot = self._snapshot()
        now = time.monotonic()
        stats = snapshot.compare_to(self._previous, "lineno")
        since = now - self._previous_at
        self._previous, self._previous_at = snapshot, now
        traced, peak = tracemalloc.get_traced_memory()
        return {
            "since_s": round(since, 3),
            "traced_bytes": traced,
            "traced_peak_bytes": peak,
            "top": [
                {
                    "site": f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}",
                    "size_bytes": stat.size,
                    "size_diff_bytes": stat.size_diff,
                    "count": stat.count,
                    "count_diff": stat.count_diff,
                }
                for stat in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:limit]
            ],
        }
