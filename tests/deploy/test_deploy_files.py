"""The deployment files, checked without a container engine (``make container-test``
builds and runs them for real with podman): the Dockerfile runs what the tests run,
compose.yaml is valid compose-spec and says what production needs, render.yaml is a
valid Blueprint, and every environment variable they set is one the service reads.

Render's own published schema cannot be fetched here; render.yaml is checked against a
strict schema written from Render's Blueprint reference (render-blueprint.schema.json).
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shlex
import socketserver
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from config.settings import Settings
from tests.servers.processes import GUNICORN_ARGS

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def settings_env_names() -> set[str]:
    names = {f"AGENTHOST_{name.upper()}" for name in Settings.model_fields}
    return names | {"REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID",
                    "WEB_CONCURRENCY", "SSL_CERT_FILE"}


# --- Dockerfile ---

def test_the_image_runs_the_command_the_tests_run() -> None:
    cmd = [args for op, args in dockerfile() if op == "CMD"]
    assert len(cmd) == 1
    assert json.loads(cmd[0]) == ["gunicorn", *GUNICORN_ARGS]
    makefile = (ROOT / "Makefile").read_text()
    assert f"$(BIN)/gunicorn {' '.join(GUNICORN_ARGS)}" in makefile  # `make run` too


def test_the_image_is_multi_stage_non_root_pinned_and_health_checked() -> None:
    steps = dockerfile()
    assert steps[0] == ("ARG", "BASE=python:3.12-slim")
    stages = [args for op, args in steps if op == "FROM"]
    assert stages == ["${BASE} AS build", "${BASE}"]
    runtime = steps[[op for op, _ in steps].index("FROM", 2):]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    health = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].endswith('CMD ["python3", "-m", "app.healthcheck"]')
    install = next(args for op, args in steps if op == "RUN" and "requirements.txt" in args)
    assert "--only-binary=:all:" in install and "pip==" in install
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.]*", line), line
    copied = {args.split()[0] for op, args in runtime if op == "COPY" and "--from" not in args}
    assert copied == {"app", "config"}
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:3] == ["!requirements.txt", "!app/", "!config/"]


def test_the_gunicorn_config_runs_from_the_image_layout() -> None:
    """The image holds app/ and config/ only: the config imports nothing else of ours."""
    source = (ROOT / "config" / "gunicorn.conf.py").read_text()
    imported = set(re.findall(r"^(?:from|import) (\w+)", source, re.MULTILINE))
    first_party = {path.name for path in ROOT.iterdir() if path.is_dir()}
    assert imported & first_party == {"app", "config"}, imported & first_party


def test_the_healthcheck_asks_the_service_for_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python3 -m app.healthcheck`` against a port that answers and one that does not."""
    from tests.servers.processes import free_port

    closed = free_port()
    monkeypatch.setenv("AGENTHOST_PORT", str(closed))
    check = [sys.executable, "-m", "app.healthcheck"]
    failed = subprocess.run(check, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert failed.returncode == 1 and f"port {closed} failed" in failed.stderr
    with socketserver.TCPServer(("127.0.0.1", 0), Health) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        monkeypatch.setenv("AGENTHOST_PORT", str(server.server_address[1]))
        try:
            ok = subprocess.run(check, capture_output=True, text=True, timeout=30, cwd=ROOT)
        finally:
            server.shutdown()
    assert ok.returncode == 0, ok.stderr


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


# --- compose.yaml ---

def test_compose_is_valid_compose_spec() -> None:
    jsonschema.validate(load("compose.yaml"), compose_schema())


def test_the_compose_spec_check_catches_mistakes() -> None:
    """The check can fail: a misspelt key and a wrong type are refused."""
    broken = copy.deepcopy(load("compose.yaml"))
    broken["services"]["agenthost"]["healthchek"] = broken["services"]["agenthost"].pop(
        "healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="healthchek"):
        jsonschema.validate(broken, compose_schema())
    broken = copy.deepcopy(load("compose.yaml"))
    broken["services"]["redis"]["depends_on"] = 5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_compose_runs_the_service_in_512m_beside_a_healthy_redis_8() -> None:
    compose = load("compose.yaml")
    service = compose["services"]["agenthost"]
    redis = compose["services"]["redis"]
    assert service["build"] == "." and service["mem_limit"] == "512m"
    assert service["deploy"]["resources"]["limits"]["memory"] == "512M"
    assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert service["healthcheck"]["test"] == ["CMD-SHELL", "python3 -m app.healthcheck"]
    assert service["ulimits"]["nofile"]["soft"] >= 10_000
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    grace = Settings().shutdown_grace_s
    assert int(service["stop_grace_period"].rstrip("s")) > grace
    assert redis["image"] == "redis:8"
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "memory" in redis["deploy"]["resources"]["limits"]
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    assert {"redis-data:/data"} <= set(redis["volumes"])
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["monitoring"]


def test_every_variable_the_deploy_files_set_is_a_setting() -> None:
    known = settings_env_names()
    compose_env = set(load("compose.yaml")["services"]["agenthost"]["environment"])
    render_env = {var["key"] for var in load("render.yaml")["services"][0]["envVars"]}
    assert compose_env <= known, compose_env - known
    assert render_env <= known, render_env - known


def test_monitoring_files_compose_mounts_exist_and_agree() -> None:
    compose = load("compose.yaml")
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == [
        "agenthost:8000"]
    dashboards = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/agenthost.yml").read_text())
    mounted = next(v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]
                   if v.startswith("./deploy/grafana/agenthost.json"))
    assert Path(mounted).parent == Path(dashboards["providers"][0]["options"]["path"])
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    """Its rule file path is the container's; checked here with the repo's rules beside it."""
    config = (ROOT / "deploy/prometheus/prometheus.yml").read_text().replace(
        "/etc/prometheus/alerts.yml", str(ROOT / "deploy/prometheus/alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# --- render.yaml ---

def render_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((HERE / "render-blueprint.schema.json").read_text())
    return schema


def test_render_blueprint_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(render_schema())
    jsonschema.Draft202012Validator(render_schema()).validate(load("render.yaml"))


def test_the_render_schema_check_catches_mistakes() -> None:
    blueprint = load("render.yaml")
    for mutate, expected in (
        (lambda b: b["services"][0].update(healthCheckPth="/health"), "healthCheckPth"),
        (lambda b: b["services"][0].update(region="mars"), "mars"),
        (lambda b: b["services"][1].pop("image"), "image"),
        (lambda b: b["services"][0]["envVars"].append({"key": "X"}), "X"),
    ):
        broken = copy.deepcopy(blueprint)
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError, match=expected):
            jsonschema.Draft202012Validator(render_schema()).validate(broken)


def test_render_blueprint_wires_the_service_to_its_redis() -> None:
    blueprint = load("render.yaml")
    web, redis = blueprint["services"]
    assert (web["type"], web["runtime"], web["healthCheckPath"]) == ("web", "docker", "/health")
    assert (ROOT / web["dockerfilePath"]).exists()
    assert web["maxShutdownDelaySeconds"] > Settings().shutdown_grace_s
    env = {var["key"]: var for var in web["envVars"]}
    assert env["AGENTHOST_HOST"]["value"] == "0.0.0.0"
    source = env["REDIS_URL"]["fromService"]
    assert (source["type"], source["name"]) == (redis["type"], redis["name"])
    assert redis["image"]["url"].endswith("/redis:8")
    assert "--appendonly yes" in redis["dockerCommand"]
    assert shlex.split(redis["dockerCommand"])[0] == "redis-server"
    # the hostport Render hands over becomes a URL the service connects to
    assert Settings(redis_url="agenthost-redis:6379").redis_url is not None
