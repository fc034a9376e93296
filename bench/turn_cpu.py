"""A turn's wall time and CPU, in-memory against module-free Redis, interleaved.

    python -m bench.turn_cpu [--turns 400] [--reps 3]

Offline model, the service's TurnRunner, one thread per variant (50 warm-up turns, then
``--turns`` measured); per rep: median wall time, mean CPU of this process per turn, and
Redis's own CPU per turn (``INFO cpu``). CPU is steadier than wall time on a shared
machine. Starts a Redis 8 without modules; prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from redis import Redis

from app.agents.graph import build_agent_graph
from app.persistence.base import Backend
from app.persistence.memory import BoundedMemorySaver, MemoryBackend
from app.persistence.redis import RedisBackend
from app.turns.runner import TurnRunner
from bench.turn_cost import TEXT, agent_for
from config.settings import Settings
from tests.servers.processes import start_redis

WARMUP = 50


async def run(store: Backend, settings: Settings, turns: int) -> tuple[float, float]:
    _, agent = agent_for(settings)
    runner = TurnRunner(build_agent_graph(store.checkpointer), store, settings)
    key = f"cpu-{uuid.uuid4().hex[:6]}"
    for turn in range(WARMUP):
        await runner.run(agent, key, f"{TEXT} (message {turn})")
    walls, cpus = [], []
    for turn in range(turns):
        wall, cpu = time.perf_counter(), time.process_time()
        await runner.run(agent, key, f"{TEXT} (message {turn})")
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls) * 1000, sum(cpus) / turns * 1000


def redis_cpu(client: Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(port: int, turns: int, reps: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    observer = Redis(port=port)
    for rep in range(reps):
        settings = Settings(redis_url=url, redis_checkpointer="plain")
        memory = MemoryBackend(BoundedMemorySaver(max_threads=100, ttl_s=3600))
        memory_wall, memory_cpu = await run(memory, settings, turns)
        before = redis_cpu(observer)
        async with RedisBackend.open(settings) as store:
            redis_wall, redis_cpu_ = await run(store, settings, turns)
        server = (redis_cpu(observer) - before) / (turns + WARMUP) * 1000
        print(f"rep {rep + 1}: memory {memory_wall:.2f} ms wall, {memory_cpu:.2f} ms CPU | "
              f"module-free Redis {redis_wall:.2f} ms wall, {redis_cpu_:.2f} ms CPU, "
              f"Redis server {server:.2f} ms CPU a turn", flush=True)
    observer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    server = start_redis(modules=False)
    try:
        asyncio.run(measure(server.port, args.turns, args.reps))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
