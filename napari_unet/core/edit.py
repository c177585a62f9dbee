"""Object tools for instance labels: delete, merge, split, fill holes, remove small, fresh ids.

Every operation works on a labels plane (2D) or volume (3D), never changes its input and returns
a :class:`LabelEdit`: the smallest box (``region``, a tuple of slices) that holds every pixel that
changes, and the new content of that box (``values``). The caller decides how to write it:
``edit.apply(labels)`` in place, or ``edit.changes(labels)`` for the changed pixels only (what a
napari Labels layer's ``data_setitem`` wants, so that the edit lands in its undo history).

Work happens in the bounding box of the objects concerned, so an edit of one cell in a
1024 x 1024 plane costs a few full-plane comparisons and little more. Bad input (an id that is not
there, a merge of one object, a split line that misses the object) raises ``ValueError`` with a
one-line message, before anything is computed, so the labels stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "LabelEdit",
    "bounding_box",
    "delete_object",
    "fill_holes",
    "merge_objects",
    "next_free_label",
    "relabel_sequential",
    "remove_small",
    "split_object",
]

Region = tuple[slice, ...]

#: A piece cut off by a split line counts as a new object when it holds at least this fraction of
#: the largest piece; smaller slivers (a line that wobbles along the edge) join their neighbour.
MIN_PIECE_FRACTION = 0.05

#: Compactness of the seeded watershed of a split without probabilities (the landscape is the
#: distance to the object's edge, in pixels): parts still meet at a neck, and an object without
#: one is cut between its seeds instead of going almost whole to one of them.
SPLIT_COMPACTNESS = 0.3

#: The same on the kept probabilities (a landscape from 0 to 1): a dip in the probability of 0.3
#: still decides over 30 pixels of distance from the seeds; on a flat inside, the cut falls
#: between them.
SPLIT_COMPACTNESS_PROBABILITY = 0.01


@dataclass(frozen=True)
class LabelEdit:
    """One change of a labels array: new ``values`` for ``labels[region]``.

    Attributes
    ----------
    region : tuple of slice
        One slice per axis of the labels, with explicit start and stop: the bounding box of the
        pixels that change. Empty (size 0) when nothing changes.
    values : np.ndarray
        New content of ``labels[region]``, same dtype as the labels, shape of the region.
    message : str
        What the edit does, in words ("deleted object 12 (534 px)").
    new_labels : tuple of int
        Ids the edit created (the extra pieces of a split), in order.
    """

    region: Region
    values: np.ndarray
    message: str = ""
    new_labels: tuple[int, ...] = field(default=())

    @property
    def is_empty(self) -> bool:
        """True when the edit changes no pixel."""
        return self.values.size == 0

    def apply(self, labels: np.ndarray) -> Region:
        """Write the edit into ``labels`` in place; returns the changed region."""
        if not self.is_empty:
            labels[self.region] = self.values
        return self.region

    def changes(self, labels: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """The pixels of ``labels`` (before the edit) that the edit changes.

        Returns
        -------
        indices : tuple of np.ndarray
            One int array per axis of ``labels``, of length N (fancy indices into ``labels``).
        values : np.ndarray
            (N,) new values of those pixels.
        """
        if self.is_empty:
            return tuple(np.zeros(0, dtype=np.intp) for _ in range(labels.ndim)), self.values.ravel()[:0]
        changed = np.asarray(labels[self.region]) != self.values
        local = np.nonzero(changed)
        indices = tuple(idx + s.start for idx, s in zip(local, self.region))
        return indices, self.values[changed]


# ---------------------------------------------------------------------- helpers
def _check_labels(labels: np.ndarray) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"Labels must be a numpy array (got {type(labels).__name__}).")
    if labels.ndim not in (2, 3):
        raise ValueError(f"Labels must be a 2D plane or a 3D volume, got {labels.ndim} dimensions.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Labels must hold integers, got {labels.dtype}.")
    return labels


def _check_id(label_id: object) -> int:
    try:
        value = int(label_id)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"An object id is a whole number, got {label_id!r}.") from None
    if value != label_id or value <= 0:
        raise ValueError(f"Object ids are whole numbers above 0 (0 is the background), got {label_id!r}.")
    return value


def bounding_box(mask: np.ndarray) -> Region | None:
    """Smallest box of slices that holds every True pixel of ``mask`` (None when there is none)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _offset(region: Region, inner: Region) -> Region:
    """``inner`` (a box inside ``region``'s crop) in the coordinates of the whole array."""
    return tuple(slice(r.start + i.start, r.start + i.stop) for r, i in zip(region, inner))


