"""Pressure levels, hysteresis, reliefs, gc, admission and the report, with a fake meter."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.errors import MemoryPressure
from app.memory.governor import MemoryGovernor, Pressure
from app.memory.trend import MAX_POINTS, LeakDetector
from app.memory.usage import MIB, Limit
from app.observability.metrics import Metrics
from config.settings import Settings
from tests.clock import FakeClock

LIMIT = 1000 * MIB


class FakeMeter:
    usage_source = "fake"

    def __init__(self) -> None:
        self.limit = Limit(LIMIT, "setting")
        self.reading = 100 * MIB

    def usage_bytes(self) -> int:
        return self.reading


def governor(clock: FakeClock | None = None, **overrides: object) -> MemoryGovernor:
    settings = Settings(**{"memory_gc_interval_s": 30, **overrides})  # type: ignore[arg-type]
    return MemoryGovernor(settings, FakeMeter(), metrics=Metrics(), clock=clock or FakeClock())


def pct(p: float) -> int:
    return int(LIMIT * p / 100)


def test_levels_rise_at_thresholds_and_fall_only_below_the_margin() -> None:
    gov = governor()
    seen = [gov.observe(pct(p)).label for p in (
        50, 70, 66, 64.9, 85, 81, 95, 91, 89.9, 79.9, 10)]
    assert seen == ["low", "moderate", "moderate", "low", "high", "high", "critical",
                    "critical", "high", "moderate", "low"]
    assert gov.transitions == 7


def test_each_transition_is_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    gov = governor()
    caplog.set_level(logging.INFO, logger="app.memory.governor")
    for p in (90, 91, 92, 50, 50):
        gov.observe(pct(p))
    transitions = [r for r in caplog.records if "memory pressure" in r.message
                   and "->" in r.message]
    assert [r.levelname for r in transitions] == ["WARNING", "INFO"]
    assert "low -> high" in transitions[0].message
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(gov.metrics.render().decode())
               for s in family.samples}
    assert samples[("agenthost_memory_pressure_transitions_total",
                    (("from_level", "low"), ("to_level", "high")))] == 1
    assert samples[("agenthost_memory_pressure_level", ())] == 0
    assert samples[("agenthost_memory_usage_bytes", ())] == pct(50)
    assert samples[("agenthost_memory_limit_bytes", ())] == LIMIT


def test_reliefs_hear_every_level_and_a_failing_one_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gov = governor()
    heard: list[Pressure] = []

    def broken(level: Pressure) -> None:
        raise RuntimeError("boom")

    gov.on_pressure(broken)
    gov.on_pressure(heard.append)
    for p in (10, 75, 90):
        gov.observe(pct(p))
    assert heard == [Pressure.LOW, Pressure.MODERATE, Pressure.HIGH]
    assert sum("memory relief" in r.message for r in caplog.records) == 3


def test_gc_runs_under_high_pressure_at_most_once_per_interval() -> None:
    clock = FakeClock()
    gov = governor(clock)
    assert gov._trim is not None  # glibc here: freed heap pages go back to the system
    trims: list[int] = []
    gov._trim = lambda: trims.append(1)
    gov.observe(pct(80))
    assert gov.gc_runs == 0  # moderate: no gc
    for _ in range(5):
        gov.observe(pct(90))
        clock.advance(5)
    assert gov.gc_runs == 1
    clock.advance(10)
    gov.observe(pct(96))
    assert gov.gc_runs == 2 and len(trims) == 2


def test_streams_are_refused_from_high_and_turns_at_critical() -> None:
    gov = governor(memory_retry_after_s=9)
    gov.observe(pct(80))
    gov.admit("stream")
    gov.admit("turn")
    gov.observe(pct(86))
    gov.admit("turn")
    with pytest.raises(MemoryPressure) as refused:
        gov.admit("stream")
    assert refused.value.status_code == 503 and refused.value.code == "memory_pressure"
    assert refused.value.headers == {"Retry-After": "9"}
    gov.observe(pct(97))
    with pytest.raises(MemoryPressure, match="critical memory pressure"):
        gov.admit("turn")
    assert gov.refusals == {"stream": 1, "turn": 1}
    gov.observe(pct(20))
    gov.admit("stream")
    gov.admit("turn")
    assert 'agenthost_memory_refusals_total{level="critical",route="turn"} 1.0' in \
        gov.metrics.render().decode()


def test_report_status_follows_the_level() -> None:
    gov = governor()
    statuses = []
    for p in (10, 75, 90, 97):
        gov.observe(pct(p))
        report = gov.report()
        statuses.append((report["status"], report["pressure"]))
    assert statuses == [("healthy", "low"), ("degraded", "moderate"), ("degraded", "high"),
                        ("unhealthy", "critical")]
    assert report["limit_mb"] == 1000 and report["limit_source"] == "setting"
    assert report["usage_pct"] == 97.0 and report["usage_source"] == "fake"
    assert report["rss_mb"] > 10


def test_thresholds_must_rise() -> None:
    with pytest.raises(ValueError, match="moderate < high < critical"):
        Settings(memory_moderate=0.9, memory_high=0.8)


def test_a_steady_climb_is_a_suspected_leak_and_a_flat_line_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    gov = governor(clock, memory_leak_window_s=3600, memory_leak_warmup_s=600,
                   memory_leak_mb_per_hour=50)
    for minute in range(10):  # warm-up: a fast climb that does not count
        gov.observe(100 * MIB + minute * 10 * MIB)
        clock.advance(60)
    assert gov.report()["trend_mb_per_hour"] is None
    for minute in range(40):  # then +2 MiB a minute: 120 MiB/hour
        gov.observe(200 * MIB + minute * 2 * MIB)
        clock.advance(60)
    report = gov.report()
    assert report["trend_mb_per_hour"] == pytest.approx(120, rel=0.01)
    assert report["leak_suspected"] is True and report["status"] == "degraded"
    warnings = [r for r in caplog.records if "a leak is suspected" in r.message]
    assert len(warnings) == 1
    for _ in range(60):  # flat for an hour: the window forgets the climb
        gov.observe(280 * MIB)
        clock.advance(60)
    report = gov.report()
    assert abs(report["trend_mb_per_hour"]) < 5 and report["leak_suspected"] is False
    assert report["status"] == "healthy"


def test_leak_detector_keeps_a_bounded_number_of_points() -> None:
    detector = LeakDetector(window_s=3600, warmup_s=0, threshold_mb_per_hour=1, started_at=0)
    for second in range(20000):
        detector.add(float(second), MIB)
    assert len(detector._points) <= MAX_POINTS + 1
    assert detector.slope_mb_per_hour() == pytest.approx(0)


def test_turns_in_flight_are_admitted_only_while_their_reservations_fit() -> None:
    # a 6 MiB reply cap: 96 MiB + 0.25 per turn; critical at 950 MiB of 1000
    gov = governor(llm_max_reply_kb=6 * 1024, memory_retry_after_s=4)
    assert gov.turn_reserve_bytes == int(96.25 * MIB)
    gov.observe(650 * MIB)  # 300 MiB of room: 3 turns
    assert gov.turns_allowed() == 3
    held = [gov.admit("turn"), gov.admit("stream"), gov.admit("turn")]
    with pytest.raises(MemoryPressure, match="3 turns in flight") as refused:
        gov.admit("turn")
    assert refused.value.headers == {"Retry-After": "4"}
    assert gov.refusals == {"turn": 1}
    assert 'agenthost_memory_refusals_total{level="reserve",route="turn"} 1.0' in \
        gov.metrics.render().decode()
    assert "agenthost_turns_in_flight 3.0" in gov.metrics.render().decode()
    held[0].release()
    held[0].release()  # once only
    assert gov.in_flight == 2
    with gov.admit("turn"):
        assert gov.in_flight == 3
    assert gov.in_flight == 2
    report = gov.report()
    assert report["turns_in_flight"] == 2 and report["turns_allowed"] == 3
    assert report["turn_reserve_mb"] == 96.25


def test_one_turn_is_always_admitted_and_workers_share_the_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gov = governor(llm_max_reply_kb=1024)
    gov.observe(940 * MIB)  # 10 MiB of room: less than one reservation
    assert gov.turns_allowed() == 0
    with caplog.at_level(logging.WARNING, logger="app.memory.governor"):
        assert gov.warn_if_no_turn_fits()
    assert "a turn may hold up to 16 MiB" in caplog.text
    assert "lower AGENTHOST_LLM_MAX_REPLY_KB" in caplog.text
    first = gov.admit("turn")  # none in flight: progress
    with pytest.raises(MemoryPressure):
        gov.admit("turn")
    first.release()
    shared = MemoryGovernor(Settings(llm_max_reply_kb=6 * 1024), FakeMeter(),
                            metrics=Metrics(), clock=FakeClock(), workers=2)
    shared.observe(650 * MIB)
    assert shared.turns_allowed() == 1  # 150 MiB each
    assert shared.report()["workers_sharing"] == 2
    assert not shared.warn_if_no_turn_fits()
