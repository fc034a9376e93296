"""Open long-lived connections outside the caller's context.

asyncio (and uvloop) transports keep a copy of the context they were created in and run
every callback in it for as long as the connection lives. A pooled connection opened
during a turn therefore kept that turn alive, LangGraph's run config, loop, state and
messages, until the pool closed it: up to one whole turn per pooled LLM or Redis
connection. Connections are opened here in an empty context instead; it costs one task
per new connection, and none per request.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def in_fresh_context(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in an empty context; cancelling the caller cancels it."""
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    return await task
