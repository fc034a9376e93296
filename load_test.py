"""Load test for agenthost: tenants x threads x turns at a concurrency, JSON or SSE.

    python load_test.py --url http://127.0.0.1:8000 [--tenants 1] [--threads 50] [--turns 3]
                        [--concurrency 16] [--mode json|sse|mixed] [--key KEY]
                        [--min-success 0.99] [--plot run.png] [--report run.json]

or, cost-free and self-contained (mock LLM, Redis and the service started here, stopped at
the end):

    python load_test.py --spawn-mock-llm --mock-latency-ms 200 --mock-token-delay-ms 10 \\
                        --spawn-redis --spawn-service --workers 2 --plot run.png

Reports the success rate, turns/s, latency p50/p95/p99, time to first token for streamed
turns, errors by kind, and ``/health/memory`` sampled every second during the run (the
service's usage and pressure); ``--plot`` draws usage and turns/s over time (matplotlib:
``pip install -r requirements-bench.txt``), ``--report`` writes all of it as JSON. Exits 1
when the success rate is below ``--min-success``. Tenants other than ``demo`` must exist
(``--tenant-prefix``; the admin API creates them). Needs tqdm (in requirements-test.txt and
requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    done: int = 0
    ok: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def json_turn(client: httpx.AsyncClient, path: str, text: str, out: Results) -> None:
    response = await client.post(f"{path}/messages", json={"message": text})
    if response.status_code != 200:
        out.errors[f"http_{response.status_code}:{error_code(response)}"] += 1
        return
    out.ok += 1


async def sse_turn(client: httpx.AsyncClient, path: str, text: str, out: Results,
                   started: float) -> None:
    async with client.stream("POST", f"{path}/stream", json={"message": text}) as response:
        if response.status_code != 200:
            await response.aread()
            out.errors[f"http_{response.status_code}:{error_code(response)}"] += 1
            return
        event, first = "", True
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "token" and first:
                    out.ttft.append(time.perf_counter() - started)
                    first = False
                elif event == "error":
                    out.errors["stream_error"] += 1
                    return
        if event != "done":
            out.errors["stream_cut"] += 1
            return
    out.ok += 1


def error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def run_turns(args: argparse.Namespace, out: Results, bar: tqdm) -> float:
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, headers=headers,
                                 limits=limits) as client:
        async def conversation(tenant: str, thread: int) -> None:
            async with gate:
                path = f"/v1/tenants/{tenant}/threads/load-{args.run_id}-{thread}"
                streamed = args.mode == "sse" or (args.mode == "mixed" and thread % 2 == 0)
                for turn in range(args.turns):
                    text = f"{args.message} (turn {turn + 1})"
                    started = time.perf_counter()
                    try:
                        if streamed:
                            await sse_turn(client, path, text, out, started)
                        else:
                            await json_turn(client, path, text, out)
                    except httpx.HTTPError as exc:
                        out.errors[type(exc).__name__] += 1
                    out.latencies.append(time.perf_counter() - started)
                    out.done += 1
                    bar.update(1)

        tenants = ["demo"] if args.tenants == 1 and not args.tenant_prefix else [
            f"{args.tenant_prefix or 'tenant'}{i}" for i in range(args.tenants)]
        started = time.perf_counter()
        await asyncio.gather(*(conversation(tenant, thread) for tenant in tenants
                               for thread in range(args.threads)))
        return time.perf_counter() - started


async def sample_memory(url: str, out: Results, every_s: float) -> None:
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while True:
            point: dict[str, Any] = {"t": round(time.perf_counter() - started, 2),
                                     "turns_done": out.done}
            try:
                memory = (await client.get("/health/memory")).json()
                point.update(usage_mb=memory["usage_mb"], limit_mb=memory["limit_mb"],
                             pressure=memory["pressure"], rss_mb=memory["rss_mb"])
            except (httpx.HTTPError, ValueError, KeyError):
                point["unreachable"] = True
            out.timeline.append(point)
            await asyncio.sleep(every_s)


def report(args: argparse.Namespace, out: Results, wall_s: float) -> dict[str, Any]:
    total = out.done
    ms = [x * 1000 for x in out.latencies]
    ttft = [x * 1000 for x in out.ttft]
    usage = [p["usage_mb"] for p in out.timeline if "usage_mb" in p]
    return {
        "url": args.url, "mode": args.mode, "tenants": args.tenants, "threads": args.threads,
        "turns_per_thread": args.turns, "concurrency": args.concurrency,
        "turns": total, "ok": out.ok,
        "success_rate": round(out.ok / total, 4) if total else 0.0,
        "wall_s": round(wall_s, 2), "turns_per_s": round(total / wall_s, 1) if wall_s else 0,
        "latency_ms": {f"p{int(q * 100)}": round(v, 1) for q in (0.5, 0.95, 0.99)
                       if (v := quantile(ms, q)) is not None},
        "ttft_ms": {f"p{int(q * 100)}": round(v, 1) for q in (0.5, 0.95, 0.99)
                    if (v := quantile(ttft, q)) is not None},
        "errors": dict(out.errors),
        "memory_mb": ({"start": usage[0], "peak": max(usage), "end": usage[-1]}
                      if usage else None),
        "pressure_seen": sorted({p["pressure"] for p in out.timeline if "pressure" in p}),
        "timeline": out.timeline,
    }


def plot(result: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -r requirements-bench.txt)")
        return
    points = [p for p in result["timeline"] if "usage_mb" in p]
    times = [p["t"] for p in points]
    rates = [0.0] + [(b["turns_done"] - a["turns_done"]) / max(b["t"] - a["t"], 1e-9)
                     for a, b in itertools.pairwise(points)]
    figure, memory_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    memory_axis.plot(times, [p["usage_mb"] for p in points], color="tab:blue",
                     label="memory usage (MB)")
    if points:
        memory_axis.axhline(points[0]["limit_mb"], color="grey", linestyle="--", linewidth=1,
                            label="memory limit")
    memory_axis.set_xlabel("seconds")
    memory_axis.set_ylabel("MB")
    memory_axis.set_ylim(bottom=0)
    rate_axis = memory_axis.twinx()
    rate_axis.plot(times, rates, color="tab:orange", label="turns/s")
    rate_axis.set_ylabel("turns/s")
    rate_axis.set_ylim(bottom=0)
    lines = memory_axis.get_legend_handles_labels()
    more = rate_axis.get_legend_handles_labels()
    memory_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    memory_axis.set_title(f"agenthost load test: {result['turns']} turns, "
                          f"{result['success_rate']:.1%} ok, {result['turns_per_s']} turns/s")
    figure.tight_layout()
    figure.savefig(path)
    print(f"plot: {path}")


def spawn(args: argparse.Namespace) -> list[Any]:
    """Start what the flags ask for; returns them to stop. Uses the repo's test servers."""
    from tests.servers.processes import (
        GUNICORN_ARGS,
        start_app,
        start_mock_openai,
        start_redis,
    )

    started: list[Any] = []
    env: dict[str, str] = {"AGENTHOST_LOG_LEVEL": "WARNING"}
    if args.spawn_mock_llm:
        mock = start_mock_openai(None, "--latency-ms", str(args.mock_latency_ms),
                                 "--token-delay-ms", str(args.mock_token_delay_ms))
        started.append(mock)
        env.update(OPENAI_API_KEY="sk-load-test",
                   OPENAI_BASE_URL=f"http://127.0.0.1:{mock.port}/v1")
        print(f"mock LLM at http://127.0.0.1:{mock.port}/v1")
    if args.spawn_redis:
        redis = start_redis()
        started.append(redis)
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    if args.spawn_service:
        env["AGENTHOST_WORKERS"] = str(args.workers)
        gunicorn = [str(Path(sys.executable).parent / "gunicorn"), *GUNICORN_ARGS]
        service = start_app(env, args=gunicorn)
        started.append(service)
        args.url = f"http://127.0.0.1:{service.port}"
        print(f"service (Gunicorn, {args.workers} workers"
              f"{', Redis' if args.spawn_redis else ''}) at {args.url}")
    return started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--tenant-prefix", default="")
    parser.add_argument("--threads", type=int, default=50, help="threads per tenant")
    parser.add_argument("--turns", type=int, default=3, help="turns per thread")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", choices=["json", "sse", "mixed"], default="json")
    parser.add_argument("--message", default="Hello! Can I book a cleaning next week?")
    parser.add_argument("--key", help="a tenant or service key, when auth is on")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--min-success", type=float, default=0.99)
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--plot")
    parser.add_argument("--report")
    parser.add_argument("--run-id", default=str(int(time.time())))
    parser.add_argument("--spawn-mock-llm", action="store_true")
    parser.add_argument("--mock-latency-ms", type=int, default=200)
    parser.add_argument("--mock-token-delay-ms", type=int, default=10)
    parser.add_argument("--spawn-redis", action="store_true")
    parser.add_argument("--spawn-service", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = spawn(args) if (args.spawn_mock_llm or args.spawn_redis
                              or args.spawn_service) else []
    try:
        out = Results()
        total = args.tenants * args.threads * args.turns
        sampler = asyncio.create_task(sample_memory(args.url, out, args.sample_s))
        with tqdm(total=total, unit="turn", file=sys.stderr) as bar:
            wall = await run_turns(args, out, bar)
        await asyncio.sleep(min(args.sample_s, 1.0))  # one sample after the last turn
        sampler.cancel()
        return report(args, out, wall)
    finally:
        for process in reversed(started):
            process.stop()


def main() -> int:
    args = parse_args()
    result = asyncio.run(run(args))
    summary = {k: v for k, v in result.items() if k != "timeline"}
    print(json.dumps(summary, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
    if result["success_rate"] < args.min_success:
        print(f"FAIL: success rate {result['success_rate']:.2%} is below "
              f"{args.min_success:.2%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
