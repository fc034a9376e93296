"""``ChatCompletions``: the chat-completions calls of one base URL over one aiohttp pool.

Measured (``python -m bench.upstream_client``): a streamed one-token call costs ~0.46 ms
of CPU over aiohttp, ~1.3 ms over a bare httpx client and ~3.2 ms through the OpenAI SDK
on httpx (request building, auth and retry layers, then httpcore's anyio cancel scope and
h11 event per read); 50 tokens: 1.5 / 3.7 / 15.7 ms. Every turn makes at least one such
call, so this pool carries them; the SDK stays for what it does not cover.

Behaves as the SDK does where the rest of the service can tell: the same retries
(connection errors, timeouts, 408/409/429/5xx, ``Retry-After`` honoured, exponential
backoff with jitter) and the same exception types (``openai.APIStatusError``,
``openai.APIConnectionError``, ``openai.APITimeoutError``). A streamed call is retried
only until its response starts; after that its tokens are the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import certifi
import httpx2
import openai
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from app.clean_context import in_fresh_context
from app.llm.breaker import CircuitBreaker, RetryBudget, is_failure

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
INITIAL_RETRY_S = 0.5
MAX_RETRY_S = 8.0
MAX_RETRY_AFTER_S = 60.0
# What follows ``[DONE]`` is normally only the end of the chunked body; reading it keeps
# the connection pooled. An upstream that holds the body open loses its connection.
DRAIN_TIMEOUT_S = 1.0
MAX_ERROR_BODY = 64 * 1024
MAX_LINE = 4 * 1024 * 1024
# A non-streamed body may exceed its reply's text by this much (the JSON around it).
BODY_ENVELOPE = 64 * 1024
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
# The SDK's exception class per status, so callers can tell a rate limit from the rest.
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError,
    403: openai.PermissionDeniedError, 404: openai.NotFoundError, 409: openai.ConflictError,
    422: openai.UnprocessableEntityError, 429: openai.RateLimitError,
}


class ReplyTooLarge(openai.APIError):
    """The upstream's reply outgrew ``max_reply_chars``: the call ends, nothing is kept."""


