"""The service as ``make run`` serves it: Gunicorn, Uvicorn workers, metrics across workers."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import MockLLM
from tests.observability.promtool import assert_promtool_accepts
from tests.servers.processes import (
    ROOT,
    free_port,
    start_gunicorn,
    start_prometheus,
    start_redis,
)
from tests.waiting import wait_for

TURNS = 150


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_every_worker_and_survive_recycling(
    redis_url: str, mock_llm: MockLLM
) -> None:
    # Workers are replaced after 10-60 requests (max_requests 10, jitter 50): 150 turns
    # over two workers recycle at least one, whose counts must stay in the totals.
    app = start_gunicorn({"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
                          "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_WORKERS": "2",
                          "AGENTHOST_WORKER_MAX_REQUESTS": "10"})
    base = f"http://127.0.0.1:{app.port}"

    resets: list[str] = []

    def retried(call: Callable[[], httpx.Response]) -> httpx.Response:
        # A worker that reaches max_requests may reset a connection it had just accepted,
        # unread (gunicorn#3038); the request was not served, so it is safe to send again.
        for _ in range(5):
            try:
                return call()
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                resets.append(type(exc).__name__)
        raise AssertionError("reset five times in a row")

    def get(path: str) -> httpx.Response:
        # every request counts towards max_requests: reads meet recycling workers too
        return retried(lambda: httpx.get(f"{base}{path}", timeout=30))

    def turn(i: int) -> int:
        # a new connection each time, so that the kernel spreads them over the workers
        response = retried(lambda: httpx.post(f"{base}/v1/tenants/demo/threads/g{i}/messages",
                                              json={"message": f"hello {i}"}, timeout=30))
        assert response.status_code == 200, response.text
        pid = get("/cache-stats").json()["worker_pid"]
        return int(pid)

    try:
        with ThreadPoolExecutor(8) as pool:
            pids = set(pool.map(turn, range(TURNS)))
        assert len(pids) >= 3, pids  # two workers, and at least one that replaced one
        assert len(resets) <= TURNS // 10, resets
        # no turn was served twice or half: a reset request had not been read
        for i in range(TURNS):
            history = get(f"/v1/tenants/demo/threads/g{i}/messages").json()
            assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
        assert "Maximum request limit" in app.log_text()
        for _ in range(6):  # whichever worker answers the scrape
            metrics = get("/metrics").text
            assert sample(metrics, 'agenthost_turns_total{outcome="ok"}') == TURNS
            assert sample(metrics, "agenthost_agent_cache_misses_total") >= 1
            assert sample(metrics, "agenthost_streams_active") == 0
        assert "agenthost_memory_limit_bytes" in metrics
        # each worker counts the whole tree (master and workers), more than its own RSS
        def memory() -> dict[str, Any]:
            body: dict[str, Any] = get("/health/memory").json()
            return body

        assert memory()["usage_source"] == "process tree PSS"
        wait_for(lambda: (m := memory())["usage_mb"] > m["rss_mb"])
        assert_promtool_accepts(metrics)
        # A real Prometheus scrapes it and sees the same totals.
        prometheus = start_prometheus(f"127.0.0.1:{app.port}")
        try:
            query = f"http://127.0.0.1:{prometheus.port}/api/v1/query"

            def scraped(expr: str) -> float | None:
                result = httpx.get(query, params={"query": expr}).json()["data"]["result"]
                return float(result[0]["value"][1]) if result else None

            wait_for(lambda: scraped('agenthost_turns_total{outcome="ok"}') == TURNS)
            # a scrape may meet a recycling worker's reset too: up again at the next
            wait_for(lambda: scraped('up{job="agenthost"}') == 1)
            assert scraped("agenthost_memory_pressure_level") == 0
        finally:
            prometheus.stop()
    finally:
        app.signal(signal.SIGTERM)
        code = app.proc.wait(60)
    assert code == 0
    assert "Shutting down: Master" in app.log_text()


def test_without_redis_one_worker_serves_and_says_why(mock_llm: MockLLM) -> None:
    app = start_gunicorn({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                          "AGENTHOST_WORKERS": "4"})
    base = f"http://127.0.0.1:{app.port}"
    try:
        for i in range(3):
            response = httpx.post(f"{base}/v1/tenants/demo/threads/one/messages",
                                  json={"message": f"m{i}"}, timeout=30)
            assert response.status_code == 200
        history = httpx.get(f"{base}/v1/tenants/demo/threads/one/messages").json()
        assert len(history["messages"]) == 6  # every turn reached the one worker's memory
        wait_for(lambda: "running 1 worker, not 4" in app.log_text())
        assert "worker recycling (max_requests) is off" in app.log_text()
        assert app.log_text().count("Booting worker with pid") == 1
    finally:
        app.stop()


def test_make_run_serves_through_gunicorn() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(BIN)/gunicorn -c config/gunicorn.conf.py app.asgi:app\n" in makefile


def test_starts_while_redis_is_down_answers_503_at_once_and_recovers(
    mock_llm: MockLLM,
) -> None:
    redis_port = free_port()  # nothing listens there yet
    app = start_gunicorn({"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                          "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                          "AGENTHOST_WORKERS": "2"})
    base = f"http://127.0.0.1:{app.port}"
    redis = None
    try:
        assert httpx.get(f"{base}/health").status_code == 200
        ready = httpx.get(f"{base}/health/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"].startswith("redis unreachable")
        for i in range(4):  # new connections: both workers answer at once, not after the
            # Redis timeout (5 s): this client gives up after 3
            down = httpx.post(f"{base}/v1/tenants/demo/threads/d{i}/messages",
                              json={"message": "hello"}, timeout=3)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "storage_unavailable"
        assert "unreachable at start" in app.log_text()
        redis = start_redis(redis_port)
        # Both workers recover by themselves: every new connection is served.
        wait_for(lambda: all(
            httpx.post(f"{base}/v1/tenants/demo/threads/up{i}/messages",
                       json={"message": "hello"}, timeout=10).status_code == 200
            for i in range(6)))
        wait_for(lambda: httpx.get(f"{base}/health/ready", timeout=10).status_code == 200)
        history = httpx.get(f"{base}/v1/tenants/demo/threads/up0/messages").json()
        assert [m["role"] for m in history["messages"]][:2] == ["user", "assistant"]
    finally:
        app.stop()
        if redis is not None:
            redis.stop()
