"""AgentCache bounds, single-flight and invalidation, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import SystemMessage

from app.agents.cache import (
    ENTRY_OVERHEAD_BYTES,
    OWN_TOOL_BYTES,
    AgentCache,
    BuiltAgent,
    estimate_bytes,
)
from app.agents.graph import TenantAgent
from app.llm.offline import OfflineChatModel
from app.tenants.registry import TenantConfig
from tests.clock import FakeClock


class Builder:
    def __init__(self, delay: float = 0.0, degraded: bool = False) -> None:
        self.calls: list[str] = []
        self.delay = delay
        self.degraded = degraded

    async def __call__(self, tenant_id: str, config: TenantConfig) -> BuiltAgent:
        self.calls.append(tenant_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        agent = TenantAgent(tenant_id, SystemMessage(config.system_prompt), OfflineChatModel(),
                            {}, 20, 40, 4000, 5.0)
        return BuiltAgent(agent, own_tools=0, degraded=self.degraded)


def cache(builder: Builder, clock: FakeClock | None = None, **bounds: float) -> AgentCache:
    return AgentCache(builder, max_entries=int(bounds.get("max_entries", 100)),
                      max_bytes=int(bounds.get("max_bytes", 10**9)),
                      ttl_s=bounds.get("ttl_s", 3600), retry_s=bounds.get("retry_s", 30),
                      clock=clock or FakeClock())


CONFIG = TenantConfig(system_prompt="hello")


async def test_hits_after_the_first_build() -> None:
    builder = Builder()
    agents = cache(builder)
    first = await agents.get("a", CONFIG)
    assert await agents.get("a", CONFIG) is first
    assert builder.calls == ["a"]
    stats = agents.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)


async def test_fifty_concurrent_first_requests_build_once() -> None:
    builder = Builder(delay=0.05)
    agents = cache(builder)
    results = await asyncio.gather(*(agents.get("a", CONFIG) for _ in range(50)))
    assert builder.calls == ["a"]
    assert all(r is results[0] for r in results)


async def test_a_failed_build_reaches_every_waiter_and_is_retried() -> None:
    class Failing(Builder):
        async def __call__(self, tenant_id: str, config: TenantConfig) -> BuiltAgent:
            self.calls.append(tenant_id)
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")

    builder = Failing()
    agents = cache(builder)
    results = await asyncio.gather(*(agents.get("a", CONFIG) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and builder.calls == ["a"]
    with pytest.raises(RuntimeError):
        await agents.get("a", CONFIG)
    assert builder.calls == ["a", "a"] and len(agents) == 0


async def test_count_bound_evicts_least_recently_used() -> None:
    agents = cache(Builder(), max_entries=3)
    for tenant in "abc":
        await agents.get(tenant, CONFIG)
    await agents.get("a", CONFIG)  # a is now most recent
    await agents.get("d", CONFIG)
    assert len(agents) == 3
    assert agents.stats()["evictions"] == {"lru": 1}
    builder_calls = agents._builder.calls  # type: ignore[attr-defined]
    await agents.get("a", CONFIG)
    await agents.get("b", CONFIG)  # b was evicted: rebuilt
    assert builder_calls[-1] == "b"


async def test_byte_budget_binds_before_the_count() -> None:
    one = estimate_bytes(CONFIG, BuiltAgent(None, 0, False))  # type: ignore[arg-type]
    with_tools = estimate_bytes(CONFIG, BuiltAgent(None, 3, False))  # type: ignore[arg-type]
    assert one == ENTRY_OVERHEAD_BYTES and with_tools == one + 3 * OWN_TOOL_BYTES
    agents = cache(Builder(), max_entries=100, max_bytes=int(one * 2.5))
    for tenant in "abcd":
        await agents.get(tenant, CONFIG)
    assert len(agents) == 2
    assert agents.bytes <= agents.max_bytes
    assert agents.stats()["evictions"] == {"budget": 2}


async def test_idle_entries_expire_by_sweep_and_on_access() -> None:
    clock = FakeClock()
    builder = Builder()
    agents = cache(builder, clock, ttl_s=60)
    await agents.get("a", CONFIG)
    await agents.get("b", CONFIG)
    clock.now += 30
    await agents.get("a", CONFIG)  # refreshes a
    clock.now += 40  # b idle 70 s, a 40 s
    assert agents.sweep() == 1 and len(agents) == 1
    clock.now += 61
    await agents.get("a", CONFIG)
    assert builder.calls == ["a", "b", "a"]
    assert agents.stats()["evictions"] == {"ttl": 2}


async def test_a_new_config_replaces_the_cached_agent() -> None:
    builder = Builder()
    agents = cache(builder)
    old = await agents.get("a", CONFIG)
    new_config = TenantConfig(system_prompt="changed")
    new = await agents.get("a", new_config)
    assert new is not old and new.system_message.content == "changed"
    agents.invalidate("a")
    assert len(agents) == 0 and agents.stats()["evictions"] == {"invalidated": 2}
    # a turn that still holds the old agent is unaffected by its eviction
    assert old.system_message.content == "hello"


async def test_degraded_agents_are_rebuilt_after_the_retry_delay() -> None:
    clock = FakeClock()
    builder = Builder(degraded=True)
    agents = cache(builder, clock, retry_s=30)
    await agents.get("a", CONFIG)
    await agents.get("a", CONFIG)
    assert builder.calls == ["a"]
    clock.now += 31
    builder.degraded = False
    await agents.get("a", CONFIG)
    clock.now += 31
    await agents.get("a", CONFIG)
    assert builder.calls == ["a", "a"]


async def test_under_memory_pressure_the_cache_works_to_half_and_drops_idle_agents() -> None:
    clock = FakeClock()
    agents = cache(Builder(), clock, max_entries=10)
    for i in range(10):
        await agents.get(f"t{i}", CONFIG)
        clock.advance(10)  # t0 was last used 100 s ago, t9 just now
    agents.relieve(0)
    assert len(agents) == 10 and agents.stats()["squeezed"] is False
    agents.relieve(1)  # moderate: idle a minute or more go, then down to half the count
    assert agents.stats()["squeezed"] is True
    assert len(agents) == 5
    assert agents.stats()["evictions"] == {"pressure": 5}
    for i in range(10, 20):  # still squeezed: new agents keep it at half
        await agents.get(f"t{i}", CONFIG)
    assert len(agents) == 5
    agents.relieve(0)
    for i in range(20, 30):
        await agents.get(f"t{i}", CONFIG)
    assert len(agents) == 10