def _object(labels: np.ndarray, label_id: int) -> tuple[Region, np.ndarray]:
    """Bounding box of object ``label_id`` and its mask inside that box."""
    mask = labels == label_id
    box = bounding_box(mask)
    if box is None:
        raise ValueError(f"There is no object {label_id} in these labels.")
    return box, mask[box]


def _edit(labels: np.ndarray, crop_box: Region, crop_values: np.ndarray, changed: np.ndarray,
          message: str, new_labels: tuple[int, ...] = ()) -> LabelEdit:
    """A LabelEdit cut down to the pixels that change inside ``crop_box``."""
    inner = bounding_box(changed)
    if inner is None:
        return _empty_edit(labels, message)
    return LabelEdit(_offset(crop_box, inner), crop_values[inner], message, new_labels)


def _empty_edit(labels: np.ndarray, message: str) -> LabelEdit:
    """An edit that changes nothing."""
    return LabelEdit(tuple(slice(0, 0) for _ in labels.shape), np.zeros((0,) * labels.ndim, dtype=labels.dtype),
                     message)


def _fits(labels: np.ndarray, value: int) -> None:
    if value > np.iinfo(labels.dtype).max:
        raise ValueError(
            f"No free object id left in {labels.dtype} labels (the highest is {np.iinfo(labels.dtype).max}, "
            "and no run of free ids below it): delete objects, or save the masks and open them as 32-bit labels."
        )


# ---------------------------------------------------------------------- ids
def next_free_label(labels, count: int = 1) -> int:
    """The id for a new object, the first of ``count`` consecutive free ids: one above the highest
    id in use (1 for empty labels), or, when that would not fit the labels' type (8-bit masks whose
    255 is an object, a type's top id taken), the lowest run of free ids below it. One above the
    type's top when there is no such run (:func:`split_object` then says no id is left).

    Works on any array with a ``max`` (numpy, dask); a plane, a volume or a whole stack.
    This is one pass over the data, no copy (the search for a run reads the ids in use).
    """
    if labels.size == 0:
        return 1
    top = max(int(np.max(labels)), 0)
    dtype = np.dtype(labels.dtype)
    if not np.issubdtype(dtype, np.integer) or top + count <= np.iinfo(dtype).max:
        return top + 1
    used = np.unique(np.asarray(labels))
    used = np.concatenate([[0], used[used > 0]]).astype(np.int64)
    gaps = np.diff(np.append(used, np.iinfo(dtype).max + 1)) - 1  # free ids after each id in use
    fits = np.flatnonzero(gaps >= count)
    return int(used[fits[0]]) + 1 if fits.size else top + 1


def relabel_sequential(labels: np.ndarray) -> LabelEdit:
    """Renumber the objects 1..N in the order of their current ids (background stays 0)."""
    labels = _check_labels(labels)
    ids, _sizes = _object_sizes(labels)
    if ids.size == 0 or int(ids[-1]) == ids.size:
        return _empty_edit(labels, f"the objects are already numbered 1 to {ids.size}")
    table = _id_table(labels, ids)
    if table is not None:
        table[ids] = np.arange(1, ids.size + 1, dtype=labels.dtype)
        renumbered = table[labels]
    else:  # ids too sparse for a lookup table
        from skimage.segmentation import relabel_sequential as _skimage_relabel

        # scikit-image's Cython code wants a writable buffer (it does not write to it)
        source = labels if labels.flags.writeable else labels.copy()
        renumbered = _skimage_relabel(source)[0].astype(labels.dtype, copy=False)
    changed = renumbered != labels
    whole = tuple(slice(0, s) for s in labels.shape)
    return _edit(labels, whole, renumbered, changed, f"renumbered the objects 1 to {ids.size}")


