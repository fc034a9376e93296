"""``TenantLimiter``: per-tenant turns per minute and concurrent turns, so one tenant's
flood cannot take every other tenant's turns.

- turns per minute: the ``limits`` library's moving window, in Redis through the
  service's own redis-py pool when there is one (shared by every worker and replica),
  in process memory otherwise;
- concurrent turns: ``limits`` has no concurrency limiter; in Redis a sorted set per
  tenant holds each running turn with its deadline, and one Lua script drops expired
  entries, counts, and admits or refuses in one round trip (an entry left by a dead
  worker expires with its deadline); in process memory a counter.

Either refusal is 429 ``rate_limited`` with ``Retry-After``. A tenant's own
``turns_per_minute`` / ``concurrent_turns`` win over the settings' defaults; 0 is no limit.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from app.errors import RateLimited, StorageUnavailable
from app.persistence.plain import RedisClient
from app.persistence.redis import connection_options, fresh_cluster_connections
from app.tenants.registry import TenantConfig
from config.settings import Settings

RUNNING_PREFIX = "agenthost:tenant-running:"
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class Slot:
    """A running turn's place in its tenant's concurrency count; released once."""

    def __init__(self, limiter: TenantLimiter, tenant_id: str, member: str | None,
                 counted: bool = True) -> None:
        self._limiter: TenantLimiter | None = limiter if counted else None
        self._tenant_id = tenant_id
        self._member = member

    async def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            await limiter._release(self._tenant_id, self._member)

    def release_soon(self) -> None:
        """Release from a synchronous callback (a stream's task done)."""
        if self._limiter is not None:
            task = asyncio.get_running_loop().create_task(self.release())
            self._limiter._releasing.add(task)
            task.add_done_callback(self._limiter._releasing.discard)


class TenantLimiter:
    def __init__(self, settings: Settings, client: RedisClient | None = None) -> None:
        self._per_minute = settings.tenant_turns_per_minute
        self._concurrent = settings.tenant_concurrent_turns
        self._deadline_s = settings.turn_timeout_s + settings.thread_wait_s + 30
        self._client = client
        storage: Any
        #: the cluster client ``limits`` built for itself (closed by ``aclose``)
        self._own_client: RedisCluster | None = None
        if isinstance(client, RedisCluster):
            # The cluster bridge builds its own cluster client from the address, opened
            # as the service's: same timeouts and retry, connections outside the turn's
            # context.
            assert settings.redis_url is not None
            address = urlsplit(settings.redis_url.get_secret_value()).netloc
            storage = RedisClusterStorage(f"async+redis+cluster://{address}",
                                          implementation="redispy", key_prefix="agenthost:rate",
                                          **connection_options(settings))
            # PRIVATE-ish (tests/test_library_privates.py): the bridge's client, an
            # undocumented attribute of limits' redis-py bridge.
            self._own_client = fresh_cluster_connections(storage.bridge.storage)
        elif client is not None:
            # The redis-py bridge takes the service's own pool (its typing says otherwise).
            storage = RedisStorage("async+redis://", implementation="redispy",
                                   connection_pool=client.connection_pool,  # type: ignore[arg-type]
                                   key_prefix="agenthost:rate")
        else:
            storage = MemoryStorage()
        self._window = MovingWindowRateLimiter(storage)
        self._admit_script = client.register_script(_ADMIT) if client is not None else None
        self._running: defaultdict[str, int] = defaultdict(int)
        self._releasing: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """At shutdown, once turns have ended: their slot releases finish, and the
        cluster client ``limits`` built for itself is closed."""
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._own_client is not None:
            await self._own_client.aclose()

    def limits_of(self, config: TenantConfig) -> tuple[int, int]:
        per_minute = config.turns_per_minute
        concurrent = config.concurrent_turns
        return (self._per_minute if per_minute is None else per_minute,
                self._concurrent if concurrent is None else concurrent)

    async def admit(self, tenant_id: str, config: TenantConfig) -> Slot:
        """Count a turn against its tenant's limits, or raise ``RateLimited``."""
        try:
            return await self._admit(tenant_id, config)
        except (RedisError, OSError) as exc:
            raise StorageUnavailable("conversation storage is unavailable") from exc

    async def _admit(self, tenant_id: str, config: TenantConfig) -> Slot:
        per_minute, concurrent = self.limits_of(config)
        if per_minute:
            item = RateLimitItemPerMinute(per_minute)
            if not await self._window.hit(item, tenant_id):
                stats = await self._window.get_window_stats(item, tenant_id)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(f"tenant {tenant_id!r} has used its {per_minute} turns "
                                  "per minute", headers={"Retry-After": str(wait)})
        if not concurrent:
            return Slot(self, tenant_id, None, counted=False)
        if self._admit_script is None:
            if self._running[tenant_id] >= concurrent:
                raise self._busy(tenant_id, concurrent)
            self._running[tenant_id] += 1
            return Slot(self, tenant_id, None)
        now_ms = int(time.time() * 1000)
        member = uuid.uuid4().hex
        admitted = await self._admit_script(
            keys=[f"{RUNNING_PREFIX}{tenant_id}"],
            args=[now_ms, concurrent, now_ms + int(self._deadline_s * 1000), member,
                  int(self._deadline_s * 1000)])
        if not admitted:
            raise self._busy(tenant_id, concurrent)
        return Slot(self, tenant_id, member)

    @staticmethod
    def _busy(tenant_id: str, concurrent: int) -> RateLimited:
        return RateLimited(f"tenant {tenant_id!r} already has {concurrent} turns running",
                           headers={"Retry-After": "1"})

    async def _release(self, tenant_id: str, member: str | None) -> None:
        if member is None:
            if self._running.get(tenant_id):
                self._running[tenant_id] -= 1
                if not self._running[tenant_id]:
                    del self._running[tenant_id]
            return
        assert self._client is not None
        try:
            await self._client.zrem(f"{RUNNING_PREFIX}{tenant_id}", member)
        except (RedisError, OSError):
            pass  # the entry expires with its deadline
