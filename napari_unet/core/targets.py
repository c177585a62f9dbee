"""Instance labels -> training targets (classes and per-pixel loss weights).

Two representations, matching what :mod:`napari_unet.core.instances` turns back into
instances:

* ``"bg-interior-boundary"`` (3 classes): 0 background, 1 interior, 2 boundary. The
  boundary is the inner band of each instance, ``boundary_width`` pixels wide
  (Euclidean), drawn wherever the instance meets the background *or another instance*;
  it is not drawn along the image edge (an object cut by the edge goes on beyond it).
  Objects too small to keep an interior under a ``boundary_width`` band keep the pixels
  a one-pixel band leaves, so every object more than two pixels thick has a seed.
* ``"foreground"`` (2 classes, the paper's): 0 background, 1 foreground, where pixels of
  an instance that touch another instance are set to background, so that touching cells
  stay apart in connected components (as in the paper's annotations).

Weights follow Ronneberger et al. (2015), eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

with ``d1``, ``d2`` the distances to the nearest and second nearest cell. The border
term is applied on background pixels (the paper: narrow gaps between cells) and, for
``"bg-interior-boundary"``, on boundary pixels too, with ``d1 = 0`` (the pixel's own
cell) and ``d2`` the distance to the nearest other cell: this weights the contact bands
between touching cells, the pixels that keep them apart. ``w_c`` balances the classes
with weights proportional to ``1 / sqrt(frequency)``, normalised so that background is
1 (the square root keeps rare classes from dominating, which would bias the predicted
probabilities towards them).

Distances are computed per instance inside its bounding box grown by ``3 * sigma``
(beyond that the border term is below ``w0 * 0.011``): cost grows with the number and
size of objects, not with the image area times the number of objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .labels import check_labels, compact_ids

REPRESENTATION_CLASSES = {"bg-interior-boundary": 3, "foreground": 2}
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r + 0.5


def inner_boundary(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of an instance within ``width`` pixels of another value (background or other instance).

    Parameters
    ----------
    labels : ndarray
        (H, W) instance labels.
    width : int
        Band width in pixels (a disk of this radius around each pixel must hold one value
        for the pixel to be interior).

    Returns
    -------
    ndarray
        (H, W) bool, True on the boundary band (never on background).
    """
    labels = check_labels(labels)
    if width < 1:
        raise ValueError(f"The boundary width must be at least 1 pixel, got {width}.")
    footprint = _disk(width)
    hi = ndi.maximum_filter(labels, footprint=footprint, mode="nearest")
    lo = ndi.minimum_filter(labels, footprint=footprint, mode="nearest")
    return (labels > 0) & ((hi != labels) | (lo != labels))


