"""Turning a 2D plane (grey or colour) into the network's normalised input.

Shared by prediction and training so that both see images the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet._shapes import is_rgb

#: How a model normalises its input unless its file says otherwise (defined here, where it is used,
#: and not in ``checkpoint``: this module is imported without torch).
DEFAULT_NORMALIZATION = {"kind": "percentile", "low": 1.0, "high": 99.8}


class ImageError(ValueError):
    """An image the network cannot take (the message says why and what to do)."""


def as_channels_first(plane: np.ndarray, in_channels: int) -> np.ndarray:
    """A 2D plane as (C, H, W) float32 with ``in_channels`` channels.

    Parameters
    ----------
    plane : ndarray
        (H, W) grey, or (H, W, 3|4) RGB(A) with colour last.
    in_channels : int
        Channels the model takes. Colour is averaged to grey for 1-channel models;
        grey is repeated for 3-channel models; an alpha channel is dropped.
    """
    arr = np.asarray(plane)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.number)) or np.iscomplexobj(arr):
        raise ImageError(f"Images must hold real numbers, got dtype {arr.dtype}.")
    if is_rgb(arr.shape) and arr.shape[0] > 4:
        arr = arr[..., :3]
        if in_channels == 1:
            return arr.astype(np.float32).mean(axis=-1, keepdims=False)[None]
        if in_channels == 3:
            return np.moveaxis(arr.astype(np.float32), -1, 0)
        raise ImageError(
            f"This model takes {in_channels} channels; an RGB image has 3. Pick a 1- or 3-channel model."
        )
    if arr.ndim == 2:
        arr = arr.astype(np.float32)[None]
        if in_channels == 1:
            return arr
        return np.repeat(arr, in_channels, axis=0)
    raise ImageError(
        f"Expected one 2D plane (height, width) or an RGB plane (height, width, 3), got shape {arr.shape}. "
        "Choose a single slice or channel of the stack."
    )


#: Percentiles are taken on every k-th pixel of a plane larger than this a side (k = side // this).
SAMPLE_SIDE = 512


def sample_grid(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """Every k-th row and column of a plane of ``shape`` (H, W, ...): at most about
    :data:`SAMPLE_SIDE` a side, what percentiles are measured on."""
    return (slice(None, None, max(1, int(shape[0]) // SAMPLE_SIDE)),
            slice(None, None, max(1, int(shape[1]) // SAMPLE_SIDE)))


def clipped_at(plane: np.ndarray, level: float) -> np.ndarray:
    """``plane`` clipped at ``level`` (float32): a few objects far brighter than the others capped
    (see :func:`bright_outliers_level`)."""
    return np.minimum(plane, np.float32(level), dtype=np.float32)


def normalize(
    chw: np.ndarray, normalization: dict[str, Any] | None = None, sparse_fields: bool = True
) -> np.ndarray:
    """Per-channel percentile normalisation of a (C, H, W) array, in place when float32.

    Maps the ``low`` percentile to 0 and the ``high`` percentile to 1 (values outside are
    kept, not clipped); in a field with few objects, whose high percentile lies in the background's
    noise, the objects' brightness to 1 instead (:data:`SPARSE_NOISE_SIGMAS`; not with
    ``sparse_fields=False``: the plain percentiles, as a BioImage.IO model's ``scale_range``). A
    constant channel becomes all zeros.

    Raises
    ------
    ImageError
        If the image holds NaN or infinite values.
    """
    norm = normalization or DEFAULT_NORMALIZATION
    if norm.get("kind", "percentile") != "percentile":
        raise ImageError(f"Unknown normalisation {norm.get('kind')!r}.")
    chw = np.asarray(chw, dtype=np.float32)
    if not np.isfinite(chw).all():
        raise ImageError(
            "The image holds NaN or infinite values; replace them (e.g. with 0) before segmenting."
        )
    low, high = float(norm.get("low", 1.0)), float(norm.get("high", 99.8))
    out = np.empty_like(chw)
    for c in range(chw.shape[0]):
        channel = chw[c]
        sample = channel[sample_grid(channel.shape)]
        lo, median, hi = (float(v) for v in np.percentile(sample, [low, 50.0, high]))
        if sparse_fields:
            hi = _objects_high(sample, lo, median, hi, channel)
        if hi - lo < 1e-6 * max(1.0, abs(hi)):
            lo, hi = float(sample.min()), float(sample.max())
        if hi - lo <= 0:
            out[c] = 0.0
        else:
            np.subtract(channel, lo, out=out[c])
            out[c] *= 1.0 / (hi - lo)
    return out


#: A field with few objects (a sparse culture, cells clumped in one corner of a large scan, one nucleus
#: in the field): the high percentile of :func:`normalize` falls in the background, whose noise is
#: then stretched to the full range, and the model outlines its grains by the thousand (DSB2018 val
#: nuclei on a 1024 px field of their camera noise, 3 per field: 3 of 13 fields with 4,800-5,800
#: objects, benchmarks/RESULTS.md "Sparse fields"). The high percentile then stands less than this
#: many times the pixel noise above the median (3-4 in such fields), where bright objects worth
#: segmenting put it well above ...
SPARSE_NOISE_SIGMAS = 6.0
#: ... and the low one less than this many below it, with nothing but noise there (Gaussian noise:
#: 2.3). Images of texture all over, whose pixel noise is large (ISBI 2012's EM: 5.2-8.6), and dark
#: objects on a bright background put it further down. Of the 697 planes of DSB2018, the cells data,
#: C2C12, SIM+, ISBI 2012 and the 3D stack, none is taken for a field with few objects.
SPARSE_BACKGROUND_SIGMAS = 4.0
#: Objects in a field of noise: pixels of the plane median-filtered over 3 x 3 (hot pixels and most
#: of the noise gone) this many times the pixel noise from its median, in connected parts of at least
#: :data:`SPARSE_OBJECT_PX` pixels. Noise alone gets there in fewer than one pixel in 10^9 (Gaussian;
#: shot noise of 2 photons about one in 10^7, and not in parts of that size).
SPARSE_OBJECT_SIGMAS = 4.0
SPARSE_OBJECT_PX = 9
#: The top of the normalisation of a field with few objects: this percentile of their pixels, when
#: above the image's own, i.e. the objects' brightness, as the high percentile is in a field full of them.
SPARSE_OBJECT_PERCENTILE = 90.0
#: The objects of such a field are looked for on the plane itself up to this many pixels a side (every
#: k-th pixel beyond), not on the percentiles' sample (512 px a side): a nucleus of 9 px in a 1024 px
#: field is 4-5 px there, and after the 3 x 3 median under :data:`SPARSE_OBJECT_PX` (its field's
#: noise was then stretched to the full range, and the `nuclei-fluo` model outlined 96 of its grains).
SPARSE_OBJECT_SIDE = 4096


def pixel_noise(x: np.ndarray) -> float:
    """The standard deviation of a 2D plane's pixel noise, from the differences of neighbouring pixels
    (robustly: dominated by the background; their spread when most are equal, as in 8-bit images)."""
    diff = np.diff(np.asarray(x, dtype=np.float32), axis=1)
    if diff.size == 0:
        return 0.0
    noise = 1.4826 * float(np.median(np.abs(diff)))
    return (noise if noise > 0 else float(diff.std())) / np.sqrt(2.0)


def _most_of_3x3(mask: np.ndarray) -> np.ndarray:
    """Where at least 5 of the 9 pixels of the 3 x 3 neighbourhood (edges reflected) are in ``mask``."""
    from scipy import ndimage as ndi

    counts = ndi.uniform_filter(mask.astype(np.float32), size=3, mode="reflect")
    return counts > 4.5 / 9  # sums of 0/1 over 9: k / 9, k >= 5


def compact_objects(x: np.ndarray, median: float, noise: float, bright_only: bool = False) -> np.ndarray:
    """Pixels of compact objects standing out of a 2D plane's noise (see :data:`SPARSE_OBJECT_SIGMAS`):
    brighter than ``median`` (or also darker, unless ``bright_only``) by that many times ``noise``."""
    from scipy import ndimage as ndi

    x = np.asarray(x, dtype=np.float32)
    limit = SPARSE_OBJECT_SIGMAS * noise
    # the 3 x 3 median is beyond the limit where at least 5 of the 9 pixels are: counted (a box sum, a
    # few times faster than the median filter on the whole plane, which the sparse rule reads)
    found = _most_of_3x3(x > median + limit)
    if not bright_only:
        found |= _most_of_3x3(x < median - limit)
    parts, n = ndi.label(found)
    if n == 0:
        return found
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return (sizes >= SPARSE_OBJECT_PX)[parts]


def _objects_high(sample: np.ndarray, low_value: float, median: float, high_value: float,
                  channel: np.ndarray) -> float:
    """The top of the normalisation of a ``channel`` (``sample``: its pixels, subsampled; ``median``
    theirs) whose low and high percentiles ``low_value`` and ``high_value`` lie in the background's
    noise: the level of the few objects above it (see :data:`SPARSE_NOISE_SIGMAS`), found on the channel
    itself (:data:`SPARSE_OBJECT_SIDE`); ``high_value`` otherwise."""
    x = np.asarray(sample, dtype=np.float32)
    if min(x.shape) < 3:
        return high_value
    noise = pixel_noise(x[:: max(1, x.shape[0] // 256)])  # every k-th row of a large plane is enough
    if not (noise > 0 and high_value - median < SPARSE_NOISE_SIGMAS * noise
            and median - low_value < SPARSE_BACKGROUND_SIGMAS * noise):
        return high_value
    step = max(1, -(-max(channel.shape) // SPARSE_OBJECT_SIDE))
    x = np.asarray(channel[::step, ::step], dtype=np.float32)
    objects = compact_objects(x, median, noise, bright_only=True)
    if not objects.any():
        return high_value
    return max(high_value, float(np.percentile(x[objects], SPARSE_OBJECT_PERCENTILE)))


#: Bright outliers: a few objects many times brighter than the others (dead cells, debris, dust,
#: precipitates) over more than the top 0.2% of a fluorescence plane set the high percentile of
#: :func:`normalize`, and the nuclei reach the network as faint as it never saw them (discs at 8x the
#: nuclei's brightness over 0.5% of DSB2018 val fluorescence images: AP@0.5 0.82 -> 0.65;
#: benchmarks/RESULTS.md "Bright debris"). A plane has them when its high percentile stands more than
#: this many times the typical object's brightness above its low one (each object's 90th percentile,
#: their median); on the objects of the truth, the highest of DSB2018's 401 fluorescence images
#: stands at 4.5, SIM+ 3.3, C2C12 3.0.
OUTLIER_RATIO = 5.0
#: ... and it is then segmented again clipped at this many times the typical object's brightness (the
#: 90th percentile of the ratio above over DSB2018's fluorescence images: 2.1), as its nuclei would
#: lie in a plane without the outliers.
OUTLIER_CLIP = 2.0
#: The objects' background must lie below this fraction of the typical object's brightness (a dark
#: background, as in fluorescence: DSB2018's at most 0.24, SIM+ 0.27; phase contrast and DIC 0.5-1.5).
OUTLIER_DARK_BACKGROUND = 0.5


def object_percentile(plane: np.ndarray, labels: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-th percentile of each object's pixels of a 2D ``plane`` (the lower of the two values
    around it, as ``np.percentile(..., method="lower")``), in the order of the labels present."""
    inside = labels > 0
    ids, values = labels[inside], np.asarray(plane)[inside].astype(np.float32)  # (no float copy of the plane)
    order = np.lexsort((values, ids))
    ids, values = ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    counts = np.diff(np.r_[starts, ids.size])
    return values[starts + ((counts - 1) * (q / 100.0)).astype(np.int64)]


