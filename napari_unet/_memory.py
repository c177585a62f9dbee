"""The memory available now, for the reader's lazy-or-not choice and the engine's tile size (no torch,
no napari: both the reader and the core read it)."""

from __future__ import annotations

import os
from pathlib import Path

#: Where Linux mounts the control groups (cgroup v2's one hierarchy, or v1's "memory" one below it).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A cgroup v1 limit at or above this is "no limit" (the kernel writes 2^63 less a page).
_NO_LIMIT = 1 << 60


def available_memory() -> int | None:
    """Bytes of RAM available now (free memory and what the page cache gives back), or None when it
    cannot be told. Free memory alone (``SC_AVPHYS_PAGES``, Linux's MemFree) is a few hundred MB
    after large files were read, with gigabytes to take: tiles then shrank and prediction slowed
    1.5x. Within a memory limit of a control group (a Slurm job's ``--mem``, a container's), what
    that limit leaves, when less: the machine's free memory is not the process's (a job given 8 GB
    of a 512 GB node was told 400 GB, and the system killed it)."""
    system = _system_available()
    limited = cgroup_available()
    if limited is None:
        return system
    return limited if system is None else min(system, limited)


def _system_available() -> int | None:
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def cgroup_available(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> int | None:
    """What the tightest memory limit of this process's control groups leaves (limit less usage, the
    inactive page cache counted as free, as the kernel reclaims it first), or None without a limit
    (not Linux, none set, unreadable). ``proc_cgroup``: the text of ``/proc/self/cgroup`` (read when
    None); ``root``: where the hierarchies are mounted."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    best: int | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "":  # cgroup v2: one hierarchy
            left = _walk(root, path, ("memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):  # cgroup v1: the memory controller's hierarchy
            left = _walk(root / "memory", path, ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                 "total_inactive_file"))
        else:
            continue
        if left is not None:
            best = left if best is None else min(best, left)
    return best


def _walk(base: Path, path: str, names: tuple[str, str, str]) -> int | None:
    """The least that the limits of the group ``path`` under ``base`` and of its parents leave. Inside a
    container, the path the kernel names may be outside what is mounted: the mounted root is then the
    container's own group."""
    limit_name, usage_name, inactive_name = names
    relative = Path(path.lstrip("/"))
    leaf = base / relative
    if not leaf.is_dir():
        leaf = base
    best: int | None = None
    folder = leaf
    while True:
        left = _left_in(folder, limit_name, usage_name, inactive_name)
        if left is not None:
            best = left if best is None else min(best, left)
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    return best


def _left_in(folder: Path, limit_name: str, usage_name: str, inactive_name: str) -> int | None:
    limit = _read_number(folder / limit_name)
    if limit is None or limit >= _NO_LIMIT:
        return None
    usage = _read_number(folder / usage_name) or 0
    inactive = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_name:
                inactive = int(value)
                break
    except (OSError, ValueError):
        pass
    return max(0, limit - usage + inactive)


def _read_number(path: Path) -> int | None:
    """An integer file of the cgroup filesystem; None when absent, unreadable or "max" (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None
