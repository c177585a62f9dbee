"""Labels -> training targets: boundary bands, touching cells, border weights, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.metrics import average_precision
from napari_unet.core.targets import border_weights, inner_boundary, labels_to_classes, labels_to_targets


def _two_touching() -> np.ndarray:
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # shares the edge at column 14/15 with object 1
    return labels


def test_single_square_has_2px_band_and_6x6_interior():
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 5:15] = 3
    classes, weights = labels_to_targets(labels)
    assert classes.dtype == np.uint8 and weights.dtype == np.float32
    assert (classes[5:15, 5:15] > 0).all() and (classes[labels == 0] == 0).all()
    # 10 x 10 square, 2 px band on each side -> 6 x 6 interior
    assert (classes == 1).sum() == 36 and (classes[7:13, 7:13] == 1).all()
    assert (classes == 2).sum() == 100 - 36


def test_touching_cells_are_separated_by_boundary():
    labels = _two_touching()
    classes = labels_to_classes(labels)
    # both sides of the contact are boundary: columns 13, 14 (object 1) and 15, 16 (object 2)
    assert (classes[7:13, 13:17] == 2).all()
    from scipy import ndimage as ndi

    _, n = ndi.label(classes == 1)
    assert n == 2
    # the 2-class (paper) representation: the contact pixels become background
    fg = labels_to_classes(labels, "foreground")
    assert ndi.label(fg == 1)[1] == 2
    assert (fg[5:15, 14:16] == 0).all()


def test_no_boundary_along_image_edge():
    labels = np.zeros((20, 20), np.int32)
    labels[0:10, 0:10] = 1  # touches the top and left edges
    band = inner_boundary(labels, 2)
    assert not band[0, 2:8].any() and not band[2:8, 0].any()
    assert band[9, 3] and band[3, 9]


def test_tiny_object_keeps_a_seed():
    labels = np.zeros((16, 16), np.int32)
    labels[6:9, 6:9] = 1  # 3 x 3: a 2-px band would eat it all
    classes = labels_to_classes(labels, boundary_width=2)
    assert (classes == 1).sum() >= 1


def test_border_weights_peak_in_narrow_gap():
    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 16:26] = 2  # one background column (15) between them
    w = border_weights(labels, w0=10.0, sigma=5.0)
    # gap pixel: d1 = d2 = 1 -> 10 * exp(-4 / 50) = 9.23
    assert w[10, 15] == pytest.approx(10 * np.exp(-4 / 50), rel=1e-4)
    assert (w[labels > 0] == 0).all()
    # far corner: both cells > 3 sigma away -> (almost) nothing
    assert w[0, 39] < 0.2
    classes, weights = labels_to_targets(labels)
    assert weights[10, 15] > 9.0 and weights[10, 15] > weights[0, 39] + 8


def test_roundtrip_through_postprocessing_on_real_labels(dsb_fluo_crop):
    """One-hot targets fed to the inference post-processing give back the instances."""
    _, labels = dsb_fluo_crop
    classes, weights = labels_to_targets(labels)
    probs = np.eye(3, dtype=np.float32)[classes].transpose(2, 0, 1)
    recovered = probabilities_to_labels(probs, threshold=0.5, min_size=0)
    assert average_precision(labels, recovered, 0.5) > 0.95
    assert average_precision(labels, recovered, 0.9) > 0.8
    assert weights.min() >= 0.1 and np.isfinite(weights).all()


def test_targets_are_fast():
    rng = np.random.default_rng(0)
    labels = np.zeros((512, 512), np.int32)
    # 100 cells of radius ~12 on a jittered grid, some touching
    yy, xx = np.mgrid[0:512, 0:512]
    k = 0
    for gy in range(10):
        for gx in range(10):
            cy, cx = 26 + gy * 51 + rng.integers(-6, 7), 26 + gx * 51 + rng.integers(-6, 7)
            k += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(12, 20) ** 2] = k
    assert len(np.unique(labels)) > 90
    labels_to_targets(labels)  # warm up
    t = time.perf_counter()
    classes, weights = labels_to_targets(labels)
    assert time.perf_counter() - t < 1.0
    assert set(np.unique(classes)) == {0, 1, 2}


def test_foreground_classes_do_not_depend_on_the_ids():
    """An id above int32's largest value touched "another object" all along its outline."""
    lab = np.zeros((20, 20), np.int64)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:18] = 2  # a neighbour it touches
    for ids in (lab, lab * 2**31, np.where(lab > 0, lab + 2**40, 0).astype(np.uint64)):
        classes = labels_to_classes(ids, "foreground")
        np.testing.assert_array_equal(classes, labels_to_classes(lab, "foreground"))
    assert (labels_to_classes(lab, "foreground") == 1).sum() == 10 * 9 + 10 * 2  # less the columns where they touch


