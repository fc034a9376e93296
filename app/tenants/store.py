"""Where tenant configs live, and how a change reaches every worker.

``TenantStore`` keeps them in this process (seeded from the tenants file; admin changes
last until restart). ``RedisTenantStore`` keeps them in a Redis hash shared by every
worker and replica: the first start seeds it from the file, after which Redis is the
source of truth. A change bumps a version counter and is published; each worker applies
published changes at once and also compares the version every
``tenant_sync_interval_s``, so a change missed on pub/sub (a reconnect) still arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping

from pydantic import ValidationError
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from app.errors import ConfigError
from app.persistence.plain import RedisClient
from app.tenants.registry import TenantConfig, TenantRegistry, parse_tenants

logger = logging.getLogger(__name__)

HASH_KEY = "agenthost:tenants"
VERSION_KEY = "agenthost:tenants:version"
SEEDED_KEY = "agenthost:tenants:seeded"
CHANNEL = "agenthost:tenants:changed"
# On Redis Cluster the three keys share a hash tag: read and changed together, in one slot.
CLUSTER_KEYS = ("{agenthost:tenants}", "{agenthost:tenants}:version",
                "{agenthost:tenants}:seeded")

OnChange = Callable[[str], None]


class TenantStore:
    description = "in-process (seeded from the tenants file; admin changes last until restart)"

    def __init__(self, registry: TenantRegistry, known_tools: Iterable[str]) -> None:
        self.registry = registry
        self.known_tools = list(known_tools)
        self._listeners: list[OnChange] = []

    def on_change(self, listener: OnChange) -> None:
        self._listeners.append(listener)

    def _changed(self, tenant_id: str) -> None:
        for listener in self._listeners:
            listener(tenant_id)

    def validate(self, tenant_id: str, config: TenantConfig) -> None:
        """Refuse unknown tools and keys owned by another tenant (ConfigError)."""
        parse_tenants({tenant_id: config.model_dump()}, self.known_tools)
        self.registry.check_keys(tenant_id, config)

    async def put(self, tenant_id: str, config: TenantConfig) -> bool:
        """Create or replace; True when created."""
        self.validate(tenant_id, config)
        created = self.registry.get(tenant_id) is None
        self.registry.put(tenant_id, config)
        self._changed(tenant_id)
        return created

    async def delete(self, tenant_id: str) -> bool:
        existed = self.registry.remove(tenant_id)
        if existed:
            self._changed(tenant_id)
        return existed

    async def load(self, file_tenants: Mapping[str, TenantConfig]) -> None:
        """The tenants at start: the file's (a Redis-backed store decides otherwise)."""
        self.registry.replace_all(dict(file_tenants))

    async def start(self) -> None:
        """Begin following changes made elsewhere (nothing to follow in-process)."""

    async def stop(self) -> None:
        """Stop following changes."""


