"""The one label check (core.labels.check_labels) and the places that use it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.labels import check_labels
from napari_unet.core.metrics import average_precision
from napari_unet.core.targets import labels_to_targets
from napari_unet.io import LabelsWriteError
from napari_unet.io import check_labels as check_labels_to_write


def test_integer_labels_come_back_unchanged_and_others_as_integers(dsb_fluo_crop):
    _, labels = dsb_fluo_crop
    for dtype in (np.uint8, np.uint16, np.int32, np.uint32, np.int64):
        arr = labels.astype(dtype)
        out = check_labels(arr)
        assert out is arr  # no copy for integer labels
    as_u64 = check_labels(labels.astype(np.uint64))
    assert as_u64.dtype == np.int64 and np.array_equal(as_u64, labels)
    whole_floats = check_labels(labels.astype(np.float32))
    assert whole_floats.dtype == np.int64 and np.array_equal(whole_floats, labels)
    mask = check_labels(labels > 0)
    assert mask.dtype == np.int32 and set(np.unique(mask)) == {0, 1}


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.array([[0.0, 1.5], [2.0, 3.0]]), "floating-point values with fractions"),
        (np.array([[0.0, np.nan], [2.0, 3.0]]), "non-integer"),
        (np.array([[0, 1], [-1, 2]], np.int16), r"negative values \(minimum -1\)"),
        (np.array([["a", "b"], ["c", "d"]]), "data type <U1"),
        (np.array([[0, 2**63 + 5]], np.uint64), "larger than"),
        (np.zeros((0, 4), np.uint16), "empty axis"),
        (np.zeros((2, 4, 4), np.uint16), "one 2D plane"),
    ],
)
def test_bad_labels_are_one_clear_message(labels, words):
    with pytest.raises(ValueError, match=words) as info:
        check_labels(labels, "labels of example 3")
    message = str(info.value)
    assert message.startswith("The labels of example 3 ") and "\n" not in message


def test_number_of_dimensions_exact_range_or_any():
    stack = np.zeros((2, 3, 4, 4), np.uint16)
    assert check_labels(stack, ndim=None) is stack
    assert check_labels(stack, ndim=(2, 5)) is stack
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        check_labels(np.zeros(4, np.uint8), ndim=(2, 5))
    with pytest.raises(ValueError, match="have 6 dimensions"):
        check_labels(np.zeros((1,) * 4 + (2, 2), np.uint8), ndim=(2, 5))
    with pytest.raises(ValueError, match="must be 3D"):
        check_labels(stack, ndim=3)


def test_targets_metrics_and_writer_refuse_the_same_labels_the_same_way(dsb_fluo_crop):
    _, labels = dsb_fluo_crop
    bad = labels.astype(np.float32) + 0.5
    messages = []
    for use in (labels_to_targets, lambda x: average_precision(x, labels), check_labels_to_write):
        with pytest.raises(ValueError, match="fractions") as info:
            use(bad)
        messages.append(str(info.value))
    assert isinstance(info.value, LabelsWriteError)  # the writer's own error type, a ValueError
    assert len({m.split(" hold ")[1] for m in messages}) == 1
