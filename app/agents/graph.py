"""The one compiled agent graph a worker runs for every tenant.

A tenant's differences (prompt, model binding, tools, history caps) travel with each run
in the graph's runtime context (``TurnContext``: the ``TenantAgent``, and where a
streamed turn's tokens go); the graph itself is built once per
worker. Two nodes: ``agent`` (cap stored history, call the model on a window of it) and
``tools`` (run the requested tools concurrently, each bounded by a timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from app.agents.history import model_window, storage_overflow
from app.llm.chat_model import OnToken, stream_reply

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenantAgent:
    """Everything tenant-specific about a run; shares the model client and tools."""

    tenant_id: str
    system_message: SystemMessage
    model: Runnable[LanguageModelInput, BaseMessage]
    tools: Mapping[str, BaseTool]
    max_messages: int
    max_stored: int
    max_chars: int
    tool_timeout_s: float


@dataclass(frozen=True, slots=True)
class TurnContext:
    """A run's runtime context: the tenant's agent, and for a streamed turn where its
    tokens go. With ``on_token`` the agent node streams the model, each text delta to it
    as it arrives: cheaper per token than LangGraph's "messages" or "custom" stream modes,
    which route every delta through the run's own stream queue."""

    agent: TenantAgent
    on_token: OnToken | None = None


AgentGraph = CompiledStateGraph[MessagesState, TurnContext, MessagesState, MessagesState]


async def _agent(state: MessagesState, runtime: Runtime[TurnContext]) -> Command[str]:
    agent = runtime.context.agent
    messages = state["messages"]
    dropped = storage_overflow(messages, agent.max_stored)
    if dropped:
        messages = messages[len(dropped) :]
    window = model_window(messages, agent.max_messages, agent.max_chars)
    prompt = [agent.system_message, *window]
    on_token = runtime.context.on_token
    if on_token is None:
        reply = await agent.model.ainvoke(prompt)
    else:
        reply = await stream_reply(agent.model, prompt, on_token)
    removals: list[BaseMessage] = [RemoveMessage(id=m.id) for m in dropped if m.id]
    # The node routes itself (no conditional edge: one runnable less per turn).
    wants_tools = isinstance(reply, AIMessage) and bool(reply.tool_calls)
    return Command(update={"messages": [*removals, reply]}, goto="tools" if wants_tools else END)


def _tool_text(result: Any) -> str:
    """A tool result as text; MCP tools answer with a list of content blocks."""
    if isinstance(result, str):
        return result
    if isinstance(result, list) and all(isinstance(b, dict) for b in result):
        return "\n".join(str(b.get("text", "")) for b in result if b.get("type") == "text")
    return str(result)


async def _run_tool(agent: TenantAgent, call: ToolCall) -> ToolMessage:
    name, call_id = call["name"], call.get("id") or ""
    tool = agent.tools.get(name)
    if tool is None:
        return ToolMessage(f"Error: no tool named {name!r}", tool_call_id=call_id, name=name,
                           status="error")
    try:
        async with asyncio.timeout(agent.tool_timeout_s):
            result = await tool.ainvoke(call["args"])
    except TimeoutError:
        logger.warning("tenant %s: tool %s timed out", agent.tenant_id, name)
        content, status = f"Error: tool {name} timed out", "error"
    except Exception as exc:  # a tool failure is the model's to handle, not the turn's
        logger.info("tenant %s: tool %s failed: %s", agent.tenant_id, name, exc)
        content, status = f"Error: {exc}", "error"
    else:
        content = _tool_text(result)
        status = "success"
    return ToolMessage(content, tool_call_id=call_id, name=name, status=status)


async def _tools(state: MessagesState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    agent = runtime.context.agent
    results = await asyncio.gather(*(_run_tool(agent, c) for c in last.tool_calls))
    return {"messages": list(results)}


def build_agent_graph(checkpointer: BaseCheckpointSaver[Any] | None) -> AgentGraph:
    graph = StateGraph(MessagesState, context_schema=TurnContext)
    graph.add_node("agent", _agent, destinations=("tools", END))
    graph.add_node("tools", _tools)
    graph.add_edge(START, "agent")
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer)
