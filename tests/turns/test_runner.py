"""TurnRunner in-process: the offline model (or a scripted one) on the in-memory backend."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx2
import openai
import pytest
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool

from app.agents.graph import TenantAgent, build_agent_graph
from app.agents.tools import build_builtin_tools
from app.errors import UpstreamError, UpstreamTimeout
from app.llm.offline import OfflineChatModel
from app.persistence.base import thread_key
from app.persistence.memory import BoundedMemorySaver, MemoryBackend
from app.turns.events import Replied, Token, ToolCalled, ToolReturned, TurnEvent
from app.turns.runner import TurnRunner
from config.settings import Settings
from tests.conftest import MockLLM, SettingsFactory, app_client

Model = Runnable[LanguageModelInput, BaseMessage]


def runner_and_agent(model: Model | None = None, tools: Sequence[BaseTool] = (),
                     **overrides: Any) -> tuple[TurnRunner, TenantAgent, MemoryBackend]:
    backend = MemoryBackend(BoundedMemorySaver(max_threads=100, ttl_s=600))
    settings = Settings(**overrides)
    runner = TurnRunner(build_agent_graph(backend.checkpointer), backend, settings)
    chosen: Model = model or OfflineChatModel().bind_tools(list(tools))  # type: ignore[assignment]
    agent = TenantAgent("t", SystemMessage("sys"), chosen, {t.name: t for t in tools}, 20, 40,
                        4000, 5.0)
    return runner, agent, backend


async def test_a_streamed_turn_reports_tokens_tools_and_the_reply_in_order() -> None:
    time_tool = build_builtin_tools()["current_time"]
    runner, agent, _ = runner_and_agent(tools=[time_tool])
    seen: list[TurnEvent] = []

    async def on_event(event: TurnEvent) -> None:
        seen.append(event)

    result = await runner.run(agent, thread_key("t", "events"), "what time is it?", on_event)
    kinds = [type(e) for e in seen]
    assert kinds.index(ToolCalled) < kinds.index(ToolReturned) < kinds.index(Replied)
    assert kinds[-1] is Replied and kinds.count(Replied) == 1
    assert Token in kinds
    streamed = "".join(e.text for e in seen[kinds.index(ToolReturned):] if isinstance(e, Token))
    final = seen[-1]
    assert isinstance(final, Replied) and final.content == result.reply.text == streamed
    assert final.usage["total_tokens"] > 0


async def test_turns_on_one_thread_alternate_user_and_assistant() -> None:
    runner, agent, backend = runner_and_agent()
    key = thread_key("t", "serial")
    await asyncio.gather(*(runner.run(agent, key, f"message {i}") for i in range(6)))
    messages = await backend.messages(key)
    assert messages is not None
    assert [m.type for m in messages] == ["human", "ai"] * 6


async def test_the_tool_round_limit_is_a_502_and_the_turn_is_undone() -> None:
    def always_a_tool(_: Any) -> AIMessage:
        return AIMessage("", tool_calls=[{"name": "current_time", "args": {}, "id": "c"}])

    time_tool = build_builtin_tools()["current_time"]
    runner, agent, backend = runner_and_agent(RunnableLambda(always_a_tool), [time_tool],
                                              max_tool_rounds=2)
    key = thread_key("t", "loop")
    with pytest.raises(UpstreamError, match="round limit"):
        await runner.run(agent, key, "loop forever")
    assert await backend.messages(key) is None


@pytest.mark.parametrize(("failure", "error"), [
    (openai.APITimeoutError(request=httpx2.Request("POST", "http://llm")), UpstreamTimeout),
    (openai.APIConnectionError(request=httpx2.Request("POST", "http://llm")), UpstreamError),
])
async def test_a_model_failure_is_translated_and_leaves_the_thread_as_it_was(
    failure: Exception, error: type[Exception]
) -> None:
    calls = {"n": 0}

    def flaky(_: Any) -> AIMessage:
        calls["n"] += 1
        if calls["n"] > 1:
            raise failure
        return AIMessage("first reply")

    runner, agent, backend = runner_and_agent(RunnableLambda(flaky))
    key = thread_key("t", "flaky")
    await runner.run(agent, key, "hello")
    with pytest.raises(error):
        await runner.run(agent, key, "again")
    messages = await backend.messages(key)
    assert messages is not None and [m.content for m in messages] == ["hello", "first reply"]


async def test_a_model_that_returns_no_reply_is_a_502() -> None:
    def nothing(_: Any) -> BaseMessage:
        return SystemMessage("not a reply")

    runner, agent, backend = runner_and_agent(RunnableLambda(nothing))
    key = thread_key("t", "empty")
    with pytest.raises(UpstreamError, match="no reply"):
        await runner.run(agent, key, "hello")
    assert await backend.messages(key) is None


async def test_a_failed_turn_that_cannot_be_undone_says_so(
    make_settings: SettingsFactory, mock_llm: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream fails, and so does undoing the turn (storage failing to read it back):
    the client's error says the thread may hold its message, and X-Turn-Undone: false."""
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             llm_max_retries=0)
    async with app_client(settings) as client:
        runner = client._transport.app.state.agenthost.runner  # type: ignore[attr-defined]
        url = "/v1/tenants/demo/threads/undo/messages"
        assert (await client.post(url, json={"message": "first"})).status_code == 200

        async def unreadable(*args: object, **kwargs: object) -> None:
            raise RuntimeError("storage hiccup")

        monkeypatch.setattr(runner._graph, "aget_state", unreadable)
        failed = await client.post(url, json={"message": "[[fail:500]]"})
        assert failed.status_code == 502
        assert failed.headers["X-Turn-Undone"] == "false"
        assert "could not be undone" in failed.json()["error"]["message"]
        monkeypatch.undo()
        undone = await client.post(url, json={"message": "[[fail:500]] again"})
        assert undone.status_code == 502 and "X-Turn-Undone" not in undone.headers
