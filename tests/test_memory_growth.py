"""Memory guard: finished conversations leave nothing behind, on every backend and route.

The service runs in this process (uvicorn on a real socket, so tracemalloc and gc see
it) against the mock OpenAI server, and on the Redis backend against the real Redis 8.
After a warm-up, more multi-turn threads (one turn with a tool call) must not grow
Python-allocated memory by more than a small bound per thread, and must leave no frame,
traceback, coroutine, task or message object alive. Counts and sizes, never times.

This would have caught the Redis-mode leak (a cached exception re-raised on every read,
its traceback holding every frame and checkpoint since start: ~80 KB per thread).
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
import tracemalloc
import types
import urllib.parse

import httpx
import pytest
from langchain_core.messages import BaseMessage

from tests.conftest import MockLLM, SettingsFactory, serve_app
from tests.sse import Event, read_sse
from tests.waiting import settle_loop, settle_tasks

WARMUP_THREADS = 30
COUNTED_THREADS = 100
TRACED_FIRST = 20
MEMORY_MAX_THREADS = 16  # at least CONCURRENCY: no thread is evicted during its turns
TRACED_THREADS = 30
# ~ 12 streamed turns of these threads: fewer than a traced round makes, like the threads
REPLAY_MAX_BYTES = 6 * 1024
TURNS = ("hello there", "what time is it? [[tool:current_time {}]]", "thanks, bye")
CONCURRENCY = 8
# What a finished thread may leave behind: allocated blocks (the leak kept ~1,300) and
# bytes (the leak kept ~80,000).
MAX_BLOCKS_PER_THREAD = 20
MAX_BYTES_PER_THREAD = 2048
# Live objects of each watched kind that 100 threads may add in all (not per thread).
# Flat in practice: pooled connections open outside the turn's context
# (app/clean_context.py), and cancelled timers are pruned before counting.
MAX_EXTRA_OBJECTS = 5


async def json_turn(client: httpx.AsyncClient, thread: str, text: str) -> str:
    response = await client.post(f"/v1/tenants/demo/threads/{thread}/messages",
                                 json={"message": text})
    assert response.status_code == 200, response.text
    content: str = response.json()["reply"]["content"]
    return content


async def sse_turn(client: httpx.AsyncClient, thread: str, text: str) -> str:
    events: list[Event] = []
    async with client.stream("POST", f"/v1/tenants/demo/threads/{thread}/stream",
                             json={"message": text}) as response:
        assert response.status_code == 200, await response.aread()
        async for item in read_sse(response):
            if isinstance(item, Event):
                events.append(item)
    assert [e.event for e in events][-2:] == ["message", "done"], events[-3:]
    content: str = events[-2].json["content"]
    return content


async def rejoined_sse_turn(client: httpx.AsyncClient, thread: str, text: str) -> str:
    """A streamed turn whose client drops after its first event and rejoins for the rest."""
    url = f"/v1/tenants/demo/threads/{thread}/stream"
    async with client.stream("POST", url, json={"message": text}) as response:
        assert response.status_code == 200, await response.aread()
        async for item in read_sse(response):
            if isinstance(item, Event):
                first = item
                break
    events: list[Event] = []
    async with client.stream("GET", url, headers={"Last-Event-ID": first.id or ""}) as rest:
        assert rest.status_code == 200, await rest.aread()
        async for item in read_sse(rest):
            if isinstance(item, Event):
                events.append(item)
    assert [e.event for e in events][-2:] == ["message", "done"], events[-3:]
    assert events[0].n == first.n + 1
    content: str = events[-2].json["content"]
    return content


async def openai_turn(client: httpx.AsyncClient, thread: str, text: str) -> str:
    response = await client.post("/v1/chat/completions", headers={"X-Thread-Id": thread},
                                 json={"model": "demo",
                                       "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


async def openai_stream_turn(client: httpx.AsyncClient, thread: str, text: str) -> str:
    parts: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", headers={"X-Thread-Id": thread},
                             json={"model": "demo", "stream": True,
                                   "messages": [{"role": "user", "content": text}]}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    parts.append(choice["delta"].get("content") or "")
            elif line == "data: [DONE]":
                break
    return "".join(parts)


async def conversations(base_url: str, route: str, prefix: str, count: int) -> None:
    """``count`` threads of three turns each (the second calls a tool), then a history read.

    Over a client of their own, closed at the end: a kept-alive connection holds on to
    its last request's objects until it closes.
    """
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await _conversations(client, route, prefix, count)


async def _conversations(client: httpx.AsyncClient, route: str, prefix: str,
                         count: int) -> None:
    turn = {"json": json_turn, "sse": sse_turn, "sse-rejoin": rejoined_sse_turn,
            "openai": openai_turn, "openai-sse": openai_stream_turn}[route]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            thread = f"{prefix}-{i}"
            replies = [await turn(client, thread, text) for text in TURNS]
            assert replies[1].startswith("tool current_time returned:"), replies[1]
            history = await client.get(f"/v1/tenants/demo/threads/{thread}/messages")
            assert history.status_code == 200
            assert len(history.json()["messages"]) == 8  # 3 user, 4 assistant (1 calls), 1 tool

    await asyncio.gather(*(one(i) for i in range(count)))


def task_stacks() -> dict[int, str]:
    """Each live task's coroutine chain, innermost last: what a failure names."""
    stacks = {}
    for task in asyncio.all_tasks():
        frames = [f"{f.f_code.co_qualname}:{f.f_lineno}" for f in task.get_stack(limit=12)]
        stacks[id(task)] = f"{task.get_name()} " + " > ".join(frames)
    return stacks


