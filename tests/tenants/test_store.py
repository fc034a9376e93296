"""Tenant changes reach every worker within seconds: two service processes, one Redis."""

from __future__ import annotations

import time

import httpx
import redis

from app.tenants.registry import TenantConfig
from app.tenants.store import HASH_KEY, VERSION_KEY
from tests.conftest import MockLLM
from tests.servers.processes import start_app

ADMIN = {"Authorization": "Bearer admin-secret"}


def eventually(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll until check() holds. ``timeout`` is a safety net for a broken sync, not the
    measure: how fast a change lands is the benchmarks' business, not a test's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout}s")


def test_admin_changes_reach_the_other_worker(redis_url: str, mock_llm: MockLLM) -> None:
    env = {"REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-test",
           "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_ADMIN_TOKEN": "admin-secret",
           "AGENTHOST_TENANT_SYNC_INTERVAL_S": "1"}
    first, second = start_app(env), start_app(env)
    a, b = f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"
    chat = "/v1/tenants/newco/threads/t/messages"
    try:
        assert httpx.post(b + chat, json={"message": "x"}).status_code == 404
        body = {"system_prompt": "Prompt one.", "tools": []}
        assert httpx.put(f"{a}/v1/admin/tenants/newco", json=body,
                         headers=ADMIN).status_code == 201
        eventually(lambda: httpx.post(b + chat, json={"message": "x"}).status_code == 200)

        # a replaced prompt: worker b's cached agent must go
        httpx.put(f"{a}/v1/admin/tenants/newco", json={**body, "system_prompt": "Prompt two!"},
                  headers=ADMIN).raise_for_status()

        def b_uses_new_prompt() -> bool:
            httpx.post(b + chat, json={"message": "x"}).raise_for_status()
            return bool(mock_llm.requests()[-1]["chars"][0] == len("Prompt two!"))

        eventually(b_uses_new_prompt)

        # a change that bypasses pub/sub (as if the message were lost) still arrives
        with redis.Redis.from_url(redis_url) as client:
            config = TenantConfig(system_prompt="Prompt three, written directly.")
            client.hset(HASH_KEY, "newco", config.model_dump_json())
            client.incr(VERSION_KEY)

        def b_uses_third_prompt() -> bool:
            httpx.post(b + chat, json={"message": "x"}).raise_for_status()
            return bool(mock_llm.requests()[-1]["chars"][0] == len(config.system_prompt))

        eventually(b_uses_third_prompt)

        assert httpx.delete(f"{a}/v1/admin/tenants/newco", headers=ADMIN).status_code == 204
        eventually(lambda: httpx.post(b + chat, json={"message": "x"}).status_code == 404)
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
