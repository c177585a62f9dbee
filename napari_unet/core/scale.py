"""Object size: every model segments best at its own object diameter.

A model records the diameter (pixels) of the objects it segments best
(``metadata["diameter"]``, see :attr:`SegmentationModel.diameter`). An image whose objects
are of another size is rescaled before the network, and the probabilities are brought back
to the image's own pixel grid before post-processing, so the labels always have the
image's shape.

A model segments objects of a range of sizes equally well (:class:`ObjectSize`): images whose
objects lie in it run at their own resolution, others are rescaled to the nearest end of it.

The object diameter of an image is given by the user or estimated (:class:`DiameterSearch`):
passes of the network at a pyramid of scales (1, 1/2, 1/4, ...), the median equivalent diameter
``2 sqrt(area / pi)`` of what each found, and the finest two consecutive levels that agree
within :data:`STABLE_RATIO`; objects too small to be found at scale 1 are looked for enlarged
(2x, 4x). A fine-tuned model starts where the objects it was fine-tuned on
(``SegmentationModel.data_diameter``) reach its size.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .preprocess import ImageError

log = logging.getLogger(__name__)

#: Rescaling within this fraction of 1 is not worth a pass (nor the interpolation).
SCALE_TOLERANCE = 0.15
#: Levels of the scale pyramid (1, 1/2, 1/4, ...) at most when estimating the diameter.
PYRAMID_LEVELS = 5
#: Two consecutive levels whose estimates differ less than this agree on the object size.
STABLE_RATIO = 1.25
#: A pyramid level stops when the image would be smaller than this (pixels, shorter side).
MIN_PASS_SIDE = 64
#: Estimation passes on planes larger than this (per side) run on a central crop of it.
ESTIMATE_CROP = 1024
#: Enlarged passes of the estimate, in this order until two consecutive ones agree, when the
#: image's own scale shows tiny objects (see :class:`DiameterSearch`). Not 8x: there one pixel is
#: an 8 px blob, the size of the model's objects, and texture or noise of a few pixels measures as
#: objects of about 2 px (a third pass at 8x, where 2x and 4x disagree, found DSB2018 val nuclei
#: shrunk to 4 px a little better, AP@0.5 0.744 against 0.710, but sized a plane of a synthetic
#: z-stack at 1.9 px on 176 "objects" where the model had found 2 nuclei of 12 px).
FINE_SCALES = (2.0, 4.0)
#: ... and only in images whose neighbouring pixels are at least this correlated (see
#: :func:`pixel_correlation`): pixel noise enlarged looks like objects of 2-3 px to the model
#: (a blank frame of camera noise measured 2.4 px at 4x and 8x, in agreement).
MIN_PIXEL_CORRELATION = 0.2
#: A pass that finds fewer objects than this has not measured a size (the median of one or two
#: objects is one blob's size).
MIN_OBJECTS = 3
#: Objects found one to one at two consecutive pyramid levels (intersection over union at least
#: this, on the finer level's grid) are found whole at both: see :func:`matched_diameter`.
MATCH_IOU = 0.5
#: Where no two pyramid levels agree, a level whose objects lie, at least this share of them, several
#: to one inside the objects of the next coarser level (:func:`nested_share`) is not taken for the
#: objects' size: it outlined parts of them (chromocentres: bright spots inside mouse nuclei, 2-4x the
#: nucleoplasm, which the network takes for nuclei at the image's own scale). 13 DSB2018 val fluorescence
#: images with such spots: 0.74-0.92 at the level of the spots (two images' estimates 17 px and 15 px
#: for nuclei of 47 px and 48 px, now 38 px and 25 px); the levels chosen on the DSB2018 val images,
#: 20 of them enlarged 2x and 10 SIM+ frames, under 0.6 (none changed).
NESTED_SHARE = 0.75
#: ... an object of the finer level lying inside one of the coarser level: this share of its pixels in it.
NESTED_INSIDE = 0.8
#: Smallest and largest rescaling applied (a typo of 1000 px must not make a 1 px image).
MIN_SCALE, MAX_SCALE = 1 / 16, 8.0
#: The most pixels a plane is enlarged to (about 11,600 px a side: ~1.5 GB of class probabilities,
#: minutes of a CPU); a 4096 px plane enlarged 8x for objects of 2 px would be 32,768 px a side.
MAX_ENLARGED_PIXELS = 2**27


def enlargement_limit(shape: tuple[int, int]) -> float:
    """The largest scale a plane of ``shape`` may be enlarged by (:data:`MAX_ENLARGED_PIXELS`; >= 1)."""
    return max(1.0, math.sqrt(MAX_ENLARGED_PIXELS / max(1, int(shape[0]) * int(shape[1]))))

__all__ = [
    "DiameterSearch",
    "FINE_SCALES",
    "MIN_OBJECTS",
    "MeasuredSize",
    "check_diameter",
    "count_objects",
    "equivalent_diameters",
    "median_diameter",
    "object_diameters",
    "pixel_correlation",
    "min_size_at",
    "parse_diameter",
    "resize_image",
    "ObjectSize",
    "resize_probabilities",
]


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter ``2 sqrt(area / pi)`` of every object of a labels array (any ndim: area
    is the pixel count of 2D objects; for 3D use per-plane labels)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() <= 0:
        return np.zeros(0)
    areas = np.bincount(labels.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


#: Objects of a user's labels smaller than this fraction of their 90th-percentile area are
#: fragments (eraser or brush leftovers, specks), not objects: left out of the labels' size.
FRAGMENT_FRACTION = 0.05


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameters of the objects of a labels image, fragments left out (see
    :data:`FRAGMENT_FRACTION`): the size of a user's labels, which training rescales them by and a
    fine-tuned model records. A dozen specks among 23 cells made it 8 px instead of 54 (BBBC030),
    and the field was then trained enlarged 3.6x (a few steps in a time budget), and segmented so
    ever after."""
    diameters = equivalent_diameters(labels)
    if diameters.size == 0:
        return diameters
    areas = np.pi * (diameters / 2.0) ** 2
    return diameters[areas >= FRAGMENT_FRACTION * np.percentile(areas, 90)]


