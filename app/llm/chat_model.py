"""``PooledChatOpenAI``: ChatOpenAI posting plain chat completions through our aiohttp pool.

Profiled on a worker under load (py-spy, cProfile), the stock path cost more than
everything else in a turn together:
- the OpenAI SDK walks every request body against its TypedDict annotations
  (``_async_transform_recursive``), builds each request through several layers, and
  reads the response through httpx/httpcore (an anyio cancel scope and an h11 event per
  read). LangChain's payload is already plain JSON: here it is posted as is through
  ``ChatCompletions`` (app/llm/upstream.py, one aiohttp pool per base URL), with the
  SDK's retries, timeouts and exception types;
- streamed chunks become pydantic models (``construct_type``, slow on Python 3.11 where
  ``typing_extensions.TypeAliasType`` checks use ``inspect.getattr_static``) that LangChain
  dumps straight back to dicts; here they are parsed with orjson into the dict LangChain's
  own converter takes;
- LangChain converts a non-streamed response in a thread pool; here inline.
Anything off that path (structured output, response headers, the Responses API,
gateways, per-call extra headers/query/body/timeout, a model made without ``upstream``)
goes through the parent and the SDK unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    InvalidToolCall,
    ToolCall,
    UsageMetadata,
    message_chunk_to_message,
)
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_openai import ChatOpenAI
from pydantic import Field

from app.llm.upstream import ChatCompletions

OnToken = Callable[[str], Awaitable[None]]
# Payload keys the SDK turns into request options rather than body fields.
_OPTION_KEYS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


class PooledChatOpenAI(ChatOpenAI):
    # PRIVATE: six of ChatOpenAI's (_get_request_payload, _create_chat_result,
    # _convert_chunk_to_generation_chunk, _should_stream_usage, _use_responses_api,
    # _uses_gateway); listed and pinned in tests/test_library_privates.py.
    upstream: ChatCompletions | None = Field(default=None, exclude=True)
    """The chat-completions pool for this model's base URL; None: the SDK does it all."""

    def _lean(self, kwargs: dict[str, Any]) -> bool:
        return not (
            self.upstream is None
            or self._use_responses_api({**kwargs, **self.model_kwargs})
            or "response_format" in kwargs
            or "response_format" in self.model_kwargs
            or self.include_response_headers
            or self._uses_gateway
            or self.default_headers
            or self.default_query
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming or not self._lean(kwargs):
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        if _OPTION_KEYS & payload.keys() or payload.get("stream"):
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        assert self.upstream is not None
        data = await self.upstream.create(payload)
        return self._create_chat_result(data, {})

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        stream_usage = kwargs.pop("stream_usage", None)
        payload: dict[str, Any] = {}
        if self._lean(kwargs):
            kwargs["stream"] = True
            if self._should_stream_usage(stream_usage, **kwargs):
                kwargs["stream_options"] = {"include_usage": True}
            payload = self._get_request_payload(messages, stop=stop, **kwargs)
        if not payload or _OPTION_KEYS & payload.keys():
            kwargs.pop("stream", None)
            kwargs.pop("stream_options", None)
            async for chunk in super()._astream(messages, stop, run_manager,
                                                stream_usage=stream_usage, **kwargs):
                yield chunk
            return
        assert self.upstream is not None
        chunk_class: type[BaseMessageChunk] = AIMessageChunk
        async with self.upstream.stream(payload) as chunks:
            async for raw in chunks:
                generation = self._convert_chunk_to_generation_chunk(raw, chunk_class, {})
                if generation is None:
                    continue
                chunk_class = generation.message.__class__
                if run_manager:
                    await run_manager.on_llm_new_token(
                        generation.text, chunk=generation,
                        logprobs=(generation.generation_info or {}).get("logprobs"),
                    )
                yield generation

    def can_stream_reply(self, kwargs: dict[str, Any]) -> bool:
        return self._lean(kwargs) and not (_OPTION_KEYS & kwargs.keys())

    async def astream_reply(
        self, messages: list[BaseMessage], on_token: OnToken, **kwargs: Any
    ) -> AIMessage:
        """Stream one completion, handing each text delta to ``on_token``; return the reply.

        The per-token path is a dict lookup and a callback: no message chunk objects, no
        callback managers. The caller checks ``can_stream_reply`` first.
        """
        assert self.upstream is not None
        payload = self._get_request_payload(
            messages, **kwargs, stream=True, stream_options={"include_usage": True}
        )
        reply = _ReplyAccumulator()
        async with self.upstream.stream(payload) as chunks:
            async for raw in chunks:
                text = reply.add(raw)
                if text:
                    await on_token(text)
        return reply.message()


class _ReplyAccumulator:
    """Builds the final assistant message from streamed chat-completion chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.model: str | None = None

    def add(self, raw: dict[str, Any]) -> str:
        self.usage = raw.get("usage") or self.usage
        self.model = raw.get("model") or self.model
        added = ""
        for choice in raw.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.text.append(content)
                added += content
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(call.get("index", 0),
                                             {"id": "", "name": "", "args": ""})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["args"] += function.get("arguments") or ""
            self.finish = choice.get("finish_reason") or self.finish
        return added

    def message(self) -> AIMessage:
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        for index in sorted(self.calls):
            slot = self.calls[index]
            try:
                args = orjson.loads(slot["args"] or "{}")
            except orjson.JSONDecodeError as exc:
                invalid.append(invalid_tool_call(name=slot["name"], args=slot["args"],
                                                 id=slot["id"], error=str(exc)))
                continue
            calls.append(tool_call(name=slot["name"], args=args, id=slot["id"]))
        usage = None
        if self.usage:
            prompt = int(self.usage.get("prompt_tokens") or 0)
            completion = int(self.usage.get("completion_tokens") or 0)
            usage = UsageMetadata(input_tokens=prompt, output_tokens=completion,
                                  total_tokens=int(self.usage.get("total_tokens")
                                                   or prompt + completion))
        return AIMessage(
            content="".join(self.text), tool_calls=calls, invalid_tool_calls=invalid,
            usage_metadata=usage,
            response_metadata={"finish_reason": self.finish, "model_name": self.model,
                               "model_provider": "openai"},
        )


async def stream_reply(model: Runnable[Any, BaseMessage], messages: list[BaseMessage],
                       on_token: OnToken) -> BaseMessage:
    """Call ``model`` streaming, each text delta to ``on_token``; return the whole reply.

    A ``PooledChatOpenAI`` (bare or bound with tools and temperature) takes the lean path;
    any other chat model streams through LangChain and its chunks are merged once.
    """
    bound, kwargs = (model.bound, dict(model.kwargs)) if isinstance(
        model, RunnableBinding) else (model, {})
    if isinstance(bound, PooledChatOpenAI) and bound.can_stream_reply(kwargs):
        return await bound.astream_reply(messages, on_token, **kwargs)
    chunks: list[AIMessageChunk] = []
    async for chunk in model.astream(messages):
        if not isinstance(chunk, AIMessageChunk):
            continue
        chunks.append(chunk)
        if chunk.text:
            await on_token(chunk.text)
    if not chunks:
        return AIMessage("")
    return message_chunk_to_message(add_ai_message_chunks(chunks[0], *chunks[1:]))
