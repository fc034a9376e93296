"""Request and response bodies of the chat API."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="The user's message (UTF-8, size-capped).")


class ToolCallOut(BaseModel):
    id: str
    name: str
    args: dict[str, Any]


class MessageOut(BaseModel):
    role: Literal["user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCallOut] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @classmethod
    def from_message(cls, message: BaseMessage) -> MessageOut | None:
        content = message.content if isinstance(message.content, str) else message.text
        if isinstance(message, HumanMessage):
            return cls(role="user", content=content)
        if isinstance(message, AIMessage):
            calls = [
                ToolCallOut(id=c.get("id") or "", name=c["name"], args=c["args"])
                for c in message.tool_calls
            ]
            return cls(role="assistant", content=content, tool_calls=calls or None)
        if isinstance(message, ToolMessage):
            return cls(role="tool", content=content, tool_call_id=message.tool_call_id,
                       name=message.name)
        return None


class ReplyOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class TurnOut(BaseModel):
    tenant_id: str
    thread_id: str
    reply: ReplyOut
    usage: Usage


class HistoryOut(BaseModel):
    tenant_id: str
    thread_id: str
    messages: list[MessageOut]
