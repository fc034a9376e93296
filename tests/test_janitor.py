"""The Janitor: every sweep runs, each at its interval, and one failing stops none."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.janitor import Janitor

# A safety net for a broken janitor, never the measure: the tests wait for events.
NEVER_S = 10.0


async def test_janitor_runs_every_sweep_and_survives_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    janitor = Janitor(interval_s=0.01)
    calls: list[str] = []
    ran_three_times = asyncio.Event()

    def broken() -> int:
        raise RuntimeError("boom")

    async def counted() -> int:
        calls.append("async")
        if len(calls) >= 3:
            ran_three_times.set()
        return 2

    janitor.add("broken", broken)
    janitor.add("counted", counted)
    janitor.add("plain", lambda: 0)
    with caplog.at_level(logging.ERROR):
        assert await janitor.run_once() == {"counted": 2, "plain": 0}
    assert "janitor sweep broken failed" in caplog.text
    janitor.start()
    assert janitor.running
    async with asyncio.timeout(NEVER_S):
        await ran_three_times.wait()  # the loop goes on past the failing sweep
    await janitor.stop()
    assert not janitor.running


async def test_janitor_runs_a_sweep_at_its_own_interval() -> None:
    janitor = Janitor(interval_s=3600)
    calls = {"fast": 0, "slow": 0}
    fast_ran_three_times = asyncio.Event()

    def fast() -> int:
        calls["fast"] += 1
        if calls["fast"] >= 3:
            fast_ran_three_times.set()
        return 0

    def slow() -> int:
        calls["slow"] += 1
        return 0

    janitor.add("fast", fast, 0.01)
    janitor.add("slow", slow)  # the janitor's own interval: an hour
    janitor.start()
    async with asyncio.timeout(NEVER_S):
        await fast_ran_three_times.wait()
    await janitor.stop()
    assert calls["slow"] == 0
