"""The memory available to napari-unet: the machine's, or what a control group's limit leaves (a Slurm
job's --mem, a container's): a job given 8 GB of a 512 GB node was told 400 GB, and the system killed it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_unet._memory import cgroup_available

GB = 2**30


def _group(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_cgroup_v2_limit_of_the_group_or_of_a_parent_is_what_is_left(tmp_path):
    # the job's group has no limit of its own; its parent (the Slurm job) has 8 GB, 5 GB used, of it 1 GB of
    # inactive page cache (the kernel gives that back first) and 2 GB of active (half of it counted free)
    _group(tmp_path / "job", {"memory.max": str(8 * GB), "memory.current": str(5 * GB),
                              "memory.stat": f"anon 123\ninactive_file {GB}\nactive_file {2 * GB}\n"})
    _group(tmp_path / "job" / "step", {"memory.max": "max", "memory.current": str(5 * GB)})
    assert cgroup_available("0::/job/step\n", tmp_path) == 5 * GB
    # a tighter limit below it wins
    _group(tmp_path / "job" / "step", {"memory.max": str(6 * GB), "memory.current": str(5 * GB)})
    assert cgroup_available("0::/job/step\n", tmp_path) == 1 * GB
    # no limit anywhere, or no memory files (not Linux, a cgroup without the memory controller)
    _group(tmp_path / "free", {"memory.max": "max", "memory.current": "1"})
    assert cgroup_available("0::/free\n", tmp_path) is None
    assert cgroup_available("", tmp_path) is None and cgroup_available("garbage\n", tmp_path) is None


def test_a_cgroup_v1_memory_limit_and_a_containers_own_root(tmp_path):
    _group(tmp_path / "memory" / "slurm" / "job_1", {
        "memory.limit_in_bytes": str(2 * GB), "memory.usage_in_bytes": str(GB),
        "memory.stat": "cache 5\ntotal_inactive_file 1024\n"})
    text = "4:memory:/slurm/job_1\n3:cpuset:/\n0::/\n"
    assert cgroup_available(text, tmp_path) == GB + 1024
    # 2^63 less a page: v1's "no limit"
    _group(tmp_path / "memory" / "open", {"memory.limit_in_bytes": "9223372036854771712",
                                          "memory.usage_in_bytes": "5"})
    assert cgroup_available("4:memory:/open\n", tmp_path) is None
    # a container: the kernel names a path outside what is mounted, whose root is the container's group
    _group(tmp_path / "memory", {"memory.limit_in_bytes": str(3 * GB), "memory.usage_in_bytes": str(GB)})
    assert cgroup_available("4:memory:/docker/abc123\n", tmp_path) == 2 * GB


def test_where_the_hierarchies_are_mounted_comes_from_mountinfo(tmp_path):
    """v1's memory controller mounted with another ("cpu,memory"), and a container's hierarchy mounted from
    its own group (mount root /docker/abc): found through /proc/self/mountinfo, not at a fixed place."""
    both = tmp_path / "cpu,memory"
    _group(both / "job", {"memory.limit_in_bytes": str(2 * GB), "memory.usage_in_bytes": str(GB)})
    mountinfo = (f"31 23 0:28 / {tmp_path} rw - tmpfs tmpfs rw\n"
                 f"35 31 0:33 / {both} rw,relatime shared:9 - cgroup cgroup rw,cpu,memory\n")
    assert cgroup_available("4:cpu,memory:/job\n", tmp_path, mountinfo) == GB
    mounted = tmp_path / "unified"  # (cgroup v2, mounted from the container's group)
    _group(mounted / "inner", {"memory.max": str(4 * GB), "memory.current": str(GB)})
    mountinfo = f"40 31 0:40 /docker/abc {mounted} rw - cgroup2 cgroup2 rw\n"
    assert cgroup_available("0::/docker/abc/inner\n", tmp_path, mountinfo) == 3 * GB


def test_available_memory_is_never_more_than_a_limit_leaves():
    """In a real memory cgroup capped at 1 GiB (Linux, root, a writable cgroup v1 hierarchy), the memory
    said available is at most that, whatever the machine has."""
    group = Path(f"/sys/fs/cgroup/memory/napari_unet_test_{os.getpid()}")
    try:
        group.mkdir(exist_ok=True)
    except OSError:
        pytest.skip("no writable cgroup v1 memory hierarchy here")
    try:
        (group / "memory.limit_in_bytes").write_text(str(GB))
    except OSError:
        group.rmdir()
        pytest.skip("no memory limit can be set here")
    try:
        def join() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        child = subprocess.run([sys.executable, "-c", "from napari_unet._memory import available_memory as a; "
                                "print(a())"], preexec_fn=join, capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        assert 0 < int(child.stdout) <= GB
    finally:
        group.rmdir()


def test_a_cgroup_cpu_quota_is_the_cpus_a_process_may_use(tmp_path):
    """``docker --cpus 1.5`` (a CFS quota, not an affinity): the cores seen are all the machine's, the time
    given is 1.5 of them; the engine's threads follow it (every core's thread competed for that time)."""
    from napari_unet._memory import cgroup_cpus

    _group(tmp_path / "cpu" / "job", {"cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000"})
    assert cgroup_cpus("3:cpu,cpuacct:/job\n", tmp_path) == 1.5
    _group(tmp_path / "cpu" / "free", {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    assert cgroup_cpus("3:cpu,cpuacct:/free\n", tmp_path) is None
    _group(tmp_path / "job2", {"cpu.max": "200000 100000"})  # (cgroup v2)
    _group(tmp_path / "job2" / "step", {"cpu.max": "max 100000"})
    assert cgroup_cpus("0::/job2/step\n", tmp_path) == 2.0
    assert cgroup_cpus("", tmp_path) is None
