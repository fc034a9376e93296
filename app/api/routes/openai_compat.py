"""An OpenAI-compatible endpoint: ``POST /v1/chat/completions`` and ``GET /v1/models``, for
clients that already speak OpenAI (the official SDKs, LangChain's ``ChatOpenAI``, chat UIs).

- ``model`` is the tenant id; the bearer key is checked as on the chat routes (a tenant key
  reaches its own tenant only; any other is ``404 model_not_found``);
- stateless by default: the request's ``messages`` are the conversation, run through the
  tenant's agent (its system prompt, tools and caps) on a graph without a checkpointer, so
  nothing is stored; with a thread (``X-Thread-Id`` or ``metadata.thread_id``) only the last
  user message is the new turn and the history is the stored one, as on the chat routes;
- ``stream: true`` answers ``chat.completion.chunk`` events, ``finish_reason`` on the last,
  a usage chunk with ``stream_options.include_usage``, then ``data: [DONE]``;
- what the service cannot honour (``n`` > 1, client ``tools``, ``logprobs``, audio) is a
  400 naming the parameter; sampling parameters are the tenant's (``temperature`` and the
  like are accepted and ignored). Every error here is in OpenAI's shape:
  ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from pydantic import BaseModel

from app.api.deps import StateDep, key_scope
from app.errors import AppError
from app.llm.chat_model import OnToken
from app.persistence.base import thread_key
from app.state import AppState
from app.tenants.registry import ID_PATTERN, TenantConfig
from app.turns.events import Token, TurnEvent
from app.turns.runner import sum_usage

router = APIRouter(tags=["openai"])


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorDetail


_WHEN = {400: "a parameter the service cannot honour, or an invalid one",
         401: "missing or unknown key", 404: "model_not_found: no such tenant for this key",
         409: "thread_busy (with a thread)", 429: "rate limits (tenant or upstream)",
         502: "the language model failed", 503: "unavailable (memory, storage, upstream)",
         504: "timeout"}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": OpenAIErrorOut, "description": _WHEN[status]}
            for status in statuses}


_REQUEST = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "the tenant id"},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "user", "assistant"]},
                           "content": {"type": "string"}}}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object",
                           "properties": {"include_usage": {"type": "boolean"}}},
        "metadata": {"type": "object",
                     "properties": {"thread_id": {"type": "string"}}},
    }}}}}}

#: parameters the service cannot honour, and why
UNSUPPORTED = {
    "tools": "tools are the tenant's, run by the service",
    "functions": "tools are the tenant's, run by the service",
    "tool_choice": "tools are the tenant's, run by the service",
    "logprobs": "log probabilities are not returned",
    "top_logprobs": "log probabilities are not returned",
    "audio": "audio is not supported",
}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                404: "invalid_request_error", 409: "invalid_request_error",
                413: "invalid_request_error", 429: "rate_limit_error"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message,
                               "type": _ERROR_TYPES.get(status, "api_error"),
                               "param": param, "code": code}}
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, self.status, headers=self.headers)

    @classmethod
    def of(cls, error: AppError) -> OpenAIError:
        return cls(error.status_code, error.message, code=error.code, headers=error.headers)


def _tenants_for(state: AppState, request: Request, authorization: str | None) -> set[str]:
    """The tenants this caller may use (all of them for a service key or with auth off)."""
    try:
        scope = key_scope(state, request, authorization)
    except AppError as error:
        raise OpenAIError.of(error) from error
    return set(state.tenants.ids()) if scope is None else {scope}


def _tenant(state: AppState, request: Request, authorization: str | None,
            model: Any) -> tuple[str, TenantConfig]:
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "model (the tenant id) is required", param="model",
                          code="missing_required_parameter")
    allowed = _tenants_for(state, request, authorization)
    config = state.tenants.get(model)
    if config is None or model not in allowed:
        raise OpenAIError(404, f"The model {model!r} does not exist or you do not have "
                          "access to it.", param="model", code="model_not_found")
    return model, config


@router.get("/v1/models", responses=_errors(401))
async def list_models(
    state: StateDep, request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    try:
        allowed = sorted(_tenants_for(state, request, authorization))
    except OpenAIError as error:
        return error.response()
    return JSONResponse({"object": "list", "data": [
        {"id": tenant, "object": "model", "created": 0, "owned_by": "agenthost"}
        for tenant in allowed]})


def _checked(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    for name, why in UNSUPPORTED.items():
        if body.get(name) not in (None, False, [], {}):
            raise OpenAIError(400, f"{name} is not supported here: {why}", param=name,
                              code="unsupported_parameter")
    if body.get("n") not in (None, 1):
        raise OpenAIError(400, "n must be 1: one choice per request", param="n",
                          code="unsupported_parameter")
    if "audio" in (body.get("modalities") or []):
        raise OpenAIError(400, "audio is not supported", param="modalities",
                          code="unsupported_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "messages must be a non-empty list", param="messages",
                          code="invalid_value")
    return body


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    return ""


@router.post("/v1/chat/completions", openapi_extra=_REQUEST, responses={
    **_errors(400, 401, 404, 409, 429, 502, 503, 504),
    200: {"description": "chat.completion, or with stream: chat.completion.chunk events",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def chat_completions(
    state: StateDep, request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_thread_id: Annotated[str | None, Header()] = None,
) -> Response:
    try:
        try:
            body = _checked(orjson.loads(await request.body()))
        except orjson.JSONDecodeError as exc:
            raise OpenAIError(400, f"the body is not JSON: {exc}") from exc
        tenant_id, config = _tenant(state, request, authorization, body.get("model"))
        thread = x_thread_id or (body.get("metadata") or {}).get("thread_id")
        run = await _prepare(state, tenant_id, config, body["messages"], thread)
        stream = bool(body.get("stream"))
        usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))
        slot = await state.limiter.admit(tenant_id, config)
        try:
            admission = state.governor.admit("stream" if stream else "turn")
        except BaseException:
            await slot.release()
            raise
    except OpenAIError as error:
        return error.response()
    except AppError as error:
        return OpenAIError.of(error).response()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not stream:
        try:
            reply, usage = await run(None)
        except AppError as error:
            return OpenAIError.of(error).response()
        finally:
            admission.release()
            await slot.release()
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created,
            "model": tenant_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop"}],
            "usage": usage,
        })

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def on_token(text: str) -> None:
            await queue.put(("token", text))

        async def produce() -> None:
            try:
                await queue.put(("done", await run(on_token)))
            except AppError as error:
                await queue.put(("error", OpenAIError.of(error)))

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  usage: dict[str, int] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": tenant_id,
                "choices": [] if usage is not None else [
                    {"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                payload["usage"] = usage
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        task = asyncio.create_task(produce())
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await queue.get()
                if kind == "token":
                    yield chunk({"content": value})
                elif kind == "error":
                    yield b"data: " + orjson.dumps(value.body) + b"\n\n"
                    break
                else:
                    yield chunk({}, "stop")
                    if usage_chunk:
                        yield chunk({}, usage=value[1])
                    break
            yield b"data: [DONE]\n\n"
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            admission.release()
            await slot.release()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


Run = Callable[[OnToken | None], Awaitable[tuple[str, dict[str, int]]]]


def _usage(messages: list[BaseMessage]) -> dict[str, int]:
    totals = sum_usage(messages)
    return {"prompt_tokens": totals["input_tokens"],
            "completion_tokens": totals["output_tokens"],
            "total_tokens": totals["total_tokens"]}


async def _prepare(state: AppState, tenant_id: str, config: TenantConfig,
                   raw: list[Any], thread: Any) -> Run:
    """The turn to run: stored on a thread, or stateless on the request's messages."""
    agent = await state.agents.get(tenant_id, config)
    if thread is not None:
        if not isinstance(thread, str) or not re.fullmatch(ID_PATTERN, thread):
            raise OpenAIError(400, f"the thread id must match {ID_PATTERN}",
                              param="metadata.thread_id", code="invalid_value")
        last = raw[-1] if isinstance(raw[-1], dict) else {}
        if last.get("role") != "user":
            raise OpenAIError(400, "with a thread, the last message must be the user's new "
                              "one", param="messages", code="invalid_value")
        text = _text(last.get("content"))
        key = thread_key(tenant_id, thread)

        async def on_thread(on_token: OnToken | None) -> tuple[str, dict[str, int]]:
            async def on_event(event: TurnEvent) -> None:
                if on_token is not None and type(event) is Token:
                    await on_token(event.text)

            result = await state.runner.run(agent, key, text,
                                            on_event if on_token is not None else None)
            return result.reply.text, _usage(result.new_messages)

        return on_thread
    try:
        messages = convert_to_messages([m for m in raw if isinstance(m, dict)])
    except (ValueError, NotImplementedError) as exc:
        raise OpenAIError(400, f"messages: {exc}", param="messages",
                          code="invalid_value") from exc
    graph = state.agent_factory.stateless_graph
    limit = 2 * state.settings.max_tool_rounds + 1

    async def stateless(on_token: OnToken | None) -> tuple[str, dict[str, int]]:
        async with asyncio.timeout(state.settings.turn_timeout_s):
            final = await state.runner.stateless(graph, agent, messages, on_token, limit)
        new = final[len(messages):]
        reply = next((m for m in reversed(new) if isinstance(m, AIMessage)), None)
        return (reply.text if reply is not None else ""), _usage(new)

    return stateless

