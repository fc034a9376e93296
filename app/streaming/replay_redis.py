"""``RedisReplay``: streamed turns kept in Redis, so a client rejoins on any worker.

Each turn is a Redis Stream, ``agenthost:replay:{<thread>}:<turn>``, and the thread's
latest turn is named by ``agenthost:replay:{<thread>}`` (the braces are a Redis Cluster
hash tag: both keys live on one node). One entry holds the events of one write, fields
``<n>`` → the event's SSE bytes, plus ``end`` on the entry with the final event; its id is
``0-<n of its last event>``, so ``XRANGE`` from ``0-<after + 1>`` starts at the entry
that holds event ``after + 1``, and ``MINID`` trims the stream to the last
``max_events`` events. Keys expire ``replay_s`` after the turn ends (the turn timeout
plus that while it runs).

Writes are off the turn's path: the recorder collects events and one task per turn writes
what has come every ``FLUSH_S`` (one pipelined round trip: XADD and PEXPIREs), so the
cost per token is a list append. A Redis failure there is logged once and ends the
replay of that turn, never the turn. A rejoin reads with ``XRANGE`` then blocks on
``XREAD`` for live events, in steps shorter than the socket timeout; blocking readers
are capped per worker (half the pool) so they never starve the turns of connections.
Core commands only: any Redis 5+ or Valkey serves it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import NothingToRejoin, ReplayGone, TooManyStreams
from app.persistence.base import thread_key
from app.persistence.redis import glob_escape
from app.streaming import events
from app.streaming.replay import LOST, Position, Replay, Replayed, TurnRecorder, next_turn

logger = logging.getLogger(__name__)

REPLAY_PREFIX = "agenthost:replay:"
#: events that come within this long of each other are written together
FLUSH_S = 0.02
#: how often a rejoin looks for a young turn's first write before 404 (1 s)
APPEAR_CHECKS = 50
#: a recorder waits at most this long at the turn's end for its last write
CLOSE_WAIT_S = 2.0
END = b"end"

UNAVAILABLE = events.error("storage_unavailable", "Redis failed while replaying this "
                           "turn; read the reply from the thread's history").encode(None)


def pointer_key(key: str) -> str:
    return f"{REPLAY_PREFIX}{{{key}}}"


def stream_key(key: str, turn: int) -> str:
    return f"{pointer_key(key)}:{turn}"


class _RedisRecorder(TurnRecorder):
    def __init__(self, replay: RedisReplay, key: str, turn: int) -> None:
        super().__init__(turn)
        self._replay = replay
        self._key = key
        self._pending: list[tuple[int, bytes]] = []
        self._final = False
        self._failed = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())
        replay.tasks.add(self._task)
        self._task.add_done_callback(replay.tasks.discard)

    def record(self, n: int, wire: bytes, final: bool) -> None:
        if self._failed or self._final:
            return
        self._pending.append((n, wire))
        if final:
            self._final = True
        self._wake.set()

    async def _flush_loop(self) -> None:
        first = True
        try:
            while True:
                await self._wake.wait()
                if not self._final and not first:  # the first is out at once
                    await asyncio.sleep(FLUSH_S)
                self._wake.clear()
                batch, self._pending = self._pending, []
                final = self._final
                if batch:
                    await self._replay.write(self._key, self.turn, batch, final, first)
                    first = False
                if final:
                    return
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed = True
            self._pending = []
            logger.warning("stream replay of turn %s lost (Redis: %r); the turn goes on",
                           self.turn, exc)


class RedisReplay(Replay):
    enabled = True

    def __init__(self, client: Redis, replay_s: float, max_events: int, live_s: float,
                 block_s: float, max_readers: int) -> None:
        self.client = client
        self.replay_ms = max(1, int(replay_s * 1000))
        self.live_ms = int((live_s + replay_s) * 1000)
        self.max_events = max_events
        self.block_ms = max(1, int(block_s * 1000))
        self.max_readers = max_readers
        self.readers = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def begin(self, key: str) -> TurnRecorder:
        return _RedisRecorder(self, key, next_turn())

    async def write(self, key: str, turn: int, batch: list[tuple[int, bytes]], final: bool,
                    first: bool) -> None:
        batch = batch[-self.max_events:]  # older ones would be trimmed at once
        fields: dict[Any, Any] = {b"%d" % n: wire for n, wire in batch}
        if final:
            fields[END] = b"1"
        last = batch[-1][0]
        trim = last - self.max_events
        ttl = self.replay_ms if final else self.live_ms
        stream = stream_key(key, turn)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(stream, fields, id=f"0-{last}",
                      minid=f"0-{trim + 1}" if trim > 0 else None, approximate=False)
            pipe.pexpire(stream, ttl)
            if first:
                pipe.set(pointer_key(key), turn, px=ttl)
            else:
                pipe.pexpire(pointer_key(key), ttl)
            await pipe.execute()

    async def open(self, key: str, position: Position) -> Replayed | None:
        turn = position.turn
        if turn is None:
            raw = await self.client.get(pointer_key(key))
            if raw is None:
                raise NothingToRejoin("no streamed turn of this thread to rejoin")
            turn = int(raw)
        stream = stream_key(key, turn)
        after = position.after
        # A client that saw an event may ask before its first write is out (it is
        # off the turn's path): a young turn is given a moment to appear.
        young = position.turn is not None and next_turn() - turn < self.live_ms
        for _ in range(APPEAR_CHECKS if young else 1):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xrange(stream, min=f"0-{after + 1}", max="+")
                pipe.xrevrange(stream, max="+", min="-", count=1)
                entries, newest = await pipe.execute()
            if newest:
                break
            if young:
                await asyncio.sleep(FLUSH_S)
        if not newest:
            raise NothingToRejoin("no streamed turn of this thread to rejoin")
        if not entries:
            if END in newest[0][1]:
                return None  # ended, and the client has it all
            last_id = newest[0][0]
        else:
            first_n = min(int(k) for k in entries[0][1] if k != END)
            if first_n > after + 1:
                raise ReplayGone(f"events after {after} are no longer kept; read the reply "
                                 "from the thread's history")
            last_id = entries[-1][0]
        if self.readers >= self.max_readers:
            raise TooManyStreams("this worker has too many rejoining streams; retry shortly",
                                 headers={"Retry-After": "2"})
        return self._read(stream, entries, after, last_id)

    async def _read(self, stream: str, entries: list[Any], after: int,
                    last_id: bytes) -> Replayed:
        self.readers += 1
        n = after
        try:
            while True:
                for _, fields in entries:
                    chunk = [wire for field, wire in fields.items()
                             if field != END and int(field) > n]
                    if chunk:
                        n = max(int(field) for field in fields if field != END)
                        yield b"".join(chunk)
                    if END in fields:
                        return
                if entries:
                    last_id = entries[-1][0]
                reply: Any = await self.client.xread({stream: last_id}, count=64,
                                                     block=self.block_ms)
                if reply:
                    entries = reply[0][1]
                    if min(int(k) for k in entries[0][1] if k != END) > n + 1:
                        yield LOST  # trimmed while this client read slowly
                        return
                    continue
                entries = []
                if not await self.client.exists(stream):
                    yield LOST  # expired: the producing worker is gone
                    return
        except (RedisError, OSError) as exc:
            logger.warning("rejoin of %s failed: %r", stream, exc)
            yield UNAVAILABLE
        finally:
            self.readers -= 1

    async def forget(self, key: str) -> None:
        """Every kept turn of the thread."""
        await self._unlink_matching(f"{glob_escape(pointer_key(key))}*")

    async def forget_tenant(self, tenant_id: str) -> None:
        await self._unlink_matching(
            f"{REPLAY_PREFIX}{{{glob_escape(thread_key(tenant_id, ''))}*")

    async def _unlink_matching(self, pattern: str) -> None:
        """SCAN (never KEYS), then UNLINK in batches."""
        batch: list[bytes] = []
        async for found in self.client.scan_iter(match=pattern, count=500):
            batch.append(found)
            if len(batch) >= 500:
                await self.client.unlink(*batch)
                batch = []
        if batch:
            await self.client.unlink(*batch)

    async def aclose(self) -> None:
        tasks = list(self.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)

    def stats(self) -> dict[str, Any]:
        return {"store": "redis", "readers": self.readers, "max_readers": self.max_readers,
                "writing": len(self.tasks), "replay_s": self.replay_ms / 1000}