# ---------------------------------------------------------------------- delete, merge
def delete_object(labels: np.ndarray, label_id: int, at: Sequence[int] | None = None) -> LabelEdit:
    """Set the pixels of object ``label_id`` to background.

    Parameters
    ----------
    labels : np.ndarray
        (Y, X) or (Z, Y, X) integer instance labels (not changed).
    label_id : int
        The object to delete.
    at : sequence of int, optional
        A pixel of the object: only its part connected to that pixel (through faces) is deleted.
        For a stack edited as a volume, whose planes were segmented one by one: each plane numbers
        its objects from 1, and the id clicked is also unrelated cells in the other planes.
    """
    labels = _check_labels(labels)
    label_id = _check_id(label_id)
    box, whole = _object(labels, label_id)
    obj = whole if at is None else _part_at(whole, box, at)
    values = labels[box].copy()
    values[obj] = 0
    rest = int(whole.sum()) - int(obj.sum())  # (separate pieces of the id: a binary mask's other cells)
    kept = f"; {rest} px of id {label_id} elsewhere kept: click them to delete them too" if rest else ""
    return LabelEdit(box, values, f"deleted object {label_id} ({int(obj.sum())} px){kept}")


def _part_at(obj: np.ndarray, box: Region, at: Sequence[int]) -> np.ndarray:
    """The part of ``obj`` (an object's mask in its bounding ``box``) connected to the pixel ``at`` of
    the labels (within a plane by sides and corners, between planes by faces); all of it when ``at``
    is not on it."""
    local = tuple(int(a) - int(s.start) for a, s in zip(at, box, strict=True))
    if not all(0 <= i < n for i, n in zip(local, obj.shape, strict=True)) or not obj[local]:
        return obj
    # one object of a plane is whole (8-connected, as instances are numbered); planes join through faces
    structure = np.zeros((3,) * obj.ndim, dtype=bool)
    structure[(1,) * (obj.ndim - 2)] = True
    for axis in range(obj.ndim - 2):
        for side in (0, 2):
            structure[tuple(side if k == axis else 1 for k in range(obj.ndim))] = True
    parts, _n = ndi.label(obj, structure=structure)
    return parts == parts[local]


def merge_objects(labels: np.ndarray, label_ids: Sequence[int],
                  at: Sequence[Sequence[int] | None] | None = None) -> LabelEdit:
    """Give every pixel of the objects ``label_ids`` the first id of the list.

    Parameters
    ----------
    labels : np.ndarray
        (Y, X) or (Z, Y, X) integer instance labels (not changed).
    label_ids : sequence of int
        At least two different ids; the merged object keeps ``label_ids[0]``.
    at : sequence of pixels, optional
        A pixel of each object (None for any): of the objects merged into the first, only their
        parts connected to it (see :func:`delete_object`).
    """
    labels = _check_labels(labels)
    ids = list(dict.fromkeys(_check_id(i) for i in label_ids))
    if len(ids) < 2:
        shown = f"object {ids[0]}" if ids else "no object"
        raise ValueError(f"Merging needs two different objects; got {shown}.")
    keep, others = ids[0], ids[1:]
    _object(labels, keep)  # raises when it is not there
    where = {_check_id(i): pixel for i, pixel in zip(label_ids, at, strict=True)} if at is not None else {}
    mask = np.zeros(labels.shape, dtype=bool)
    for other in others:
        one = labels == other
        if not one.any():
            raise ValueError(f"There is no object {other} in these labels.")
        if where.get(other) is not None:
            box = bounding_box(one)
            one[box] = _part_at(one[box], box, where[other])
        mask |= one
    box = bounding_box(mask)
    assert box is not None
    values = labels[box].copy()
    values[mask[box]] = keep
    names = ", ".join(str(i) for i in others)
    return LabelEdit(box, values, f"merged object{'s' if len(others) > 1 else ''} {names} into {keep}")