class RedisTenantStore(TenantStore):
    description = "Redis (shared by every worker and replica)"

    def __init__(self, registry: TenantRegistry, known_tools: Iterable[str], client: RedisClient,
                 sync_interval_s: float) -> None:
        super().__init__(registry, known_tools)
        self.client = client
        self.sync_interval_s = sync_interval_s
        self.cluster = isinstance(client, RedisCluster)
        keys: tuple[str, str, str] = (CLUSTER_KEYS if self.cluster
                                      else (HASH_KEY, VERSION_KEY, SEEDED_KEY))
        self.hash_key, self.version_key, self.seeded_key = keys
        self._version: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._file_tenants: Mapping[str, TenantConfig] = {}

    def _parse(self, tenant_id: str, raw: bytes | str) -> TenantConfig | None:
        try:
            config = TenantConfig.model_validate_json(raw)
            parse_tenants({tenant_id: config.model_dump()}, self.known_tools)
        except (ValidationError, ConfigError) as exc:
            logger.error("tenant %s in Redis is invalid and is skipped: %s", tenant_id, exc)
            return None
        return config

    async def _seed(self) -> None:
        """Seed Redis from the file if it was never seeded (first start, or Redis wiped)."""
        if await self.client.set(self.seeded_key, "1", nx=True):
            if self._file_tenants:
                await self.client.hset(self.hash_key, mapping={
                    tid: config.model_dump_json() for tid, config in self._file_tenants.items()
                })
            await self.client.incr(self.version_key)
            logger.info("seeded %d tenants from the tenants file into Redis",
                        len(self._file_tenants))

    async def load(self, file_tenants: Mapping[str, TenantConfig]) -> None:
        """Seed Redis from the file on the very first start, then load what Redis holds."""
        self._file_tenants = file_tenants
        try:
            await self._seed()
            await self._reload()
        except (RedisError, OSError) as exc:
            # Serve the file's tenants meanwhile; the version poll loads (and if need be
            # seeds) what Redis holds once it answers.
            logger.warning("tenants: Redis unreachable at start (%r); serving the %d tenants "
                           "of the file until it is back", exc, len(file_tenants))
            self.registry.replace_all(dict(file_tenants))
            for tenant_id in file_tenants:
                self._changed(tenant_id)
            return
        stale = [tid for tid, cfg in file_tenants.items() if self.registry.get(tid) != cfg]
        if stale:
            logger.warning("tenants file differs from Redis for %s; Redis wins (use the admin "
                           "API to change tenants)", stale[:10])

    async def _reload(self) -> None:
        version = int(await self.client.get(self.version_key) or 0)
        raw = await self.client.hgetall(self.hash_key)
        loaded: dict[str, TenantConfig] = {}
        for key, value in raw.items():
            tenant_id = key.decode() if isinstance(key, bytes) else key
            config = self._parse(tenant_id, value)
            if config is not None:
                loaded[tenant_id] = config
        before = dict(self.registry.items())
        self.registry.replace_all(loaded)
        self._version = version
        for tenant_id in set(before) | set(loaded):
            if before.get(tenant_id) != loaded.get(tenant_id):
                self._changed(tenant_id)

    def _advance(self, version: int) -> None:
        """Note a version we have applied; a gap means a missed change, left to the poll."""
        if self._version is not None and version == self._version + 1:
            self._version = version

    async def _publish(self, tenant_id: str) -> None:
        if self.cluster:  # a cluster transaction cannot hold a PUBLISH
            version = await self.client.incr(self.version_key)
            await self.client.publish(CHANNEL, tenant_id)
        else:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(self.version_key)
                pipe.publish(CHANNEL, tenant_id)
                version, _ = await pipe.execute()
        self._advance(int(version))

    async def put(self, tenant_id: str, config: TenantConfig) -> bool:
        self.validate(tenant_id, config)
        created = bool(await self.client.hset(self.hash_key, tenant_id, config.model_dump_json()))
        await self._publish(tenant_id)
        self.registry.put(tenant_id, config)
        self._changed(tenant_id)
        return created

    async def delete(self, tenant_id: str) -> bool:
        existed = bool(await self.client.hdel(self.hash_key, tenant_id))
        if existed:
            await self._publish(tenant_id)
        if self.registry.remove(tenant_id) or existed:
            self._changed(tenant_id)
        return existed

    async def _apply(self, tenant_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(self.hash_key, tenant_id)
            pipe.get(self.version_key)
            raw, version = await pipe.execute()
        config = self._parse(tenant_id, raw) if raw is not None else None
        current = self.registry.get(tenant_id)
        self._advance(int(version or 0))
        if config == current:
            return
        if config is None:
            self.registry.remove(tenant_id)
        else:
            try:
                self.registry.put(tenant_id, config)
            except ConfigError as exc:  # keys moved between tenants: reload everything
                logger.info("tenant %s: %s; reloading all tenants", tenant_id, exc)
                await self._reload()
                return
        logger.info("tenant %s changed elsewhere; applied", tenant_id)
        self._changed(tenant_id)

    async def _listen(self) -> None:
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        await self._apply(data.decode() if isinstance(data, bytes) else data)
            except (RedisError, OSError) as exc:
                logger.warning("tenant change feed lost (%r); retrying", exc)
                await asyncio.sleep(self.sync_interval_s)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                version = int(await self.client.get(self.version_key) or 0)
                if version != self._version:
                    await self._seed()
                    await self._reload()
            except (RedisError, OSError) as exc:
                logger.warning("tenant version check failed: %r", exc)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(), name="tenant-feed"),
                       loop.create_task(self._poll(), name="tenant-poll")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