#: Of pyramid levels that do not agree, on a stained-tissue colour image, the level where the network
#: is surest of its objects (lowest :func:`foreground_uncertainty`, by more than this many nats than
#: the level the rules of :meth:`DiameterSearch._without_agreement` choose) measures the objects, when
#: a third of them are found again one to one a level finer (:meth:`DiameterSearch._whole_at_finer`).
#: On DSB2018 colour images enlarged 2x and 3x (nuclei of 25-180 px) the finest level within the
#: model's range held pieces of the large nuclei (120 px measured 18 px): val AP@0.5 (bench_scale.py
#: --kind color) 0.543 -> 0.650 and 0.483 -> 0.638, their own size and half unchanged. The certainty
#: finds the level within a factor 1.5 of the right one on 22 of 24 such images; a margin of noise (a
#: half-size image, 0.004 nats) changed one for the worse. Not on grey images: bright-field nuclei at
#: half size were surest merged into clumps (AP@0.5 0.241 -> 0.006), as were the 10-20 px nuclei of
#: scikit-image's IHC section at its own size (6 "113 px" clumps at 1/8, only one of them found again
#: at 1/4: hence the check); fluorescence, phase contrast and DIC did not change
#: (benchmarks/RESULTS.md, "Stained tissue at other magnifications").
CERTAINTY_MARGIN = 0.05


def foreground_uncertainty(probs: np.ndarray) -> float | None:
    """The mean entropy (nats) of the class probabilities ``probs`` (C, H, W) over the pixels the
    network calls foreground (background below 0.5); None where there are none."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 1e-6, 1.0)
    foreground = p[0] < 0.5
    if not foreground.any():
        return None
    entropy = -(p * np.log(p)).sum(0)
    return float(entropy[foreground].mean())


def count_objects(labels: np.ndarray) -> int:
    """How many objects (labels other than 0) a labels array holds."""
    return int(np.count_nonzero(np.bincount(np.asarray(labels).ravel())[1:]))


def median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter of the objects of ``labels`` (pixels), None when it has none."""
    diameters = equivalent_diameters(labels)
    return float(np.median(diameters)) if diameters.size else None


def check_diameter(diameter: Any, plane_shape: tuple[int, int] | None = None) -> float:
    """A diameter given by a user as a float, or a clear :class:`ImageError`.

    It must be a finite number of at least one pixel (a smaller object cannot be seen; the image
    would be enlarged many times over) and, when the plane shape is known, at most half the
    plane's shorter side (an object cannot be larger than the image).
    """
    try:
        value = float(diameter)
    except (TypeError, ValueError):
        raise ImageError(f"The object diameter must be a number of pixels, a size with its unit ('8 um') or "
                         f"'auto', got {diameter!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ImageError(f"The object diameter must be a positive number of pixels, got {diameter!r}.")
    if value < 1:
        raise ImageError(f"An object diameter of {value:.3g} px is less than one pixel; give the diameter of "
                         "one cell (in pixels, or with its unit: '8 um').")
    if plane_shape is not None and value > min(plane_shape) / 2:
        raise ImageError(
            f"An object diameter of {value:g} px is more than half of the image ({plane_shape[0]} x "
            f"{plane_shape[1]} px); give the diameter of one cell, in pixels."
        )
    return value


def _positive(number: str, text: Any) -> float:
    """The number of a physical size (any size above 0: "0.8 um" is fine; the pixels it makes are
    checked by :func:`check_diameter`)."""
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ImageError(f"The object diameter must be a positive size, got {text!r}.")
    return value


_UNITS_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}


def diameter_word(diameter: Any) -> str | None:
    """What a ``diameter`` that is a word asks for: "auto" (None, "" or "auto", any case) or
    "native"; None when it is a size (a number, "12 px", "5 um": :func:`parse_diameter`)."""
    if diameter is None:
        return "auto"
    word = diameter.strip().lower() if isinstance(diameter, str) else None
    return {"": "auto", "auto": "auto", "native": "native"}.get(word) if word is not None else None


