"""Streaming over a real socket: the service (``python -m app``) with the mock OpenAI server.

The shared service runs once per backend (``app``: bounded in-memory, then the real Redis 8),
so every stream test of what is sent and stored runs on both."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterator

import httpx
import psutil
import pytest
import redis

from tests.conftest import BACKENDS, REDIS_BACKENDS, MockLLM
from tests.servers.processes import ManagedProcess, start_app
from tests.sse import Comment, Event, dechunk, parse_sse_bytes, read_sse
from tests.waiting import wait_for

PATH = "/v1/tenants/demo/threads/{thread}/stream"


@pytest.fixture(scope="module", params=BACKENDS)
def app(request: pytest.FixtureRequest,
        mock_llm_server: ManagedProcess) -> Iterator[ManagedProcess]:
    storage: dict[str, str] = {}
    if request.param in REDIS_BACKENDS:
        redis_server: ManagedProcess = request.getfixturevalue("redis_server")
        url = f"redis://127.0.0.1:{redis_server.port}/0"  # RediSearch indexes live in db 0
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        storage = {"REDIS_URL": url,
                   "AGENTHOST_REDIS_CHECKPOINTER": REDIS_BACKENDS[request.param]}
    proc = start_app({
        **storage,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_llm_server.port}/v1",
        "AGENTHOST_STREAM_SEND_TIMEOUT_S": "1",
        "AGENTHOST_STREAM_SEND_CUTOFF_S": "3",
        "AGENTHOST_STREAM_HEARTBEAT_S": "0.2",
        "AGENTHOST_STREAM_MAX_PER_TENANT": "300",
        "AGENTHOST_LLM_MAX_RETRIES": "0",
        # the unread stream's 5 MB reply (the default cap is 256 KiB); its turn reservation
        # (16 x 5 MiB) still leaves room on this machine for the 200 concurrent streams
        "AGENTHOST_LLM_MAX_REPLY_KB": "5120",
    })
    yield proc
    proc.stop()


def base(app: ManagedProcess) -> str:
    return f"http://127.0.0.1:{app.port}"


def metric(app: ManagedProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{base(app)}/metrics").text
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def collect(client: httpx.AsyncClient, thread: str, message: str) -> list[Event | Comment]:
    out: list[Event | Comment] = []
    async with client.stream("POST", PATH.format(thread=thread),
                             json={"message": message}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        async for item in read_sse(response):
            out.append(item)
    return out


def history(app: ManagedProcess, thread: str) -> list[dict[str, object]]:
    response = httpx.get(f"{base(app)}/v1/tenants/demo/threads/{thread}/messages")
    if response.status_code == 404:
        return []
    messages: list[dict[str, object]] = response.json()["messages"]
    return messages


async def test_tokens_arrive_as_the_model_produces_them(
    app: ManagedProcess, mock_llm: MockLLM
) -> None:
    # The mock holds the reply after its first token until released: the client must see
    # that token while the model is still producing (no buffering anywhere between).
    evs: list[Event] = []
    async with httpx.AsyncClient(base_url=base(app), timeout=30) as client, client.stream(
        "POST", PATH.format(thread="first-token"),
        json={"message": "[[tokens:20]] [[gate:first-token]]"},
    ) as response:
        assert response.status_code == 200
        async for item in read_sse(response):
            if not isinstance(item, Event):
                continue
            evs.append(item)
            if len(evs) == 1:
                assert item.event == "token" and item.json["text"].startswith("tok0")
                mock_llm.control(release="first-token")
    assert [e.event for e in evs] == ["token"] * 20 + ["message", "done"]
    assert [e.n for e in evs] == list(range(1, 23))
    assert "".join(e.json["text"] for e in evs[:20]) == evs[20].json["content"]
    assert evs[-1].json["usage"]["total_tokens"] > 0


async def test_tool_events_and_history(app: ManagedProcess, mock_llm: MockLLM) -> None:
    async with httpx.AsyncClient(base_url=base(app), timeout=30) as client:
        items = await collect(client, "tools", '[[tool:calculator {"expression": "6*7"}]]')
    evs = [i for i in items if isinstance(i, Event)]
    tool_events = [e.json for e in evs if e.event == "tool"]
    assert [t["type"] for t in tool_events] == ["call", "result"]
    assert tool_events[0]["name"] == "calculator" and tool_events[1]["content"] == "42"
    assert evs[-2].json["content"] == "tool calculator returned: 42"
    roles = [m["role"] for m in history(app, "tools")]
    assert roles == ["user", "assistant", "tool", "assistant"]


async def test_heartbeats_on_an_idle_stream(app: ManagedProcess, mock_llm: MockLLM) -> None:
    mock_llm.control(latency_ms=1200)
    async with httpx.AsyncClient(base_url=base(app), timeout=30) as client:
        items = await collect(client, "idle", "wait for it")
    first_event = next(i for i, item in enumerate(items) if isinstance(item, Event))
    pings = [i for i in items[:first_event] if isinstance(i, Comment)]
    assert len(pings) >= 2 and all(p.text == "ping" for p in pings)


async def test_upstream_failure_mid_stream_is_an_error_event(
    app: ManagedProcess, mock_llm: MockLLM
) -> None:
    async with httpx.AsyncClient(base_url=base(app), timeout=30) as client:
        await collect(client, "drop", "hello")
        items = await collect(client, "drop", "[[fail:drop]] [[tokens:20]]")
    evs = [i for i in items if isinstance(i, Event)]
    assert evs[-1].event == "error" and evs[-1].json["code"] == "upstream_error"
    assert evs[-1].n == len(evs)
    user_messages = [m["content"] for m in history(app, "drop") if m["role"] == "user"]
    assert user_messages == ["hello"]  # the failed turn was undone


async def test_a_dropped_client_still_gets_its_turn_stored(
    app: ManagedProcess, mock_llm: MockLLM
) -> None:
    mock_llm.control(token_delay_ms=20)
    disconnected = metric(app, "agenthost_streams_ended_total", '{reason="disconnected"}')
    async with httpx.AsyncClient(base_url=base(app), timeout=30) as client:
        async with client.stream("POST", PATH.format(thread="dropped"),
                                 json={"message": "[[tokens:50]]"}) as response:
            tokens = 0
            async for item in read_sse(response):
                if isinstance(item, Event) and item.event == "token":
                    tokens += 1
                    if tokens == 3:
                        break  # leaving the block closes the connection
    wait_for(lambda: len(history(app, "dropped")) == 2)
    reply = history(app, "dropped")[1]["content"]
    assert isinstance(reply, str) and len(reply.split()) == 50
    wait_for(lambda: metric(app, "agenthost_streams_active") == 0)
    assert metric(app, "agenthost_streams_ended_total",
                  '{reason="disconnected"}') == disconnected + 1


async def test_200_concurrent_streams_complete(app: ManagedProcess, mock_llm: MockLLM) -> None:
    mock_llm.control(token_delay_ms=5)
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=base(app), timeout=60, limits=limits) as client:
        results = await asyncio.gather(*(
            collect(client, f"many-{i}", "[[tokens:10]]") for i in range(200)
        ))
    for items in results:
        evs = [i for i in items if isinstance(i, Event)]
        assert [e.event for e in evs][-2:] == ["message", "done"]
        assert len([e for e in evs if e.event == "token"]) == 10
    wait_for(lambda: metric(app, "agenthost_streams_active") == 0)


def unread_stream(app: ManagedProcess, thread: str) -> socket.socket:
    """A stream of 5,000 tokens of 1 KB (more than the socket buffers hold), requested by a
    client with a 4 KB receive buffer that has read nothing yet."""
    body = b"{\"message\": \"[[tokens:5000]] [[tokensize:1000]]\"}"
    request = (
        f"POST {PATH.format(thread=thread)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", app.port))
    sock.sendall(request)
    return sock


def test_a_client_that_reads_nothing_is_cut_off_with_bounded_memory(
    app: ManagedProcess, mock_llm: MockLLM
) -> None:
    slow_before = metric(app, "agenthost_streams_ended_total", '{reason="slow_consumer"}')
    rss_before = psutil.Process(app.pid).memory_info().rss
    sock = unread_stream(app, "slow")
    try:
        wait_for(lambda: metric(app, "agenthost_streams_ended_total",
                                '{reason="slow_consumer"}') == slow_before + 1)
        rss_during = psutil.Process(app.pid).memory_info().rss
        # now the client reads: what was in flight, then the slow_consumer error, then EOF
        sock.settimeout(10)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
            if b"slow_consumer" in raw and raw.endswith(b"0\r\n\r\n"):
                break
    finally:
        sock.close()
    # the turn still completes and is stored, all 5,000 tokens of it
    wait_for(lambda: len(history(app, "slow")) == 2)
    reply = history(app, "slow")[1]["content"]
    assert isinstance(reply, str) and len(reply.split()) == 5000
    assert metric(app, "agenthost_stream_queue_high_water") <= 100
    assert rss_during - rss_before < 30 * 1024 * 1024
    evs = parse_sse_bytes(dechunk(raw))
    assert evs[-1].event == "error" and evs[-1].json["code"] == "slow_consumer"
    assert len([e for e in evs if e.event == "token"]) < 5000
    wait_for(lambda: metric(app, "agenthost_streams_active") == 0)


def test_a_client_whose_socket_takes_nothing_is_disconnected(
    app: ManagedProcess, mock_llm: MockLLM
) -> None:
    """The socket takes nothing for the cutoff (3 s here): the service closes the connection.
    When exactly is the hub's to decide (tests/streaming/test_hub.py, with a fake clock)."""
    cut_before = metric(app, "agenthost_stream_clients_cut_total")
    sock = unread_stream(app, "stuck")
    try:
        wait_for(lambda: metric(app, "agenthost_stream_clients_cut_total") == cut_before + 1)
        # The connection is closed from the service's side: reading reaches its end (or a
        # reset) well before this timeout, which would raise instead.
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    finally:
        sock.close()
    # No lost turns: the reply the client never took is in the thread's history.
    wait_for(lambda: [m["role"] for m in history(app, "stuck")] == ["user", "assistant"])
    reply = history(app, "stuck")[1]["content"]
    assert isinstance(reply, str) and len(reply.split()) == 5000
    wait_for(lambda: httpx.get(f"{base(app)}/cache-stats").json()["streams"]["reading"] == 0)
    # the turn itself still completes and is stored
    wait_for(lambda: len(history(app, "stuck")) == 2)
    wait_for(lambda: metric(app, "agenthost_streams_active") == 0)


