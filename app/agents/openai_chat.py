"""``LeanChatOpenAI``: ChatOpenAI with a leaner path for plain chat completions.

Profiled on a worker under load (py-spy), three costs of the stock path stood out:
- the OpenAI SDK walks every request body against its TypedDict annotations
  (``_async_transform_recursive``): a quarter of a worker's CPU on JSON turns. LangChain's
  payload is already plain JSON, so it is posted as is through the SDK client (same
  retries, timeouts, auth and error types);
- streamed chunks become pydantic models (``construct_type``, slow on Python 3.11 where
  ``typing_extensions.TypeAliasType`` checks use ``inspect.getattr_static``) that LangChain
  dumps straight back to dicts; here the SSE lines are parsed with orjson into the dict
  LangChain's own converter takes;
- LangChain converts a non-streamed response in a thread pool; here inline.
Anything off that path (structured output, response headers, the Responses API,
gateways, per-call extra headers/query/body/timeout) goes through the parent unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from openai._constants import RAW_RESPONSE_HEADER

PATH = "/chat/completions"
# Payload keys the SDK turns into request options rather than body fields.
_OPTION_KEYS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


class LeanChatOpenAI(ChatOpenAI):
    def _lean(self, kwargs: dict[str, Any]) -> bool:
        return not (
            self._use_responses_api({**kwargs, **self.model_kwargs})
            or "response_format" in kwargs
            or "response_format" in self.model_kwargs
            or self.include_response_headers
            or self._uses_gateway
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
        data = await self.root_async_client.post(PATH, body=payload, cast_to=object)
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
        response = await self.root_async_client.post(
            PATH, body=payload, cast_to=object, stream=True,
            stream_cls=openai.AsyncStream[object],
            options={"headers": {RAW_RESPONSE_HEADER: "stream"}},
        )
        try:
            async for chunk in self._chunks(response, run_manager):
                yield chunk
        finally:
            await response.close()

    async def _chunks(
        self, response: Any, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunk_class: type[BaseMessageChunk] = AIMessageChunk
        lines = response.iter_lines()
        while True:
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                return
            except Exception as exc:  # the transport's errors, as the SDK would raise them
                raise openai.APIConnectionError(
                    message=f"the stream was interrupted: {exc!r}",
                    request=response.http_request,
                ) from exc
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            raw = orjson.loads(data)
            if isinstance(raw, dict) and raw.get("error"):
                error = raw["error"]
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise openai.APIError(message or "streamed error", response.http_request,
                                      body=error)
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
