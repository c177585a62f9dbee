"""Multi-channel fluorescence: channels last, channels first without axes, RGB composites.

Real DSB2018 fluorescence nuclei (packaged CC0 sample) with a whole-cell (cytoplasm) channel made
from their labels: the nuclei grown by 0.8 diameter, textured, as bright as the nuclei, dark over
the nuclei (a cytoplasm stain).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core import load_model
from napari_unet.core.metrics import average_precision
from napari_unet.core.predict import segment
from napari_unet.core.preprocess import ImageError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def cytoplasm(labels: np.ndarray, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """A cytoplasm channel around the nuclei of ``labels``, as bright as ``image``."""
    from scipy import ndimage as ndi

    from napari_unet.core.scale import median_diameter

    d = median_diameter(labels) or 10
    dist = ndi.distance_transform_edt(labels == 0)
    cell = (dist < 0.8 * d) & (labels == 0)
    texture = ndi.gaussian_filter(np.random.default_rng(seed).random(labels.shape), 2)
    texture = (texture - texture.min()) / np.ptp(texture)
    c = ndi.gaussian_filter(cell.astype(float), 1.5) * (0.5 + texture)
    return (c / c.max() * float(np.max(image))).astype(np.float32)


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    image = tifffile.imread(SAMPLES / "dsb2018_fluorescence_nuclei.tif")
    labels = tifffile.imread(SAMPLES / "dsb2018_fluorescence_nuclei_labels.tif")
    return image, labels


@pytest.fixture(scope="module")
def model():
    return load_model("nuclei", device="cpu")


def test_two_channels_last_are_refused_at_once_with_how_to_pick_one(model, nuclei):
    """(H, W, 2) was H planes of W x 2 pixels: minutes of work and labels of no use. The readers
    take such a file as two channels (io.guess_axes): core says so and how to choose one."""
    image, labels = nuclei
    two = np.stack([cytoplasm(labels, image), image.astype(np.float32)], -1)
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"2 channel.*image\[\.\.\., 1\]"):
        segment(model, two)
    assert time.perf_counter() - start < 2.0
    from napari_unet.io import guess_axes

    assert guess_axes(two.shape) == "YXC"


def test_one_channel_last_is_the_plane(model, nuclei):
    image, labels = nuclei
    expected = segment(model, image)
    got = segment(model, image[..., None])
    assert got.shape == image.shape
    np.testing.assert_array_equal(got, expected)
    assert average_precision(labels, got) > 0.6  # real objects (0.75)
