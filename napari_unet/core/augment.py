"""Data augmentation for training: geometry (flips, rotations, scale, the paper's elastic
deformation), random crops and intensity jitter.

Everything works on numpy arrays, an image ``(C, H, W)`` float32 (already normalised)
and its instance labels ``(H, W)``, with a ``numpy.random.Generator`` for
reproducibility. Labels are always resampled with nearest neighbour so that instance
ids survive.

:func:`sample_patch` is what training uses: it composes crop, flip, rotation, scale
and elastic deformation into *one* coordinate map and samples the image (linear) and
labels (nearest) once, directly from the whole plane, with mirror padding where the
patch reaches beyond the plane (a plane smaller than the patch is fine). The single
resampling is faster and sharper than chaining the transforms. The separate functions
(:func:`flip_rot90`, :func:`elastic_deform`, :func:`random_crop`, ...) are the same
operations one at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations :func:`sample_patch` and :func:`intensity_jitter` apply.

    Attributes
    ----------
    flip : bool
        Random horizontal/vertical flips.
    rotate : {"any", "90", "none"}
        Rotation by any angle, by multiples of 90 degrees, or none.
    scale : tuple of float
        Range of the zoom factor (log-uniform); (1, 1) turns it off.
    elastic_prob : float
        Probability of the paper's elastic deformation for a patch.
    elastic_grid : int
        Coarse grid of random displacements (the paper: 3 x 3).
    elastic_sigma : float
        Standard deviation of the displacements in pixels (the paper: 10).
    gain, offset, gamma : tuple of float
        Ranges of the intensity jitter on the normalised image (gamma log-uniform).
    noise : float
        Maximum standard deviation of added Gaussian noise.
    upscaled_prob : float
        Probability that a patch is made to look like an image of small objects that inference
        enlarged to the model's object size: shrunk by a factor drawn from ``upscaled``
        (log-uniform), given noise at that size (up to ``noise``) and brought back by linear
        interpolation, as :func:`napari_unet.core.scale.resize_image` does. A model trained on
        images that were only ever shrunk to its size has seen neither the smooth, blotchy
        noise nor the soft edges of enlarged ones. 0 (the default) turns it off.
    upscaled : tuple of float
        Range of the enlargement simulated by ``upscaled_prob``.
    texture_prob : float
        Probability that the objects of a patch get uneven brightness (:func:`object_texture`):
        each object's contrast to the background scaled by its own factor, and a smooth random
        field of brighter and dimmer parts inside it (chromocentres, nucleoli, uneven staining).
        A model that saw only evenly stained objects cuts such objects into their bright parts.
        0 (the default) turns it off.
    texture : tuple of float
        Range of the per-object contrast factor (log-uniform) of ``texture_prob``.
    texture_edge : float
        Pixels from an object's outline over which its inner texture fades in (0: none).
    debris_prob : float
        Probability that a patch gets a few bright foreign objects (:func:`bright_debris`): dead
        cells, dust, precipitates, several times brighter than the objects, in the background
        near them. Where the debris lies the class is left unknown (no loss), so the network
        learns only that the objects around it stay what they are. 0 (the default) turns it off.
    debris_brightness : tuple of float
        Range of the debris's contrast to the background, in multiples of the objects'
        (log-uniform).
    debris_renormalised : float
        Probability that a patch with debris is scaled as per-image normalisation would scale
        an image whose bright percentiles fall in the debris (objects dimmed by its factor).
        0 (the default): never; 0.5 lowered validation AP in a first run (benchmarks/RESULTS.md).
    low_light_prob : float
        Probability that a patch of a dark-background (fluorescence) image is shown as a camera that
        caught few photons would show it (:func:`low_light`): shot noise and read noise, then the
        image's percentile normalisation again. Live-cell imaging keeps the light low; the other
        augmentations' noise (``noise``) is a few percent of the range, far less than that. 0 (the
        default) turns it off.
    low_light_photons : tuple of float
        Range (log-uniform) of the photons a pixel at the top of the normalised range (1.0)
        caught, for ``low_light_prob``.
    low_light_native : bool
        Draw the low light's noise on the image's own pixel grid and enlarge it with the image
        (``grain`` of :func:`low_light`: the example's rescale factor), as an image of small
        objects enlarged to the model's object size shows its camera's noise; False (the
        default): on the patch's grid, one grain per pixel.
    saturated_prob : float
        Probability that a patch of a dark-background (fluorescence) image is shown as an
        over-exposed camera would show it (:func:`saturated`): clipped at a level below the
        objects' brightness, the brighter objects plateaus of one value, then the image's percentile
        normalisation again. 0 (the default) turns it off.
    saturated_level : tuple of float
        Range (log-uniform) of the clip level, in multiples of the objects' 90th percentile
        (the image's objects, above its background), for ``saturated_prob``.
    spots_prob : float
        Probability that the objects of a patch get small bright spots inside them
        (:func:`object_spots`): the chromocentres of mouse nuclei, nucleoli, foci, 1.5-5x the
        object's own contrast, a few pixels across; the patch then scaled as per-image normalisation
        scales an image whose top percentile falls in them. A model that never saw them cut such
        nuclei into their spots (DSB2018 val fluorescence with 4 spots a nucleus at 3x: AP@0.5 0.82
        -> 0.42). 0 (the default) turns it off.
    spots_brightness : tuple of float
        Range (log-uniform, per patch) of the spots' contrast, in multiples of their object's.
    gradient : float
        Largest amplitude (normalised intensity from one side of the patch to the other) of a
        random linear ramp added to the patch: uneven illumination, a vignetted field. 0 (the
        default) turns it off.
    """

    flip: bool = True
    rotate: str = "any"
    scale: tuple[float, float] = (0.8, 1.25)
    elastic_prob: float = 0.5
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    gain: tuple[float, float] = (0.8, 1.25)
    offset: tuple[float, float] = (-0.1, 0.1)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: float = 0.03
    upscaled_prob: float = 0.0
    upscaled: tuple[float, float] = (1.5, 4.0)
    gradient: float = 0.0
    texture_prob: float = 0.0
    texture: tuple[float, float] = (0.5, 2.0)
    texture_edge: float = 3.0
    debris_prob: float = 0.0
    debris_brightness: tuple[float, float] = (2.0, 10.0)
    debris_renormalised: float = 0.0
    low_light_prob: float = 0.0
    low_light_photons: tuple[float, float] = (4.0, 200.0)
    low_light_native: bool = False
    saturated_prob: float = 0.0
    saturated_level: tuple[float, float] = (0.2, 1.0)
    spots_prob: float = 0.0
    spots_brightness: tuple[float, float] = (1.5, 5.0)

    def describe(self) -> str:
        """A short description for model cards, e.g. ``crop, flips, any rotation, scale 0.8-1.25, ...``."""
        parts = ["crop"]
        if self.flip:
            parts.append("flips")
        if self.rotate != "none":
            parts.append("any rotation" if self.rotate == "any" else "90-degree rotations")
        if self.scale[0] != 1.0 or self.scale[1] != 1.0:
            parts.append(f"scale {self.scale[0]:g}-{self.scale[1]:g}")
        if self.elastic_prob > 0:
            parts.append(f"elastic ({self.elastic_grid}x{self.elastic_grid} grid, sigma {self.elastic_sigma:g} px, "
                         f"p={self.elastic_prob:g})")
        jitter = [name for name, value, off in (("gain", self.gain, (1.0, 1.0)), ("offset", self.offset, (0.0, 0.0)),
                                                ("gamma", self.gamma, (1.0, 1.0)), ("noise", self.noise, 0.0))
                  if value != off]
        if jitter:
            parts.append("/".join(jitter))
        if self.upscaled_prob > 0:
            parts.append(f"{self.describe_upscaled()} (p={self.upscaled_prob:g})")
        if self.gradient > 0:
            parts.append(f"linear illumination ramps up to {self.gradient:g}")
        if self.texture_prob > 0:
            parts.append(f"{self.describe_texture()} (p={self.texture_prob:g})")
        if self.debris_prob > 0:
            parts.append(f"{self.describe_debris()} (p={self.debris_prob:g})")
        if self.low_light_prob > 0:
            parts.append(f"{self.describe_low_light()} (p={self.low_light_prob:g})")
        if self.saturated_prob > 0:
            parts.append(f"{self.describe_saturated()} (p={self.saturated_prob:g})")
        if self.spots_prob > 0:
            parts.append(f"{self.describe_spots()} (p={self.spots_prob:g})")
        return ", ".join(parts)

    def describe_saturated(self) -> str:
        """What ``saturated_prob`` does, with this config's range of clip levels."""
        lo, hi = self.saturated_level
        return (f"over-exposed fluorescence patches (clipped at {lo:g}-{hi:g}x the objects' brightness, "
                "normalised again)")

    def describe_low_light(self) -> str:
        """What ``low_light_prob`` does, with this config's range of photons."""
        lo, hi = self.low_light_photons
        return (f"low light on fluorescence patches (shot and read noise, {lo:g}-{hi:g} photons at the top of "
                "the range, " + ("drawn at the image's own pixel size and enlarged with it, "
                                 if self.low_light_native else "") + "normalised again)")

    def describe_debris(self) -> str:
        """What ``debris_prob`` does, with this config's range of brightness."""
        lo, hi = self.debris_brightness
        dimmed = (f", p={self.debris_renormalised:g} of those patches dimmed as per-image normalisation would"
                  if self.debris_renormalised > 0 else "")
        return (f"bright debris near the objects ({lo:g}-{hi:g}x their contrast, "
                f"its own pixels left out of the loss{dimmed})")

    def describe_spots(self) -> str:
        """What ``spots_prob`` does, with this config's range of brightness."""
        return (f"small bright spots inside the objects (chromocentres; 2-10 an object, "
                f"{self.spots_brightness[0]:g}-{self.spots_brightness[1]:g}x its contrast, the patch "
                "normalised again)")

    def describe_texture(self) -> str:
        """What ``texture_prob`` does, with this config's range of contrasts."""
        contrast = (f"contrast x{self.texture[0]:g}-{self.texture[1]:g} per object, "
                    if self.texture[0] != 1.0 or self.texture[1] != 1.0 else "")
        edges = f" away from the outline ({self.texture_edge:g} px)" if self.texture_edge > 0 else ""
        return f"objects of uneven brightness ({contrast}a smooth random field inside{edges})"

    def describe_upscaled(self) -> str:
        """What ``upscaled_prob`` does, with this config's range of enlargements."""
        return (f"the look of an image enlarged {self.upscaled[0]:g}-{self.upscaled[1]:g}x "
                "(shrunk, noise, enlarged back)")


