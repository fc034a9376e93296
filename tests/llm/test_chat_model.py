"""PooledChatOpenAI against the real mock server: same output as ChatOpenAI, faster parse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from app.llm.chat_model import PooledChatOpenAI, stream_reply
from app.llm.offline import OfflineChatModel
from app.llm.upstream import ChatCompletions
from tests.conftest import MockLLM, pool_for

PROMPTS = ["hello there", "[[tokens:30]]", '[[tool:calculator {"expression": "6*7"}]]']


@tool
def calculator(expression: str) -> str:
    """Evaluate arithmetic."""
    return expression


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # langchain-openai's default client is cached process-wide and outlives a test's loop
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def upstream(mock_llm: MockLLM) -> AsyncIterator[ChatCompletions]:
    pool = pool_for(mock_llm.base_url)
    yield pool
    await pool.aclose()


def models(mock: MockLLM, http: httpx.AsyncClient,
           upstream: ChatCompletions) -> tuple[Any, Any]:
    common = {"model": "gpt-4o-mini", "api_key": "sk-test", "base_url": mock.base_url,
              "max_retries": 0, "stream_usage": True, "http_async_client": http}
    return PooledChatOpenAI(**common, upstream=upstream), ChatOpenAI(**common)


async def collect(model: Any, text: str) -> AIMessageChunk:
    total: AIMessageChunk | None = None
    async for chunk in model.astream([HumanMessage(text)]):
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


@pytest.mark.parametrize("text", PROMPTS)
async def test_streams_the_same_message_as_the_parent(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions, text: str
) -> None:
    fast, plain = models(mock_llm, http, upstream)
    fast_result = await collect(fast.bind_tools([calculator]), text)
    plain_result = await collect(plain.bind_tools([calculator]), text)
    assert fast_result.content == plain_result.content
    assert [(c["name"], c["args"]) for c in fast_result.tool_calls] == [
        (c["name"], c["args"]) for c in plain_result.tool_calls
    ]
    assert fast_result.usage_metadata == plain_result.usage_metadata
    assert fast_result.usage_metadata and fast_result.usage_metadata["total_tokens"] > 0


async def test_errors_raise_like_the_sdk(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions
) -> None:
    fast, _ = models(mock_llm, http, upstream)
    with pytest.raises(openai.APIError, match="mock overloaded mid-stream"):
        await collect(fast, "[[fail:sse_error]] [[tokens:10]]")
    with pytest.raises(openai.InternalServerError):
        await collect(fast, "[[fail:500]]")
    with pytest.raises(openai.APIConnectionError, match="interrupted"):
        await collect(fast, "[[fail:drop]] [[tokens:10]]")


async def test_structured_output_still_goes_through_the_parent(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions
) -> None:
    fast, _ = models(mock_llm, http, upstream)
    assert fast._lean({})
    assert not fast._lean({"response_format": {"type": "json_object"}})
    # Without a chat-completions pool the model is a plain ChatOpenAI, SDK and all.
    sdk_only = PooledChatOpenAI(model="gpt-4o-mini", api_key="sk-test",
                              base_url=mock_llm.base_url, max_retries=0,
                              http_async_client=http)
    assert not sdk_only._lean({})
    assert (await sdk_only.ainvoke([HumanMessage("hi")])).content == (
        "mock reply to: hi (saw 1 messages)")


@pytest.mark.parametrize("text", ["hello there", '[[tool:calculator {"expression": "6*7"}]]'])
async def test_invokes_the_same_message_as_the_parent(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions, text: str
) -> None:
    fast, plain = models(mock_llm, http, upstream)
    fast_result = await fast.bind_tools([calculator]).ainvoke([HumanMessage(text)])
    plain_result = await plain.bind_tools([calculator]).ainvoke([HumanMessage(text)])
    assert fast_result.content == plain_result.content
    assert [(c["name"], c["args"]) for c in fast_result.tool_calls] == [
        (c["name"], c["args"]) for c in plain_result.tool_calls
    ]
    assert fast_result.usage_metadata == plain_result.usage_metadata
    assert fast_result.response_metadata["model_name"] == "gpt-4o-mini"
    assert not mock_llm.requests()[-1]["stream"]


async def test_invoke_errors_raise_like_the_sdk(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions
) -> None:
    fast, _ = models(mock_llm, http, upstream)
    with pytest.raises(openai.InternalServerError):
        await fast.ainvoke([HumanMessage("[[fail:500]]")])
    with pytest.raises(openai.RateLimitError, match="mock failure 429"):
        await fast.ainvoke([HumanMessage("[[fail:429]]")])
    hurried = pool_for(mock_llm.base_url, read_timeout_s=0.5)
    timed = PooledChatOpenAI(model="m", api_key="sk-test", base_url=mock_llm.base_url,
                           max_retries=0, http_async_client=http, upstream=hurried)
    try:
        with pytest.raises(openai.APITimeoutError):
            await timed.ainvoke([HumanMessage("[[fail:hang]]")])
    finally:
        await hurried.aclose()


@pytest.mark.parametrize("text", PROMPTS)
async def test_stream_reply_gives_the_same_message_as_langchain(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions, text: str
) -> None:
    fast, plain = models(mock_llm, http, upstream)
    tokens: list[str] = []

    async def on_token(token: str) -> None:
        tokens.append(token)

    bound = fast.bind_tools([calculator]).bind(temperature=0.3)
    lean = await stream_reply(bound, [HumanMessage(text)], on_token)
    assert mock_llm.requests()[-1]["temperature"] == 0.3 and mock_llm.requests()[-1]["stream"]
    reference = await collect(plain.bind_tools([calculator]), text)
    assert lean.content == reference.content == "".join(tokens)
    assert isinstance(lean, AIMessage)
    assert [(c["name"], c["args"]) for c in lean.tool_calls] == [
        (c["name"], c["args"]) for c in reference.tool_calls
    ]
    assert all((c["id"] or "").startswith("call_") for c in lean.tool_calls)
    assert lean.usage_metadata is not None and reference.usage_metadata is not None
    for field in ("input_tokens", "output_tokens", "total_tokens"):
        assert lean.usage_metadata[field] == reference.usage_metadata[field]  # type: ignore[literal-required]


async def test_stream_reply_falls_back_for_other_models() -> None:
    tokens: list[str] = []

    async def on_token(token: str) -> None:
        tokens.append(token)

    reply = await stream_reply(OfflineChatModel(), [HumanMessage("one two")], on_token)
    assert reply.text.endswith("You said: one two") and "".join(tokens) == reply.text
    assert reply.usage_metadata and reply.usage_metadata["total_tokens"] > 0


async def test_stream_reply_errors_and_bad_tool_arguments(
    mock_llm: MockLLM, http: httpx.AsyncClient, upstream: ChatCompletions
) -> None:
    fast, _ = models(mock_llm, http, upstream)

    async def ignore(token: str) -> None:
        return None

    with pytest.raises(openai.APIError, match="mock overloaded mid-stream"):
        await stream_reply(fast, [HumanMessage("[[fail:sse_error]] [[tokens:10]]")], ignore)
    with pytest.raises(openai.APIConnectionError):
        await stream_reply(fast, [HumanMessage("[[fail:drop]] [[tokens:10]]")], ignore)
    reply = await stream_reply(fast.bind_tools([calculator]),
                               [HumanMessage("[[tool:calculator {not json}]]")], ignore)
    assert isinstance(reply, AIMessage)
    assert not reply.tool_calls and reply.invalid_tool_calls[0]["name"] == "calculator"
