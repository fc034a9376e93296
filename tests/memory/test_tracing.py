"""The allocation report names the site that grew."""

from __future__ import annotations

import tracemalloc

import pytest

from app.memory.tracing import AllocationTracer


def test_top_names_the_site_that_grew_then_only_new_growth() -> None:
    tracer = AllocationTracer()
    assert not tracemalloc.is_tracing()
    tracer.start()
    try:
        held = [bytes(1000) + bytes([i % 256]) for i in range(5000)]  # ~5 MB on this line
        report = tracer.top(5)
        top = report["top"][0]
        assert top["site"].endswith("test_tracing.py:17")
        assert top["size_diff_bytes"] > 4_000_000 and top["count_diff"] >= 5000
        again = tracer.top(5)  # nothing new since: that site no longer grows
        assert all(not s["site"].endswith("test_tracing.py:17") or s["size_diff_bytes"] == 0
                   for s in again["top"])
        assert len(held) == 5000
    finally:
        tracer.stop()
    assert not tracemalloc.is_tracing()
    with pytest.raises(RuntimeError, match="not running"):
        tracer.top()
