import gc
import tracemalloc

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from app.agents.graph import TenantAgent, TurnContext, build_agent_graph
from app.llm.offline import OfflineChatModel
from app.persistence.base import thread_config
from app.persistence.memory import BoundedMemorySaver, MemoryBackend
from bench.prose import Prose
from tests.clock import FakeClock


def agent(max_stored: int = 40) -> TenantAgent:
    return TenantAgent("t", SystemMessage("sys"), OfflineChatModel(), {}, 20, max_stored,
                       4000, 5.0)


class Chat:
    """One graph over one saver, as a worker holds it."""

    def __init__(self, saver: BoundedMemorySaver, max_stored: int = 40) -> None:
        self.graph = build_agent_graph(saver)
        self.agent = agent(max_stored)

    async def turn(self, key: str, text: str) -> None:
        await self.graph.ainvoke({"messages": [HumanMessage(text)]}, thread_config(key),
                                 context=TurnContext(self.agent), durability="exit")


async def test_history_round_trips_and_only_the_latest_checkpoint_is_kept() -> None:
    saver = BoundedMemorySaver(max_threads=10, ttl_s=60)
    chat = Chat(saver)
    store = MemoryBackend(saver)
    for i in range(3):
        await chat.turn("t/1", f"m{i}")
    messages = await store.messages("t/1")
    assert messages is not None
    assert [m.text for m in messages if m.type == "human"] == ["m0", "m1", "m2"]
    assert len(list(saver.list(thread_config("t/1")))) == 1
    await store.delete("t/1")
    assert await store.messages("t/1") is None


async def test_oldest_threads_are_evicted_past_the_bound() -> None:
    saver = BoundedMemorySaver(max_threads=50, ttl_s=3600)
    chat = Chat(saver)
    for i in range(120):
        await chat.turn(f"t/{i}", "hello")
    assert saver.thread_count == 50
    assert saver.evicted_lru == 70
    assert saver.get_tuple(thread_config("t/0")) is None
    assert saver.get_tuple(thread_config("t/119")) is not None


async def test_reading_keeps_a_thread_alive_in_lru_order() -> None:
    saver = BoundedMemorySaver(max_threads=2, ttl_s=3600)
    chat = Chat(saver)
    await chat.turn("t/a", "x")
    await chat.turn("t/b", "x")
    assert saver.get_tuple(thread_config("t/a")) is not None  # a is now most recent
    await chat.turn("t/c", "x")
    assert saver.get_tuple(thread_config("t/b")) is None
    assert saver.get_tuple(thread_config("t/a")) is not None


async def test_threads_expire_after_ttl_and_reads_refresh_it() -> None:
    clock = FakeClock()
    saver = BoundedMemorySaver(max_threads=10, ttl_s=100, clock=clock)
    chat = Chat(saver)
    await chat.turn("t/a", "x")
    await chat.turn("t/b", "x")
    clock.now += 60
    assert saver.get_tuple(thread_config("t/a")) is not None  # refreshes a
    clock.now += 60  # b is 120 s old, a 60 s
    assert saver.sweep() == 1
    assert saver.get_tuple(thread_config("t/b")) is None
    assert saver.get_tuple(thread_config("t/a")) is not None
    clock.now += 101
    assert saver.get_tuple(thread_config("t/a")) is None
    assert saver.thread_count == 0 and saver.expired == 2


async def test_reads_do_not_refresh_when_configured_not_to() -> None:
    clock = FakeClock()
    saver = BoundedMemorySaver(max_threads=10, ttl_s=100, refresh_on_read=False, clock=clock)
    chat = Chat(saver)
    await chat.turn("t/a", "x")
    clock.now += 60
    assert saver.get_tuple(thread_config("t/a")) is not None
    clock.now += 60
    assert saver.get_tuple(thread_config("t/a")) is None


async def test_a_long_thread_stays_within_its_stored_cap() -> None:
    saver = BoundedMemorySaver(max_threads=10, ttl_s=3600)
    chat = Chat(saver, max_stored=10)
    sizes = []
    for i in range(60):
        await chat.turn("t/long", f"message number {i}")
        sizes.append(saver.bytes_held())
    messages = MemoryBackend(saver)
    stored = await messages.messages("t/long")
    assert stored is not None and len(stored) <= 10
    assert stored[-2].text == "message number 59"
    assert max(sizes[30:]) <= 1.1 * sizes[20]


