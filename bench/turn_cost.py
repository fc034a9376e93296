"""Per-turn cost as a thread grows: time and stored bytes at turns 1, 10, 100 and 1,000.

    python -m bench.turn_cost [--turns 1000] [--plain-turns 300] [--redis-url URL]

Variants, all with the offline model so that persistence is what is measured:
- ``memory``: the embedded BoundedMemorySaver, through the service's TurnRunner;
- ``redis``: RedisBackend (AsyncRedisSaver + stored-history cap + prune), same runner;
- ``redis-plain``: AsyncRedisSaver used as LangGraph documents it (default durability,
  every checkpoint kept, no history cap), for comparison;
- ``redis-module-free``: RedisBackend with the module-free PlainRedisSaver
  (``AGENTHOST_REDIS_CHECKPOINTER=plain``), same runner.
Times are medians over a window of 21 turns around each mark (fewer at turn 1). Without
``--redis-url`` it starts its own Redis 8 (the test one) and stops it at the end. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from langchain_core.messages import HumanMessage
from redis.asyncio import Redis

from app.agents.factory import AgentFactory
from app.agents.graph import TenantAgent, TurnContext, build_agent_graph
from app.agents.tools import ToolRegistry, build_builtin_tools
from app.llm.pool import ModelPool
from app.persistence.base import Backend, thread_config
from app.persistence.memory import BoundedMemorySaver, MemoryBackend
from app.persistence.plain import thread_hash
from app.persistence.redis import RedisBackend
from app.tenants.registry import TenantConfig
from app.turns.runner import TurnRunner
from config.settings import Settings

MARKS = (1, 10, 100, 1000)
WINDOW = 21
TEXT = "I would like to book a cleaning next Tuesday afternoon, ideally after 3 pm. " * 2


async def thread_bytes(client: Redis, thread: str) -> int:
    total = 0
    async for name in client.scan_iter(match=f"*{thread}*", count=1000):
        total += await client.memory_usage(name) or 0
    return total


async def measure(
    name: str, turns: int, run_turn: Any, size_of: Any
) -> dict[int, tuple[float, int]]:
    times: list[float] = []
    results: dict[int, tuple[float, int]] = {}
    for turn in range(1, turns + 1):
        started = time.perf_counter()
        await run_turn(turn)
        times.append(time.perf_counter() - started)
        for mark in MARKS:
            if turn == min(mark + WINDOW // 2, turns) and mark <= turns:
                window = times[max(0, mark - 1 - WINDOW // 2): turn]
                results[mark] = (statistics.median(window) * 1000, await size_of())
    row = "  ".join(
        f"turn {m:>4}: {results[m][0]:7.2f} ms {results[m][1] / 1024:8.1f} KiB"
        for m in MARKS if m in results
    )
    print(f"{name:<12} {row}", flush=True)
    return results


def agent_for(settings: Settings) -> tuple[AgentFactory, TenantAgent]:
    tools = ToolRegistry(build_builtin_tools())
    config = TenantConfig(system_prompt="You are the booking assistant of Demo Dental.",
                          tools=("current_time", "calculator"))
    # the graph is rebuilt per variant below; AgentFactory only clones the tenant here
    base = AgentFactory(build_agent_graph(BoundedMemorySaver(max_threads=1, ttl_s=1)),
                     ModelPool(settings), tools, settings)
    return base, base.clone("demo", config)


async def run_service_variant(name: str, store: Backend, settings: Settings,
                              turns: int, size_of: Any) -> None:
    _, agent = agent_for(settings)
    runner = TurnRunner(build_agent_graph(store.checkpointer), store, settings)
    key = f"bench-{name}-{uuid.uuid4().hex[:8]}"

    async def run_turn(turn: int) -> None:
        await runner.run(agent, key, f"{TEXT} (message {turn})")

    await measure(name, turns, run_turn, lambda: size_of(key))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--plain-turns", type=int, default=1000)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        from tests.servers.processes import start_redis

        server = start_redis()
        url = f"redis://127.0.0.1:{server.port}/0"
    settings = Settings(redis_url=url)  # type: ignore[arg-type]
    print(f"history cap: model sees {settings.history_max_messages}, "
          f"stores {settings.history_max_stored_messages} messages per thread")
    try:
        saver = BoundedMemorySaver(max_threads=100, ttl_s=3600)

        async def memory_size(key: str) -> int:
            return saver.bytes_held()

        await run_service_variant("memory", MemoryBackend(saver), settings, args.turns,
                                  memory_size)
        async with RedisBackend.open(settings) as store:
            async def redis_size(key: str) -> int:
                return await thread_bytes(store.client, key)

            await run_service_variant("redis", store, settings, args.turns, redis_size)

            # plain: the same graph as LangGraph users write it, no caps, no pruning
            graph = build_agent_graph(store.checkpointer)
            _, capped = agent_for(settings)
            plain = TenantAgent(**{**{f: getattr(capped, f) for f in TenantAgent.__slots__},
                                   "max_stored": 10**9, "max_messages": 10**9})
            key = f"bench-plain-{uuid.uuid4().hex[:8]}"

            async def plain_turn(turn: int) -> None:
                await graph.ainvoke({"messages": [HumanMessage(f"{TEXT} (message {turn})")]},
                                    thread_config(key), context=TurnContext(plain))

            await measure("redis-plain", args.plain_turns, plain_turn,
                          lambda: thread_bytes(store.client, key))
        module_free = settings.model_copy(update={"redis_checkpointer": "plain"})
        async with RedisBackend.open(module_free) as store:
            async def hash_size(key: str) -> int:
                return int(await store.client.memory_usage(thread_hash(key)) or 0)

            await run_service_variant("redis-module-free", store, module_free, args.turns,
                                      hash_size)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
