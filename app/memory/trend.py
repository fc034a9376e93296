"""``LeakDetector``: the slope of memory over a window, by least squares.

Samples start after a warm-up (caches, pools and the allocator's arenas fill first) and are
kept at most ``MAX_POINTS`` per window, so the detector's own memory is bounded whatever the
sampling rate. The slope is reported once the samples span a quarter of the window; a leak
is suspected only when they span half of it and the slope exceeds the threshold.
"""

from __future__ import annotations

import statistics
from collections import deque

MAX_POINTS = 360
SECONDS_PER_HOUR = 3600.0
MIB = 2**20


class LeakDetector:
    def __init__(self, *, window_s: float, warmup_s: float, threshold_mb_per_hour: float,
                 started_at: float) -> None:
        self.window_s = window_s
        self.threshold = threshold_mb_per_hour
        self._start = started_at + warmup_s
        self._every = window_s / MAX_POINTS
        self._points: deque[tuple[float, float]] = deque()
        self._slope: float | None = None  # fitted when a point is kept, read many times

    def add(self, now: float, usage_bytes: int) -> None:
        if now < self._start:
            return
        if self._points and now - self._points[-1][0] < self._every:
            return
        self._points.append((now, usage_bytes / MIB))
        while self._points and now - self._points[0][0] > self.window_s:
            self._points.popleft()
        self._slope = self._fit()

    @property
    def span_s(self) -> float:
        return self._points[-1][0] - self._points[0][0] if len(self._points) > 1 else 0.0

    def slope_mb_per_hour(self) -> float | None:
        """Growth over the window, or None until the samples span a quarter of it."""
        return self._slope

    def _fit(self) -> float | None:
        if len(self._points) < 3 or self.span_s < self.window_s / 4:
            return None
        times = [t for t, _ in self._points]
        sizes = [mb for _, mb in self._points]
        slope, _ = statistics.linear_regression(times, sizes)
        return slope * SECONDS_PER_HOUR

    def suspected(self) -> bool:
        slope = self.slope_mb_per_hour()
        return slope is not None and self.span_s >= self.window_s / 2 and slope > self.threshold
