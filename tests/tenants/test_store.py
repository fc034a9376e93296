"""Tenant changes reach every worker: two service processes on one Redis, and one store
in-process against what it finds in Redis."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import httpx
import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.tenants.registry import TenantConfig, TenantRegistry
from app.tenants.store import CHANNEL, HASH_KEY, SEEDED_KEY, VERSION_KEY, RedisTenantStore
from tests.conftest import SERVICE_KEY, MockLLM
from tests.servers.processes import free_port, start_app
from tests.waiting import wait_for, wait_until

ADMIN = {"Authorization": "Bearer admin-secret"}


def test_admin_changes_reach_the_other_worker(redis_url: str, mock_llm: MockLLM) -> None:
    env = {"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
           "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_ADMIN_TOKEN": "admin-secret",
           "AGENTHOST_SERVICE_API_KEYS": SERVICE_KEY, "AGENTHOST_TENANT_SYNC_INTERVAL_S": "1"}
    service = {"Authorization": f"Bearer {SERVICE_KEY}"}
    first, second = start_app(env), start_app(env)
    a, b = f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"
    chat = "/v1/tenants/newco/threads/t/messages"
    try:
        assert httpx.post(b + chat, json={"message": "x"}, headers=service).status_code == 404
        body = {"system_prompt": "Prompt one.", "tools": []}
        assert httpx.put(f"{a}/v1/admin/tenants/newco", json=body,
                         headers=ADMIN).status_code == 201
        wait_for(lambda: httpx.post(b + chat, json={"message": "x"},
                                    headers=service).status_code == 200)

        # a replaced prompt: worker b's cached agent must go
        httpx.put(f"{a}/v1/admin/tenants/newco", json={**body, "system_prompt": "Prompt two!"},
                  headers=ADMIN).raise_for_status()

        def b_uses_new_prompt() -> bool:
            httpx.post(b + chat, json={"message": "x"}, headers=service).raise_for_status()
            return bool(mock_llm.requests()[-1]["chars"][0] == len("Prompt two!"))

        wait_for(b_uses_new_prompt)

        # a change that bypasses pub/sub (as if the message were lost) still arrives
        with redis.Redis.from_url(redis_url) as client:
            config = TenantConfig(system_prompt="Prompt three, written directly.")
            client.hset(HASH_KEY, "newco", config.model_dump_json())
            client.incr(VERSION_KEY)

        def b_uses_third_prompt() -> bool:
            httpx.post(b + chat, json={"message": "x"}, headers=service).raise_for_status()
            return bool(mock_llm.requests()[-1]["chars"][0] == len(config.system_prompt))

        wait_for(b_uses_third_prompt)

        assert httpx.delete(f"{a}/v1/admin/tenants/newco", headers=ADMIN).status_code == 204
        wait_for(lambda: httpx.post(b + chat, json={"message": "x"},
                                    headers=service).status_code == 404)
    finally:
        first.stop()
        second.stop()


def test_the_file_seeds_redis_once_then_redis_wins(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "AGENTHOST_ADMIN_TOKEN": "admin-secret"}
    app = start_app(env)
    base = f"http://127.0.0.1:{app.port}"
    try:
        assert httpx.get(f"{base}/v1/admin/tenants", headers=ADMIN).json()["tenants"] == ["demo"]
        assert httpx.delete(f"{base}/v1/admin/tenants/demo", headers=ADMIN).status_code == 204
    finally:
        app.stop()
    again = start_app(env)
    try:
        listed = httpx.get(f"http://127.0.0.1:{again.port}/v1/admin/tenants", headers=ADMIN)
        assert listed.json()["tenants"] == []  # not re-seeded from the file
    finally:
        again.stop()


# --- in-process, against the real Redis: what a worker does with what it finds there ---

KEY = "moving-key"


def keyed(prompt: str, *keys: str) -> TenantConfig:
    return TenantConfig(system_prompt=prompt,
                        api_keys_sha256=[hashlib.sha256(k.encode()).hexdigest() for k in keys])


async def test_an_invalid_tenant_in_redis_is_skipped_and_named(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        await client.set(SEEDED_KEY, "1")
        await client.hset(HASH_KEY, mapping={"good": keyed("fine").model_dump_json(),
                                             "broken": '{"system_prompt": 5, "nope": 1}'})
        registry = TenantRegistry({})
        store = RedisTenantStore(registry, ["current_time"], client, 60)
        with caplog.at_level(logging.ERROR):
            await store.load({})
        assert [tid for tid, _ in registry.items()] == ["good"]
        assert "tenant broken in Redis is invalid and is skipped" in caplog.text
    finally:
        await client.aclose()


async def test_a_key_moved_between_tenants_lands_whatever_order_changes_arrive(
    redis_url: str,
) -> None:
    client = aredis.Redis.from_url(redis_url)
    registry = TenantRegistry({})
    store = RedisTenantStore(registry, [], client, 3600)  # only the feed, no polling
    try:
        await store.load({"a": keyed("A", KEY), "b": keyed("B")})
        assert registry.owner_of_key(KEY) == "a"
        await store.start()
        # Another replica moves the key from a to b; b's message comes first, so the
        # worker briefly sees two tenants claiming one key and must reload everything.
        await client.hset(HASH_KEY, mapping={"a": keyed("A").model_dump_json(),
                                             "b": keyed("B", KEY).model_dump_json()})
        await client.incr(VERSION_KEY)
        for _ in range(100):  # the feed subscribes asynchronously: publish until heard
            if await client.publish(CHANNEL, "b"):
                break
            await asyncio.sleep(0.02)
        await wait_until(lambda: registry.owner_of_key(KEY) == "b")
        assert registry.get("a") == keyed("A")
    finally:
        await store.stop()
        await client.aclose()


async def test_a_failing_version_poll_is_logged_and_the_poll_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = aredis.Redis(port=free_port(), socket_connect_timeout=0.2,
                        retry=Retry(NoBackoff(), 0))  # fail at once: nothing listens there
    store = RedisTenantStore(TenantRegistry({}), [], dead, 0.01)
    try:
        with caplog.at_level(logging.WARNING):
            await store.start()
            await wait_until(lambda: caplog.text.count("tenant version check failed") >= 2)
        assert all(not task.done() for task in store._tasks)  # both loops still running
    finally:
        await store.stop()
        await dead.aclose()
