"""StreamSession in-process: turn events become numbered SSE events ending in one final."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from app.errors import UpstreamError
from app.streaming.hub import StreamHub
from app.streaming.session import StreamSession
from app.turns.events import OnEvent, Replied, Token, ToolCalled, ToolReturned
from config.settings import Settings
from tests.sse import Event, parse_sse_bytes


async def streamed(turn: Callable[[OnEvent], Awaitable[None]]) -> list[Event]:
    hub = StreamHub(Settings())
    session = StreamSession.open(hub, "ten", "th", heartbeat_s=15)
    response = session.start(turn)
    raw = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[misc]
    assert len(hub) == 0 or session.stream.ended is not None
    return parse_sse_bytes(raw)


async def test_turn_events_become_sse_events_in_order_with_increasing_ids() -> None:
    async def turn(on_event: OnEvent) -> None:
        for event in (Token("Hel"), Token("lo"), ToolCalled("c1", "calculator", {"x": "1+1"}),
                      ToolReturned("c1", "calculator", "2", "success"),
                      Replied("Hello", {"input_tokens": 1, "output_tokens": 2,
                                        "total_tokens": 3})):
            await on_event(event)

    received = await streamed(turn)
    assert [e.event for e in received] == ["token", "token", "tool", "tool", "message", "done"]
    assert [e.n for e in received] == [1, 2, 3, 4, 5, 6]
    assert received[0].json == {"text": "Hel"}
    assert received[2].json == {"type": "call", "id": "c1", "name": "calculator",
                                "args": {"x": "1+1"}}
    assert received[3].json["type"] == "result" and received[3].json["content"] == "2"
    assert received[4].json == {"role": "assistant", "content": "Hello"}
    assert received[5].json["usage"]["total_tokens"] == 3


@pytest.mark.parametrize(("failure", "code"), [
    (UpstreamError("the model is down"), "upstream_error"),
    (RuntimeError("a bug"), "internal_error"),
])
async def test_a_failing_turn_ends_with_one_error_event(failure: Exception, code: str) -> None:
    async def turn(on_event: OnEvent) -> None:
        await on_event(Token("partial"))
        raise failure

    received = await streamed(turn)
    assert [e.event for e in received] == ["token", "error"]
    assert received[1].json["code"] == code
    assert "a bug" not in received[1].data  # internals stay in the log
