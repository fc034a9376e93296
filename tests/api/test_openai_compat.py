"""The OpenAI-compatible endpoint, used by the real ``openai`` SDK (sync, async, streamed,
errors) and LangChain's ``ChatOpenAI``, over a real socket, against the real mock
upstream; stateless (nothing stored) and on a thread (stored, as on the chat routes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.conftest import (
    OTHER_TENANT_KEY,
    SERVICE_KEY,
    TENANT_KEY,
    TEST_TENANTS,
    MockLLM,
    with_keys,
)
from tests.servers.processes import ManagedProcess, start_app


@pytest.fixture(scope="module")
def service(mock_llm_server: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    import yaml

    tenants = tmp_path_factory.mktemp("oa") / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(with_keys(TEST_TENANTS)))
    proc = start_app({"OPENAI_API_KEY": "sk-test",
                      "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_llm_server.port}/v1",
                      "AGENTHOST_TENANTS_FILE": str(tenants),
                      "AGENTHOST_SERVICE_API_KEYS": SERVICE_KEY,
                      "AGENTHOST_LLM_MAX_RETRIES": "0"})
    yield f"http://127.0.0.1:{proc.port}/v1"
    proc.stop()


@contextmanager
def client(base_url: str, key: str = TENANT_KEY) -> Iterator[openai.OpenAI]:
    """An SDK client, closed after use (an unclosed one leaves its socket to the GC)."""
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as sdk:
        yield sdk


def test_a_stateless_completion_runs_the_tenant_agent_and_stores_nothing(
    service: str, mock_llm: MockLLM
) -> None:
    with client(service) as sdk:
        answer = sdk.chat.completions.create(
            model="acme", messages=[{"role": "user", "content": "first"},
                                    {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "what is 6*7?"}])
    assert answer.object == "chat.completion" and answer.model == "acme"
    assert answer.choices[0].message.content.startswith("mock reply to: what is 6*7?")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens > 0
    sent = mock_llm.requests()[-1]
    assert sent["roles"][:1] == ["system"] and sent["chars"][0] == len("You are Acme.")
    assert sent["roles"][-3:] == ["user", "assistant", "user"]
    # a tool call, run server-side: the client sees the answer
    with client(service) as sdk:
        tool = sdk.chat.completions.create(
            model="acme", messages=[{"role": "user",
                                     "content": '[[tool:calculator {"expression": "6*7"}]]'}])
    assert "42" in (tool.choices[0].message.content or "")


def test_streamed_chunks_usage_and_done(service: str) -> None:
    with client(service) as sdk:
        stream = sdk.chat.completions.create(
            model="acme", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "[[tokens:12]]"}])
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"tok{i}" for i in range(12)]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and not chunks[-1].choices


async def test_the_async_sdk_on_a_thread_stores_the_conversation(service: str) -> None:
    async_client = openai.AsyncOpenAI(base_url=service, api_key=SERVICE_KEY, max_retries=0)
    for text in ("hello", "again"):
        answer = await async_client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": text}],
            extra_headers={"X-Thread-Id": "oa-thread"})
        assert answer.choices[0].message.content
    async with httpx.AsyncClient(timeout=10) as http:
        history = await http.get(
            service.removesuffix("/v1") + "/v1/tenants/demo/threads/oa-thread/messages",
            headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert [m["content"] for m in history.json()["messages"] if m["role"] == "user"] == [
        "hello", "again"]
    await async_client.close()


def test_errors_are_in_openai_shape(service: str) -> None:
    with client(service) as sdk, pytest.raises(openai.NotFoundError) as other:
        sdk.chat.completions.create(model="globex", messages=[{"role": "user", "content": "x"}])
    assert other.value.code == "model_not_found"
    with client(service, "wrong-key") as sdk, pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="acme", messages=[{"role": "user", "content": "x"}])
    for extra, param in (({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                         ({"tools": [{"type": "function", "function": {"name": "f"}}]},
                          "tools")):
        with client(service) as sdk, pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(
                model="acme", messages=[{"role": "user", "content": "x"}], **extra)
        assert bad.value.param == param and param in str(bad.value)
    with client(service) as sdk, pytest.raises(openai.APIStatusError) as failed:
        sdk.chat.completions.create(
            model="acme", messages=[{"role": "user", "content": "[[fail:500]]"}])
    assert failed.value.status_code == 502
    body = failed.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_error"


def test_models_lists_what_the_key_may_use(service: str) -> None:
    for key, expected in ((TENANT_KEY, ["acme"]), (OTHER_TENANT_KEY, ["globex"]),
                          (SERVICE_KEY, sorted(TEST_TENANTS))):
        with client(service, key) as sdk:
            assert sorted(m.id for m in sdk.models.list()) == expected


def test_langchain_chat_openai_works_unchanged(service: str) -> None:
    with httpx.Client() as http:
        model = ChatOpenAI(model="acme", base_url=service, api_key=TENANT_KEY, max_retries=0,
                           http_client=http)
        assert model.invoke("hi there").content.startswith("mock reply to: hi there")
        streamed = "".join(str(chunk.content) for chunk in model.stream("[[tokens:5]]"))
    assert streamed.split() == [f"tok{i}" for i in range(5)]
