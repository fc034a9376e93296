"""The chat API in-process (ASGI), with the offline model or the real mock OpenAI server.

Tests of what is stored run on both backends (``storage``): bounded in-memory, and the
real Redis 8."""

from __future__ import annotations

import pytest

from tests.conftest import (
    BACKENDS,
    OTHER_TENANT_KEY,
    SERVICE_KEY,
    TENANT_KEY,
    MockLLM,
    SettingsFactory,
    app_client,
    storage_for,
)

BASE = "/v1/tenants/{tenant}/threads/{thread}"


Storage = dict[str, object]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> Storage:
    """Settings for a backend: none for the in-memory one, a flushed Redis for the others."""
    return storage_for(request.param, request)


def url(tenant: str = "demo", thread: str = "t1", suffix: str = "/messages") -> str:
    return BASE.format(tenant=tenant, thread=thread) + suffix


def assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]


async def test_offline_conversation_remembers_and_forgets(
    make_settings: SettingsFactory, storage: Storage,
) -> None:
    async with app_client(make_settings(**storage)) as client:
        first = await client.post(url(), json={"message": "hi there"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["tenant_id"] == "demo" and body["thread_id"] == "t1"
        assert body["reply"]["role"] == "assistant" and "hi there" in body["reply"]["content"]
        assert body["usage"]["total_tokens"] > 0

        second = (await client.post(url(), json={"message": "and again"})).json()
        assert "turn 2" in second["reply"]["content"]
        assert "Before that you said: hi there" in second["reply"]["content"]

        history = (await client.get(url())).json()["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert history[0] == {"role": "user", "content": "hi there"}
        last_two = (await client.get(url(), params={"limit": 2})).json()["messages"]
        assert last_two == history[-2:]

        deleted = await client.delete(url(suffix=""))
        assert deleted.status_code == 204
        assert_error(await client.get(url()), 404, "thread_not_found")
        fresh = (await client.post(url(), json={"message": "new start"})).json()
        assert "turn 1" in fresh["reply"]["content"]


async def test_tool_calls_show_in_history(
    make_settings: SettingsFactory, storage: Storage,
) -> None:
    async with app_client(make_settings(**storage)) as client:
        reply = (await client.post(url(), json={"message": "what time is it"})).json()
        assert reply["reply"]["content"].startswith("The current_time tool says: 20")
        history = (await client.get(url())).json()["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
        assert history[1]["tool_calls"][0]["name"] == "current_time"
        assert history[2]["tool_call_id"] == history[1]["tool_calls"][0]["id"]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("post", url("nobody"), {"message": "x"}, 404, "tenant_not_found"),
    ("get", url("nobody"), None, 404, "tenant_not_found"),
    ("post", url(thread="bad id"), {"message": "x"}, 422, "invalid_request"),
    ("post", url(tenant="x" * 129), {"message": "x"}, 422, "invalid_request"),
    ("post", url(thread="semi;colon"), {"message": "x"}, 422, "invalid_request"),
    ("post", url(), {"message": ""}, 422, "invalid_request"),
    ("post", url(), {"text": "wrong field"}, 422, "invalid_request"),
    ("post", url(), {"message": 5}, 422, "invalid_request"),
    ("get", url() + "?limit=0", None, 422, "invalid_request"),
    ("put", url(), {"message": "x"}, 405, "method_not_allowed"),
    ("get", "/v1/nothing-here", None, 404, "not_found"),
])
async def test_bad_requests_get_clear_errors(
    make_settings: SettingsFactory, method: str, path: str, body: object, status: int, code: str
) -> None:
    async with app_client(make_settings()) as client:
        response = await client.request(method, path, json=body)
        assert_error(response, status, code)


async def test_malformed_json_is_422(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as client:
        response = await client.post(url(), content=b"{not json",
                                     headers={"content-type": "application/json"})
        assert_error(response, 422, "invalid_request")


async def test_oversized_messages_are_413_and_nothing_is_stored(
    make_settings: SettingsFactory, storage: Storage,
) -> None:
    settings = make_settings(max_message_bytes=1000, max_body_bytes=4096, **storage)
    async with app_client(settings) as client:
        ok = await client.post(url(), json={"message": "é" * 500})  # 1000 bytes exactly
        assert ok.status_code == 200
        assert_error(await client.post(url(), json={"message": "é" * 501}), 413,
                     "payload_too_large")
        assert_error(await client.post(url(), json={"message": "x" * 5000}), 413,
                     "payload_too_large")

        async def chunks():  # no content-length: the limit still holds while streaming
            for _ in range(10):
                yield b"x" * 1000

        streamed = await client.post(url(), content=chunks(),
                                     headers={"content-type": "application/json"})
        assert_error(streamed, 413, "payload_too_large")
        history = (await client.get(url())).json()["messages"]
        assert len(history) == 2


async def test_default_message_limit_is_32_kib(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as client:
        assert (await client.post(url(), json={"message": "x" * 32768})).status_code == 200
        assert_error(await client.post(url(), json={"message": "x" * 32769}), 413,
                     "payload_too_large")


async def test_keys_act_on_their_own_tenant_only(make_settings: SettingsFactory) -> None:
    settings = make_settings(keys=True, service_api_keys=SERVICE_KEY)
    async with app_client(settings) as client:
        def auth(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        assert_error(await client.post(url("acme"), json={"message": "x"}), 401, "unauthorized")
        assert_error(await client.post(url("acme"), json={"message": "x"},
                                       headers=auth("wrong")), 401, "unauthorized")
        assert_error(await client.post(url("acme"), json={"message": "x"},
                                       headers={"Authorization": "Basic abc"}), 401,
                     "unauthorized")
        mine = await client.post(url("acme"), json={"message": "x"}, headers=auth(TENANT_KEY))
        assert mine.status_code == 200
        # another tenant's key: the thread does not exist for it (404, not 403)
        assert_error(await client.get(url("acme"), headers=auth(OTHER_TENANT_KEY)), 404,
                     "tenant_not_found")
        assert_error(await client.delete(url("acme", suffix=""), headers=auth(OTHER_TENANT_KEY)),
                     404, "tenant_not_found")
        # the service key acts on every tenant
        assert (await client.get(url("acme"), headers=auth(SERVICE_KEY))).status_code == 200
        assert (await client.post(url("demo"), json={"message": "x"},
                                  headers=auth(SERVICE_KEY))).status_code == 200
        # a tenant with no keys of its own is reachable with the service key only
        assert_error(await client.post(url("demo"), json={"message": "x"},
                                       headers=auth(TENANT_KEY)), 404, "tenant_not_found")


async def test_same_thread_id_in_two_tenants_is_two_threads(
    make_settings: SettingsFactory, storage: Storage,
) -> None:
    async with app_client(make_settings(**storage)) as client:
        await client.post(url("demo", "shared"), json={"message": "for demo"})
        await client.post(url("shorty", "shared"), json={"message": "for shorty"})
        demo = (await client.get(url("demo", "shared"))).json()["messages"]
        shorty = (await client.get(url("shorty", "shared"))).json()["messages"]
        assert demo[0]["content"] == "for demo" and shorty[0]["content"] == "for shorty"
        assert len(demo) == len(shorty) == 2


async def test_openai_upstream_gets_tenant_model_temperature_and_window(
    make_settings: SettingsFactory, mock_llm: MockLLM,
) -> None:
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             service_api_keys=SERVICE_KEY)
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    async with app_client(settings) as client:
        for i in range(6):
            response = await client.post(url("shorty"), json={"message": f"m{i}"},
                                         headers=headers)
            assert response.status_code == 200, response.text
        assert response.json()["reply"]["content"] == "mock reply to: m5 (saw 4 messages)"
        assert response.json()["usage"]["input_tokens"] > 0
        acme = await client.post(url("acme"), json={"message": "[[tool:calculator "
                                 '{"expression": "6*7"}]]'}, headers=headers)
        assert acme.json()["reply"]["content"] == "tool calculator returned: 42"
    requests = mock_llm.requests()
    shorty = [r for r in requests if r["model"] == "gpt-4o-mini"]
    # system prompt + at most 4 history messages (tenant's history.max_messages), cut at a
    # user turn: of the 11 stored messages the model saw the last 3
    assert max(r["message_count"] for r in shorty) <= 5
    assert shorty[-1]["roles"] == ["system", "user", "assistant", "user"]
    assert all(r["temperature"] == 0.2 for r in shorty)
    acme_requests = [r for r in requests if r["model"] == "acme-model"]
    assert len(acme_requests) == 2 and all(r["temperature"] == 0.7 for r in acme_requests)
    assert acme_requests[0]["tools"] == ["calculator"]
    assert acme_requests[1]["roles"][-1] == "tool"


async def test_upstream_failures_are_bounded_and_store_nothing(
    make_settings: SettingsFactory, mock_llm: MockLLM, storage: Storage,
) -> None:
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             llm_max_retries=1, llm_timeout_s=1.0, **storage)
    async with app_client(settings) as client:
        assert (await client.post(url(), json={"message": "first"})).status_code == 200
        before = mock_llm.count()
        assert_error(await client.post(url(), json={"message": "[[fail:500]]"}), 502,
                     "upstream_error")
        assert mock_llm.count() - before == 2  # one call plus one bounded retry
        assert_error(await client.post(url(), json={"message": "[[fail:hang]]"}), 504,
                     "upstream_timeout")
        # a tool round that succeeded before the failure is undone too
        assert_error(await client.post(url(), json={
            "message": '[[tool:calculator {"expression": "1+1"}]] [[fail:500]]'}), 502,
            "upstream_error")
        history = (await client.get(url())).json()["messages"]
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert history[0]["content"] == "first"
        # a failed first turn leaves no thread behind
        assert_error(await client.post(url(thread="t2"), json={"message": "[[fail:500]]"}),
                     502, "upstream_error")
        assert_error(await client.get(url(thread="t2")), 404, "thread_not_found")


async def test_turn_timeout_bounds_the_whole_turn(
    make_settings: SettingsFactory, mock_llm: MockLLM,
) -> None:
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             turn_timeout_s=0.5, llm_timeout_s=30)
    mock_llm.control(latency_ms=2000)
    async with app_client(settings) as client:
        assert_error(await client.post(url(), json={"message": "slow"}), 504, "turn_timeout")


async def test_unreachable_upstream_is_502_and_not_ready(make_settings: SettingsFactory) -> None:
    from tests.servers.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = make_settings(openai_api_key="sk-test", openai_base_url=dead, llm_max_retries=0)
    async with app_client(settings) as client:
        assert_error(await client.post(url(), json={"message": "x"}), 502, "upstream_error")
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["upstream"].startswith("upstream unreachable")
        assert (await client.get("/health")).status_code == 200


async def test_concurrent_turns_on_one_thread_are_serialized(
    make_settings: SettingsFactory, mock_llm: MockLLM, storage: Storage,
) -> None:
    import asyncio

    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             **storage)
    mock_llm.control(latency_ms=30)
    async with app_client(settings) as client:
        results = await asyncio.gather(*(
            client.post(url(thread="busy"), json={"message": f"m{i}"}) for i in range(8)
        ))
        assert all(r.status_code == 200 for r in results)
        history = (await client.get(url(thread="busy"))).json()["messages"]
    # One turn at a time: user and assistant alternate, each reply answers the message
    # before it and saw the whole thread so far (2 per earlier turn, the system prompt and
    # its own message).
    assert [m["role"] for m in history] == ["user", "assistant"] * 8
    assert sorted(m["content"] for m in history if m["role"] == "user") == [
        f"m{i}" for i in range(8)
    ]
    for turn, (asked, answer) in enumerate(zip(history[::2], history[1::2], strict=True)):
        assert answer["content"] == (
            f"mock reply to: {asked['content']} (saw {2 * turn + 2} messages)")
