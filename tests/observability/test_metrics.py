"""Metrics belong to their app: two apps in one process never mix their counts."""

from __future__ import annotations

import re

import httpx

from tests.conftest import SettingsFactory, app_client
from tests.observability.promtool import assert_promtool_accepts


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


async def chat(client: httpx.AsyncClient, thread: str) -> None:
    response = await client.post(f"/v1/tenants/demo/threads/{thread}/messages",
                                 json={"message": "hello"})
    assert response.status_code == 200


async def test_two_apps_in_one_process_count_separately(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as one, app_client(make_settings()) as two:
        for i in range(3):
            await chat(one, f"t{i}")
        first = (await one.get("/metrics")).text
        second = (await two.get("/metrics")).text
    assert sample(first, 'agenthost_turns_total{outcome="ok"}') == 3
    assert 'agenthost_turns_total{outcome="ok"}' not in second
    # The agent cache's own counts, once: the first turn built the agent, two hit it.
    assert sample(first, "agenthost_agent_cache_misses_total") == 1
    assert sample(first, "agenthost_agent_cache_hits_total") == 2
    assert sample(first, "agenthost_agent_cache_entries") == 1
    assert sample(second, "agenthost_agent_cache_hits_total") == 0


async def test_the_single_process_exposition_passes_promtool(
    make_settings: SettingsFactory,
) -> None:
    async with app_client(make_settings()) as client:
        for i in range(3):
            await chat(client, f"t{i}")
        assert_promtool_accepts((await client.get("/metrics")).text)


async def test_responses_are_counted_by_status_and_storage_failures_too(
    make_settings: SettingsFactory,
) -> None:
    async with app_client(make_settings()) as client:
        await chat(client, "a")
        assert (await client.get("/v1/tenants/nope/threads/a/messages")).status_code == 404
        assert (await client.post("/v1/tenants/demo/threads/a/messages",
                                  json={})).status_code == 422
        text = (await client.get("/metrics")).text
    assert sample(text, 'agenthost_http_responses_total{code="200"}') == 1
    assert sample(text, 'agenthost_http_responses_total{code="404"}') == 1
    assert sample(text, 'agenthost_http_responses_total{code="422"}') == 1
    assert sample(text, "agenthost_storage_errors_total") == 0
