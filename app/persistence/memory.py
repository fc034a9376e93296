"""In-memory persistence: ``BoundedMemorySaver``, the embedded checkpointer bounded in threads,
bytes per thread and age, and ``MemoryBackend``, the backend around it.

Unlike LangGraph's ``InMemorySaver`` it keeps only each thread's latest checkpoint (the
service never reads older ones), evicts the least recently used thread past
``max_threads``, and forgets a thread ``ttl_s`` after its last use. Checkpoints are held
serialized, so the byte count it reports is what it really holds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)

from app.janitor import SweepSpec
from app.observability.metrics import Metrics
from app.persistence.base import Backend

Typed = tuple[str, bytes]
# (task_id, channel, value, task_path) keyed by (task_id, write index)
Writes = dict[tuple[str, int], tuple[str, str, Typed, str]]


@dataclass(slots=True)
class _Saved:
    checkpoint_id: str
    checkpoint: Typed
    metadata: Typed
    parent_id: str | None


@dataclass(slots=True)
class _Thread:
    expires_at: float
    latest: dict[str, _Saved] = field(default_factory=dict)  # by checkpoint namespace
    writes: dict[tuple[str, str], Writes] = field(default_factory=dict)  # (ns, checkpoint id)

    def size(self) -> int:
        total = sum(len(s.checkpoint[1]) + len(s.metadata[1]) for s in self.latest.values())
        for writes in self.writes.values():
            total += sum(len(w[2][1]) for w in writes.values())
        return total


class BoundedMemorySaver(BaseCheckpointSaver[int]):
    def __init__(
        self,
        *,
        max_threads: int,
        ttl_s: float,
        refresh_on_read: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if max_threads < 1 or ttl_s <= 0:
            raise ValueError("max_threads must be >= 1 and ttl_s > 0")
        self.max_threads = max_threads
        self.ttl_s = ttl_s
        self.refresh_on_read = refresh_on_read
        self._clock = clock
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self.evicted_lru = 0
        self.expired = 0

    # --- bookkeeping ---

    # Not __len__: an empty saver would be falsy, and LangGraph would run without it.
    @property
    def thread_count(self) -> int:
        return len(self._threads)

    def bytes_held(self) -> int:
        return sum(thread.size() for thread in self._threads.values())

    def sweep(self) -> int:
        """Forget expired threads. The LRU head is always the next to expire."""
        now = self._clock()
        removed = 0
        while self._threads:
            thread_id, thread = next(iter(self._threads.items()))
            if thread.expires_at > now:
                break
            del self._threads[thread_id]
            removed += 1
        self.expired += removed
        return removed

    def _touch(self, thread_id: str, *, create: bool, refresh: bool) -> _Thread | None:
        now = self._clock()
        thread = self._threads.get(thread_id)
        if thread is not None and thread.expires_at <= now:
            del self._threads[thread_id]
            self.expired += 1
            thread = None
        if thread is None:
            if not create:
                return None
            thread = _Thread(expires_at=now + self.ttl_s)
            self._threads[thread_id] = thread
            while len(self._threads) > self.max_threads:
                self._threads.popitem(last=False)
                self.evicted_lru += 1
        elif refresh:
            thread.expires_at = now + self.ttl_s
            self._threads.move_to_end(thread_id)
        return thread

    # --- BaseCheckpointSaver ---

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id: str = config["configurable"]["thread_id"]
        ns: str = config["configurable"].get("checkpoint_ns", "")
        thread = self._touch(thread_id, create=False, refresh=self.refresh_on_read)
        if thread is None or (saved := thread.latest.get(ns)) is None:
            return None
        wanted = get_checkpoint_id(config)
        if wanted and wanted != saved.checkpoint_id:
            return None
        return self._tuple(thread_id, ns, thread, saved)

    def _tuple(self, thread_id: str, ns: str, thread: _Thread, saved: _Saved) -> CheckpointTuple:
        writes = thread.writes.get((ns, saved.checkpoint_id), {})
        ordered = sorted(writes.items(), key=lambda item: (item[1][3], item[0][0], item[0][1]))
        parent = (
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                              "checkpoint_id": saved.parent_id}}
            if saved.parent_id
            else None
        )
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                     "checkpoint_id": saved.checkpoint_id}},
            checkpoint=self.serde.loads_typed(saved.checkpoint),
            metadata=self.serde.loads_typed(saved.metadata),
            parent_config=parent,  # type: ignore[arg-type]
            pending_writes=[(w[0], w[1], self.serde.loads_typed(w[2])) for _, w in ordered],
        )

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        if config is None:
            thread_ids = list(self._threads)
        else:
            thread_ids = [config["configurable"]["thread_id"]]
        wanted_ns = config["configurable"].get("checkpoint_ns") if config else None
        count = 0
        for thread_id in thread_ids:
            thread = self._touch(thread_id, create=False, refresh=False)
            if thread is None:
                continue
            for ns, saved in thread.latest.items():
                if wanted_ns is not None and ns != wanted_ns:
                    continue
                if before and saved.checkpoint_id >= (get_checkpoint_id(before) or ""):
                    continue
                result = self._tuple(thread_id, ns, thread, saved)
                if filter and any(result.metadata.get(k) != v for k, v in filter.items()):
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                yield result

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id: str = config["configurable"]["thread_id"]
        ns: str = config["configurable"].get("checkpoint_ns", "")
        thread = self._touch(thread_id, create=True, refresh=True)
        assert thread is not None
        thread.latest[ns] = _Saved(
            checkpoint_id=checkpoint["id"],
            checkpoint=self.serde.dumps_typed(checkpoint),
            metadata=self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)),
            parent_id=config["configurable"].get("checkpoint_id"),
        )
        for key in [k for k in thread.writes if k[0] == ns and k[1] != checkpoint["id"]]:
            del thread.writes[key]
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                 "checkpoint_id": checkpoint["id"]}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        thread_id: str = config["configurable"]["thread_id"]
        ns: str = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id: str = config["configurable"]["checkpoint_id"]
        thread = self._touch(thread_id, create=True, refresh=True)
        assert thread is not None
        saved = thread.writes.setdefault((ns, checkpoint_id), {})
        for idx, (channel, value) in enumerate(writes):
            key = (task_id, WRITES_IDX_MAP.get(channel, idx))
            if key[1] >= 0 and key in saved:
                continue
            saved[key] = (task_id, channel, self.serde.dumps_typed(value), task_path)

    def delete_thread(self, thread_id: str) -> None:
        self._threads.pop(thread_id, None)

    # The async API does the same work inline: nothing here blocks.

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)


class MemoryBackend(Backend):
    def __init__(self, saver: BoundedMemorySaver, metrics: Metrics | None = None) -> None:
        super().__init__(
            saver,
            f"bounded in-memory (max {saver.max_threads} threads, TTL {saver.ttl_s:g}s; "
            "REDIS_URL not set)",
            metrics,
        )
        self.checkpointer: BoundedMemorySaver = saver

    def sweeps(self) -> list[SweepSpec]:
        return [("memory_threads", self.checkpointer.sweep, None)]

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "threads": self.checkpointer.thread_count,
            "max_threads": self.checkpointer.max_threads,
            "bytes": self.checkpointer.bytes_held(),
            "evicted_lru": self.checkpointer.evicted_lru,
            "expired": self.checkpointer.expired,
        }
