"""``ConversationStore``: a checkpointer plus what the API needs around it.

The API reads and deletes thread history through it; the turn runner calls ``after_turn``
so a backend can drop superseded checkpoints. Thread keys join tenant and thread with a
character that ids cannot contain, so tenants never share a key; ``:`` (allowed in ids)
is escaped because the Redis saver splits its keys on it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver

from app.errors import StorageUnavailable
from app.persistence.memory import BoundedMemorySaver

logger = logging.getLogger(__name__)

THREAD_KEY_SEPARATOR = "/"


def thread_key(tenant_id: str, thread_id: str) -> str:
    # "%" cannot occur in an id, so the escape is unambiguous.
    key = f"{tenant_id}{THREAD_KEY_SEPARATOR}{thread_id}"
    return key.replace(":", "%3A")


def thread_config(key: str) -> RunnableConfig:
    return {"configurable": {"thread_id": key, "checkpoint_ns": ""}}


class ConversationStore:
    """Base: everything that only needs the checkpointer interface."""

    #: exceptions that mean the backend is unreachable (answered with 503)
    unavailable_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, checkpointer: BaseCheckpointSaver[Any], description: str) -> None:
        self.checkpointer = checkpointer
        self.description = description

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Turn the backend's failures into a 503 for the client, and try to recover."""
        try:
            yield
        except self.unavailable_errors as exc:
            logger.warning("%s failed: %r", self.description, exc)
            await self.recover()
            raise StorageUnavailable("conversation storage is unavailable") from exc

    async def messages(self, key: str) -> list[BaseMessage] | None:
        """A thread's stored messages, oldest first; None when the thread does not exist."""
        async with self.guard():
            saved = await self.checkpointer.aget_tuple(thread_config(key))
        if saved is None:
            return None
        return list(saved.checkpoint["channel_values"].get("messages", []))

    async def delete(self, key: str) -> None:
        async with self.guard():
            await self.checkpointer.adelete_thread(key)

    def thread_lock(self, key: str, hold_s: float) -> AbstractAsyncContextManager[Any]:
        """Held for a whole turn so turns on one thread never interleave.

        In-process storage has one worker; the runner's own lock is enough.
        """
        return nullcontext()

    async def after_turn(self, key: str) -> None:
        """Called once a turn is saved."""

    async def recover(self) -> None:
        """Called after a failure: repair what a backend restart lost. Never raises."""

    async def check(self) -> str | None:
        """None when the backend is usable; otherwise why not."""
        return None

    def stats(self) -> dict[str, Any]:
        return {"backend": self.description}


class MemoryStore(ConversationStore):
    def __init__(self, saver: BoundedMemorySaver) -> None:
        super().__init__(
            saver,
            f"bounded in-memory (max {saver.max_threads} threads, TTL {saver.ttl_s:g}s; "
            "REDIS_URL not set)",
        )
        self.saver = saver

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "threads": self.saver.thread_count,
            "max_threads": self.saver.max_threads,
            "bytes": self.saver.bytes_held(),
            "evicted_lru": self.saver.evicted_lru,
            "expired": self.saver.expired,
        }
