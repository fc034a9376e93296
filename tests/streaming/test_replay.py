"""Stream replay: the in-memory store with an injected clock, the Redis one on a real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from app.errors import InvalidRequest, NothingToRejoin, ReplayGone, TooManyStreams
from app.persistence.redis import lock_key
from app.streaming import events
from app.streaming.hub import StreamHub
from app.streaming.replay import MemoryReplay, Position, Replayed, parse_position
from app.streaming.replay_redis import FLUSH_S, RedisReplay, pointer_key, stream_key
from config.settings import Settings
from tests.clock import FakeClock
from tests.servers.processes import free_port


def test_positions() -> None:
    assert parse_position(None) == Position() == parse_position(" ")
    assert parse_position("1733000000000-12") == Position(1733000000000, 12)
    assert parse_position("7") == Position(None, 7)
    for bad in ("a", "1-", "-1", "1-2-3", "1.5", "1" * 17 + "-1"):
        with pytest.raises(InvalidRequest):
            parse_position(bad)


async def drain(replayed: Replayed | None) -> bytes:
    assert replayed is not None
    return b"".join([chunk async for chunk in replayed])


def record_turn(replay: MemoryReplay | RedisReplay, key: str, tokens: int,
                final: bool = True) -> int:
    hub = StreamHub(Settings(), replay=replay)
    stream = hub.open(*key.split("/"), record=True)
    for i in range(tokens):
        stream._number(events.token(f"t{i}"))
    if final:
        stream._number(events.done({}))
    return stream.recorder.turn


async def test_memory_replay_keeps_turns_for_a_while_then_forgets_them() -> None:
    clock = FakeClock()
    replay = MemoryReplay(replay_s=120, max_events=100, max_bytes=2**20, max_age_s=600,
                          clock=clock)
    turn = record_turn(replay, "a/t1", 3)
    wire = await drain(await replay.open("a/t1", Position(turn, 1)))
    assert wire.count(b"id: ") == 3 and b'"t1"' in wire and b'"t0"' not in wire
    assert await replay.open("a/t1", Position(turn, 4)) is None  # has it all
    clock.advance(119)
    assert replay.sweep() == 0
    clock.advance(2)
    assert replay.sweep() == 1 and len(replay) == 0 and replay.bytes == 0
    with pytest.raises(NothingToRejoin):
        await replay.open("a/t1", Position())
    # a turn that never ended goes after the stream's maximum age as well
    record_turn(replay, "a/t2", 2, final=False)
    clock.advance(600 + 121)
    assert replay.sweep() == 1


async def test_memory_replay_is_bounded_per_turn_and_in_bytes() -> None:
    replay = MemoryReplay(replay_s=120, max_events=16, max_bytes=64 * 1024, max_age_s=600)
    turn = record_turn(replay, "a/long", 100)
    with pytest.raises(ReplayGone):
        await replay.open("a/long", Position(turn, 0))
    kept = await drain(await replay.open("a/long", Position(turn, 85)))
    assert kept.count(b"id: ") == 16
    for i in range(200):  # ~ 60 B an event, 17 events a turn: ~ 64 turns fit
        record_turn(replay, f"b/t{i}", 16)
    assert replay.bytes <= 64 * 1024 and 40 <= len(replay) < 200
    with pytest.raises(NothingToRejoin):  # the oldest went first
        await replay.open("b/t0", Position())
    await replay.forget_tenant("b")
    assert len(replay) == 0 and replay.bytes == 0


async def test_a_memory_rejoin_waits_for_live_events_and_ends_with_the_final_one() -> None:
    replay = MemoryReplay(replay_s=120, max_events=100, max_bytes=2**20, max_age_s=600)
    stream = StreamHub(Settings(), replay=replay).open("a", "live", record=True)
    stream._number(events.token("x"))
    replayed = await replay.open("a/live", Position())
    assert replayed is not None
    assert (await anext(replayed)).count(b"id: ") == 1
    waiting = asyncio.ensure_future(anext(replayed))
    await asyncio.sleep(0)
    assert not waiting.done()
    stream._number(events.token("y"))
    assert b'"y"' in await waiting
    stream._number(events.done({}))
    assert b"event: done" in await anext(replayed)
    with pytest.raises(StopAsyncIteration):
        await anext(replayed)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_redis_replay_trims_to_the_last_events_and_expires(client: Redis) -> None:
    replay = RedisReplay(client, replay_s=60, max_events=16, live_s=120, block_s=0.2,
                         max_readers=2)
    turn = record_turn(replay, "a/long", 100)
    await replay.aclose()  # waits for the writes
    stream = stream_key("a/long", turn)
    kept = await client.xrange(stream)
    n_kept = sorted(int(k) for _, fields in kept for k in fields if k != b"end")
    # whole writes are trimmed: at least the last 16 events, fewer than 16 + one write
    assert n_kept[-1] == 101 and 16 <= len(n_kept) < 16 + 100
    assert 0 < await client.pttl(stream) <= 60_000
    assert int(await client.get(pointer_key("a/long"))) == turn
    with pytest.raises(ReplayGone):
        await replay.open("a/long", Position())
    tail = await drain(await replay.open("a/long", Position(turn, 98)))
    assert tail.count(b"id: ") == 3 and tail.endswith(b"\r\n\r\n")
    assert await replay.open("a/long", Position(turn, 101)) is None
    await replay.forget("a/long")
    assert await client.exists(stream, pointer_key("a/long")) == 0


async def test_redis_replay_caps_blocking_readers(client: Redis) -> None:
    replay = RedisReplay(client, replay_s=60, max_events=100, live_s=120, block_s=0.2,
                         max_readers=1)
    record_turn(replay, "a/live", 2, final=False)
    await asyncio.sleep(FLUSH_S * 5)
    first = await replay.open("a/live", Position())
    assert first is not None
    await anext(first)  # reading: counted
    with pytest.raises(TooManyStreams):
        await replay.open("a/live", Position())
    await first.aclose()
    second = await replay.open("a/live", Position())
    assert second is not None
    await second.aclose()
    await replay.aclose()


async def test_a_redis_failure_loses_the_replay_never_the_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    replay = RedisReplay(dead, replay_s=60, max_events=100, live_s=120, block_s=0.2,
                         max_readers=2)
    with caplog.at_level(logging.WARNING):
        record_turn(replay, "a/t", 3)
        await replay.aclose()
    assert "stream replay of 1 turns lost" in caplog.text
    assert replay.stats()["pending_turns"] == 0
    await dead.aclose()


def test_replay_keys_share_the_thread_hash_tag() -> None:
    # one cluster slot for a thread's pointer and its turns
    assert key_slot(pointer_key("a/b").encode()) == key_slot(stream_key("a/b", 5).encode())


async def test_high_pressure_drops_finished_turns_and_keeps_running_ones() -> None:
    replay = MemoryReplay(replay_s=120, max_events=100, max_bytes=2**20, max_age_s=600)
    record_turn(replay, "a/done", 3)
    record_turn(replay, "a/running", 3, final=False)
    replay.relieve(1)
    assert len(replay) == 2
    replay.relieve(2)
    assert len(replay) == 1
    assert await replay.open("a/running", Position()) is not None
    with pytest.raises(NothingToRejoin):
        await replay.open("a/done", Position())


async def test_a_rejoin_without_an_id_waits_for_a_running_turns_first_write(
    client: Redis,
) -> None:
    replay = RedisReplay(client, replay_s=60, max_events=100, live_s=120, block_s=0.2,
                         max_readers=2, lock_key=lock_key)
    with pytest.raises(NothingToRejoin):  # no turn runs: at once
        await replay.open("a/soon", Position())
    await client.set(lock_key("a/soon"), "token", px=10_000)  # a turn has taken the lease
    opening = asyncio.ensure_future(replay.open("a/soon", Position()))
    await asyncio.sleep(FLUSH_S * 2)
    assert not opening.done()
    record_turn(replay, "a/soon", 2)
    replayed = await opening
    assert replayed is not None and (await drain(replayed)).count(b"id: ") == 3
    await replay.aclose()
