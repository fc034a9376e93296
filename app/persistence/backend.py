"""``open_backend``: the persistence backend the settings call for, open for the app's life.

Like langgraph's ``from_conn_string``: an async context manager that owns the backend's
connections and closes them on exit. No ``REDIS_URL``: bounded in-memory persistence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.persistence.memory import BoundedMemorySaver
from app.persistence.redis import RedisStore
from app.persistence.store import ConversationStore, MemoryStore
from config.settings import Settings


@asynccontextmanager
async def open_backend(settings: Settings) -> AsyncIterator[ConversationStore]:
    if settings.redis_configured:
        async with RedisStore.open(settings) as store:
            yield store
        return
    yield MemoryStore(BoundedMemorySaver(
        max_threads=settings.memory_max_threads,
        ttl_s=settings.history_ttl_s,
        refresh_on_read=settings.history_refresh_on_read,
    ))
