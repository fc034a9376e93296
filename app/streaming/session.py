"""``StreamSession``: one turn streamed to one client over SSE, from open to close.

It owns the two sides of the stream (see hub.py): the producer, the turn running as a
task the hub owns, whose turn events it turns into SSE events ending in exactly one final
``done`` or ``error``; and the consumer, the response that numbers the queued events and
writes those already waiting in one chunk, with a ``: ping`` heartbeat while idle. A
failure after the headers are sent becomes an ``error`` event, then the stream closes.
The per-send timeout is the hub's (``cut_stuck_sends``, run by the janitor); the
response only records its sends (response.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from app.errors import AppError
from app.streaming import events
from app.streaming.events import StreamEvent
from app.streaming.hub import LiveStream, StreamHub
from app.streaming.replay import Replayed
from app.streaming.response import StreamResponse
from app.turns.events import OnEvent, Replied, Token, ToolCalled, ToolReturned, TurnEvent

logger = logging.getLogger(__name__)

# Proxies must pass events through as they come, not buffer or transform them.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
# Events already queued are written together, up to this many per socket write.
WRITE_BATCH = 32

#: runs the turn, reporting its events to the callback it is given
Turn = Callable[[OnEvent], Awaitable[Any]]


class StreamSession:
    def __init__(self, hub: StreamHub, stream: LiveStream, heartbeat_s: float,
                 shutdown_grace_s: float = 0.0) -> None:
        self._hub = hub
        self.stream = stream
        self._heartbeat_s = heartbeat_s
        self._shutdown_grace_s = shutdown_grace_s

    @classmethod
    def open(cls, hub: StreamHub, tenant_id: str, thread_id: str, heartbeat_s: float,
             shutdown_grace_s: float = 0.0, *, record: bool = True) -> StreamSession:
        """A new stream (``record``: a turn's, kept for rejoining; else a rejoin's);
        ``TooManyStreams`` (429) when a cap is reached."""
        return cls(hub, hub.open(tenant_id, thread_id, record=record), heartbeat_s,
                   shutdown_grace_s)

    def start(self, turn: Turn) -> StreamResponse:
        """Run ``turn`` behind the stream; the response reads what it reports."""
        self._hub.start(self.stream, self._produce(turn))
        return self._response(self._consume())

    def _response(self, content: AsyncIterator[bytes]) -> StreamResponse:
        return StreamResponse(
            self.stream,
            content,
            headers=STREAM_HEADERS,
            ping=self._heartbeat_s,
            ping_message_factory=events.ping,
            # On SIGTERM sse-starlette ends every stream at once; a running turn gets the
            # grace to finish and send its reply first (tests/test_shutdown.py).
            shutdown_grace_period=self._shutdown_grace_s,
        )

    def on_turn_done(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when the turn's task ends, however it ends."""
        task = self.stream.task
        if task is None:
            callback()
        else:
            task.add_done_callback(lambda _: callback())

    def on_event(self, event: TurnEvent) -> Awaitable[None]:
        # Tokens are most events: queued straight from here, without a coroutine of ours.
        if type(event) is Token:
            return self.stream.emit(StreamEvent("token", {"text": event.text}))
        return self._emit_other(event)

    async def _emit_other(self, event: TurnEvent) -> None:
        if isinstance(event, ToolCalled):
            await self.stream.emit(events.tool_call(event))
        elif isinstance(event, ToolReturned):
            await self.stream.emit(events.tool_result(event))
        elif isinstance(event, Replied):
            await self.stream.emit(events.message(event.content))
            await self.stream.emit(events.done(event.usage))

    async def _produce(self, turn: Turn) -> None:
        """The turn behind the stream; it ends with exactly one final event."""
        try:
            await turn(self.on_event)
        except AppError as exc:
            await self.stream.emit(events.error(exc.code, exc.message))
        except Exception:
            logger.exception("stream %s: turn failed", self.stream.stream_id)
            await self.stream.emit(events.error("internal_error",
                                                "internal error; see the service log"))

    async def _consume(self) -> AsyncIterator[bytes]:
        """The client's side: queued events, already numbered, until a final one."""
        stream = self.stream
        self._hub.attach(stream)
        try:
            while True:
                batch = await stream.next_events(WRITE_BATCH)
                yield b"".join(queued.wire for queued in batch)
                if batch[-1].final:
                    return
        finally:
            self._hub.detach(stream)

    def relay(self, replayed: Replayed) -> StreamResponse:
        """A rejoin: the kept events of a turn (replay.py), then its live ones."""
        return self._response(self._relay(replayed))

    async def _relay(self, replayed: Replayed) -> AsyncIterator[bytes]:
        stream = self.stream
        self._hub.attach(stream)
        try:
            async for chunk in replayed:
                yield chunk
            stream.end("done")
        finally:
            await replayed.aclose()
            self._hub.detach(stream)
            self._hub.close(stream)
