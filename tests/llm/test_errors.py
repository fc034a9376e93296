"""The language model's failures as the service's errors."""

from __future__ import annotations

import httpx2
import openai

from app.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout
from app.llm.errors import upstream_error

REQUEST = httpx2.Request("POST", "http://llm/v1/chat/completions")


def test_a_timeout_is_504_a_rate_limit_429_and_a_status_or_connection_failure_502() -> None:
    timeout = upstream_error(openai.APITimeoutError(request=REQUEST))
    assert isinstance(timeout, UpstreamTimeout) and timeout.status_code == 504

    response = httpx2.Response(429, request=REQUEST, headers={"retry-after": "7"})
    limited = upstream_error(openai.RateLimitError("slow down", response=response, body=None))
    assert isinstance(limited, UpstreamRateLimited) and limited.status_code == 429
    assert limited.headers == {"Retry-After": "7"}
    response = httpx2.Response(429, request=REQUEST, headers={"retry-after": "9000"})
    limited = upstream_error(openai.RateLimitError("slow down", response=response, body=None))
    assert limited.headers == {"Retry-After": "1"}  # unreadable or too long: retry soon

    response = httpx2.Response(503, request=REQUEST)
    failed = upstream_error(openai.InternalServerError("down", response=response, body=None))
    assert isinstance(failed, UpstreamError) and "answered 503: down" in failed.message

    gone = upstream_error(openai.APIConnectionError(message="refused", request=REQUEST))
    assert isinstance(gone, UpstreamError) and "unreachable: refused" in gone.message


def test_a_long_upstream_message_is_cut() -> None:
    response = httpx2.Response(500, request=REQUEST)
    failed = upstream_error(openai.InternalServerError("x" * 5000, response=response, body=None))
    assert len(failed.message) <= 300
