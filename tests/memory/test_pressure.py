"""Real pressure on a real process: the service (``python -m app``) with a small memory limit,
grown level by level with real memory (the test-only ballast), with turns in flight.

Each level is reached by the process's own PSS crossing a fraction of
``AGENTHOST_MEMORY_LIMIT_MB``, read by the governor from ``/proc``; nothing is mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SERVICE_KEY, MockLLM, SettingsFactory, app_client
from tests.servers.processes import ManagedProcess, start_app
from tests.sse import Event, read_sse
from tests.waiting import poll_until, wait_until

LIMIT_MB = 600
ADMIN = {"Authorization": "Bearer admin-secret"}
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}
PATH = "/v1/tenants/demo/threads/{thread}"


@pytest.fixture
def app(mock_llm: MockLLM) -> Iterator[ManagedProcess]:
    proc = start_app({
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
        "AGENTHOST_ADMIN_TOKEN": "admin-secret",
        "AGENTHOST_SERVICE_API_KEYS": SERVICE_KEY,  # an admin token turns auth on
        "AGENTHOST_MEMORY_TEST_ALLOCATIONS": "true",
        "AGENTHOST_MEMORY_LIMIT_MB": str(LIMIT_MB),
        "AGENTHOST_MEMORY_SAMPLE_S": "0.1",
        "AGENTHOST_MEMORY_GC_INTERVAL_S": "0",
        "AGENTHOST_MEMORY_RETRY_AFTER_S": "3",
    })
    yield proc
    proc.stop()


async def memory(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/health/memory")).json()
    return body


async def grow_to(client: httpx.AsyncClient, fraction: float, level: str) -> dict[str, Any]:
    """Add ballast until usage is ``fraction`` of the limit, then wait for ``level``."""
    usage = (await memory(client))["usage_mb"]
    need = int(fraction * LIMIT_MB - usage)
    assert need > 0, (usage, fraction)
    assert (await client.post("/v1/admin/memory/ballast", json={"mb": need},
                              headers=ADMIN)).status_code == 200
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await memory(client))
        return seen["pressure"] == level

    await poll_until(reached)
    return seen


async def chat(client: httpx.AsyncClient, thread: str, text: str) -> httpx.Response:
    return await client.post(PATH.format(thread=thread) + "/messages", json={"message": text})


async def stream(client: httpx.AsyncClient, thread: str, text: str) -> tuple[int, list[Event]]:
    async with client.stream("POST", PATH.format(thread=thread) + "/stream",
                             json={"message": text}) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, []
        return 200, [item async for item in read_sse(response) if isinstance(item, Event)]


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "memory_pressure"


async def test_each_level_acts_refuses_with_retry_after_and_recovers(
    app: ManagedProcess, mock_llm: MockLLM
) -> None:
    base = f"http://127.0.0.1:{app.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=SERVICE) as client:
        idle = await memory(client)
        assert (idle["pressure"], idle["status"]) == ("low", "healthy")
        assert (idle["limit_mb"], idle["limit_source"]) == (LIMIT_MB, "setting")
        assert idle["usage_source"] == "process tree PSS"
        assert idle["usage_pct"] < 60, idle  # the test needs room below moderate

        # Turns already running when pressure rises: a JSON turn and a stream, each held
        # by the mock until released at the end.
        in_flight_json = asyncio.create_task(chat(client, "inflight-json",
                                                  "[[gate:mem-json]] keep me"))
        in_flight_stream = asyncio.create_task(stream(client, "inflight-sse",
                                                      "[[gate:mem-sse]] [[tokens:5]]"))
        await wait_until(lambda: mock_llm.count() >= 2)

        moderate = await grow_to(client, 0.77, "moderate")
        assert moderate["status"] == "degraded"
        assert moderate["caches"]["agent_cache"]["squeezed"] is True
        assert moderate["caches"]["conversations"]["squeezed"] is False
        assert (await chat(client, "during", "moderate")).status_code == 200
        assert (await stream(client, "during-sse", "moderate"))[0] == 200

        high = await grow_to(client, 0.90, "high")
        assert high["caches"]["conversations"]["squeezed"] is True
        assert high["gc_runs"] >= 1
        assert (await chat(client, "during", "high")).status_code == 200  # turns still go
        status, _ = await stream(client, "refused-sse", "high")
        assert status == 503
        refused = await client.post(PATH.format(thread="refused-sse") + "/stream",
                                    json={"message": "high"})
        assert_refused(refused)

        critical = await grow_to(client, 0.98, "critical")
        assert critical["status"] == "unhealthy"
        assert_refused(await chat(client, "refused", "critical"))
        assert_refused(await client.post(PATH.format(thread="refused") + "/stream",
                                          json={"message": "critical"}))
        assert (await client.get("/health")).status_code == 200  # liveness never changes
        # nothing was stored for refused requests
        assert (await client.get(PATH.format(thread="refused") + "/messages")).status_code \
            == 404

        # The turns in flight finish and are stored, critical or not.
        mock_llm.control(release="mem-json")
        mock_llm.control(release="mem-sse")
        finished = await in_flight_json
        assert finished.status_code == 200, finished.text
        status, events = await in_flight_stream
        assert status == 200 and [e.event for e in events][-2:] == ["message", "done"]
        for thread in ("inflight-json", "inflight-sse"):
            history = (await client.get(PATH.format(thread=thread) + "/messages")).json()
            assert [m["role"] for m in history["messages"]] == ["user", "assistant"]

        # Released memory: back to low, and everything is taken again.
        released = await client.delete("/v1/admin/memory/ballast", headers=ADMIN)
        assert released.json()["released_mb"] > 0

        async def low() -> bool:
            return (await memory(client))["pressure"] == "low"

        await poll_until(low)
        after = await memory(client)
        assert after["caches"]["agent_cache"]["squeezed"] is False
        assert after["caches"]["conversations"]["squeezed"] is False
        assert (await chat(client, "after", "recovered")).status_code == 200
        status, events = await stream(client, "after-sse", "recovered")
        assert status == 200 and events[-1].event == "done"
        assert after["refusals"] == {"stream": 3, "turn": 1}
        assert after["transitions"] == 4  # up three levels, then down at once

        metrics = (await client.get("/metrics")).text
        assert 'agenthost_memory_refusals_total{level="critical",route="turn"} 1.0' in metrics
        assert ('agenthost_memory_pressure_transitions_total{from_level="critical",'
                'to_level="low"} 1.0') in metrics
    log = app.log_text()
    assert "memory pressure low -> moderate" in log
    assert "memory pressure moderate -> high" in log
    assert "memory pressure high -> critical" in log
    assert "memory pressure critical -> low" in log
    assert log.count("memory pressure high -> critical") == 1


async def test_ballast_routes_exist_only_when_the_test_setting_is_on(
    make_settings: SettingsFactory,
) -> None:
    async with app_client(make_settings(admin_token="admin-secret")) as client:
        response = await client.post("/v1/admin/memory/ballast", json={"mb": 1},
                                     headers=ADMIN)
        assert response.status_code == 404
        off = await client.get("/v1/admin/memory/allocations", headers=ADMIN)
        assert off.status_code == 404 and off.json()["error"]["code"] == "tracing_off"


async def test_allocation_report_when_tracing_is_on(make_settings: SettingsFactory) -> None:
    settings = make_settings(admin_token="admin-secret", memory_tracemalloc=True,
                             service_api_keys=[SERVICE_KEY])
    async with app_client(settings) as client:
        assert (await client.get("/v1/admin/memory/allocations")).status_code == 401
        for i in range(20):
            assert (await client.post(PATH.format(thread=f"t{i}") + "/messages",
                                      json={"message": "hello " * 100},
                                      headers=SERVICE)).status_code == 200
        report = (await client.get("/v1/admin/memory/allocations", params={"limit": 5},
                                   headers=ADMIN)).json()
        assert report["traced_bytes"] > 0 and len(report["top"]) == 5
        assert all(set(site) == {"site", "size_bytes", "size_diff_bytes", "count",
                                 "count_diff"} for site in report["top"])
        assert report["top"][0]["size_diff_bytes"] >= report["top"][-1]["size_diff_bytes"]
