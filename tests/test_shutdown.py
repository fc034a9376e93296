"""SIGTERM with work in flight: a real service (``python -m app``) on Redis, mock upstream."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
import redis

from tests.conftest import REDIS_BACKENDS, MockLLM
from tests.servers.processes import start_app
from tests.sse import Event, read_sse
from tests.waiting import wait_until

PATH = "/v1/tenants/demo/threads/{thread}"


@pytest.mark.parametrize("checkpointer", REDIS_BACKENDS.values())
async def test_sigterm_lets_running_turns_finish_and_store_then_exits(
    redis_url: str, mock_llm: MockLLM, checkpointer: str
) -> None:
    app = start_app({"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
                     "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_SHUTDOWN_GRACE_S": "20",
                     "AGENTHOST_REDIS_CHECKPOINTER": checkpointer})
    base = f"http://127.0.0.1:{app.port}"
    mock_llm.control(latency_ms=1500)  # both turns are mid-call when the signal comes
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def json_turn() -> httpx.Response:
                return await client.post(PATH.format(thread="json") + "/messages",
                                         json={"message": "finish me"})

            async def streamed_turn() -> list[Event]:
                got: list[Event] = []
                async with client.stream("POST", PATH.format(thread="sse") + "/stream",
                                         json={"message": "stream me"}) as response:
                    async for item in read_sse(response):
                        if isinstance(item, Event):
                            got.append(item)
                return got

            turns = asyncio.gather(json_turn(), streamed_turn())
            await wait_until(lambda: mock_llm.count() >= 2)  # both calls reached the mock
            assert mock_llm.count() == 2
            app.signal(signal.SIGTERM)
            response, streamed = await turns
        assert response.status_code == 200
        assert response.json()["reply"]["content"] == "mock reply to: finish me (saw 2 messages)"
        assert [e.event for e in streamed][-2:] == ["message", "done"]
        code = app.proc.wait(30)
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert "agenthost shutting down" in app.log_text()
    finally:
        app.stop()
        mock_llm.control(latency_ms=0)
    with redis.Redis.from_url(redis_url) as client:
        assert list(client.scan_iter("agenthost:turn-lock:*")) == []
    # Both turns were stored: a new service on the same Redis reads them back.
    again = start_app({"REDIS_URL": redis_url, "AGENTHOST_REDIS_CHECKPOINTER": checkpointer})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{again.port}") as client:
            for thread, said in (("json", "finish me"), ("sse", "stream me")):
                response = await client.get(PATH.format(thread=thread) + "/messages")
                history = response.json()["messages"]
                assert [m["role"] for m in history] == ["user", "assistant"]
                assert history[0]["content"] == said
    finally:
        again.stop()
