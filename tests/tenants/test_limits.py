"""Per-tenant limits: turns per minute and concurrent turns, in process and shared
through Redis by two Gunicorn workers; a flooding tenant is held to its share while
another tenant is served."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from redis.asyncio import Redis

from app.errors import RateLimited
from app.tenants.limits import RUNNING_PREFIX, TenantLimiter
from app.tenants.registry import TenantConfig
from config.settings import Settings
from tests.conftest import MockLLM, SettingsFactory, app_client
from tests.servers.processes import start_gunicorn, start_redis


async def test_turns_per_minute_are_counted_per_tenant(make_settings: SettingsFactory) -> None:
    settings = make_settings(extra_tenants={"capped": {"turns_per_minute": 3}})
    async with app_client(settings) as client:
        statuses = [(await client.post(f"/v1/tenants/capped/threads/t{i}/messages",
                                       json={"message": "hi"})) for i in range(5)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
        refused = statuses[3]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        other = await client.post("/v1/tenants/demo/threads/t/messages", json={"message": "x"})
        assert other.status_code == 200


async def test_a_running_turn_left_by_a_dead_worker_expires(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Redis.from_url(redis_url)
    await client.delete(f"{RUNNING_PREFIX}solo")
    limiter = TenantLimiter(Settings(tenant_concurrent_turns=1), client)
    config = TenantConfig()
    try:
        await limiter.admit("solo", config)  # never released: its worker "died"
        with pytest.raises(RateLimited, match="already has 1 turns running"):
            await limiter.admit("solo", config)
        later = time.time() + Settings().turn_timeout_s + Settings().thread_wait_s + 31
        monkeypatch.setattr("app.tenants.limits.time.time", lambda: later)
        slot = await limiter.admit("solo", config)  # its deadline passed: counted out
        await slot.release()
        assert await client.zcard(f"{RUNNING_PREFIX}solo") == 0
    finally:
        await client.aclose()


def test_a_flooding_tenant_is_held_to_its_share_across_workers(
    mock_llm: MockLLM, tmp_path: Path
) -> None:
    """Tenant flood (4 concurrent turns at most, shared by 2 workers through Redis) sends
    40 at once; tenant calm sends 8 meanwhile. Flood: at most 4 run at a time, the rest
    429 rate_limited; calm: every turn served."""
    mock_llm.control(latency_ms=300)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"flood": {"concurrent_turns": 4}, "calm": {}}))
    redis = start_redis()
    app = start_gunicorn({"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                          "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                          "AGENTHOST_WORKERS": "2", "AGENTHOST_TENANTS_FILE": str(tenants)})
    base = f"http://127.0.0.1:{app.port}/v1/tenants"

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=60) as client:
            flood = [client.post(f"{base}/flood/threads/f{i}/messages", json={"message": "x"})
                     for i in range(40)]
            calm = [client.post(f"{base}/calm/threads/c{i}/messages", json={"message": "y"})
                    for i in range(8)]
            done = await asyncio.gather(*flood, *calm)
        return list(done[:40]), list(done[40:])

    try:
        flood, calm = asyncio.run(run())
        flood_statuses = Counter(r.status_code for r in flood)
        assert Counter(r.status_code for r in calm) == {200: 8}
        assert flood_statuses[429] >= 20 and flood_statuses[200] >= 4, flood_statuses
        assert flood_statuses[200] + flood_statuses[429] == 40
        assert all(r.json()["error"]["code"] == "rate_limited"
                   for r in flood if r.status_code == 429)
    finally:
        app.stop()
        redis.stop()
