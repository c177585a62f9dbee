"""Calibrating a model's object diameter on images with ground truth.

The diameter a model segments best at is not simply the median size of its training
objects (augmentation, the loss and the post-processing all shift it). It is measured:
each validation image is rescaled so that its objects (median diameter from its ground
truth) measure ``D`` pixels, segmented, and scored; the ``D`` with the best mean AP@0.5
is the model's diameter. This is exactly what the automatic diameter does with a perfect
estimate.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from .checkpoint import SegmentationModel
from .events import Progress
from .metrics import average_precision
from .instances import seed_pixels
from .predict import iter_predict_probabilities, probabilities_to_labels
from .scale import median_diameter, min_size_at, object_diameters, resize_image, resize_probabilities

#: Mean AP@0.5 differences below this are taken as ties (see :attr:`Calibration.best`).
CALIBRATION_MARGIN = 0.02
#: Object diameters (pixels) tried by default.
DEFAULT_CANDIDATES = (10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0, 28.0)

#: A kind of image (:func:`~napari_unet.core.modality.image_modality`) gets post-processing of its
#: own only when the model has at least this many tuning images of it ...
KIND_MIN_IMAGES = 20
#: ... and the best setting on them beats the model's general one by at least this mean AP@0.5
#: (smaller gains are within the noise of a few dozen images).
KIND_MARGIN = 0.005
#: Tuning images used per kind at most (a seeded sample of the rest), to bound the time it takes.
KIND_MAX_IMAGES = 100

__all__ = ["DEFAULT_CANDIDATES", "Calibration", "iter_calibrate_diameter", "iter_tune_postprocessing_by_kind",
           "training_diameter"]


@dataclass(frozen=True)
class Calibration:
    """Mean AP@0.5 of a model with its objects brought to each candidate diameter."""

    candidates: tuple[float, ...]
    mean_ap: tuple[float, ...]

    @property
    def best(self) -> float:
        """The smallest candidate within :data:`CALIBRATION_MARGIN` of the best mean AP.

        Why the smallest: the automatic estimate is reliable when objects measure at most the
        model's diameter (larger ones can be cut in pieces that look like the model's size), and
        smaller objects mean fewer pixels through the network. Differences below the margin are
        within the noise of a few dozen validation images.
        """
        top = max(self.mean_ap)
        return float(min(c for c, a in zip(self.candidates, self.mean_ap) if a >= top - CALIBRATION_MARGIN))

    def table(self) -> dict[str, float]:
        return {f"{d:g}": round(float(a), 4) for d, a in zip(self.candidates, self.mean_ap)}


def training_diameter(labels: Sequence[np.ndarray], scales: Sequence[float] | None = None) -> float:
    """Median equivalent diameter of all objects of a set of label images (pixels); with ``scales``
    (the factor each labels image was rescaled by), in the pixels of the images before rescaling."""
    scales = [1.0] * len(labels) if scales is None else scales
    diameters = np.concatenate([object_diameters(lab) / s for lab, s in zip(labels, scales)] or [np.zeros(0)])
    if diameters.size == 0:
        raise ValueError("The labels hold no object: no diameter can be measured.")
    return float(np.median(diameters))


def iter_calibrate_diameter(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
) -> Generator[Progress, None, Calibration]:
    """Score ``model`` with each image's objects rescaled to every candidate diameter.

    Yields a :class:`Progress` per (candidate, image); returns a :class:`Calibration`.
    The model's own threshold and minimum size are used (the minimum size follows the scale).
    """
    threshold, min_size = model.resolve_postprocessing(None, None)
    seed_fraction = model.postprocessing["seed_fraction"]
    pairs = [(img, lab, median_diameter(lab)) for img, lab in zip(images, labels)]
    pairs = [(img, lab, d) for img, lab, d in pairs if d is not None]
    if not pairs:
        raise ValueError("No validation image holds an object: nothing to calibrate on.")
    total, done = len(candidates) * len(pairs), 0
    means = []
    for target in candidates:
        scores = []
        for image, truth, diameter in pairs:
            scale = target / diameter
            probs = yield from iter_predict_probabilities(model, resize_image(image, scale), diameter="native")
            probs = resize_probabilities(probs, truth.shape)
            found = probabilities_to_labels(probs, threshold, min_size_at(min_size, scale), model.representation,
                                            min_seed=min_size_at(seed_pixels(seed_fraction, target), scale))
            scores.append(average_precision(truth, found))
            done += 1
            yield Progress(done, total, message=f"diameter {target:g} px, image {len(scores)}/{len(pairs)}")
        means.append(float(np.mean(scores)))
    return Calibration(tuple(float(c) for c in candidates), tuple(means))


def iter_tune_postprocessing_by_kind(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    thresholds: Sequence[float],
    min_sizes: Sequence[int],
    seed_fractions: Sequence[float],
    *,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
    **engine_options,
) -> Generator[Progress, None, dict[str, dict]]:
    """Post-processing of its own for each kind of image, for ``metadata["postprocessing_by_kind"]``.

    The images (with their ground truth ``labels``; the model's *training* images, so that its
    validation images still judge the result) are grouped by
    :func:`~napari_unet.core.modality.image_modality`, as inference will tell them. Each image
    is segmented once as a user gets it (automatic diameter, the model's general post-processing);
    then every threshold x minimum size x seed fraction re-runs only the instance extraction.
    A kind keeps the setting with the best mean AP@0.5 when it has :data:`KIND_MIN_IMAGES` images
    and beats the general setting by :data:`KIND_MARGIN` on them; at most :data:`KIND_MAX_IMAGES`
    per kind are used (a sample drawn with ``seed``). ``kinds``: the kinds to tune (default all).

    Yields a :class:`Progress` per image segmented; returns ``{kind: {"threshold", "min_size",
    "seed_fraction", "n_images", "ap50", "ap50_general"}}`` for the kinds that keep a setting.
    """
    from .instances import _remove_small_and_relabel
    from .modality import image_modality
    from .predict import PlaneResult, iter_planes

    if model.diameter is None or model.representation != "bg-interior-boundary":
        return {}  # seeds and sizes follow the object diameter: nothing to tune per kind without it
    general_model = model.copy() if "postprocessing_by_kind" in model.metadata else model
    general_model.metadata.pop("postprocessing_by_kind", None)  # tuned against the general setting alone
    general = general_model.postprocessing
    groups: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image_modality(np.asarray(image)).kind, []).append(i)
    rng = np.random.default_rng(seed)
    chosen = {kind: sorted(rng.choice(idx, KIND_MAX_IMAGES, replace=False).tolist())
              if len(idx) > KIND_MAX_IMAGES else idx
              for kind, idx in sorted(groups.items())
              if len(idx) >= KIND_MIN_IMAGES and (kinds is None or kind in kinds)}
    total, done = sum(len(idx) for idx in chosen.values()), 0
    out: dict[str, dict] = {}
    for kind, idx in chosen.items():
        planes = []
        for i in idx:
            for item in iter_planes(general_model, images[i], diameter="auto", labels=False, **engine_options):
                if isinstance(item, PlaneResult):
                    planes.append((labels[i], item))
            done += 1
            yield Progress(done, total, message=f"{kind} image {len(planes)}/{len(idx)}")
        scores = {}
        for t in thresholds:
            for f in seed_fractions:
                found = [probabilities_to_labels(
                    r.probabilities, t, 0, model.representation,
                    min_seed=min_size_at(seed_pixels(f, model.diameter), r.scale))[r.inner] for _, r in planes]
                for m in min_sizes:
                    scores[(t, m, f)] = float(np.mean([
                        average_precision(truth, _remove_small_and_relabel(lab, min_size_at(m, r.scale)))
                        for (truth, r), lab in zip(planes, found)]))
        base = (general["threshold"], general["min_size"], general["seed_fraction"])
        if base not in scores:  # a general setting off the grid: score it too
            (t, m, f) = base
            scores[base] = float(np.mean([average_precision(truth, r.relabel(t, m).labels) for truth, r in planes]))
        best = max(scores, key=lambda key: (scores[key], key == base))
        if scores[best] >= scores[base] + KIND_MARGIN:
            t, m, f = best
            out[kind] = {"threshold": float(t), "min_size": int(m), "seed_fraction": float(f), "n_images": len(planes),
                         "ap50": round(scores[best], 4), "ap50_general": round(scores[base], 4)}
    return out
