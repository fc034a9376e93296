"""Turn events: what happens during a turn, as plain values that know nothing of SSE.

The turn runner reports them as they happen to whoever asked (the SSE stream session;
the protocols to come); each consumer formats them its own way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of the reply's text, as the model produced it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCalled:
    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolReturned:
    id: str
    name: str | None
    content: str
    status: str


@dataclass(frozen=True, slots=True)
class Replied:
    """The turn's final reply, stored; always the last event of a turn that succeeded."""

    content: str
    usage: dict[str, int]


TurnEvent = Token | ToolCalled | ToolReturned | Replied
OnEvent = Callable[[TurnEvent], Awaitable[None]]


def tool_events(message: BaseMessage) -> list[TurnEvent]:
    """The tool calls an assistant message asks for, or the result a tool message holds."""
    if isinstance(message, AIMessage):
        return [ToolCalled(call.get("id") or "", call["name"], call["args"])
                for call in message.tool_calls]
    if isinstance(message, ToolMessage):
        content = message.content if isinstance(message.content, str) else message.text
        return [ToolReturned(message.tool_call_id, message.name, content, message.status)]
    return []
