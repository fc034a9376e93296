"""``RedisStore``: conversation history in Redis 8 through ``AsyncRedisSaver``, with a TTL.

The saver rewrites a thread's whole state as a new checkpoint document each time it
saves, and keeps every old one. Turns run with ``durability="exit"`` (one checkpoint per
turn) and ``after_turn`` prunes all but the latest, so with the stored-history cap a
thread's Redis footprint and per-turn cost stay flat however long it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from redisvl.exceptions import RedisVLError

from app.errors import ConfigError
from app.persistence.store import ConversationStore
from config.settings import Settings

logger = logging.getLogger(__name__)

REQUIRED_MODULES = {"ReJSON": "RedisJSON", "search": "RediSearch"}
RECOVER_INTERVAL_S = 2.0


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _require_modules(client: Redis, where: str) -> None:
    names = set()
    for module in await client.module_list():
        name = module.get(b"name", module.get("name"))
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    missing = [label for name, label in REQUIRED_MODULES.items() if name not in names]
    if missing:
        raise ConfigError(
            f"Redis at {where} lacks {', '.join(missing)}; use Redis 8 (the redis:8 image) "
            "or a server started with those modules"
        )


class RedisStore(ConversationStore):
    unavailable_errors = (RedisError, RedisVLError, OSError)

    def __init__(self, saver: AsyncRedisSaver, client: Redis, where: str, ttl_s: int,
                 timeout_s: float) -> None:
        super().__init__(saver, f"Redis at {where} (TTL {ttl_s}s)")
        self.saver = saver
        self.client = client
        self._timeout_s = timeout_s
        self._last_repair = -RECOVER_INTERVAL_S

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[RedisStore]:
        assert settings.redis_url is not None
        url = settings.redis_url.get_secret_value()
        where = redact_url(url)
        pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
        )
        client = Redis(connection_pool=pool)
        try:
            try:
                await _require_modules(client, where)
                saver = AsyncRedisSaver(
                    redis_client=client,
                    ttl={
                        "default_ttl": settings.history_ttl_s / 60,
                        "refresh_on_read": settings.history_refresh_on_read,
                    },
                )
                await saver.asetup()
            except (RedisError, OSError) as exc:
                raise ConfigError(f"cannot use Redis at {where}: {exc}") from exc
            yield cls(saver, client, where, settings.history_ttl_s, settings.redis_timeout_s)
        finally:
            await client.aclose()
            await pool.disconnect()

    async def after_turn(self, key: str) -> None:
        await self.saver.aprune([key], keep_last=1)

    async def recover(self) -> None:
        """Recreate the search indexes, which a Redis restarted empty no longer has.

        Runs after a storage failure, at most once per few seconds.
        """
        now = time.monotonic()
        if now - self._last_repair < RECOVER_INTERVAL_S:
            return
        self._last_repair = now
        try:
            async with asyncio.timeout(self._timeout_s):
                indexes = await self.client.execute_command("FT._LIST")
                names = {i.decode() if isinstance(i, bytes) else str(i) for i in indexes}
                if not {"checkpoint", "checkpoint_write"} <= names:
                    await self.saver.asetup()
                    logger.warning("%s had lost its search indexes; recreated them",
                                   self.description)
        except (RedisError, RedisVLError, OSError, TimeoutError) as exc:
            logger.info("%s still unusable: %r", self.description, exc)

    async def check(self) -> str | None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            return f"redis unreachable: {type(exc).__name__}"
        await self.recover()
        return None

    def stats(self) -> dict[str, Any]:
        return {"backend": "redis", "where": self.description}
