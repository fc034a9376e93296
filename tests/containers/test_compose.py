"""compose.yaml for real: built, up with the test override, chatted with, restarted, down."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.containers.podman import ROOT, exit_code, healthy, podman, run
from tests.servers.processes import free_port

pytestmark = pytest.mark.container

KEY = "container-test-service-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def wait_healthy(*containers: str, within_s: float = 180) -> None:
    deadline = time.monotonic() + within_s
    waiting = list(containers)
    while waiting and time.monotonic() < deadline:
        for name in list(waiting):
            assert exit_code(name) is None, podman("logs", "--tail", "50", name)
            if healthy(name):
                waiting.remove(name)
        time.sleep(1)
    assert not waiting, f"not healthy within {within_s:g}s: {waiting}"


@pytest.fixture
def stack(images: dict[str, float]) -> Iterator[tuple[str, dict[str, str]]]:
    project = f"agenthost-ct{os.getpid()}"
    port = free_port()
    env = {"AGENTHOST_SERVICE_API_KEYS": KEY, "AGENTHOST_PUBLISH_PORT": str(port)}
    compose = ["podman-compose", "-p", project, "-f", "compose.yaml",
               "-f", "tests/containers/compose.test.yaml"]
    try:
        run([*compose, "up", "-d", "redis", "agenthost"], cwd=ROOT, env=env, timeout=300)
        names = podman("ps", "--filter", f"label=io.podman.compose.project={project}",
                       "--format", "{{.Names}}").split()
        found = {"agenthost": next(n for n in names if "agenthost_" in n.removeprefix(project)),
                 "redis": next(n for n in names if "redis" in n.removeprefix(project))}
        yield f"http://127.0.0.1:{port}", found
    finally:
        run([*compose, "down", "-v"], cwd=ROOT, env=env, check=False, timeout=300)
        podman("network", "rm", "--force", f"{project}_default", check=False)


def turn(url: str, thread: str, text: str) -> str:
    response = httpx.post(f"{url}/v1/tenants/demo/threads/{thread}/messages",
                          json={"message": text}, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    reply: str = response.json()["reply"]["content"]
    return reply


def test_compose_serves_streams_survives_a_restart_and_runs_as_non_root(
    stack: tuple[str, dict[str, str]]
) -> None:
    url, names = stack
    wait_healthy(names["redis"], names["agenthost"])
    ready = httpx.get(f"{url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    # chat, then stream, on one thread
    assert "hello from compose" in turn(url, "c1", "hello from compose")
    with httpx.stream("POST", f"{url}/v1/tenants/demo/threads/c1/stream",
                      json={"message": "and a stream"}, headers=AUTH, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert events.count("token") > 1 and events[-1] == "done"
    # unauthenticated: refused (the service binds 0.0.0.0 in its container)
    assert httpx.post(f"{url}/v1/tenants/demo/threads/c1/messages",
                      json={"message": "x"}, timeout=10).status_code == 401
    # the memory limit is the container's, read from its cgroup
    memory = httpx.get(f"{url}/health/memory", timeout=10).json()
    assert memory["limit_mb"] == 512 and memory["limit_source"].startswith("cgroup")
    assert memory["usage_source"] == "cgroup"
    # non-root
    assert podman("exec", names["agenthost"], "id", "-u") != "0"
    # a restart: the conversation is in Redis, not in the container
    podman("restart", "--time", "30", names["agenthost"])
    wait_healthy(names["agenthost"])
    history = httpx.get(f"{url}/v1/tenants/demo/threads/c1/messages", headers=AUTH,
                        timeout=10).json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert "turn 3" in turn(url, "c1", "after the restart")