def bright_outliers_level(plane: np.ndarray, labels: np.ndarray, min_objects: int = 3) -> float | None:
    """The value to clip a grey ``plane`` at when a few objects far brighter than the typical one of
    ``labels`` (objects found on it) set its normalisation's high percentile (see
    :data:`OUTLIER_RATIO`); None when they do not, or the plane is not one of bright objects on a dark
    background with ``min_objects`` or more."""
    x = np.asarray(plane)
    if x.ndim != 2 or x.shape != labels.shape or not np.issubdtype(x.dtype, np.number):
        return None
    from .instances import label_counts

    if np.count_nonzero(label_counts(labels)[1:]) < min_objects:
        return None
    grid = sample_grid(x.shape)
    sample = x[grid]
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.8]))
    typical = float(np.median(object_percentile(x, labels, 90.0))) - low
    if not typical > 0 or high - low <= OUTLIER_RATIO * typical:
        return None
    background = labels[grid] == 0
    if not background.any() or float(np.median(sample[background])) - low >= OUTLIER_DARK_BACKGROUND * typical:
        return None
    return low + OUTLIER_CLIP * typical


#: A pixel is an isolated spike (a camera's hot pixel, a cosmic ray; alone or two side by side)
#: when it stands above the second brightest of its 8 neighbours by more than the spread of 98%
#: of the plane (1st to 99th percentile) and by more than this fraction of the plane's whole range. Light through a
#: microscope is never that sharp: an object's brightest pixel has neighbours nearly as bright.
SPIKE_FRACTION_OF_RANGE = 0.25

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _camera_channels(arr: np.ndarray, min_side: int) -> int | None:
    """How many channels of a camera's plane ``arr`` holds ((H, W): 1, (H, W, 3|4) colour: 3 or 4),
    or None when it is no plane of real numbers at least ``min_side`` a side (left as it is)."""
    colour = is_rgb(arr.shape)
    if not (arr.ndim == 2 or colour) or min(arr.shape[:2]) < min_side or arr.dtype == bool:
        return None
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        return None
    return arr.shape[-1] if colour else 1


