"""Memory per cached tenant at 1, 100, 1,000 and 10,000 tenants, and the cache's estimate.

    python -m bench.tenant_memory [--tenants 10000]

In one process, the service's own objects (offline model, in-memory persistence): each
tenant gets a distinct ~2 KB prompt and two builtin tools, its agent is built through the
AgentCache and it runs one turn. At each mark: RSS growth per tenant since before the
first tenant (config + cached agent + one stored thread + allocator slack). At the end,
the cache's estimated bytes per entry against what rebuilding the entries allocates
(tracemalloc). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import string
import time
import tracemalloc
from contextlib import AsyncExitStack

import psutil

from app.main import build_state
from app.observability.metrics import Metrics
from app.persistence.base import thread_key
from app.tenants.registry import TenantConfig
from config.settings import Settings

MARKS = (1, 100, 1000, 10000)


def prompt(i: int) -> str:
    rng = random.Random(i)
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(330)
    ]
    return f"You are the assistant of business {i}. " + " ".join(words)[:2000]


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=10000)
    args = parser.parse_args()
    total = args.tenants
    settings = Settings(agent_cache_max_entries=total + 10, agent_cache_max_bytes=2**34,
                        memory_max_threads=total + 10, log_level="WARNING")
    async with AsyncExitStack() as stack:
        state = await build_state(settings, stack, Metrics())
        await state.runner.run(await state.agents.get("demo", state.tenants.get("demo")),
                               thread_key("demo", "warm"), "warm up")
        base = rss()
        print(f"baseline RSS {base / 2**20:.1f} MB (imports, app, demo tenant)")
        print(f"{'tenants':>8} {'RSS MB':>8} {'+RSS MB':>8} {'KB/tenant':>10} "
              f"{'cache est. KB/entry':>20}")
        for i in range(1, total + 1):
            tenant_id = f"tenant-{i}"
            config = TenantConfig(system_prompt=prompt(i), tools=("current_time", "calculator"))
            await state.tenant_store.put(tenant_id, config)
            agent = await state.agents.get(tenant_id, config)
            await state.runner.run(agent, thread_key(tenant_id, "t1"), "hello, I need a slot")
            if i in MARKS:
                now = rss()
                stats = state.agents.stats()
                print(f"{i:>8} {now / 2**20:>8.1f} {(now - base) / 2**20:>8.1f} "
                      f"{(now - base) / i / 1024:>10.1f} "
                      f"{stats['estimated_bytes'] / stats['entries'] / 1024:>20.2f}", flush=True)
        # what an entry costs to build and hold: drop them all, rebuild under tracemalloc
        entries = len(state.agents)
        estimated = state.agents.bytes
        for i in range(1, total + 1):
            state.agents.invalidate(f"tenant-{i}")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, total + 1):
            tenant_id = f"tenant-{i}"
            await state.agents.get(tenant_id, state.tenants.get(tenant_id))  # type: ignore[arg-type]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        config = state.tenants.get("tenant-1")
        assert config is not None
        started = time.perf_counter()
        for _ in range(2000):
            state.agent_factory.clone("tenant-1", config)
        clone_us = (time.perf_counter() - started) / 2000 * 1e6
        print(f"clone of the base agent (shared binding): {clone_us:.1f} µs")
        print(f"agent cache: estimated {estimated / entries:.0f} B/entry, measured "
              f"{held / entries:.0f} B/entry (tracemalloc, rebuilding {entries} entries); "
              f"ratio {estimated / held:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
