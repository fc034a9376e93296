"""``Backend``: what every persistence backend offers, and the keys threads are stored under.

Implementations: ``MemoryBackend`` (memory.py) and ``RedisBackend`` (redis.py);
``open_backend`` (backend.py) opens the one the settings call for. Thread keys join
tenant and thread with a character that ids cannot contain, so tenants never share a
key; ``:`` (allowed in ids) is escaped because the Redis saver splits its keys on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

from langchain_core.messages import BaseMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver

from app.errors import StorageUnavailable
from app.janitor import SweepSpec
from app.observability.metrics import Metrics
from app.tenants.registry import TenantRegistry
from app.tenants.store import TenantStore
from config.settings import Settings

logger = logging.getLogger(__name__)

THREAD_KEY_SEPARATOR = "/"
UNDO_TIMEOUT_S = 5.0
UNDO_ATTEMPTS = 2
UNDO_RETRY_S = 0.2
#: noted on a failed turn's exception when undoing it failed too
NOT_UNDONE = "agenthost: the failed turn could not be undone"


class TurnGraph(Protocol):
    """What undoing a turn needs of the agent graph: its state, read and updated."""

    async def aget_state(self, config: RunnableConfig) -> Any: ...

    async def aupdate_state(self, config: RunnableConfig, values: Any,
                            as_node: str | None = None) -> Any: ...


def thread_key(tenant_id: str, thread_id: str) -> str:
    # "%" cannot occur in an id, so the escape is unambiguous.
    key = f"{tenant_id}{THREAD_KEY_SEPARATOR}{thread_id}"
    return key.replace(":", "%3A")


def thread_config(key: str) -> RunnableConfig:
    return {"configurable": {"thread_id": key, "checkpoint_ns": ""}}


class Backend:
    """A persistence backend: the checkpointer plus everything around it.

    The API reads and deletes thread history through it; a turn runs inside its thread
    lock and its unit of work (commit: prune; failure: undo); the app gets its tenant
    store, janitor sweeps and health probe here. ``open_backend`` picks one.
    """

    #: exceptions that mean the backend is unreachable (answered with 503)
    unavailable_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, checkpointer: BaseCheckpointSaver[Any], description: str,
                 metrics: Metrics | None = None) -> None:
        self.checkpointer = checkpointer
        self.description = description
        self.metrics = metrics or Metrics()

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Turn the backend's failures into a 503 for the client, and try to recover."""
        try:
            yield
        except self.unavailable_errors as exc:
            raise await self.unavailable(exc, "reading or deleting a thread") from exc

    async def unavailable(self, exc: BaseException, during: str) -> StorageUnavailable:
        """The client's error for a failure of this backend: logged once, recovery tried."""
        logger.warning("%s failed during %s: %r", self.description, during, exc)
        self.metrics.storage_errors.inc()
        await self.recover()
        return StorageUnavailable("conversation storage is unavailable")

    async def messages(self, key: str) -> list[BaseMessage] | None:
        """A thread's stored messages, oldest first; None when the thread does not exist."""
        async with self.guard():
            saved = await self.checkpointer.aget_tuple(thread_config(key))
        if saved is None:
            return None
        return list(saved.checkpoint["channel_values"].get("messages", []))

    async def purge_tenant(self, tenant_id: str) -> int:
        """Delete every thread of a tenant; the number deleted."""
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        async with self.guard():
            await self.checkpointer.adelete_thread(key)

    def thread_lock(self, key: str, wait_s: float) -> AbstractAsyncContextManager[Any]:
        """Held for a whole turn so turns on one thread never interleave across workers;
        ``ThreadBusy`` when another holder keeps it past ``wait_s`` (0: do not wait).

        In-process storage has one worker; the runner's own lock is enough.
        """
        return nullcontext()

    async def after_turn(self, key: str) -> None:
        """Called once a turn is saved: drop what it superseded."""

    @asynccontextmanager
    async def unit_of_work(self, graph: TurnGraph, key: str,
                           human_id: str) -> AsyncIterator[None]:
        """One turn's storage: on success drop what it superseded, on failure undo it.

        ``human_id`` is the id of the turn's user message: undoing removes it and all that
        followed, so the thread is as it was and the client can simply retry.
        """
        try:
            yield
        except BaseException as exc:
            if not await self._undo(graph, key, human_id):
                # the error the client gets says so (runner.py): it may hold the message
                exc.add_note(NOT_UNDONE)
            raise
        await self._commit(key)

    async def _commit(self, key: str) -> None:
        # The turn is saved; failing to drop the superseded checkpoint costs only space
        # (its TTL still removes it), so it is logged, not raised.
        started = time.perf_counter()
        try:
            await self.after_turn(key)
        except self.unavailable_errors as exc:
            logger.warning("dropping old checkpoints of %s failed: %r", key, exc)
            await self.recover()
        self.metrics.persist_seconds.observe(time.perf_counter() - started)

    async def _undo(self, graph: TurnGraph, key: str, human_id: str) -> bool:
        """Undo a failed turn: LangGraph saves what it had on exit, even on error. True
        when the thread is as it was before the turn.

        Bounded; tried twice (a storage hiccup right after a Redis restart is often gone
        a moment later). False when it could not be done: the caller says so.
        """
        for attempt in range(UNDO_ATTEMPTS):
            try:
                async with asyncio.timeout(UNDO_TIMEOUT_S):
                    await self._undo_once(graph, key, human_id)
                return True
            except Exception as exc:  # the turn's own error is what the client must see
                logger.warning("could not undo the failed turn on %s (attempt %d): %r",
                               key, attempt + 1, exc)
                await asyncio.sleep(UNDO_RETRY_S)
        return False

    async def _undo_once(self, graph: TurnGraph, key: str, human_id: str) -> None:
        config = thread_config(key)
        snapshot = await graph.aget_state(config)
        messages = snapshot.values.get("messages", [])
        start = next((i for i, m in enumerate(messages) if m.id == human_id), None)
        if start is None:
            return
        if start == 0:
            await self.checkpointer.adelete_thread(key)
            return
        removals = [RemoveMessage(id=m.id) for m in messages[start:] if m.id]
        await graph.aupdate_state(config, {"messages": removals}, as_node="agent")
        await self.after_turn(key)

    def tenant_store(self, registry: TenantRegistry, known_tools: Iterable[str],
                     settings: Settings) -> TenantStore:
        """Where admin changes to tenants live: in this process, unless shared storage."""
        return TenantStore(registry, known_tools)

    def sweeps(self) -> list[SweepSpec]:
        """Periodic cleanups this backend needs from the janitor."""
        return []

    def relieve(self, level: int) -> None:
        """Memory pressure (the governor calls this after every sample). Storage held
        outside this process (Redis) has nothing to give back."""

    async def recover(self) -> None:
        """Called after a failure: repair what a backend restart lost. Never raises."""

    async def check(self) -> str | None:
        """None when the backend is usable; otherwise why not."""
        return None

    def stats(self) -> dict[str, Any]:
        return {"backend": self.description}
