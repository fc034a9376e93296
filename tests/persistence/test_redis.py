"""RedisBackend against a real Redis 8 with RedisJSON and RediSearch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aredis
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer

from app.agents.graph import TenantAgent, TurnContext, build_agent_graph
from app.errors import ConfigError, StorageUnavailable
from app.llm.offline import OfflineChatModel
from app.persistence.base import thread_config, thread_key
from app.persistence.redis import (
    RECOVER_INTERVAL_S,
    CachedClassSerializer,
    RedisBackend,
    redact_url,
)
from config.settings import Settings
from tests.servers.processes import ManagedProcess, free_port, redis_binaries, start_redis


class Chat:
    def __init__(self, store: RedisBackend, max_stored: int = 40) -> None:
        self.store = store
        self.graph = build_agent_graph(store.checkpointer)
        self.agent = TenantAgent("t", SystemMessage("sys"), OfflineChatModel(), {}, 20,
                                 max_stored, 4000, 5.0)

    async def turn(self, key: str, text: str) -> None:
        await self.graph.ainvoke({"messages": [HumanMessage(text)]}, thread_config(key),
                                 context=TurnContext(self.agent), durability="exit")
        await self.store.after_turn(key)


async def thread_keys(client: aredis.Redis, key: str) -> list[bytes]:
    safe = key.replace("/", "*")  # match loosely; ids in these tests are unique per test
    return [k async for k in client.scan_iter(match=f"*{safe}*")]


@pytest.fixture
def settings_for(redis_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return Settings(redis_url=redis_url, **overrides)  # type: ignore[arg-type]
    return make


async def test_every_key_of_a_thread_has_the_ttl(settings_for: Callable[..., Settings]) -> None:
    async with RedisBackend.open(settings_for(history_ttl_s=500)) as store:
        key = thread_key("ten", "ttl-thread")
        await Chat(store).turn(key, "hello")
        keys = await thread_keys(store.client, key)
        assert keys
        for name in keys:
            ttl = await store.client.ttl(name)
            assert 0 < ttl <= 500, (name, ttl)


async def test_reading_history_refreshes_the_ttl(settings_for: Callable[..., Settings]) -> None:
    async with RedisBackend.open(settings_for(history_ttl_s=500)) as store:
        key = thread_key("ten", "refresh-thread")
        await Chat(store).turn(key, "hello")
        for name in await thread_keys(store.client, key):
            await store.client.expire(name, 20)
        assert await store.messages(key) is not None
        checkpoint_ttls = [await store.client.ttl(n)
                           for n in await thread_keys(store.client, key)
                           if n.startswith(b"checkpoint:")]
        assert checkpoint_ttls and all(ttl > 400 for ttl in checkpoint_ttls)


async def test_history_is_gone_after_the_ttl(settings_for: Callable[..., Settings]) -> None:
    async with RedisBackend.open(settings_for(history_ttl_s=1)) as store:
        key = thread_key("ten", "expiring")
        await Chat(store).turn(key, "hello")
        assert await store.messages(key) is not None
        await asyncio.sleep(2.5)
        assert await store.messages(key) is None
        assert await thread_keys(store.client, key) == []


async def test_a_thread_uses_flat_keys_and_bytes_however_long(
    settings_for: Callable[..., Settings],
) -> None:
    async with RedisBackend.open(settings_for()) as store:
        chat = Chat(store, max_stored=10)
        key = thread_key("ten", "long-thread")
        footprint = []
        for i in range(40):
            await chat.turn(key, f"message number {i} " + "padding " * 10)
            names = await thread_keys(store.client, key)
            usage = [await store.client.memory_usage(n) or 0 for n in names]
            footprint.append((len(names), sum(usage)))
        assert footprint[10][0] == footprint[-1][0]  # no checkpoint pile-up
        assert footprint[-1][1] <= 1.2 * footprint[10][1]
        stored = await store.messages(key)
        assert stored is not None and len(stored) <= 10


async def test_odd_ids_round_trip_and_never_collide(
    settings_for: Callable[..., Settings],
) -> None:
    async with RedisBackend.open(settings_for()) as store:
        chat = Chat(store)
        first, second = thread_key("a", "b:c"), thread_key("a:b", "c")
        assert first != second
        await chat.turn(first, "to a")
        await chat.turn(second, "to a:b")
        odd = thread_key("t.e-n+a@nt", "x:y+z@w-1.2")
        await chat.turn(odd, "odd one")
        await chat.turn(odd, "odd two")
        for key, expected in ((first, ["to a"]), (second, ["to a:b"]),
                              (odd, ["odd one", "odd two"])):
            stored = await store.messages(key)
            assert stored is not None
            assert [m.text for m in stored if m.type == "human"] == expected
        await store.delete(odd)
        assert await store.messages(odd) is None
        assert await store.messages(first) is not None


async def test_redis_without_the_modules_is_refused_by_name() -> None:
    """With the langgraph checkpointer asked for explicitly (``auto`` would take the plain
    one: tests/persistence/test_plain.py)."""
    server, _ = redis_binaries()
    port = free_port()
    plain = ManagedProcess([str(server), "--port", str(port), "--save", "", "--appendonly",
                            "no"], port, log_name="plain-redis")
    try:
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0",  # type: ignore[arg-type]
                            redis_checkpointer="langgraph")
        with pytest.raises(ConfigError, match="RedisJSON, RediSearch"):
            async with RedisBackend.open(settings):
                pass
    finally:
        plain.stop()


async def test_unreachable_redis_at_start_is_served_as_unavailable_then_set_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0",  # type: ignore[arg-type]
                        redis_timeout_s=1)
    async with RedisBackend.open(settings) as backend:
        assert (await backend.check() or "").startswith("redis unreachable")
        said = [r.getMessage() for r in caplog.records if "unreachable at start" in r.message]
        assert said and f"redis://127.0.0.1:{port}/0" in said[0]
        with pytest.raises(StorageUnavailable):
            async with backend.guard():
                await backend.messages("t/1")
        redis = start_redis(port)
        try:
            backend._last_repair = -RECOVER_INTERVAL_S  # no wait for the rate limit
            assert await backend.check() is None  # set up: modules checked, indexes made
            assert await backend.messages("t/1") is None
        finally:
            redis.stop()


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_failed_class_lookup_raises_a_new_exception_each_time() -> None:
    """Re-raising one cached instance chained every raising frame onto its traceback: the
    Redis-mode leak. Each lookup must raise its own exception, holding only its own frames."""
    serde = CachedClassSerializer()
    envelope = {"lc": 1, "type": "constructor", "id": ["no_such_pkg", "schema", "Thing"]}
    raised = []
    for _ in range(3):
        with pytest.raises(ValueError, match="Cannot import Thing") as info:
            serde._constructor_class(envelope)
        raised.append(info.value)
    assert len({id(exc) for exc in raised}) == 3
    for exc in raised:
        depth, tb = 0, exc.__traceback__
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        assert depth <= 2, depth  # our frame, and none from earlier lookups
    # Found classes are still cached and returned.
    message = {"lc": 1, "type": "constructor",
               "id": ["langchain_core", "messages", "HumanMessage"]}
    assert serde._constructor_class(message) is HumanMessage
    assert serde._classes[("langchain_core", "messages", "HumanMessage")] is HumanMessage


async def test_library_privates_we_rely_on_still_exist(
    settings_for: Callable[..., Settings]
) -> None:
    """Contract: fails loudly when an upgrade of langgraph-checkpoint-redis moves these."""
    assert callable(JsonPlusRedisSerializer._constructor_class)
    async with RedisBackend.open(settings_for()) as store:
        saver = store.checkpointer
        assert saver._key_cache_max_size == 0
        assert saver._key_cache == {}
        key = thread_key("ten", "privates")
        for text in ("one", "two", "three"):
            await Chat(store).turn(key, text)
        assert saver._key_cache == {}  # the library honours the size we set
