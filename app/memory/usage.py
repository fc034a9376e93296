"""How much memory this service uses: the limit it lives under, and its usage against it.

``MemoryMeter`` resolves the limit once (the setting, else the cgroup's, else the machine's
RAM) and reads usage the way that limit is enforced: a limited cgroup's own count when the
cgroup sets the limit (it covers every worker and the master); otherwise this process tree
(the service's root process and all its descendants, e.g. a Gunicorn master and workers)
counted by PSS, so pages shared after a preloaded fork count once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.memory.cgroup import (
    DEFAULT_ROOT,
    PROC_SELF_CGROUP,
    CgroupMemory,
    find_cgroup_memory,
)

logger = logging.getLogger(__name__)

MIB = 2**20
# Set by the Gunicorn master (config/gunicorn.conf.py) to its pid: each worker then counts
# the whole tree (master and every worker), not itself alone.
TREE_ROOT_ENV = "AGENTHOST_PROCESS_TREE_ROOT_PID"
# And to the number of workers: each admits turns into its share of the room left.
WORKERS_ENV = "AGENTHOST_GUNICORN_WORKERS"
# Listing a process's descendants walks all of /proc (~1 ms); workers come and go rarely.
# Listed again after this long, or at once when a listed process is gone.
CHILDREN_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class Limit:
    bytes: int
    source: str  # "setting", "cgroup v1", "cgroup v2" or "machine"


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process, from ``/proc/PID/smaps_rollup``."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no Pss line for pid {pid}")


class ProcessTree:
    """PSS of a root process and its descendants (RSS where PSS cannot be read)."""

    def __init__(self, root_pid: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.root_pid = root_pid
        self._clock = clock
        self._members: list[int] = [root_pid]
        self._listed_at: float | None = None

    def pids(self) -> list[int]:
        now = self._clock()
        if self._listed_at is None or now - self._listed_at >= CHILDREN_REFRESH_S:
            try:
                children = psutil.Process(self.root_pid).children(recursive=True)
                self._members = [self.root_pid, *(c.pid for c in children)]
            except psutil.Error:
                self._members = [os.getpid()]
            self._listed_at = now
        return self._members

    def usage_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += pss_bytes(pid)
            except (OSError, ValueError):
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:  # gone since it was listed (a recycled worker)
                    self._listed_at = None
        return total


class MemoryMeter:
    def __init__(self, limit_mb: float | None, *, cgroup_root: Path = DEFAULT_ROOT,
                 proc_cgroup: Path = PROC_SELF_CGROUP, root_pid: int | None = None) -> None:
        self.cgroup: CgroupMemory | None = find_cgroup_memory(cgroup_root, proc_cgroup)
        if limit_mb is not None:
            self.limit = Limit(int(limit_mb * MIB), "setting")
        elif self.cgroup is not None:
            self.limit = Limit(self.cgroup.limit_bytes, self.cgroup.source)
        else:
            self.limit = Limit(psutil.virtual_memory().total, "machine")
        self.tree = ProcessTree(root_pid or int(os.environ.get(TREE_ROOT_ENV) or 0)
                                or os.getpid())
        # The cgroup's count only measures against the cgroup's own limit: a smaller limit
        # set by hand applies to this service, not to whatever else shares the cgroup.
        self.usage_source = ("cgroup" if self.limit.source.startswith("cgroup")
                             else "process tree PSS")
        self._cgroup_failed = False

    def usage_bytes(self) -> int:
        if self.usage_source == "cgroup" and self.cgroup is not None:
            try:
                return self.cgroup.usage_bytes()
            except (OSError, ValueError) as exc:
                if not self._cgroup_failed:
                    logger.warning("cannot read cgroup memory usage (%r); counting the "
                                   "process tree instead", exc)
                    self._cgroup_failed = True
        return self.tree.usage_bytes()


def rss_bytes() -> int:
    """This process's resident set size."""
    return int(psutil.Process().memory_info().rss)
