"""``StreamResponse``: sse-starlette's response, with a per-send timeout that costs nothing.

sse-starlette bounds each send with an anyio cancel scope (``move_on_after``): with one
send per token that was ~8 % of a worker busy streaming (py-spy). Here a send only notes
which task started it and when; the hub's ``cut_stuck_sends`` (a janitor sweep) cancels a
send pending longer than the limit, which ends the response with sse-starlette's own
``SendTimeoutError``, exactly as its timeout would have.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Send

from app.streaming.hub import LiveStream


class StreamResponse(EventSourceResponse):
    # PRIVATE: overrides sse-starlette's _send_with_timeout (tests/test_library_privates.py).
    def __init__(self, stream: LiveStream, content: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)  # no send_timeout: the hub enforces it
        self._stream = stream

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        stream = self._stream
        task = asyncio.current_task()
        assert task is not None
        stream.pending_sends[task] = stream.clock()
        try:
            await send(message)
        except asyncio.CancelledError:
            if task in stream.expired_sends:
                stream.expired_sends.discard(task)
                task.uncancel()
                raise SendTimeoutError() from None
            raise
        finally:
            stream.pending_sends.pop(task, None)