async def test_cancel_on_disconnect_stops_the_run(mock_llm: MockLLM) -> None:
    proc = start_app({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                      "AGENTHOST_CANCEL_ON_DISCONNECT": "true"})
    try:
        mock_llm.control(token_delay_ms=50)
        async with httpx.AsyncClient(base_url=base(proc), timeout=30) as client:
            async with client.stream("POST", PATH.format(thread="cancelled"),
                                     json={"message": "[[tokens:100]]"}) as response:
                async for item in read_sse(response):
                    if isinstance(item, Event) and item.event == "token":
                        break
        wait_for(lambda: metric(proc, "agenthost_streams_active") == 0)
        # the run stopped: its turn is undone rather than stored
        assert history(proc, "cancelled") == []
        assert metric(proc, "agenthost_streams_ended_total", '{reason="disconnected"}') == 1
    finally:
        proc.stop()


async def test_stream_caps_answer_429_with_retry_after(mock_llm: MockLLM) -> None:
    proc = start_app({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                      "AGENTHOST_STREAM_MAX_PER_TENANT": "2",
                      "AGENTHOST_STREAM_RETRY_AFTER_S": "7"})
    try:
        mock_llm.control(latency_ms=1500)
        async with httpx.AsyncClient(base_url=base(proc), timeout=30) as client:
            async def open_stream(tenant: str, thread: str) -> httpx.Response:
                request = client.build_request(
                    "POST", f"/v1/tenants/{tenant}/threads/{thread}/stream",
                    json={"message": "hi"})
                return await client.send(request, stream=True)

            first = await open_stream("demo", "a")
            second = await open_stream("demo", "b")
            third = await open_stream("demo", "c")
            assert [first.status_code, second.status_code] == [200, 200]
            assert third.status_code == 429 and third.headers["retry-after"] == "7"
            assert (await third.aread()).startswith(b'{"error":{"code":"too_many_streams"')
            for response in (first, second):
                await response.aclose()
        wait_for(lambda: metric(proc, "agenthost_streams_active") == 0)
        assert metric(proc, "agenthost_streams_rejected_total", '{cap="tenant"}') == 1
    finally:
        proc.stop()
