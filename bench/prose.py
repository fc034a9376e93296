"""Realistic message text for benches: prose from ``../shared/seeds``, sliced differently for
every message (so compression and caching see what real conversations give them)."""

from __future__ import annotations

from pathlib import Path

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
FALLBACK = ("I would like to book a cleaning next Tuesday afternoon, ideally after 3 pm, and "
            "ask whether my insurance covers the whitening we talked about last time. ")


def corpus() -> str:
    text = " ".join(p.read_text(errors="replace") for p in sorted(SEEDS.glob("*.txt")))
    return " ".join(text.split()) or FALLBACK * 200


class Prose:
    def __init__(self) -> None:
        self.text = corpus()
        self._offset = 0

    def message(self, size: int) -> str:
        """``size`` characters, a slice no earlier message started at."""
        span = max(1, len(self.text) - size)
        start = self._offset % span
        self._offset += size + 7919
        return self.text[start:start + size]
