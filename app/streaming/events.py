"""Stream events and their SSE form. Formatting only: no I/O, no agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sse_starlette import ServerSentEvent

from app.turns.events import ToolCalled, ToolReturned

FINAL_EVENTS = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class StreamEvent:
    event: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.event in FINAL_EVENTS

    def encode(self, event_id: bytes | None) -> bytes:
        """The event as SSE wire bytes (orjson never emits a raw newline inside data).

        Without an id the client's last event id stays what it was: used for what one
        connection is told about itself (``slow_consumer``), which a rejoin must not skip.
        """
        body = b"event: %s\r\ndata: %s\r\n\r\n" % (self.event.encode(),
                                                      orjson.dumps(self.data))
        return body if event_id is None else b"id: %s\r\n%s" % (event_id, body)


def token(text: str) -> StreamEvent:
    return StreamEvent("token", {"text": text})


def tool_call(call: ToolCalled) -> StreamEvent:
    return StreamEvent("tool", {"type": "call", "id": call.id, "name": call.name,
                                "args": call.args})


def tool_result(result: ToolReturned) -> StreamEvent:
    return StreamEvent("tool", {"type": "result", "id": result.id, "name": result.name,
                                "content": result.content, "status": result.status})


def message(content: str) -> StreamEvent:
    return StreamEvent("message", {"role": "assistant", "content": content})


def done(usage: dict[str, int]) -> StreamEvent:
    return StreamEvent("done", {"usage": usage})


def error(code: str, text: str) -> StreamEvent:
    return StreamEvent("error", {"code": code, "message": text})


def ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping")
