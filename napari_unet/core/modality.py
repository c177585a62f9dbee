"""What kind of microscopy image a plane is, to propose the built-in model that fits it.

Two numbers of the plane's grey values tell the common cases apart:

* ``dark_spread``: how far the darkest pixels (1st percentile) lie below the median, in units
  of the pixel noise (estimated from differences of neighbouring pixels, robustly). In
  fluorescence the median pixel is background and nothing is darker than it but noise
  (a few noise units); phase contrast and DIC have real dark structures (cell bodies,
  shadows, halos) tens of noise units below the background. Dense fluorescence, whose median
  pixel lies in a nucleus, is told by ``bright_spread`` instead (far above 1).
* ``bright_spread``: (99th percentile - median) / (median - 1st percentile), after light
  smoothing: far above 1 for bright objects on a dark background, far below 1 for dark
  objects on a bright one (stained nuclei in bright field), near 1 for transmitted-light
  images whose structures go both ways.

Both are measured twice: on the plane as it is, and once a smooth background is taken off
(:func:`_background`: a paraboloid, ``1, x, y, x² + y²``, fitted robustly to the densest grey
level of 8 x 8 tiles). An additive ramp or a vignette (brighter centre or brighter edges, of any
centre) puts the 1st percentile of a fluorescence plane far below its median, like phase contrast;
without it, the background is flat and dark again. A plane is fluorescence when either says so: the
fit follows dense clusters of nuclei too (it raises ``dark_spread`` there), so it only ever adds
fluorescence calls, and only when the background it found varies by more than
``BACKGROUND_VARIATION`` noise units. Isolated hot (or dead) pixels are clipped to their
neighbours first: a few of them at the dtype's maximum set the 99.8th percentile, and with it the
noise floor, and made phase contrast look like a flat fluorescence background.

A colour plane (RGB that is not grey) is a stained-tissue ``colour`` image unless its grey
values say fluorescence (pseudo-coloured or merged fluorescence channels: DSB2018's 91 stained
images all have dark_spread >= 25 and bright_spread <= 1.1).

:func:`image_modality` names the kind; :func:`propose_model` maps it to a built-in model:
``nuclei-fluo`` for fluorescence (``nuclei`` trained on further with simulated low light: it keeps
dim, noisy nuclei and the deep planes of z-stacks), ``nuclei`` for bright-field and colour
(stained-tissue) nuclei images, ``cells`` for phase contrast and DIC. It is a proposal: the user
can always choose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from napari_unet._shapes import is_rgb

#: Below this many noise units between the 1st percentile and the median, the background is
#: flat and dark: fluorescence.
FLAT_DARK_BACKGROUND = 5.0
#: Below this ``bright_spread``, the objects are darker than a bright background.
DARK_ON_BRIGHT = 0.3
#: Above this ``bright_spread``, bright objects stand far further above the median than anything
#: lies below it: fluorescence, also where nuclei fill so much of the plane that the median pixel
#: is no longer background and ``dark_spread`` is large (18 of DSB2018's 401 fluorescence images,
#: bright_spread 4.9-22: 17 of them are told right with this rule). Whole phase-contrast and DIC
#: images measured 0.4-2.6; small crops of them reach higher. Of 3.5, 5, 6 and 8, both 6 and 8 told
#: 7 more samples right than they turned wrong (benchmarks/bench_modality.py), and 6 tells 17 of
#: the 18 whole images right, 8 only 13.
BRIGHT_ON_DARK = 6.0
#: A smooth background that varies by more than this many noise units over the plane is taken off
#: for a second look (see the module docs); below it the plane counts as flat.
BACKGROUND_VARIATION = 5.0
#: Tiles per side whose densest grey level (the middle of the shortest interval holding half of
#: their pixels: the background of fluorescence, phase contrast and bright field alike) the
#: background is fitted to.
BACKGROUND_TILES = 8
#: Planes smaller than this (pixels a side, after subsampling) have no background fitted: on a crop
#: of a few cells the surface follows the cells themselves (C2C12 phase-contrast crops of 96 and
#: 128 px: 72 of 100 told right with a fit, 100 without).
BACKGROUND_MIN_SIDE = 160
#: Pixels sampled from large planes (every n-th row and column) to keep this well under 50 ms.
MAX_SIDE = 1024
#: ... but never sparser than every this many: a plane larger than ``MAX_SIDE * MAX_STEP`` is told by
#: its central part (a mosaic of 8000 px a side sampled every 8th pixel showed its 17 px nuclei as
#: dots of 2 px, and was taken for phase contrast: AP@0.5 0.19 with `cells` against 0.77).
MAX_STEP = 2

MODALITIES = ("fluorescence", "bright-field", "colour", "transmitted")
#: The built-in model proposed for each kind. Fluorescence gets ``nuclei-fluo``: better than ``nuclei``
#: on the DSB2018 val fluorescence images (AP@0.5 0.858 against 0.847) and far better in low light
#: (0.695 against 0.398 at 10 photons) and on noisy z-stacks; 0.031 below it on the colour images,
#: which keep ``nuclei`` (benchmarks/RESULTS.md, "A fluorescence model").
MODEL_FOR = {"fluorescence": "nuclei-fluo", "bright-field": "nuclei", "colour": "nuclei",
             "transmitted": "cells"}
#: How each kind is named in messages ("Proposed 'cells' for this phase-contrast / DIC image").
KIND_WORDS = {
    "fluorescence": "fluorescence image",
    "bright-field": "bright-field image with dark nuclei",
    "colour": "colour (stained) image",
    "transmitted": "phase-contrast / DIC image",
}


@dataclass(frozen=True)
class Modality:
    """The kind of image (one of :data:`MODALITIES`) and the numbers that decided it."""

    kind: str
    dark_spread: float
    bright_spread: float


def _grey(plane: np.ndarray) -> tuple[np.ndarray, bool]:
    """The grey values of ``plane``'s sample (:func:`sample_plane`: sampled first, a slide's colours
    were all turned into float32 before, 1.8 s of 4096 x 4096), and whether it is in colour."""
    a = np.asarray(plane)
    colour = is_rgb(a.shape)
    if not colour and a.ndim != 2:
        raise ValueError(f"Expected one 2D plane (H, W) or (H, W, 3), got shape {np.shape(plane)}.")
    from .stack import in_float32_range

    # (float64 far beyond float32's range, or 64-bit values far from 0: brought in first, as for segmenting;
    # cast as they were, they overflowed with numpy's warnings, or lost their detail)
    sample = in_float32_range(np.asarray(sample_plane(a))).astype(np.float32, copy=False)
    if colour:
        rgb = sample[..., :3]
        colour = bool(np.ptp(rgb - rgb.mean(-1, keepdims=True)) > 0)  # grey stored as RGB is not colour
        sample = rgb.mean(-1)
    return sample, colour


def central_window(shape: tuple[int, ...], at: tuple[float, float] = (0.5, 0.5)) -> tuple[slice, slice]:
    """The rows and columns of a plane of ``shape`` (H, W, ...) that tell its kind: all of it, or
    ``MAX_SIDE * MAX_STEP`` pixels a side (see :data:`MAX_STEP`) centred at the fractions ``at`` of its
    height and width (the middle by default)."""
    span = MAX_SIDE * MAX_STEP
    out = []
    for n, f in zip(shape[:2], at, strict=True):
        start = min(max(0, int(n * f) - span // 2), max(0, n - span))
        out.append(slice(start, start + span))
    return tuple(out)


#: Where a plane larger than a window is looked at: its middle, or the middle of one of its quarters
#: when that holds far more structure (:data:`EMPTY_MIDDLE`).
QUARTER_CENTRES = ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))
#: ... "far more": this many times the spread of grey values of the middle (empty glass, background).
EMPTY_MIDDLE = 3.0


def sample_plane(a: np.ndarray) -> np.ndarray:
    """``a`` (H, W, ...) reduced to at most :data:`MAX_SIDE` pixels a side: every n-th row and column,
    n at most :data:`MAX_STEP`, of all of it or of its :func:`central_window`, or (an array in memory)
    of a quarter's middle whose grey values spread :data:`EMPTY_MIDDLE` times as far: a slide whose
    middle is empty glass or background is told by its tissue."""
    window = central_window(a.shape)
    if isinstance(a, np.ndarray) and max(a.shape[:2]) > MAX_SIDE * MAX_STEP:  # (larger than one window)
        def structure(w: tuple[slice, slice]) -> float:
            return float(np.std(np.asarray(a[w][::8, ::8], dtype=np.float32)))

        middle = structure(window)
        spread, best = max(((structure(w), w) for w in (central_window(a.shape, at) for at in QUARTER_CENTRES)),
                           key=lambda scored: scored[0])
        if spread > EMPTY_MIDDLE * middle:
            window = best
    a = a[window]
    step = max(1, int(np.ceil(max(a.shape[:2]) / MAX_SIDE)))
    return a[::step, ::step]


def _despeckle(grey: np.ndarray, margin: float) -> np.ndarray:
    """``grey`` with each pixel clipped to within ``margin`` of its four neighbours' range: isolated
    hot and dead pixels take their neighbours' values, everything else is left as it is."""
    p = np.pad(grey, 1, mode="edge")
    near = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
    return np.clip(grey, near.min(0) - margin, near.max(0) + margin)


