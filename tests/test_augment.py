"""Augmentation: image and labels stay aligned, label ids survive, reproducible with a seed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.augment import (
    NO_AUGMENT,
    AugmentConfig,
    coarse_displacements,
    elastic_deform,
    flip_rot90,
    intensity_jitter,
    random_crop,
    sample_patch,
)


def _pair(h: int = 40, w: int = 50) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((h, w), np.int32)
    labels[5:20, 5:18] = 1
    labels[22:35, 25:45] = 2
    labels[3:12, 30:40] = 3
    image = labels.astype(np.float32)[None]  # image == labels: alignment is checkable
    return image, labels


def test_flip_rot90_keeps_alignment_and_counts():
    image, labels = _pair()
    counts = np.bincount(labels.ravel())
    rng = np.random.default_rng(1)
    for _ in range(8):
        img, lab = flip_rot90(image, labels, rng)
        assert img.shape[1:] == lab.shape and sorted(lab.shape) == sorted(labels.shape)
        np.testing.assert_array_equal(img[0], lab)
        np.testing.assert_array_equal(np.bincount(lab.ravel()), counts)


def test_elastic_deform_moves_pixels_smoothly_and_keeps_ids():
    image, labels = _pair()
    img, lab = elastic_deform(image, labels, np.random.default_rng(0), grid=3, sigma=10.0)
    assert img.shape == image.shape and lab.shape == labels.shape and lab.dtype == labels.dtype
    assert set(np.unique(lab)) <= set(np.unique(labels))
    assert not np.array_equal(lab, labels)  # it did deform
    # image (linear) and labels (nearest) agree away from edges of objects
    assert np.mean(np.rint(img[0]) == lab) > 0.9
    disp = coarse_displacements((64, 64), np.random.default_rng(0), grid=3, sigma=10.0)
    assert disp.shape == (2, 64, 64)
    assert np.abs(np.diff(disp, axis=1)).max() < 3.0  # smooth: small change between neighbours
    zero = coarse_displacements((16, 16), np.random.default_rng(0), sigma=0.0)
    assert np.abs(zero).max() == 0


def test_random_crop_pads_small_planes():
    image, labels = _pair(20, 24)
    img, lab = random_crop(image, labels, 64, np.random.default_rng(0))
    assert img.shape == (1, 64, 64) and lab.shape == (64, 64)
    np.testing.assert_array_equal(img[0], lab)
    img, lab = random_crop(image, labels, (8, 10), np.random.default_rng(0))
    assert lab.shape == (8, 10)


def test_sample_patch_aligned_and_reproducible():
    image, labels = _pair()
    config = AugmentConfig(gain=(1, 1), offset=(0, 0), gamma=(1, 1), noise=0.0, elastic_prob=1.0)
    a = sample_patch(image, labels, 32, np.random.default_rng(5), config)
    b = sample_patch(image, labels, 32, np.random.default_rng(5), config)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    img, lab = a
    assert img.shape == (1, 32, 32) and lab.shape == (32, 32)
    assert set(np.unique(lab)) <= {0, 1, 2, 3}
    assert np.mean(np.rint(img[0]) == lab) > 0.85
    # a patch larger than the plane (mirror padding) works too
    img, lab = sample_patch(image, labels, 96, np.random.default_rng(2))
    assert img.shape == (1, 96, 96) and lab.max() > 0
    # without augmentation: an exact crop
    img, lab = sample_patch(image, labels, 16, np.random.default_rng(3), NO_AUGMENT)
    np.testing.assert_array_equal(img[0], lab)


def test_intensity_jitter():
    rng = np.random.default_rng(0)
    image = rng.random((2, 16, 16)).astype(np.float32)
    out = intensity_jitter(image, rng)
    assert out.shape == image.shape and out.dtype == np.float32 and not np.allclose(out, image)
    # monotonic per pixel (gain > 0, gamma > 0, no noise): the order of values is kept
    quiet = AugmentConfig(noise=0.0)
    out = intensity_jitter(image, np.random.default_rng(1), quiet)
    assert (np.argsort(out.ravel()) == np.argsort(image.ravel())).all()
    same = intensity_jitter(image, rng, NO_AUGMENT)
    np.testing.assert_allclose(same, image)


def test_shape_errors():
    image, labels = _pair()
    with pytest.raises(ValueError, match="same height and width"):
        flip_rot90(image, labels[:10], np.random.default_rng(0))
    with pytest.raises(ValueError, match="channels, height, width"):
        sample_patch(image[0], labels, 16, np.random.default_rng(0))
