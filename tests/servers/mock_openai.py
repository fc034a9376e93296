"""A mock OpenAI-compatible chat-completions server, for tests and load benchmarks.

Run by hand: ``python -m tests.servers.mock_openai --port 9000 --latency-ms 20``.

Replies are deterministic and show what the model was sent:
``mock reply to: <last user text> (saw N messages)``; with ``--reply-tokens N`` the reply
is N tokens instead (for load tests). Triggers inside the last user message:
- ``[[tool:NAME {json args}]]`` asks for that tool when the request offers it; the next
  call (ending with the tool result) answers ``tool NAME returned: <result>``.
- ``[[fail:500]]`` / ``[[fail:429]]`` answer that status (429 with ``retry-after-ms: 10``);
  ``[[fail:hang]]`` never answers; ``[[fail:drop]]`` streams a few tokens then closes the
  connection; ``[[fail:sse_error]]`` streams a few tokens then an OpenAI-style
  ``data: {"error": ...}`` event; ``[[fail:nodone]]`` ends the stream without
  ``data: [DONE]``; ``[[fail:badchunk]]`` streams a chunk that is not JSON;
  ``[[fail:longline]]`` streams a line over 4 MiB; ``[[fail:badjson]]`` answers a body
  that is not JSON.
- ``[[flaky:N]]`` answers 503 (``retry-after-ms: 10``) to the first N requests with that
  same last user message, then normally: for retries.
- ``[[gate:NAME]]`` holds a streamed reply after its first token (a whole reply when not
  streamed) until ``POST /_control`` with ``{"release": "NAME"}`` (at most 30 s): a test
  sees what happens meanwhile.
- ``[[tokens:N]]`` replies with N tokens (``[[tokensize:B]]`` pads each to B bytes);
  ``[[slow:MS]]`` waits MS ms between tokens.

``POST /_control`` with ``{"mode": "ok|500|429|hang|drop", "latency_ms": .., "token_delay_ms": ..,
"models_status": ..}`` (the status ``GET /v1/models`` answers)
changes behaviour for every later request; ``GET /_requests`` lists the last 200 requests
(message count, roles, model, temperature, stream, client port) and a total count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_TOOL_RE = re.compile(r"\[\[tool:([A-Za-z0-9_-]+)\s*(\{.*?\})?\]\]", re.DOTALL)
_FAIL_RE = re.compile(r"\[\[fail:(\w+)\]\]")
_TOKENS_RE = re.compile(r"\[\[tokens:(\d+)\]\]")
_SLOW_RE = re.compile(r"\[\[slow:(\d+)\]\]")
_TOKEN_SIZE_RE = re.compile(r"\[\[tokensize:(\d+)\]\]")
_FLAKY_RE = re.compile(r"\[\[flaky:(\d+)\]\]")
_GATE_RE = re.compile(r"\[\[gate:([\w-]+)\]\]")
GATE_MAX_S = 30.0
FLAKY_MEMORY = 1000


@dataclass
class Behaviour:
    mode: str = "ok"
    latency_ms: float = 0.0
    token_delay_ms: float = 0.0
    reply_tokens: int = 0
    models_status: int = 200


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class MockOpenAI:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: deque[dict[str, Any]] = deque(maxlen=200)
        self.gates: dict[str, asyncio.Event] = {}
        self.count = 0
        self.flaky_seen: dict[str, int] = {}
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/_control", self.control, methods=["POST"]),
            Route("/_requests", self.list_requests, methods=["GET"]),
        ])

    async def models(self, request: Request) -> Response:
        status = self.behaviour.models_status
        if status != 200:
            return JSONResponse({"error": {"message": f"mock models {status}", "type": "mock"}},
                                status_code=status)
        return JSONResponse({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    def _gate(self, name: str) -> asyncio.Event:
        gate = self.gates.get(name)
        if gate is None:
            gate = self.gates[name] = asyncio.Event()
        return gate

    async def control(self, request: Request) -> Response:
        body = await request.json()
        for name, value in body.items():
            if hasattr(self.behaviour, name):
                setattr(self.behaviour, name, type(getattr(self.behaviour, name))(value))
        if body.get("reset_requests"):
            self.requests.clear()
            self.count = 0
        if body.get("release"):
            self._gate(str(body["release"])).set()
        return JSONResponse(asdict(self.behaviour))

    async def list_requests(self, request: Request) -> Response:
        return JSONResponse({"count": self.count, "requests": list(self.requests)})

    def _flaky(self, messages: list[dict[str, Any]]) -> bool:
        """Whether this request is one of the first N of a ``[[flaky:N]]`` message."""
        text = _text(messages[-1].get("content")) if messages else ""
        flaky = _FLAKY_RE.search(text)
        if not flaky or messages[-1].get("role") != "user":
            return False
        seen = self.flaky_seen.get(text, 0)
        if len(self.flaky_seen) >= FLAKY_MEMORY:
            self.flaky_seen.clear()
        self.flaky_seen[text] = seen + 1
        return seen < int(flaky.group(1))

    def _plan(self, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], str]:
        """(reply text, tool calls, failure mode) for this request."""
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        user_text = _text(last_user.get("content"))
        fail = _FAIL_RE.search(_text(last.get("content")))
        mode = fail.group(1) if fail and last.get("role") == "user" else self.behaviour.mode
        if last.get("role") == "tool":
            names = {c.get("id"): c.get("function", {}).get("name")
                     for m in messages for c in m.get("tool_calls") or []}
            name = names.get(last.get("tool_call_id"), "unknown")
            return f"tool {name} returned: {_text(last.get('content'))}", [], mode
        offered = {t.get("function", {}).get("name") for t in body.get("tools") or []}
        wanted = _TOOL_RE.search(user_text) if last.get("role") == "user" else None
        if wanted and wanted.group(1) in offered:
            call = {
                "id": f"call_{uuid.uuid4().hex[:16]}",
                "type": "function",
                "function": {"name": wanted.group(1), "arguments": wanted.group(2) or "{}"},
            }
            return "", [call], mode
        tokens = _TOKENS_RE.search(user_text)
        count = int(tokens.group(1)) if tokens else self.behaviour.reply_tokens
        if count:
            size = _TOKEN_SIZE_RE.search(user_text)
            pad = int(size.group(1)) if size else 0
            return " ".join(f"tok{i}".ljust(pad, "x") for i in range(count)), [], mode
        visible = _TOOL_RE.sub("", _FAIL_RE.sub("", user_text)).strip()
        return f"mock reply to: {visible} (saw {len(messages)} messages)", [], mode

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.count += 1
        messages = body.get("messages", [])
        self.requests.append({
            "model": body.get("model"),
            "stream": bool(body.get("stream")),
            "temperature": body.get("temperature"),
            "message_count": len(messages),
            "roles": [m.get("role") for m in messages],
            "chars": [len(_text(m.get("content"))) for m in messages],
            "tools": [t.get("function", {}).get("name") for t in body.get("tools") or []],
            "client_port": request.client.port if request.client else None,
            "organization": request.headers.get("openai-organization"),
        })
        if self._flaky(messages):
            return JSONResponse(
                {"error": {"message": "mock flaky failure", "type": "mock", "code": "flaky"}},
                status_code=503, headers={"retry-after-ms": "10"},
            )
        text, calls, mode = self._plan(body)
        if self.behaviour.latency_ms:
            await asyncio.sleep(self.behaviour.latency_ms / 1000)
        if mode in ("500", "429", "503"):
            return JSONResponse(
                {"error": {"message": f"mock failure {mode}", "type": "mock", "code": mode}},
                status_code=int(mode),
                headers={"retry-after-ms": "10"} if mode == "429" else None,
            )
        if mode == "hang":
            await asyncio.sleep(3600)
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                 "total_tokens": prompt_tokens + len(text.split())}
        model = body.get("model", "mock")
        if mode == "badjson":
            return Response(b"this is not json", media_type="application/json")
        last_text = _text(messages[-1].get("content")) if messages else ""
        gate = _GATE_RE.search(last_text)
        if not body.get("stream"):
            if gate is not None:  # a whole reply is held until released
                await asyncio.wait_for(self._gate(gate.group(1)).wait(), GATE_MAX_S)
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            return JSONResponse({
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": usage,
            })
        slow = _SLOW_RE.search(last_text)
        delay = (int(slow.group(1)) if slow else self.behaviour.token_delay_ms) / 1000
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._stream(model, text, calls, usage if include_usage else None, delay, mode,
                         self._gate(gate.group(1)) if gate else None),
            media_type="text/event-stream",
        )

    async def _stream(
        self,
        model: str,
        text: str,
        calls: list[dict[str, Any]],
        usage: dict[str, int] | None,
        delay: float,
        mode: str,
        gate: asyncio.Event | None = None,
    ) -> AsyncIterator[bytes]:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                       "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                       **extra}
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if mode == "badchunk":
            yield b"data: {this is not json\n\n"
            return
        if mode == "longline":
            yield b"data: " + b"x" * (4 * 1024 * 1024 + 16)  # and never a newline
            return
        if calls:
            for index, call in enumerate(calls):
                yield chunk({"tool_calls": [{"index": index, **call}]})
        else:
            words = re.findall(r"\S+\s*", text)
            for index, word in enumerate(words):
                if delay:
                    await asyncio.sleep(delay)
                if mode == "drop" and index == 3:
                    raise ConnectionResetError("mock drops the stream")
                if mode == "sse_error" and index == 3:
                    error = {"error": {"message": "mock overloaded mid-stream",
                                       "type": "server_error", "code": "overloaded"}}
                    yield b"data: " + json.dumps(error).encode() + b"\n\n"
                    return
                yield chunk({"content": word})
                if gate is not None and index == 0:
                    await asyncio.wait_for(gate.wait(), GATE_MAX_S)
        yield chunk({}, "tool_calls" if calls else "stop")
        if usage is not None:
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [], "usage": usage}
            yield b"data: " + json.dumps(payload).encode() + b"\n\n"
        if mode != "nodone":
            yield b"data: [DONE]\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--reply-tokens", type=int, default=0)
    parser.add_argument("--mode", default="ok", choices=["ok", "500", "429", "503", "hang", "drop"])
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="and this private key (PEM)")
    args = parser.parse_args()
    mock = MockOpenAI(Behaviour(mode=args.mode, latency_ms=args.latency_ms,
                                token_delay_ms=args.token_delay_ms,
                                reply_tokens=args.reply_tokens))
    uvicorn.run(mock.app, host=args.host, port=args.port, log_level="warning", access_log=False,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
