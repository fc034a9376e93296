"""``load_test.py`` as its users run it: a subprocess that spawns the mock LLM and the
service (Gunicorn), drives turns and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers.processes import ROOT


def load_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "load_test.py", "--spawn-mock-llm",
                           "--mock-latency-ms", "5", "--mock-token-delay-ms", "1",
                           "--spawn-service", "--workers", "1", "--sample-s", "0.2", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_a_mixed_run_reports_every_turn_and_samples_memory(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = load_test("--threads", "6", "--turns", "2", "--mode", "mixed",
                       "--report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert (report["turns"], report["ok"], report["success_rate"]) == (12, 12, 1.0)
    assert report["errors"] == {}
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(report["ttft_ms"]) == {"p50", "p95", "p99"}  # half the threads streamed
    assert report["ttft_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["timeline"] and report["pressure_seen"] == ["low"]
    assert report["memory_mb"]["peak"] >= report["memory_mb"]["start"] > 0
    assert "12/12" in result.stderr  # the progress bar


def test_below_the_success_threshold_it_exits_non_zero_with_errors_by_kind(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run.json"
    result = load_test("--tenant-prefix", "nobody", "--threads", "3", "--turns", "1",
                       "--report", str(out))
    assert result.returncode == 1
    assert "FAIL: success rate 0.00% is below 99.00%" in result.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == {"http_404:tenant_not_found": 3}