# ---------------------------------------------------------------------- split
def _as_points(points: Iterable[Sequence[float]], ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise ValueError(f"{what} must be a list of points with {ndim} coordinates each.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must have finite coordinates.")
    return np.round(arr).astype(np.intp)


def _seed_markers(labels: np.ndarray, label_id: int, box: Region, obj: np.ndarray, seeds) -> np.ndarray:
    points = _as_points(seeds, labels.ndim, "Seeds")
    if len(points) < 2:
        raise ValueError("A split needs at least two seeds, one in each part.")
    if len({tuple(p) for p in points}) < len(points):
        raise ValueError("Two seeds fall on the same pixel: put one seed in each part of the object.")
    markers = np.zeros(obj.shape, dtype=np.int32)
    for n, point in enumerate(points, start=1):
        inside = all(0 <= p < s for p, s in zip(point, labels.shape))
        local = tuple(int(p - b.start) for p, b in zip(point, box))
        on_object = inside and all(0 <= q < s for q, s in zip(local, obj.shape)) and obj[local]
        if not on_object:
            raise ValueError(f"Seed {tuple(int(p) for p in point)} is not on object {label_id}: "
                             "put every seed inside the object.")
        markers[local] = n
    return markers


def _line_markers(labels: np.ndarray, label_id: int, box: Region, obj: np.ndarray, line) -> np.ndarray:
    from skimage.draw import line_nd

    points = _as_points(line, labels.ndim, "A split line")
    if len(points) < 2:
        raise ValueError("A split line needs at least two points.")
    origin = np.array([b.start for b in box])
    cut = np.zeros(obj.shape, dtype=bool)
    for start, stop in zip(points[:-1], points[1:]):
        pixels = np.stack(line_nd(start - origin, stop - origin, endpoint=True), axis=1)
        pixels = pixels[np.all((pixels >= 0) & (pixels < obj.shape), axis=1)]
        cut[tuple(pixels.T)] = True
    if not (cut & obj).any():
        raise ValueError(f"The line misses object {label_id}: draw it across the object.")
    pieces, n = ndi.label(obj & ~cut)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    kept = np.flatnonzero(sizes >= MIN_PIECE_FRACTION * sizes.max(initial=0)) + 1
    if kept.size < 2:
        raise ValueError(f"The line does not cut object {label_id} in two: "
                         "draw it right across, from background to background.")
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    return lut[pieces]


def split_object(
    labels: np.ndarray,
    label_id: int,
    seeds: Iterable[Sequence[float]] | None = None,
    line: Iterable[Sequence[float]] | None = None,
    probabilities: np.ndarray | None = None,
    new_label: int | None = None,
    ids_of: Any = None,
) -> LabelEdit:
    """Split object ``label_id`` in parts, from seeds or along a line.

    The parts grow from their markers by a seeded watershed inside the object: on the object
    probability when ``probabilities`` are given (the kept network output: parts meet where it
    is lowest), on the distance to the object's edge otherwise (parts meet at its necks).

    Parameters
    ----------
    labels : np.ndarray
        (Y, X) or (Z, Y, X) integer instance labels (not changed).
    label_id : int
        The object to split.
    seeds : sequence of points, optional
        Two or more points (one coordinate per axis of ``labels``, in pixels) inside the object;
        each grows into one part.
    line : sequence of points, optional
        A polyline (two or more points) drawn across the object; the parts on either side of it
        are the markers, and the line's own pixels join the part they fit best. Slivers under
        ``MIN_PIECE_FRACTION`` of the largest part join their neighbour.
    probabilities : np.ndarray, optional
        Probability of "inside an object", same shape as ``labels``.
    new_label : int, optional
        First id for the new parts (default: the first of as many free ids in a row as new parts,
        :func:`next_free_label`, of ``ids_of``).
    ids_of : array-like, optional
        The labels whose ids the new parts must not take: the whole stack when ``labels`` is one
        plane of it (default ``labels``).

    Returns
    -------
    LabelEdit
        The largest part keeps ``label_id``; the others get ``new_label``, ``new_label + 1``, ...
        (listed in ``new_labels``).
    """
    from skimage.segmentation import watershed

    labels = _check_labels(labels)
    label_id = _check_id(label_id)
    if (seeds is None) == (line is None):
        raise ValueError("Split with either seeds or a line (one of the two).")
    if probabilities is not None:
        probabilities = np.asarray(probabilities)
        if probabilities.shape != labels.shape:
            raise ValueError(f"Probabilities of shape {probabilities.shape} do not match the labels "
                             f"{labels.shape}.")
    box, obj = _object(labels, label_id)
    if seeds is not None:
        markers = _seed_markers(labels, label_id, box, obj, seeds)
    else:
        markers = _line_markers(labels, label_id, box, obj, line)
    if probabilities is not None:
        landscape = -np.asarray(probabilities[box], dtype=np.float32)
        # compact too: inside an object the probability is flat (about 1), and plain flooding
        # would give almost all of a neckless object to one seed there as well
        parts = watershed(landscape, markers=markers, mask=obj, compactness=SPLIT_COMPACTNESS_PROBABILITY)
    else:
        # the distance to the object's edge (the box's border is background too: the object
        # touches it), with a compact watershed: plain flooding lets the seed that first reaches
        # the ridge of a neckless object take all of it, leaving the other a sliver
        distance = ndi.distance_transform_edt(np.pad(obj, 1))[(slice(1, -1),) * obj.ndim]
        parts = watershed(-distance, markers=markers, mask=obj, compactness=SPLIT_COMPACTNESS)
    n_parts = int(parts.max())
    sizes = np.bincount(parts.ravel(), minlength=n_parts + 1)[1:]
    order = np.argsort(-sizes, kind="stable") + 1  # largest part first: it keeps the id
    if new_label is not None:
        first = _check_id(new_label)
    else:  # free over ``ids_of`` (the whole stack ``labels`` is a plane of), n_parts - 1 of them in a row
        first = next_free_label(labels if ids_of is None else ids_of, n_parts - 1)
    _fits(labels, first + n_parts - 2)
    new_ids = tuple(range(first, first + n_parts - 1))
    values = labels[box].copy()
    changed = np.zeros(obj.shape, dtype=bool)
    for part, new_id in zip(order[1:], new_ids):
        where = parts == part
        values[where] = new_id
        changed |= where
    message = f"split object {label_id} into {n_parts} ({label_id}, {', '.join(map(str, new_ids))})"
    return _edit(labels, box, values, changed, message, new_ids)


# ---------------------------------------------------------------------- clean-up
def _holes(crop: np.ndarray, label_id: int) -> np.ndarray:
    """Background pixels of ``crop`` that object ``label_id`` encloses."""
    obj = crop == label_id
    return ndi.binary_fill_holes(obj) & ~obj & (crop == 0)


def _enclosed_background(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The background pixels cut off from the array's border, and the objects next to them.

    Returns
    -------
    pixels : np.ndarray
        (m,) flat indices into ``labels`` of the enclosed background pixels.
    regions : np.ndarray
        (m,) their background region (face-connected), numbered from 1.
    pairs : np.ndarray
        (k, 2) sorted unique (region, object id) pairs of face neighbours, int64.
    """
    labels = np.ascontiguousarray(labels)
    regions, n = ndi.label(labels == 0)
    outside = np.zeros(n + 1, dtype=bool)
    outside[0] = True  # the objects themselves
    for axis in range(labels.ndim):
        for end in (0, -1):
            outside[np.take(regions, end, axis=axis)] = True
    flat = regions.ravel()
    pixels = np.flatnonzero(~outside[flat])
    regions = flat[pixels].astype(np.int64)
    # an enclosed pixel is off the border, so its face neighbours are at +- one stride in the flat array
    strides = [int(np.prod(labels.shape[a + 1 :])) for a in range(labels.ndim)]
    flat_labels = labels.ravel()
    found = []
    for step in strides:
        for offset in (step, -step):
            neighbour = flat_labels[pixels + offset]
            touch = neighbour != 0
            found.append(np.stack([regions[touch], neighbour[touch].astype(np.int64)], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return pixels, regions, (np.unique(pairs, axis=0) if pairs.size else pairs)


def _fill_every_hole(labels: np.ndarray) -> LabelEdit:
    """Holes of every object, as many separate fills would find them, in a few passes.

    A background region cut off from the border that touches one object only is a hole of that
    object. One that touches several (the gap between touching cells, or a ring around an object
    nested in another's hole) can only be a hole of an object whose box holds all the others: those
    few objects are filled one by one. Nested objects win: they are written last.
    """
    pixels, regions, pairs = _enclosed_background(labels)
    if pairs.size == 0:
        return _empty_edit(labels, "no object has holes")
    region_ids, first, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    found = []  # (object id, box, holes in the box) of the objects filled one by one
    in_multi = np.repeat(counts > 1, counts)  # pairs are sorted by region
    if in_multi.any():
        multi_pairs = pairs[in_multi]
        pair_ids = multi_pairs[:, 1].astype(labels.dtype)  # (uint64 ids past 2^63 wrap in the int64 pairs)
        boxes = dict(_object_boxes(labels, only=np.unique(pair_ids)))
        # (object, axis, start/stop) for each pair; a candidate's box holds the union of its group's boxes
        corners = np.array([[(b.start, b.stop) for b in boxes[int(i)]] for i in pair_ids])
        group_starts = np.flatnonzero(np.r_[True, multi_pairs[1:, 0] != multi_pairs[:-1, 0]])
        group_size = np.diff(np.r_[group_starts, len(multi_pairs)])
        low = np.repeat(np.minimum.reduceat(corners[:, :, 0], group_starts, axis=0), group_size, axis=0)
        high = np.repeat(np.maximum.reduceat(corners[:, :, 1], group_starts, axis=0), group_size, axis=0)
        holds_all = np.all((corners[:, :, 0] <= low) & (corners[:, :, 1] >= high), axis=1)
        for object_id in np.unique(pair_ids[holds_all]).tolist():
            box = boxes[object_id]
            holes = _holes(labels[box], object_id)
            if holes.any():
                found.append((object_id, box, holes))
        found.sort(key=lambda item: -item[2].size)  # larger boxes first
    # regions next to one object only: straight to that object
    owner = np.zeros(int(region_ids.max()) + 1, dtype=np.int64)
    single = counts == 1
    owner[region_ids[single]] = pairs[first[single], 1]
    direct_owner = owner[regions]
    direct = np.unravel_index(pixels[direct_owner != 0], labels.shape)
    direct_owner = direct_owner[direct_owner != 0].astype(labels.dtype)
    boxes_all = [box for _id, box, _holes in found]
    if direct_owner.size:
        boxes_all.append(tuple(slice(int(c.min()), int(c.max()) + 1) for c in direct))
    if not boxes_all:
        return _empty_edit(labels, "no object has holes")
    region = tuple(slice(min(b[a].start for b in boxes_all), max(b[a].stop for b in boxes_all))
                   for a in range(labels.ndim))
    values = labels[region].copy()
    changed = np.zeros(values.shape, dtype=bool)
    for object_id, box, holes in found:
        local = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))
        values[local][holes] = object_id
        changed[local] |= holes
    local = tuple(c - r.start for c, r in zip(direct, region))
    values[local] = direct_owner  # written last: the most nested owner
    changed[local] = True
    filled = {int(i) for i, _b, _h in found} | set(np.unique(direct_owner).tolist())
    return _edit(labels, region, values, changed,
                 f"filled {int(changed.sum())} px of holes in {len(filled)} object(s)")


def fill_holes(labels: np.ndarray, label_id: int | None = None) -> LabelEdit:
    """Give the background enclosed by an object that object's id.

    Holes are background only: another object inside a cell is left alone. In 3D, a hole is an
    enclosed cavity of the volume (fill plane by plane for holes in each plane).

    Parameters
    ----------
    labels : np.ndarray
        (Y, X) or (Z, Y, X) integer instance labels (not changed).
    label_id : int, optional
        Fill this object's holes only (default: every object's).
    """
    labels = _check_labels(labels)
    if label_id is not None:
        label_id = _check_id(label_id)
        box, _obj = _object(labels, label_id)
        values = labels[box].copy()
        holes = _holes(values, label_id)
        values[holes] = label_id
        n = int(holes.sum())
        message = f"filled {n} px of holes in object {label_id}" if n else f"object {label_id} has no holes"
        return _edit(labels, box, values, holes, message)
    return _fill_every_hole(labels)


def remove_small(labels: np.ndarray, min_size: int) -> LabelEdit:
    """Delete the objects of fewer than ``min_size`` pixels (voxels in 3D)."""
    labels = _check_labels(labels)
    min_size = int(min_size)
    if min_size < 0:
        raise ValueError(f"The minimum size must be 0 or more pixels, got {min_size}.")
    ids, sizes = _object_sizes(labels)
    small = ids[sizes < min_size]
    if small.size == 0:
        return _empty_edit(labels, f"no object under {min_size} px")
    table = _id_table(labels, ids, dtype=bool)
    if table is not None:
        table[small] = True
        mask = table[labels]
    else:
        mask = np.isin(labels, small)
    box = bounding_box(mask)
    assert box is not None
    values = labels[box].copy()
    values[mask[box]] = 0
    return LabelEdit(box, values, f"removed {small.size} object(s) under {min_size} px")


#: Ids up to this many times the number of pixels are counted and mapped with lookup tables.
_DENSE_IDS = 4


def _object_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids in use (sorted, background excluded) and their pixel counts."""
    if labels.size == 0:
        return np.zeros(0, dtype=labels.dtype), np.zeros(0, dtype=np.intp)
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high <= _DENSE_IDS * labels.size:  # one counting pass
        counts = np.bincount(labels.ravel(), minlength=high + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        return ids.astype(labels.dtype), counts[ids]
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids != 0
    return ids[keep], counts[keep]


def _dense(labels: np.ndarray, ids: np.ndarray) -> bool:
    """True when ids (sorted) are few and small enough to index a lookup table."""
    return not ids.size or (int(ids[0]) >= 0 and int(ids[-1]) <= _DENSE_IDS * labels.size)


def _id_table(labels: np.ndarray, ids: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray | None:
    """A zero lookup table indexed by id (``table[labels]`` maps every pixel), or None when the
    ids (sorted, all those of ``labels``) are negative or too sparse for one."""
    if not _dense(labels, ids):
        return None
    return np.zeros(int(ids[-1]) + 1 if ids.size else 1, dtype=dtype or labels.dtype)


def _object_boxes(labels: np.ndarray, only: np.ndarray | None = None) -> list[tuple[int, Region]]:
    """(id, bounding box) of every object (or of the ids in ``only``)."""
    ids, _sizes = _object_sizes(labels) if only is None else (only, None)
    if _dense(labels, ids):  # one pass (ids outside 1..max_label are ignored)
        boxes = ndi.find_objects(labels, max_label=int(ids[-1]) if ids.size else 0)
        return [(int(i), boxes[int(i) - 1]) for i in ids if boxes[int(i) - 1] is not None]
    return [(int(i), _object(labels, int(i))[0]) for i in ids]
