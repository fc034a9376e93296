"""Concurrent SSE streams on one worker: RSS per stream and time-to-first-token overhead.

    python -m bench.sse_streams [--streams 100 500 1000] [--tokens 50] [--latency-ms 20]
                                [--token-delay-ms 20] [--rounds 3]
    python -m bench.sse_streams --cpu [--redis] --streams 100 [--runs 3]

Starts the mock OpenAI server and the service (``python -m app``, one worker, in-memory
persistence) on free ports, then for each concurrency N opens N streams at once with a
minimal raw-socket client on uvloop (starts spread over ``--ramp-s``, about one stream's length, so
that about N are live at once) and measures:
- TTFT: request sent → first ``token`` event, minus the same measured straight against the
  mock at the same concurrency (the service's own overhead), p50 and p99;
- RSS: the service's peak RSS over the rounds at N, minus its RSS after a 20-stream
  warm-up, in a fresh service process per N; divided by N for a per-stream figure.
Rounds are repeated and medians reported. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import threading
import time
from collections.abc import Callable

import psutil
import uvloop

from tests.servers.processes import ManagedProcess, start_app, start_mock_openai, start_redis


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_stream(port: int, path: str, body: dict[str, object],
                     delay: float = 0.0) -> tuple[float, bool]:
    """(seconds to the first token, whether the stream ended properly)."""
    await asyncio.sleep(delay)
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
    )
    await writer.drain()
    first: float | None = None
    seen = b""
    ok = False
    while chunk := await reader.read(65536):
        if first is None and (b"event: token" in chunk or b'"content":"tok' in chunk
                              or b'"content": "tok' in chunk):
            first = time.perf_counter() - started
        seen = (seen + chunk)[-4096:]
        if b"event: done" in seen or b"data: [DONE]" in seen:
            ok = True
            break
    writer.close()
    return (first if first is not None else float("nan")), ok


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def burst(port: int, path: str, body: dict[str, object], n: int,
                ramp_s: float = 0.0) -> list[float]:
    results = await asyncio.gather(*(one_stream(port, path, body, i * ramp_s / n)
                                     for i in range(n)))
    failed = sum(1 for _, ok in results if not ok)
    if failed:
        print(f"  warning: {failed}/{n} streams did not end with done")
    return [ttft for ttft, _ in results]


async def run(args: argparse.Namespace, mock: ManagedProcess,
              start_service: Callable[[], ManagedProcess]) -> None:
    direct_body = {"model": "gpt-4o-mini", "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}
    print(f"mock: first byte after {args.latency_ms} ms, then {args.tokens} tokens every "
          f"{args.token_delay_ms} ms; starts spread over {args.ramp_s} s; service: one worker, "
          "in-memory persistence, a fresh process per N")
    print(f"{'streams':>8} {'TTFT svc p50':>13} {'p99':>8} {'mock p50':>9} {'mock p99':>9} "
          f"{'overhead p50':>13} {'p99':>8} {'+RSS MB':>8} {'KB/stream':>10}")
    for n in args.streams:
        app = start_service()
        try:
            app_process = psutil.Process(app.pid)
            await burst(app.port, "/v1/tenants/demo/threads/warm/stream", {"message": "warm"},
                        20)
            before = app_process.memory_info().rss
            rows = []
            with RssSampler(app.pid) as sampler:
                for round_ in range(args.rounds):
                    direct = await burst(mock.port, "/v1/chat/completions", direct_body, n,
                                         args.ramp_s)
                    served = await asyncio.gather(*(
                        one_stream(app.port,
                                   f"/v1/tenants/demo/threads/b{n}-{round_}-{i}/stream",
                                   {"message": "go"}, i * args.ramp_s / n) for i in range(n)))
                    if not all(ok for _, ok in served):
                        print(f"  warning: {sum(not ok for _, ok in served)}/{n} streams "
                              "did not end")
                    ttft = [t for t, _ in served]
                    rows.append((statistics.median(ttft), percentile(ttft, 0.99),
                                 statistics.median(direct), percentile(direct, 0.99)))
            growth = max(0, sampler.peak - before)
            p50, p99, d50, d99 = (statistics.median(col) for col in zip(*rows, strict=True))
            print(f"{n:>8} {p50 * 1000:>10.1f} ms {p99 * 1000:>5.1f} ms {d50 * 1000:>6.1f} ms "
                  f"{d99 * 1000:>6.1f} ms {(p50 - d50) * 1000:>10.1f} ms "
                  f"{(p99 - d99) * 1000:>5.1f} ms {growth / 2**20:>8.1f} "
                  f"{growth / n / 1024:>10.1f}", flush=True)
        finally:
            app.stop()


async def cpu_per_token(args: argparse.Namespace, mock: ManagedProcess,
                        start_service: Callable[[dict[str, str]], ManagedProcess]) -> None:
    """The worker's CPU (user + system) per streamed token, with stream replay off and on
    (kept for rejoining: in the worker, or in Redis with ``--redis``), alternated."""
    where = "Redis" if args.redis else "in-process"
    n = args.streams[0]
    print(f"worker CPU per streamed token, replay off vs on ({where}): {n} streams x "
          f"{args.tokens} tokens per round, {args.rounds} rounds per service, tokens every "
          f"{args.token_delay_ms} ms, a fresh service per run")
    figures: dict[str, list[float]] = {"off": [], "on": []}
    for run_ in range(args.runs):
        for replay in ("off", "on"):
            app = start_service({"AGENTHOST_STREAM_REPLAY_S": "0" if replay == "off"
                                 else "120"})
            try:
                await burst(app.port, "/v1/tenants/demo/threads/warm/stream",
                            {"message": "warm"}, 20)
                process = psutil.Process(app.pid)
                before = process.cpu_times()
                for round_ in range(args.rounds):
                    await asyncio.gather(*(
                        one_stream(app.port,
                                   f"/v1/tenants/demo/threads/c{run_}-{round_}-{i}/stream",
                                   {"message": "go"}, i * args.ramp_s / n) for i in range(n)))
                after = process.cpu_times()
            finally:
                app.stop()
            cpu = (after.user - before.user) + (after.system - before.system)
            per_token = cpu / (n * args.tokens * args.rounds) * 1e6
            figures[replay].append(per_token)
            print(f"  run {run_ + 1} replay {replay:>3}: {per_token:7.1f} us/token", flush=True)
    off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
    print(f"median: off {off:.1f} us/token, on {on:.1f} us/token, ratio {on / off:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--token-delay-ms", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ramp-s", type=float, default=1.0,
                        help="spread the N starts over this long (0: all at once)")
    parser.add_argument("--cpu", action="store_true",
                        help="measure the worker's CPU per streamed token with stream replay "
                        "off and on instead (uses the first --streams figure)")
    parser.add_argument("--redis", action="store_true",
                        help="with --cpu: the service on a Redis 8 the bench starts")
    parser.add_argument("--runs", type=int, default=3, help="with --cpu: runs per setting")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # children inherit
    mock = start_mock_openai(None, "--latency-ms", str(args.latency_ms), "--token-delay-ms",
                             str(args.token_delay_ms), "--reply-tokens", str(args.tokens))
    top = max(args.streams) + 100
    redis = start_redis() if args.redis else None
    storage = {"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"} if redis else {}

    def start_service(extra: dict[str, str] | None = None) -> ManagedProcess:
        return start_app({
            **storage, **(extra or {}),
            "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
            "AGENTHOST_STREAM_MAX_PER_WORKER": str(top),
            "AGENTHOST_STREAM_MAX_PER_TENANT": str(top),
            "AGENTHOST_LLM_MAX_CONNECTIONS": str(top),
            "AGENTHOST_LLM_MAX_KEEPALIVE": str(top),
            "AGENTHOST_LOG_LEVEL": "WARNING",
        })

    try:
        # The load generator runs on uvloop too: on these 2 shared cores, its own CPU is
        # taken from the service and the mock.
        uvloop.run(cpu_per_token(args, mock, start_service) if args.cpu
                   else run(args, mock, start_service))
    finally:
        mock.stop()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
