"""A built wheel carries the manifest, the sample data and the models where npe2 finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("napari_unet-*.whl")
    return path


def test_wheel_contains_manifest_samples_and_models(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest = zf.read("napari_unet/napari.yaml").decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()  # the real file, not a link
    assert "[napari.manifest]" in entry_points and "napari-unet = napari_unet:napari.yaml" in entry_points
    assert "napari-unet = napari_unet.cli:main" in entry_points
    samples = {n for n in names if n.startswith("napari_unet/sample_data/") and n.endswith(".tif")}
    assert samples, "sample images missing from the wheel"
    assert "napari_unet/sample_data/README.md" in names
    with zipfile.ZipFile(wheel) as zf:  # the notices the MIT and BSD-3 sources ask every copy to carry
        notices = zf.read("napari_unet/sample_data/LICENSES.md").decode()
    assert "Copyright (c) 2018 Okinawa Institute of Science & Technology" in notices
    assert "Copyright (c) 2018-2023, Uwe Schmidt, Martin Weigert" in notices
    assert any(n.startswith("napari_unet/models/") and n.endswith(".pt") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "sample_data/")) for n in names)


def test_installed_wheel_serves_manifest_and_samples(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = f"""
import sys
sys.path.insert(0, {str(target)!r})
import importlib, importlib.resources as res
import napari_unet
assert napari_unet.__file__.startswith({str(target)!r}), napari_unet.__file__
from npe2 import PluginManifest
mf = PluginManifest.from_file(res.files('napari_unet') / 'napari.yaml')
for c in mf.contributions.commands:
    mod, _, attr = c.python_name.partition(':')
    m = importlib.import_module(mod)
    assert m.__file__.startswith({str(target)!r}), m.__file__
n = 0
for s in mf.contributions.sample_data:
    cmd = next(c for c in mf.contributions.commands if c.id == s.command)
    mod, _, attr = cmd.python_name.partition(':')
    layers = getattr(importlib.import_module(mod), attr)()
    assert layers and all(l[0] is not None for l in layers)
    n += 1
from napari_unet.core import load_model
model = load_model()
print('ok', n, model.name)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    status, n_samples, _name = result.stdout.split()
    assert status == "ok" and int(n_samples) >= 4
