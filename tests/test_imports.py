"""Layering and manifest: the core stays free of Qt/napari; every manifest entry imports."""

from __future__ import annotations

import importlib
import subprocess
import sys

import yaml
from npe2 import PluginManager, PluginManifest

from napari_unet.cli.gui import DOCKED_WIDGETS


def test_core_does_not_import_gui_packages():
    code = (
        "import sys, napari_unet.core, napari_unet.core.catalog, napari_unet.core.predict,"
        " napari_unet.core.train;"
        "bad = [m for m in ('qtpy', 'napari', 'magicgui', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_the_package_is_cheap():
    code = "import sys, napari_unet; print('torch' in sys.modules, 'napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    # napari's File > Open imports the reader (and with it napari_unet.io) on the main thread: no torch
    code = "import sys, napari_unet.io, napari_unet.io._reader; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def _manifest() -> PluginManifest:
    pm = PluginManager.instance()
    pm.discover()
    return pm.get_manifest("napari-unet")


def test_manifest_is_found_and_valid():
    manifest = _manifest()
    assert manifest.name == "napari-unet"
    assert {w.display_name for w in manifest.contributions.widgets} >= {"Segment"}
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-unet"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_python_name_in_the_manifest_imports():
    manifest = _manifest()
    assert manifest.contributions.commands
    for command in manifest.contributions.commands:
        module_name, _, attr = command.python_name.partition(":")
        module = importlib.import_module(module_name)
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), command.python_name


def test_top_level_manifest_is_the_packaged_one():
    # two real files, the same text (a git link in their place became a text file naming the other
    # in a clone without links, Windows by default: npe2 could not read it, the plugin did not load)
    from importlib.resources import files
    from pathlib import Path

    root = Path(__file__).parents[1]
    packaged = root / "napari_unet" / "napari.yaml"
    assert not packaged.is_symlink() and not (root / "napari.yaml").is_symlink()
    assert packaged.read_text() == (root / "napari.yaml").read_text(), \
        "napari.yaml changed at the top level or in napari_unet/: copy it to the other place"
    assert yaml.safe_load(files("napari_unet").joinpath("napari.yaml").read_text())["name"] == "napari-unet"


def test_gui_docks_contributed_widgets():
    names = {w.display_name for w in _manifest().contributions.widgets}
    assert set(DOCKED_WIDGETS) <= names
