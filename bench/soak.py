"""Soak: the service's memory over many conversations, per backend, sampled over time.

    python -m bench.soak [--backend memory|redis|cluster|both] [--batches 10] [--threads 3000]
                         [--turns 2] [--message-bytes 1500] [--concurrency 16]
                         [--sse-share 0.5] [--tool-share 0.2] [--limit-mb N]
                         [--memory-max-threads N] [--plot soak.png]
                         [--burst-threads 300 --burst-reply-kb 2000 --burst-concurrency 48]

Starts the mock OpenAI server (no latency), a Redis 8 for the Redis backend (a 3-node
Redis Cluster for ``cluster``: the module-free checkpointer, the cluster client), and the
service as an operator runs it (``python -m app``, one worker, real sockets). Each batch
is ``--threads`` new threads of ``--turns`` turns each, user messages of
``--message-bytes`` characters of prose (the mock's reply quotes them, so replies are as
long): a share streamed over SSE, the rest JSON, a share with a tool call on the second
turn. Meanwhile the service's PSS and pressure level are sampled every ``--sample-s``.

With ``--burst-threads``, a burst follows the batches: that many threads at
``--burst-concurrency``, each one JSON turn whose reply is ``--burst-reply-kb`` KB (the
mock's ``[[tokens:N]] [[tokensize:1000]]``), to push a service under ``--limit-mb`` into
pressure; then a calm batch of ordinary traffic shows whether it recovers.

It prints a table per batch (RSS, PSS, turns/s, refusals, pressure), then the growth over
the second half of the run, the peak against ``--limit-mb`` when given, and draws every
run's PSS over threads served into ``--plot`` (needs matplotlib:
``pip install -r requirements-bench.txt``). A 503 ``memory_pressure`` is counted and
retried after its Retry-After, as a client should. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import httpx
import psutil

from bench.prose import Prose
from tests.servers.processes import (
    ManagedProcess,
    RedisCluster,
    start_app,
    start_mock_openai,
    start_redis,
)

TOOL_TURN = "what time is it? [[tool:current_time {}]]"
MAX_ATTEMPTS = 50


@dataclass
class Run:
    name: str
    limit_mb: float | None
    threads_done: int = 0
    refused: int = 0
    resets: int = 0
    # seconds, threads served, RSS, PSS, USS (MB), pressure level
    samples: list[tuple[float, int, float, float, float, str]] = field(default_factory=list)

    def at(self, threads: int) -> tuple[float, int, float, float, float, str]:
        return next((s for s in self.samples if s[1] >= threads), self.samples[-1])


def memory_mb(pid: int) -> tuple[float, float, float]:
    """RSS, PSS and USS. A lone process's PSS moves when processes it shares library pages
    with come and go (the load generator, the mock); USS, its private pages, does not."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.pss / 2**20, info.uss / 2**20


