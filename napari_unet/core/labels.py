"""The one check of instance label images: whole non-negative ids, 0 = background.

Training targets, metrics, the label writer and the Fine-tune widget's examples all take
label images from users (Labels layers, files that opened as images, arrays in scripts);
:func:`check_labels` is where they are refused, with a one-line message that says what
to fix, or returned as an integer array with the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INT64_MAX = np.iinfo(np.int64).max


def check_labels(labels: Any, name: str = "labels", *, ndim: int | tuple[int, int] | None = 2) -> np.ndarray:
    """Validate instance labels and return them as an integer array with the same values.

    Accepted: integer arrays, booleans (one object) and floats holding whole numbers (a
    label file that opened as an image). Integer arrays come back as they are (no copy),
    except ``uint64`` (as ``int64``); booleans as ``int32``; whole-number floats as
    ``int64``.

    Parameters
    ----------
    labels : array-like
        Instance labels, 0 = background, one positive id per object.
    name : str
        What the labels are, for messages ("labels of example 2" gives "The labels of
        example 2 hold negative values ...").
    ndim : int, (int, int) or None
        Number of dimensions required: exactly this many (default 2, one plane (H, W)),
        a ``(fewest, most)`` range, or None for any.

    Returns
    -------
    ndarray
        Integer labels, the shape of ``labels``.

    Raises
    ------
    ValueError
        Wrong number of dimensions, an empty axis, values with fractions (or NaN/inf),
        a data type that is not numeric, negative values, ids beyond int64.
    """
    arr = np.asarray(labels)
    _check_ndim(arr.shape, name, ndim)
    if arr.size == 0:
        raise ValueError(f"The {name} have an empty axis (shape {arr.shape}): there is nothing to label.")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or np.any(np.mod(arr, 1) != 0):
            raise ValueError(
                f"The {name} hold floating-point values with fractions (non-integer values); labels must be "
                "integers: 0 = background, one whole number per object, not probabilities. "
                "Use a Labels layer or an integer label image."
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"The {name} have data type {arr.dtype}; labels must be integers (0 = background).")
    if arr.min() < 0:
        raise ValueError(
            f"The {name} hold negative values (minimum {int(arr.min())}); labels must be 0 (background) or positive."
        )
    if arr.dtype == np.uint64:
        if arr.max() > _INT64_MAX:
            raise ValueError(f"The {name} hold ids larger than {_INT64_MAX}; renumber the objects from 1.")
        arr = arr.astype(np.int64)
    return arr


def compact_ids(labels: np.ndarray) -> np.ndarray:
    """``labels`` (checked integer labels) with their ids renumbered 1..N in order when they run
    beyond the number of pixels, as int32; else as they are. Ids as tracking tools write them (a
    global id per cell of a time-lapse, an offset of 4e9) made every count by id (``np.bincount``)
    take memory by the id, not by the pixels: gigabytes for one small plane, or a MemoryError. The
    objects stay the same; only their numbers change (for training and scores, never for saving)."""
    if labels.size == 0 or int(labels.max()) <= labels.size:
        return labels
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:  # no background: every id moves up by one
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int32)


def _check_ndim(shape: tuple[int, ...], name: str, ndim: int | tuple[int, int] | None) -> None:
    if ndim is None:
        return
    if isinstance(ndim, int):
        if len(shape) != ndim:
            what = "one 2D plane (height, width)" if ndim == 2 else f"{ndim}D"
            raise ValueError(f"The {name} must be {what}, got shape {shape}.")
        return
    fewest, most = ndim
    if len(shape) < fewest:
        axes = " (Y, X)" if fewest == 2 else ""
        raise ValueError(f"The {name} need at least {fewest} dimensions{axes}, got shape {shape}.")
    if len(shape) > most:
        raise ValueError(
            f"The {name} have {len(shape)} dimensions (shape {shape}); at most {most} are supported."
        )