NO_AUGMENT = AugmentConfig(
    flip=False, rotate="none", scale=(1.0, 1.0), elastic_prob=0.0, gain=(1.0, 1.0),
    offset=(0.0, 0.0), gamma=(1.0, 1.0), noise=0.0,
)


def _check_pair(image: np.ndarray, labels: np.ndarray | None) -> None:
    if image.ndim != 3:
        raise ValueError(f"Expected an image of shape (channels, height, width), got {image.shape}.")
    if labels is not None and labels.shape != image.shape[1:]:
        raise ValueError(f"Image {image.shape[1:]} and labels {labels.shape} must have the same height and width.")


# ------------------------------------------------------------------ one at a time
def flip_rot90(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and a random multiple of 90-degree rotation (the 8 symmetries of a square).

    Parameters
    ----------
    image : ndarray
        (C, H, W).
    labels : ndarray
        (H, W).

    Returns
    -------
    image, labels : ndarray
        (C, H', W') and (H', W'), with (H', W') = (H, W) or (W, H); contiguous copies.
    """
    _check_pair(image, labels)
    k = int(rng.integers(4))
    image = np.rot90(image, k, axes=(1, 2))
    labels = np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def coarse_displacements(
    shape: tuple[int, int], rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """Smooth random displacement field (the paper's elastic deformation).

    Displacements drawn from N(0, sigma^2) on a ``grid`` x ``grid`` coarse grid spanning
    the plane are interpolated bicubically (cubic spline) to every pixel.

    Returns
    -------
    ndarray
        (2, H, W) float32 displacements (rows, columns) in pixels.
    """
    if grid < 2:
        raise ValueError(f"The elastic grid must be at least 2 x 2, got {grid}.")
    h, w = shape
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    yy = np.linspace(0, grid - 1, h)
    xx = np.linspace(0, grid - 1, w)
    coords = np.stack(np.meshgrid(yy, xx, indexing="ij"))
    out = np.empty((2, h, w), dtype=np.float32)
    for axis in range(2):
        out[axis] = ndi.map_coordinates(coarse[axis], coords, order=3, mode="nearest")
    return out


def _sample(
    image: np.ndarray, labels: np.ndarray | None, coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample (C, H, W) image (linear) and (H, W) labels (nearest) at (2, h, w) coords, mirrored."""
    out = np.empty((image.shape[0],) + coords.shape[1:], dtype=np.float32)
    for c in range(image.shape[0]):
        ndi.map_coordinates(image[c], coords, output=out[c], order=1, mode="mirror")
    lab = None
    if labels is not None:
        lab = ndi.map_coordinates(labels, np.rint(coords), order=0, mode="mirror")
    return out, lab


def elastic_deform(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    grid: int = 3,
    sigma: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's elastic deformation of an image (linear) and its labels (nearest).

    Parameters
    ----------
    image : ndarray
        (C, H, W) float.
    labels : ndarray
        (H, W) integer labels.
    grid, sigma : int, float
        Coarse grid size and displacement standard deviation in pixels.

    Returns
    -------
    image, labels : ndarray
        Same shapes as the inputs (mirror padding at the edges).
    """
    _check_pair(image, labels)
    h, w = labels.shape
    disp = coarse_displacements((h, w), rng, grid, sigma)
    coords = np.mgrid[0:h, 0:w].astype(np.float32) + disp
    out, lab = _sample(np.asarray(image, np.float32), labels, coords)
    return out, lab.astype(labels.dtype, copy=False)


def pad_to(image: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad (reflect) image and labels at the end so that they are at least ``size`` (h, w)."""
    _check_pair(image, labels)
    h, w = labels.shape
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph == 0 and pw == 0:
        return image, labels
    # "symmetric" works for any pad width (np.pad repeats reflection as needed)
    image = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
    labels = np.pad(labels, ((0, ph), (0, pw)), mode="symmetric")
    return image, labels


def random_crop(
    image: np.ndarray, labels: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` crop of image and labels (reflect-padded first if the plane is smaller).

    Returns
    -------
    image, labels : ndarray
        (C, h, w) and (h, w).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    image, labels = pad_to(image, labels, size)
    h, w = labels.shape
    y = int(rng.integers(h - size[0] + 1))
    x = int(rng.integers(w - size[1] + 1))
    return image[:, y : y + size[0], x : x + size[1]].copy(), labels[y : y + size[0], x : x + size[1]].copy()


def intensity_jitter(
    image: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """Random gamma, gain, offset and noise on a normalised (C, H, W) image.

    ``x -> gain * sign(x) * |x|**gamma + offset + noise``, the same for all channels.
    Returns a new float32 array.
    """
    image = np.asarray(image, dtype=np.float32)
    gamma = math.exp(rng.uniform(math.log(config.gamma[0]), math.log(config.gamma[1])))
    gain = rng.uniform(*config.gain)
    offset = rng.uniform(*config.offset)
    out = np.sign(image) * np.abs(image) ** gamma if gamma != 1.0 else image.copy()
    out = out * gain + offset
    if config.noise > 0:
        std = rng.uniform(0, config.noise)
        out = out + rng.normal(0.0, std, size=out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)


def enlarged_look(image: np.ndarray, rng: np.random.Generator, factor: float, noise: float) -> np.ndarray:
    """A (C, H, W) image as it would look had it been ``factor`` times smaller, with noise of
    standard deviation ``noise`` at that size, and enlarged back to (H, W) linearly."""
    from .scale import resize_image, resize_probabilities

    chw = np.asarray(image, dtype=np.float32)
    small = np.moveaxis(resize_image(np.moveaxis(chw, 0, -1), 1.0 / factor), -1, 0)
    if noise > 0:
        small = small + rng.normal(0.0, noise, size=small.shape).astype(np.float32)
    return resize_probabilities(small, chw.shape[1:])  # any (C, h, w) array, linearly


def illumination_ramp(shape: tuple[int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A random linear ramp over an (H, W) patch, of total rise up to ``amplitude``, mean 0."""
    h, w = shape
    angle = rng.uniform(0, 2 * math.pi)
    rise = rng.uniform(0, amplitude)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    along = math.sin(angle) * (yy / max(h - 1, 1) - 0.5) + math.cos(angle) * (xx / max(w - 1, 1) - 0.5)
    return (rise * along).astype(np.float32)


def _objects_of(image: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The objects' pixels of a patch (``image`` checked against ``labels``), or None when it has no
    object or no background (nothing for the objects' augmentations to change)."""
    _check_pair(image, labels)
    foreground = labels > 0
    return None if not foreground.any() or foreground.all() else foreground


def object_texture(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    contrast: tuple[float, float] = (0.5, 2.0),
    cell: float = 6.0,
    amplitude: float = 0.6,
    edge: float = 3.0,
) -> np.ndarray:
    """Objects of uneven brightness, for either polarity (bright or dark objects).

    Every object's difference to the background (the median of the pixels outside objects, per
    channel) is multiplied by its own factor, log-uniform in ``contrast``, times a smooth random
    field ``exp(a z w)``: ``z`` Gaussian noise on a grid of ``cell`` pixels, interpolated cubically,
    ``a`` uniform in (0, ``amplitude``), and ``w`` rising from 0 on an object's outline to 1 at
    ``edge`` pixels inside it, so that the texture does not move the object's edges (``edge=0``:
    everywhere). Background pixels are left as they are.

    Parameters
    ----------
    image : ndarray
        (C, H, W) float32 normalised patch.
    labels : ndarray
        (H, W) instance labels of the patch.

    Returns
    -------
    ndarray
        A new (C, H, W) float32 array (the image itself when the patch has no object or no background).
    """
    foreground = _objects_of(image, labels)
    if foreground is None:
        return image
    h, w = labels.shape
    background = np.median(image[:, ~foreground], axis=1).astype(np.float32)[:, None, None]
    ids, inverse = np.unique(labels, return_inverse=True)
    lo, hi = math.log(contrast[0]), math.log(contrast[1])
    factors = np.exp(rng.uniform(lo, hi, size=ids.size)).astype(np.float32)
    gain = factors[inverse.reshape(h, w)]
    grid = (int(math.ceil(h / cell)) + 3, int(math.ceil(w / cell)) + 3)
    coarse = rng.normal(0.0, 1.0, size=grid).astype(np.float32)
    field = ndi.zoom(coarse, cell, order=3)[1 : h + 1, 1 : w + 1]
    strength = rng.uniform(0.0, amplitude) * field
    if edge > 0:  # no texture on the outlines (outer or between touching objects), full strength inside
        from skimage.segmentation import find_boundaries

        outline = find_boundaries(labels, mode="inner") & foreground
        inside = ndi.distance_transform_edt(~outline)
        strength = strength * np.clip(inside / edge, 0.0, 1.0).astype(np.float32)
    gain = gain * np.exp(strength)
    gain = np.where(foreground, gain, np.float32(1.0)).astype(np.float32)
    return (background + (np.asarray(image, np.float32) - background) * gain).astype(np.float32, copy=False)


def object_spots(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    brightness: tuple[float, float] = (1.5, 5.0),
    per_object: tuple[int, int] = (2, 10),
    radius: tuple[float, float] = (0.04, 0.1),
) -> np.ndarray:
    """Small bright spots inside the objects (chromocentres, nucleoli, foci), for either polarity.

    Each object gets ``per_object`` spots (uniform) at random pixels more than a spot's radius
    inside it; the spots are Gaussian blobs of radius (sigma) ``radius`` times the patch's median
    object diameter (uniform; at least 0.7 px), their peak ``brightness`` times the object's own
    contrast to the background (log-uniform, one factor a patch), cut off at the object's outline.
    The patch is then scaled as per-image normalisation would scale it: its 1st percentile kept,
    its 99.8th brought back to where it was before the spots (when they raised it).

    Parameters
    ----------
    image : ndarray
        (C, H, W) float32 normalised patch.
    labels : ndarray
        (H, W) instance labels of the patch.

    Returns
    -------
    ndarray
        A new (C, H, W) float32 array (the image itself when the patch has no object or no background).
    """
    foreground = _objects_of(image, labels)
    if foreground is None:
        return image
    image = np.asarray(image, np.float32)
    lab = np.where(foreground, labels, 0).astype(np.int64)
    background = np.median(image[:, ~foreground], axis=1).astype(np.float32)
    counts = np.bincount(lab.ravel())
    ids = np.flatnonzero(counts[1:]) + 1
    diameter = float(np.median(2.0 * np.sqrt(counts[ids] / math.pi)))
    sigma = max(0.7, rng.uniform(*radius) * diameter)
    inside = ndi.distance_transform_edt(foreground) > sigma  # (touching objects: their seams too)
    inner = lab[inside]
    if inner.size == 0:
        return image
    # spots: random pixels of each object's inside, about per_object of them an object
    n_spots = rng.integers(per_object[0], per_object[1] + 1, size=int(lab.max()) + 1)
    chance = n_spots[inner] / np.maximum(np.bincount(inner, minlength=lab.max() + 1)[inner], 1)
    chosen = rng.random(inner.size) < chance
    points = np.zeros(lab.shape, np.float32)
    points.ravel()[np.flatnonzero(inside)[chosen]] = 1.0
    spots = ndi.gaussian_filter(points, sigma) * np.float32(2 * math.pi * sigma * sigma)  # peaks of about 1
    sums = np.stack([np.bincount(lab.ravel(), weights=image[c].ravel(), minlength=counts.size)
                     for c in range(image.shape[0])])
    contrast = sums / np.maximum(counts, 1) - background[:, None]
    contrast[:, 0] = 0.0
    factor = math.exp(rng.uniform(math.log(brightness[0]), math.log(brightness[1])))
    out = image + (np.float32(factor) * spots)[None] * contrast[:, lab].astype(np.float32)
    for c in range(out.shape[0]):  # normalised again: the top percentile where it was
        lo, hi_before = np.percentile(image[c], [1.0, 99.8])
        hi_after = float(np.percentile(out[c], 99.8))
        if abs(hi_after - lo) > abs(hi_before - lo) > 0:
            out[c] = lo + (out[c] - lo) * np.float32((hi_before - lo) / (hi_after - lo))
    return out.astype(np.float32, copy=False)


def bright_debris(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    brightness: tuple[float, float] = (2.0, 10.0),
    count: tuple[int, int] = (1, 4),
    margin: float = 2.0,
    renormalised: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A few bright foreign blobs in the background of a patch, for either polarity.

    Between ``count`` blobs (ellipses of 0.4-1.5x the patch's typical object diameter, any
    orientation, soft edges) are placed on background pixels more than ``margin`` pixels from
    any object (nothing closer changes); their difference to the background (the median outside objects, per channel)
    is that of the objects (the 90th percentile of their difference) times a factor
    log-uniform in ``brightness``. Real debris is not only round or only in gaps, but what
    this teaches is the neighbourhood: objects next to something far brighter than them.
    With probability ``renormalised`` the patch is then scaled about its background so that the
    debris has the objects' old contrast: what per-image percentile normalisation makes of an
    image with much debris (its bright percentiles fall in the debris, the objects come out dim).

    Parameters
    ----------
    image : ndarray
        (C, H, W) float32 normalised patch.
    labels : ndarray
        (H, W) labels of the patch (> 0: objects; 0 background; negative: unknown, avoided).

    Returns
    -------
    image : ndarray
        A new (C, H, W) float32 array, or ``image`` itself when the patch has no object or
        no free background.
    debris : ndarray or None
        (H, W) bool: the pixels the debris changed, whose class is no longer known; None
        when nothing was added.
    """
    _check_pair(image, labels)
    objects = labels > 0
    background_px = labels == 0
    n_objects = np.unique(labels[objects]).size
    if n_objects == 0 or not background_px.any():
        return image, None
    h, w = labels.shape
    away = background_px & (ndi.distance_transform_edt(~objects) > margin)  # where debris may change pixels
    sigma = rng.uniform(0.5, 1.5)  # its soft edge
    free = away & (ndi.distance_transform_edt(away) > 2.0 * sigma)  # where its sharp outline may lie
    free_idx = np.flatnonzero(free)
    if free_idx.size == 0:
        return image, None
    chw = np.asarray(image, np.float32)
    background = np.median(chw[:, background_px], axis=1).astype(np.float32)
    difference = chw[:, objects] - background[:, None]
    # the objects' contrast, of either sign: the 90th percentile of |difference| with its sign
    sign = np.sign(np.median(difference, axis=1))
    sign[sign == 0] = 1.0
    contrast = sign * np.percentile(np.abs(difference), 90, axis=1)
    diameter = 2.0 * math.sqrt(objects.sum() / n_objects / math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        centre = int(free_idx[int(rng.integers(free_idx.size))])
        cy, cx = divmod(centre, w)
        size = diameter * math.exp(rng.uniform(math.log(0.4), math.log(1.5))) / 2.0
        ratio = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, math.pi)
        dy, dx = yy - cy, xx - cx
        along = dy * math.cos(angle) + dx * math.sin(angle)
        across = -dy * math.sin(angle) + dx * math.cos(angle)
        blobs |= (along / size) ** 2 + (across / (size * ratio)) ** 2 <= 1.0
    blobs &= free
    alpha = np.maximum(ndi.gaussian_filter(blobs.astype(np.float32), sigma), blobs.astype(np.float32))
    alpha[~away] = 0.0  # never over an object nor its margin
    factor = math.exp(rng.uniform(math.log(brightness[0]), math.log(brightness[1])))
    value = (background + factor * contrast).astype(np.float32)[:, None, None]
    out = chw * (1.0 - alpha) + value * alpha
    if rng.random() < renormalised:  # as the image's percentiles would be, were the debris in them
        out = background[:, None, None] + (out - background[:, None, None]) / np.float32(factor)
    return out.astype(np.float32, copy=False), alpha > 0


#: Below this median of a normalised image (0: its 1st percentile, 1: its 99.8th), the image is
#: mostly dark background: fluorescence, whose photons are few. Bright-field and stained-tissue
#: images (a bright background: a median near 1) collect plenty of light and get no low light.
DARK_BACKGROUND_MEDIAN = 0.25


def low_light(
    image: np.ndarray,
    rng: np.random.Generator,
    photons: tuple[float, float] = (4.0, 200.0),
    reference: np.ndarray | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
    grain: float = 1.0,
) -> np.ndarray:
    """A normalised (C, H, W) patch as a camera that caught few photons would show it.

    A pixel at 1.0 (the image's high percentile) caught ``n`` photons, ``n`` log-uniform in
    ``photons``; each pixel gets Poisson (shot) noise on ``n`` times its value (negative values
    count as none) plus a little background light (0-2 photons), and Gaussian read noise of
    0.5-3 photo-electrons. The result is normalised again as inference normalises an image, by
    its ``percentiles``: those of ``reference`` ((C, K) pixels of the whole image, given the same
    noise) when given, since a patch of background alone would otherwise be stretched to the
    whole range; else the patch's own.

    ``grain`` > 1: the patch is an image enlarged that many times (to the model's object size), and
    its noise is drawn on the image's own pixel grid (the patch shrunk by ``grain``, linearly) and
    enlarged with it, linearly; the reference pixels get noise of the same spread.

    Returns a new float32 array.
    """
    chw = np.asarray(image, np.float32)
    n = math.exp(rng.uniform(math.log(photons[0]), math.log(photons[1])))
    dark = rng.uniform(0.0, 2.0)
    read = rng.uniform(0.5, 3.0)

    def exposed(x: np.ndarray) -> np.ndarray:
        counts = rng.poisson(n * np.clip(x, 0.0, None) + dark).astype(np.float32)
        return counts + rng.normal(0.0, read, size=x.shape).astype(np.float32)

    spread = 1.0
    if grain > 1.05 and min(chw.shape[1:]) >= 4:
        native = tuple(max(2, int(round(side / grain))) for side in chw.shape[1:])
        zoom_in = (1.0,) + tuple(m / side for m, side in zip(native, chw.shape[1:], strict=True))
        small = ndi.zoom(chw, zoom_in, order=1, mode="mirror", grid_mode=True)
        expected = n * np.clip(small, 0.0, None) + dark
        noise = exposed(small) - expected
        zoom_out = (1.0,) + tuple(side / m for m, side in zip(native, chw.shape[1:], strict=True))
        enlarged = ndi.zoom(noise, zoom_out, order=1, mode="mirror", grid_mode=True)
        enlarged = enlarged[:, : chw.shape[1], : chw.shape[2]]
        noisy = n * np.clip(chw, 0.0, None) + dark + enlarged
        spread = float(np.std(enlarged) / max(np.std(noise), 1e-6))
    else:
        noisy = exposed(chw)
    if reference is not None:
        ref = np.asarray(reference, np.float32)
        expected = n * np.clip(ref, 0.0, None) + dark
        sample = expected + spread * (exposed(ref) - expected)
    else:
        sample = noisy.reshape(len(chw), -1)
    lo, hi = np.percentile(sample.reshape(len(chw), -1), percentiles, axis=1)
    span = np.maximum(hi - lo, 1e-6)
    return ((noisy - lo[:, None, None]) / span[:, None, None]).astype(np.float32)


def saturated(
    image: np.ndarray,
    rng: np.random.Generator,
    level: tuple[float, float],
    reference: np.ndarray,
    reference_labels: np.ndarray,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> np.ndarray:
    """A normalised (C, H, W) patch as an over-exposed camera would show it: clipped at a level
    between ``level[0]`` and ``level[1]`` times (log-uniform) the brightness of the image's objects
    (the 90th percentile of ``reference`` pixels on objects, above the median of those on the
    background, per channel; ``reference_labels``: the (K,) labels of the (C, K) ``reference``
    pixels), so that the brighter objects become plateaus of one value and touching ones lose the
    grey level between them; then normalised again as inference normalises the clipped image
    (``percentiles`` of the clipped reference pixels). The patch unchanged (a copy) when the
    reference pixels hold no object or no background.

    Returns a new float32 array.
    """
    chw = np.asarray(image, np.float32)
    ref = np.asarray(reference, np.float32).reshape(len(chw), -1)
    on = np.asarray(reference_labels).reshape(-1) > 0
    if on.all() or not on.any():
        return chw.copy()
    background = np.median(ref[:, ~on], axis=1)
    bright = np.percentile(ref[:, on], 90, axis=1)
    factor = math.exp(rng.uniform(math.log(level[0]), math.log(level[1])))
    clip = background + factor * np.maximum(bright - background, 1e-6)
    lo, hi = np.percentile(np.minimum(ref, clip[:, None]), percentiles, axis=1)
    span = np.maximum(hi - lo, 1e-6)
    return ((np.minimum(chw, clip[:, None, None]) - lo[:, None, None]) / span[:, None, None]).astype(np.float32)


# ------------------------------------------------------------------ all in one
def sample_patch(
    image: np.ndarray,
    labels: np.ndarray,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    config: AugmentConfig | None = AugmentConfig(),
    centre: tuple[float, float] | None = None,
    valid: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One random training patch: crop + flip + rotation + scale + elastic, sampled once.

    Parameters
    ----------
    image : ndarray
        (C, H, W) float32 normalised image.
    labels : ndarray
        (H, W) integer instance labels.
    size : int or (int, int)
        Patch size (h, w). The plane may be smaller (mirror padding).
    rng : numpy.random.Generator
    config : AugmentConfig or None
        None (or :data:`NO_AUGMENT`) gives a plain random crop. Intensity jitter is
        applied too when ``config`` asks for it.
    centre : (float, float), optional
        The patch's centre (row, column) in the plane; None: drawn so that the patch (its
        central ``valid`` pixels) overlaps the plane mostly.
    valid : int, optional
        The side of the patch's centre that the loss sees (an unpadded network's output);
        default: the whole patch. Drawn by the whole patch, the centre of an unpadded network's
        patches never came near the plane's edges (the paper's U-Net learnt from 57% of a 512 px
        plane); the context beyond the plane is mirrored.

    Returns
    -------
    image : ndarray
        (C, h, w) float32.
    labels : ndarray
        (h, w) labels of the same dtype.
    """
    _check_pair(image, labels)
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    config = config or NO_AUGMENT
    h, w = labels.shape
    ph, pw = size
    if centre is None:  # anywhere such that the part the loss sees overlaps the plane mostly
        vh, vw = (ph, pw) if valid is None else (min(int(valid), ph), min(int(valid), pw))
        cy = rng.uniform(min(vh / 2, h / 2), max(h - vh / 2, h / 2))
        cx = rng.uniform(min(vw / 2, w / 2), max(w - vw / 2, w / 2))
    else:
        cy, cx = centre
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    yy -= (ph - 1) / 2.0
    xx -= (pw - 1) / 2.0
    lo, hi = config.scale
    scale = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    if config.rotate == "any":
        angle = rng.uniform(0, 2 * math.pi)
    elif config.rotate == "90":
        angle = int(rng.integers(4)) * math.pi / 2
    else:
        angle = 0.0
    flip = -1.0 if (config.flip and rng.random() < 0.5) else 1.0
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    xx = xx * flip
    src_y = cos * yy - sin * xx
    src_x = sin * yy + cos * xx
    if config.elastic_prob > 0 and rng.random() < config.elastic_prob:
        disp = coarse_displacements(size, rng, config.elastic_grid, config.elastic_sigma)
        src_y += disp[0]
        src_x += disp[1]
    coords = np.stack([src_y + cy - 0.5, src_x + cx - 0.5])
    if angle == 0.0 and scale == 1.0 and flip == 1.0 and coords.shape and not (config.elastic_prob > 0):
        coords = np.rint(coords)
    out, lab = _sample(np.asarray(image, np.float32), labels, coords)
    if config.texture_prob > 0 and rng.random() < config.texture_prob:
        out = object_texture(out, lab, rng, config.texture, edge=config.texture_edge)
    if config.spots_prob > 0 and rng.random() < config.spots_prob:
        out = object_spots(out, lab, rng, config.spots_brightness)
    if config is not NO_AUGMENT and (
        config.gain != (1.0, 1.0) or config.offset != (0.0, 0.0) or config.gamma != (1.0, 1.0) or config.noise > 0
    ):
        out = intensity_jitter(out, rng, config)
    if config.upscaled_prob > 0 and rng.random() < config.upscaled_prob:
        lo, hi = config.upscaled
        factor = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        out = enlarged_look(out, rng, factor, rng.uniform(0, config.noise))
    if config.gradient > 0:
        out = out + illumination_ramp(out.shape[1:], rng, config.gradient)
    return out, lab.astype(labels.dtype, copy=False)
