"""The memory promise where it matters: the service image in a container with a hard
memory limit (podman, cgroup), never OOM-killed.

- 512 MB, Gunicorn with 2 workers, Redis: passes of load_test.py (multi-turn threads, JSON
  and SSE, 1,500-character messages); after the warm-up pass, memory is level.
- 256 MB, the embedded default (one worker, in-memory store): a flood of concurrent turns
  with 5 MB replies gets 503 memory_pressure beyond what fits, and the service recovers;
  the same flood with the governor blind to the limit gets the worker OOM-killed (the
  control that shows the flood is real).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import httpx
import pytest

from bench.container_soak import KEY, Service, Soak, parse, run_soak, sample
from tests.containers.podman import exit_code
from tests.servers.processes import start_mock_openai
from tests.waiting import wait_for

pytestmark = pytest.mark.container

AUTH = {"Authorization": f"Bearer {KEY}"}


def test_512m_with_two_workers_and_redis_levels_off_under_load(
    images: dict[str, float],
) -> None:
    soak = run_soak(parse(["--passes", "3", "--threads", "150", "--turns", "3",
                           "--concurrency", "16"]))
    print("passes:", soak.passes)
    assert soak.exit_code is None and not soak.oom_killed  # still running when stopped
    for done in soak.passes:
        assert done["ok"] >= 0.99 * done["turns"], done
    cgroup = [p["cgroup_mb"] for p in soak.samples if "cgroup_mb" in p]
    reported = [p for p in soak.samples if "usage_mb" in p]
    assert len(cgroup) >= 10 and len(reported) >= 10
    assert all(p["limit_mb"] == 512 for p in reported)
    assert max(cgroup) < 0.85 * 512
    ends = soak.usage_at_pass_ends()
    # after the warm-up pass, 450 more turns on 150 new threads per pass add almost nothing
    assert ends[2] - ends[1] <= 8, ends
    assert ends[2] - ends[0] <= 16, ends


@pytest.mark.parametrize("governed", [True, False], ids=["governed", "blind"])
def test_256m_embedded_default_refuses_a_flood_instead_of_dying_and_recovers(
    images: dict[str, float], governed: bool,
) -> None:
    """64 concurrent turns with 5 MB replies (the reply cap raised to 6 MiB to allow them).
    Governed, the worker takes what fits and refuses the rest with 503. Blind (the
    governor told a 100 GB limit: the control), the same flood gets the worker OOM-killed
    by the container's cgroup, every turn in flight and the in-memory store lost with it."""
    mock = start_mock_openai(None, "--latency-ms", "1500")
    service: Service | None = None
    soak = Soak()
    stop = threading.Event()
    env = {"OPENAI_API_KEY": "sk-container-test",
           "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
           "AGENTHOST_LOG_LEVEL": "WARNING", "AGENTHOST_LLM_MAX_REPLY_KB": "6144"}
    if not governed:
        env["AGENTHOST_MEMORY_LIMIT_MB"] = "100000"
    try:
        service = Service("256m", env)
        service.wait_ready()
        assert service.memory()["workers_sharing"] == 1
        worker = worker_pid(service.url)
        sampler = threading.Thread(target=sample, args=(service, soak, stop, 0.5, [1]),
                                   daemon=True)
        sampler.start()
        outcomes = asyncio.run(flood(service.url, 64, 5000))
        assert exit_code(service.name) is None, service.logs()  # Gunicorn's master lives
        statuses = Counter(o["status"] for o in outcomes)
        print(f"{'governed' if governed else 'blind'} flood: {dict(statuses)}; peak cgroup "
              f"usage {max(p.get('cgroup_mb', 0) for p in soak.samples):.0f} MiB of 256")
        if not governed:
            wait_for(lambda: worker_pid(service.url) not in {None, worker}, safety_s=60)
            assert "SIGKILL" in service.logs(200) or statuses[0], service.logs()
            return
        assert worker_pid(service.url) == worker, "the worker was replaced"
        refused = [o for o in outcomes if o["status"] == 503]
        assert refused and all(o["code"] == "memory_pressure" and o["retry_after"]
                               for o in refused)
        assert statuses[200] >= 1 and statuses[200] + statuses[503] == len(outcomes)
        # recovers: the next turns are served, nothing is left in flight
        after = httpx.post(f"{service.url}/v1/tenants/demo/threads/after/messages",
                           json={"message": "hello again"}, headers=AUTH, timeout=30)
        assert after.status_code == 200, after.text
        memory = service.memory()
        assert memory["turns_in_flight"] == 0 and memory["refusals"]
        peak = max(p["cgroup_mb"] for p in soak.samples if "cgroup_mb" in p)
        assert peak < 256
    finally:
        stop.set()
        if service is not None:
            service.stop()
        mock.stop()


def worker_pid(url: str) -> int | None:
    try:
        pid: int = httpx.get(f"{url}/cache-stats", headers=AUTH,
                             timeout=5).json()["worker_pid"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return pid


async def flood(url: str, concurrent: int, reply_kb: int) -> list[dict[str, Any]]:
    """``concurrent`` turns at once, a quarter streamed; status 0: the connection dropped."""
    text = f"[[tokens:{reply_kb}]] [[tokensize:1000]]"
    limits = httpx.Limits(max_connections=concurrent)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120,
                                 limits=limits) as client:

        async def one(i: int) -> dict[str, Any]:
            route = "stream" if i % 4 == 0 else "messages"
            path = f"/v1/tenants/demo/threads/flood-{i}/{route}"
            try:
                async with client.stream("POST", path, json={"message": text}) as response:
                    body = await response.aread()
            except httpx.TransportError:
                return {"status": 0, "route": route}
            outcome: dict[str, Any] = {"status": response.status_code, "route": route,
                                       "retry_after": response.headers.get("retry-after")}
            if response.status_code != 200:
                outcome["code"] = httpx.Response(503, content=body).json()["error"]["code"]
            elif route == "stream":
                assert b"event: done" in body, body[-300:]
            return outcome

        return list(await asyncio.gather(*(one(i) for i in range(concurrent))))