async def test_memory_stops_growing_once_the_bound_is_reached() -> None:
    saver = BoundedMemorySaver(max_threads=100, ttl_s=3600)
    chat = Chat(saver)
    for i in range(100):
        await chat.turn(f"t/{i}", "warm up " * 20)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        held = []
        for i in range(100, 600):
            await chat.turn(f"t/{i}", "more text " * 20)
            if i % 100 == 99:
                gc.collect()
                held.append(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert saver.thread_count == 100
    # 500 new threads went through a 100-thread bound (each ~2 KB stored): what is held
    # does not climb. The first 100 fill caches; after that growth is noise.
    assert held[-1] - held[0] < 50_000, held


def held_by_recount(saver: BoundedMemorySaver) -> int:
    return sum(thread.size() for thread in saver._threads.values())


async def test_the_running_byte_count_matches_a_recount_through_every_change() -> None:
    clock = FakeClock()
    saver = BoundedMemorySaver(max_threads=5, ttl_s=100, max_bytes=40_000, clock=clock)
    chat = Chat(saver, max_stored=6)
    for i in range(30):
        await chat.turn(f"t/{i % 8}", f"message {i} " + "words " * (i * 7 % 90))
        assert saver.bytes_held() == held_by_recount(saver)
        if i == 12:
            await MemoryBackend(saver).delete("t/3")
        if i == 20:
            clock.advance(101)
            saver.sweep()
    assert saver.bytes_held() == held_by_recount(saver) > 0
    assert saver.evicted_lru > 0 and saver.expired > 0


async def test_past_the_byte_budget_least_recently_used_threads_go() -> None:
    saver = BoundedMemorySaver(max_threads=1000, ttl_s=3600, max_bytes=60_000)
    chat = Chat(saver)
    for i in range(200):
        await chat.turn(f"t/{i}", f"thread {i} says " + "something long " * 60)
        assert saver.bytes_held() <= 60_000
    assert saver.evicted_bytes > 100 and saver.thread_count < 100
    assert saver.get_tuple(thread_config("t/0")) is None
    assert saver.get_tuple(thread_config("t/199")) is not None


async def test_squeezed_the_store_works_to_half_its_budget_until_released() -> None:
    saver = BoundedMemorySaver(max_threads=1000, ttl_s=3600, max_bytes=100_000)
    backend = MemoryBackend(saver)
    chat = Chat(saver)
    for i in range(100):
        await chat.turn(f"t/{i}", "text " * 100)
    full = saver.bytes_held()
    assert full > 80_000
    backend.relieve(1)  # moderate: the store is not asked for anything
    assert saver.bytes_held() == full
    backend.relieve(2)  # high: half the budget, at once
    assert saver.bytes_held() <= 50_000 and backend.stats()["squeezed"] is True
    for i in range(100, 150):
        await chat.turn(f"t/{i}", "text " * 100)
        assert saver.bytes_held() <= 50_000
    backend.relieve(0)
    for i in range(150, 250):
        await chat.turn(f"t/{i}", "text " * 100)
    assert saver.bytes_held() > 80_000


async def test_compressed_checkpoints_round_trip_and_take_less_room() -> None:
    plain = BoundedMemorySaver(max_threads=10, ttl_s=3600)
    packed = BoundedMemorySaver(max_threads=10, ttl_s=3600, compress=True)
    text = "I would like to move my appointment to Thursday at four, if possible. " * 20
    for saver in (plain, packed):
        chat = Chat(saver)
        for i in range(5):
            await chat.turn("t/a", f"{i}: {text}")
    stored_plain = await MemoryBackend(plain).messages("t/a")
    stored_packed = await MemoryBackend(packed).messages("t/a")
    assert stored_plain is not None and stored_packed is not None
    assert [m.text for m in stored_packed] == [m.text for m in stored_plain]
    assert packed.bytes_held() < plain.bytes_held() / 3
    kinds = {s.checkpoint[0] for t in packed._threads.values() for s in t.latest.values()}
    assert kinds == {"msgpack+zstd"}


@pytest.mark.parametrize("compress", [False, True])
async def test_the_byte_count_is_the_memory_really_held(compress: bool) -> None:
    """What the budget counts is what tracemalloc sees the store hold: python-zstandard's
    output is over-allocated (the compression bound) unless copied, which once made the
    compressed store larger in memory than the plain one while counting a third of it."""
    saver = BoundedMemorySaver(max_threads=1000, ttl_s=3600, compress=compress)
    chat = Chat(saver)
    prose = Prose()
    for i in range(20):  # warm: caches, interned strings, the graph
        await chat.turn(f"w/{i}", prose.message(1500))
    gc.collect()
    counted_before = saver.bytes_held()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(150):
            await chat.turn(f"t/{i}", prose.message(1500))
            await chat.turn(f"t/{i}", prose.message(1500))
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    counted = saver.bytes_held() - counted_before
    assert 0.75 < traced / counted < 1.3, (traced, counted)
