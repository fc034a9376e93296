"""Pooled connections must not keep alive the context of the turn that opened them.

A turn's context holds LangGraph's run config, and through it the turn's whole state. A
transport keeps the context it was created in for as long as the connection lives, so
each pooled connection opened mid-turn kept one turn alive. These tests hold an object
only through a context variable, open a pooled connection (LLM over aiohttp, Redis), and
check the object is gone once the caller's context is. They also pin the library hook
each pool uses (aiohttp's ``TCPConnector._create_connection``, redis-py's
``connect``): if an upgrade renames it, the object stays alive and the test fails.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from app.clean_context import in_fresh_context
from app.persistence.redis import RedisBackend
from config.settings import Settings
from tests.conftest import MockLLM, pool_for
from tests.waiting import settle_loop

TURN: contextvars.ContextVar[object] = contextvars.ContextVar("turn")


class TurnState:
    """Stands for a turn's state, reachable only through the context."""


async def outlives_its_context(use_connection: Callable[[], Awaitable[Any]]) -> bool:
    """Whether the turn state set in the caller's context survives that context."""

    async def turn() -> weakref.ref[TurnState]:
        state = TurnState()
        TURN.set(state)
        await use_connection()
        return weakref.ref(state)

    loop = asyncio.get_running_loop()
    ref = await loop.create_task(turn(), context=contextvars.Context())
    await settle_loop(5)  # the call's own cancelled timeouts hold its context until pruned
    gc.collect()
    return ref() is not None


async def test_in_fresh_context_runs_without_the_callers_variables() -> None:
    TURN.set("caller")

    async def read() -> object:
        return TURN.get("unset")

    assert await in_fresh_context(read()) == "unset"
    assert TURN.get() == "caller"


async def test_cancelling_the_caller_cancels_the_fresh_context_work() -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()
        finished.set()  # pragma: no cover - never reached

    caller = asyncio.ensure_future(in_fresh_context(slow()))
    await started.wait()
    caller.cancel()
    await asyncio.wait([caller])
    assert caller.cancelled() and not finished.is_set()


async def test_a_pooled_llm_connection_keeps_no_turn_alive(mock_llm: MockLLM) -> None:
    pool = pool_for(mock_llm.base_url)
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    try:
        assert not await outlives_its_context(lambda: pool.create(payload))
        # The connection is pooled and reused by the next call.
        assert len(pool.session.connector._conns) == 1  # type: ignore[union-attr]
    finally:
        await pool.aclose()


async def test_a_pooled_redis_connection_keeps_no_turn_alive(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)  # type: ignore[arg-type]
    async with RedisBackend.open(settings) as store:
        await store.client.connection_pool.disconnect()  # the next command connects anew

        async def command() -> None:
            await store.client.set("clean-context", "1")

        assert not await outlives_its_context(command)
        assert store.client.connection_pool.connection_class.__name__.startswith("FreshContext")
