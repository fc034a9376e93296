"""zstd in the embedded store: threads per MiB against the cost per turn.

    python -m bench.store_compression [--threads 200] [--turns 10] [--message-bytes 2000]

Runs the same conversations (prose from ``../shared/seeds``, long user messages, the offline
model's replies) through the service's TurnRunner on a BoundedMemorySaver without and with
compression, then prints per thread the bytes the saver counts and the memory it really
holds (tracemalloc, in a separate pass), and the time spent compressing and decompressing
per turn (measured around the saver's own ``_dump``/``_load``, so the figure is the codec's
cost alone, not the noise of whole turns). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
from typing import Any

from app.agents.graph import build_agent_graph
from app.persistence.memory import ZSTD_LEVEL, BoundedMemorySaver, MemoryBackend
from app.turns.runner import TurnRunner
from bench.prose import corpus
from bench.turn_cost import agent_for
from config.settings import Settings


class Timed(BoundedMemorySaver):
    """The saver with its codec timed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.codec_s = 0.0

    def _dump(self, value: Any) -> Any:
        started = time.perf_counter()
        try:
            return super()._dump(value)
        finally:
            self.codec_s += time.perf_counter() - started

    def _load(self, typed: Any) -> Any:
        started = time.perf_counter()
        try:
            return super()._load(typed)
        finally:
            self.codec_s += time.perf_counter() - started


async def run(compress: bool, threads: int, turns: int, size: int, text: str,
              traced: bool = False) -> dict[str, float]:
    settings = Settings()
    saver = Timed(max_threads=threads + 1, ttl_s=3600, compress=compress)
    _, agent = agent_for(settings)
    runner = TurnRunner(build_agent_graph(saver), MemoryBackend(saver), settings)
    turn_times: list[float] = []
    offset = 0
    gc.collect()
    if traced:
        tracemalloc.start()
    for _turn in range(turns):
        for thread in range(threads):
            start = offset % max(1, len(text) - size)
            offset += size + 7919  # a different slice every message
            started = time.perf_counter()
            await runner.run(agent, f"t{thread}", text[start:start + size])
            turn_times.append(time.perf_counter() - started)
    count = threads * turns
    held = 0.0
    if traced:
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] / threads
        tracemalloc.stop()
    return {
        "held_per_thread": held,
        "bytes_per_thread": saver.bytes_held() / threads,
        "codec_ms_per_turn": saver.codec_s * 1000 / count,
        "turn_ms_median": statistics.median(turn_times) * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--message-bytes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = corpus()
    print(f"{args.threads} threads x {args.turns} turns, user messages of "
          f"{args.message_bytes} bytes of prose; medians of {args.repeats} runs")
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for compress in (False, True):
            row = await run(compress, args.threads, args.turns, args.message_bytes, text)
            row["held_per_thread"] = (await run(compress, args.threads, args.turns,
                                                args.message_bytes, text, traced=True)
                                      )["held_per_thread"]
            rows[compress].append(row)
    med = {c: {k: statistics.median(r[k] for r in rows[c]) for k in rows[c][0]} for c in rows}
    print(f"{'store':<12} {'counted KiB/thr':>16} {'held KiB/thr':>13} {'threads/MiB':>12} "
          f"{'codec ms/turn':>14} {'turn ms p50':>12}")
    for compress, name in ((False, "plain"), (True, f"zstd-{ZSTD_LEVEL}")):
        m = med[compress]
        print(f"{name:<12} {m['bytes_per_thread'] / 1024:16.1f} "
              f"{m['held_per_thread'] / 1024:13.1f} {2**20 / m['held_per_thread']:12.1f} "
              f"{m['codec_ms_per_turn']:14.3f} {m['turn_ms_median']:12.2f}")
    ratio = med[False]["held_per_thread"] / med[True]["held_per_thread"]
    extra = med[True]["codec_ms_per_turn"] - med[False]["codec_ms_per_turn"]
    print(f"zstd holds {ratio:.2f}x the threads per MiB at +{extra:.3f} ms of codec per turn")


if __name__ == "__main__":
    asyncio.run(main())
