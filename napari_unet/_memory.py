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


def cgroup_available(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT,
                     mountinfo: str | None = None) -> int | None:
    """What the tightest memory limit of this process's control groups leaves (limit less usage, the
    inactive page cache and half the active one counted as free, as the kernel reclaims them), or None
    without a limit (not Linux, none set, unreadable). ``proc_cgroup``: the text of ``/proc/self/cgroup``
    (read when None); ``mountinfo``: of ``/proc/self/mountinfo``, which says where each hierarchy is
    mounted (read when None and ``root`` is the system's; else ``root`` and ``root``/memory)."""
    v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file", "total_active_file")
    v2 = ("memory.max", "memory.current", "inactive_file", "active_file")
    found = [_left_in(folder, *(v2 if is_v2 else v1))
             for folder, is_v2 in _group_folders("memory", proc_cgroup, root, mountinfo)]
    return min((v for v in found if v is not None), default=None)


def cgroup_cpus(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT, mountinfo: str | None = None) -> float | None:
    """The CPUs a control group's quota allows this process (``docker --cpus 2``, a job's CPU limit: 2.0),
    the least of its group's and parents'; None without a quota. The arguments as
    :func:`cgroup_available`'s."""
    found = [_quota_in(folder, is_v2) for folder, is_v2 in _group_folders("cpu", proc_cgroup, root, mountinfo)]
    return min((v for v in found if v is not None), default=None)


def _group_folders(controller: str, proc_cgroup: str | None, root: Path,
                   mountinfo: str | None) -> list[tuple[Path, bool]]:
    """The folders of this process's control groups of ``controller`` and of their parents, up to where
    each hierarchy is mounted, with whether it is cgroup v2 (see :func:`cgroup_available`)."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return []
    if mountinfo is None and root == CGROUP_ROOT:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = None
    mounts = _cgroup_mounts(mountinfo, controller) if mountinfo else {}
    folders: list[tuple[Path, bool]] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "":  # cgroup v2: one hierarchy
            base, mounted = mounts.get("v2", (root, "/"))
        elif controller in controllers.split(","):  # cgroup v1: the controller's own hierarchy
            base, mounted = mounts.get("v1", (root / controller, "/"))
        else:
            continue
        if mounted != "/" and (path + "/").startswith(mounted.rstrip("/") + "/"):  # (a container's own root)
            path = path[len(mounted.rstrip("/")):] or "/"
        # inside a container, the path the kernel names may be outside what is mounted: the mounted root is
        # then the container's own group
        relative = Path(path.lstrip("/"))
        folder = base / relative
        if ".." in relative.parts or not folder.is_dir():
            folder = base
        while True:
            folders.append((folder, controllers == ""))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return folders


def _cgroup_mounts(mountinfo: str, controller: str = "memory") -> dict[str, tuple[Path, str]]:
    """{"v1": (mount point, root), "v2": ...} of the hierarchies of ``controller`` in ``mountinfo``
    (v1's may be mounted with other controllers: "cpu,memory")."""
    found: dict[str, tuple[Path, str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or dash < 5:
            continue
        kind, options = fields[dash + 1], fields[dash + 3].split(",")
        if kind == "cgroup2" and "v2" not in found:
            found["v2"] = (Path(fields[4]), fields[3])
        elif kind == "cgroup" and controller in options and "v1" not in found:
            found["v1"] = (Path(fields[4]), fields[3])
    return found


def _quota_in(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            fields = (folder / "cpu.max").read_text().split()  # ("200000 100000", or "max 100000")
            if len(fields) < 2:
                return None
            quota, period = fields[0], fields[1]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # ("max": no quota)
        return None
    return q / p if q > 0 and p > 0 else None


def _left_in(folder: Path, limit_name: str, usage_name: str, inactive_name: str, active_name: str) -> int | None:
    limit = _read_number(folder / limit_name)
    if limit is None or limit >= _NO_LIMIT:
        return None
    usage = _read_number(folder / usage_name) or 0
    stat: dict[str, int] = {}
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in (inactive_name, active_name):
                stat[key] = int(value)
    except (OSError, ValueError):
        pass
    # (page cache: inactive pages go first, active ones after; half of them, as the system's MemAvailable
    # counts its own: a file read three times in a 1 GiB job left 196 MiB said free of about 1 GiB)
    return max(0, limit - usage + stat.get(inactive_name, 0) + stat.get(active_name, 0) // 2)


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
