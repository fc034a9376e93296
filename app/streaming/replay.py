"""Stream replay: a streamed turn's events, kept a while after it ends, for rejoining.

A client that loses its connection mid-reply reconnects with ``GET .../stream`` and the
id of the last event it got (``Last-Event-ID``, which the browser's ``EventSource`` sends
by itself): it gets the events after that one, then the live ones until the final
``done`` or ``error``, each exactly once. Event ids are ``<turn>-<n>``: the turn (its
start in ms since the epoch; turns on one thread run one at a time) and the event's
number in it, from 1. Ids only ever increase within a turn; events one connection is told
about itself (``slow_consumer``) carry no id, so a rejoin never skips past them.

One interface, two stores: ``MemoryReplay`` (here) keeps turns in this worker when there
is no Redis; ``RedisReplay`` (replay_redis.py) writes them to a Redis Stream per turn so a
client can rejoin on any worker or replica. Both bound what they keep per turn
(``stream_replay_max_events``) and in time (``stream_replay_s`` after the turn ends); the
in-memory one also in bytes per worker.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from app.errors import InvalidRequest, NothingToRejoin, ReplayGone
from app.janitor import SweepSpec
from app.memory.governor import Pressure
from app.persistence.base import thread_key
from app.streaming import events

_POSITION = re.compile(r"(?:(\d{1,16})-)?(\d{1,9})")

#: what a rejoin gets when the events it waits for can no longer come
LOST = events.error("replay_gone", "the rest of this turn's events are no longer kept; "
                    "read the reply from the thread's history").encode(None)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a rejoin starts: after event ``after`` of ``turn`` (None: the latest)."""

    turn: int | None = None
    after: int = 0


def parse_position(text: str | None) -> Position:
    """``<turn>-<n>`` (an event id), ``<n>`` (of the latest turn), or nothing (from the
    start of the latest turn)."""
    if text is None or not text.strip():
        return Position()
    match = _POSITION.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest("the last event id must be an event id like 1733000000000-12 "
                             "or an event number")
    turn, after = match.groups()
    return Position(int(turn) if turn is not None else None, int(after))


