"""Soak: the service's memory over batches of multi-turn conversations, per backend.

    python -m bench.soak [--backend memory|redis|both] [--batches 5] [--threads 2000]
                         [--turns 3] [--concurrency 16] [--sse-share 0.5] [--tool-share 0.2]
                         [--memory-max-threads N]

Starts the mock OpenAI server (no latency), a Redis 8 for the Redis backend, and the
service as an operator runs it (``python -m app``, one worker, real sockets). Each batch
is ``--threads`` new threads of ``--turns`` turns each: a share streamed over SSE, the
rest JSON, a share with a tool call on the second turn. After each batch it prints the
service's RSS and PSS and the batch's turns per second, as a table. Prints figures;
asserts nothing.

The in-memory backend keeps up to AGENTHOST_MEMORY_MAX_THREADS (10,000) threads, so its
RSS rises until that many are stored and then levels off (``--memory-max-threads`` sets
a lower cap to see it sooner); the Redis backend keeps none in the process and should
level off at once.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import psutil

from tests.servers.processes import ManagedProcess, start_app, start_mock_openai, start_redis

TOOL_TURN = "what time is it? [[tool:current_time {}]]"


def memory_mb(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.pss / 2**20


async def sse_turn(client: httpx.AsyncClient, path: str, text: str) -> None:
    async with client.stream("POST", f"{path}/stream", json={"message": text}) as response:
        response.raise_for_status()
        last = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                last = line[7:]
        if last != "done":
            raise RuntimeError(f"stream ended with {last!r}")


async def json_turn(client: httpx.AsyncClient, path: str, text: str) -> None:
    response = await client.post(f"{path}/messages", json={"message": text})
    response.raise_for_status()


async def batch(client: httpx.AsyncClient, number: int, args: argparse.Namespace) -> int:
    gate = asyncio.Semaphore(args.concurrency)
    sse_every = round(1 / args.sse_share) if args.sse_share > 0 else 0
    tool_every = round(1 / args.tool_share) if args.tool_share > 0 else 0

    async def thread(i: int) -> None:
        async with gate:
            path = f"/v1/tenants/demo/threads/soak-{number}-{i}"
            turn = sse_turn if sse_every and i % sse_every == 0 else json_turn
            for t in range(args.turns):
                tool = t == 1 and tool_every and i % tool_every == 0
                await turn(client, path, TOOL_TURN if tool else f"turn {t} of thread {i}")

    await asyncio.gather(*(thread(i) for i in range(args.threads)))
    return args.threads * args.turns


async def soak(backend: str, mock: ManagedProcess, args: argparse.Namespace) -> None:
    redis = start_redis() if backend == "redis" else None
    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
           "AGENTHOST_LOG_LEVEL": "WARNING"}
    if redis is not None:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    if args.memory_max_threads:
        env["AGENTHOST_MEMORY_MAX_THREADS"] = str(args.memory_max_threads)
    app = start_app(env)
    try:
        rss, pss = memory_mb(app.pid)
        print(f"\n{backend}: {args.batches} batches of {args.threads} threads x {args.turns} "
              f"turns, concurrency {args.concurrency}, {args.sse_share:.0%} streamed, "
              f"{args.tool_share:.0%} with a tool call")
        print("| threads so far | RSS MB | PSS MB | turns/s |")
        print("|---|---|---|---|")
        print(f"| 0 | {rss:.0f} | {pss:.0f} | |", flush=True)
        limits = httpx.Limits(max_connections=args.concurrency * 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=120,
                                     limits=limits) as client:
            for number in range(1, args.batches + 1):
                started = time.perf_counter()
                turns = await batch(client, number, args)
                rate = turns / (time.perf_counter() - started)
                rss, pss = memory_mb(app.pid)
                print(f"| {number * args.threads:,} | {rss:.0f} | {pss:.0f} | {rate:.0f} |",
                      flush=True)
    finally:
        app.stop()
        if redis is not None:
            redis.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["memory", "redis", "both"], default="both")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sse-share", type=float, default=0.5)
    parser.add_argument("--tool-share", type=float, default=0.2)
    parser.add_argument("--memory-max-threads", type=int, default=0,
                        help="AGENTHOST_MEMORY_MAX_THREADS for the service (default: its own)")
    args = parser.parse_args()
    mock = start_mock_openai()
    try:
        for backend in (["memory", "redis"] if args.backend == "both" else [args.backend]):
            await soak(backend, mock, args)
    finally:
        mock.stop()


if __name__ == "__main__":
    asyncio.run(main())
