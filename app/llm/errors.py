"""The language model's failures as the service's errors: the one place they are translated.

``ChatCompletions`` (upstream.py) raises the OpenAI SDK's exception classes, as the SDK
itself does for the models it serves, so both paths fail alike; this turns them into the
``AppError`` a client sees (502 ``upstream_error``, 504 ``upstream_timeout``).
"""

from __future__ import annotations

import math

import openai

from app.errors import (
    AppError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.llm.breaker import CircuitOpen
from app.llm.upstream import ReplyTooLarge, retry_after_seconds

#: the longest Retry-After passed on from the upstream to a client
MAX_RETRY_AFTER_S = 60

#: what a model call raises when the language model failed
UPSTREAM_ERRORS = (openai.APIError,)


def upstream_error(exc: openai.APIError) -> AppError:
    if isinstance(exc, ReplyTooLarge):
        return UpstreamError(exc.message)
    if isinstance(exc, CircuitOpen):
        return UpstreamUnavailable(exc.message, headers={
            "Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, openai.RateLimitError):
        after = retry_after_seconds(exc.response.headers)
        seconds = max(1, min(MAX_RETRY_AFTER_S, math.ceil(after if after is not None else 1)))
        return UpstreamRateLimited("the language model is rate-limiting this service; retry "
                                   "later", headers={"Retry-After": str(seconds)})
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout("the language model did not answer in time")
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError(f"the language model answered {exc.status_code}: {exc.message}"[:300])
    return UpstreamError(f"the language model is unreachable: {exc.message}")
