"""A whole service on any Redis: Redis 8 without modules, Valkey 9.1, and a 3-node Redis
Cluster, each a real server the tests start. On each, two service processes share it:
history survives a restart of the service, every conversation key has a TTL, DELETE
erases every key of a thread, 20 concurrent turns on one thread over both processes stay
in order, and a tenant change made through one process reaches the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from tests.conftest import SERVICE_KEY, MockLLM
from tests.servers.processes import (
    ManagedProcess,
    RedisCluster,
    start_app,
    start_redis,
    start_valkey,
)
from tests.waiting import wait_for

ADMIN = "admin-secret-token"
AUTH = {"Authorization": f"Bearer {SERVICE_KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
# conversation keys (the tenant store's own keys are configuration and never expire)
EXPIRING = ("agenthost:thread:", "agenthost:replay:", "agenthost:turn-lock:",
            "agenthost:tenant-running:", "agenthost:rate")


@dataclass
class Server:
    kind: str
    url: str
    ports: list[int]
    procs: list[ManagedProcess] = field(default_factory=list)
    cluster: RedisCluster | None = None

    def keys(self) -> dict[str, int]:
        """Every key on every node, with its TTL in ms (-1: none)."""
        found = {}
        for port in self.ports:
            with redis.Redis(port=port) as client:
                for key in client.scan_iter(count=500):
                    found[key.decode()] = int(client.pttl(key))
        return found

    def flush(self) -> None:
        for port in self.ports:
            with redis.Redis(port=port) as client:
                client.flushall()

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self.cluster is not None:
            self.cluster.stop()


@pytest.fixture(scope="module", params=["redis-without-modules", "valkey", "cluster"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    if request.param == "cluster":
        cluster = RedisCluster(3)
        made = Server("cluster", cluster.url, [n.port for n in cluster.nodes], cluster=cluster)
    else:
        proc = start_valkey() if request.param == "valkey" else start_redis(modules=False)
        made = Server(request.param, f"redis://127.0.0.1:{proc.port}/0", [proc.port], [proc])
    yield made
    made.stop()


def service(server: Server, mock_llm: MockLLM) -> ManagedProcess:
    return start_app({"REDIS_URL": server.url, "OPENAI_API_KEY": "sk-test",
                      "OPENAI_BASE_URL": mock_llm.base_url, "AGENTHOST_LLM_MAX_RETRIES": "0",
                      "AGENTHOST_SERVICE_API_KEYS": SERVICE_KEY,
                      "AGENTHOST_ADMIN_TOKEN": ADMIN, "AGENTHOST_HISTORY_TTL_S": "600",
                      "AGENTHOST_TENANT_TURNS_PER_MINUTE": "1000"})


def test_a_whole_service_on_it(server: Server, mock_llm: MockLLM) -> None:
    server.flush()
    one, two = service(server, mock_llm), service(server, mock_llm)
    a, b = f"http://127.0.0.1:{one.port}", f"http://127.0.0.1:{two.port}"
    thread = "/v1/tenants/demo/threads/any-1"
    try:
        ready = httpx.get(f"{a}/health/ready", headers=AUTH, timeout=10).json()
        assert ready["status"] == "ready", ready
        assert "plain checkpointer" in ready["storage"]
        assert ("(cluster)" in ready["storage"]) is (server.kind == "cluster")
        # JSON on one, a tool call on the other, streamed on the first
        assert httpx.post(f"{a}{thread}/messages", json={"message": "hello"}, headers=AUTH,
                          timeout=30).status_code == 200
        tool = '[[tool:calculator {"expression": "6*7"}]]'
        reply = httpx.post(f"{b}{thread}/messages", json={"message": tool}, headers=AUTH,
                           timeout=30).json()["reply"]["content"]
        assert "42" in reply
        with httpx.stream("POST", f"{a}{thread}/stream", json={"message": "streamed"},
                          headers=AUTH, timeout=30) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
        assert events[-1] == "event: done"
        # 20 concurrent turns on one thread, over both processes: one at a time, in order
        def post(i: int) -> int:
            return httpx.post(f"{(a, b)[i % 2]}/v1/tenants/demo/threads/busy/messages",
                              json={"message": f"m{i}"}, headers=AUTH,
                              timeout=60).status_code

        with ThreadPoolExecutor(20) as pool:
            assert list(pool.map(post, range(20))) == [200] * 20
        busy = httpx.get(f"{b}/v1/tenants/demo/threads/busy/messages", headers=AUTH,
                         timeout=10).json()["messages"]
        assert [m["role"] for m in busy] == ["user", "assistant"] * 20
        for asked, answered in zip(busy[::2], busy[1::2], strict=True):
            assert asked["content"] in answered["content"]
        # a tenant made through one process serves through the other within seconds
        config = {"system_prompt": "You are New.", "tools": ["calculator"]}
        assert httpx.put(f"{a}/v1/admin/tenants/newco", json=config, headers=ADMIN_AUTH,
                         timeout=10).status_code == 201
        wait_for(lambda: httpx.post(f"{b}/v1/tenants/newco/threads/t/messages",
                                    json={"message": "hi"}, headers=AUTH,
                                    timeout=30).status_code == 200)
        # every conversation key has a TTL; the tenant store's never expire
        keys = server.keys()
        conversation = {k: ttl for k, ttl in keys.items() if k.startswith(EXPIRING)}
        assert any(k.startswith("agenthost:thread:") for k in conversation)
        assert any(k.startswith("agenthost:replay:") for k in conversation)
        assert all(0 < ttl <= 600_000 for ttl in conversation.values()), conversation
        assert set(keys) - set(conversation) <= {
            "agenthost:tenants", "agenthost:tenants:version", "agenthost:tenants:seeded",
            "{agenthost:tenants}", "{agenthost:tenants}:version", "{agenthost:tenants}:seeded",
        }, keys
    finally:
        one.stop()
        two.stop()
    # the history survives a restart of the service
    three = service(server, mock_llm)
    c = f"http://127.0.0.1:{three.port}"
    try:
        history = httpx.get(f"{c}{thread}/messages", headers=AUTH, timeout=10).json()
        assert [m["role"] for m in history["messages"]] == [
            "user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
        turn = httpx.post(f"{c}{thread}/messages", json={"message": "after the restart"},
                          headers=AUTH, timeout=30).json()["reply"]["content"]
        assert "saw 10 messages" in turn or "after the restart" in turn
        # DELETE erases every key of the thread, on every node
        assert any("demo/any-1" in k for k in server.keys())
        assert httpx.delete(f"{c}{thread}", headers=AUTH, timeout=10).status_code == 204
        assert [k for k in server.keys() if "demo/any-1" in k] == []
        assert httpx.get(f"{c}{thread}/messages", headers=AUTH, timeout=10).status_code == 404
        # and purging a tenant erases all of its threads
        purged = httpx.delete(f"{c}/v1/admin/tenants/newco?purge=true", headers=ADMIN_AUTH,
                              timeout=30)
        assert purged.status_code == 200 and purged.json()["threads_deleted"] == 1
        assert [k for k in server.keys() if "newco" in k] == []
    finally:
        three.stop()
