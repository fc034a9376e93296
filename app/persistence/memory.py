"""In-memory persistence: ``BoundedMemorySaver``, the embedded checkpointer bounded in threads,
bytes and age, and ``MemoryBackend``, the backend around it.

Unlike LangGraph's ``InMemorySaver`` it keeps only each thread's latest checkpoint (the
service never reads older ones), evicts the least recently used threads past ``max_threads``
or past ``max_bytes`` held, and forgets a thread ``ttl_s`` after its last use. Checkpoints
are held serialized (zstd-compressed when ``compress``), so the byte count it reports is
what it really holds; the count is kept as writes happen, never recomputed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import zstandard
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
from app.persistence.base import Backend, thread_key

Typed = tuple[str, bytes]
# Blobs shorter than this are stored as they are: zstd's frame costs more than it saves.
COMPRESS_MIN_BYTES = 256
ZSTD_SUFFIX = "+zstd"
ZSTD_LEVEL = 1
# What a thread costs beyond its blobs (its _Thread, dicts, _Saved, id strings, the LRU
# slot), measured with tracemalloc (bench/store_compression.py): counted with the blobs,
# so the byte budget is memory really held, not only payload.
THREAD_OVERHEAD_BYTES = 1000
# (task_id, channel, value, task_path) keyed by (task_id, write index)
Writes = dict[tuple[str, int], tuple[str, str, Typed, str]]


@dataclass(slots=True)
class _Saved:
    checkpoint_id: str
    checkpoint: Typed
    metadata: Typed
    parent_id: str | None

    def size(self) -> int:
        return len(self.checkpoint[1]) + len(self.metadata[1])


def _writes_size(writes: Writes) -> int:
    return sum(len(w[2][1]) for w in writes.values())


@dataclass(slots=True)
class _Thread:
    expires_at: float
    latest: dict[str, _Saved] = field(default_factory=dict)  # by checkpoint namespace
    writes: dict[tuple[str, str], Writes] = field(default_factory=dict)  # (ns, checkpoint id)
    bytes: int = THREAD_OVERHEAD_BYTES  # what it holds, kept current by the saver

    def size(self) -> int:
        """Recomputed from scratch (tests check the running count against it)."""
        return (THREAD_OVERHEAD_BYTES + sum(s.size() for s in self.latest.values())
                + sum(_writes_size(w) for w in self.writes.values()))


class BoundedMemorySaver(BaseCheckpointSaver[int]):
    def __init__(
        self,
        *,
        max_threads: int,
        ttl_s: float,
        max_bytes: int | None = None,
        compress: bool = False,
        refresh_on_read: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if max_threads < 1 or ttl_s <= 0 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("max_threads and max_bytes must be >= 1 and ttl_s > 0")
        self.max_threads = max_threads
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.compress = compress
        self.refresh_on_read = refresh_on_read
        self._clock = clock
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._bytes = 0
        self._zstd_in = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._zstd_out = zstandard.ZstdDecompressor()
        self.evicted_lru = 0
        self.evicted_bytes = 0
        self.expired = 0
        self.squeezed = False  # memory pressure: work to half the byte budget

    # --- bookkeeping ---

    def thread_ids(self) -> list[str]:
        return list(self._threads)

    # Not __len__: an empty saver would be falsy, and LangGraph would run without it.
    @property
    def thread_count(self) -> int:
        return len(self._threads)

    def bytes_held(self) -> int:
        return self._bytes

    def _forget(self, thread_id: str) -> None:
        thread = self._threads.pop(thread_id, None)
        if thread is not None:
            self._bytes -= thread.bytes

    def _resize(self, thread: _Thread, delta: int) -> None:
        thread.bytes += delta
        self._bytes += delta

    def sweep(self) -> int:
        """Forget expired threads. The LRU head is always the next to expire."""
        now = self._clock()
        removed = 0
        while self._threads:
            thread_id, thread = next(iter(self._threads.items()))
            if thread.expires_at > now:
                break
            self._forget(thread_id)
            removed += 1
        self.expired += removed
        return removed

    def shrink_to(self, max_bytes: int) -> int:
        """Evict least recently used threads until at most ``max_bytes`` are held (memory
        pressure asks for this); the most recent thread stays. Returns threads evicted."""
        evicted = 0
        while self._bytes > max_bytes and len(self._threads) > 1:
            self._forget(next(iter(self._threads)))
            evicted += 1
        self.evicted_bytes += evicted
        return evicted

    @property
    def byte_limit(self) -> int | None:
        """The bytes it works to now: half of ``max_bytes`` under memory pressure."""
        if self.max_bytes is None:
            return None
        return self.max_bytes // 2 if self.squeezed else self.max_bytes

    def enforce_budget(self) -> None:
        limit = self.byte_limit
        if limit is not None and self._bytes > limit:
            self.shrink_to(limit)

    def _touch(self, thread_id: str, *, create: bool, refresh: bool) -> _Thread | None:
        now = self._clock()
        thread = self._threads.get(thread_id)
        if thread is not None and thread.expires_at <= now:
            self._forget(thread_id)
            self.expired += 1
            thread = None
        if thread is None:
            if not create:
                return None
            thread = _Thread(expires_at=now + self.ttl_s)
            self._threads[thread_id] = thread
            self._bytes += thread.bytes
            while len(self._threads) > self.max_threads:
                self._forget(next(iter(self._threads)))
                self.evicted_lru += 1
        elif refresh:
            thread.expires_at = now + self.ttl_s
            self._threads.move_to_end(thread_id)
        return thread

    def _dump(self, value: Any) -> Typed:
        kind, data = self.serde.dumps_typed(value)
        if self.compress and len(data) >= COMPRESS_MIN_BYTES:
            # python-zstandard returns bytes whose allocation is the compression bound (the
            # input's size and more), not their length: held as is, a compressed checkpoint
            # would take more memory than the plain one. The copy is exact-size.
            return kind + ZSTD_SUFFIX, bytes(memoryview(self._zstd_in.compress(data)))
        return kind, data

    def _load(self, typed: Typed) -> Any:
        kind, data = typed
        if kind.endswith(ZSTD_SUFFIX):
            kind, data = kind[: -len(ZSTD_SUFFIX)], self._zstd_out.decompress(data)
        return self.serde.loads_typed((kind, data))

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
            checkpoint=self._load(saved.checkpoint),
            metadata=self._load(saved.metadata),
            parent_config=parent,  # type: ignore[arg-type]
            pending_writes=[(w[0], w[1], self._load(w[2])) for _, w in ordered],
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
        saved = _Saved(
            checkpoint_id=checkpoint["id"],
            checkpoint=self._dump(checkpoint),
            metadata=self._dump(get_checkpoint_metadata(config, metadata)),
            parent_id=config["configurable"].get("checkpoint_id"),
        )
        previous = thread.latest.get(ns)
        thread.latest[ns] = saved
        delta = saved.size() - (previous.size() if previous is not None else 0)
        for key in [k for k in thread.writes if k[0] == ns and k[1] != checkpoint["id"]]:
            delta -= _writes_size(thread.writes.pop(key))
        self._resize(thread, delta)
        self.enforce_budget()
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
        delta = 0
        for idx, (channel, value) in enumerate(writes):
            key = (task_id, WRITES_IDX_MAP.get(channel, idx))
            if key[1] >= 0 and key in saved:
                continue
            if (old := saved.get(key)) is not None:
                delta -= len(old[2][1])
            saved[key] = (task_id, channel, self._dump(value), task_path)
            delta += len(saved[key][2][1])
        self._resize(thread, delta)
        self.enforce_budget()

    def delete_thread(self, thread_id: str) -> None:
        self._forget(thread_id)

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
            f"bounded in-memory (max {saver.max_threads} threads"
            + (f", {saver.max_bytes / 2**20:.0f} MiB" if saver.max_bytes else "")
            + f", TTL {saver.ttl_s:g}s; REDIS_URL not set)",
            metrics,
        )
        self.checkpointer: BoundedMemorySaver = saver

    def sweeps(self) -> list[SweepSpec]:
        return [("memory_threads", self.checkpointer.sweep, None)]

    async def purge_tenant(self, tenant_id: str) -> int:
        prefix = thread_key(tenant_id, "")
        doomed = [key for key in self.checkpointer.thread_ids() if key.startswith(prefix)]
        for key in doomed:
            self.checkpointer.delete_thread(key)
        return len(doomed)

    def relieve(self, level: int) -> None:
        """From high pressure up, hold at most half the byte budget (least recently used
        threads go at once); below it, the whole budget again."""
        self.checkpointer.squeezed = level >= 2
        self.checkpointer.enforce_budget()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "threads": self.checkpointer.thread_count,
            "max_threads": self.checkpointer.max_threads,
            "bytes": self.checkpointer.bytes_held(),
            "max_bytes": self.checkpointer.max_bytes,
            "squeezed": self.checkpointer.squeezed,
            "compressed": self.checkpointer.compress,
            "evicted_lru": self.checkpointer.evicted_lru,
            "evicted_bytes": self.checkpointer.evicted_bytes,
            "expired": self.checkpointer.expired,
        }
