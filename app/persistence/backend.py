"""``open_backend``: the persistence backend the settings call for, open for the app's life.

Like langgraph's ``from_conn_string``: an async context manager that owns the backend's
connections and closes them on exit. No ``REDIS_URL``: bounded in-memory persistence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.observability.metrics import Metrics
from app.persistence.base import Backend
from app.persistence.memory import BoundedMemorySaver, MemoryBackend
from app.persistence.redis import RedisBackend
from config.settings import Settings

# The in-memory store's share of the memory limit when no byte budget is set. Idle, the
# service is ~140 MiB (imports); a quarter of a 512 MiB container leaves room for that, for
# turns and streams in flight, and for the allocator's slack, below the moderate threshold
# (70 %); high pressure halves it.
STORE_SHARE_OF_LIMIT = 0.25


def store_budget(settings: Settings, memory_limit_bytes: int | None) -> int | None:
    if settings.memory_store_max_bytes is not None:
        return settings.memory_store_max_bytes
    if memory_limit_bytes is None:
        return None
    return int(memory_limit_bytes * STORE_SHARE_OF_LIMIT)


@asynccontextmanager
async def open_backend(settings: Settings, metrics: Metrics | None = None, *,
                       memory_limit_bytes: int | None = None) -> AsyncIterator[Backend]:
    if settings.redis_configured:
        async with RedisBackend.open(settings, metrics) as backend:
            yield backend
        return
    yield MemoryBackend(BoundedMemorySaver(
        max_threads=settings.memory_max_threads,
        max_bytes=store_budget(settings, memory_limit_bytes),
        compress=settings.memory_store_compress,
        ttl_s=settings.history_ttl_s,
        refresh_on_read=settings.history_refresh_on_read,
    ), metrics)
