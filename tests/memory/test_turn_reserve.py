"""What a turn in flight holds, and the admission that counts on it.

The governor reserves ``REPLY_AMPLIFICATION`` times the reply cap per turn in flight; the
first test pins that factor against what a turn really holds at its peak (tracemalloc,
the service and this test's client in one process, so the figure is an upper bound), on
both routes. The others: a reply over the cap fails the turn and leaves the thread as it
was; turns whose reservations do not fit are refused with 503 while those in flight finish.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import httpx
import pytest

from app.memory.governor import REPLY_AMPLIFICATION, TURN_BASE_BYTES
from app.memory.usage import MIB, Limit
from tests.conftest import MockLLM, SettingsFactory, serve_app
from tests.waiting import poll_until

REPLY_BYTES = 1000 * 1000  # [[tokens:1000]] [[tokensize:1000]]
BIG = "[[tokens:1000]] [[tokensize:1000]]"


def llm(mock_llm: MockLLM, **overrides: Any) -> dict[str, Any]:
    return {"openai_base_url": mock_llm.base_url, "openai_api_key": "sk-test",
            "llm_max_retries": 0, **overrides}


async def turn(client: httpx.AsyncClient, route: str, thread: str, text: str) -> tuple[int, str]:
    url = f"/v1/tenants/demo/threads/{thread}/{route}"
    if route == "messages":
        response = await client.post(url, json={"message": text})
        return response.status_code, response.text
    async with client.stream("POST", url, json={"message": text}) as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    return response.status_code, body.decode()


@pytest.mark.parametrize("route", ["messages", "stream"])
async def test_a_turn_holds_at_most_the_reserved_multiple_of_its_reply(
    make_settings: SettingsFactory, mock_llm: MockLLM, route: str
) -> None:
    settings = make_settings(**llm(mock_llm, llm_max_reply_kb=2048))
    async with serve_app(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        await turn(client, route, "warm", BIG)  # imports, pools and caches first
        peaks = []
        for i in range(3):
            gc.collect()
            tracemalloc.start()
            try:
                start = tracemalloc.get_traced_memory()[0]
                status, body = await turn(client, route, f"t{i}", BIG)
                peaks.append(tracemalloc.get_traced_memory()[1] - start)
            finally:
                tracemalloc.stop()
            assert status == 200 and "tok999" in body
    peak = sorted(peaks)[1]
    print(f"{route}: a 1 MB reply's turn peaked at {peak / REPLY_BYTES:.1f}x the reply")
    assert REPLY_BYTES < peak <= REPLY_AMPLIFICATION * REPLY_BYTES + TURN_BASE_BYTES, (
        f"a 1 MB reply's turn peaked at {peak / MIB:.1f} MiB")


@pytest.mark.parametrize("route", ["messages", "stream"])
async def test_a_reply_over_the_cap_fails_the_turn_and_keeps_the_thread(
    make_settings: SettingsFactory, mock_llm: MockLLM, route: str
) -> None:
    settings = make_settings(**llm(mock_llm, llm_max_reply_kb=256))
    async with serve_app(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (await turn(client, route, "t", "hello"))[0] == 200
        status, body = await turn(client, route, "t", BIG)
        if route == "messages":
            assert status == 502
            assert "reply was too large" in body and "upstream_error" in body
        else:  # the stream had started: its last event says why
            assert status == 200
            assert "event: error" in body and "reply was too large" in body
        history = (await client.get("/v1/tenants/demo/threads/t/messages")).json()
        assert [m["content"][:5] for m in history["messages"]] == ["hello", "mock "]
        memory = (await client.get("/health/memory")).json()
        assert memory["turns_in_flight"] == 0


class TightMeter:
    """Usage that leaves room for two and a half turns' reservations below ``critical``."""

    usage_source = "test"

    def __init__(self, reserve: int, critical: float) -> None:
        self.limit = Limit(1000 * MIB, "setting")
        self.reading = int(critical * self.limit.bytes) - int(2.5 * reserve)

    def usage_bytes(self) -> int:
        return self.reading


async def test_turns_beyond_the_room_left_are_refused_while_those_in_flight_finish(
    make_settings: SettingsFactory, mock_llm: MockLLM
) -> None:
    settings = make_settings(**llm(mock_llm, llm_max_reply_kb=4096,
                                   memory_high=0.97, memory_critical=0.98,
                                   memory_retry_after_s=3))
    reserve = REPLY_AMPLIFICATION * 4096 * 1024 + TURN_BASE_BYTES
    async with serve_app(settings, TightMeter(reserve, 0.98)) as url, \
            httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (await client.get("/health/memory")).json()["turns_allowed"] == 2
        held = [asyncio.create_task(turn(client, route, f"held-{route}",
                                         f"wait [[gate:{route}]]"))
                for route in ("messages", "stream")]

        async def both_in_flight() -> bool:
            return bool((await client.get("/health/memory")).json()["turns_in_flight"] == 2)

        await poll_until(both_in_flight)
        for route in ("messages", "stream"):
            url = f"/v1/tenants/demo/threads/refused/{route}"
            refused = await client.post(url, json={"message": "one more"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "memory_pressure"
            assert "2 turns in flight" in refused.json()["error"]["message"]
            assert refused.headers["Retry-After"] == "3"
        # the refused thread was never touched
        assert (await client.get("/v1/tenants/demo/threads/refused/messages")).status_code == 404
        mock_llm.control(release="messages")
        mock_llm.control(release="stream")
        for status, body in await asyncio.gather(*held):
            assert status == 200 and "wait" in body
        memory = (await client.get("/health/memory")).json()
        assert memory["turns_in_flight"] == 0 and memory["refusals"] == {"turn": 1, "stream": 1}
        assert (await turn(client, "messages", "refused", "now"))[0] == 200
        metrics = (await client.get("/metrics")).text
        assert 'agenthost_memory_refusals_total{level="reserve",route="stream"} 1.0' in metrics