class ChatCompletions:
    """POST ``{base_url}/chat/completions``, whole or streamed; GET ``/models``.

    A reply is bounded (``max_reply_chars`` of text and tool-call arguments; a non-streamed
    body that plus ``BODY_ENVELOPE`` bytes): what a turn holds while it runs is then bounded
    too, which is what the memory governor's admission counts on (app/memory/governor.py).
    """

    def __init__(self, base_url: str, api_key: str, *, max_connections: int,
                 connect_timeout_s: float, read_timeout_s: float, max_retries: int,
                 max_reply_chars: int = 256 * 1024,
                 headers: Mapping[str, str] | None = None, cafile: str | None = None,
                 capath: str | None = None, breaker: CircuitBreaker | None = None,
                 budget: RetryBudget | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self._max_retries = max_retries
        self.max_reply_chars = max_reply_chars
        self._max_body = max_reply_chars + BODY_ENVELOPE
        self.breaker = breaker
        self.budget = budget or RetryBudget()
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "agenthost",
            **(headers or {}),
        }
        self._stream_headers = {**self._headers, "Accept": "text/event-stream"}
        # ``connect`` includes waiting for a free pooled connection; ``sock_connect`` is
        # the TCP (and TLS) connect itself; ``sock_read`` bounds each wait for bytes.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=read_timeout_s, sock_connect=connect_timeout_s,
            sock_read=read_timeout_s,
        )
        self._connector_args: dict[str, Any] = {
            "limit": max_connections, "limit_per_host": 0,
            "ssl": tls_context(cafile, capath),
        }
        # The proxy from the environment, looked up once: aiohttp's ``trust_env`` would
        # look it (and ~/.netrc) up in a thread on every request.
        self._proxy: str | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):
            proxy, self._proxy_auth = get_env_proxy_for_url(URL(self.base_url))
            self._proxy = str(proxy)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop it then belongs to.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=FreshContextConnector(**self._connector_args),
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(),
                proxy=self._proxy, proxy_auth=self._proxy_auth,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _admit(self) -> bool:
        """Through the breaker (``CircuitOpen`` when open); True for the half-open probe."""
        self.budget.on_call()
        return self.breaker.before_call() if self.breaker is not None else False

    def _settle(self, error: BaseException | None, probe: bool) -> None:
        if self.breaker is None:
            return
        if error is None or isinstance(error, openai.APIError):
            self.breaker.record(error is not None and is_failure(error), probe)
        elif probe:  # cancelled: no verdict on the upstream, let another call probe
            self.breaker.abandon_probe()

    async def create(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One non-streamed completion, as the decoded JSON body."""
        probe = self._admit()
        try:
            data = await self._create(payload)
        except BaseException as exc:
            self._settle(exc, probe)
            raise
        self._settle(None, probe)
        return data

    async def _create(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(payload)
        attempt = 0
        while True:
            try:
                async with self.session.post(self.url, data=body,
                                             headers=self._headers) as response:
                    if response.status < 300:
                        data = orjson.loads(await self._read_body(response))
                        if not isinstance(data, dict):
                            raise self._connection_error("the response was not an object")
                        return data
                    error: openai.APIError = await self._status_error(response)
            except _TRANSPORT_ERRORS as exc:
                error = self._translate(exc)
            except orjson.JSONDecodeError as exc:
                raise self._connection_error(f"the response was not JSON: {exc}") from exc
            attempt = await self._retry_or_raise(error, attempt)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes | bytearray:
        length = response.content_length
        if length is not None and length > self._max_body:
            raise self._too_large(f"a {length}-byte body")
        if length is not None:
            return await response.read()
        body = bytearray()  # chunked: counted as it comes
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > self._max_body:
                raise self._too_large(f"a body over {self._max_body} bytes")
        return body

    def _too_large(self, what: str) -> ReplyTooLarge:
        return ReplyTooLarge(
            f"the language model's reply was too large ({what}; at most "
            f"{self.max_reply_chars // 1024} KiB, AGENTHOST_LLM_MAX_REPLY_KB)",
            self._request(), body=None)

    @asynccontextmanager
    async def stream(self, payload: Mapping[str, Any]) -> AsyncIterator[
            AsyncIterator[dict[str, Any]]]:
        """A streamed completion: yields its chunks, decoded, as the upstream sends them."""
        probe = self._admit()
        try:
            async with self._stream(payload) as chunks:
                yield chunks
        except BaseException as exc:
            self._settle(exc, probe)
            raise
        self._settle(None, probe)

    @asynccontextmanager
    async def _stream(self, payload: Mapping[str, Any]) -> AsyncIterator[
            AsyncIterator[dict[str, Any]]]:
        body = orjson.dumps(payload)
        attempt = 0
        while True:
            try:
                response = await self.session.post(self.url, data=body,
                                                   headers=self._stream_headers)
            except _TRANSPORT_ERRORS as exc:
                attempt = await self._retry_or_raise(self._translate(exc), attempt)
                continue
            if response.status >= 300:
                try:
                    error = await self._status_error(response)
                finally:
                    response.release()
                attempt = await self._retry_or_raise(error, attempt)
                continue
            break
        try:
            yield self._chunks(response)
        finally:
            response.release()

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        # Whatever arrived, split into lines here: one await per network read, where
        # ``readline`` costs two or three per event (the data line, then the blank one).
        content = response.content
        partial = b""
        received = 0  # characters of reply text and tool-call arguments
        while True:
            try:
                data = await content.readany()
            except _TRANSPORT_ERRORS as exc:
                raise self._translate(exc, "the stream was interrupted") from exc
            if not data:
                return  # the upstream ended the body without [DONE]
            lines = (partial + data if partial else data).split(b"\n")
            partial = lines.pop()
            if len(partial) > MAX_LINE:
                raise self._connection_error("a streamed line exceeded 4 MiB")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    await self._drain(response)
                    return
                chunk = self._decode(payload)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta")
                    if delta:
                        received += len(delta.get("content") or "")
                        for call in delta.get("tool_calls") or ():
                            received += len((call.get("function") or {}).get("arguments")
                                            or "")
                if received > self.max_reply_chars:
                    raise self._too_large(f"over {received} characters streamed")
                yield chunk

    def _decode(self, payload: bytes) -> dict[str, Any]:
        try:
            raw = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise self._connection_error(f"a streamed chunk was not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise self._connection_error("a streamed chunk was not an object")
        if raw.get("error"):
            error = raw["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise openai.APIError(message or "streamed error", self._request(), body=error)
        return raw

    @staticmethod
    async def _drain(response: aiohttp.ClientResponse) -> None:
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await response.content.read()
        except _TRANSPORT_ERRORS:
            pass

    async def list_models(self, timeout_s: float) -> int:
        """GET ``/models``: the status code (readiness probe)."""
        async with self.session.get(f"{self.base_url}/models", headers=self._headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.read()
            return response.status

    # --- errors and retries, as the OpenAI SDK does them ---

    def _request(self) -> httpx2.Request:
        return httpx2.Request("POST", self.url)

    def _connection_error(self, message: str) -> openai.APIConnectionError:
        return openai.APIConnectionError(message=message, request=self._request())

    def _translate(self, exc: BaseException,
                   what: str = "the language model is unreachable") -> openai.APIError:
        if isinstance(exc, TimeoutError):
            return openai.APITimeoutError(request=self._request())
        return self._connection_error(f"{what}: {exc!r}")

    async def _status_error(self, response: aiohttp.ClientResponse) -> openai.APIStatusError:
        raw = await response.content.read(MAX_ERROR_BODY)
        body: Any = None
        message = raw.decode("utf-8", "replace").strip() or response.reason or "error"
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
            message = str(body.get("message") or message)
        http_response = httpx2.Response(response.status, headers=list(response.headers.items()),
                                       request=self._request())
        error_class = _STATUS_ERRORS.get(response.status, openai.APIStatusError)
        if response.status >= 500:
            error_class = openai.InternalServerError
        return error_class(f"Error code: {response.status} - {message}",
                           response=http_response, body=body)

    async def _retry_or_raise(self, error: openai.APIError, attempt: int) -> int:
        """Sleep before the next attempt and return its number, or raise ``error``."""
        if attempt >= self._max_retries or not _retryable(error):
            raise error
        if self.breaker is not None and self.breaker.state.value:  # half-open probe
            raise error
        if not self.budget.take():
            logger.info("LLM call failed (%s); not retried: the retry budget is spent",
                        _describe(error))
            raise error
        delay = min(INITIAL_RETRY_S * 2 ** attempt, MAX_RETRY_S) * (1 - 0.25 * random.random())
        if isinstance(error, openai.APIStatusError):
            after = retry_after_seconds(error.response.headers)
            if after is not None:
                delay = after
        logger.info("LLM call failed (%s); retry %d of %d in %.2fs", _describe(error),
                    attempt + 1, self._max_retries, delay)
        await asyncio.sleep(delay)
        return attempt + 1


class FreshContextConnector(aiohttp.TCPConnector):
    """Keeps no turn's context alive in the pool (app/clean_context.py).

    A new connection is opened in an empty context (its transport would keep the
    opener's), and a released one is pooled in an empty context (the idle-cleanup timer
    armed then would keep the releaser's, and re-arms itself in it while connections
    stay pooled).

    PRIVATE (tests/test_library_privates.py, tests/test_clean_context.py): overrides aiohttp's
    ``TCPConnector._create_connection`` and ``BaseConnector._release``.
    """

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        return await in_fresh_context(super()._create_connection(req, traces, timeout))

    def _release(self, *args: Any, **kwargs: Any) -> None:
        contextvars.Context().run(super()._release, *args, **kwargs)


def tls_context(cafile: str | None = None, capath: str | None = None) -> ssl.SSLContext:
    """Verify servers against certifi's CAs, or the given CA file/directory when set (as
    httpx does with ``SSL_CERT_FILE``/``SSL_CERT_DIR``: a private gateway's or a
    TLS-inspecting proxy's CA)."""
    if cafile is None and capath is None:
        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _retryable(error: openai.APIError) -> bool:
    if isinstance(error, openai.APIStatusError):
        should = error.response.headers.get("x-should-retry")
        if should in ("true", "false"):
            return should == "true"
        return error.status_code in RETRY_STATUSES
    return isinstance(error, openai.APIConnectionError)  # includes APITimeoutError


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if 0 < seconds <= MAX_RETRY_AFTER_S:
            return seconds
    return None


def _describe(error: openai.APIError) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"status {error.status_code}"
    return type(error).__name__
