"""Chat: send a message, read a thread's history, forget a thread."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import BusyPolicy, StateDep, TenantDep, TenantId, ThreadId
from app.api.responses import BODY, errors
from app.api.schemas import HistoryOut, MessageIn, MessageOut, ReplyOut, TurnOut, Usage
from app.errors import PayloadTooLarge, ThreadNotFound
from app.persistence.base import thread_key

router = APIRouter(prefix="/v1/tenants/{tenant_id}/threads/{thread_id}", tags=["chat"],
                   responses=errors(401, 404, 422, 503))


def checked_message(state: StateDep, body: MessageIn) -> str:
    limit = state.settings.max_message_bytes
    if len(body.message.encode()) > limit:
        raise PayloadTooLarge(f"message is larger than {limit} bytes")
    return body.message


@router.post("/messages", responses={**BODY, **errors(409, 429, 502, 504)})
async def post_message(
    state: StateDep, config: TenantDep, tenant_id: TenantId, thread_id: ThreadId,
    body: MessageIn, busy_policy: BusyPolicy = None,
) -> TurnOut:
    text = checked_message(state, body)
    slot = await state.limiter.admit(tenant_id, config)
    try:
        with state.governor.admit("turn"):
            agent = await state.agents.get(tenant_id, config)
            result = await state.runner.run(agent, thread_key(tenant_id, thread_id), text,
                                            policy=busy_policy)
    finally:
        await slot.release()
    return TurnOut(
        tenant_id=tenant_id,
        thread_id=thread_id,
        reply=ReplyOut(content=result.reply.text),
        usage=Usage(**result.usage),
    )


@router.get("/messages", response_model_exclude_none=True)
async def get_messages(
    state: StateDep,
    config: TenantDep,
    tenant_id: TenantId,
    thread_id: ThreadId,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> HistoryOut:
    messages = await state.backend.messages(thread_key(tenant_id, thread_id))
    if messages is None:
        raise ThreadNotFound(f"no thread {thread_id!r} for tenant {tenant_id!r}")
    out = [m for m in (MessageOut.from_message(msg) for msg in messages) if m is not None]
    if limit is not None:
        out = out[-limit:]
    return HistoryOut(tenant_id=tenant_id, thread_id=thread_id, messages=out)


@router.delete("", status_code=204)
async def delete_thread(
    state: StateDep, config: TenantDep, tenant_id: TenantId, thread_id: ThreadId
) -> Response:
    key = thread_key(tenant_id, thread_id)
    await state.backend.delete(key)
    async with state.backend.guard():
        await state.streams.replay.forget(key)
    return Response(status_code=204)
