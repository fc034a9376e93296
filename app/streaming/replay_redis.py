"""``RedisReplay``: streamed turns kept in Redis, so a client rejoins on any worker.

Each turn is a Redis Stream, ``agenthost:replay:{<thread>}:<turn>``, and the thread's
latest turn is named by ``agenthost:replay:{<thread>}`` (the braces are a Redis Cluster
hash tag: both keys live on one node). One entry holds the events of one write, fields
``<n>`` → the event's SSE bytes, plus ``end`` on the entry with the final event; its id is
``0-<n of its last event>``, so ``XRANGE`` from ``0-<after + 1>`` starts at the entry
that holds event ``after + 1``, and ``MINID`` trims the stream to the last
``max_events`` events. Keys expire ``replay_s`` after the turn ends (the turn timeout
plus that while it runs).

Writes are off the turns' path: a recorder collects its turn's events, and one writer
task per worker writes what every turn has gathered each ``FLUSH_S`` (at once when a turn
has its first events), in one pipelined
round trip (an XADD per turn; a turn's first and last write also set its keys' TTLs), so
the cost per token is a list append. A Redis failure there is logged and ends the replay
of those turns, never the turns. A rejoin reads with ``XRANGE`` then blocks on
``XREAD`` for live events, in steps shorter than the socket timeout; blocking readers
are capped per worker (half the pool) so they never starve the turns of connections.
Core commands only: any Redis 5+ or Valkey serves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from app.errors import NothingToRejoin, ReplayGone, TooManyStreams
from app.persistence.base import thread_key
from app.persistence.plain import RedisClient
from app.persistence.redis import glob_escape
from app.streaming import events
from app.streaming.replay import LOST, Position, Replay, Replayed, TurnRecorder, next_turn

logger = logging.getLogger(__name__)
T = TypeVar("T")

REPLAY_PREFIX = "agenthost:replay:"
#: events that come within this long of each other are written together
FLUSH_S = 0.05
#: how often a rejoin looks for a young turn's first write before 404 (~1 s)
APPEAR_CHECKS = 20
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
    __slots__ = ("_replay", "failed", "final", "key", "pending", "written")

    def __init__(self, replay: RedisReplay, key: str, turn: int) -> None:
        super().__init__(turn)
        self._replay = replay
        self.key = key
        self.pending: list[tuple[int, bytes]] = []
        self.final = False  # its final event is recorded
        self.written = False  # its first write is out (the keys and their TTLs exist)
        self.failed = False

    def record(self, n: int, wire: bytes, final: bool) -> None:
        if self.failed or self.final:
            return
        self.pending.append((n, wire))
        if final:
            self.final = True
        self._replay.dirty(self)


class RedisReplay(Replay):
    enabled = True

    def __init__(self, client: RedisClient, replay_s: float, max_events: int, live_s: float,
                 block_s: float, max_readers: int,
                 lock_key: Callable[[str], str] | None = None) -> None:
        self.client = client
        #: the key of a thread's lease: while it exists a turn runs there
        self.lock_key = lock_key
        self.replay_ms = max(1, int(replay_s * 1000))
        self.live_ms = int((live_s + replay_s) * 1000)
        self.max_events = max_events
        self.block_ms = max(1, int(block_s * 1000))
        self.max_readers = max_readers
        self.readers = 0
        # recorders with events not yet written, in order; one writer task for them all
        self._dirty: dict[_RedisRecorder, None] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._urgent = False
        self.writes = 0

    def begin(self, key: str) -> TurnRecorder:
        return _RedisRecorder(self, key, next_turn())

    def dirty(self, recorder: _RedisRecorder) -> None:
        self._dirty[recorder] = None
        if not recorder.written:
            # a new turn's first events go out at once: until then, a rejoin of the
            # thread cannot find the turn
            self._urgent = True
        self._wake.set()
        if self._writer is None and not self._closing:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            if not (self._closing or self._urgent):
                await asyncio.sleep(FLUSH_S)  # what comes meanwhile goes in the same write
            try:
                await self.flush()
            except Exception:  # never let one bad write stop the replay of every turn
                logger.exception("stream replay: a write failed")

    async def flush(self) -> None:
        """Everything recorded so far, every turn's, in one pipelined round trip."""
        self._wake.clear()
        self._urgent = False
        recorders, self._dirty = list(self._dirty), {}
        if not recorders:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for recorder in recorders:
                batch, recorder.pending = recorder.pending, []
                self._queue_write(pipe, recorder, batch)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError) as exc:
                results = [exc]
        self.writes += 1
        failure = next((r for r in results if isinstance(r, Exception)), None)
        if failure is not None:
            for recorder in recorders:  # which command failed matters little: all lost
                recorder.failed = True
            logger.warning("stream replay of %d turns lost (Redis: %r); the turns go on",
                           len(recorders), failure)

    def _queue_write(self, pipe: Any, recorder: _RedisRecorder,
                     batch: list[tuple[int, bytes]]) -> None:
        batch = batch[-self.max_events:]  # older ones would be trimmed at once
        fields: dict[Any, Any] = {b"%d" % n: wire for n, wire in batch}
        final = recorder.final
        if final:
            fields[END] = b"1"
        last = batch[-1][0]
        trim = last - self.max_events
        stream = stream_key(recorder.key, recorder.turn)
        pipe.xadd(stream, fields, id=f"0-{last}", minid=f"0-{trim + 1}" if trim > 0 else None,
                  approximate=False)
        if recorder.written and not final:
            return  # the keys' TTLs, set by the first write, cover the running turn
        ttl = self.replay_ms if final else self.live_ms
        pipe.pexpire(stream, ttl)
        if recorder.written:
            pipe.pexpire(pointer_key(recorder.key), ttl)
        else:
            pipe.set(pointer_key(recorder.key), recorder.turn, px=ttl)
        recorder.written = True

    @staticmethod
    async def _until_written(read: Callable[[], Awaitable[T]], patient: bool) -> T:
        """``read`` until it finds something, up to ~1 s when ``patient`` (a turn's first
        write is off its path, so a quick rejoin may come before it), else once."""
        found = await read()
        for _ in range(APPEAR_CHECKS if patient else 0):
            if found:
                break
            await asyncio.sleep(FLUSH_S)
            found = await read()
        return found

    async def open(self, key: str, position: Position) -> Replayed | None:
        turn = position.turn
        if turn is None:
            raw = await self.client.get(pointer_key(key))
            if raw is None and self.lock_key is not None and await self.client.exists(
                    self.lock_key(key)):
                # a turn runs on the thread (its lease is held): its first write may be due
                raw = await self._until_written(
                    lambda: self.client.get(pointer_key(key)), patient=True)
            if raw is None:
                raise NothingToRejoin("no streamed turn of this thread to rejoin")
            turn = int(raw)
        stream = stream_key(key, turn)
        after = position.after

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xrange(stream, min=f"0-{after + 1}", max="+")
                pipe.xrevrange(stream, max="+", min="-", count=1)
                replies: list[Any] = await pipe.execute()
            return replies if replies[1] else []

        # a client that saw an event of a young turn may ask before its first write
        young = position.turn is not None and next_turn() - turn < self.live_ms
        replies = await self._until_written(read, patient=young)
        entries, newest = replies if replies else ([], [])
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
        """Shutdown (after the turns have finished): write what is left, stop the writer."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            done, _ = await asyncio.wait([self._writer], timeout=CLOSE_WAIT_S)
            if not done:
                self._writer.cancel()
                await asyncio.wait([self._writer], timeout=1)
            self._writer = None
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.flush()
        except TimeoutError:
            logger.warning("stream replay: the last write was still pending after %.0fs",
                           CLOSE_WAIT_S)

    def stats(self) -> dict[str, Any]:
        return {"store": "redis", "readers": self.readers, "max_readers": self.max_readers,
                "pending_turns": len(self._dirty), "writes": self.writes,
                "replay_s": self.replay_ms / 1000}
