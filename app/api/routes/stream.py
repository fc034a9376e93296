"""Streaming chat over Server-Sent Events (the session in app/streaming/session.py)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter

from app.api.deps import BusyPolicy, StateDep, TenantDep, TenantId, ThreadId
from app.api.responses import BODY, errors
from app.api.routes.chat import checked_message
from app.api.schemas import MessageIn
from app.persistence.base import thread_key
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