def without_spikes(plane: np.ndarray) -> np.ndarray:
    """``plane`` ((H, W) grey or (H, W, 3|4) colour) with each isolated spike (see
    :data:`SPIKE_FRACTION_OF_RANGE`) set to its second brightest neighbour's value, in the plane's own
    dtype; ``plane`` itself is never changed (a copy when there are spikes, else ``plane``).

    A few hot pixels at a 16-bit camera's maximum would otherwise set the top percentile of the
    normalisation (over 0.2% of the pixels: the objects squashed near 0), and below that reach
    the network as bright points it takes for objects; after a rescale they are no longer
    isolated, so the plane loop removes them from each plane as it is read.
    """
    arr = np.asarray(plane)
    channels = _camera_channels(arr, 3)
    if channels is None:
        return arr
    colour = arr.ndim == 3
    out = arr
    for c in range(channels):
        channel = arr[..., c] if colour else arr
        found = _spikes(channel)
        if found is not None:
            if out is arr:
                out = arr.copy()
            ys, xs, values = found
            if colour:
                out[ys, xs, c] = values
            else:
                out[ys, xs] = values
    return out


#: Lines of the camera offset from one another: an sCMOS camera's row noise, a CCD's column offsets,
#: a line-scanning microscope's flicker, banding. The model takes such lines for edges: rows offset
#: by 5% of the nuclei's contrast cost DSB2018 val fluorescence 0.815 -> 0.711 AP@0.5, 15% -> 0.036
#: (columns 0.196; benchmarks/RESULTS.md "Striped planes"). A plane is striped along an axis when
#: the spread (robust) of the median steps between neighbouring lines, less their trend over
#: :data:`STRIPE_TREND` lines (uneven light), stands more than this many times above what its pixel
#: noise gives them (Gaussian noise: about 2; the 697 planes of the shared data: at most 2.5) ...
STRIPE_SIGMAS = 6.0
STRIPE_TREND = 9
#: ... and the offsets are the sum of those steps, less its changes slower than this many lines (the
#: light's own, e.g. uneven illumination, stay).
STRIPE_SMOOTH = 16.0
#: Pixels of each line the steps are measured on (every k-th, for speed).
STRIPE_SAMPLES = 256


