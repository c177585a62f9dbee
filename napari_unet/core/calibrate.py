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
from .scale import equivalent_diameters, median_diameter, min_size_at, resize_image, resize_probabilities

#: Mean AP@0.5 differences below this are taken as ties (see :attr:`Calibration.best`).
CALIBRATION_MARGIN = 0.02
#: Object diameters (pixels) tried by default.
DEFAULT_CANDIDATES = (10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0, 28.0)

__all__ = ["DEFAULT_CANDIDATES", "Calibration", "iter_calibrate_diameter", "training_diameter"]


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
    diameters = np.concatenate([equivalent_diameters(lab) / s for lab, s in zip(labels, scales)] or [np.zeros(0)])
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
