"""Fixtures: real Redis 8 and a real mock OpenAI server per session; a fresh app per test."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
import yaml

from app.llm.upstream import ChatCompletions
from app.main import create_app
from app.memory.governor import Meter
from config.settings import Settings
from tests.servers.processes import (
    ManagedProcess,
    RedisCluster,
    free_port,
    start_mcp_server,
    start_mock_openai,
    start_redis,
)

TENANT_KEY = "acme-secret-key"
OTHER_TENANT_KEY = "globex-secret-key"
SERVICE_KEY = "service-secret-key"

TEST_TENANTS: dict[str, Any] = {
    "demo": {"system_prompt": "You are Demo.", "tools": ["current_time", "calculator"]},
    "acme": {
        "system_prompt": "You are Acme.",
        "model": "acme-model",
        "temperature": 0.7,
        "tools": ["calculator"],
    },
    "globex": {"system_prompt": "You are Globex."},
    "shorty": {"system_prompt": "Short memory.", "history": {"max_messages": 4}},
}


def with_keys(tenants: dict[str, Any]) -> dict[str, Any]:
    """The test tenants with keys for acme and globex (which turns auth on)."""
    keyed = {name: dict(config) for name, config in tenants.items()}
    keyed["acme"]["api_keys_sha256"] = [hashlib.sha256(TENANT_KEY.encode()).hexdigest()]
    keyed["globex"]["api_keys_sha256"] = [hashlib.sha256(OTHER_TENANT_KEY.encode()).hexdigest()]
    return keyed


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: tests see only what they set themselves."""
    for name in list(os.environ):
        if name.startswith("AGENTHOST_") or name in {
            "OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL", "OPENAI_ORG_ID", "SSL_CERT_FILE",
            "SSL_CERT_DIR",
        }:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ManagedProcess]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: ManagedProcess) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(url) as client:
        client.flushall()
    return url


#: The Redis-backed variants API tests run on: langgraph-checkpoint-redis (the test Redis
#: has its modules) and the module-free checkpointer, on the same server.
REDIS_BACKENDS = {"redis": "langgraph", "plain-redis": "plain"}
BACKENDS = ["memory", *REDIS_BACKENDS]


def storage_for(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for a backend of ``BACKENDS``: none for the in-memory one; else the
    flushed test Redis and the checkpointer."""
    if backend not in REDIS_BACKENDS:
        return {}
    return {"redis_url": request.getfixturevalue("redis_url"),
            "redis_checkpointer": REDIS_BACKENDS[backend]}


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-node Redis Cluster (Redis 8.2, no modules)."""
    cluster = RedisCluster(3)
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    redis_cluster.flushall()
    return redis_cluster.url


class MockLLM:
    def __init__(self, proc: ManagedProcess) -> None:
        self.proc = proc
        self.base_url = f"http://127.0.0.1:{proc.port}/v1"

    def control(self, **behaviour: Any) -> None:
        httpx.post(f"http://127.0.0.1:{self.proc.port}/_control", json=behaviour).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = httpx.get(f"http://127.0.0.1:{self.proc.port}/_requests")
        result: list[dict[str, Any]] = response.json()["requests"]
        return result

    def count(self) -> int:
        count: int = httpx.get(f"http://127.0.0.1:{self.proc.port}/_requests").json()["count"]
        return count


def pool_for(base_url: str, **overrides: Any) -> ChatCompletions:
    """A chat-completions pool for a test: small, no retries unless asked."""
    options: dict[str, Any] = {"max_connections": 10, "connect_timeout_s": 2.0,
                               "read_timeout_s": 10.0, "max_retries": 0, **overrides}
    return ChatCompletions(base_url, "sk-test", **options)


@pytest.fixture(scope="session")
def mcp_server() -> Iterator[ManagedProcess]:
    server = start_mcp_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mock_llm_server() -> Iterator[ManagedProcess]:
    server = start_mock_openai()
    yield server
    server.stop()


@pytest.fixture
def mock_llm(mock_llm_server: ManagedProcess) -> MockLLM:
    mock = MockLLM(mock_llm_server)
    mock.control(mode="ok", latency_ms=0, token_delay_ms=0, reply_tokens=0, models_status=200,
                 reset_requests=True)
    return mock


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for one test: the test tenants (keyed ones with ``keys=True``) plus overrides."""

    def make(*, keys: bool = False, extra_tenants: dict[str, Any] | None = None,
             **overrides: Any) -> Settings:
        tenants = with_keys(TEST_TENANTS) if keys else dict(TEST_TENANTS)
        tenants.update(extra_tenants or {})
        path = tmp_path / f"tenants-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(tenants))
        return Settings(tenants_file=path, **overrides)

    return make


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process over ASGI, lifespan included (fast unit-level API tests)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


@asynccontextmanager
async def serve_app(settings: Settings, meter: Meter | None = None) -> AsyncIterator[str]:
    """The app on a real socket in this process and event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings, meter=meter), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
