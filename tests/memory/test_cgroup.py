"""Limits and usage read from fake cgroup v1 and v2 trees (the root is injectable)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from app.memory.cgroup import find_cgroup_memory
from app.memory.usage import MIB, MemoryMeter, ProcessTree, pss_bytes

V1_NO_LIMIT = "9223372036854771712"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path: Path, own: str = "/", **files: str) -> tuple[Path, Path]:
    root = tmp_path / "cg2"
    write(root / "cgroup.controllers", "cpu memory pids\n")
    for rel, text in files.items():
        write(root / rel.replace("__", "/"), text)
    proc = tmp_path / "proc-cgroup"
    write(proc, f"0::{own}\n")
    return root, proc


def v1_tree(tmp_path: Path, own: str = "/", **files: str) -> tuple[Path, Path]:
    root = tmp_path / "cg1"
    (root / "memory").mkdir(parents=True)
    for rel, text in files.items():
        write(root / "memory" / rel.replace("__", "/"), text)
    proc = tmp_path / "proc-cgroup"
    write(proc, f"12:pids:/\n9:memory:{own}\n1:name=systemd:/\n")
    return root, proc


def test_v2_limit_and_usage_minus_inactive_file(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path, **{
        "memory.max": f"{512 * MIB}\n", "memory.current": f"{300 * MIB}\n",
        "memory.stat": f"anon {200 * MIB}\nfile {100 * MIB}\ninactive_file {40 * MIB}\n",
    })
    found = find_cgroup_memory(root, proc)
    assert found is not None and found.version == 2 and found.source == "cgroup v2"
    assert found.limit_bytes == 512 * MIB
    assert found.usage_bytes() == 260 * MIB


@pytest.mark.parametrize("value", ["max\n", "0\n", "garbage\n", ""])
def test_v2_without_a_limit(tmp_path: Path, value: str) -> None:
    root, proc = v2_tree(tmp_path, **{"memory.max": value})
    assert find_cgroup_memory(root, proc) is None


def test_v2_tightest_limit_from_the_own_cgroup_up(tmp_path: Path) -> None:
    own = "/kubepods/pod1/ctr"
    root, proc = v2_tree(tmp_path, own=own, **{
        "kubepods__memory.max": "max\n",
        "kubepods__pod1__memory.max": f"{256 * MIB}\n",
        "kubepods__pod1__memory.current": f"{100 * MIB}\n",
        "kubepods__pod1__memory.stat": "inactive_file 0\n",
        "kubepods__pod1__ctr__memory.max": f"{1024 * MIB}\n",
    })
    found = find_cgroup_memory(root, proc)
    assert found is not None and found.limit_bytes == 256 * MIB
    assert found.path == root / "kubepods" / "pod1"
    assert found.usage_bytes() == 100 * MIB


def test_v1_limit_and_usage_minus_total_inactive_file(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path, **{
        "memory.limit_in_bytes": f"{768 * MIB}\n",
        "memory.usage_in_bytes": f"{500 * MIB}\n",
        "memory.stat": f"cache {10 * MIB}\ninactive_file {1 * MIB}\n"
                       f"total_inactive_file {50 * MIB}\n",
    })
    found = find_cgroup_memory(root, proc)
    assert found is not None and found.version == 1 and found.limit_bytes == 768 * MIB
    assert found.usage_bytes() == 450 * MIB


def test_v1_no_limit_value_is_no_limit(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path, **{"memory.limit_in_bytes": V1_NO_LIMIT})
    assert find_cgroup_memory(root, proc) is None


def test_v1_own_path_missing_inside_a_namespace_falls_back_to_the_root(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path, own="/docker/abc123", **{
        "memory.limit_in_bytes": f"{300 * MIB}\n"})
    found = find_cgroup_memory(root, proc)
    assert found is not None and found.path == root / "memory"


def test_no_cgroup_filesystem(tmp_path: Path) -> None:
    assert find_cgroup_memory(tmp_path / "nothing", tmp_path / "no-proc-file") is None


def test_meter_sources_setting_then_cgroup_then_machine(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path, **{
        "memory.max": f"{512 * MIB}\n", "memory.current": f"{64 * MIB}\n",
        "memory.stat": "inactive_file 0\n"})
    by_cgroup = MemoryMeter(None, cgroup_root=root, proc_cgroup=proc)
    assert (by_cgroup.limit.source, by_cgroup.limit.bytes) == ("cgroup v2", 512 * MIB)
    assert by_cgroup.usage_source == "cgroup" and by_cgroup.usage_bytes() == 64 * MIB
    # a limit set by hand measures this service's own processes, not the cgroup
    by_setting = MemoryMeter(300, cgroup_root=root, proc_cgroup=proc)
    assert (by_setting.limit.source, by_setting.limit.bytes) == ("setting", 300 * MIB)
    assert by_setting.usage_source == "process tree PSS"
    own = psutil.Process().memory_info().rss
    assert 0.5 * own < by_setting.usage_bytes() < 1.5 * own
    machine = MemoryMeter(None, cgroup_root=tmp_path / "none", proc_cgroup=proc)
    assert machine.limit.source == "machine"
    assert machine.limit.bytes == psutil.virtual_memory().total


def test_an_unreadable_cgroup_usage_falls_back_to_the_process_tree(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  ) -> None:
    root, proc = v2_tree(tmp_path, **{"memory.max": f"{512 * MIB}\n"})  # no memory.current
    meter = MemoryMeter(None, cgroup_root=root, proc_cgroup=proc)
    assert meter.usage_bytes() > 10 * MIB
    assert meter.usage_bytes() > 10 * MIB
    assert sum("cannot read cgroup memory usage" in r.message for r in caplog.records) == 1


def test_process_tree_counts_children_by_pss() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; b = bytearray(b'x') * (40 << 20); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        from tests.waiting import wait_for

        wait_for(lambda: pss_bytes(child.pid) > 40 * MIB)
        alone = pss_bytes(os.getpid())
        tree = ProcessTree(os.getpid())
        assert child.pid in tree.pids()
        assert tree.usage_bytes() >= alone + 40 * MIB
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