def without_camera_artefacts(plane: np.ndarray) -> np.ndarray:
    """``plane`` without isolated hot pixels (:func:`without_spikes`) and, when striped, without the
    offsets of its lines (:func:`without_stripes`): what the plane loop and the training examples
    take from every plane as it is read, before any rescaling blurs them. A plane of two values
    (a mask: 0 and 1, 0 and 255) has neither: its objects are no hot pixels, its rows no stripes
    (a 0/1 mask of a few cells came out blank)."""
    if is_two_valued(plane):
        return plane
    return without_stripes(without_spikes(plane))


def is_two_valued(plane: np.ndarray) -> bool:
    """Whether every pixel of a grey ``plane`` holds one of two values (a mask); a single pass."""
    arr = np.asarray(plane)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype == bool:
        return arr.dtype == bool and arr.ndim == 2
    lo, hi = arr.min(), arr.max()
    return bool(lo != hi and np.count_nonzero((arr == lo) | (arr == hi)) == arr.size)


def without_stripes(plane: np.ndarray) -> np.ndarray:
    """``plane`` ((H, W) grey or (H, W, 3|4) colour) with the offsets of its rows and of its columns
    taken out when it is striped (see :data:`STRIPE_SIGMAS`), as float32; ``plane`` itself otherwise
    (and never changed)."""
    arr = np.asarray(plane)
    channels = _camera_channels(arr, 8)
    if channels is None:
        return arr
    colour = arr.ndim == 3
    out = arr
    for c in range(channels):
        for axis in (0, 1):
            channel = out[..., c] if colour else out
            offsets = _line_offsets(channel if axis == 0 else channel.T)
            if offsets is None:
                continue
            if out is arr:
                out = arr.astype(np.float32)  # a copy: the offsets are fractions of a grey level
                channel = out[..., c] if colour else out
            (channel if axis == 0 else channel.T)[...] -= offsets[:, None]
    return out


