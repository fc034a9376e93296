"""The agent graph: tool calls that go wrong become error results the model sees."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import BaseTool, tool

from app.agents.graph import TenantAgent, TurnContext, build_agent_graph
from app.persistence.base import thread_config
from app.persistence.memory import BoundedMemorySaver


@tool
async def stalls() -> str:
    """Never answers in time."""
    await asyncio.sleep(3600)
    return "too late"  # pragma: no cover


@tool
def breaks() -> str:
    """Fails."""
    raise RuntimeError("disk on fire")


def calls_then_answers(*names: str) -> RunnableLambda[Any, BaseMessage]:
    def model(messages: list[BaseMessage]) -> AIMessage:
        if isinstance(messages[-1], ToolMessage):
            return AIMessage("done")
        calls = [{"name": n, "args": {}, "id": f"call-{n}"} for n in names]
        return AIMessage("", tool_calls=calls)  # type: ignore[arg-type]
    return RunnableLambda(model)


async def tool_results(tools: list[BaseTool], *names: str) -> dict[str, ToolMessage]:
    graph = build_agent_graph(BoundedMemorySaver(max_threads=10, ttl_s=60))
    agent = TenantAgent("t", SystemMessage("sys"), calls_then_answers(*names),
                        {t.name: t for t in tools}, 20, 40, 4000, tool_timeout_s=0.05)
    state = await graph.ainvoke({"messages": [HumanMessage("go")]}, thread_config("t/g"),
                                context=TurnContext(agent), durability="exit")
    assert state["messages"][-1].content == "done"
    return {m.name or "": m for m in state["messages"] if isinstance(m, ToolMessage)}


async def test_an_unknown_a_failing_and_a_stalling_tool_each_become_an_error_result() -> None:
    results = await tool_results([stalls, breaks], "no_such_tool", "breaks", "stalls")
    assert results["no_such_tool"].status == "error"
    assert "no tool named 'no_such_tool'" in str(results["no_such_tool"].content)
    assert results["breaks"].status == "error" and "disk on fire" in str(results["breaks"].content)
    assert results["stalls"].status == "error" and "timed out" in str(results["stalls"].content)


async def test_stored_history_is_capped_at_whole_turns() -> None:
    graph = build_agent_graph(BoundedMemorySaver(max_threads=10, ttl_s=60))
    agent = TenantAgent("t", SystemMessage("sys"), RunnableLambda(lambda _: AIMessage("ok")),
                        {}, max_messages=4, max_stored=6, max_chars=4000, tool_timeout_s=1)
    for i in range(10):
        state = await graph.ainvoke({"messages": [HumanMessage(f"m{i}")]},
                                    thread_config("t/cap"), context=TurnContext(agent),
                                    durability="exit")
    messages = state["messages"]
    assert len(messages) <= 8  # the cap applies before the new turn is added
    assert messages[0].type == "human" and messages[-1].content == "ok"
    assert [m.content for m in messages if m.type == "human"][-1] == "m9"
