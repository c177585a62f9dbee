"""Class probabilities -> instance labels (cheap: rerun with other thresholds at will).

Representations (see :mod:`napari_unet.core.checkpoint`):

* ``"bg-interior-boundary"`` (3 classes): seeds are the connected components of
  ``p_interior > threshold``; they grow by watershed on the boundary probability within
  the foreground ``p_interior + p_boundary > threshold``. Foreground parts without a seed
  become objects of their own. Touching cells stay apart because the band between them
  is boundary, not interior. Seeds smaller than ``min_seed`` pixels (a fraction of the
  model's object area: see :attr:`SegmentationModel.min_seed`) seed nothing: the pixels
  they would have taken go to the neighbouring seeds, so a thin neck of a cell or a
  protrusion does not become an object of its own; an island without another seed still
  becomes one.
* ``"foreground"`` (2 classes, the paper's): connected components of ``p_fg > threshold``.
* ``"foreground-watershed"`` (2 classes; models from BioImage.IO packages that give a foreground
  probability only): the foreground ``p_fg > threshold`` split by a watershed of its distance
  transform, from the maxima of the (lightly smoothed) distance that stand out by at least
  :data:`SPLIT_DEPTH` pixels, so touching round objects come apart.

Objects smaller than ``min_size`` pixels are removed; labels are renumbered 1..N.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 16
#: Interior parts smaller than this fraction of a model's object area seed no object of their own
#: (models without a stored value). Measured on the val images of both built-in models (a grid
#: of 0, 0.05, 0.1, 0.2; benchmarks/RESULTS.md): 0.05 raised AP@0.5 on every image kind.
DEFAULT_SEED_FRACTION = 0.05

#: "foreground-watershed": a distance maximum seeds an object when it stands this many pixels
#: above the saddle to its neighbour (h-maxima). 1 px was best of 1, 2, 3 px for the BioImage.IO
#: example nuclei model on DSB2018 val fluorescence (benchmarks/RESULTS.md).
SPLIT_DEPTH = 1.0

_STRUCT4 = ndi.generate_binary_structure(2, 1)
_STRUCT8 = ndi.generate_binary_structure(2, 2)


def _check_args(threshold: float, min_size: int) -> tuple[float, int]:
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"The probability threshold must be between 0 and 1 (exclusive), got {threshold}.")
    if min_size is None:
        min_size = 0
    min_size = int(min_size)
    if min_size < 0:
        raise ValueError(f"The minimum object size must be 0 or more pixels, got {min_size}.")
    return threshold, min_size


def seed_pixels(fraction: float, diameter: float) -> int:
    """Smallest seed (pixels) of a model whose objects measure ``diameter``: ``fraction`` of the
    area of a disc of that diameter (see :attr:`SegmentationModel.min_seed`)."""
    return int(round(fraction * math.pi * (diameter / 2) ** 2))


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength=minlength)`` (non-negative integer labels), counted
    a block of about a million pixels at a time: ``np.bincount`` counts an int64 copy of what it is
    given, 8 bytes a pixel of a whole plane (128 MB for one of 4000 px a side, int32 labels)."""
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.size <= 1 << 20:
        return np.bincount(labels.ravel(), minlength=minlength)
    rows = max(1, (1 << 20) // (labels.size // labels.shape[0]))
    counts = np.zeros(0, dtype=np.intp)
    for start in range(0, labels.shape[0], rows):
        part = np.bincount(labels[start : start + rows].ravel(), minlength=minlength)
        if part.size > counts.size:
            part[: counts.size] += counts
            counts = part
        else:
            counts[: part.size] += part
    return counts


def _remove_small_and_relabel(labels: np.ndarray, min_size: int, in_place: bool = False) -> np.ndarray:
    """Drop objects under ``min_size`` pixels and renumber 1..N (int32); ``in_place``: into
    ``labels`` itself when it is an int32 array of its own (no second plane of labels)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return labels.astype(np.int32, copy=False)
    sizes = label_counts(labels, n + 1)
    keep = sizes >= max(1, min_size)
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    if in_place and labels.dtype == np.int32 and labels.flags.c_contiguous and labels.flags.writeable:
        flat = labels.reshape(-1)  # a million pixels at a time (np.take(..., out=labels) copies the plane twice)
        for start in range(0, flat.size, 1 << 20):
            flat[start : start + (1 << 20)] = lut[flat[start : start + (1 << 20)]]
        return labels
    return lut[labels]


#: The watershed of a plane larger than this (pixels) runs on bands of whole rows of about this
#: many pixels, each holding whole parts of the foreground: scikit-image's watershed takes about
#: 21 bytes a pixel of what it is given (a float64 copy of the image, padded copies of the image,
#: markers and mask, its output), which for a slide is gigabytes.
WATERSHED_BAND_PX = 1 << 20


def _watershed(image: np.ndarray, seeds: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """``watershed(image, markers=seeds, mask=foreground, connectivity=1)`` (int32).

    Large planes (see :data:`WATERSHED_BAND_PX`): band by band, into ``seeds`` itself. The
    flooding never leaves a 4-connected part of the mask, so each part is flooded on its own in
    the band of rows that holds it whole, from its own seeds, in the same order. Between bands, a
    Cancel of the job (its :class:`~napari_unet.core.engine.RunInterrupt`) ends it."""
    from skimage.segmentation import watershed

    h, w = foreground.shape
    rows = max(1, WATERSHED_BAND_PX // max(w, 1))
    if h <= 2 * rows:
        return watershed(image, markers=seeds, mask=foreground, connectivity=1)
    from .engine import check_interrupt  # (only here: the engine imports torch)

    parts, n_parts = ndi.label(foreground, structure=_STRUCT4)  # (numbered by their first row)
    boxes = ndi.find_objects(parts)
    first = 0
    while first < n_parts:
        check_interrupt("post-processing")
        y0, y1 = boxes[first][0].start, boxes[first][0].stop
        last = first + 1
        while last < n_parts and max(y1, boxes[last][0].stop) - y0 <= rows:
            y1 = max(y1, boxes[last][0].stop)
            last += 1
        band = parts[y0:y1]
        mask = (band > first) & (band <= last)  # parts first + 1 .. last (ids from 1)
        flooded = watershed(image[y0:y1], markers=seeds[y0:y1], mask=mask, connectivity=1)
        np.copyto(seeds[y0:y1], flooded, where=mask)
        del band, mask, flooded
        first = last
    return seeds


def instances_from_interior_boundary(
    probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_size: int = DEFAULT_MIN_SIZE,
    min_seed: int = 0,
) -> np.ndarray:
    """Instances from (3, H, W) background/interior/boundary probabilities -> (H, W) int32.

    ``min_seed``: interior parts smaller than this many pixels seed no object of their own.
    """
    threshold, min_size = _check_args(threshold, min_size)
    p_interior = probs[1]
    p_boundary = probs[2]
    foreground = (p_interior + p_boundary) > threshold
    if not foreground.any():
        return np.zeros(probs.shape[1:], dtype=np.int32)
    seeds, n_seeds = ndi.label((p_interior > threshold) & foreground, structure=_STRUCT4)
    if n_seeds and min_seed > 1:
        small = label_counts(seeds, n_seeds + 1) < min_seed
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
    labels = _watershed(p_boundary, seeds, foreground) if n_seeds else seeds  # (seeds: zeros then)
    del seeds
    # foreground islands that no seed reached become objects of their own
    rest = foreground & (labels == 0)
    del foreground
    if rest.any():
        extra, n_extra = ndi.label(rest, structure=_STRUCT8)
        if n_extra:
            np.add(extra, int(labels.max()), out=labels, where=rest)  # (rest: where extra > 0)
        del extra
    del rest
    return _remove_small_and_relabel(labels.astype(np.int32, copy=False), min_size, in_place=True)


def instances_from_foreground(
    probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_size: int = DEFAULT_MIN_SIZE
) -> np.ndarray:
    """Instances from (2, H, W) background/foreground probabilities -> (H, W) int32."""
    threshold, min_size = _check_args(threshold, min_size)
    labels, _ = ndi.label(probs[1] > threshold, structure=_STRUCT8)
    return _remove_small_and_relabel(labels.astype(np.int32, copy=False), min_size)


def instances_from_foreground_watershed(
    probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_size: int = DEFAULT_MIN_SIZE
) -> np.ndarray:
    """Instances from (2, H, W) background/foreground probabilities, touching objects split by a
    distance-transform watershed -> (H, W) int32."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    threshold, min_size = _check_args(threshold, min_size)
    foreground = probs[1] > threshold
    if not foreground.any():
        return np.zeros(probs.shape[1:], dtype=np.int32)
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(foreground), 1.0)
    seeds, _ = ndi.label(h_maxima(distance, SPLIT_DEPTH).astype(bool) & foreground, structure=_STRUCT8)
    labels = watershed(-distance, markers=seeds, mask=foreground, connectivity=1)
    rest = foreground & (labels == 0)
    if rest.any():
        extra, n_extra = ndi.label(rest, structure=_STRUCT8)
        if n_extra:
            labels = np.where(extra > 0, extra + int(labels.max()), labels)
    return _remove_small_and_relabel(labels.astype(np.int32, copy=False), min_size)


