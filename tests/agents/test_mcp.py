"""Tenant MCP tools against a real MCP server (streamable HTTP), called by the mock LLM."""

from __future__ import annotations

import asyncio
import re

from tests.conftest import MockLLM, SettingsFactory, app_client
from tests.servers.processes import ManagedProcess, free_port, start_mcp_server

CALL = '[[tool:next_free_slot {"day": "monday"}]]'


def calendar_tenant(url: str) -> dict[str, object]:
    return {"clinic": {"system_prompt": "You book appointments.", "tools": ["current_time"],
                       "mcp_servers": [{"name": "calendar", "url": url,
                                        "transport": "streamable_http"}]}}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_the_mcp_tool_is_called_and_its_result_stored(
    make_settings: SettingsFactory, mock_llm: MockLLM, mcp_server: ManagedProcess
) -> None:
    url = f"http://127.0.0.1:{mcp_server.port}/mcp"
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             extra_tenants=calendar_tenant(url))
    async with app_client(settings) as client:
        path = "/v1/tenants/clinic/threads/t1/messages"
        reply = await client.post(path, json={"message": CALL})
        assert reply.status_code == 200, reply.text
        assert reply.json()["reply"]["content"] == (
            "tool next_free_slot returned: monday 15:30 with Dr. Lee"
        )
        history = (await client.get(path)).json()["messages"]
        assert history[2] == {"role": "tool", "content": "monday 15:30 with Dr. Lee",
                              "tool_call_id": history[1]["tool_calls"][0]["id"],
                              "name": "next_free_slot"}
        assert (await client.post(path, json={"message": "again"})).status_code == 200
        stats = (await client.get("/cache-stats")).json()["agent_cache"]
        assert stats["entries"] == 1 and stats["misses"] == 1 and stats["hits"] == 1
    offered = mock_llm.requests()[0]["tools"]
    assert sorted(offered) == ["cancel_slot", "current_time", "next_free_slot"]


async def test_a_dead_mcp_server_costs_its_tools_not_the_request(
    make_settings: SettingsFactory, mock_llm: MockLLM,
) -> None:
    port = free_port()
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             extra_tenants=calendar_tenant(f"http://127.0.0.1:{port}/mcp"),
                             mcp_timeout_s=2, mcp_retry_s=0.5)
    async with app_client(settings) as client:
        path = "/v1/tenants/clinic/threads/t1/messages"
        before = metric((await client.get("/metrics")).text, "agenthost_mcp_failures_total")
        reply = await client.post(path, json={"message": "hello"})
        assert reply.status_code == 200, reply.text
        assert mock_llm.requests()[-1]["tools"] == ["current_time"]
        after = metric((await client.get("/metrics")).text, "agenthost_mcp_failures_total")
        assert after == before + 1
        # the server comes up; after the retry delay the agent is rebuilt with its tools
        server = start_mcp_server(port)
        try:
            await asyncio.sleep(0.6)
            reply = await client.post(path, json={"message": CALL})
            assert reply.json()["reply"]["content"].endswith("monday 15:30 with Dr. Lee")
        finally:
            server.stop()


async def test_unreachable_mcp_at_call_time_is_a_tool_error_not_a_failure(
    make_settings: SettingsFactory, mock_llm: MockLLM,
) -> None:
    port = free_port()
    server = start_mcp_server(port)
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             extra_tenants=calendar_tenant(f"http://127.0.0.1:{port}/mcp"),
                             tool_timeout_s=3)
    async with app_client(settings) as client:
        path = "/v1/tenants/clinic/threads/t1/messages"
        assert (await client.post(path, json={"message": "warm up"})).status_code == 200
        server.stop()  # listed its tools, then went away
        reply = await client.post(path, json={"message": CALL})
        assert reply.status_code == 200
        assert reply.json()["reply"]["content"].startswith("tool next_free_slot returned: Error")
