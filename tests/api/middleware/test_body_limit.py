"""Request bodies over a real socket: chunked bodies under and over the limit, a client
that leaves mid-body. The service runs in this process (uvicorn, httptools)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from tests.conftest import SettingsFactory, serve_app

PATH = "/v1/tenants/demo/threads/{thread}/messages"


async def raw_request(base_url: str, head: bytes, body_parts: list[bytes],
                      close_early: bool = False) -> bytes:
    """Send a request byte by byte as given; return the raw response (b"" if we left)."""
    where = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        if close_early:
            return b""
        return await reader.read()  # the service closes after answering (Connection: close)
    finally:
        writer.close()
        await writer.wait_closed()


def chunked(*pieces: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


def head(thread: str, *extra: str) -> bytes:
    lines = [f"POST {PATH.format(thread=thread)} HTTP/1.1", "Host: test",
             "Content-Type: application/json", "Connection: close", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_a_chunked_body_under_the_limit_is_served(make_settings: SettingsFactory) -> None:
    async with serve_app(make_settings(max_message_bytes=1024, max_body_bytes=4096)) as base:
        answer = await raw_request(base, head("chunked", "Transfer-Encoding: chunked"),
                                   chunked(b'{"message": ', b'"hello in ', b'pieces"}'))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"hello in pieces" in answer


async def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_stored(
    make_settings: SettingsFactory,
) -> None:
    async with serve_app(make_settings(max_message_bytes=1024, max_body_bytes=1024)) as base:
        big = b'{"message": "' + b"x" * 2000 + b'"}'
        answer = await raw_request(base, head("too-big", "Transfer-Encoding: chunked"),
                                   chunked(big[:600], big[600:1200], big[1200:]))
        async with httpx.AsyncClient(base_url=base) as client:
            history = await client.get(PATH.format(thread="too-big"))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer
    assert history.status_code == 404


async def test_a_client_leaving_mid_body_costs_nothing(make_settings: SettingsFactory) -> None:
    async with serve_app(make_settings()) as base:
        for extra in ("Content-Length: 200", "Transfer-Encoding: chunked"):
            await raw_request(base, head("left", extra), [b'{"message": "never fin'],
                              close_early=True)
        async with httpx.AsyncClient(base_url=base) as client:
            history = await client.get(PATH.format(thread="left"))
            after = await client.post(PATH.format(thread="after"), json={"message": "still ok"})
    assert history.status_code == 404  # nothing of the half-sent turns was stored
    assert after.status_code == 200