def probabilities_to_labels(
    probs: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_size: int = DEFAULT_MIN_SIZE,
    representation: str | None = None,
    min_seed: int = 0,
) -> np.ndarray:
    """Instance labels from class probabilities, without running the network again.

    Parameters
    ----------
    probs : ndarray
        (..., n_classes, H, W) float probabilities as returned by
        :func:`napari_unet.core.predict_probabilities` (class axis third from last).
    threshold : float
        Probability threshold in (0, 1) for foreground and seeds.
    min_size : int
        Objects smaller than this many pixels are removed.
    representation : {"bg-interior-boundary", "foreground", "foreground-watershed"}, optional
        Default: inferred from the number of classes (3 or 2).
    min_seed : int
        "bg-interior-boundary": interior parts smaller than this many pixels seed no object
        of their own (their pixels go to a neighbour; 0: every part seeds one).

    Returns
    -------
    ndarray
        (..., H, W) int32 instance labels (0 = background), numbered 1..N per plane.
    """
    probs = np.asarray(probs)
    if probs.ndim < 3:
        raise ValueError(
            f"Expected probabilities of shape (..., classes, height, width), got shape {probs.shape}."
        )
    n_classes = probs.shape[-3]
    if representation is None:
        representation = {3: "bg-interior-boundary", 2: "foreground"}.get(n_classes)
    if representation == "bg-interior-boundary" and n_classes == 3:
        fn = instances_from_interior_boundary
    elif representation == "foreground" and n_classes == 2:
        fn = instances_from_foreground
    elif representation == "foreground-watershed" and n_classes == 2:
        fn = instances_from_foreground_watershed
    else:
        raise ValueError(
            f"Cannot turn {n_classes}-class probabilities into instances with representation "
            f"{representation!r}: expected 3 classes (bg-interior-boundary) or 2 (foreground)."
        )
    _check_args(threshold, min_size)
    lead = probs.shape[:-3]
    extra = {"min_seed": int(min_seed)} if fn is instances_from_interior_boundary else {}
    if not lead:  # one plane: its labels as they are (no copy)
        return fn(probs, threshold, min_size, **extra)
    out = np.zeros(lead + probs.shape[-2:], dtype=np.int32)
    for idx in np.ndindex(*lead) if lead else [()]:
        out[idx] = fn(probs[idx], threshold, min_size, **extra)
    return out
