"""The edge as ASGI servers load it: ``uvicorn app.asgi:app`` (Gunicorn loads the same)."""

from __future__ import annotations

import sys

import httpx

from tests.conftest import MockLLM
from tests.servers.processes import free_port, start_app


def test_the_asgi_app_serves_with_settings_from_the_environment(mock_llm: MockLLM) -> None:
    port = free_port()
    proc = start_app(
        {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
         "AGENTHOST_LOG_LEVEL": "INFO"},
        port=port,
        args=[sys.executable, "-m", "uvicorn", "app.asgi:app", "--host", "127.0.0.1",
              "--port", str(port)],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        reply = httpx.post(f"{base}/v1/tenants/demo/threads/asgi/messages",
                           json={"message": "hello"}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["reply"]["content"].startswith("mock reply to: hello")
        ready = httpx.get(f"{base}/health/ready", timeout=30).json()
        assert ready["status"] == "ready"
    finally:
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
        assert proc.stop() in (0, -15)
    log = proc.log_text()
    assert "agenthost shutting down" in log
    assert "agenthost ready" in log  # logging configured from the settings at import
    assert "embedded default in force: persistence" in log
