"""The module-free checkpointer on a Redis without RedisJSON and RediSearch (as Valkey and
managed services are): chosen by ``auto``, serving every chat route, one hash per thread
with its TTL, erased completely; ``plain`` never calls MODULE LIST."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import MockLLM
from tests.servers.processes import ManagedProcess, start_app, start_redis


@pytest.fixture(scope="module")
def bare_redis() -> Iterator[ManagedProcess]:
    proc = start_redis(modules=False)
    yield proc
    proc.stop()


def test_auto_picks_the_plain_checkpointer_on_a_redis_without_modules(
    bare_redis: ManagedProcess, mock_llm: MockLLM
) -> None:
    client = redis.Redis(port=bare_redis.port)
    client.flushall()
    app = start_app({"REDIS_URL": f"redis://127.0.0.1:{bare_redis.port}/0",
                     "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_HISTORY_TTL_S": "600"})
    base = f"http://127.0.0.1:{app.port}"
    thread = f"{base}/v1/tenants/demo/threads/p1"
    try:
        ready = httpx.get(f"{base}/health/ready", timeout=10).json()
        assert ready["status"] == "ready" and "plain checkpointer" in ready["storage"]
        assert httpx.post(f"{thread}/messages", json={"message": "hello"},
                          timeout=30).status_code == 200
        tool = '[[tool:calculator {"expression": "6*7"}]]'
        assert "42" in httpx.post(f"{thread}/messages", json={"message": tool},
                                  timeout=30).json()["reply"]["content"]
        with httpx.stream("POST", f"{thread}/stream", json={"message": "streamed"},
                          timeout=30) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
        assert events[-1] == "event: done"
        history = httpx.get(f"{thread}/messages", timeout=10).json()["messages"]
        assert [m["role"] for m in history] == [
            "user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
        # one hash per thread, with the history TTL
        keys = [k.decode() for k in client.scan_iter("agenthost:thread:*")]
        assert keys == ["agenthost:thread:{demo/p1}"]
        assert 0 < client.pttl(keys[0]) <= 600_000
        # a second service sees the same thread (shared Redis)
        assert httpx.delete(thread, timeout=10).status_code == 204
        assert list(client.scan_iter("agenthost:thread:*")) == []
        assert httpx.get(f"{thread}/messages", timeout=10).status_code == 404
    finally:
        app.stop()


def test_plain_never_asks_for_modules(bare_redis: ManagedProcess, mock_llm: MockLLM) -> None:
    client = redis.Redis(port=bare_redis.port)
    client.config_resetstat()
    app = start_app({"REDIS_URL": f"redis://127.0.0.1:{bare_redis.port}/0",
                     "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_REDIS_CHECKPOINTER": "plain"})
    try:
        assert httpx.post(f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads/q/messages",
                          json={"message": "hi"}, timeout=30).status_code == 200
        stats = client.info("commandstats")
        assert not [name for name in stats if "module" in name], stats.keys()
    finally:
        app.stop()


def test_turns_go_on_after_redis_loses_its_scripts(bare_redis: ManagedProcess,
                                                   mock_llm: MockLLM) -> None:
    """A turn's two round trips are Lua scripts called by their SHA; a Redis that was
    restarted (or flushed its script cache) has forgotten them: they are loaded again."""
    client = redis.Redis(port=bare_redis.port)
    app = start_app({"REDIS_URL": f"redis://127.0.0.1:{bare_redis.port}/0",
                     "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_REDIS_CHECKPOINTER": "plain"})
    thread = f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads/flushed"
    try:
        for text in ("before", "after"):
            assert httpx.post(f"{thread}/messages", json={"message": text},
                              timeout=30).status_code == 200
            client.script_flush()
        history = httpx.get(f"{thread}/messages", timeout=10).json()["messages"]
        assert [m["content"] for m in history if m["role"] == "user"] == ["before", "after"]
        assert client.get("agenthost:turn-lock:{demo/flushed}") is None  # released
    finally:
        app.stop()
        client.close()
