"""``open_backend`` and a backend's seams (tenant store, sweeps, unit of work), on both
backends: bounded in-memory, and a real Redis 8."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from langchain_core.messages import HumanMessage, SystemMessage

from app.agents.graph import TenantAgent, TurnContext, build_agent_graph
from app.llm.offline import OfflineChatModel
from app.persistence.backend import open_backend
from app.persistence.base import Backend, thread_config, thread_key
from app.persistence.memory import MemoryBackend
from app.persistence.redis import RedisBackend
from app.tenants.registry import TenantRegistry
from app.tenants.store import RedisTenantStore, TenantStore
from config.settings import Settings


@pytest.fixture(params=["memory", "redis", "plain-redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    overrides: dict[str, object] = {}
    if request.param in ("redis", "plain-redis"):
        overrides["redis_url"] = request.getfixturevalue("redis_url")
        overrides["redis_checkpointer"] = "plain" if request.param == "plain-redis" else "auto"
    async with open_backend(Settings(**overrides)) as store:  # type: ignore[arg-type]
        yield store


async def test_the_settings_pick_the_backend_and_its_seams(backend: Backend) -> None:
    registry = TenantRegistry({})
    tenants = backend.tenant_store(registry, ["current_time"], Settings())
    sweeps = {name: sweep for name, sweep, _ in backend.sweeps()}
    if isinstance(backend, RedisBackend):
        assert isinstance(tenants, RedisTenantStore)
        assert sweeps == {}  # Redis expires threads itself
    else:
        assert isinstance(backend, MemoryBackend)
        assert type(tenants) is TenantStore
        assert sweeps["memory_threads"]() == 0
    assert await backend.check() is None


async def test_the_redis_backend_closes_its_connections(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as observer:
        def others() -> int:
            return len(observer.client_list()) - 1  # all but the observer itself

        async with open_backend(Settings(redis_url=redis_url)) as store:  # type: ignore[arg-type]
            assert isinstance(store, RedisBackend)
            await store.client.ping()
            assert others() >= 1
        assert others() == 0


class Turns:
    def __init__(self, store: Backend) -> None:
        self.store = store
        self.graph = build_agent_graph(store.checkpointer)
        self.agent = TenantAgent("t", SystemMessage("sys"), OfflineChatModel(), {}, 20, 40,
                                 4000, 5.0)

    async def turn(self, key: str, text: str, fail_after_save: bool = False) -> None:
        message = HumanMessage(text, id=str(uuid.uuid4()))
        # as the runner holds them: the thread's lock (with the plain checkpointer, the
        # read that comes with it must serve the turn's first read only, never the undo's)
        async with (self.store.thread_lock(key, 1.0),
                    self.store.unit_of_work(self.graph, key, message.id or "")):
            await self.graph.ainvoke({"messages": [message]}, thread_config(key),
                                     context=TurnContext(self.agent), durability="exit")
            if fail_after_save:
                raise RuntimeError("the turn failed after the graph saved it")


async def test_a_failed_turn_is_undone_and_a_good_one_kept(backend: Backend) -> None:
    turns = Turns(backend)
    key = thread_key("ten", f"uow-{uuid.uuid4().hex[:8]}")
    with pytest.raises(RuntimeError):
        await turns.turn(key, "first, failing", fail_after_save=True)
    assert await backend.messages(key) is None  # a failed first turn leaves no thread
    await turns.turn(key, "hello")
    with pytest.raises(RuntimeError):
        await turns.turn(key, "second, failing", fail_after_save=True)
    messages = await backend.messages(key)
    assert messages is not None
    assert [m.type for m in messages] == ["human", "ai"]
    assert messages[0].content == "hello"
    await turns.turn(key, "again")
    messages = await backend.messages(key)
    assert messages is not None
    assert [m.content for m in messages if m.type == "human"] == ["hello", "again"]


class BrokenGraph:
    """A graph whose state cannot be read: storage went away during the turn."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang

    async def aget_state(self, config: Any) -> Any:
        if self.hang:
            await asyncio.Event().wait()
        raise ConnectionError("storage is gone")

    async def aupdate_state(self, config: Any, values: Any, as_node: str | None = None) -> Any:
        raise AssertionError("never reached")  # pragma: no cover


@pytest.mark.parametrize("hang", [False, True], ids=["fails", "hangs"])
async def test_undo_while_storage_is_down_is_bounded_and_the_turns_error_wins(
    backend: Backend, hang: bool, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("app.persistence.base.UNDO_TIMEOUT_S", 0.05)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="the turn's own"):
        async with backend.unit_of_work(BrokenGraph(hang), thread_key("t", "down"), "h1"):
            raise RuntimeError("the turn's own error")
    assert "could not undo the failed turn" in caplog.text


async def test_with_the_plain_checkpointer_a_turn_is_two_round_trips(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(redis_url=redis_url, redis_checkpointer="plain")  # type: ignore[arg-type]
    async with open_backend(settings) as store:
        assert isinstance(store, RedisBackend)
        turns = Turns(store)
        key = thread_key("ten", "prefetch")
        await turns.turn(key, "hello")
        pipelines: list[int] = []
        real = store.client.pipeline

        def counted(*args: Any, **kwargs: Any) -> Any:
            pipelines.append(1)
            return real(*args, **kwargs)

        commands: list[Any] = []
        real_command = store.client.execute_command

        async def command(*args: Any, **kwargs: Any) -> Any:
            commands.append(args[0])
            return await real_command(*args, **kwargs)

        monkeypatch.setattr(store.client, "pipeline", counted)
        monkeypatch.setattr(store.client, "execute_command", command)
        await turns.turn(key, "again")
        # two round trips, one script each: the lease with the checkpoint read; the save
        # with the release
        assert pipelines == [] and commands == ["EVALSHA", "EVALSHA"]
        monkeypatch.undo()
        messages = await store.messages(key)
        assert messages is not None and [m.content for m in messages if m.type == "human"] \
            == ["hello", "again"]

        # a save that Redis refuses (out of memory, as compose's noeviction Redis does when
        # full) fails the turn, and stores nothing of it
        admin = redis.asyncio.Redis.from_url(redis_url)
        real_save = store.checkpointer.save_and_release

        async def refused_save(*args: Any) -> None:
            await admin.config_set("maxmemory", 1)
            try:
                await real_save(*args)
            finally:
                await admin.config_set("maxmemory", 0)

        monkeypatch.setattr(store.checkpointer, "save_and_release", refused_save)
        try:
            with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
                await turns.turn(key, "lost")
        finally:
            monkeypatch.undo()
            await admin.aclose()
        messages = await store.messages(key)
        assert messages is not None and [m.content for m in messages if m.type == "human"] \
            == ["hello", "again"]
