"""What napari-unet asks of the computer it runs on, in plain Python (no torch, no napari: every layer
uses it): its cache folder, and whether a process still runs."""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable naming napari-unet's cache folder (exported networks, masks held on disk).
CACHE_ENV = "NAPARI_UNET_CACHE_DIR"


def cache_folder(name: str) -> Path:
    """The folder ``name`` of napari-unet's cache: in ``NAPARI_UNET_CACHE_DIR``, or the platform's user cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute() / name
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-unet", appauthor=False)) / name


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this computer still runs (True where it cannot be told: Windows
    without psutil), so that files it left are kept."""
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except ImportError:
        pass
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
