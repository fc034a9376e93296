"""Fault soak: Redis killed and restarted under traffic, again and again. The service's
memory must not grow per kill (it was reported at ~12 MB per kill: exceptions, pools or
tasks kept by error paths); every request is answered (200, or 503 while Redis is gone)."""

from __future__ import annotations

import asyncio

import httpx
import psutil

from tests.conftest import MockLLM
from tests.servers.processes import ManagedProcess, start_app, start_redis

CYCLES = 5


async def traffic(base: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(worker: int) -> None:
            turn = 0
            while not stop.is_set():
                turn += 1
                response = await client.post(f"{base}/w{worker}-{turn}/messages",
                                             json={"message": "hello " * 50})
                key = str(response.status_code)
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(one(worker) for worker in range(16)))


async def cycle(base: str, redis: ManagedProcess) -> tuple[ManagedProcess, dict[str, int]]:
    """Traffic; Redis killed; restarted on its port; traffic again."""
    stop, counts = asyncio.Event(), {}
    running = asyncio.create_task(traffic(base, stop, counts))
    await asyncio.sleep(1.5)
    port = redis.port
    redis.kill()
    await asyncio.sleep(1.5)
    redis = start_redis(port)
    await asyncio.sleep(2)
    stop.set()
    await running
    return redis, counts


def test_redis_kills_under_traffic_do_not_grow_memory(mock_llm: MockLLM) -> None:
    redis = start_redis()
    app = start_app({"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                     "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_LOG_LEVEL": "ERROR", "AGENTHOST_LLM_MAX_RETRIES": "0"})
    base = f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads"
    process = psutil.Process(app.pid)
    private_mb: list[float] = []
    try:
        for _ in range(CYCLES):
            redis, counts = asyncio.run(cycle(base, redis))
            assert set(counts) <= {"200", "503"}, counts
            assert counts.get("200", 0) > 0 and counts.get("503", 0) > 0, counts
            private_mb.append(process.memory_full_info().uss / 2**20)
    finally:
        app.stop()
        redis.stop()
    print("USS after each kill cycle (MiB):", [round(mb, 1) for mb in private_mb])
    # the first cycle warms pools and caches; after it, kills add nothing that stays
    assert private_mb[-1] - private_mb[1] <= 3.0, private_mb
