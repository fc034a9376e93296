"""Every private of a library the service relies on, in one place, pinned.

Each is kept because it measurably pays (the figures are in README and the notes beside
the code). A library upgrade that renames one or changes its parameters fails here by
name, before it silently turns a fast path off or breaks a turn. Functional tests beside
each use check the behaviour too.
"""

from __future__ import annotations

import inspect
from typing import Any

import aiohttp
import pytest
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer
from limits.aio.storage import RedisClusterStorage
from redis.asyncio import RedisCluster
from redis.asyncio.client import Pipeline
from sse_starlette import EventSourceResponse

# (owner, name, parameters after self, where we use it and why)
PRIVATES: list[tuple[type[Any], str, list[str] | None, str]] = [
    (ChatOpenAI, "_get_request_payload", ["input_", "stop", "kwargs"],
     "app/llm/chat_model.py: LangChain's own JSON payload, posted through our aiohttp pool"),
    (ChatOpenAI, "_create_chat_result", ["response", "generation_info"],
     "app/llm/chat_model.py: a whole response converted inline, not in a thread"),
    (ChatOpenAI, "_convert_chunk_to_generation_chunk",
     ["chunk", "default_chunk_class", "base_generation_info"],
     "app/llm/chat_model.py: streamed chunks parsed with orjson, converted as LangChain does"),
    (ChatOpenAI, "_should_stream_usage", ["stream_usage", "kwargs"],
     "app/llm/chat_model.py: ask for usage on streamed calls as LangChain would"),
    (ChatOpenAI, "_use_responses_api", ["payload"],
     "app/llm/chat_model.py: Responses-API models stay on the SDK"),
    (ChatOpenAI, "_uses_gateway", None,
     "app/llm/chat_model.py: gateways stay on the SDK"),
    (EventSourceResponse, "_send_with_timeout", ["send", "message"],
     "app/streaming/response.py: per-send timeout without a cancel scope per event"),
    (Pipeline, "__init__", ["connection_pool", "response_callbacks", "transaction",
                            "shard_hint"],
     "app/persistence/redis.py: pipelines whose JSON commands parse with orjson"),
    (JsonPlusRedisSerializer, "_constructor_class", ["obj"],
     "app/persistence/redis.py: memoized class lookups (a failed import is not cached)"),
    (aiohttp.TCPConnector, "_create_connection", ["req", "traces", "timeout"],
     "app/llm/upstream.py: connections opened outside the calling turn's context"),
    (aiohttp.BaseConnector, "_release", ["key", "protocol", "should_close"],
     "app/llm/upstream.py: idle-cleanup timer armed outside the releasing turn's context"),
]


@pytest.mark.parametrize(("owner", "name", "parameters", "why"), PRIVATES,
                         ids=[f"{o.__name__}.{n}" for o, n, _, _ in PRIVATES])
def test_a_private_we_rely_on_is_still_there(owner: type[Any], name: str,
                                              parameters: list[str] | None, why: str) -> None:
    found = inspect.getattr_static(owner, name, None)
    assert found is not None, f"{owner.__module__}.{owner.__name__}.{name} is gone ({why})"
    if parameters is None:
        assert isinstance(found, property), f"{owner.__name__}.{name} is no longer a property"
        return
    signature = inspect.signature(found)
    assert list(signature.parameters)[1:] == parameters, (
        f"{owner.__name__}.{name} changed its parameters to {signature} ({why})")


def test_the_library_still_calls_the_privates_we_override() -> None:
    """Overriding a private helps only while the library calls it."""
    assert "self._send_with_timeout(" in inspect.getsource(EventSourceResponse)
    assert "self._constructor_class(" in inspect.getsource(
        JsonPlusRedisSerializer._revive_if_needed)
    assert "_key_cache_max_size" in inspect.getsource(AsyncRedisSaver.__init__)


def test_limits_cluster_bridge_still_holds_its_client() -> None:
    """app/tenants/limits.py opens ``limits``' own cluster client as the service's and
    closes it at shutdown, through its redis-py bridge's undocumented ``storage``
    attribute (listed in app/tenants/limits.py). Built without connecting."""
    storage = RedisClusterStorage("async+redis+cluster://127.0.0.1:1",
                                  implementation="redispy", socket_timeout=1.5)
    client = storage.bridge.storage
    assert isinstance(client, RedisCluster)
    assert client.connection_kwargs["socket_timeout"] == 1.5
