"""Probability volumes -> 3D instances: a seeded watershed in overlapping blocks.

The scales of the watershed come from the object diameter ``d`` (xy pixels, as estimated
or given for 2D) and the voxel size, in physical units, so a stack with planes twice as far
apart as its pixels is treated as the same objects sampled more coarsely:

* foreground: the (view-averaged) foreground probability above the threshold;
* the interior probability is smoothed by a Gaussian of sigma ``d *`` :data:`SMOOTHING`
  (per axis in voxels: that length over the axis's voxel size);
* seeds: local maxima of the smoothed interior inside the foreground, at least
  ``d *`` :data:`SEED_SPACING` apart (an ellipsoidal neighbourhood in voxels), and above
  :data:`SEED_FLOOR`; two touching nuclei have two maxima at about a diameter apart;
* along z, smoothing and seed spacing shrink with the objects' ``aspect``: their depth over
  their width, measured on the interior probability (:func:`object_aspect`). Nuclei of
  adherent cells are flatter than wide, and a stack whose planes are further apart than its
  voxel size says shows any object flattened: a seed spacing of half the width would merge
  objects lying on top of one another;
* the watershed floods the negated smoothed interior from the seeds within the foreground;
  foreground without a seed stays background; objects smaller than ``min_volume`` are removed
  and ids are renumbered 1..N over the volume.

Blocks: the volume is cut into cores (at most :data:`BLOCK_VOXELS` voxels with their halo);
each core is processed with a halo around it, wide enough that smoothing and seed detection
are exact in the core and that objects seeded in a neighbouring core reach it whole. A seed
is named by its position in the volume, so an object crossing a seam keeps one id.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .events import Progress

log = logging.getLogger(__name__)

#: Gaussian sigma of the interior probability, as a fraction of the object diameter.
SMOOTHING = 1 / 8
#: Seeds are at least this fraction of the object diameter apart.
SEED_SPACING = 1 / 2
#: A seed's smoothed interior probability must exceed this.
SEED_FLOOR = 0.3
#: Halo width beyond the seed margin, as a multiple of the object diameter.
HALO_DIAMETERS = 1.5
#: Voxels per block, halo included (float32 work arrays of a few times this size).
BLOCK_VOXELS = 16 * 2**20
#: The measured aspect (depth / width) is kept within these bounds: no flatter than planes 4x
#: further apart than assumed, and never deeper than wide (blur along z lengthens objects there).
ASPECT_RANGE = (0.25, 1.0)
#: Rows of the volume read at once while measuring the aspect.
_ASPECT_ROWS = 64

__all__ = ["ASPECT_RANGE", "BLOCK_VOXELS", "block_plan", "instances_3d", "iter_watershed_blocks",
           "object_aspect"]


def _ellipsoid(radius: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid footprint with the given radius (voxels) per axis."""
    r = [max(0, int(math.floor(x))) for x in radius]
    grid = np.ogrid[tuple(slice(-a, a + 1) for a in r)]
    return sum((g / max(rad, 1e-9)) ** 2 for g, rad in zip(grid, radius)) <= 1.0