async def live_objects() -> dict[str, int]:
    """Live objects of the kinds a finished turn must not leave behind.

    By exact type, not ``isinstance``: that would touch lazy proxies (the OpenAI SDK's
    ``numpy`` proxy), importing whole packages inside the measured window.
    """
    await settle_tasks()  # background work of the last turns (slot releases) is over
    await settle_loop()  # the server sees closed connections; cancelled timers are pruned
    # The standard library's bounded caches (128 parsed URLs, 512 regexes) fill with
    # per-thread URLs; emptied here so that filling is not mistaken for growth.
    urllib.parse.urlsplit.cache_clear()
    re.purge()
    gc.collect()
    counts = {"frame": 0, "traceback": 0, "coroutine": 0, "task": 0, "message": 0}
    kinds = {types.FrameType: "frame", types.TracebackType: "traceback",
             types.CoroutineType: "coroutine", asyncio.Task: "task"}
    for obj in gc.get_objects():
        kind = type(obj)
        name = kinds.get(kind)
        if name is not None:
            counts[name] += 1
        elif issubclass(kind, BaseMessage):
            counts["message"] += 1
    return counts


@pytest.mark.parametrize(("backend", "route"), [
    *((backend, route) for backend in ("memory", "redis", "plain-redis")
      for route in ("json", "sse")),
    # the OpenAI-compatible endpoint (on a thread), whole and streamed, on each backend
    *((backend, route) for backend in ("memory", "redis", "plain-redis")
      for route in ("openai", "openai-sse")),
    # streams dropped and rejoined (GET .../stream): kept in the worker, or in Redis
    ("memory", "sse-rejoin"), ("plain-redis", "sse-rejoin"),
    # Redis Cluster: the cluster client, its connections per node
    ("cluster", "json"), ("cluster", "sse"),
])
async def test_finished_threads_leave_nothing_behind(
    backend: str, route: str, request: pytest.FixtureRequest, make_settings: SettingsFactory,
    mock_llm: MockLLM,
) -> None:
    overrides: dict[str, object] = {"openai_api_key": "sk-test",
                                    "openai_base_url": mock_llm.base_url,
                                    "llm_max_retries": 0,
                                    # The memory governor samples /proc in a worker thread
                                    # every second; a sample caught mid-read by a snapshot
                                    # is ~35 KB of transient buffers, noise here. Its own
                                    # state is bounded (tests/memory/).
                                    "memory_sample_s": 3600}
    if backend == "cluster":
        overrides["redis_url"] = request.getfixturevalue("cluster_url")
        overrides["redis_cluster"] = True
    elif backend in ("redis", "plain-redis"):
        overrides["redis_url"] = request.getfixturevalue("redis_url")
        overrides["redis_checkpointer"] = "plain" if backend == "plain-redis" else "langgraph"
    else:
        # Fewer threads kept than any round makes: stored state stays at its bound.
        overrides["memory_max_threads"] = MEMORY_MAX_THREADS
        # likewise the streamed turns kept for rejoining (the smallest budget)
        overrides["stream_replay_max_bytes"] = REPLAY_MAX_BYTES
    async with serve_app(make_settings(**overrides)) as base_url:
        # Warm-up: imports, pools and per-tenant caches are in place after it.
        await conversations(base_url, route, "warm", WARMUP_THREADS)
        before = await live_objects()
        tasks_before = task_stacks()
        blocks_before = sys.getallocatedblocks()
        await conversations(base_url, route, "counted", COUNTED_THREADS)
        after = await live_objects()
        new_tasks = [stack for key, stack in task_stacks().items() if key not in tasks_before]
        blocks_per_thread = (sys.getallocatedblocks() - blocks_before) / COUNTED_THREADS
        # tracemalloc costs ~4x per turn, so it measures bytes over fewer threads. Traced
        # from a first round on, so what the second frees of the first's allocations
        # (evicted threads, replaced cache entries) counts as freed.
        tracemalloc.start()
        try:
            await conversations(base_url, route, "traced-first", TRACED_FIRST)
            await live_objects()
            snapshot = tracemalloc.take_snapshot()
            await conversations(base_url, route, "traced", TRACED_THREADS)
            await live_objects()
            grown = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
        finally:
            tracemalloc.stop()
    extra = {kind: after[kind] - before[kind] for kind in after}
    assert all(n <= MAX_EXTRA_OBJECTS for n in extra.values()), (
        f"{backend}/{route}: objects left alive by {COUNTED_THREADS} finished threads: "
        f"{extra} (before {before}); tasks started since and still alive: {new_tasks}")
    assert blocks_per_thread <= MAX_BLOCKS_PER_THREAD, (
        f"{backend}/{route}: {blocks_per_thread:.1f} memory blocks kept per finished thread")
    per_thread = sum(stat.size_diff for stat in grown) / TRACED_THREADS
    where = "\n".join(str(stat) for stat in grown[:8])
    assert per_thread <= MAX_BYTES_PER_THREAD, (
        f"{backend}/{route}: {per_thread:.0f} B kept per finished thread; largest:\n{where}")