def _two_nearest(labels: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second nearest instance (0 inside an instance).

    Only distances up to ``reach`` are exact; farther ones are ``inf``.
    """
    h, w = labels.shape
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    margin = int(math.ceil(reach)) + 1
    for index, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        y0 = max(sl[0].start - margin, 0)
        y1 = min(sl[0].stop + margin, h)
        x0 = max(sl[1].start - margin, 0)
        x1 = min(sl[1].stop + margin, w)
        outside = labels[y0:y1, x0:x1] != index
        dist = ndi.distance_transform_edt(outside).astype(np.float32)
        dist[dist > reach] = np.inf
        m1 = d1[y0:y1, x0:x1]
        m2 = d2[y0:y1, x0:x1]
        np.minimum(m2, np.maximum(m1, dist), out=m2)
        np.minimum(m1, dist, out=m1)
    return d1, d2


def border_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The paper's separation term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background.

    Parameters
    ----------
    labels : ndarray
        (H, W) instance labels.
    w0 : float
        Peak weight (the paper: 10).
    sigma : float
        Width in pixels (the paper: about 5).

    Returns
    -------
    ndarray
        (H, W) float32, zero on objects and far from any pair of objects.
    """
    labels = compact_ids(check_labels(labels))  # (ids far beyond the pixels: memory by id, not by pixel)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    term = _separation_term(labels, w0, sigma)
    term[labels > 0] = 0.0
    return term.astype(np.float32)


def _separation_term(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` at every pixel (d1, d2: distances to the nearest and
    second-nearest objects, within 3 sigma)."""
    d1, d2 = _two_nearest(labels, 3.0 * sigma)
    return w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma * sigma))


#: The largest class weight of :func:`class_balance`: the built-in models' training (from scratch).
CLASS_WEIGHT_CAP = 10.0
#: ... and fine-tuning's. Cells covering 1.5% of a C2C12 frame got the cap 10 for their classes: a
#: model fine-tuned on one frame called a pixel a cell at a tenth of the evidence, and outlined cells
#: 1.15-1.36x the diameter of the labels it learnt (on that frame too). At 3: 1.02-1.14x, AP@0.5 on the
#: other frames 0.542 against 0.519, AP@0.75 0.168 against 0.109 (4 runs), SIM+ equal
#: (benchmarks/RESULTS.md, "Fine-tuning's class weights").
FINETUNE_CLASS_WEIGHT_CAP = 3.0


def class_balance(classes: np.ndarray, n_classes: int, cap: float = CLASS_WEIGHT_CAP) -> np.ndarray:
    """Per-class weights proportional to 1/sqrt(frequency), background = 1.

    Returns an (n_classes,) float32 array; absent classes get weight 1; capped at ``cap``.
    """
    counts = np.bincount(classes.ravel(), minlength=n_classes).astype(np.float64)
    weights = np.ones(n_classes, dtype=np.float64)
    if counts[0] > 0:
        present = counts > 0
        weights[present] = np.sqrt(counts[0] / counts[present])
    return np.clip(weights, 0.1, cap).astype(np.float32)


def labels_to_classes(
    labels: np.ndarray, representation: str = "bg-interior-boundary", boundary_width: int = 2
) -> np.ndarray:
    """Instance labels -> (H, W) uint8 class map of ``representation`` (no weights)."""
    labels = check_labels(labels)
    if representation not in REPRESENTATION_CLASSES:
        raise ValueError(
            f"Unknown representation {representation!r}; choose one of {', '.join(REPRESENTATION_CLASSES)}."
        )
    classes = np.zeros(labels.shape, dtype=np.uint8)
    fg = labels > 0
    if not fg.any():
        return classes
    if representation == "foreground":
        # pixels touching another instance become background so that touching cells separate
        footprint = np.ones((3, 3), bool)
        hi = ndi.maximum_filter(labels, footprint=footprint, mode="nearest")
        # (above every id: a fill of int32's largest value made any larger id touch "another object")
        masked = np.where(fg, labels.astype(np.int64), np.int64(labels.max()) + 1)
        lo = ndi.minimum_filter(masked, footprint=footprint, mode="nearest")
        contact = fg & ((hi != labels) | (lo != labels))
        classes[fg & ~contact] = 1
        return classes
    band = inner_boundary(labels, boundary_width)
    classes[fg] = INTERIOR
    classes[band] = BOUNDARY
    if boundary_width > 1:
        # objects with no interior left keep what a 1-pixel band leaves (a seed)
        ids_all = np.unique(labels[fg])
        ids_inner = np.unique(labels[classes == INTERIOR])
        lost = np.setdiff1d(ids_all, ids_inner, assume_unique=True)
        if lost.size:
            thin = inner_boundary(labels, 1)
            rescue = np.isin(labels, lost) & ~thin
            classes[rescue] = INTERIOR
    return classes


def labels_to_targets(
    labels: np.ndarray,
    representation: str = "bg-interior-boundary",
    boundary_width: int = 2,
    w0: float = 10.0,
    sigma: float = 5.0,
    known: np.ndarray | None = None,
    class_cap: float = CLASS_WEIGHT_CAP,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels -> (classes, weights) for the network's loss.

    Parameters
    ----------
    labels : ndarray
        (H, W) integer instance labels, 0 = background.
    representation : {"bg-interior-boundary", "foreground"}
        Target classes, see the module docstring.
    boundary_width : int
        Width in pixels of the boundary band ("bg-interior-boundary" only).
    w0, sigma : float
        Border weight parameters (``w0 = 0`` turns the border term off).
    class_cap : float
        The largest class weight (:func:`class_balance`).
    known : ndarray, optional
        (H, W) bool: the pixels whose class is known (a plane labelled in part); the others
        weigh 0 and do not count in the class balance. None: every pixel.

    Returns
    -------
    classes : ndarray
        (H, W) uint8 class indices.
    weights : ndarray
        (H, W) float32 per-pixel loss weights (>= 0.1; 0 where the class is not known).
    """
    labels = compact_ids(check_labels(labels))  # (ids far beyond the pixels: memory by id, not by pixel)
    classes = labels_to_classes(labels, representation, boundary_width)
    n_classes = REPRESENTATION_CLASSES[representation]
    weights = class_balance(classes if known is None else classes[known], n_classes, class_cap)[classes]
    if w0 > 0 and labels.max() > 0:
        term = _separation_term(labels, w0, sigma)
        if representation == "bg-interior-boundary":
            apply = classes != INTERIOR
        else:
            apply = classes == BACKGROUND
        weights = weights + np.where(apply, term, 0.0).astype(np.float32)
    if known is not None:
        weights = np.where(known, weights, 0.0)
    return classes, weights.astype(np.float32)


@dataclass(frozen=True)
class TargetRecipe:
    """How a run turns labels into training targets: :func:`labels_to_targets` with these settings."""

    representation: str = "bg-interior-boundary"
    boundary_width: int = 2
    w0: float = 10.0
    sigma: float = 5.0
    class_cap: float = CLASS_WEIGHT_CAP

    def __call__(self, labels: np.ndarray, known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) labels (and the pixels whose class is known) -> (classes, weights), see
        :func:`labels_to_targets`."""
        return labels_to_targets(labels, self.representation, self.boundary_width, self.w0, self.sigma, known,
                                 class_cap=self.class_cap)