class Refused(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


def check(response: httpx.Response) -> None:
    if response.status_code == 503 and b"memory_pressure" in response.content:
        raise Refused(float(response.headers.get("retry-after", "1")))
    response.raise_for_status()


async def sse_turn(client: httpx.AsyncClient, path: str, text: str) -> None:
    async with client.stream("POST", f"{path}/stream", json={"message": text}) as response:
        if response.status_code != 200:
            await response.aread()
            check(response)
        last = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                last = line[7:]
        if last != "done":
            raise RuntimeError(f"stream ended with {last!r}")


async def json_turn(client: httpx.AsyncClient, path: str, text: str) -> None:
    check(await client.post(f"{path}/messages", json={"message": text}))


async def batch(client: httpx.AsyncClient, number: int, args: argparse.Namespace,
                prose: Prose, run: Run, *, threads: int | None = None,
                concurrency: int | None = None, text: str | None = None,
                sse_share: float | None = None) -> int:
    threads = threads or args.threads
    turns = 1 if text else args.turns
    gate = asyncio.Semaphore(concurrency or args.concurrency)
    share = args.sse_share if sse_share is None else sse_share
    sse_every = round(1 / share) if share > 0 else 0
    tool_every = round(1 / args.tool_share) if args.tool_share > 0 else 0

    async def thread(i: int) -> None:
        async with gate:
            path = f"/v1/tenants/demo/threads/soak-{number}-{i}"
            turn = sse_turn if sse_every and i % sse_every == 0 else json_turn
            for t in range(turns):
                tool = t == 1 and tool_every and i % tool_every == 0
                said = text or (TOOL_TURN if tool else prose.message(args.message_bytes)
                                if args.message_bytes else f"turn {t} of thread {i}")
                for _ in range(MAX_ATTEMPTS):
                    try:
                        await turn(client, path, said)
                        break
                    except Refused as refused:
                        run.refused += 1
                        await asyncio.sleep(refused.retry_after)
                    except (httpx.RemoteProtocolError, httpx.ReadError):
                        # a keep-alive connection the server closed as it was reused
                        # (idle past uvicorn's 5 s while this client slept Retry-After)
                        run.resets += 1
                else:
                    raise RuntimeError(f"{path}: refused {MAX_ATTEMPTS} times")
            run.threads_done += 1

    await asyncio.gather(*(thread(i) for i in range(threads)))
    return threads * turns


async def sampler(app: ManagedProcess, client: httpx.AsyncClient, run: Run,
                  every_s: float) -> None:
    started = time.monotonic()
    while True:
        try:
            pressure = (await client.get("/health/memory")).json()["pressure"]
        except (httpx.HTTPError, KeyError, ValueError):
            pressure = "?"
        rss, pss, uss = memory_mb(app.pid)
        run.samples.append((time.monotonic() - started, run.threads_done, rss, pss, uss,
                            pressure))
        await asyncio.sleep(every_s)


async def soak(backend: str, mock: ManagedProcess, args: argparse.Namespace) -> Run:
    redis = start_redis() if backend == "redis" else None
    cluster = RedisCluster(3) if backend == "cluster" else None
    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
           "AGENTHOST_LOG_LEVEL": "WARNING"}
    if redis is not None:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    if cluster is not None:
        env["REDIS_URL"] = cluster.url
        env["AGENTHOST_REDIS_CLUSTER"] = "true"
    if args.memory_max_threads:
        env["AGENTHOST_MEMORY_MAX_THREADS"] = str(args.memory_max_threads)
    if args.limit_mb:
        env["AGENTHOST_MEMORY_LIMIT_MB"] = str(args.limit_mb)
    if args.max_reply_kb:
        env["AGENTHOST_LLM_MAX_REPLY_KB"] = str(args.max_reply_kb)
    env.update(item.split("=", 1) for item in args.set)
    name = backend + (f", limit {args.limit_mb:g} MB" if args.limit_mb else "")
    run = Run(name, args.limit_mb)
    prose = Prose()
    app = start_app(env)
    try:
        rss, pss, uss = memory_mb(app.pid)
        print(f"\n{name}: {args.batches} batches of {args.threads} threads x {args.turns} "
              f"turns, messages of {args.message_bytes or 'a few'} characters, concurrency "
              f"{args.concurrency}, {args.sse_share:.0%} streamed, {args.tool_share:.0%} with "
              "a tool call")
        print("| threads so far | RSS MB | PSS MB | USS MB | turns/s | refused in batch | "
              "pressure after |")
        print("|---|---|---|---|---|---|---|")
        print(f"| 0 | {rss:.0f} | {pss:.0f} | {uss:.0f} | | | |", flush=True)
        limits = httpx.Limits(max_connections=args.concurrency * 2 + 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=120,
                                     limits=limits) as client:
            sampling = asyncio.create_task(sampler(app, client, run, args.sample_s))
            try:
                phases = [("", number, {}) for number in range(1, args.batches + 1)]
                if args.burst_threads:
                    burst = {"threads": args.burst_threads,
                             "concurrency": args.burst_concurrency,
                             "text": f"[[tokens:{args.burst_reply_kb}]] [[tokensize:1000]]",
                             # JSON only: a Python client parsing 48 streams of 2 MB each
                             # would be the bottleneck (and cut off as a slow consumer)
                             "sse_share": 0.0}
                    phases += [("burst: ", args.batches + 1, burst),
                               ("calm: ", args.batches + 2, {})]
                for label, number, extra in phases:
                    started = time.perf_counter()
                    refused_before = run.refused
                    turns = await batch(client, number, args, prose, run, **extra)
                    rate = turns / (time.perf_counter() - started)
                    rss, pss, uss = memory_mb(app.pid)
                    report = (await client.get("/health/memory")).json()
                    print(f"| {label}{run.threads_done:,} | {rss:.0f} | {pss:.0f} | {uss:.0f} "
                          f"| {rate:.0f} | {run.refused - refused_before} | "
                          f"{report['pressure']} |", flush=True)
            finally:
                sampling.cancel()
        summarize(run, app)
    finally:
        app.stop()
        if redis is not None:
            redis.stop()
        if cluster is not None:
            cluster.stop()
    return run


