"""The offline built-in chat model: answers without any network, streaming word by word.

It lets a newcomer chat at once and exercises the whole turn path (history, tools,
streaming). It echoes the message with the turn number and the previous message, and
asks for the ``current_time`` tool when the user asks for the time and the tool is bound.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

_TIME_RE = re.compile(r"\b(time|date|today|clock)\b", re.IGNORECASE)
_WORD_RE = re.compile(r"\S+\s*")


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class OfflineChatModel(BaseChatModel):
    """Deterministic, offline, streaming chat model."""

    @property
    def _llm_type(self) -> str:
        return "agenthost-offline"

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        names = [t.name if isinstance(t, BaseTool) else str(t) for t in tools]
        return self.bind(tool_names=names, **kwargs)

    def _reply(self, messages: list[BaseMessage], tool_names: Sequence[str]) -> AIMessage:
        last = messages[-1] if messages else HumanMessage("")
        if isinstance(last, ToolMessage):
            return AIMessage(f"The {last.name or 'tool'} tool says: {_short(_text(last))}")
        humans = [m for m in messages if isinstance(m, HumanMessage)]
        said = _text(last)
        if "current_time" in tool_names and _TIME_RE.search(said):
            call = {"name": "current_time", "args": {}, "id": f"call_{uuid.uuid4().hex[:12]}"}
            return AIMessage("", tool_calls=[call])
        reply = f"(offline model, turn {len(humans)}) You said: {_short(said)}"
        if len(humans) > 1:
            reply += f" Before that you said: {_short(_text(humans[-2]))}"
        return AIMessage(reply)

    def _usage(self, messages: list[BaseMessage], reply: AIMessage) -> dict[str, int]:
        prompt = sum(len(_text(m).split()) for m in messages)
        completion = len(_text(reply).split())
        return {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages, kwargs.get("tool_names", ()))
        reply.usage_metadata = self._usage(messages, reply)  # type: ignore[assignment]
        return ChatResult(generations=[ChatGeneration(message=reply)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The default runs _generate in a thread pool; this model never blocks.
        return self._generate(messages, stop, **kwargs)

    def _chunks(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages, kwargs.get("tool_names", ()))
        if reply.tool_calls:
            chunks = [
                {"name": c["name"], "args": "{}", "id": c["id"], "index": i}
                for i, c in enumerate(reply.tool_calls)
            ]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=chunks))
        else:
            for word in _WORD_RE.findall(_text(reply)):
                yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        usage = self._usage(messages, reply)
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=usage)
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
