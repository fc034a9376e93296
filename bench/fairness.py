"""Fairness: one tenant floods, another chats; how much slower does the second get?

    python -m bench.fairness [--flood-concurrency 64] [--calm-turns 40] [--latency-ms 50]
                             [--limit 8] [--seconds 20]

Starts the mock OpenAI server (``--latency-ms`` per call) and the service (``python -m
app``, in-memory) twice: without per-tenant limits, and with the flooding tenant limited to
``--limit`` concurrent turns. Each time: the calm tenant's turn latency alone (p50), then
again while the flood runs (``--flood-concurrency`` clients sending turns back to back,
retrying a 429 after its Retry-After), and the ratio. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tests.servers.processes import start_app, start_mock_openai


async def calm_p50(client: httpx.AsyncClient, base: str, turns: int, tag: str) -> float:
    latencies = []
    for i in range(turns):
        started = time.perf_counter()
        response = await client.post(f"{base}/calm/threads/{tag}-{i}/messages",
                                     json={"message": "hello"})
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


async def flood(client: httpx.AsyncClient, base: str, stop: asyncio.Event,
                counts: dict[int, int]) -> None:
    turn = 0
    while not stop.is_set():
        turn += 1
        response = await client.post(f"{base}/flood/threads/f{id(stop)}-{turn}/messages",
                                     json={"message": "flood"})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if response.status_code == 429:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))


async def measure(url: str, args: argparse.Namespace) -> tuple[float, float, dict[int, int]]:
    base = f"{url}/v1/tenants"
    limits = httpx.Limits(max_connections=args.flood_concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await calm_p50(client, base, 5, "warm")
        alone = await calm_p50(client, base, args.calm_turns, "alone")
        stop, counts = asyncio.Event(), {}
        flooding = [asyncio.create_task(flood(client, base, stop, counts))
                    for _ in range(args.flood_concurrency)]
        await asyncio.sleep(1)
        loaded = await calm_p50(client, base, args.calm_turns, "loaded")
        stop.set()
        await asyncio.gather(*flooding)
    return alone, loaded, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood-concurrency", type=int, default=64)
    parser.add_argument("--calm-turns", type=int, default=40)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--limit", type=int, default=8)
    args = parser.parse_args()
    mock = start_mock_openai(None, "--latency-ms", str(args.latency_ms))
    try:
        for limit in (0, args.limit):
            with tempfile.TemporaryDirectory() as tmp:
                tenants = Path(tmp) / "tenants.yaml"
                tenants.write_text(yaml.safe_dump(
                    {"flood": {"concurrent_turns": limit}, "calm": {}}))
                app = start_app({"OPENAI_API_KEY": "sk-bench",
                                 "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
                                 "AGENTHOST_TENANTS_FILE": str(tenants),
                                 "AGENTHOST_LOG_LEVEL": "WARNING"})
                try:
                    alone, loaded, counts = asyncio.run(
                        measure(f"http://127.0.0.1:{app.port}", args))
                finally:
                    app.stop()
            label = f"flood limited to {limit} concurrent" if limit else "no limits"
            answers = dict(sorted(counts.items()))
            print(f"{label}: calm tenant p50 {alone:.0f} ms alone, {loaded:.0f} ms during "
                  f"the flood ({loaded / alone:.1f}x); flood answers {answers}")
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
