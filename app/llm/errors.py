"""The language model's failures as the service's errors: the one place they are translated.

``ChatCompletions`` (upstream.py) raises the OpenAI SDK's exception classes, as the SDK
itself does for the models it serves, so both paths fail alike; this turns them into the
``AppError`` a client sees (502 ``upstream_error``, 504 ``upstream_timeout``).
"""

from __future__ import annotations

import openai

from app.errors import AppError, UpstreamError, UpstreamTimeout
from app.llm.upstream import ReplyTooLarge

#: what a model call raises when the language model failed
UPSTREAM_ERRORS = (openai.APIError,)


def upstream_error(exc: openai.APIError) -> AppError:
    if isinstance(exc, ReplyTooLarge):
        return UpstreamError(exc.message)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout("the language model did not answer in time")
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError(f"the language model answered {exc.status_code}: {exc.message}"[:300])
    return UpstreamError(f"the language model is unreachable: {exc.message}")
