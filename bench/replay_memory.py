"""Redis memory of a streamed turn kept for rejoining (stream replay).

    python -m bench.replay_memory

Starts a Redis 8 (no modules) on a free port, records turns of 300 and 1,000 tokens
through ``RedisReplay`` (written 1 or 3 tokens at a time, as tokens 20 ms apart with
50 ms writes are), and prints ``MEMORY USAGE`` of each turn's stream. Asserts nothing.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.streaming import events
from app.streaming.hub import StreamHub
from app.streaming.replay_redis import RedisReplay, stream_key
from config.settings import Settings
from tests.servers.processes import start_redis


async def measure(port: int) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    replay = RedisReplay(client, replay_s=120, max_events=4096, live_s=120, block_s=1,
                         max_readers=10)
    hub = StreamHub(Settings(), replay=replay)
    for tokens, per_write in ((300, 1), (300, 3), (1000, 3)):
        thread = f"t{tokens}-{per_write}"
        stream = hub.open("bench", thread, record=True)
        reply = []
        for i in range(tokens):
            text = f" word{i % 50}"
            reply.append(text)
            stream._number(events.token(text))
            if i % per_write == 0:
                await replay.flush()
        stream._number(events.message("".join(reply)))  # the whole reply, once more
        stream._number(events.done({"input_tokens": 10, "output_tokens": tokens,
                                    "total_tokens": tokens + 10}))
        await replay.flush()
        key = stream_key(f"bench/{thread}", stream.recorder.turn)
        usage = int(await client.memory_usage(key, samples=0) or 0)
        print(f"{tokens:>5} tokens, {per_write} a write: {usage / 1024:6.1f} KiB in Redis, "
              f"{usage / (tokens + 2):4.0f} B an event")
    await client.aclose()


def main() -> None:
    server = start_redis(modules=False)
    try:
        asyncio.run(measure(server.port))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
