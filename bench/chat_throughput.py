"""JSON chat turns per second on one worker, next to the OpenAI client alone.

    python -m bench.chat_throughput [--concurrency 32] [--seconds 10] [--rounds 1]
                                    [--warmup 0] [--redis] [--set AGENTHOST_NAME=value ...]

Starts the mock OpenAI server (no latency) and the service (``python -m app``, one
worker; in-memory persistence, or a Redis 8 it starts with ``--redis``), then:
- ceiling: the OpenAI Python client alone calling the mock, same concurrency;
- service: ``POST .../messages`` on 1,000 rotating threads, same concurrency.
Both are warmed up (``--warmup`` seconds each), then measured in ``--rounds`` alternating
slices of ``--seconds`` each, so that the machine's drift (this shared VM moves ±30 %
within minutes) falls on both alike. Reports each slice, the medians, the service's
median as a share of the ceiling's, p50/p99 latency and the service's RSS before and
after. ``--set`` passes settings to the service (e.g. ``AGENTHOST_MEMORY_TRACEMALLOC=true``
to price allocation tracing). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import openai
import psutil

from tests.servers.processes import start_app, start_mock_openai, start_redis


async def drive(concurrency: int, seconds: float, call) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


def summary(name: str, rate: float, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    print(f"{name:<28} {rate:8.1f}/s   p50 {statistics.median(ordered) * 1000:6.1f} ms   "
          f"p99 {ordered[int(0.99 * len(ordered))] * 1000:6.1f} ms", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0)
    parser.add_argument("--redis", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the service, repeatable")
    args = parser.parse_args()
    mock = start_mock_openai()
    redis = start_redis() if args.redis else None
    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
           "AGENTHOST_LOG_LEVEL": "WARNING"}
    if redis is not None:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    env.update(item.split("=", 1) for item in args.set)
    app = start_app(env)
    try:
        client = openai.AsyncOpenAI(api_key="sk-bench", base_url=env["OPENAI_BASE_URL"],
                                    http_client=httpx.AsyncClient(
                                        limits=httpx.Limits(max_connections=256)))

        async def direct(i: int) -> None:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])

        process = psutil.Process(app.pid)
        before = process.memory_info().rss
        name = f"service ({'redis' if redis else 'memory'})"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=60,
                                     limits=httpx.Limits(max_connections=256)) as http:
            async def turn(i: int) -> None:
                response = await http.post(f"/v1/tenants/demo/threads/t{i % 1000}/messages",
                                           json={"message": f"hello {i}"})
                response.raise_for_status()

            if args.warmup:
                await drive(args.concurrency, args.warmup, direct)
                await drive(args.concurrency, args.warmup, turn)
            rates: dict[str, list[float]] = {"OpenAI client alone": [], name: []}
            for _ in range(args.rounds):
                for label, call in (("OpenAI client alone", direct), (name, turn)):
                    rate, latencies = await drive(args.concurrency, args.seconds, call)
                    summary(label, rate, latencies)
                    rates[label].append(rate)
        if args.rounds > 1:
            ceiling, served = (statistics.median(r) for r in rates.values())
            print(f"medians over {args.rounds} rounds: ceiling {ceiling:.1f}/s, "
                  f"{name} {served:.1f}/s = {served / ceiling:.0%} of the ceiling")
        after = process.memory_info().rss
        print(f"service RSS {before / 2**20:.1f} MB before, {after / 2**20:.1f} MB after")
    finally:
        app.stop()
        mock.stop()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
