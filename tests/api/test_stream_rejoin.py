"""Rejoining a stream (GET .../stream with Last-Event-ID) over real sockets.

Across replicas: two service processes share one Redis; a client reads three tokens from
one, drops, and rejoins on the other; the same across the two Gunicorn workers of one
service. In one process without Redis: the in-memory replay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from tests.conftest import MockLLM, SettingsFactory, serve_app
from tests.servers.processes import start_app, start_gunicorn
from tests.sse import Event, read_sse
from tests.waiting import wait_until

PATH = "/v1/tenants/demo/threads/{thread}/stream"
TOKENS = 40
# the mock waits this long between tokens: the turn is still running when the client drops
SLOW = f"[[tokens:{TOKENS}]] [[slow:40]]"


async def events_of(response: httpx.Response, limit: int | None = None) -> list[Event]:
    out: list[Event] = []
    async for item in read_sse(response):
        if isinstance(item, Event):
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    return out


async def read_then_drop(client: httpx.AsyncClient, url: str, count: int) -> list[Event]:
    """Start a streamed turn, read ``count`` events, then close the connection."""
    async with client.stream("POST", url, json={"message": SLOW}) as response:
        assert response.status_code == 200
        return await events_of(response, count)


async def rejoin(client: httpx.AsyncClient, url: str, last_id: str | None = None,
                 **params: str) -> tuple[httpx.Response, list[Event]]:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    async with client.stream("GET", url, headers=headers, params=params) as response:
        if response.status_code != 200:
            await response.aread()
            return response, []
        return response, await events_of(response)


def assert_rest_exactly_once(first: list[Event], rest: list[Event]) -> None:
    """The tokens after the first ones, each once, then message and done, ids increasing."""
    assert [e.event for e in rest] == ["token"] * (TOKENS - len(first)) + ["message", "done"]
    assert [e.n for e in rest] == list(range(len(first) + 1, TOKENS + 3))
    assert {e.turn for e in first + rest} == {first[0].turn}
    texts = [e.json["text"] for e in first + rest if e.event == "token"]
    assert "".join(texts) == rest[-2].json["content"]
    assert rest[-2].json["content"].split() == [f"tok{i}" for i in range(TOKENS)]


@pytest.fixture
def replicas(redis_url: str, mock_llm: MockLLM) -> Iterator[tuple[str, str]]:
    env = {"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
           "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_LLM_MAX_RETRIES": "0"}
    one = start_app(env)
    try:
        two = start_app(env)
        try:
            yield f"http://127.0.0.1:{one.port}", f"http://127.0.0.1:{two.port}"
        finally:
            two.stop()
    finally:
        one.stop()


async def test_a_client_that_drops_rejoins_on_another_replica_and_gets_the_rest(
    replicas: tuple[str, str], redis_url: str,
) -> None:
    one, two = replicas
    url = PATH.format(thread="rejoin-1")
    async with httpx.AsyncClient(timeout=30) as client:
        first = await read_then_drop(client, one + url, 3)
        assert [e.event for e in first] == ["token"] * 3
        assert [e.n for e in first] == [1, 2, 3]
        response, rest = await rejoin(client, two + url, first[-1].id)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert_rest_exactly_once(first, rest)
        # ?after= does the same for clients that cannot set headers; no id: from the start
        _, again = await rejoin(client, two + url, after=f"{first[0].turn}-3")
        assert [e.id for e in again] == [e.id for e in rest]
        _, whole = await rejoin(client, one + url)
        assert [e.n for e in whole] == list(range(1, TOKENS + 3))
        # the client that has it all is told to stop (EventSource stops on 204)
        done, _ = await rejoin(client, two + url, rest[-1].id)
        assert done.status_code == 204
        # the turn was stored whole by the replica whose client had gone
        history = (await client.get(f"{two}/v1/tenants/demo/threads/rejoin-1/messages")).json()
        assert history["messages"][-1]["content"] == rest[-2].json["content"]
        # every replay key has a TTL, and deleting the thread removes them
        with redis.Redis.from_url(redis_url) as r:
            keys = list(r.scan_iter(match="agenthost:replay:*"))
            assert len(keys) == 2 and all(0 < r.pttl(k) <= 120_000 for k in keys)
            assert (await client.delete(f"{one}/v1/tenants/demo/threads/rejoin-1")).status_code \
                == 204
            assert list(r.scan_iter(match="agenthost:replay:*")) == []
        gone, _ = await rejoin(client, two + url)
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "nothing_to_rejoin"


async def test_a_rejoin_while_the_turn_runs_follows_it_live_on_another_replica(
    replicas: tuple[str, str],
) -> None:
    one, two = replicas
    url = PATH.format(thread="rejoin-live")
    async with httpx.AsyncClient(timeout=30) as client:
        # the first client keeps reading; a second one joins from the start elsewhere
        original: list[Event] = []

        async def read_all() -> None:
            async with client.stream("POST", one + url, json={"message": SLOW}) as response:
                async for item in read_sse(response):
                    if isinstance(item, Event):
                        original.append(item)

        reading = asyncio.create_task(read_all())
        await wait_until(lambda: len(original) >= 2)
        _, joined = await rejoin(client, two + url)
        await reading
    assert len(original) == TOKENS + 2
    assert [e.id for e in joined] == [e.id for e in original]
    assert [e.event for e in joined][-2:] == ["message", "done"]


@pytest.fixture
async def memory_app(make_settings: SettingsFactory, mock_llm: MockLLM) -> AsyncIterator[str]:
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             llm_max_retries=0, stream_replay_max_events=16)
    async with serve_app(settings) as base_url:
        yield base_url


async def test_without_redis_a_rejoin_is_served_from_the_worker(memory_app: str) -> None:
    url = memory_app + PATH.format(thread="mem")
    async with httpx.AsyncClient(timeout=30) as client:
        first = await read_then_drop(client, url, 3)
        response, rest = await rejoin(client, url, first[-1].id)
        # 16 events kept per turn: the turn is running, events 4.. are still there
        assert response.status_code == 200, response.text
        assert_rest_exactly_once(first, rest)
        # from the start: the first events are no longer kept
        trimmed, _ = await rejoin(client, url)
        assert trimmed.status_code == 410
        assert trimmed.json()["error"]["code"] == "replay_gone"
        _, tail = await rejoin(client, url, rest[-5].id)
        assert [e.id for e in tail] == [e.id for e in rest[-4:]]


async def test_rejoin_refusals(memory_app: str) -> None:
    url = memory_app + PATH.format(thread="refusals")
    async with httpx.AsyncClient(timeout=30) as client:
        nothing, _ = await rejoin(client, url)
        assert nothing.status_code == 404
        async with client.stream("POST", url, json={"message": "hello"}) as response:
            events = await events_of(response)
        assert events[-1].event == "done"
        for bad in ("x", "1-2-3", "-1", "1" * 41):
            refused, _ = await rejoin(client, url, bad)
            assert refused.status_code == 422, bad
            assert refused.json()["error"]["code"] == "invalid_request"
        other_turn, _ = await rejoin(client, url, f"{events[0].turn - 1}-1")
        assert other_turn.status_code == 404
        # a plain number counts in the latest turn
        _, last_two = await rejoin(client, url, str(events[-1].n - 2))
        assert [e.event for e in last_two] == ["message", "done"]
        other_tenant, _ = await rejoin(client, memory_app + "/v1/tenants/nope/threads/t/stream")
        assert other_tenant.status_code == 404


async def test_concurrent_rejoins_of_one_turn_each_get_every_event(memory_app: str) -> None:
    url = memory_app + PATH.format(thread="many")
    async with httpx.AsyncClient(timeout=30) as client:
        first = await read_then_drop(client, url, 1)
        results = await asyncio.gather(*(rejoin(client, url, first[-1].id) for _ in range(8)))
    for response, rest in results:
        assert response.status_code == 200
        assert [e.n for e in rest] == list(range(2, TOKENS + 3))


async def test_rejoined_on_the_other_gunicorn_worker_of_two(
    redis_url: str, mock_llm: MockLLM,
) -> None:
    app = start_gunicorn({"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
                          "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_WORKERS": "2",
                          "AGENTHOST_WORKER_MAX_REQUESTS": "0",
                          "AGENTHOST_LLM_MAX_RETRIES": "0"})
    base = f"http://127.0.0.1:{app.port}"
    url = PATH.format(thread="rejoin-workers")
    try:
        # one kept-alive connection is one worker: ask it its pid, then stream on it
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as first:
            streamer = (await first.get("/cache-stats")).json()["worker_pid"]
            head = await read_then_drop(first, url, 3)
        other = None
        for _ in range(50):  # new connections until the kernel hands one to the other
            client = httpx.AsyncClient(base_url=base, timeout=30,
                                       limits=httpx.Limits(max_connections=1))
            if (await client.get("/cache-stats")).json()["worker_pid"] != streamer:
                other = client
                break
            await client.aclose()
        assert other is not None, "never reached the second worker"
        try:
            response, rest = await rejoin(other, url, head[-1].id)
            assert (await other.get("/cache-stats")).json()["worker_pid"] != streamer
        finally:
            await other.aclose()
        assert response.status_code == 200
        assert_rest_exactly_once(head, rest)
    finally:
        app.stop()
