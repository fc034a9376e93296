"""``PlainRedisSaver``: LangGraph checkpoints on any Redis, core commands only.

The service keeps only each thread's latest checkpoint, so a thread is one hash,
``agenthost:thread:{<thread_id>}`` (the braces are a Redis Cluster hash tag), with
``ckpt:<ns>`` (the checkpoint, its metadata, its id and its parent's, packed) and
``writes:<ns>`` (the pending writes of that checkpoint, packed). Reading a thread is one
round trip (HMGET, and PEXPIRE when reads refresh the TTL, pipelined); saving one is one
(HSET, HDEL of the superseded writes, PEXPIRE). A turn holding the thread's lease does
both in the lease's own round trips, one Lua script each (``TAKE_AND_READ``,
``SAVE_AND_RELEASE``). Values are serialized with LangGraph's own
serde. No RedisJSON, no RediSearch, no MODULE LIST: plain Redis, Valkey and managed
Redis services serve it. A thread written by this saver is not read by
langgraph-checkpoint-redis, nor the other way round.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import ormsgpack
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
from redis.asyncio import Redis, RedisCluster
from redis.typing import KeyT

THREAD_PREFIX = "agenthost:thread:"

#: a single server's client or the cluster client: the service uses what both offer
RedisClient = Redis | RedisCluster

# A turn's two round trips with its thread's lease (locks.py), each one script, so one
# command and one reply (a pipeline of the same commands cost ~0.3 ms more a turn in
# redis-py: packing and parsing each reply). The lease and the thread share a hash tag:
# one slot on a cluster. Core commands only; Lua runs on Redis, Valkey and managed Redis.
# KEYS: lease, thread. ARGV: token, lease ms, checkpoint field, writes field, TTL ms
# (0: reads do not refresh it). Nil when the lease is another's; else the HMGET reply.
TAKE_AND_READ = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local read = redis.call('HMGET', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
return read
"""
# KEYS: thread, lease. ARGV: checkpoint field, checkpoint, writes field, TTL ms, token.
# The save first: a Redis out of memory refuses it and nothing runs (nor the release: the
# lease lapses). The lease is deleted only while it is still this turn's token.
SAVE_AND_RELEASE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
return 1
"""


class LeaseHeld:
    """What the thread's lease (locks.py) does for the turn that holds it: the checkpoint
    read in the round trip that took it, for the turn's first read only (taken once, from
    whichever task the graph reads in), and the turn's save, held until the lease is
    released so that both go in one round trip. Reads see the held save."""

    __slots__ = ("read", "save", "thread_id")

    def __init__(self, thread_id: str, read: list[Any]) -> None:
        self.thread_id = thread_id
        self.read: list[Any] | None = read
        self.save: bytes | None = None

    def take_read(self) -> list[Any] | None:
        read, self.read = self.read, None
        return read


#: set by the lease when it is taken, cleared when it is released
HELD: ContextVar[LeaseHeld | None] = ContextVar("agenthost_lease_held", default=None)


def held_for(thread_id: str, ns: str) -> LeaseHeld | None:
    """The lease's view of this thread, when this task holds it (the default namespace
    only: the service's graphs have no subgraphs)."""
    held = HELD.get()
    return held if held is not None and held.thread_id == thread_id and ns == "" else None


def thread_hash(thread_id: str) -> str:
    return f"{THREAD_PREFIX}{{{thread_id}}}"


