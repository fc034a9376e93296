"""The one error family clients see, and the handlers that render it.

Every error leaves as ``{"error": {"code": "snake_case", "message": "human sentence"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class InvalidRequest(AppError):
    status_code = 422
    code = "invalid_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class AdminDisabled(AppError):
    status_code = 403
    code = "admin_disabled"


class TenantUnreachable(AppError):
    status_code = 409
    code = "tenant_unreachable"


class ThreadBusy(AppError):
    status_code = 409
    code = "thread_busy"


class TenantNotFound(AppError):
    status_code = 404
    code = "tenant_not_found"


class ThreadNotFound(AppError):
    status_code = 404
    code = "thread_not_found"


class NothingToRejoin(AppError):
    status_code = 404
    code = "nothing_to_rejoin"


class ReplayGone(AppError):
    status_code = 410
    code = "replay_gone"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class TooManyStreams(AppError):
    status_code = 429
    code = "too_many_streams"


class UpstreamError(AppError):
    status_code = 502
    code = "upstream_error"


class UpstreamUnavailable(AppError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamRateLimited(AppError):
    status_code = 429
    code = "upstream_rate_limited"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"


class UpstreamTimeout(AppError):
    status_code = 504
    code = "upstream_timeout"


class TurnTimeout(AppError):
    status_code = 504
    code = "turn_timeout"


class StorageUnavailable(AppError):
    status_code = 503
    code = "storage_unavailable"


class MemoryPressure(AppError):
    status_code = 503
    code = "memory_pressure"


class TracingOff(AppError):
    status_code = 404
    code = "tracing_off"


class ConfigError(Exception):
    """A configuration the service refuses to start with; the message names the fix."""


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if exc.status_code >= 500:
        logger.warning("%s %s -> %s %s: %s", request.method, request.url.path,
                       exc.status_code, exc.code, exc.message)
    return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body("invalid_request", _describe_validation(exc)), 422)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 400:
        # The framework's 400 is a body it could not decode (not UTF-8, JSON nested too
        # deep): an invalid request like any other, as README promises.
        return JSONResponse(error_body("invalid_request", f"the body could not be read: "
                                       f"{message}"), 422)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, message), exc.status_code, headers=exc.headers)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal error; see the service log"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
