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


@asynccontextmanager
async def open_backend(settings: Settings,
                       metrics: Metrics | None = None) -> AsyncIterator[Backend]:
    if settings.redis_configured:
        async with RedisBackend.open(settings, metrics) as backend:
            yield backend
        return
    yield MemoryBackend(BoundedMemorySaver(
        max_threads=settings.memory_max_threads,
        ttl_s=settings.history_ttl_s,
        refresh_on_read=settings.history_refresh_on_read,
    ), metrics)
