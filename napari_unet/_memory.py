"""The memory available now, for the reader's lazy-or-not choice and the engine's tile size (no torch,
no napari: both the reader and the core read it)."""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes of RAM available now (free memory and what the page cache gives back), or None when it
    cannot be told. Free memory alone (``SC_AVPHYS_PAGES``, Linux's MemFree) is a few hundred MB
    after large files were read, with gigabytes to take: tiles then shrank and prediction slowed
    1.5x."""
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
