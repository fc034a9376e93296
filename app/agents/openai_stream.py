"""``StreamingChatOpenAI``: ChatOpenAI whose streamed chunks are parsed with orjson.

The OpenAI SDK turns every streamed chunk into pydantic models (``construct_type``, slow
on Python 3.11 where ``typing_extensions.TypeAliasType`` checks go through
``inspect.getattr_static``) and LangChain dumps each straight back to a dict. Profiled
under 100 concurrent streams that was a third of a worker's CPU. Here the SSE lines are
parsed directly into the dict LangChain's own converter takes; request building, retries,
HTTP errors and the chunk-to-message conversion stay the parent's. Anything off the
plain chat-completions path (structured output, response headers, the Responses API,
gateways) goes through the parent unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI


class StreamingChatOpenAI(ChatOpenAI):
    def _plain_path(self, kwargs: dict[str, Any]) -> bool:
        return not (
            self._use_responses_api({**kwargs, **self.model_kwargs})
            or "response_format" in kwargs
            or "response_format" in self.model_kwargs
            or self.include_response_headers
            or self._uses_gateway
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if not self._plain_path(kwargs):
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
            return
        stream_usage = kwargs.pop("stream_usage", None)
        kwargs["stream"] = True
        if self._should_stream_usage(stream_usage, **kwargs):
            kwargs["stream_options"] = {"include_usage": True}
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        chunk_class: type[BaseMessageChunk] = AIMessageChunk
        async with self.async_client.with_streaming_response.create(**payload) as response:
            lines = response.iter_lines()
            while True:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
                except Exception as exc:  # the transport's errors, as the SDK would raise them
                    raise openai.APIConnectionError(
                        message=f"the stream was interrupted: {exc!r}",
                        request=response.http_request,
                    ) from exc
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                raw = orjson.loads(data)
                if isinstance(raw, dict) and raw.get("error"):
                    error = raw["error"]
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise openai.APIError(message or "streamed error",
                                          response.http_request, body=error)
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