def _background(grey: np.ndarray) -> np.ndarray:
    """A smooth background of ``grey``: ``a + b x + c y + d (x² + y²)`` (a ramp, and a vignette of any
    centre, brighter or darker in the middle; x and y in the same units so it stays round on oblong
    planes), fitted to the densest grey level of each of ``BACKGROUND_TILES`` x ``BACKGROUND_TILES``
    tiles, leaving out tiles far from the fit (dense nuclei, a large cell) and fitting again."""
    h, w = grey.shape
    n = min(BACKGROUND_TILES, h // 2, w // 2)
    if n < 2:
        return np.zeros_like(grey)
    ys, xs = np.linspace(0, h, n + 1).astype(int), np.linspace(0, w, n + 1).astype(int)
    level, cy, cx = [], [], []
    for i in range(n):
        for j in range(n):
            tile = grey[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            step = max(1, int(np.sqrt(tile.size / 4096)))
            v = np.sort(tile[::step, ::step], axis=None)
            k = v.size // 2
            a = int(np.argmin(v[k:] - v[:v.size - k]))
            level.append((v[a] + v[a + k]) / 2)
            cy.append((ys[i] + ys[i + 1] - 1) / 2)
            cx.append((xs[j] + xs[j + 1] - 1) / 2)
    side = float(max(h, w))

    def terms(y, x):
        y, x = y / side, x / side
        return [np.ones_like(x * y), x, y, x * x + y * y]

    z = np.asarray(level, np.float64)
    design = np.stack(terms(np.asarray(cy), np.asarray(cx)), 1)
    keep = np.ones(z.size, bool)
    for _ in range(5):
        coef = np.linalg.lstsq(design[keep], z[keep], rcond=None)[0]
        residual = z - design @ coef
        scale = 1.4826 * float(np.median(np.abs(residual[keep])))
        new = np.abs(residual) <= 3 * scale
        if new.sum() < design.shape[1] + 2 or (new == keep).all():
            break
        keep = new
    surface = sum(c * t for c, t in zip(coef, terms(np.arange(h, dtype=np.float64)[:, None],
                                                     np.arange(w, dtype=np.float64)[None, :])))
    return np.asarray(surface, np.float32)


def _spreads(grey: np.ndarray, noise: float) -> tuple[float, float, float] | None:
    """(dark_spread, bright_spread, noise with its floor) of ``grey``; None for a flat plane."""
    from scipy.ndimage import gaussian_filter

    lo, med, hi = np.percentile(grey, (1, 50, 99.8))
    span = float(hi - lo)
    if span <= 0:
        return None
    noise = max(noise, 0.01 * span)  # quantised, flat backgrounds: no measurable noise
    dark_spread = float(med - lo) / noise
    s_lo, s_med, s_hi = np.percentile(gaussian_filter(grey, 2), (1, 50, 99))
    bright_spread = float(s_hi - s_med) / max(float(s_med - s_lo), 1e-6 * span)
    return dark_spread, bright_spread, noise


def _says_fluorescence(dark_spread: float, bright_spread: float) -> bool:
    return dark_spread < FLAT_DARK_BACKGROUND or bright_spread > BRIGHT_ON_DARK


def image_modality(plane: np.ndarray) -> Modality:
    """The kind of microscopy image ``plane`` is (see the module docs)."""
    grey, colour = _grey(plane)
    diffs = np.diff(grey, axis=1 if grey.shape[1] > 1 else 0).ravel()
    if diffs.size == 0:  # a single pixel: nothing to tell
        return Modality("fluorescence", 0.0, 0.0)
    noise = 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / np.sqrt(2)
    grey = _despeckle(grey, 3 * noise)
    spreads = _spreads(grey, noise)
    if spreads is None:
        return Modality("fluorescence", 0.0, 0.0)  # a flat plane: nothing to tell
    dark_spread, bright_spread, floor = spreads
    fluorescence = _says_fluorescence(dark_spread, bright_spread)
    if not fluorescence and min(grey.shape) >= BACKGROUND_MIN_SIDE:
        background = _background(grey)
        if float(np.ptp(background)) > BACKGROUND_VARIATION * floor:
            flat = _spreads(grey - background, noise)
            if flat is not None:  # (the plane without its smooth background decides)
                dark_spread, bright_spread, _ = flat
                fluorescence = _says_fluorescence(dark_spread, bright_spread)
    if colour and not fluorescence:  # (pseudo-coloured or merged fluorescence channels stay fluorescence)
        kind = "colour"
    elif fluorescence:
        kind = "fluorescence"
    elif bright_spread < DARK_ON_BRIGHT:
        kind = "bright-field"
    else:
        kind = "transmitted"
    return Modality(kind, round(dark_spread, 2), round(bright_spread, 3))


def propose_model(plane: np.ndarray,
                  available: Iterable[str] = ("nuclei", "nuclei-fluo", "cells")) -> str | None:
    """The built-in model that fits ``plane`` among ``available`` (None when it is not there)."""
    name = MODEL_FOR[image_modality(plane).kind]
    return name if name in set(available) else None
