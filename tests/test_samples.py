"""Every shipped sample opens in a real viewer through the manifest, with its ground truth."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import yaml

from napari_unet.io import list_samples, load_sample

SAMPLE_KEYS = [s.key for s in list_samples()]


def test_samples_are_listed_in_the_manifest_and_small():
    manifest = yaml.safe_load(files("napari_unet").joinpath("napari.yaml").read_text())
    keys = [s["key"] for s in manifest["contributions"]["sample_data"]]
    assert keys == SAMPLE_KEYS
    assert {"nuclei_fluorescence_2d", "nuclei_stained_2d", "c2c12_timelapse", "cells_phase_2d", "nuclei_3d"} <= set(keys)
    package = files("napari_unet.sample_data")
    total = sum(package.joinpath(n).stat().st_size if hasattr(package.joinpath(n), "stat")
                else len(package.joinpath(n).read_bytes())
                for s in list_samples() for n in (s.image_file, s.labels_file))
    assert total < 3_000_000
    readme = package.joinpath("README.md").read_text()
    for s in list_samples():
        assert s.image_file in readme and s.licence.split()[0] in readme


@pytest.mark.parametrize("key", SAMPLE_KEYS)
def test_sample_opens_with_ground_truth(make_napari_viewer, key):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-unet", key)
    image, labels = layers
    assert image._type_string == "image" and labels._type_string == "labels"
    assert not labels.visible  # (shown, the image looked segmented before anything was done)
    expected = {"nuclei_fluorescence_2d": (256, 256), "nuclei_stained_2d": (256, 320),
                "nuclei_fluorescence_fields": (4, 256, 256),
                "c2c12_timelapse": (10, 234, 234), "cells_phase_2d": (1022, 1024), "nuclei_3d": (31, 61, 57)}[key]
    assert labels.data.shape == expected
    assert image.data.shape[: len(expected)] == expected
    assert image.rgb == (key == "nuclei_stained_2d")
    ids = np.unique(np.asarray(labels.data))
    assert ids[0] == 0 and len(ids) > 5  # real instances
    # the objects lie on the image's structures: brighter (fluorescence) or darker (stain/phase)
    img = np.asarray(image.data, dtype=float)
    if image.rgb:
        img = img.mean(-1)
    inside, outside = img[labels.data > 0].mean(), img[labels.data == 0].mean()
    assert abs(inside - outside) > 2


def test_load_sample_api():
    image, labels, info = load_sample("c2c12_timelapse")
    assert info.axes == "TYX" and info.licence == "CC-BY 4.0"
    assert image.shape == labels.shape == (10, 234, 234) and labels.dtype == np.uint16
    with pytest.raises(ValueError, match="no sample"):
        load_sample("nope")
