"""``ResponseMetricsMiddleware``: counts every HTTP response by status code.

Pure ASGI (no per-request objects beyond one closure): the status is read off the
``http.response.start`` message. A response that never started (the client left first)
is counted as 499, as proxies do.
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIENT_CLOSED = "499"


class ResponseMetricsMiddleware:
    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter
        self._by_code: dict[int, Counter] = {}

    def _child(self, status: int) -> Counter:
        child = self._by_code.get(status)
        if child is None:  # labels() looked up once per status, not per response
            child = self._by_code[status] = self.counter.labels(str(status))
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if status:
                self._child(status).inc()
            else:
                self.counter.labels(CLIENT_CLOSED).inc()