def parse_diameter(text: Any, pixel_size_um: float | None = None) -> float | None:
    """A diameter as a user types it: ``"auto"`` (or empty) -> None; ``"12"`` or ``"12 px"`` ->
    12.0 pixels; ``"5 um"`` (µm, nm, mm) -> pixels through ``pixel_size_um`` (µm per pixel).

    Raises :class:`ImageError` with a clear message for anything else (a physical size
    without a known pixel size included). The value itself is checked by :func:`check_diameter`.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return check_diameter(text)
    words = str(text).strip().lower()
    if re.search(r"\d,\d{3}(?!\d)", words):  # "1,000": a thousands separator or a decimal comma (1.000)?
        raise ImageError(f"The object diameter {text!r} can be read two ways: write it without the comma "
                         f"({words.replace(',', '')}) or with a decimal point ({words.replace(',', '.')}).")
    words = words.replace(",", ".")
    if diameter_word(words) == "auto":
        return None
    for unit in ("px", "pixels", "pixel", *_UNITS_UM):
        if words.endswith(unit) and words[: -len(unit)].strip():
            number = words[: -len(unit)].strip()
            if unit in _UNITS_UM:
                if not pixel_size_um:
                    raise ImageError(
                        f"The object diameter {text!r} is a physical size, but the image has no pixel "
                        "size: give it in pixels."
                    )
                return check_diameter(_positive(number, text) * _UNITS_UM[unit] / pixel_size_um)
            return check_diameter(number)
    return check_diameter(words)


@dataclass(frozen=True)
class ObjectSize:
    """The object sizes a model segments well, and how an image is rescaled to reach them.

    Attributes
    ----------
    diameter : float
        The model's own object diameter (pixels): where it segments best.
    low, high : float
        Diameters it segments as well as at ``diameter`` (a model trained on objects of many
        sizes handles a range; one trained at a fixed diameter, about +-15%). Images whose
        objects lie in the range run at their own resolution; others are rescaled to the
        nearest end of the range.
    """

    diameter: float
    low: float
    high: float

    @classmethod
    def around(cls, diameter: float) -> "ObjectSize":
        """A model that works at one diameter (within :data:`SCALE_TOLERANCE`)."""
        return cls(diameter, diameter / (1 + SCALE_TOLERANCE), diameter * (1 + SCALE_TOLERANCE))

    def scale_for(self, diameter: float | None) -> float:
        """The factor that brings objects of ``diameter`` px into the range (1 when they are in it,
        when it is within :data:`SCALE_TOLERANCE` of 1, or when the diameter is unknown)."""
        if not diameter:
            return 1.0
        target = min(max(diameter, self.low), self.high)
        scale = float(np.clip(target / diameter, MIN_SCALE, MAX_SCALE))
        return 1.0 if abs(scale - 1.0) <= SCALE_TOLERANCE else scale


@dataclass(frozen=True)
class MeasuredSize:
    """An object diameter an earlier run measured (its estimate, in the image's pixels) and the scale
    it segmented at. A run given it segments at that scale, as that run did: not as a typed diameter,
    whose scale would be worked out again and checked (a cancelled whole-stack run went on, and failed
    on the estimate taken for a diameter typed too small for a large plane: "too large to segment").
    """

    diameter: float
    scale: float


def min_size_at(min_size: int, scale: float) -> int:
    """A minimum object size counted at the model's scale, in pixels of an image that was
    rescaled by ``scale`` to reach it."""
    return int(round(min_size / scale**2)) if min_size else 0


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) after rescaling by ``scale`` (at least 1 pixel each)."""
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def _source_coords(n_in: int, n_out: int) -> Any:
    """Where each of ``n_out`` samples falls among ``n_in`` (pixel centres: scipy's
    ``grid_mode=True``), before anything is done about the edges (float64 tensor)."""
    import torch

    return (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5


def _source_taps(n_in: int, n_out: int, mirror: bool) -> tuple[Any, Any, Any]:
    """Linear interpolation from ``n_in`` samples to ``n_out`` on pixel centres (scipy's
    ``grid_mode=True``): for each output sample the two input indices and the weight of the
    second. Beyond the edges, ``mirror`` reflects about the edge sample (scipy's "mirror", what
    scikit-image's ``resize`` does by default); otherwise the edge value is kept ("nearest")."""
    import torch

    c = _source_coords(n_in, n_out)
    if n_in == 1:
        c = torch.zeros_like(c)
    elif mirror:
        c = torch.where(c < 0, -c, c)
        c = torch.where(c > n_in - 1, 2 * (n_in - 1) - c, c)
    c = c.clamp(0, n_in - 1)
    i0 = c.floor()
    weight = (c - i0).to(torch.float32)
    i0 = i0.long()
    return i0, (i0 + 1).clamp(max=n_in - 1), weight


def _along(x: Any, axis: int, n_out: int, mirror: bool, keep: Any = None) -> Any:
    """``x`` (C, H, W tensor) linearly resampled to ``n_out`` samples along ``axis`` (1 or 2);
    only the output samples ``keep`` (indices) when given."""
    i0, i1, weight = _source_taps(x.shape[axis], n_out, mirror)
    if keep is not None:
        i0, i1, weight = i0[keep], i1[keep], weight[keep]
    weight = weight.view(-1, 1) if axis == 1 else weight.view(1, -1)
    return x.index_select(axis, i0).lerp(x.index_select(axis, i1), weight)


def linear_resize(chw: np.ndarray, shape: tuple[int, int], mirror: bool = False) -> np.ndarray:
    """(C, h, w) float32 values brought to (C, H, W) by linear interpolation between pixel
    centres, as ``scipy.ndimage.zoom(order=1, grid_mode=True)`` with mode "mirror" (``mirror``)
    or "nearest" gives it to float rounding (torch takes the source coordinates in float32: up to
    about 2e-4 of the value range on 2048 px planes), 10-20x faster on large planes (torch's
    bilinear resampling, on all cores; edge rows and columns that fall beyond the input redone
    when ``mirror``)."""
    import torch

    shape = (int(shape[0]), int(shape[1]))
    if tuple(np.shape(chw)[1:]) == shape:
        return np.array(chw, dtype=np.float32)  # a copy, as for any other shape
    values = np.ascontiguousarray(chw, dtype=np.float32)
    x = torch.from_numpy(values if values.flags.writeable else values.copy())  # (torch wants writeable)
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(x[None], size=shape, mode="bilinear", align_corners=False)[0]
        if mirror:  # torch keeps the edge value beyond the edges: redo those rows and columns
            for axis, other in ((1, 2), (2, 1)):
                n_in, n_out = x.shape[axis], shape[axis - 1]
                c = _source_coords(n_in, n_out)
                edge = torch.nonzero((c < 0) | (c > n_in - 1)).flatten()
                if n_in > 1 and len(edge):
                    part = _along(_along(x, axis, n_out, True, edge), other, shape[other - 1], True)
                    out.index_copy_(axis, edge, part)
        return out.numpy()


def resize_image(plane: np.ndarray, scale: float) -> np.ndarray:
    """A 2D plane (H, W) or (H, W, C) rescaled by ``scale`` as float32: scikit-image's ``resize``
    (linear interpolation, edges mirrored, a Gaussian anti-aliasing filter when shrinking) to float
    rounding, through :func:`linear_resize`."""
    if scale == 1.0:
        return plane
    shape = scaled_shape(plane.shape[:2], scale)
    x = np.asarray(plane, dtype=np.float32)
    if scale < 1.0:  # scikit-image's anti-aliasing: sigma (factor - 1) / 2 per shrunk axis
        sigma = [max(0.0, (n / m - 1) / 2) for n, m in zip(plane.shape[:2], shape, strict=True)]
        sigma += [0.0] * (x.ndim - 2)
        x = ndi.gaussian_filter(x, sigma, mode="mirror")
    if x.ndim == 2:
        return linear_resize(x[None], shape, mirror=True)[0]
    return np.moveaxis(linear_resize(np.moveaxis(x, -1, 0), shape, mirror=True), 0, -1)


def resize_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) class probabilities brought to (C, H, W) by linear interpolation (sums stay 1)."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    return linear_resize(probs, shape)


def central_crop(plane: np.ndarray, size: int) -> np.ndarray:
    """The central (at most ``size`` x ``size``) part of a plane."""
    return plane[_central_window(plane.shape[:2], size)]


def _central_window(shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    h, w = shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return slice(y0, y0 + min(h, size)), slice(x0, x0 + min(w, size))


def structured_crop(plane: np.ndarray, size: int) -> np.ndarray:
    """The part of a plane (at most ``size`` x ``size``) where its objects are (see
    :func:`structured_window`)."""
    return plane[structured_window(plane, size)]


def structured_window(plane: np.ndarray, size: int) -> tuple[slice, slice]:
    """Where in a plane (at most ``size`` x ``size``) its objects are: the centre, unless
    a window elsewhere holds clearly more fine structure (a colony at one side of the field, the
    edge of a wound in a scratch assay; the centre, background alone, normalised on its own, showed
    its noise as objects). Structure: the variance of a copy about 256 px a side less its blur of
    4 of those pixels (no even illumination gradient counts), summed over each window."""
    from scipy.ndimage import gaussian_filter

    h, w = plane.shape[:2]
    if h <= size and w <= size:
        return slice(0, h), slice(0, w)
    step = max(1, int(np.ceil(max(h, w) / 256)))
    small = np.asarray(plane[::step, ::step], dtype=np.float32)  # (subsampled first: no whole-plane copy)
    if small.ndim == 3:
        small = small[..., :3].mean(axis=-1)  # (an alpha channel left out)
    small = np.nan_to_num(small - gaussian_filter(np.nan_to_num(small), 4.0))
    energy = np.pad(np.cumsum(np.cumsum(small.astype(np.float64) ** 2, axis=0), axis=1), ((1, 0), (1, 0)))
    wy, wx = max(1, min(h, size) // step), max(1, min(w, size) // step)
    sums = energy[wy:, wx:] - energy[:-wy, wx:] - energy[wy:, :-wx] + energy[:-wy, :-wx]  # each window's
    cy, cx = (sums.shape[0] - 1) // 2, (sums.shape[1] - 1) // 2
    best = np.unravel_index(int(np.argmax(sums)), sums.shape)
    if sums[best] <= 2.0 * sums[cy, cx]:  # (not clearly more than the centre: the centre, as before)
        return _central_window((h, w), size)
    y0, x0 = min(best[0] * step, max(0, h - size)), min(best[1] * step, max(0, w - size))
    return slice(y0, y0 + min(h, size)), slice(x0, x0 + min(w, size))


#: The estimate of the object size on a part of a plane (a field of view) also looks around it, up to
#: this many times its side (clipped to the plane; see :func:`estimate_window`): a view of two or three
#: large nuclei, most cut by its edge, is no sample of their size (DSB2018 val stained-tissue images
#: enlarged 2x, views of half their side: 86 and 120 px nuclei measured 42 and 23 px, AP@0.5 0.30 and
#: 0.00, against 0.58 and 0.38 at the whole slice's estimate).
ESTIMATE_SURROUND = 4
#: ... and every pass of it sees at least this many pixels a side of the plane (at scale 1; twice that
#: at 1/2, ...): a view of a few dozen objects is a small sample of their sizes.
ESTIMATE_MIN_SIDE = 512
#: ... but the surroundings read are at most this many pixels a side (or the view's side): a large
#: view holds objects enough, and a view of 2000 px read the whole of an 8000 x 8000 plane.
ESTIMATE_SURROUND_MAX = 2 * ESTIMATE_CROP


def surroundings(window: tuple[slice, slice], plane_shape: tuple[int, int],
                 factor: float = ESTIMATE_SURROUND) -> tuple[slice, slice]:
    """``window`` (concrete bounds) grown about its centre to ``factor`` times its side (or
    :data:`ESTIMATE_MIN_SIDE`, if longer), at most :data:`ESTIMATE_SURROUND_MAX` (or its own side),
    shifted to stay inside the plane and clipped to it."""
    return tuple(_grown(sl, n, min(int(np.ceil(factor * max(sl.stop - sl.start, ESTIMATE_MIN_SIDE))),
                                   max(sl.stop - sl.start, ESTIMATE_SURROUND_MAX)))
                 for sl, n in zip(window, plane_shape, strict=True))


def _grown(sl: slice, n: int, side: int) -> slice:
    """``sl`` grown about its centre to ``side`` (at least its own length), kept within ``0..n``."""
    side = min(n, max(side, sl.stop - sl.start))
    start = (sl.start + sl.stop - side) // 2
    start = min(max(0, start), n - side)
    return slice(start, start + side)


def estimate_window(plane: np.ndarray, scale: float, view: tuple[slice, slice] | None = None) -> tuple[slice, slice]:
    """The part of ``plane`` that the estimate's pass at ``scale`` runs on: at most
    :data:`ESTIMATE_CROP` a side once rescaled, where the objects are (:func:`structured_window`;
    a shrunk pass sees a larger part: a crop taken first left the coarse passes, which measure large
    objects, a few objects mostly cut by the crop's edge). With ``view`` (the part of ``plane`` to be
    segmented; ``plane`` is its :func:`surroundings`): enlarged passes run within it (where its objects
    are), the others on the view and around it, :data:`ESTIMATE_MIN_SIDE` / ``scale`` a side or the
    view's side / ``scale`` if longer (as many pixels through the network at every level; not beyond
    the crop's size nor the surroundings)."""
    size = int(np.ceil(ESTIMATE_CROP / scale))
    if view is None:
        return structured_window(plane, size)
    lengths = [sl.stop - sl.start for sl in view]
    if scale > 1.0 or min(lengths) >= size:
        rows, cols = structured_window(plane[view], size)
        return (slice(view[0].start + rows.start, view[0].start + rows.stop),
                slice(view[1].start + cols.start, view[1].start + cols.stop))
    # (an axis along which the view is longer than the crop: its centre)
    return tuple(_grown(sl, n, min(size, int(np.ceil(max(length, ESTIMATE_MIN_SIDE) / scale)))) if length < size
                 else slice(sl.start + (length - size) // 2, sl.start + (length - size) // 2 + size)
                 for sl, n, length in zip(view, plane.shape[:2], lengths, strict=True))


def pixel_correlation(plane: np.ndarray, clip: float = 0.0) -> float:
    """Correlation of neighbouring pixels of a plane (H, W) or (H, W, C) once its background (a
    Gaussian blur of 8 px, which takes uneven illumination away) is subtracted: whether it holds
    structure of a few pixels. Pixel noise (a blank frame of a camera) is uncorrelated, 0 within
    about 1/sqrt(pixels) whatever the illumination; DSB2018 val nuclei shrunk to 3-5 px give
    0.66-0.86, and 0.35-0.38 at the least with shot noise of a few tens of photons added.
    ``clip``: the differences from the background are first clipped to their ``clip`` and
    ``100 - clip`` percentiles, so that a few hot pixels (uncorrelated, and far brighter than the
    rest) do not outweigh the structure of the plane."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(plane, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., :3].mean(axis=-1)  # (an alpha channel left out)
    if min(x.shape) < 2:
        return 0.0
    x = x - gaussian_filter(x, 8.0)
    if clip > 0:
        x = np.clip(x, *np.percentile(x, (clip, 100.0 - clip)))
        x -= x.mean()
    variance = float(np.mean(x * x))
    if not variance > 0:
        return 0.0
    return 0.5 * float(np.mean(x[:, 1:] * x[:, :-1]) + np.mean(x[1:] * x[:-1])) / variance


def _overlaps(finer: np.ndarray, coarser: np.ndarray, ratio: float) -> np.ndarray | None:
    """The pixels each object of ``finer`` (labels of a pass) shares with each of ``coarser`` (labels of
    a pass at ``1 / ratio`` its scale, brought to the finer level's grid by nearest neighbour; the
    central parts, where the two passes covered different parts of the plane): a table of (finer id,
    coarser id), row and column 0 the background; None when either holds no object there."""
    finer, coarser = np.asarray(finer), np.asarray(coarser)
    if not count_objects(finer) or not count_objects(coarser):
        return None
    up = ndi.zoom(coarser, ratio, order=0, grid_mode=True, mode="nearest")
    h, w = min(finer.shape[0], up.shape[0]), min(finer.shape[1], up.shape[1])

    def centre(x: np.ndarray) -> np.ndarray:
        y0, x0 = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
        return x[y0 : y0 + h, x0 : x0 + w]

    a, b = centre(finer).astype(np.int64), centre(up).astype(np.int64)
    na, nb = int(a.max()), int(b.max())
    if not na or not nb:
        return None
    pairs = np.bincount(a.ravel() * (nb + 1) + b.ravel(), minlength=(na + 1) * (nb + 1))
    return pairs.reshape(na + 1, nb + 1)


def matched_diameter(finer: np.ndarray, coarser: np.ndarray, ratio: float = 2.0) -> tuple[int, float | None]:
    """The objects found at two pyramid levels alike: how many objects of ``finer`` (labels of a pass)
    are found again one to one in ``coarser`` (labels of a pass at ``1 / ratio`` its scale), with an
    intersection over union of at least :data:`MATCH_IOU` on the finer level's grid (see
    :func:`_overlaps`), and their median equivalent diameter in pixels of the finer level (None
    when there are none)."""
    table = _overlaps(finer, coarser, ratio)
    if table is None:
        return 0, None
    area_a, area_b, inter = table.sum(1)[1:], table.sum(0)[1:], table[1:, 1:].astype(float)
    i, j = np.nonzero(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1) >= MATCH_IOU)
    if not len(i):
        return 0, None
    return len(i), float(np.median(2.0 * np.sqrt((area_a[i] + area_b[j]) / 2.0 / np.pi)))


def nested_share(finer: np.ndarray, coarser: np.ndarray, ratio: float = 2.0) -> float:
    """The share of the objects of ``finer`` (labels of a pass) that lie, with at least one other of them,
    inside one object of ``coarser`` (labels of a pass at ``1 / ratio`` its scale): at least
    :data:`NESTED_INSIDE` of their pixels in it (see :func:`_overlaps`). Near 1 where the finer level
    outlined parts of the coarser level's objects: bright spots inside nuclei, pieces of cells."""
    table = _overlaps(finer, coarser, ratio)
    if table is None:
        return 0.0
    inter = table[1:, 1:]
    area = table.sum(1)[1:]
    present = area > 0
    host = inter.argmax(1)
    inside = present & (inter.max(1) >= NESTED_INSIDE * np.maximum(area, 1))
    guests = np.bincount(host[inside], minlength=inter.shape[1])
    return float((inside & (guests[host] >= 2)).sum() / max(int(present.sum()), 1))


def _agree(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and max(a, b) / min(a, b) <= STABLE_RATIO


@dataclass
class DiameterSearch:
    """Finds the object diameter of an image from passes of the network at a pyramid of scales.

    One pass alone is ambiguous: objects much larger than the model's are cut into pieces of
    about the model's size, and objects much smaller merge. Both errors change with the scale,
    the true size does not: the estimate (in image pixels) is taken from the finest two
    consecutive pyramid levels (1, 1/2, 1/4, ...) that agree within :data:`STABLE_RATIO`,
    and of the two from the finer one, unless the objects looked larger there than the sizes the
    model segments well (``size.high``): then from the coarser one. Objects larger than the
    model's are cut into pieces at the finer level (it came out up to 22% small on 2x-upscaled
    DSB2018 nuclei and on the SIM+ frames, whose objects are 2-4x the model's size); smaller ones
    merge more at the coarser level (9 px nuclei came out at 12 px at scale 1 but 15 px at scale
    1/2, with a model of 17 px). Without such a pair, the finest level whose objects looked no
    larger than ``size.high`` stands (a nuclei model trained with uneven object brightness merged
    16 px stained nuclei at scale 1 into "35 px" objects, and the next levels did not agree),
    else the coarsest level that found objects; but when the objects of the next level looked within
    the range too, that level stands if the objects found one to one at both levels measure nearer
    its size (:meth:`_whole_at_coarser`: large nuclei found whole at both, among fragments of others
    at the finer level; not small nuclei found at both among clumps at the coarser). On a stained-tissue
    colour image (``by_certainty``), the level the network is clearly surest of stands instead, when its
    objects are found again one level finer (:data:`CERTAINTY_MARGIN`). The pyramid
    goes no coarser than a level whose objects looked smaller than ``size.low`` when those of the
    level before were within the model's range: the objects shrank with the image, and below that
    they only merge into clumps,
    whose sizes can agree between two coarse levels by chance (bright-field nuclei of 10-20 px, 4 of
    the 9 DSB2018 train images of that kind, measured 99-126 px that way: AP@0.5 0 on each).

    Objects far smaller than the model's (nuclei of 3-5 px under a 10x objective, for a 14 px
    model) are lost to the minimum size at scale 1 or merge there, and only merge more below it.
    When the pass at scale 1 finds fewer than :data:`MIN_OBJECTS` objects, or objects less than
    half ``size.low``, in an image with structure of a few pixels (:func:`pixel_correlation`, not
    a blank frame of camera noise) where the model sees specks under the minimum size (not an
    empty field), enlarged passes at :data:`FINE_SCALES` (2x, then 4x) follow:
    when the two agree (the same rule says which one measures) and that one rests on
    :data:`MIN_OBJECTS` objects or more, that is the size; otherwise the pyramid goes on from
    scale 1 as above. (39 DSB2018 val fluorescence images shrunk so that their nuclei measure
    4 px: AP@0.5 0.26 -> 0.71.)

    With a ``prior`` (the object diameter of the data a fine-tuned model learnt from, in the
    user's pixels), the passes start where objects of that size reach the model's size. What
    that pass finds stands when it agrees with the prior within :data:`STABLE_RATIO`. When it
    does not, a second pass runs where what it found would reach the model's size: if the two
    agree, the objects are of that other size (another magnification; of the two passes, the
    same rule as in the pyramid says which one measures it); if not, neither pass is
    self-consistent (the model is unsure of these objects) and the prior stands. Objects several
    times smaller than a model's only merge at the pyramid's scales, so their size cannot be
    found from scale 1 down; a model fine-tuned on them has seen them and starts at their size.
    (On C2C12 whole cells, 11 px, with ``cells`` fine-tuned on one frame: AP@0.5 on the other
    frames 0.41-0.44 with the pyramid, 0.51-0.54 this way.)

    ``next_scale()`` says at which scale to run the network next (None: done); ``found(labels,
    scale)`` reports what that pass found (labels on the rescaled grid). ``diameter`` is the
    estimate in the image's own pixels, ``final_scale`` the scale to segment at, ``note`` says
    what happened when it is not plain.
    """

    size: ObjectSize
    smallest_side: int = 10_000  # of the image the passes run on: coarser levels stop at 64 px
    prior: float | None = None  # diameter (image px) to try first
    passes: list[tuple[float, float | None]] = field(default_factory=list)  # pyramid (scale, diameter in image px)
    checks: list[tuple[float, float | None]] = field(default_factory=list)  # the passes that tested the prior
    fine: list[tuple[float, float | None]] = field(default_factory=list)  # enlarged passes, as ``passes``
    #: of the image (see :func:`pixel_correlation`), or a function that measures it (called only
    #: when the pass at scale 1 asks whether to look for tiny objects, or the estimate would enlarge
    #: the image; then replaced by its value); None: taken as structured
    correlation: float | Callable[[], float] | None = None
    diameter: float | None = None
    #: objects of the pass (or passes) the estimate came from: how much it rests on
    count: int = 0
    note: str = ""
    _counts: dict[float, int] = field(default_factory=dict)  # objects found, by the scale of the pass
    _next: float | None = None
    _started: bool = False
    _testing_prior: bool = False
    _reuse: float | None = None  # the scale of a pass that can serve as the final one
    #: the plane holds no structure of a few pixels (see :meth:`_done`): it is not enlarged
    unstructured: bool = False
    _labels: dict[float, np.ndarray] = field(default_factory=dict)  # the pyramid's labels, by scale
    #: whether the network's certainty may choose among levels that do not agree (a stained-tissue
    #: colour image: :data:`CERTAINTY_MARGIN`)
    by_certainty: bool = False
    #: the pyramid's passes' :func:`foreground_uncertainty`, by scale (those that measured it)
    _uncertainty: dict[float, float] = field(default_factory=dict)

    def next_scale(self) -> float | None:
        if not self._started:
            self._started = True
            self._next = 1.0
            if self.prior:
                scale = self.size.scale_for(self.prior)
                if self._fits(scale):
                    self._next, self._testing_prior = scale, True
        return self._next

    def _fits(self, scale: float) -> bool:
        return self.smallest_side * scale >= MIN_PASS_SIDE

    def found(self, labels_at_scale: np.ndarray, scale: float,
              specks: Callable[[], np.ndarray] | None = None, uncertainty: float | None = None) -> None:
        """What the pass at ``scale`` found; ``specks``: the same pass's objects without the minimum
        size (asked for only when the pass at scale 1 may have missed tiny objects, see
        :meth:`_tiny`; None: taken as there); ``uncertainty``: the pass's
        :func:`foreground_uncertainty` (None: not measured)."""
        self._started = True
        if uncertainty is not None:
            self._uncertainty[scale] = uncertainty
        self._counts[scale] = count_objects(labels_at_scale)
        at_scale = median_diameter(labels_at_scale)
        estimate = None if at_scale is None else at_scale / scale
        if self._testing_prior:
            return self._check_prior(scale, estimate)
        if scale > 1.0:
            return self._finer(scale, estimate)
        self.passes.append((scale, estimate))
        self._labels[scale] = np.asarray(labels_at_scale)
        if len(self.passes) == 1 and self._tiny(scale, estimate, specks):
            self._next = FINE_SCALES[0]
            return
        self._coarser()

    def _coarser(self) -> None:
        """The next level of the pyramid, or the estimate when it ends."""
        estimates = [d for _s, d in self.passes]
        if len(estimates) >= 2 and _agree(*estimates[-2:]):
            return self._done(self._of_agreeing(*self.passes[-2:])[1])
        coarser_scale = self.passes[-1][0] / 2
        if (len(self.passes) < PYRAMID_LEVELS and self._fits(coarser_scale)
                and not self._shrunk_below_range()):
            self._next = coarser_scale
            return
        self._done(self._without_agreement())

    def _shrunk_below_range(self) -> bool:
        """Whether the objects of the last pass looked smaller than the sizes the model segments well
        (``size.low``) where those of the pass before, one level finer, were within them: the model
        saw objects of its own size there, and they shrank with the image. A coarser level only
        merges them into clumps, whose sizes can agree between two coarse levels by chance
        (bright-field nuclei of 10-20 px measured 19 px at scale 1, 12 px at 1/2, then 80 and 99 px
        at scales 1/4 and 1/8). Small objects after a level that did not see objects of the model's
        size do not stop the pyramid: they can be the texture inside objects many times that size
        (nuclei of 137 px showed specks of 9 px at scale 1 and 13 px at 1/2, and their own size at
        1/4 and 1/8)."""
        if len(self.passes) < 2:
            return False
        scale, estimate = self.passes[-1]
        return estimate is not None and estimate * scale < self.size.low and self._in_range(self.passes[-2])

    def _tiny(self, scale: float, estimate: float | None, specks: Callable[[], np.ndarray] | None) -> bool:
        """Whether the pass at the image's own scale may have missed objects too small for the
        model: it found fewer than :data:`MIN_OBJECTS`, or objects less than half the smallest size
        the model segments well (``size.low``); in an image with structure of a few pixels
        (:data:`MIN_PIXEL_CORRELATION`), and where the model did see :data:`MIN_OBJECTS` objects
        or more when the minimum size is not applied (tiny nuclei show as specks under it). An
        empty field of a textured background (DIC) shows none, nor do one or two large cells: their
        enlarged passes found 130-220 "objects" of 6-11 px in the background's texture."""
        if self._counts[scale] >= MIN_OBJECTS and estimate * scale >= self.size.low / 2:
            return False
        if self._without_small_structure():
            return False
        return specks is None or count_objects(specks()) >= MIN_OBJECTS

    def _without_small_structure(self) -> bool:
        """Whether the image holds no structure of a few pixels (:data:`MIN_PIXEL_CORRELATION`); a
        ``correlation`` given as a function is measured once, on the first question."""
        if callable(self.correlation):
            self.correlation = self.correlation()
        return self.correlation is not None and self.correlation < MIN_PIXEL_CORRELATION

    def _finer(self, scale: float, estimate: float | None) -> None:
        """One of the enlarged passes (:data:`FINE_SCALES`); after the last, the estimate when the
        two agree and the one believed rests on :data:`MIN_OBJECTS` objects or more, else the
        pyramid goes on below the image's own scale."""
        self.fine.append((scale, estimate))
        if len(self.fine) >= 2 and _agree(self.fine[-2][1], estimate):
            chosen = self._of_agreeing(*self.fine[-2:])
            if self._counts[chosen[0]] >= MIN_OBJECTS:
                return self._done(chosen[1])
        later = [s for s in FINE_SCALES if s > scale]
        if later:
            self._next = later[0]
            return
        self._coarser()

    def _without_agreement(self) -> float | None:
        """No two levels agree: the finest level whose objects looked no larger than the sizes the
        model segments well (larger ones are merged neighbours or pieces of still larger
        objects), else the coarsest level that found objects; on a stained-tissue image, the level
        where the network is clearly surest of its objects (:data:`CERTAINTY_MARGIN`)."""
        found = [p for p in self.passes if p[1] is not None]
        if not found:
            return None
        chosen = self._by_rules(found)
        if self.by_certainty and chosen[0] in self._uncertainty:
            sure = [p for p in found if self._counts[p[0]] >= MIN_OBJECTS and p[0] in self._uncertainty]
            if sure:
                surest = min(sure, key=lambda p: self._uncertainty[p[0]])
                if self._uncertainty[surest[0]] < self._uncertainty[chosen[0]] - CERTAINTY_MARGIN \
                        and self._whole_at_finer(surest):
                    return surest[1]
        return chosen[1]

    def _whole_at_finer(self, level: tuple[float, float]) -> bool:
        """Whether at least a third of the objects of ``level`` are found one to one at the next finer
        level (:func:`matched_diameter`): large nuclei found whole at a coarse level show whole one
        level finer too, where clumps of small nuclei merged at it come apart (scikit-image's IHC
        section at its own size, 10-20 px nuclei: 1 of its 6 "113 px" objects at scale 1/8, which
        the network was surest of; the finest level passes)."""
        finer = [p for p in self.passes if p[0] == level[0] * 2 and p[1] is not None]
        if not finer:
            return level[0] == self.passes[0][0]
        count, _diameter = matched_diameter(self._labels[finer[0][0]], self._labels[level[0]], 2.0)
        return count * 3 >= self._counts[level[0]]

    def _by_rules(self, found: list[tuple[float, float]]) -> tuple[float, float]:
        """The level (scale, estimate) of :meth:`_without_agreement` chosen by the objects' sizes; a
        level that outlined parts of the next coarser level's objects (:meth:`_nested`) is not among
        them while another is."""
        whole = [p for p in found if not self._nested(p)]
        found = whole or found
        within = [p for p in found if not self._too_large(p)]
        if not within:
            return found[-1]
        chosen = within[0]
        later = self.passes[self.passes.index(chosen) + 1 :]
        if later and self._in_range(chosen) and self._in_range(later[0]) \
                and self._whole_at_coarser(chosen, later[0]):
            return later[0]
        return chosen

    def _nested(self, level: tuple[float, float]) -> bool:
        """Whether the objects of ``level`` lie several to one inside the objects of the next coarser
        level (:data:`NESTED_SHARE`), and those are whole objects, found one to one a level coarser
        still (a third of them at least, when there is one): parts of larger objects, not objects.
        Nuclei around their bright spots are found whole at both coarser levels; neighbours merged into
        clumps or bands at the first go on merging at the next (a Drosophila embryo's ring of 20 px
        nuclei, DSB2018 train: taken for nested, its estimate went from 18 px to 69 px, AP@0.5 0.54 -> 0)."""
        coarser = [p for p in self.passes if p[0] == level[0] / 2 and p[1] is not None]
        if not (coarser and level[0] in self._labels
                and nested_share(self._labels[level[0]], self._labels[coarser[0][0]], 2.0) >= NESTED_SHARE):
            return False
        host = coarser[0][0]
        after = [p for p in self.passes if p[0] == host / 2 and p[1] is not None]
        if not after:
            return True
        count, _diameter = matched_diameter(self._labels[host], self._labels[after[0][0]], 2.0)
        return count * 3 >= self._counts[host]

    def _whole_at_coarser(self, finer: tuple[float, float], coarser: tuple[float, float]) -> bool:
        """Of two consecutive levels without agreement whose objects both looked within the model's
        range, whether the coarser measures the objects: the objects found one to one at both
        (:func:`matched_diameter`, at least :data:`MIN_OBJECTS` of them) are nearer its size than the
        finer level's. Large nuclei found whole at both levels, among fragments of others at the finer
        one (stained-tissue nuclei of 34 px: 17.5 px at scale 1, 31.1 at 1/2, 32.0 the 8 objects
        found at both), against small nuclei found at both, among clumps and bands at the coarser one
        (fluorescence nuclei of 20 px: 18.2 px at scale 1, 37.1 at 1/2, 19.5 the 23 objects found
        at both)."""
        count, diameter = matched_diameter(self._labels[finer[0]], self._labels[coarser[0]],
                                           finer[0] / coarser[0])
        if count < MIN_OBJECTS or diameter is None:
            return False
        diameter /= finer[0]  # image pixels
        return abs(math.log(diameter / coarser[1])) < abs(math.log(diameter / finer[1]))

    def _in_range(self, level: tuple[float, float | None]) -> bool:
        """Whether the objects of a pass ``(scale, estimate)`` looked within the model's sizes."""
        scale, estimate = level
        return estimate is not None and self.size.low <= estimate * scale <= self.size.high

    def _too_large(self, level: tuple[float, float]) -> bool:
        """Whether the objects of a pass ``(scale, estimate)`` looked larger there than the sizes the
        model segments well (such objects may be merged neighbours or pieces of larger ones)."""
        scale, estimate = level
        return estimate * scale > self.size.high

    def _of_agreeing(self, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        """Of two passes ``(scale, estimate)`` that agree, the one to believe: the finer, unless the
        objects looked larger there than the sizes the model segments well. Objects larger than the
        model's may be cut into pieces at the finer scale; smaller ones merge more at the coarser."""
        finer, coarser = (a, b) if a[0] >= b[0] else (b, a)
        return coarser if self._too_large(finer) else finer

    def _check_prior(self, scale: float, estimate: float | None) -> None:
        """One of the (at most two) passes that test the prior."""
        self.checks.append((scale, estimate))
        if len(self.checks) == 1:
            if estimate is None:  # nothing at the size the model was fine-tuned on: that size stands
                return self._done(self.prior, reuse=scale)
            if _agree(estimate, self.prior):
                return self._done(estimate, reuse=scale)
            second = self.size.scale_for(estimate)
            if abs(second / scale - 1.0) <= SCALE_TOLERANCE:  # (a second pass would run at this scale again,
                return self._done(estimate, reuse=scale)  # the scales clamped: what it measured stands)
            if self._fits(second):
                self._next = second
                return
            return self._done(self.prior, reuse=scale)
        first_scale, first = self.checks[0]
        if _agree(estimate, first):  # both passes see objects of that other size
            chosen_scale, chosen = self._of_agreeing((first_scale, first), (scale, estimate))
            return self._done(chosen, reuse=chosen_scale)
        self._done(self.prior, reuse=first_scale)

    def _done(self, diameter: float | None, reuse: float | None = None) -> None:
        self._next, self._testing_prior = None, False
        self.diameter = diameter
        self._reuse = reuse
        if diameter is not None and self.size.scale_for(diameter) > 1.0:
            # a plane without structure of a few pixels is not enlarged, as no enlarged pass looks for
            # tiny objects in it (:meth:`_tiny`): what enlarging shows there is its noise (a DSB2018 image
            # with ~4 photons at its nuclei: 5 pieces of nuclei at scale 1 sized it at 8 px, and at 2.1x
            # the model outlined 52 specks of 2 px)
            self.unstructured = self._without_small_structure()
        # the passes that measured this diameter (none when the prior stands untested: those that tested it)
        measured = self.passes + self.fine + self.checks
        own = [self._counts[s] for s, d in measured if d is not None and d == diameter]
        self.count = max(own or [self._counts[s] for s, _d in self.checks] or [0])
        if diameter is None:
            self.note = (
                "no object found at any scale: segmented at the image's own scale (type the "
                "object diameter if the cells are missed)"
            )

    @property
    def final_scale(self) -> float:
        """The scale to segment at: the model's scale for the estimate (1 when none was found).
        When the estimate comes from testing the prior, the pass it came from serves as the
        final one if the two scales are within :data:`SCALE_TOLERANCE` of each other."""
        scale = self.size.scale_for(self.diameter)
        if self._reuse is not None and abs(scale / self._reuse - 1.0) <= SCALE_TOLERANCE:
            return self._reuse
        return min(scale, 1.0) if self.unstructured else scale