def test_bad_labels():
    with pytest.raises(ValueError, match="non-integer"):
        labels_to_targets(np.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="negative"):
        labels_to_targets(-np.ones((8, 8), np.int32))
    with pytest.raises(ValueError, match="2D"):
        labels_to_targets(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(ValueError, match="representation"):
        labels_to_targets(np.zeros((8, 8), np.int32), representation="stars")
    # whole-number floats are accepted
    c, _ = labels_to_targets(np.pad(np.ones((6, 6)), 4))
    assert (c > 0).sum() == 36


def test_class_weights_are_capped_as_asked():
    """Cells covering 1.5% of a frame: their classes get the cap (10 by default; fine-tuning asks 3:
    its models outlined cells larger than the labels they learnt)."""
    from napari_unet.core.targets import class_balance

    classes = np.zeros((100, 100), np.uint8)
    classes[:2, :5] = 1  # 0.1%
    classes[2:4, :5] = 2
    assert class_balance(classes, 3).max() == 10.0
    np.testing.assert_allclose(class_balance(classes, 3, cap=3.0), [1.0, 3.0, 3.0])


def test_class_weights_are_inverse_square_root_frequencies():
    from napari_unet.core.targets import class_balance

    classes = np.zeros(100, np.uint8)
    classes[:25] = 1  # 25 % vs 75 % background
    classes[25:29] = 2  # 4 %
    np.testing.assert_allclose(class_balance(classes, 3), [1.0, np.sqrt(71 / 25), np.sqrt(71 / 4)], rtol=1e-6)


def test_border_weight_is_near_zero_beside_a_lone_cell():
    from napari_unet.core.targets import border_weights

    labels = np.zeros((40, 40), np.int32)
    labels[10:20, 10:20] = 1  # no second cell within 3 sigma
    assert border_weights(labels, 10.0, 5.0)[15, 21] < 1e-3


def test_target_weights_are_class_weight_plus_the_border_term():
    from napari_unet.core.targets import BOUNDARY, class_balance, labels_to_targets

    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # touching at columns 14 | 15
    classes, weights = labels_to_targets(labels, w0=10.0, sigma=5.0)
    cw = class_balance(classes, 3)
    # background pixel between nothing: d1 = 1 (above object 1), d2 beyond the reach -> class weight only
    # contact band: pixel (10, 14) is boundary of object 1, d1 = 0, d2 = 1 -> + 10 exp(-1 / 50)
    assert classes[10, 14] == BOUNDARY
    assert weights[10, 14] == pytest.approx(cw[BOUNDARY] + 10 * np.exp(-1 / 50), rel=1e-4)
    # a background pixel one column left of object 1 and 11 from object 2: d1 + d2 = 12
    assert weights[10, 4] == pytest.approx(cw[0] + 10 * np.exp(-144 / 50), rel=1e-4)


def test_the_class_balance_counts_only_the_known_pixels():
    from napari_unet.core.targets import class_balance, labels_to_classes, labels_to_targets

    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15] = 1
    known = np.zeros_like(labels, bool)
    known[:20, :20] = True
    classes, weights = labels_to_targets(labels, w0=0.0, known=known)
    expected = class_balance(labels_to_classes(labels)[known], 3)
    np.testing.assert_allclose(weights[known], expected[classes[known]])
