"""CPU per chat-completions call, by client, against the mock OpenAI server.

    python -m bench.upstream_client [--calls 500] [--tokens 1 50] [--rounds 3]

Sequential calls on one event loop (uvloop), each streamed to its end (chunks parsed) or
whole; reports the calling process's CPU per call, median over rounds, for:
- ``ChatCompletions`` (app/llm/upstream.py, aiohttp): what the service uses;
- a bare ``httpx.AsyncClient`` posting the same bytes and parsing the same lines;
- the OpenAI SDK (``AsyncOpenAI`` on httpx): what ChatOpenAI uses.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import orjson
import uvloop

from app.llm.upstream import ChatCompletions
from tests.servers.processes import start_mock_openai

Call = Callable[[], Awaitable[None]]


def body(stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are helpful."},
                     {"role": "user", "content": "hi"}],
    }
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


def clients(base_url: str, stream: bool) -> tuple[dict[str, Call], Callable[[], Awaitable[None]]]:
    ours = ChatCompletions(base_url, "sk-bench", max_connections=10, connect_timeout_s=5,
                           read_timeout_s=30, max_retries=0)
    bare = httpx.AsyncClient()
    sdk = openai.AsyncOpenAI(api_key="sk-bench", base_url=base_url, http_client=httpx.AsyncClient())
    data = body(stream)
    raw = orjson.dumps(data)
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}

    async def with_ours() -> None:
        if not stream:
            await ours.create(data)
            return
        async with ours.stream(data) as chunks:
            async for _ in chunks:
                pass

    async def with_httpx() -> None:
        request = bare.build_request("POST", f"{base_url}/chat/completions", content=raw,
                                     headers=headers)
        response = await bare.send(request, stream=True)
        try:
            if not stream:
                orjson.loads(await response.aread())
                return
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    orjson.loads(line[5:])
        finally:
            await response.aclose()

    async def with_sdk() -> None:
        if not stream:
            await sdk.chat.completions.create(**data)
            return
        async for _ in await sdk.chat.completions.create(**data):
            pass

    async def close() -> None:
        await ours.aclose()
        await bare.aclose()
        await sdk.close()

    return ({"ChatCompletions (aiohttp)": with_ours, "bare httpx": with_httpx,
             "OpenAI SDK (httpx)": with_sdk}, close)


async def cpu_per_call(call: Call, calls: int) -> float:
    for _ in range(min(30, calls)):
        await call()
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls


async def run(args: argparse.Namespace) -> None:
    for tokens in args.tokens:
        mock = start_mock_openai(None, "--reply-tokens", str(tokens))
        try:
            for stream in (True, False):
                calls, close = clients(f"http://127.0.0.1:{mock.port}/v1", stream)
                try:
                    print(f"{'streamed' if stream else 'whole'}, {tokens} token(s):")
                    results: dict[str, float] = {}
                    for name, call in calls.items():
                        results[name] = statistics.median(
                            [await cpu_per_call(call, args.calls) for _ in range(args.rounds)])
                    ours = results["ChatCompletions (aiohttp)"]
                    for name, value in results.items():
                        print(f"  {name:28} {value * 1000:6.3f} ms CPU/call "
                              f"({value / ours:4.1f}x)", flush=True)
                finally:
                    await close()
        finally:
            mock.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
