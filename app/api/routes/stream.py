"""Streaming chat over Server-Sent Events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter

from app.agents.graph import TenantAgent
from app.api.deps import StateDep, TenantDep, TenantId, ThreadId
from app.api.routes.chat import checked_message
from app.api.schemas import MessageIn
from app.errors import AppError
from app.persistence.store import thread_key
from app.streaming import events
from app.streaming.hub import LiveStream, StreamHub
from app.streaming.response import StreamResponse
from app.turns.runner import TurnRunner

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/tenants/{tenant_id}/threads/{thread_id}", tags=["chat"])

# Proxies must pass events through as they come, not buffer or transform them.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
WRITE_BATCH = 32


async def produce(runner: TurnRunner, agent: TenantAgent, key: str, text: str,
                  stream: LiveStream) -> None:
    """The agent run behind a stream; it ends with exactly one final event."""
    try:
        result = await runner.run(agent, key, text, emit=stream.emit)
    except AppError as exc:
        await stream.emit(events.error(exc.code, exc.message))
        return
    except Exception:
        logger.exception("stream %s: turn failed", stream.stream_id)
        await stream.emit(events.error("internal_error", "internal error; see the service log"))
        return
    await stream.emit(events.message(result.reply.text))
    await stream.emit(events.done(result.usage))


async def consume(stream: LiveStream, hub: StreamHub) -> AsyncIterator[bytes]:
    """The client's side: queued events, numbered, until a final one.

    Events already waiting are written together: under load one socket write carries
    several events instead of one each (each keeps its own id).
    """
    event_id = 0
    hub.attach(stream)
    try:
        while True:
            batch = await stream.next_events(WRITE_BATCH)
            yield b"".join(e.encode(event_id + i) for i, e in enumerate(batch, start=1))
            event_id += len(batch)
            if batch[-1].final:
                return
    finally:
        hub.detach(stream)


@router.post("/stream", response_class=StreamResponse)
async def stream_message(
    state: StateDep, config: TenantDep, tenant_id: TenantId, thread_id: ThreadId, body: MessageIn
) -> StreamResponse:
    text = checked_message(state, body)
    agent = await state.agents.get(tenant_id, config)
    stream = state.streams.open(tenant_id, thread_id)
    key = thread_key(tenant_id, thread_id)
    state.streams.start(stream, produce(state.runner, agent, key, text, stream))
    settings = state.settings
    # The queue's slow-consumer timeout fires first and queues the error event; a client
    # that then reads gets it. One that still reads nothing is cut off by the hub.
    return StreamResponse(
        stream,
        consume(stream, state.streams),
        headers=STREAM_HEADERS,
        ping=settings.stream_heartbeat_s,
        ping_message_factory=events.ping,
    )