def _line_offsets(x: np.ndarray) -> np.ndarray | None:
    """The offset of each row of a 2D channel from its neighbours, None when its rows are not striped."""
    h, w = x.shape
    lines = np.asarray(x[:, :: max(1, w // STRIPE_SAMPLES)], dtype=np.float32)
    if not np.isfinite(lines).all():
        return None  # NaN / inf: refused later with their own message
    from scipy.ndimage import gaussian_filter1d, median_filter

    steps = np.median(np.diff(lines, axis=0), axis=1)  # robust to the objects a line crosses
    noise = pixel_noise(x[:: max(1, h // STRIPE_SAMPLES)])  # along the lines: blind to their offsets
    fast = steps - median_filter(steps, STRIPE_TREND, mode="nearest")
    spread = 1.4826 * float(np.median(np.abs(fast - np.median(fast))))
    if not (noise > 0 and spread > STRIPE_SIGMAS * noise / np.sqrt(lines.shape[1])):
        return None

    level = np.concatenate([[0.0], np.cumsum(steps, dtype=np.float64)])
    return (level - gaussian_filter1d(level, STRIPE_SMOOTH, mode="nearest")).astype(np.float32)


def _spikes(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(rows, columns, the second brightest neighbour's values) of the isolated spikes of a 2D channel,
    None when it has none."""
    h, w = channel.shape
    sample = channel[:: max(1, h // 128), :: max(1, w // 128)]
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        return None  # NaN / inf: refused later with their own message
    p1, p99 = (float(v) for v in np.percentile(sample, [1.0, 99.0]))
    margin = max(p99 - p1, SPIKE_FRACTION_OF_RANGE * (float(channel.max()) - p1))
    if margin <= 0:
        return None
    ys, xs = np.nonzero(channel > p1 + margin)  # candidates: few (a spike exceeds this at least)
    if ys.size == 0:
        return None
    neighbours = np.empty((len(_NEIGHBOURS), ys.size), dtype=channel.dtype)
    lowest = channel.min()
    for k, (dy, dx) in enumerate(_NEIGHBOURS):  # beyond the border: no neighbour (the lowest value)
        # (mirrored, the hot pixel beside one at the edge was counted twice, as its second brightest
        # neighbour too: the pair stayed and became an object)
        yy, xx = ys + dy, xs + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        neighbours[k] = np.where(inside, channel[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], lowest)
    # the second brightest neighbour: two hot pixels side by side are spikes too, while a line one
    # pixel wide has two bright neighbours at each of its pixels
    level = np.partition(neighbours, -2, axis=0)[-2]
    spike = channel[ys, xs].astype(np.float64) > level.astype(np.float64) + margin
    if not spike.any():
        return None
    return ys[spike], xs[spike], level[spike]


#: A region without data: NaN pixels, or pixels at the plane's lowest value (in every colour) that
#: touch its edge and cover at least this fraction of it (the black fill of a stitched mosaic, of an
#: image rotated or registered onto a larger canvas, of a field stop's corners). Fewer NaN pixels
#: together (dead pixels) are filled but are no region: they may be segmented over, as hot pixels.
MISSING_MIN_FRACTION = 0.01
#: The image's level around the regions at the lowest value: the median of the pixels 2 to this many
#: pixels from them (those right at their edge may be a blend with the black fill of a rotation) ...
MISSING_RING_PX = 4
#: ... and those regions hold no data only when that level stands this fraction of the image's spread
#: (1st to 99th percentile of the other pixels) above them. The black background of a fluorescence
#: image clipped at zero is part of the image: 14 of the 502 DSB2018 images hold one that touches
#: the edge, 0.01-0.075 below its surroundings; a black border 0.1 below costs 0.06 of AP@0.5 already.
MISSING_GAP = 0.1


#: Burned-in marks (a scale bar, a time stamp, text) are pixels at the plane's highest value (in
#: every colour), at least this many together ...
OVERLAY_MIN_PX = 8
#: ... fewer than this fraction of the plane (more: saturated objects, a bright canvas) ...
OVERLAY_MAX_FRACTION = 0.02
#: ... whose neighbours (nine in ten of them) lie this fraction of the way from that value down to
#: the image's dark end (1st percentile) or further: a mark's edge is abrupt, a saturated object's
#: flank is not. Saturated plateaus of the shared data (15 DSB2018 images of 256 px, 20 of 44
#: Usiigaci phase-contrast halos) reach 0.45 at most.
OVERLAY_EDGE = 0.7


def fill_missing(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``plane`` ((H, W) or (H, W, 3|4)) with its pixels without data filled, and where they were.

    Per-image normalisation takes the black fill of a mosaic or of a rotated, registered image for
    the darkest thing in it: the real background is then brightened to mid-grey and the model loses
    most objects (DSB2018 val with a 40% black border: fluorescence AP@0.5 0.815 -> 0.600, stained
    tissue 0.695 -> 0.438; benchmarks/bench_borders.py). Marks burned in at the image's highest value
    (a scale bar, a time stamp: :data:`OVERLAY_EDGE`) are taken for objects (0.815 -> 0.774). Each
    missing region (see :data:`MISSING_MIN_FRACTION`, :data:`MISSING_GAP`; NaN pixels anywhere; the
    marks) is filled with the image mirrored at its edge: each pixel takes the value of its
    reflection through its nearest pixel with data (that pixel itself where the reflection has no
    data either). So the network sees at the region's edge what its tiles see at the image's own
    edges, and the plane keeps its statistics: a constant fill of the background does not, and where
    objects are few the percentile normalisation then stretched the plane differently (stained
    tissue, made grey, with a 40% border: 0.623 with the background's median against 0.694
    mirrored, 0.685 without the border).

    Returns the filled plane (``plane`` itself when nothing is missing, else a copy, float32 for
    float input) and a boolean (H, W) mask of the regions that hold no data, where the plane loop
    leaves the labels empty and training learns nothing (None when there are none). A plane of NaN
    alone becomes a constant plane of zeros.
    """
    arr = np.asarray(plane)
    colour = is_rgb(arr.shape)
    if not (arr.ndim == 2 or colour) or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        return arr, None
    if np.iscomplexobj(arr) or arr.dtype == bool or (not colour and is_two_valued(arr)):
        return arr, None  # (a mask's background and objects are data, not a black fill and burned-in marks)
    h, w = arr.shape[:2]
    nan = np.isnan(arr) if np.issubdtype(arr.dtype, np.floating) else None
    if nan is not None and colour:
        nan = nan.any(axis=-1)
    if nan is not None and not nan.any():
        nan = None
    if nan is not None and nan.all():
        return np.zeros(arr.shape, np.float32), np.ones((h, w), bool)
    min_px = max(16, int(np.ceil(MISSING_MIN_FRACTION * h * w)))
    regions = _lowest_regions(arr, colour, nan, min_px)
    overlays = _overlays(arr, colour, nan)
    if overlays is not None:
        regions = overlays if regions is None else regions | overlays
    if regions is None and nan is None:
        return arr, None
    from scipy import ndimage as ndi

    missing = regions if nan is None else nan if regions is None else regions | nan
    no_data = regions
    if nan is not None:  # NaN: a region when its pixels together are large enough
        parts, _ = ndi.label(nan, structure=np.ones((3, 3), bool))
        large = np.bincount(parts.ravel()) >= min_px
        large[0] = False
        if large.any():
            no_data = large[parts] if no_data is None else no_data | large[parts]
    # each missing pixel: the value of its reflection through its nearest pixel with data (both are
    # pixels with data, which the fill never changes); in blocks of rows, so that a large mosaic
    # needs about 15 bytes a pixel (8 of them the nearest pixels' indices; 4096 x 4096: 1.7 s)
    nearest = ndi.distance_transform_edt(missing, return_distances=False, return_indices=True)
    out = arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr.copy()
    rows = max(1, (1 << 20) // w)
    for y0 in range(0, h, rows):
        ys, xs = np.nonzero(missing[y0 : y0 + rows])
        if ys.size == 0:
            continue
        ys += y0
        qy, qx = nearest[0][ys, xs], nearest[1][ys, xs]
        ry, rx = 2 * qy - ys, 2 * qx - xs
        mirrored = (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
        mirrored[mirrored] = ~missing[ry[mirrored], rx[mirrored]]
        out[ys, xs] = out[np.where(mirrored, ry, qy), np.where(mirrored, rx, qx)]
    return out, no_data


def _overlays(arr: np.ndarray, colour: bool, nan: np.ndarray | None) -> np.ndarray | None:
    """The marks burned into the image at its highest value (a scale bar, a time stamp, text), as an
    (H, W) mask; None when there are none (see :data:`OVERLAY_MIN_PX`, :data:`OVERLAY_EDGE`)."""
    h, w = arr.shape[:2]
    flat = arr.reshape(h * w, -1)
    highest = np.nanmax(flat, axis=0) if nan is not None else flat.max(axis=0)
    at_high = (arr == highest).all(axis=-1) if colour else arr == highest[0]
    n = int(np.count_nonzero(at_high))
    if n < OVERLAY_MIN_PX or n > OVERLAY_MAX_FRACTION * h * w:  # (most planes stop here)
        return None
    from scipy import ndimage as ndi

    marks, count = ndi.label(at_high, structure=np.ones((3, 3), bool))
    sizes = np.bincount(marks.ravel())
    # the pixels right beside each mark: the image's own level there (the brightest tenth: a saturated
    # object's flank is partly nearly as bright as its plateau; a burned-in mark's neighbours are the
    # background, or the objects it was written over)
    beside = ndi.maximum_filter(marks, size=3)
    beside[at_high | (nan if nan is not None else False)] = 0
    where = beside > 0
    level = np.asarray(ndi.labeled_comprehension(_grey(arr[where], colour), beside[where], np.arange(1, count + 1),
                                                 _brightest_tenth, np.float64, np.nan), dtype=np.float64)
    low = float(np.nanpercentile(_grey(arr[sample_grid(arr.shape)], colour), 1.0))
    top = float(np.mean(highest)) if colour else float(highest[0])
    if top - low <= 0:
        return None
    overlay = np.zeros(count + 1, bool)
    overlay[1:] = (sizes[1:] >= OVERLAY_MIN_PX) & np.isfinite(level) & (top - level >= OVERLAY_EDGE * (top - low))
    return overlay[marks] if overlay.any() else None


def _grey(values: np.ndarray, colour: bool) -> np.ndarray:
    """Pixel values as float64 grey (the mean of the colours, an alpha channel left out)."""
    return values[..., :3].mean(axis=-1) if colour else values.astype(np.float64)


def _brightest_tenth(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, 90)) if values.size else float("nan")


def _lowest_regions(arr: np.ndarray, colour: bool, nan: np.ndarray | None, min_px: int) -> np.ndarray | None:
    """The regions of ``arr`` at its lowest value that hold no data (:data:`MISSING_MIN_FRACTION`,
    :data:`MISSING_GAP`), as an (H, W) mask; None when there are none."""
    h, w = arr.shape[:2]
    flat = arr.reshape(h * w, -1)
    lowest = np.nanmin(flat, axis=0) if nan is not None else flat.min(axis=0)
    at_low = (arr == lowest).all(axis=-1) if colour else arr == lowest[0]
    if np.count_nonzero(at_low) < min_px:  # (most planes stop here)
        return None
    from scipy import ndimage as ndi

    found, _ = ndi.label(at_low)
    edge = np.unique(np.concatenate([found[0], found[-1], found[:, 0], found[:, -1]]))
    edge = edge[edge > 0]
    if edge.size:
        edge = edge[np.bincount(found.ravel())[edge] >= min_px]
    if not edge.size:
        return None
    regions = np.isin(found, edge)
    del found
    ring = ndi.binary_dilation(regions, iterations=MISSING_RING_PX) & ~ndi.binary_dilation(regions)
    other = ~regions if nan is None else ~(regions | nan)
    if not other.any():  # one value (and NaN) alone: a constant plane, nothing to fill it from
        return None
    ring &= other
    if not ring.any():
        ring = other
    step = max(1, int(np.sqrt(h * w / 262144)))
    rest = _grey(arr[::step, ::step][other[::step, ::step]], colour)
    if rest.size == 0:
        rest = _grey(arr[other], colour)
    p1, p99 = (float(v) for v in np.percentile(rest, [1.0, 99.0]))
    if p99 <= p1:  # the rest is one value too: a mask (0 and 1, or 0 and 255), whose background is data
        return None
    level = float(np.median(_grey(arr[ring], colour)))
    return regions if level - float(np.mean(lowest)) >= MISSING_GAP * max(p99 - p1, 1e-12) else None


def prepare_plane(
    plane: np.ndarray, in_channels: int, normalization: dict[str, Any] | None = None
) -> np.ndarray:
    """(H, W) or (H, W, 3) plane -> normalised (C, H, W) float32 network input (the plane loop
    and the training examples first take out hot pixels: :func:`without_spikes`)."""
    arr = np.asarray(plane)
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise ImageError(f"The image is empty (shape {arr.shape}).")
    return normalize(as_channels_first(arr, in_channels), normalization)


def is_constant(plane: np.ndarray) -> bool:
    """True when every pixel has the same value (nothing to segment)."""
    arr = np.asarray(plane)
    return arr.size == 0 or bool(np.all(arr == arr.flat[0]))


#: Correlation of neighbouring pixels (:func:`~napari_unet.core.scale.pixel_correlation`) under which
#: a plane, or a binned copy of it, holds no structure at that scale: camera noise alone. Real images
#: measure 0.6-0.97 (502 DSB2018 images at least 0.595, C2C12, SIM+, ISBI EM, Usiigaci, BBBC030, the 3D
#: stack's planes at least 0.63); frames of Gaussian, Poisson and 8-bit camera noise 0.009 at most
#: from 256 x 256 px up; DSB2018 images with 2 photons at their brightest pixels 0.03 at the median.
#: With the binned copies, none of those real planes is taken for noise, nor 100 DSB2018 images with
#: shot noise of 2-10 photons at their brightest pixels (2 of them with 1 photon), nor disks of 90 px
#: with a contrast of 1 in Gaussian noise of sigma 3, nor a DSB2018 image with 1% hot pixels (its
#: hot pixels left in); 172 of 200 frames of noise are (not those with a smooth vignetting).
NOISE_CORRELATION = 0.02
#: Bins of :func:`is_camera_noise`: structure larger than the 8 px background of one bin shows at a
#: coarser one (large cells in strong pixel noise: binning averages the noise away, as the model's
#: coarse passes do).
NOISE_BINS = (1, 2, 4, 8)


def is_camera_noise(plane: np.ndarray, tile: int = 1024) -> bool:
    """True when a plane holds pixel noise alone at every scale: a dark frame of a time-lapse before
    the cells come in, an empty field. Per-image normalisation stretches such a plane's noise to the
    full range, and a model then outlines its blobs as hundreds of objects of a few pixels (C2C12's
    `cells` found 141-153 in frames of camera noise). In no part of the plane (tiles of at most
    ``tile`` a side, so that a few cells at the edge of a large empty scan count) do neighbouring
    pixels, or those of binned copies (:data:`NOISE_BINS`), correlate above :data:`NOISE_CORRELATION`
    (or above 4 / sqrt(pixels), the spread of the correlation of noise, on small planes; the
    brightest and darkest 1% of the differences from the background clipped, so that hot pixels do not
    hide the structure), nor does it hold a few compact objects out of the noise (a sparse field:
    :func:`compact_objects`). A constant plane is no noise (see :func:`is_constant`), nor one too small to
    tell (under 16 px a side)."""
    arr = np.asarray(plane)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)  # (an alpha channel left out)
    if arr.ndim != 2 or min(arr.shape) < 16 or is_constant(arr):
        return False
    h, w = arr.shape
    ny, nx = -(-h // tile), -(-w // tile)
    for y in range(ny):  # tiles of equal size that cover the plane
        for x in range(nx):
            part = arr[y * h // ny : (y + 1) * h // ny, x * w // nx : (x + 1) * w // nx]
            part = np.asarray(part, dtype=np.float32)
            if _structured(part) or _holds_objects(part):
                return False
    return True


def _holds_objects(x: np.ndarray) -> bool:
    """Whether a part of a plane that shows no structure overall holds a few compact objects out of
    its noise (:func:`compact_objects`): a sparse field, whose objects are too few for the pixels'
    correlation (the brightest 1% of the differences is clipped there, for hot pixels)."""
    noise = pixel_noise(x)
    return noise > 0 and bool(compact_objects(x, float(np.median(x)), noise).any())


def _structured(x: np.ndarray) -> bool:
    """Whether a part of a plane shows structure at one of the scales of :data:`NOISE_BINS`."""
    from .scale import pixel_correlation

    for b in NOISE_BINS:
        h, w = (x.shape[0] // b) * b, (x.shape[1] // b) * b
        if min(h, w) // b < 16:
            break
        binned = x[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3)) if b > 1 else x
        if pixel_correlation(binned, clip=1.0) >= max(NOISE_CORRELATION, 4.0 / np.sqrt(binned.size)):
            return True
    return False
