"""``BodyLimitMiddleware``: refuse request bodies over a byte limit (413) or slower than
a deadline (408).

A declared ``Content-Length`` over the limit is refused before anything is read. Any other
body is read here, up to the limit and within ``read_timeout_s`` in all (a client that
trickles a body a byte at a time is cut, not waited for), and replayed to the app: the
framework turns errors raised while it reads a body into a 400, so the checks cannot
happen inside the app's own read. (FastAPI's ``max_body_size`` refuses a declared length
with a plain-text body, outside the error shape of DESIGN.md; hence this class.)
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            # h11 and httptools enforce the declared length, so it is the size.
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(send, 413, "payload_too_large",
                                   f"request body is larger than {self.max_bytes} bytes")
                return
            if declared == b"0":
                await self.app(scope, receive, send)
                return
        elif scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # client went away before sending its body
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._refuse(send, 413, "payload_too_large",
                                           f"request body is larger than {self.max_bytes} "
                                           "bytes")
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(send, 408, "request_timeout",
                               f"the request body did not arrive within "
                               f"{self.read_timeout_s:g}s")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})
