"""Streaming chat over Server-Sent Events (the session in app/streaming/session.py)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.api.deps import BusyPolicy, StateDep, TenantDep, TenantId, ThreadId
from app.api.responses import BODY, errors
from app.api.routes.chat import checked_message
from app.api.schemas import MessageIn
from app.errors import InvalidRequest
from app.persistence.base import thread_key
from app.streaming.replay import parse_position
from app.streaming.response import StreamResponse
from app.streaming.session import StreamSession

router = APIRouter(prefix="/v1/tenants/{tenant_id}/threads/{thread_id}", tags=["chat"],
                   responses=errors(401, 404, 422, 503))

_EVENTS = ("Server-Sent Events: `token` {text}, `tool` and `tool_result`, `message` {content}, "
           "then `done` {usage} or `error` {code, message}; `: ping` comments while idle.")


@router.post("/stream", response_class=StreamResponse, status_code=200,
             responses={**BODY, **errors(409, 429), 200: {
                 "description": _EVENTS,
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def stream_message(
    state: StateDep, config: TenantDep, tenant_id: TenantId, thread_id: ThreadId,
    body: MessageIn, busy_policy: BusyPolicy = None,
) -> StreamResponse:
    text = checked_message(state, body)
    key = thread_key(tenant_id, thread_id)
    # a turn busy in another worker is found once the stream runs: an error event then
    state.runner.refuse_if_busy(key, busy_policy)
    slot = await state.limiter.admit(tenant_id, config)
    try:
        admission = state.governor.admit("stream")
    except BaseException:
        await slot.release()
        raise
    try:
        agent = await state.agents.get(tenant_id, config)
        settings = state.settings
        session = StreamSession.open(state.streams, tenant_id, thread_id,
                                     settings.stream_heartbeat_s, settings.shutdown_grace_s)
        # The session calls it with its event callback as the last argument.
        response = session.start(partial(state.runner.run, agent, key, text,
                                         policy=busy_policy))
    except BaseException:
        admission.release()
        await slot.release()
        raise
    # Released when the turn's task ends, however it ends (even cancelled before it ran).
    session.on_turn_done(admission.release)
    session.on_turn_done(slot.release_soon)
    return response


@router.get("/stream", response_class=StreamResponse, status_code=200,
            responses={**errors(410, 429), 204: {
                "description": "the turn has ended and the client has every event of it"},
                200: {"description": "The events after the given one, then the live ones "
                      "until `done` or `error`. " + _EVENTS,
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def rejoin_stream(
    state: StateDep, config: TenantDep, tenant_id: TenantId, thread_id: ThreadId,
    last_event_id: Annotated[str | None, Header(
        description="the id of the last event the client got (EventSource sends it)")] = None,
    after: Annotated[str | None, Query(
        max_length=40, description="the same as Last-Event-ID, for clients that cannot "
        "set headers; Last-Event-ID wins")] = None,
) -> Response:
    """Rejoin the thread's running or last streamed turn (kept `AGENTHOST_STREAM_REPLAY_S`
    after it ends): from its start, or after the event `Last-Event-ID` names."""
    if last_event_id is not None and len(last_event_id) > 40:
        raise InvalidRequest("Last-Event-ID is too long")
    position = parse_position(last_event_id if last_event_id is not None else after)
    async with state.backend.guard():
        replayed = await state.streams.replay.open(thread_key(tenant_id, thread_id), position)
    if replayed is None:
        return Response(status_code=204)
    settings = state.settings
    try:
        session = StreamSession.open(state.streams, tenant_id, thread_id,
                                     settings.stream_heartbeat_s, settings.shutdown_grace_s,
                                     record=False)
    except BaseException:
        await replayed.aclose()
        raise
    return session.relay(replayed)
