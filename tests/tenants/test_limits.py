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
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from app.errors import RateLimited
from app.persistence.redis import connection_options, fresh_cluster_connections
from app.tenants.limits import RUNNING_PREFIX, TenantLimiter
from app.tenants.registry import TenantConfig
from config.settings import Settings
from tests.conftest import MockLLM, SettingsFactory, app_client
from tests.servers.processes import RedisCluster as RedisClusterServers
from tests.servers.processes import start_gunicorn, start_redis
from tests.waiting import wait_until


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


async def test_on_a_cluster_the_window_client_is_opened_as_the_services_and_closed(
    redis_cluster: RedisClusterServers, cluster_url: str, make_settings: SettingsFactory,
) -> None:
    """``limits`` builds its own cluster client: it gets the service's timeouts and
    connections opened outside the turn's context, and is closed at shutdown."""
    def clients_connected() -> int:
        total = 0
        for node in redis_cluster.nodes:
            with SyncRedis(port=node.port) as admin:  # itself one of them
                total += int(admin.info("clients")["connected_clients"]) - 1
        return total

    settings = make_settings(redis_url=cluster_url, redis_cluster=True, redis_timeout_s=1.5)
    client = fresh_cluster_connections(
        ClusterClient.from_url(cluster_url, **connection_options(settings)))
    limiter = TenantLimiter(settings, client)
    try:
        idle = clients_connected()
        # a refused turn counts in the window too: 3 = admitted, refused, admitted
        config = TenantConfig(turns_per_minute=3, concurrent_turns=1)
        slot = await limiter.admit("capped", config)
        with pytest.raises(RateLimited, match="already has 1 turns running"):
            await limiter.admit("capped", config)
        slot.release_soon()  # as a stream's end does; finished by aclose at the latest
        await wait_until(lambda: not limiter._releasing)
        await (await limiter.admit("capped", config)).release()  # counted, not refused ...
        with pytest.raises(RateLimited, match="used its 3 turns per minute"):
            await limiter.admit("capped", config)  # ... up to the window's 3
        window_client = limiter._own_client
        assert window_client is not None and window_client is not client
        assert window_client.connection_kwargs["socket_timeout"] == 1.5
        assert window_client.connection_kwargs["connection_class"].__name__ == (
            "FreshContextConnection")
        in_use = clients_connected()
        assert in_use > idle  # the service's connections and the window's
        slot = await limiter.admit("other", config)
        slot.release_soon()
        await limiter.aclose()  # the release is over, the window's connections closed
        assert not limiter._releasing
        await wait_until(lambda: clients_connected() < in_use)
        await client.aclose()
        await wait_until(lambda: clients_connected() == idle)
    finally:
        await limiter.aclose()
        await client.aclose()
