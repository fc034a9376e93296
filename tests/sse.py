"""A small SSE reader for tests: events with id/event/data, and comment lines."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    id: str | None = None
    data: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def n(self) -> int:
        """The event's number in its turn (ids are ``<turn>-<n>``)."""
        assert self.id is not None, f"event {self.event} has no id"
        return int(self.id.rpartition("-")[2])

    @property
    def turn(self) -> int:
        assert self.id is not None, f"event {self.event} has no id"
        return int(self.id.partition("-")[0])


@dataclass
class Comment:
    text: str


def _apply_field(event: Event, line: str) -> None:
    name, _, value = line.partition(":")
    value = value[1:] if value.startswith(" ") else value
    if name == "event":
        event.event = value
    elif name == "id":
        event.id = value
    elif name == "data":
        event.data = f"{event.data}\n{value}" if event.data else value


async def read_sse(response: httpx.Response) -> AsyncIterator[Event | Comment]:
    current = Event()
    seen = False
    async for line in response.aiter_lines():
        if line == "":
            if seen:
                yield current
            current, seen = Event(), False
        elif line.startswith(":"):
            yield Comment(line[1:].strip())
        else:
            _apply_field(current, line)
            seen = True


def parse_sse_bytes(raw: bytes) -> list[Event]:
    """Events from raw bytes read off a socket (comments dropped)."""
    out = []
    for block in raw.decode(errors="replace").replace("\r\n", "\n").split("\n\n"):
        event, seen = Event(), False
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            _apply_field(event, line)
            seen = True
        if seen:
            out.append(event)
    return out


def dechunk(raw: bytes) -> bytes:
    """The body of a raw HTTP/1.1 response with chunked transfer encoding."""
    body = raw.split(b"\r\n\r\n", 1)[1]
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out
