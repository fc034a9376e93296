"""``AgentCache``: tenant agents per worker, bounded by count, estimated bytes and idle time.

Whichever bound binds first evicts, least recently used first. Builds are single-flight:
concurrent first requests for a tenant share one build. An entry is a plain reference to
an immutable ``TenantAgent``, so evicting it never disturbs a turn that holds it. An agent
built while one of the tenant's MCP servers was down is served, and rebuilt on the first
request after ``retry_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.agents.graph import TenantAgent
from app.observability.metrics import Metrics
from app.tenants.registry import TenantConfig

# What one entry holds, measured by bench/tenant_memory.py: the cache entry, TenantAgent,
# SystemMessage and tool map (~1.4 KB). The prompt string is the tenant registry's (the
# message references it) and the model binding is shared by tenants with the same model,
# temperature and builtin tools, so neither is counted here.
ENTRY_OVERHEAD_BYTES = 1500
# A tool of the tenant's own (MCP) with its schema, and its share of an unshared binding.
OWN_TOOL_BYTES = 6000
# Under memory pressure: the share of the bounds the cache works to, and how long unused
# makes an agent idle (dropped at once; rebuilding one costs ~1 ms without MCP).
SQUEEZED_SHARE = 0.5
IDLE_UNDER_PRESSURE_S = 60.0


@dataclass(frozen=True, slots=True)
class BuiltAgent:
    agent: TenantAgent
    own_tools: int  # tools built for this tenant alone (MCP), not shared
    degraded: bool  # some MCP server failed; rebuild later


Builder = Callable[[str, TenantConfig], Awaitable[BuiltAgent]]


def estimate_bytes(config: TenantConfig, built: BuiltAgent) -> int:
    return ENTRY_OVERHEAD_BYTES + OWN_TOOL_BYTES * built.own_tools


@dataclass(slots=True)
class _Entry:
    built: BuiltAgent
    config: TenantConfig
    size: int
    created: float
    last_used: float
    retry_at: float | None


class AgentCache:
    def __init__(
        self,
        builder: Builder,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._builder = builder
        self._metrics = metrics or Metrics()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._building: dict[str, tuple[TenantConfig, asyncio.Future[BuiltAgent]]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions: dict[str, int] = {}
        self.squeezed = False

    @property
    def entry_limit(self) -> int:
        """The count it works to now: half of ``max_entries`` under memory pressure."""
        share = SQUEEZED_SHARE if self.squeezed else 1.0
        return max(1, int(self.max_entries * share))

    @property
    def byte_limit(self) -> int:
        share = SQUEEZED_SHARE if self.squeezed else 1.0
        return max(1, int(self.max_bytes * share))

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, tenant_id: str, config: TenantConfig) -> TenantAgent:
        now = self._clock()
        entry = self._entries.get(tenant_id)
        if entry is not None:
            fresh = entry.config is config and now - entry.last_used < self.ttl_s
            retry_due = entry.retry_at is not None and now >= entry.retry_at
            if fresh and not retry_due:
                entry.last_used = now
                self._entries.move_to_end(tenant_id)
                self.hits += 1
                self._metrics.agent_cache_hits.inc()
                return entry.built.agent
            if not fresh:
                self._evict(tenant_id, "invalidated" if entry.config is not config else "ttl")
        self.misses += 1
        self._metrics.agent_cache_misses.inc()
        building = self._building.get(tenant_id)
        if building is not None and building[0] is config:
            return (await asyncio.shield(building[1])).agent
        future: asyncio.Future[BuiltAgent] = asyncio.get_running_loop().create_future()
        self._building[tenant_id] = (config, future)
        started = time.perf_counter()
        try:
            built = await self._builder(tenant_id, config)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # a lone builder has no waiter to retrieve it
            raise
        finally:
            if self._building.get(tenant_id, (None, None))[1] is future:
                del self._building[tenant_id]
        self._metrics.agent_build_seconds.observe(time.perf_counter() - started)
        future.set_result(built)
        self._insert(tenant_id, config, built)
        return built.agent

    def _insert(self, tenant_id: str, config: TenantConfig, built: BuiltAgent) -> None:
        if tenant_id in self._entries:
            self._evict(tenant_id, "invalidated")
        now = self._clock()
        size = estimate_bytes(config, built)
        self._entries[tenant_id] = _Entry(
            built=built, config=config, size=size, created=now, last_used=now,
            retry_at=now + self.retry_s if built.degraded else None,
        )
        self.bytes += size
        self._sizes_changed()
        self._fit()

    def _fit(self, over_count: str = "lru", over_bytes: str = "budget") -> None:
        while len(self._entries) > self.entry_limit:
            self._evict(next(iter(self._entries)), over_count)
        while self.bytes > self.byte_limit and len(self._entries) > 1:
            self._evict(next(iter(self._entries)), over_bytes)

    def _evict(self, tenant_id: str, reason: str) -> None:
        entry = self._entries.pop(tenant_id, None)
        if entry is None:
            return
        self.bytes -= entry.size
        self.evictions[reason] = self.evictions.get(reason, 0) + 1
        self._metrics.agent_cache_evictions.labels(reason).inc()
        self._sizes_changed()

    def _sizes_changed(self) -> None:
        self._metrics.agent_cache_entries.set(len(self._entries))
        self._metrics.agent_cache_bytes.set(self.bytes)

    def invalidate(self, tenant_id: str) -> None:
        """The tenant's config changed or it is gone: drop its agent now."""
        self._evict(tenant_id, "invalidated")

    def sweep(self) -> int:
        """Drop agents idle past the TTL (the janitor calls this)."""
        limit = self._clock() - self.ttl_s
        idle = [tid for tid, entry in self._entries.items() if entry.last_used <= limit]
        for tenant_id in idle:
            self._evict(tenant_id, "ttl")
        return len(idle)

    def relieve(self, level: int) -> None:
        """Memory pressure (the governor calls this after every sample): from moderate up,
        work to half the bounds and drop agents idle for a minute; below it, the full ones."""
        self.squeezed = level >= 1
        if not self.squeezed:
            return
        limit = self._clock() - IDLE_UNDER_PRESSURE_S
        for tenant_id in [t for t, e in self._entries.items() if e.last_used <= limit]:
            self._evict(tenant_id, "pressure")
        self._fit("pressure", "pressure")

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        oldest = min((e.created for e in self._entries.values()), default=None)
        lookups = self.hits + self.misses
        return {
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "estimated_bytes": self.bytes,
            "budget_bytes": self.max_bytes,
            "squeezed": self.squeezed,
            "utilization_pct": round(100 * max(len(self._entries) / self.max_entries,
                                               self.bytes / self.max_bytes), 2),
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / lookups, 4) if lookups else None,
            "evictions": dict(self.evictions),
            "oldest_entry_age_s": round(now - oldest, 3) if oldest is not None else None,
            "ttl_s": self.ttl_s,
            "building": len(self._building),
        }
