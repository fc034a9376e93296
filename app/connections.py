"""Guards on connections, below the app, in uvicorn's HTTP protocol (httptools).

Uvicorn has no header-read timeout and no cap on open connections: a client that connects
and sends nothing, or trickles its headers, holds a socket (and a file descriptor) for
good, and enough of them cut every other client off. ``guarded_protocol`` adds both:

- a request's headers must arrive within ``header_timeout_s`` of the connection (or of
  the request's first byte, on a kept-alive connection); otherwise 408 in the error
  shape, and the connection is closed. An idle kept-alive connection is uvicorn's
  ``timeout_keep_alive`` (5 s) as before. A stalled *body* is the app's
  (``BodyLimitMiddleware``, ``AGENTHOST_BODY_READ_TIMEOUT_S``);
- beyond ``max_connections`` open connections in this worker, a new one is answered 503
  in the error shape with ``Retry-After`` at once and closed.

Every connection is a file descriptor: ``raise_open_file_limit`` lifts the soft limit to
the hard one at start, and ``connection_cap`` keeps the cap below what is left of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import error_body

logger = logging.getLogger(__name__)

#: descriptors kept for everything but client sockets: pools (Redis, the LLM), files, pipes
RESERVED_FDS = 256


def raise_open_file_limit() -> int:
    """Lift this process's soft open-file limit to its hard limit; return the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int, open_file_limit: int) -> int:
    """The cap on client connections: ``wanted``, or less when file descriptors are short."""
    room = max(1, open_file_limit - RESERVED_FDS)
    if wanted > room:
        logger.warning("AGENTHOST_MAX_CONNECTIONS=%d lowered to %d: the open-file limit is "
                       "%d (raise it: ulimit -n, or the container's nofile ulimit)",
                       wanted, room, open_file_limit)
        return room
    return wanted


def _response(status: int, reason: str, code: str, message: str,
              extra: bytes = b"") -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (status, reason.encode(), len(body), extra)) + body


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """Uvicorn's httptools protocol with a header-read timeout and a connection cap."""
    too_many = _response(503, "Service Unavailable", "too_many_connections",
                         f"this worker has {max_connections} connections open; retry shortly",
                         b"retry-after: 1\r\n")
    too_slow = _response(408, "Request Timeout", "request_timeout",
                         f"the request's headers did not arrive within {header_timeout_s:g}s")

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.debug("connection refused: %d open", len(self.connections))
                transport.write(too_many)
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a kept-alive connection's next request

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(too_slow)
            self.transport.close()

    return GuardedHttpToolsProtocol
