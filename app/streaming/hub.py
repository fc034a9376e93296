"""``StreamHub``: the registry of live streams, their bounded queues and their caps.

Each stream has two sides. The producer is the agent run, a task the hub owns: it keeps
running when the client goes away (unless ``cancel_on_disconnect``), so the turn is
stored. The consumer is the SSE response reading the stream's queue. The queue is
bounded: when it stays full past ``stream_send_timeout_s`` the client is a slow consumer,
its queue is emptied and replaced by one ``error`` event, and later events are dropped.
Memory per stream is therefore bounded whatever the client does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from app.errors import TooManyStreams
from app.janitor import SweepSpec
from app.observability.metrics import Metrics
from app.persistence.base import thread_key
from app.streaming import events
from app.streaming.events import StreamEvent
from app.streaming.replay import Replay, TurnRecorder, next_turn
from config.settings import Settings

logger = logging.getLogger(__name__)

# The janitor checks for stuck sends this many times per cutoff.
CUTOFF_CHECKS = 3


@dataclass
class QueueWatermark:
    """The deepest any stream queue of one hub has been."""

    metrics: Metrics
    high: int = 0

    def record(self, depth: int) -> None:
        if depth > self.high:
            self.high = depth
            self.metrics.stream_queue_high_water.set(depth)


@dataclass(frozen=True, slots=True)
class Queued:
    """An event on its way to the client: the event and its SSE bytes (id included)."""

    event: StreamEvent
    wire: bytes

    @property
    def final(self) -> bool:
        return self.event.final


@dataclass(eq=False)
class LiveStream:
    stream_id: int
    tenant_id: str
    thread_id: str
    started: float
    queue: asyncio.Queue[Queued]
    send_timeout_s: float
    clock: Callable[[], float]
    watermark: QueueWatermark
    metrics: Metrics
    #: numbers the turn's events (their ids) and keeps them for rejoining (replay.py)
    recorder: TurnRecorder = field(default_factory=lambda: TurnRecorder(next_turn()))
    last_event: float = 0.0
    ended: str | None = None  # why the client will get no more events
    #: the number of the turn's last event; ``finished`` once its final one is out
    last_n: int = 0
    finished: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Sends to the client in progress (task → when it started) and the ones the hub cut.
    pending_sends: dict[asyncio.Task[Any], float] = field(default_factory=dict, repr=False)
    expired_sends: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    def _number(self, event: StreamEvent) -> Queued:
        """The event's id and bytes; recorded for rejoining whatever the client does."""
        self.last_n = n = self.last_n + 1
        wire = event.encode(self.recorder.id_prefix + b"%d" % n)
        final = event.final
        if final:
            self.finished = True
        self.recorder.record(n, wire, final)
        return Queued(event, wire)

    async def emit(self, event: StreamEvent) -> None:
        """Producer side: queue an event, waiting at most the send timeout for room."""
        if self.finished:
            return
        queued = self._number(event)
        if self.ended is not None:
            return
        try:
            self.queue.put_nowait(queued)
        except asyncio.QueueFull:
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.queue.put(queued)
            except TimeoutError:
                self.end("slow_consumer", events.error(
                    "slow_consumer", "the client read too slowly; the turn continues and is "
                    "stored, read it from the thread's history"))
                return
        self.last_event = self.clock()
        counter = self.metrics.stream_event_counts.get(event.event)
        (counter or self.metrics.stream_events.labels(event.event)).inc()
        self.watermark.record(self.queue.qsize())
        if event.final:
            self.end("done" if event.event == "done" else "error")

    def finish(self, final: StreamEvent, reason: str = "cancelled") -> None:
        """The turn ends with ``final`` unless it has ended already: recorded for
        rejoining, and put before anything unread if the client still reads."""
        if self.finished:
            return
        queued = self._number(final)
        if self.ended is None:
            self._replace_queue(queued)
            self.ended = reason
            self.metrics.streams_ended.labels(reason).inc()

    def end(self, reason: str, final: StreamEvent | None = None) -> None:
        """No more events for the client; ``final`` replaces whatever it had not read.

        ``final`` is about this connection, not the turn: it has no id and is not
        recorded, so a rejoin resumes after the last event the client really got.
        """
        if self.ended is not None:
            return
        self.ended = reason
        self.metrics.streams_ended.labels(reason).inc()
        if final is not None:
            self._replace_queue(Queued(final, final.encode(None)))

    def _replace_queue(self, queued: Queued) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(queued)

    async def next_events(self, limit: int) -> list[Queued]:
        """Wait for an event, then take the ones already queued behind it (up to a final)."""
        batch = [await self.queue.get()]
        while len(batch) < limit and not batch[-1].final and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch


class StreamHub:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 metrics: Metrics | None = None, replay: Replay | None = None) -> None:
        self._settings = settings
        #: where streamed turns are kept for rejoining (off unless given)
        self.replay = replay if replay is not None else Replay()
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._ids = itertools.count(1)
        self._streams: dict[int, LiveStream] = {}
        self._consumers: dict[int, LiveStream] = {}  # streams a client is reading
        self._per_tenant: dict[str, int] = {}
        self.watermark = QueueWatermark(self.metrics)
        self.send_cutoff_s = settings.stream_send_cutoff_s

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, tenant_id: str, thread_id: str, *, record: bool = False) -> LiveStream:
        """A stream slot, counted against the caps (429 beyond); ``record``: a new turn's
        events are kept for rejoining (else the slot is a rejoin's, or replay is off)."""
        settings = self._settings
        retry = {"Retry-After": str(settings.stream_retry_after_s)}
        if len(self._streams) >= settings.stream_max_per_worker:
            self.metrics.streams_rejected.labels("worker").inc()
            raise TooManyStreams("this worker has too many live streams; retry shortly",
                                 headers=retry)
        if self._per_tenant.get(tenant_id, 0) >= settings.stream_max_per_tenant:
            self.metrics.streams_rejected.labels("tenant").inc()
            raise TooManyStreams("this tenant has too many live streams; retry shortly",
                                 headers=retry)
        now = self._clock()
        stream = LiveStream(
            stream_id=next(self._ids), tenant_id=tenant_id, thread_id=thread_id, started=now,
            last_event=now, queue=asyncio.Queue(settings.stream_queue_size),
            send_timeout_s=settings.stream_send_timeout_s, clock=self._clock,
            watermark=self.watermark, metrics=self.metrics,
        )
        if record:
            stream.recorder = self.replay.begin(thread_key(tenant_id, thread_id))
        self._streams[stream.stream_id] = stream
        self._per_tenant[tenant_id] = self._per_tenant.get(tenant_id, 0) + 1
        self.metrics.streams_active.set(len(self._streams))
        return stream

    def start(self, stream: LiveStream, producer: Coroutine[Any, Any, None]) -> None:
        stream.task = asyncio.get_running_loop().create_task(producer)
        stream.task.add_done_callback(lambda _: self.close(stream))

    def attach(self, stream: LiveStream) -> None:
        """A client has started reading the stream."""
        self._consumers[stream.stream_id] = stream

    def detach(self, stream: LiveStream) -> None:
        """The consumer is gone (finished, or the client disconnected)."""
        self._consumers.pop(stream.stream_id, None)
        if stream.ended is None:
            stream.end("disconnected")
            if self._settings.cancel_on_disconnect and stream.task is not None:
                stream.task.cancel()
        # Nobody reads the queue any more: free what it holds.
        while not stream.queue.empty():
            stream.queue.get_nowait()

    def close(self, stream: LiveStream) -> None:
        """The slot is free again: the turn's task has ended, or a rejoin has."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        left = self._per_tenant[stream.tenant_id] - 1
        if left:
            self._per_tenant[stream.tenant_id] = left
        else:
            del self._per_tenant[stream.tenant_id]
        if stream.task is not None:  # every turn ends with a final event, even cancelled
            stream.finish(events.error("cancelled", "the turn was cancelled"))
        self.metrics.streams_active.set(len(self._streams))

    def sweeps(self) -> list[SweepSpec]:
        """The janitor's sweeps for streams."""
        return [("streams", self.sweep, None),
                ("stuck_sends", self.cut_stuck_sends, self.send_cutoff_s / CUTOFF_CHECKS)]

    def sweep(self) -> int:
        """End streams older than the maximum age (the janitor calls this)."""
        limit = self._clock() - self._settings.stream_max_age_s
        expired = [s for s in self._streams.values() if s.started <= limit]
        for stream in expired:
            logger.warning("stream %s of tenant %s expired after %.0fs", stream.stream_id,
                           stream.tenant_id, self._clock() - stream.started)
            stream.finish(events.error("stream_expired", "the stream reached its maximum age"),
                          "expired")
            if stream.task is not None:
                stream.task.cancel()
        return len(expired)

    def cut_stuck_sends(self) -> int:
        """Cut off clients whose socket took nothing for ``send_cutoff_s`` (a janitor sweep).

        A slow reader has already lost its queued events (``slow_consumer``); one that
        reads nothing at all would hold its connection and task forever.
        """
        limit = self._clock() - self.send_cutoff_s
        cut = 0
        for stream in list(self._consumers.values()):
            stuck = [task for task, since in stream.pending_sends.items()
                     if since <= limit and task not in stream.expired_sends]
            if not stuck:
                continue
            logger.warning("stream %s of tenant %s: the client took nothing for %.0fs; "
                           "closing its connection", stream.stream_id, stream.tenant_id,
                           self.send_cutoff_s)
            for task in stuck:
                stream.expired_sends.add(task)
                task.cancel()
            cut += 1
        if cut:
            self.metrics.stream_clients_cut.inc(cut)
        return cut

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        oldest = min((s.started for s in self._streams.values()), default=None)
        stalest = min((s.last_event for s in self._streams.values()), default=None)
        return {
            "active": len(self._streams),
            "max_per_worker": self._settings.stream_max_per_worker,
            "max_per_tenant": self._settings.stream_max_per_tenant,
            "tenants_streaming": len(self._per_tenant),
            "oldest_age_s": round(now - oldest, 3) if oldest is not None else None,
            "longest_idle_s": round(now - stalest, 3) if stalest is not None else None,
            "reading": len(self._consumers),
            "queue_high_water": self.watermark.high,
        }

    async def aclose(self, grace_s: float) -> None:
        """Shutdown: let running turns finish within the grace period, then cancel them."""
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("cancelled %d turns still running after %.0fs of shutdown",
                           len(pending), grace_s)
            await asyncio.wait(pending, timeout=5)