def _scales(diameter: float, spacing: Sequence[float], aspect: float = 1.0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigma, seed radius, halo) in voxels per axis, for objects of ``diameter`` xy pixels and
    ``aspect`` times as deep (z) as wide; the halo stays that of round objects."""
    spacing = np.asarray(spacing, dtype=float)
    d_phys = float(diameter) * spacing[-1]
    shape = np.array([float(aspect), 1.0, 1.0])
    sigma = d_phys * SMOOTHING * shape / spacing
    radius = d_phys * SEED_SPACING * shape / spacing
    margin = np.ceil(4 * sigma + radius)
    halo = (margin + np.ceil(HALO_DIAMETERS * d_phys / spacing)).astype(int)
    return sigma, radius, halo


def _voxels_and_runs(mask: np.ndarray, axis: int, before: np.ndarray | None = None) -> tuple[int, int]:
    """(True voxels, runs of True along ``axis``) of ``mask``; ``before``: the plane preceding
    the mask along that axis (a run going on from it does not start again)."""
    m = np.moveaxis(mask, axis, 0)
    starts = int(np.count_nonzero(m[1:] & ~m[:-1]))
    starts += int(np.count_nonzero(m[0] if before is None else m[0] & ~before))
    return int(np.count_nonzero(m)), starts


def object_aspect(probabilities: Any, n_views: float, spacing: Sequence[float], threshold: float,
                  should_stop: Callable[[], bool] | None = None) -> float:
    """The objects' depth over their width (physical units), within :data:`ASPECT_RANGE`.

    Mean chord lengths of the interior (``probabilities[1] / n_views > threshold``) along z and
    along y and x: for axis-aligned ellipsoids their ratio is that of the axes, whatever the
    sizes. The interior rather than the foreground: the blur along z of a microscope joins
    objects above one another in the foreground, not in their interiors. 1 when the volume has
    no interior.
    """
    from .predict import PredictionStopped

    _two, nz, ny, nx = (int(s) for s in probabilities.shape)
    totals = np.zeros((3, 2), dtype=np.int64)  # per axis: voxels, runs
    previous = None
    for y0 in range(0, ny, _ASPECT_ROWS):
        if should_stop is not None and should_stop():
            raise PredictionStopped("Prediction stopped.")
        slab = np.asarray(probabilities[1, :, y0:y0 + _ASPECT_ROWS, :], dtype=np.float32)
        slab = slab / float(n_views) > threshold
        totals[0] += _voxels_and_runs(slab, 0)
        totals[1] += _voxels_and_runs(slab, 1, previous)
        totals[2] += _voxels_and_runs(slab, 2)
        previous = slab[:, -1, :]
    if not totals[:, 1].all():
        return 1.0
    chords = totals[:, 0] / totals[:, 1] * np.asarray(spacing, dtype=float)
    width = (chords[1] + chords[2]) / 2
    return float(np.clip(chords[0] / width, *ASPECT_RANGE))


#: Bytes of memory a block's watershed takes per voxel of the block, about (46 measured: 634 MB for a
#: block of 13.8 M voxels), and the share of the memory free that a block may take.
BLOCK_BYTES_PER_VOXEL = 46
BLOCK_MEMORY_SHARE = 0.25


def block_budget() -> int:
    """Voxels of a watershed block: :data:`BLOCK_VOXELS`, or fewer where the memory free (a cluster job's
    limit, a laptop) would not hold a block of that size (a 1.5 GiB job was killed in its first block)."""
    from napari_unet._memory import available_memory

    free = available_memory()
    if free is None:
        return BLOCK_VOXELS
    return int(max(2**20, min(BLOCK_VOXELS, BLOCK_MEMORY_SHARE * free / BLOCK_BYTES_PER_VOXEL)))


def block_plan(shape: Sequence[int], halo: Sequence[int], block_voxels: int = BLOCK_VOXELS
               ) -> list[tuple[slice, ...]]:
    """Cores that tile ``shape``: halved along their longest axis until core plus halo holds
    at most ``block_voxels`` voxels (or cores are no longer than their halo)."""
    shape = [int(s) for s in shape]
    core = list(shape)

    def size(c: list[int]) -> int:
        return int(np.prod([min(n, ci + 2 * h) for n, ci, h in zip(shape, c, halo)]))

    while size(core) > block_voxels:
        axis = int(np.argmax([c / max(1, h) for c, h in zip(core, halo)]))
        if core[axis] <= max(8, halo[axis]):
            break
        core[axis] = math.ceil(core[axis] / 2)
    ranges = [[slice(a, min(n, a + c)) for a in range(0, n, c)] for n, c in zip(shape, core)]
    return [tuple(block) for block in itertools.product(*ranges)]


def iter_watershed_blocks(
    probabilities: Any,
    n_views: float,
    spacing: Sequence[float],
    diameter: float,
    threshold: float,
    min_volume: int,
    *,
    out: Any = None,
    should_stop: Callable[[], bool] | None = None,
    block_voxels: int | None = None,
    progress: Callable[[float, str], Progress] | None = None,
    aspect: float = 1.0,
) -> Generator[Progress, None, Any]:
    """3D instances from summed (foreground, interior) probabilities, block by block (generator).

    Parameters
    ----------
    probabilities : array-like
        (2, Z, Y, X): (weighted) sums over views of the foreground and interior probabilities
        (numpy array or memory map; read one block at a time).
    n_views : float
        The views' weights summed (the sums are divided by it): the number of views when each weighs 1.
    spacing : (dz, dy, dx)
        Voxel size.
    diameter : float
        Object diameter in xy pixels.
    threshold : float
        Foreground probability threshold in (0, 1).
    min_volume : int
        Objects of fewer voxels are removed.
    out : array-like, optional
        (Z, Y, X) int32 array for the labels (memory map, zarr); default a new array.
    should_stop : callable, optional
        Checked between blocks; True raises :class:`~napari_unet.core.predict.PredictionStopped`.
    block_voxels : int, optional
        Block size budget (default :data:`BLOCK_VOXELS`).
    progress : callable, optional
        ``progress(fraction, message)`` makes the :class:`Progress` yielded after each block.
    aspect : float
        The objects' depth over their width (see :func:`object_aspect`): scales the smoothing
        and the seed spacing along z.

    Returns
    -------
    ndarray
        (Z, Y, X) int32 labels 1..N (``out`` if given).
    """
    from skimage.segmentation import watershed

    from .predict import PredictionStopped

    shape = tuple(int(s) for s in probabilities.shape[1:])
    labels = np.zeros(shape, dtype=np.int32) if out is None else out
    sigma, radius, halo = _scales(diameter, spacing, aspect)
    # along an axis much finer than x (z planes closer than the pixels) these reach far beyond the
    # volume: no more than the volume itself is needed, nor held in memory
    extent = np.asarray(shape[-3:], dtype=float)
    sigma, radius, halo = np.minimum(sigma, extent), np.minimum(radius, extent), np.minimum(halo, extent.astype(int))
    margin = np.ceil(4 * sigma + radius).astype(int)
    footprint = _ellipsoid(radius)
    blocks = block_plan(shape, halo, block_voxels or block_budget())
    seed_ids: dict[int, int] = {}
    sizes = np.zeros(1, dtype=np.int64)
    make = progress or (lambda f, msg: Progress(int(round(1000 * f)), 1000, message=msg))
    n_steps = 2 * len(blocks)
    for k, core in enumerate(blocks):
        if should_stop is not None and should_stop():
            raise PredictionStopped("Prediction stopped.")
        ext = tuple(slice(max(0, c.start - h), min(n, c.stop + h)) for c, h, n in zip(core, halo, shape))
        block = np.asarray(probabilities[(slice(None), *ext)], dtype=np.float32) / float(n_views)
        inner = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(core, ext))
        result = np.zeros(block.shape[1:], dtype=np.int32)
        foreground = block[0] > threshold
        if foreground.any():
            smooth = ndi.gaussian_filter(block[1], sigma, mode="nearest", truncate=4.0)
            peaks = _maxima(smooth, foreground & (smooth > SEED_FLOOR), footprint)
            markers = _markers(peaks, ext, shape, margin, seed_ids)
            if markers.any():
                result = watershed(-smooth, markers, mask=foreground, connectivity=1).astype(np.int32, copy=False)
        core_labels = result[inner]
        labels[core] = core_labels
        counts = np.bincount(core_labels.ravel(), minlength=len(seed_ids) + 1)
        if counts.size > sizes.size:
            sizes = np.concatenate([sizes, np.zeros(counts.size - sizes.size, dtype=np.int64)])
        sizes[: counts.size] += counts
        yield make((k + 1) / n_steps, f"3D objects: block {k + 1}/{len(blocks)}")
    # drop small objects, renumber 1..N over the volume
    keep = sizes >= max(1, int(min_volume))
    keep[0] = False
    lut = np.zeros(sizes.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    for k, core in enumerate(blocks):
        if should_stop is not None and should_stop():
            raise PredictionStopped("Prediction stopped.")
        labels[core] = lut[np.asarray(labels[core])]
        yield make((len(blocks) + k + 1) / n_steps, f"3D objects: numbering, block {k + 1}/{len(blocks)}")
    return labels


def _maxima(values: np.ndarray, where: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Voxels of ``where`` whose value is the largest within ``footprint`` around them.

    The same as ``values >= maximum_filter(values, footprint=footprint)`` but in a fraction of
    the time for large footprints: candidates are the 3x3x3 maxima, and only they are compared
    with their whole neighbourhood.
    """
    candidates = where & (values >= ndi.maximum_filter(values, size=3, mode="nearest"))
    peaks = np.zeros(values.shape, dtype=bool)
    radius = [s // 2 for s in footprint.shape]
    for c in np.argwhere(candidates):
        lo = [max(0, ci - r) for ci, r in zip(c, radius)]
        hi = [min(n, ci + r + 1) for ci, r, n in zip(c, radius, values.shape)]
        window = values[tuple(slice(a, b) for a, b in zip(lo, hi))]
        fp = footprint[tuple(slice(a - ci + r, b - ci + r) for a, b, ci, r in zip(lo, hi, c, radius))]
        peaks[tuple(c)] = values[tuple(c)] >= window[fp].max()
    return peaks


def _markers(peaks: np.ndarray, ext: tuple[slice, ...], shape: tuple[int, ...], margin: np.ndarray,
             seed_ids: dict[int, int]) -> np.ndarray:
    """Seed markers of a block: one voxel per plateau of maxima, only where the block sees far
    enough around it (``margin`` from a cut side), ids named by the seed's volume position."""
    markers = np.zeros(peaks.shape, dtype=np.int32)
    plateaus, n = ndi.label(peaks, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return markers
    flat = np.flatnonzero(plateaus)
    _ids, first = np.unique(plateaus.ravel()[flat], return_index=True)
    coords = np.stack(np.unravel_index(flat[first], peaks.shape), axis=1)  # (n, 3) in the block
    lo = np.array([0 if e.start == 0 else m for e, m in zip(ext, margin)])
    hi = np.array([s if e.stop == n_ else s - m for e, m, s, n_ in zip(ext, margin, peaks.shape, shape)])
    ok = np.all((coords >= lo) & (coords < hi), axis=1)
    coords = coords[ok]
    if coords.size == 0:
        return markers
    origin = np.array([e.start for e in ext])
    positions = np.ravel_multi_index(tuple((coords + origin).T), shape)
    ids = np.array([seed_ids.setdefault(int(p), len(seed_ids) + 1) for p in positions], dtype=np.int32)
    markers[tuple(coords.T)] = ids
    return markers


def instances_3d(probabilities: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), diameter: float = 14.0,
                 threshold: float = 0.5, min_volume: int = 0, representation: str = "bg-interior-boundary",
                 aspect: float | None = None) -> np.ndarray:
    """3D instances of (C, Z, Y, X) class probabilities in one call (no blocks budget).

    A convenience for kept probabilities: see :func:`iter_watershed_blocks` for the method;
    ``aspect`` None: measured (:func:`object_aspect`).
    """
    from .events import run_to_end
    from .volume import _foreground_interior

    fg, interior = _foreground_interior(np.asarray(probabilities, dtype=np.float32), representation)
    stacked = np.stack([fg, interior])
    if aspect is None:
        aspect = object_aspect(stacked, 1, spacing, threshold)
    return run_to_end(iter_watershed_blocks(stacked, 1, spacing, diameter, threshold, min_volume,
                                            aspect=aspect))
