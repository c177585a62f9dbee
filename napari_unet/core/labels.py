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


#: A labels plane with at least this many ids ...
_IMAGE_MIN_IDS = 10
#: ... each split on average into at least this many separate pieces is an intensity image:
#: an object of real instance labels is one piece (measured on DSB2018, C2C12, SIM+, BBBC030:
#: at most 1.4 pieces per id in labels, at least 17 in the images).
_IMAGE_PIECES_PER_ID = 4
#: So is one with thousands of ids whose pieces are mostly single pixels (a noisy 16-bit image).
_IMAGE_MANY_IDS = 1000


def check_labels_not_an_image(labels: Any, name: str = "labels") -> None:
    """Refuse labels that look like an intensity image rather than instance labels.

    Instance labels give each object one whole-number id over one connected piece of pixels.
    An image given as labels by mistake has fractional values (float), or its "ids" (intensity
    levels) are each scattered over many separate pieces, or it has thousands of ids that are
    mostly single pixels.

    Parameters
    ----------
    labels : array-like, (H, W) or (..., H, W)
        A labels plane or a stack of them (each plane is checked).
    name : str
        What to call the labels in the message (a file name).

    Raises
    ------
    ValueError
        One line saying why the labels look like an image.
    """
    arr = np.asarray(labels)
    hint = "give the instance labels (0 = background, one whole number per object), not an image"
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr))
    ):
        raise ValueError(f"{name} holds fractional or non-finite values, like an intensity image; {hint}.")
    if arr.ndim < 2 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return  # not ours to judge: the label checks of core and io say what is wrong
    from skimage.measure import label as connected_pieces

    planes = arr.reshape((-1, *arr.shape[-2:]))
    for k, plane in enumerate(planes):
        if np.issubdtype(plane.dtype, np.floating):
            plane = plane.astype(np.int64)
        n_ids = len(np.unique(plane[plane != 0]))
        if n_ids < _IMAGE_MIN_IDS:
            continue
        where = name if len(planes) == 1 else f"{name} (plane {k})"
        pieces = connected_pieces(plane, background=0, connectivity=1)
        n_pieces = int(pieces.max())
        if n_pieces >= _IMAGE_PIECES_PER_ID * n_ids:
            raise ValueError(
                f"{where} looks like an intensity image: its {n_ids} ids are scattered over "
                f"{n_pieces} separate pieces; {hint}."
            )
        if n_ids >= _IMAGE_MANY_IDS and np.mean(np.bincount(pieces.ravel())[1:] == 1) > 0.5:
            raise ValueError(
                f"{where} has {n_ids} ids, most of them single pixels, like an intensity image; {hint}."
            )
