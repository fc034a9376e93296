"""Idle memory of Gunicorn's master and 2 workers, with ``preload_app`` on and off.

    python -m bench.worker_memory [--workers 2] [--turns 50]

Starts a Redis 8 and the mock OpenAI server, then the service as ``make run`` serves it
(``config/gunicorn.conf.py``) with Redis and ``--workers`` workers; serves ``--turns`` turns
so every worker has built its agent and pools, waits for quiet, and reads RSS and PSS of the
master and each worker from ``/proc``. Then again with ``preload_app`` off (each worker
imports the app itself). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from tests.servers.processes import ROOT, start_app, start_mock_openai, start_redis

MIB = 2**20


def tree_memory(pid: int) -> list[tuple[str, float, float]]:
    master = psutil.Process(pid)
    rows = []
    for index, proc in enumerate([master, *master.children(recursive=True)]):
        info = proc.memory_full_info()
        rows.append(("master" if index == 0 else f"worker {index}", info.rss / MIB,
                     info.pss / MIB))
    return rows


def measure(preload: bool, env: dict[str, str], turns: int) -> list[tuple[str, float, float]]:
    config = ROOT / "config" / "gunicorn.conf.py"
    if not preload:
        override = Path(tempfile.mkdtemp()) / "no_preload.conf.py"
        override.write_text(f"exec(open({str(config)!r}).read())\npreload_app = False\n")
        config = override
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    app = start_app(env, args=[gunicorn, "-c", str(config), "app.asgi:app"])
    try:
        base = f"http://127.0.0.1:{app.port}"
        for i in range(turns):  # new connections: both workers get some
            httpx.post(f"{base}/v1/tenants/demo/threads/w{i}/messages",
                       json={"message": "hello"}, timeout=30).raise_for_status()
        time.sleep(3)
        return tree_memory(app.pid)
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()
    redis, mock = start_redis(), start_mock_openai()
    env = {"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0", "OPENAI_API_KEY": "sk-bench",
           "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
           "AGENTHOST_WORKERS": str(args.workers), "AGENTHOST_LOG_LEVEL": "WARNING"}
    try:
        print("| preload | process | RSS MB | PSS MB |")
        print("|---|---|---|---|")
        for preload in (True, False):
            rows = measure(preload, env, args.turns)
            for name, rss, pss in rows:
                print(f"| {'on' if preload else 'off'} | {name} | {rss:.0f} | {pss:.0f} |")
            print(f"| {'on' if preload else 'off'} | **all** | {sum(r[1] for r in rows):.0f} "
                  f"| **{sum(r[2] for r in rows):.0f}** |", flush=True)
    finally:
        redis.stop()
        mock.stop()


if __name__ == "__main__":
    main()
