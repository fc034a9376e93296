"""The memory promise in a real container: the service image under podman with a hard
memory limit, loaded by ``load_test.py`` in passes, its memory sampled from the
container's own cgroup and from ``/health/memory``.

    python -m bench.container_soak [--memory 512m] [--workers 2] [--passes 4]
                                   [--threads 300] [--turns 4] [--concurrency 16]
                                   [--message-bytes 1500] [--plot container.png]

Builds the images first (tests/containers/podman.py: podman installed and configured,
local Debian/Python/Redis bases, the repo's Dockerfile). Starts a Redis 8 and the mock
OpenAI server on this host and the service container on the host network (Gunicorn,
``--workers``, Redis), then runs ``--passes`` passes of ``load_test.py`` (new threads each
pass, ``--turns`` turns each, half streamed, messages of ``--message-bytes`` characters of
prose). The first pass is the warm-up; memory should be level from then on. Prints the
usage after each pass and the container's exit code; ``--plot`` draws usage over time.
``make container-test`` runs a short version and asserts it (tests/containers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.prose import Prose
from tests.containers.podman import (
    IMAGE,
    ROOT,
    cgroup_usage_bytes,
    ensure_images,
    ensure_podman,
    exit_code,
    podman,
)
from tests.servers.processes import ManagedProcess, free_port, start_mock_openai, start_redis

KEY = "container-soak-key"
MIB = 2**20


@dataclass
class Soak:
    samples: list[dict[str, Any]] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    oom_killed: bool = False
    started: float = field(default_factory=time.monotonic)

    def usage_at_pass_ends(self) -> list[float]:
        return [p["cgroup_mb"] for p in self.passes]


class Service:
    """The service image as a container on the host network, stopped (and removed) at exit."""

    def __init__(self, memory: str, env: dict[str, str], name: str | None = None) -> None:
        self.name = name or f"agenthost-soak-{free_port()}"
        self.port = free_port()
        args = ["run", "-d", "--name", self.name, "--network", "host", "--memory", memory,
                "--memory-swap", memory, "-e", f"AGENTHOST_PORT={self.port}",
                "-e", f"AGENTHOST_SERVICE_API_KEYS={KEY}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        podman(*args, IMAGE)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, within_s: float = 90) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert exit_code(self.name) is None, self.logs()
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not ready within {within_s:g}s:\n{self.logs()}")

    def logs(self, tail: int = 40) -> str:
        return podman("logs", "--tail", str(tail), self.name, check=False)

    def memory(self) -> dict[str, Any]:
        report: dict[str, Any] = httpx.get(f"{self.url}/health/memory", timeout=5).json()
        return report

    def stop(self) -> tuple[int | None, bool]:
        """(exit code if it had exited by itself, OOM-killed per the kernel's count)."""
        code = exit_code(self.name)
        oom = podman("inspect", "--format", "{{.State.OOMKilled}}", self.name,
                     check=False) == "true"
        podman("rm", "--force", "--time", "10", self.name, check=False)
        return code, oom


def sample(service: Service, soak: Soak, stop: threading.Event, every_s: float,
           current: list[int]) -> None:
    while not stop.is_set():
        point: dict[str, Any] = {"t": round(time.monotonic() - soak.started, 1),
                                 "pass": current[0]}
        try:
            point["cgroup_mb"] = round(cgroup_usage_bytes(service.name) / MIB, 1)
            memory = service.memory()
            point.update(usage_mb=memory["usage_mb"], pressure=memory["pressure"],
                         limit_mb=memory["limit_mb"])
        except (AssertionError, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
            point["error"] = repr(exc)[:200]
        soak.samples.append(point)
        stop.wait(every_s)


def load_pass(service: Service, number: int, args: argparse.Namespace, text: str,
              workdir: Path) -> dict[str, Any]:
    report = workdir / f"pass-{number}.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "load_test.py"), "--url", service.url, "--key", KEY,
         "--threads", str(args.threads), "--turns", str(args.turns),
         "--concurrency", str(args.concurrency), "--mode", "mixed", "--message", text,
         "--run-id", f"p{number}-{int(time.time())}", "--min-success", "0",
         "--report", str(report)],
        capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert report.exists(), result.stdout[-2000:] + result.stderr[-2000:]
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def run_soak(args: argparse.Namespace) -> Soak:
    ensure_podman()
    ensure_images()
    soak = Soak()
    redis = start_redis()
    mock: ManagedProcess | None = start_mock_openai(None, "--latency-ms", "20",
                                                    "--token-delay-ms", "1")
    service: Service | None = None
    stop = threading.Event()
    current = [0]
    try:
        assert mock is not None
        service = Service(args.memory, {
            "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "OPENAI_API_KEY": "sk-container-soak",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
            "AGENTHOST_WORKERS": str(args.workers),
            "AGENTHOST_LOG_LEVEL": "WARNING",
        })
        service.wait_ready()
        sampler = threading.Thread(target=sample, args=(service, soak, stop, args.sample_s,
                                                        current), daemon=True)
        sampler.start()
        prose = Prose()
        with tempfile.TemporaryDirectory(prefix="agenthost-container-soak-") as tmp:
            for number in range(1, args.passes + 1):
                current[0] = number
                result = load_pass(service, number, args, prose.message(args.message_bytes),
                                   Path(tmp))
                summary = result
                usage = cgroup_usage_bytes(service.name) / MIB
                soak.passes.append({
                    "pass": number, "cgroup_mb": round(usage, 1),
                    "usage_mb": service.memory()["usage_mb"],
                    "turns": summary["turns"], "ok": summary["ok"],
                    "turns_per_s": summary["turns_per_s"],
                    "errors": summary.get("errors", {}),
                })
                print(f"pass {number}: {summary['ok']}/{summary['turns']} ok, "
                      f"{summary['turns_per_s']:.0f} turns/s, cgroup usage {usage:.0f} MiB, "
                      f"errors {summary.get('errors') or {}}, "
                      f"exit code {exit_code(service.name)}", flush=True)
    finally:
        stop.set()
        if service is not None:
            soak.exit_code, soak.oom_killed = service.stop()
        if mock is not None:
            mock.stop()
        redis.stop()
    return soak


def plot(soak: Soak, path: str, title: str, limit_mb: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in soak.samples if "cgroup_mb" in p]
    fig, axis = plt.subplots(figsize=(9, 4.5))
    axis.plot([p["t"] for p in points], [p["cgroup_mb"] for p in points],
              label="container cgroup usage (minus inactive file)")
    axis.plot([p["t"] for p in points if "usage_mb" in p],
              [p["usage_mb"] for p in points if "usage_mb" in p], label="/health/memory usage",
              linestyle="--")
    axis.axhline(limit_mb, color="red", linewidth=1, label=f"limit {limit_mb:g} MiB")
    for number in range(2, len(soak.passes) + 1):
        start = next((p["t"] for p in points if p["pass"] == number), None)
        if start is not None:
            axis.axvline(start, color="grey", linewidth=0.5)
    axis.set_xlabel("seconds")
    axis.set_ylabel("MiB")
    axis.set_ylim(0, limit_mb * 1.1)
    axis.set_title(title)
    axis.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", default="512m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=300)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--message-bytes", type=int, default=1500)
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--plot")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    soak = run_soak(args)
    ends = soak.usage_at_pass_ends()
    peak = max((p["cgroup_mb"] for p in soak.samples if "cgroup_mb" in p), default=0.0)
    print(f"usage after each pass (MiB): {ends}; peak {peak:.0f} MiB of {args.memory}; "
          f"growth after the warm-up pass: {ends[-1] - ends[0]:+.1f} MiB; "
          f"exit code {soak.exit_code} (None: still running when stopped), "
          f"OOM-killed {soak.oom_killed}")
    if args.plot:
        limit = float(args.memory.rstrip("mM"))
        plot(soak, args.plot, f"agenthost in a {args.memory} container: {args.workers} "
             f"workers, Redis, {args.passes} passes of load_test.py", limit)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
