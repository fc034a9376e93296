"""Faults and fairness against real processes: a Redis paused under the service, and
messages sent to one thread at once across two Gunicorn workers (double-texting)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import httpx
import pytest

from tests.conftest import MockLLM
from tests.servers.processes import start_app, start_gunicorn, start_redis


def test_a_lock_request_lost_in_a_redis_stall_does_not_block_the_thread(
    mock_llm: MockLLM,
) -> None:
    """Redis paused while a turn takes its thread lock: the turn fails (503); Redis resumes
    and applies the lock request nobody holds now. The next turn on that thread is served:
    the orphan lapses within one lease (2 s here), where it used to outlive the turn
    timeout (20 s here: a 504)."""
    redis = start_redis()
    app = start_app({"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                     "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_REDIS_TIMEOUT_S": "1", "AGENTHOST_THREAD_LEASE_S": "2",
                     "AGENTHOST_TURN_TIMEOUT_S": "20", "AGENTHOST_LLM_MAX_RETRIES": "0"})
    url = f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads/stalled/messages"
    try:
        assert httpx.post(url, json={"message": "before"}, timeout=30).status_code == 200
        redis.signal(signal.SIGSTOP)
        try:
            stalled = httpx.post(url, json={"message": "during"}, timeout=60)
        finally:
            redis.signal(signal.SIGCONT)
        assert stalled.status_code == 503, stalled.text
        after = httpx.post(url, json={"message": "after"}, timeout=60)
        assert after.status_code == 200, after.text
        history = httpx.get(url, timeout=30).json()["messages"]
        assert [m["content"] for m in history if m["role"] == "user"] == ["before", "after"]
    finally:
        app.stop()
        redis.signal(signal.SIGCONT)
        redis.stop()


async def post_many(url: str, count: int, headers: dict[str, str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return list(await asyncio.gather(*(
            client.post(url, json={"message": f"message {i}"}, headers=headers)
            for i in range(count))))


@pytest.mark.parametrize("policy", ["enqueue", "reject"])
def test_double_texting_across_two_workers_follows_the_policy(
    mock_llm: MockLLM, policy: str
) -> None:
    """20 messages at once on one thread, spread over 2 Gunicorn workers sharing Redis:
    enqueue serves them one after another; reject serves what finds the thread free and
    answers the rest 409 thread_busy with Retry-After. Either way the history alternates
    user/assistant, one reply per served message."""
    mock_llm.control(latency_ms=100)
    redis = start_redis()
    app = start_gunicorn({"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                          "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                          "AGENTHOST_WORKERS": "2", "AGENTHOST_THREAD_WAIT_S": "60"})
    url = f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads/busy/messages"
    try:
        responses = asyncio.run(post_many(url, 20, {"X-Busy-Policy": policy}))
        statuses = Counter(r.status_code for r in responses)
        if policy == "enqueue":
            assert statuses == {200: 20}, [r.text for r in responses if r.status_code != 200]
        else:
            assert statuses[200] >= 1 and statuses[409] >= 1, statuses
            assert statuses[200] + statuses[409] == 20
            for refused in (r for r in responses if r.status_code == 409):
                assert refused.json()["error"]["code"] == "thread_busy"
                assert int(refused.headers["Retry-After"]) >= 1
        history = httpx.get(url, timeout=30).json()["messages"]
        roles = [m["role"] for m in history]
        assert roles == ["user", "assistant"] * statuses[200]
        served = {r.json()["reply"]["content"] for r in responses if r.status_code == 200}
        assert len(served) == statuses[200]
    finally:
        app.stop()
        redis.stop()


def test_a_redis_restart_costs_no_turn_once_it_is_back(mock_llm: MockLLM) -> None:
    """Redis restarts (empty) under a service whose pool holds many connections: once it
    answers again, a burst of 80 turns is served in full. (It used to get 15-23 x 503
    from connections that died with the old Redis, and from the lost search indexes.)"""
    redis = start_redis()
    port = redis.port
    app = start_app({"REDIS_URL": f"redis://127.0.0.1:{port}/0",
                     "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_LLM_MAX_RETRIES": "0"})
    base = f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads"
    try:
        warm = asyncio.run(burst(base, "warm", 40))  # the pool opens ~40 connections
        assert Counter(warm) == {200: 40}
        redis.stop()
        redis = start_redis(port)
        after = asyncio.run(burst(base, "after", 80))
        assert Counter(after) == {200: 80}
    finally:
        app.stop()
        redis.stop()


async def burst(base: str, name: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(*(
            client.post(f"{base}/{name}-{i}/messages", json={"message": "hi"})
            for i in range(count)))
    return [r.status_code for r in responses]