def summarize(run: Run, app: ManagedProcess) -> None:
    half, end = run.at(run.threads_done // 2), run.samples[-1]
    growth = ", ".join(
        f"{name} {half[i]:.0f} -> {end[i]:.0f} MB ({100 * (end[i] - half[i]) / half[i]:+.1f} %)"
        for name, i in (("RSS", 2), ("PSS", 3), ("USS", 4)))
    peak_rss, peak_pss = max(s[2] for s in run.samples), max(s[3] for s in run.samples)
    levels = sorted({s[5] for s in run.samples})
    print(f"{run.name}: second half of the run: {growth}; peak RSS {peak_rss:.0f} MB, PSS "
          f"{peak_pss:.0f} MB; pressure levels seen: {', '.join(levels)}; {run.refused} "
          f"turns refused with 503 and retried; {run.resets} reused connections found closed "
          f"and retried; service "
          f"{'alive' if app.proc.poll() is None else 'DEAD'}")
    if run.limit_mb:
        print(f"{run.name}: peak PSS is {100 * peak_pss / run.limit_mb:.0f} % of the limit")


def plot(runs: list[Run], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install -r requirements-bench.txt)")
        return
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for run in runs:
        axis.plot([s[1] for s in run.samples], [s[3] for s in run.samples],
                  label=f"{run.name}: PSS")
        axis.plot([s[1] for s in run.samples], [s[4] for s in run.samples], linestyle=":",
                  label=f"{run.name}: USS")
        if run.limit_mb:
            axis.axhline(run.limit_mb, linestyle="--", linewidth=1, color="grey",
                         label=f"limit {run.limit_mb:g} MB")
    axis.set_xlabel("threads served")
    axis.set_ylabel("service memory (MB)")
    axis.set_ylim(bottom=0)
    axis.set_title("agenthost soak: memory over conversations served")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    print(f"plot: {path}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["memory", "redis", "cluster", "both"],
                        default="both")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--threads", type=int, default=3000)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--message-bytes", type=int, default=1500,
                        help="characters per user message (0: a few words)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sse-share", type=float, default=0.5)
    parser.add_argument("--tool-share", type=float, default=0.2)
    parser.add_argument("--limit-mb", type=float, default=0,
                        help="AGENTHOST_MEMORY_LIMIT_MB for the service (default: unset)")
    parser.add_argument("--memory-max-threads", type=int, default=0,
                        help="AGENTHOST_MEMORY_MAX_THREADS for the service (default: its own)")
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--max-reply-kb", type=int, default=0,
                        help="AGENTHOST_LLM_MAX_REPLY_KB for the service (default: its own; "
                        "a burst reply larger than it fails with 502)")
    parser.add_argument("--burst-threads", type=int, default=0)
    parser.add_argument("--burst-reply-kb", type=int, default=2000)
    parser.add_argument("--burst-concurrency", type=int, default=48)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the service, repeatable")
    parser.add_argument("--plot", help="draw PSS over threads served into this PNG")
    args = parser.parse_args()
    mock = start_mock_openai()
    runs = []
    try:
        for backend in (["memory", "redis"] if args.backend == "both" else [args.backend]):
            runs.append(await soak(backend, mock, args))
    finally:
        mock.stop()
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    asyncio.run(main())
