"""The memory limit and usage of this process's cgroup, v2 or v1, read from its files.

The root of the cgroup filesystem and ``/proc/self/cgroup`` are injectable, so tests read
fake trees. From the process's own cgroup up to the root, the tightest limit binds (a
container's limit may sit on an ancestor, as with systemd slices); usage is read from the
cgroup that sets it, minus the inactive page cache, as ``docker stats`` does (the kernel
reclaims that before it kills anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages);
# anything this large is no limit on any real machine.
NO_LIMIT_V1 = 2**60


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """A cgroup directory holding a memory limit, and how to read its usage."""

    version: int
    path: Path
    limit_bytes: int

    @property
    def source(self) -> str:
        return f"cgroup v{self.version}"

    def usage_bytes(self) -> int:
        """Usage minus inactive page cache; raises OSError/ValueError if unreadable."""
        if self.version == 2:
            usage = int((self.path / "memory.current").read_text())
            inactive = _stat(self.path / "memory.stat").get("inactive_file", 0)
        else:
            usage = int((self.path / "memory.usage_in_bytes").read_text())
            stat = _stat(self.path / "memory.stat")
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        return max(0, usage - inactive)


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's memory controller."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, own: str | None) -> list[Path]:
    """Own cgroup directory first, then each parent up to ``root``; missing ones skipped
    (inside a cgroup namespace the own path is "/", which is ``root`` itself)."""
    dirs = []
    rel = PurePosixPath(own or "/")
    while True:
        candidate = root.joinpath(*rel.parts[1:]) if len(rel.parts) > 1 else root
        if candidate.is_dir():
            dirs.append(candidate)
        if len(rel.parts) <= 1:
            break
        rel = rel.parent
    return dirs


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value <= 0 or value >= NO_LIMIT_V1 else value


def find_cgroup_memory(root: Path = DEFAULT_ROOT,
                       proc_cgroup: Path = PROC_SELF_CGROUP) -> CgroupMemory | None:
    """The cgroup whose memory limit binds this process, or None if none is limited."""
    v2_path, v1_path = _own_paths(proc_cgroup)
    found: list[CgroupMemory] = []
    if (root / "cgroup.controllers").exists():  # the unified (v2) hierarchy
        for directory in _ancestors(root, v2_path):
            limit = _read_limit(directory / "memory.max")
            if limit is not None:
                found.append(CgroupMemory(2, directory, limit))
    elif (root / "memory").is_dir():
        for directory in _ancestors(root / "memory", v1_path):
            limit = _read_limit(directory / "memory.limit_in_bytes")
            if limit is not None:
                found.append(CgroupMemory(1, directory, limit))
    return min(found, key=lambda c: c.limit_bytes, default=None)
