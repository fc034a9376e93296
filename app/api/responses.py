"""The error responses routes declare, so ``/openapi.json`` says what the API answers:
every error in the one shape ``{"error": {"code", "message"}}`` (app/errors.py), with
``Retry-After`` where the service sends it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


_WHEN = {
    400: "the request could not be read",
    401: "auth is on and the key is missing or unknown",
    403: "the admin API is off",
    404: "no such tenant, thread or resource (or a key of another tenant)",
    408: "the request's headers or body did not arrive in time",
    409: "the change would leave a tenant unreachable",
    410: "the events asked for are no longer kept",
    413: "the message or the body is too large",
    422: "the request is invalid",
    429: "a live-stream cap is reached",
    502: "the language model failed",
    503: "storage unavailable, memory pressure, or too many connections",
    504: "the language model or the turn took too long",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses."""
    return {status: {"model": ErrorOut, "description": _WHEN[status],
                     **({"headers": _RETRY_AFTER} if status in (429, 503) else {})}
            for status in statuses}


#: what every route with a body can answer before it runs: the body guards, a bad request
BODY = errors(408, 413, 422)
