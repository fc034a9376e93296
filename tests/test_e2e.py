"""The service as operators run it (``python -m app``) over a real socket."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REDIS_BACKENDS, MockLLM
from tests.servers.processes import ROOT, start_app, start_redis
from tests.waiting import wait_for


def chat(base: str, thread: str, text: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/tenants/demo/threads/{thread}/messages",
                      json={"message": text}, timeout=30)


def test_embedded_defaults_serve_a_conversation() -> None:
    app = start_app({})
    base = f"http://127.0.0.1:{app.port}"
    try:
        first = chat(base, "t1", "hi")
        assert first.status_code == 200, first.text
        assert "hi" in first.json()["reply"]["content"]
        second = chat(base, "t1", "second")
        assert "Before that you said: hi" in second.json()["reply"]["content"]
        history = httpx.get(f"{base}/v1/tenants/demo/threads/t1/messages").json()["messages"]
        assert len(history) == 4
        assert httpx.delete(f"{base}/v1/tenants/demo/threads/t1").status_code == 204
        assert httpx.get(f"{base}/v1/tenants/demo/threads/t1/messages").status_code == 404
        ready = httpx.get(f"{base}/health/ready").json()
        assert ready["status"] == "ready" and ready["auth"] == "off"
        said = " | ".join(ready["embedded_defaults"])
        for fragment in ("offline built-in model", "bounded in-memory", "tenants:", "auth: off"):
            assert fragment in said
        metrics = httpx.get(f"{base}/metrics").text
        assert 'agenthost_turns_total{outcome="ok"} 2.0' in metrics
    finally:
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete
        assert app.stop() in (0, -15)
    log = app.log_text()
    assert "agenthost shutting down" in log
    for sentence in ready["embedded_defaults"]:
        assert log.count(sentence) == 1


@pytest.mark.parametrize("checkpointer", REDIS_BACKENDS.values())
def test_history_survives_a_restart_with_redis(redis_url: str, mock_llm: MockLLM,
                                               checkpointer: str) -> None:
    env = {"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
           "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_REDIS_CHECKPOINTER": checkpointer}
    app = start_app(env)
    try:
        assert chat(f"http://127.0.0.1:{app.port}", "keep", "remember me").status_code == 200
    finally:
        app.stop()
    again = start_app(env)
    base = f"http://127.0.0.1:{again.port}"
    try:
        history = httpx.get(f"{base}/v1/tenants/demo/threads/keep/messages").json()["messages"]
        assert history[0]["content"] == "remember me"
        reply = chat(base, "keep", "and now").json()["reply"]["content"]
        assert reply == "mock reply to: and now (saw 4 messages)"
        ready = httpx.get(f"{base}/health/ready").json()
        assert ready["embedded_defaults"] == ["tenants: 1 from the bundled "
                                              f"{ROOT / 'config' / 'tenants.yaml'}",
                                              "auth: off, because no service or tenant keys "
                                              "are set; bound to 127.0.0.1"]
    finally:
        again.stop()


@pytest.mark.parametrize("checkpointer", REDIS_BACKENDS.values())
def test_redis_outage_is_503_then_recovers(mock_llm: MockLLM, checkpointer: str) -> None:
    redis = start_redis()
    port = redis.port
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "OPENAI_API_KEY": "sk-test",
           "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_REDIS_TIMEOUT_S": "1",
           "AGENTHOST_REDIS_CHECKPOINTER": checkpointer}
    app = start_app(env)
    base = f"http://127.0.0.1:{app.port}"
    try:
        assert chat(base, "t", "before").status_code == 200
        redis.kill()
        down = chat(base, "t", "during")
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "storage_unavailable"
        history = httpx.get(f"{base}/v1/tenants/demo/threads/t/messages", timeout=10)
        assert history.status_code == 503
        assert httpx.get(f"{base}/health/ready", timeout=10).status_code == 503
        assert httpx.get(f"{base}/health").status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert re.search(r"^agenthost_storage_errors_total [1-9]", metrics, re.MULTILINE)
        assert 'agenthost_http_responses_total{code="503"} 3.0' in metrics  # chat, history, ready
        # a fresh, empty Redis on the same port: no search indexes, no loaded scripts
        redis = start_redis(port)
        # The first calls may still fail (and trigger the repair); the service heals itself,
        # recreating the lost search indexes (repairs are rate-limited; readiness probes
        # trigger them too), or reloading its scripts (plain), without a restart.
        wait_for(lambda: chat(base, "t", "after").status_code == 200)
        repaired = ("had lost its search indexes; recreated them" if checkpointer == "langgraph"
                    else "")
        wait_for(lambda: httpx.get(f"{base}/health/ready", timeout=10).status_code == 200
                 and repaired in app.log_text())
        assert "failed during a turn of tenant" in app.log_text()
        assert chat(base, "t", "healed").status_code == 200
    finally:
        app.stop()
        redis.stop()


def test_public_bind_without_keys_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AGENTHOST_HOST": "0.0.0.0", "AGENTHOST_PORT": "1"},
    )
    assert result.returncode != 0
    assert "refusing to serve 0.0.0.0 with auth off" in result.stderr


def test_invalid_configuration_exits_with_the_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AGENTHOST_PORT": "not-a-port"},
    )
    assert result.returncode == 2
    assert "port" in result.stderr and "invalid configuration" in result.stderr




@pytest.mark.parametrize("checkpointer", REDIS_BACKENDS.values())
def test_two_replicas_never_interleave_turns_on_one_thread(
    redis_url: str, mock_llm: MockLLM, checkpointer: str
) -> None:
    import concurrent.futures

    mock_llm.control(latency_ms=50)
    env = {"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
           "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_REDIS_CHECKPOINTER": checkpointer}
    first, second = start_app(env), start_app(env)
    bases = [f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"]
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda i: chat(bases[i % 2], "shared", f"m{i}"), range(10)))
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        history = httpx.get(f"{bases[0]}/v1/tenants/demo/threads/shared/messages").json()
        roles = [m["role"] for m in history["messages"]]
        assert roles == ["user", "assistant"] * 10  # every turn kept, none interleaved
        said = sorted(m["content"] for m in history["messages"] if m["role"] == "user")
        assert said == sorted(f"m{i}" for i in range(10))
    finally:
        first.stop()
        second.stop()