def next_turn(previous: int = 0) -> int:
    """A new turn's number: now in ms since the epoch, above the thread's previous one."""
    return max(time.time_ns() // 1_000_000, previous + 1)


class TurnRecorder:
    """Records one turn's events as the stream emits them. This base keeps nothing: it is
    what a turn gets when replay is off."""

    def __init__(self, turn: int) -> None:
        self.turn = turn
        #: the bytes every event id of this turn starts with
        self.id_prefix = b"%d-" % turn

    def record(self, n: int, wire: bytes, final: bool) -> None:
        """Event ``n`` of the turn, as SSE bytes; ``final`` for its last."""


#: the replay of a rejoin: SSE bytes, chunk by chunk, ending after the turn's final event
Replayed = AsyncGenerator[bytes, None]


class Replay:
    """Where streamed turns are kept for rejoining. This base keeps nothing (replay off)."""

    enabled = False

    def begin(self, key: str) -> TurnRecorder:
        return TurnRecorder(next_turn())

    async def open(self, key: str, position: Position) -> Replayed | None:
        """The events after ``position``: ``NothingToRejoin`` (404) when no such turn is
        kept, ``ReplayGone`` (410) when some of those events no longer are, None when the
        turn has ended and the client has it all."""
        raise NothingToRejoin("stream replay is off (AGENTHOST_STREAM_REPLAY_S=0)")

    async def forget(self, key: str) -> None:
        """The thread is deleted: its kept events go too."""

    async def forget_tenant(self, tenant_id: str) -> None:
        """The tenant is purged: the kept events of all its threads go too."""

    def sweeps(self) -> list[SweepSpec]:
        return []

    def relieve(self, level: int) -> None:
        """Memory pressure changed (the governor's levels)."""

    async def aclose(self) -> None:
        """Shutdown: stop what is still being written."""

    def stats(self) -> dict[str, Any]:
        return {"store": "off"}


class _TurnLog:
    """One turn's events in memory: ``events[i]`` is event ``first + i``."""

    __slots__ = (
        "_waiters",
        "ended_at",
        "events",
        "first",
        "gone",
        "last",
        "size",
        "started",
        "turn",
    )

    def __init__(self, turn: int, started: float) -> None:
        self.turn = turn
        self.started = started
        self.ended_at: float | None = None
        self.events: deque[bytes] = deque()
        self.first = 1
        self.last = 0
        self.size = 0
        self.gone = False  # forgotten while readers may still be waiting on it
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def final(self) -> bool:
        return self.ended_at is not None

    def changed(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


class _MemoryRecorder(TurnRecorder):
    def __init__(self, replay: MemoryReplay, log: _TurnLog) -> None:
        super().__init__(log.turn)
        self._replay = replay
        self._log = log

    def record(self, n: int, wire: bytes, final: bool) -> None:
        log = self._log
        if log.gone:
            return
        log.events.append(wire)
        log.last = n
        grown = len(wire)
        if len(log.events) > self._replay.max_events:
            grown -= len(log.events.popleft())
            log.first += 1
        log.size += grown
        if final:
            log.ended_at = self._replay.clock()
        self._replay.grew(grown, log)
        log.wake()


class MemoryReplay(Replay):
    """Turns kept in this worker: the latest turn per thread, for ``replay_s`` after it
    ends, at most ``max_events`` each and ``max_bytes`` in all (the oldest turns are
    forgotten first)."""

    enabled = True

    def __init__(self, replay_s: float, max_events: int, max_bytes: int, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.replay_s = replay_s
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s  # a turn that never ended is dropped after this
        self.clock = clock
        self._logs: OrderedDict[str, _TurnLog] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._logs)

    def begin(self, key: str) -> TurnRecorder:
        previous = self._logs.get(key)
        log = _TurnLog(next_turn(previous.turn if previous else 0), self.clock())
        if previous is not None:
            self._drop(key)
        self._logs[key] = log
        return _MemoryRecorder(self, log)

    def grew(self, size: int, log: _TurnLog) -> None:
        self.bytes += size
        while self.bytes > self.max_bytes and self._logs:
            key, oldest = next(iter(self._logs.items()))
            if oldest is log:
                # the one turn left is too big alone: it keeps its newest events only
                if len(log.events) <= 1:
                    break
                dropped = len(log.events.popleft())
                log.size -= dropped
                log.first += 1
                self.bytes -= dropped
            else:
                self._drop(key)

    def _drop(self, key: str) -> None:
        log = self._logs.pop(key)
        self.bytes -= log.size
        log.events.clear()
        log.size = 0
        log.gone = True
        log.wake()

    async def open(self, key: str, position: Position) -> Replayed | None:
        log = self._logs.get(key)
        if log is None or position.turn not in (None, log.turn):
            raise NothingToRejoin("no streamed turn of this thread to rejoin")
        if log.final and position.after >= log.last:
            return None
        if position.after + 1 < log.first:
            raise ReplayGone(f"events after {position.after} are no longer kept; read the "
                             "reply from the thread's history")
        return self._read(log, position.after)

    @staticmethod
    async def _read(log: _TurnLog, after: int) -> Replayed:
        n = after
        while True:
            if log.gone:
                yield LOST
                return
            if n < log.last:
                if n + 1 < log.first:  # trimmed while the client read slowly
                    yield LOST
                    return
                chunk = b"".join(islice(log.events, n + 1 - log.first, None))
                n = log.last
                yield chunk
                continue
            if log.final:
                return
            await log.changed()

    async def forget(self, key: str) -> None:
        if key in self._logs:
            self._drop(key)

    async def forget_tenant(self, tenant_id: str) -> None:
        prefix = thread_key(tenant_id, "")
        for key in [key for key in self._logs if key.startswith(prefix)]:
            self._drop(key)

    def sweeps(self) -> list[SweepSpec]:
        return [("stream_replay", self.sweep, max(1.0, self.replay_s / 4))]

    def relieve(self, level: int) -> None:
        """From high pressure up, finished turns are forgotten at once (rejoins of running
        ones still work); below it, they are kept again."""
        if level >= Pressure.HIGH:
            for key in [key for key, log in self._logs.items() if log.final]:
                self._drop(key)

    def sweep(self) -> int:
        """Forget turns ended ``replay_s`` ago (and turns that never ended, after the
        stream's maximum age)."""
        now = self.clock()
        expired = [key for key, log in self._logs.items()
                   if (log.ended_at is not None and log.ended_at <= now - self.replay_s)
                   or log.started <= now - self.max_age_s - self.replay_s]
        for key in expired:
            self._drop(key)
        return len(expired)

    async def aclose(self) -> None:
        for key in list(self._logs):
            self._drop(key)

    def stats(self) -> dict[str, Any]:
        return {"store": "memory", "turns": len(self._logs), "bytes": self.bytes,
                "max_bytes": self.max_bytes, "replay_s": self.replay_s}
