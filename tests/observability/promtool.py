"""Prometheus's own tools on what the service exports (Debian's ``prometheus`` package)."""

from __future__ import annotations

import subprocess


def assert_promtool_accepts(metrics: str) -> None:
    """``promtool check metrics``: names, units, suffixes, help texts."""
    result = subprocess.run(["promtool", "check", "metrics"], input=metrics, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
