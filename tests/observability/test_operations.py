"""The operations files: alert rules (promtool), the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import SettingsFactory, app_client
from tests.servers.processes import ROOT

DEPLOY = ROOT / "deploy"


def promtool(*args: str, cwd: Path = DEPLOY / "prometheus") -> str:
    result = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alert_rules_are_valid_and_fire_when_they_should() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


async def exported_metric_names(make_settings: SettingsFactory) -> set[str]:
    async with app_client(make_settings()) as client:
        await client.post("/v1/tenants/demo/threads/a/messages", json={"message": "hi"})
        text = (await client.get("/metrics")).text
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "agenthost.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


async def test_dashboard_queries_parse_and_name_only_exported_metrics(
    make_settings: SettingsFactory, tmp_path: Path,
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    # promtool parses each query as a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(queries)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in promtool(
        "check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    exported = await exported_metric_names(make_settings)
    named = {name for expr in queries for name in re.findall(r"agenthost_[a-z_]+", expr)}
    assert named <= exported, named - exported
