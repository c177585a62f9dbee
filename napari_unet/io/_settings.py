"""Small persistent user settings (last folder, ...) in a JSON file.

The file is ``<user_config_dir("napari-unet")>/settings.json``; the environment variable
``NAPARI_UNET_CONFIG_DIR`` overrides the folder (tests point it at a temporary folder).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from napari_unet._atomic import atomic_write

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"


def user_config_dir() -> Path:
    """Folder for napari-unet settings (``NAPARI_UNET_CONFIG_DIR`` overrides the platform default)."""
    env = os.environ.get("NAPARI_UNET_CONFIG_DIR")
    if env:
        return Path(env).expanduser().absolute()  # ("~/x" in quotes, a conda variable: not expanded by a shell)
    from platformdirs import user_config_dir as _ucd

    return Path(_ucd("napari-unet"))


def read_settings() -> dict[str, Any]:
    """All settings; an empty dict when the file is missing or unreadable (never raises)."""
    path = user_config_dir() / SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:
        log.warning("ignoring unreadable settings file %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def get_setting(key: str, default: Any = None) -> Any:
    """One setting, or ``default``."""
    return read_settings().get(key, default)


def update_settings(**values: Any) -> None:
    """Merge ``values`` into the settings file (written atomically). Failures are logged, not raised."""
    folder = user_config_dir()
    data = read_settings()
    data.update(values)
    try:
        with atomic_write(folder / SETTINGS_FILE, "w") as fh:
            json.dump(data, fh, indent=2)
    except OSError as e:
        log.warning("could not save settings to %s: %s", folder, e)
