"""Files a user may have been sent, crafted to harm: models, packages, lists and settings napari-unet
reads are refused in one line, run no code and take no gigabytes (a security review, 2026-12-06)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import (
    ModelFileError,
    read_model_file,
    read_model_metadata,
    resolve_model_path,
)

BUILT_IN = resolve_model_path("nuclei")


def _real() -> dict:
    return torch.load(BUILT_IN, map_location="cpu", weights_only=True)


def test_a_config_asking_for_gigabytes_is_refused_before_building_the_network(tmp_path):
    """A file of a few kilobytes whose config asks for 10**5 channels (36 GB) or 10**9 input channels:
    the network was built before the weights were found missing."""
    real = _real()
    base = {k: v for k, v in real.items() if k != "state_dict"}
    for name, config in {"wide": dict(real["config"], base_width=10**5, depth=2),
                         "inputs": dict(real["config"], in_channels=10**9, base_width=8, depth=2)}.items():
        torch.save(dict(base, config=config, state_dict={}), tmp_path / f"{name}.pt")
        with pytest.raises(ModelFileError, match="weights missing for"):
            read_model_file(tmp_path / f"{name}.pt")
    state = dict(real["state_dict"])
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.zeros(3, 3)
    torch.save(dict(real, state_dict=state), tmp_path / "shape.pt")
    with pytest.raises(ModelFileError, match=rf"the weights of {first} have shape \(3, 3\)"):
        read_model_file(tmp_path / "shape.pt")


def test_a_model_file_that_unpacks_to_gigabytes_and_nested_metadata_are_refused(tmp_path):
    real = _real()
    torch.save(real, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as source, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as bomb:
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_STORED)
        bomb.writestr("archive/data/huge", b"\0" * (64 * 2**20), compress_type=zipfile.ZIP_DEFLATED)
    for read in (read_model_file, read_model_metadata):
        with pytest.raises(ModelFileError, match="unpacks to"):
            read(tmp_path / "bomb.pt")
    deep: list = []
    for _ in range(100):
        deep = [deep]
    torch.save(dict(real, metadata={"name": "deep", "notes": deep}), tmp_path / "deep.pt")
    with pytest.raises(ModelFileError, match="nested more than"):
        read_model_file(tmp_path / "deep.pt")
    assert read_model_file(tmp_path / "plain.pt").name  # (the real one, as it is: read)


def test_post_processing_values_that_are_no_numbers_give_way_to_the_defaults(tmp_path, caplog):
    """threshold None crashed predict with a traceback; "high", NaN, an infinite minimum size gave
    messages that never named the model (one blamed the threshold the user typed)."""
    real = _real()
    metadata = dict(real["metadata"], postprocessing={"threshold": None, "min_size": float("inf"),
                                                      "seed_fraction": "high"},
                    diameter=float("inf"), training_diameter=17.0, diameter_range=["a", "b"])
    torch.save(dict(real, metadata=metadata), tmp_path / "junk.pt")
    model = read_model_file(tmp_path / "junk.pt")
    settings = model.postprocessing_for(None)
    assert settings == {"threshold": 0.5, "min_size": 16, "seed_fraction": 0.05}
    assert model.diameter == 17.0 and model.object_size.low < 17.0 < model.object_size.high
    assert "post-processing min_size inf is not usable" in caplog.text


def test_a_corrected_slices_list_of_junk_opens_the_labels_without_it(tmp_path):
    import tifffile

    from napari_unet.io._corrected import load_corrected_list, sidecar_path

    tifffile.imwrite(tmp_path / "m.tif", np.zeros((3, 8, 8), np.uint16))
    for junk in ("[" * 100000 + "]" * 100000, '{"version": 1, "planes": [[Infinity]]}',
                 '{"version": 1, "planes": [[1.7]]}', '{"version": 1, "planes": [["1"]]}',
                 '{"version": 1, "planes": [[-1]]}', '{"version": 1, "planes": [[true]]}'):
        sidecar_path(tmp_path / "m.tif").write_text(junk)
        with pytest.raises(ValueError, match="is not a list of corrected slices"):
            load_corrected_list(tmp_path / "m.tif")
    sidecar_path(tmp_path / "m.tif").write_text(json.dumps({"version": 1, "planes": [[0], [2]]}))
    assert load_corrected_list(tmp_path / "m.tif") == [(0,), (2,)]


def test_corrected_slices_that_are_not_slices_of_the_labels_are_left_out(tmp_path, caplog):
    from napari_unet.io import write_labels
    from napari_unet.io._corrected import CORRECTED_KEY, sidecar_path
    from napari_unet.io._reader import napari_get_reader

    path = write_labels(tmp_path / "m.tif", np.ones((3, 8, 8), np.uint16), corrected=[(0,), (2,)])
    text = json.loads(sidecar_path(path).read_text())
    text["planes"] = [[0], [2], [3], [999999], [1, 1]]  # beyond the 3 slices, or of another shape
    sidecar_path(path).write_text(json.dumps(text))
    ((_data, meta, kind),) = napari_get_reader(str(path))(str(path))
    assert kind == "labels" and meta["metadata"][CORRECTED_KEY] == [[0], [2]]
    assert "3 slice(s) of the list of corrected slices are not slices of these labels" in caplog.text


def test_settings_nested_too_deep_are_ignored(tmp_path, monkeypatch):
    from napari_unet.io import _settings

    monkeypatch.setenv("NAPARI_UNET_CONFIG_DIR", str(tmp_path))
    (tmp_path / "settings.json").write_text('{"a": ' + "[" * 100000 + "]" * 100000 + "}")
    assert _settings.read_settings() == {}


def _package(tmp_path: Path, data_dir: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(data_dir / "bioimageio_unet2d_nuclei_broad", folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def test_packages_with_alias_bombs_or_weights_of_gigabytes_or_devices_are_refused(tmp_path, data_dir):
    pytest.importorskip("bioimageio.core")
    folder = _package(tmp_path, data_dir, "aliases")
    text = (folder / "bioimageio.yaml").read_text()
    bomb = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10**9 values
    text = text.replace("\ntags:\n", "\nconfig:\n  lol:\n" + "\n".join("    " + b for b in bomb) + "\ntags:\n", 1)
    (folder / "bioimageio.yaml").write_text(text)
    with pytest.raises(ModelFileError, match="expands to more than 1000000 values through YAML aliases"):
        read_model_file(folder)

    folder = _package(tmp_path, data_dir, "cycle")  # an anchor used inside itself: read forever, before
    text = (folder / "bioimageio.yaml").read_text()
    (folder / "bioimageio.yaml").write_text(text.replace("\ntags:\n", "\nconfig:\n  loop: &loop [*loop]\ntags:\n", 1))
    with pytest.raises(ModelFileError, match="refers to itself through YAML aliases"):
        read_model_file(folder)

    folder = _package(tmp_path, data_dir, "device")
    (folder / "weights.onnx").unlink()
    (folder / "weights.onnx").symlink_to("/dev/zero")
    with pytest.raises(ModelFileError, match=r"weights \(weights.onnx\) is not a file"):
        read_model_file(folder).net(torch.zeros(1, 1, 64, 64))

    folder = _package(tmp_path, data_dir, "inflating")
    with zipfile.ZipFile(tmp_path / "inflating.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for f in folder.iterdir():
            if f.name != "weights.onnx":
                archive.write(f, f.name)
        with archive.open("weights.onnx", "w", force_zip64=True) as member:  # 1.1 GB of zeros, a few MB zipped
            block = b"\0" * 2**24
            for _ in range(70):
                member.write(block)
    with pytest.raises(ModelFileError, match="larger than 1 GB"):
        read_model_file(tmp_path / "inflating.zip").net(torch.zeros(1, 1, 64, 64))