class PlainRedisSaver(BaseCheckpointSaver[str]):
    def __init__(self, client: RedisClient, *, ttl_s: int, refresh_on_read: bool = True) -> None:
        super().__init__()
        self.client = client
        self.ttl_ms = ttl_s * 1000
        self.refresh_on_read = refresh_on_read
        self._take_and_read = client.register_script(TAKE_AND_READ)
        self._save_and_release = client.register_script(SAVE_AND_RELEASE)

    def _pack(self, value: Any) -> list[Any]:
        kind, data = self.serde.dumps_typed(value)
        return [kind, data]

    def _unpack(self, packed: list[Any]) -> Any:
        return self.serde.loads_typed((packed[0], packed[1]))

    # --- the async API the service uses ---

    def queue_read(self, pipe: Any, thread_id: str, ns: str = "") -> None:
        """Queue the read of a thread's latest checkpoint on ``pipe`` (one reply: its
        HMGET; the PEXPIRE's reply comes after it)."""
        key = thread_hash(thread_id)
        pipe.hmget(key, [f"ckpt:{ns}", f"writes:{ns}"])
        if self.refresh_on_read:
            pipe.pexpire(key, self.ttl_ms)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id: str = config["configurable"]["thread_id"]
        ns: str = config["configurable"].get("checkpoint_ns", "")
        held = held_for(thread_id, ns)
        read = held.take_read() if held is not None else None
        if held is not None and held.save is not None:
            saved, writes = held.save, None  # this turn's save, not sent yet
        elif read is not None:
            # read with the thread's lease, in the same round trip (locks.py); the lease
            # holder is the only writer, so it is still the latest
            saved, writes = read
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                self.queue_read(pipe, thread_id, ns)
                replies = await pipe.execute()
            saved, writes = replies[0]
        if saved is None:
            return None
        checkpoint_id, parent_id, checkpoint, metadata = ormsgpack.unpackb(saved)
        wanted = get_checkpoint_id(config)
        if wanted and wanted != checkpoint_id:
            return None
        pending: list[tuple[str, str, Any]] = []
        if writes is not None:
            stored = ormsgpack.unpackb(writes)
            if stored[0] == checkpoint_id:
                ordered = sorted(stored[1], key=lambda w: (w[4], w[0], w[5]))
                pending = [(w[0], w[1], self._unpack(w[2:4])) for w in ordered]
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                     "checkpoint_id": checkpoint_id}},
            checkpoint=self._unpack(checkpoint),
            metadata=self._unpack(metadata),
            parent_config=({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                             "checkpoint_id": parent_id}}
                           if parent_id else None),
            pending_writes=pending,
        )

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """The latest checkpoint of the thread (or of every thread, found by SCAN)."""
        if config is not None:
            thread_ids = [config["configurable"]["thread_id"]]
        else:
            thread_ids = []
            async for key in self.client.scan_iter(match=f"{THREAD_PREFIX}*", count=500):
                name = key.decode() if isinstance(key, bytes) else str(key)
                thread_ids.append(name[len(THREAD_PREFIX) + 1:-1])
        ns = config["configurable"].get("checkpoint_ns", "") if config else ""
        count = 0
        for thread_id in thread_ids:
            found = await self.aget_tuple({"configurable": {"thread_id": thread_id,
                                                            "checkpoint_ns": ns}})
            if found is None:
                continue
            if before and found.checkpoint["id"] >= (get_checkpoint_id(before) or ""):
                continue
            if filter and any(found.metadata.get(k) != v for k, v in filter.items()):
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id: str = config["configurable"]["thread_id"]
        ns: str = config["configurable"].get("checkpoint_ns", "")
        packed = ormsgpack.packb([
            checkpoint["id"], config["configurable"].get("checkpoint_id"),
            self._pack(checkpoint), self._pack(get_checkpoint_metadata(config, metadata)),
        ])
        held = held_for(thread_id, ns)
        if held is not None:
            held.save = packed  # sent with the lease's release
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                self.queue_save(pipe, thread_id, packed, ns)
                await pipe.execute()
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                 "checkpoint_id": checkpoint["id"]}}

    async def take_and_read(self, lease: KeyT, token: bytes, lease_ms: int,
                            thread_id: str) -> list[Any] | None:
        """Take the thread's lease and read its checkpoint, in one round trip: None when
        the lease is another's, else the read (as ``queue_read``'s first reply)."""
        read: list[Any] | None = await self._take_and_read(
            keys=[lease, thread_hash(thread_id)],
            args=[token, lease_ms, "ckpt:", "writes:",
                  self.ttl_ms if self.refresh_on_read else 0])
        return read

    async def save_and_release(self, thread_id: str, packed: bytes, lease: KeyT,
                               token: bytes) -> None:
        """Save the thread's checkpoint and release its lease, in one round trip."""
        await self._save_and_release(keys=[thread_hash(thread_id), lease],
                                     args=["ckpt:", packed, "writes:", self.ttl_ms, token])

    def queue_save(self, pipe: Any, thread_id: str, packed: bytes, ns: str = "") -> None:
        """Queue the save of a thread's checkpoint on ``pipe`` (three replies)."""
        key = thread_hash(thread_id)
        pipe.hset(key, f"ckpt:{ns}", packed)
        pipe.hdel(key, f"writes:{ns}")  # they belonged to the checkpoint it replaces
        pipe.pexpire(key, self.ttl_ms)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Pending writes of the thread's checkpoint (a read and a write: a thread's turns
        are serialized by its lock, so nothing else writes it meanwhile)."""
        thread_id: str = config["configurable"]["thread_id"]
        ns: str = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id: str = config["configurable"]["checkpoint_id"]
        key = thread_hash(thread_id)
        held = held_for(thread_id, ns)
        if held is not None and held.save is not None:  # the writes' checkpoint goes first
            save, held.save = held.save, None
            async with self.client.pipeline(transaction=False) as pipe:
                self.queue_save(pipe, thread_id, save, ns)
                await pipe.execute()
        current = await self.client.hget(key, f"writes:{ns}")
        stored: list[Any] = [checkpoint_id, []]
        if isinstance(current, bytes):
            previous = ormsgpack.unpackb(current)
            if previous[0] == checkpoint_id:
                stored = previous
        by_key = {(w[0], w[5]): w for w in stored[1]}
        for idx, (channel, value) in enumerate(writes):
            slot = WRITES_IDX_MAP.get(channel, idx)
            if slot >= 0 and (task_id, slot) in by_key:
                continue
            by_key[(task_id, slot)] = [task_id, channel, *self._pack(value), task_path, slot]
        stored[1] = list(by_key.values())
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, f"writes:{ns}", ormsgpack.packb(stored))
            pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()

    async def adelete_thread(self, thread_id: str) -> None:
        held = held_for(thread_id, "")
        if held is not None:
            held.save = None
        await self.client.delete(thread_hash(thread_id))

    # --- the sync API: the service runs graphs asynchronously only ---

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        raise NotImplementedError("PlainRedisSaver is async only")

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        raise NotImplementedError("PlainRedisSaver is async only")

    def put(self, config: RunnableConfig, checkpoint: Checkpoint,
            metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        raise NotImplementedError("PlainRedisSaver is async only")

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        raise NotImplementedError("PlainRedisSaver is async only")

    def delete_thread(self, thread_id: str) -> None:
        raise NotImplementedError("PlainRedisSaver is async only")
