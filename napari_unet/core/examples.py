"""Training examples: labelled planes checked and normalised, and the part held out to validate.

:func:`prepare_examples` turns image/label pairs into :class:`TrainingExample` objects
(normalised the way prediction does), :func:`split_examples` holds out whole planes or an
edge band of each plane, and :func:`training_split` puts both together for a run.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet._shapes import is_rgb

from .checkpoint import SegmentationModel
from .labels import check_labels, check_labels_not_an_image, compact_ids
from .preprocess import (
    bright_outliers_level,
    clipped_at,
    fill_missing,
    is_constant,
    prepare_plane,
    without_camera_artefacts,
)
from .scale import count_objects  # (also re-exported: the examples' object count)
from .stack import check_finite, in_float32_range

log = logging.getLogger(__name__)

MIN_PLANE_SIZE = 8
#: A held-out part with fewer labelled objects than this is not held out: one object's loss
#: picks weights by chance, and training loses one of very few objects. Measured with 2, 4 of 8
#: C2C12 cells and 2, 5 of 30 SIM+ nuclei labelled (benchmarks/RESULTS.md, "Very few labelled
#: cells"): training on all of them and keeping the last weights did as well or better.
MIN_HELD_OUT_OBJECTS = 2


@dataclass
class TrainingExample:
    """One labelled plane, ready for training."""

    image: np.ndarray  # (C, H, W) float32 normalised
    labels: np.ndarray  # (H, W) int32
    source: int  # index of the input plane
    scale: float = 1.0  # factor the plane was rescaled by to reach the model's object size
    #: (H, W) bool: the pixels whose class is known, for a plane labelled in part (see
    #: :mod:`napari_unet.core.partial`) or holding no data in places (NaN, a mosaic's black border:
    #: :func:`~napari_unet.core.preprocess.fill_missing`); None: every pixel (what is not labelled
    #: is background)
    known: np.ndarray | None = None
    #: Whether ``known`` says the plane was labelled in part (not only where it holds no data).
    in_part: bool = False
    #: Its labels held one value over separate pieces (a mask), each piece made an object of its own.
    from_mask: bool = False

    def part(self, rows: slice, cols: slice) -> TrainingExample:
        """The example cut to ``rows`` x ``cols`` (views, not copies)."""
        known = None if self.known is None else self.known[rows, cols]
        return TrainingExample(self.image[:, rows, cols], self.labels[rows, cols], self.source, self.scale, known,
                               self.in_part, self.from_mask)


def _as_list(images: Any, labels: Any) -> tuple[list, list]:
    if isinstance(images, np.ndarray) and isinstance(labels, np.ndarray):
        lab = np.asarray(labels)
        if lab.ndim == 2:
            return [images], [labels]
        if lab.ndim == 3:
            return list(images), list(labels)
    if images is None or labels is None:
        raise ValueError("Give images and labels to train on (lists of 2D planes).")
    return list(images), list(labels)


def _colour_segmented(model: SegmentationModel, img: np.ndarray, colour: int | str | None = "auto") -> np.ndarray:
    """What prediction segments of an RGB image (its pixels without data filled) given ``colour`` (as
    :func:`~napari_unet.core.predict.iter_planes` takes it): for "auto" (or None) and a 1-channel model,
    the nuclear colour of a fluorescence merge or an immunohistochemistry image without its DAB (see
    :func:`~napari_unet.core.channels.colour_to_segment`), else ``img`` (a model fine-tuned on the mean
    of the colours, nuclei and cytoplasm, was then given the nuclear colour alone), or for a model
    fine-tuned on one colour (``model.colour``) that one; "mean": ``img``; a colour (0, 1, 2) or
    "without DAB": that, whatever the model (as prediction gives it)."""
    if not is_rgb(img.shape):
        return img
    from .channels import chosen_colour, colour_choice, colour_plane, colour_to_segment

    chosen = chosen_colour(colour_choice(colour, rgb=True))  # (None for "auto")
    if chosen is None:
        chosen = model.colour  # (as prediction segments it)
    if chosen is None:
        if model.in_channels != 1:
            return img
        chosen = colour_to_segment(img)
    return img if chosen is None or chosen == "mean" else colour_plane(img, chosen)


#: :attr:`TrainingSplit.colour` of examples without RGB images: the model keeps its own colour.
INHERITED = "inherited"


def _common_colour(model: SegmentationModel, images: Sequence[np.ndarray],
                   colours: Sequence[int | str | None] | None) -> Any:
    """What all the RGB ``images`` were learnt from when it is one thing (see :attr:`TrainingSplit.colour`)."""
    from .channels import chosen_colour

    given = ["auto"] * len(images) if colours is None else list(colours)
    rgb = [c for img, c in zip(images, given, strict=True) if is_rgb(np.shape(img))]
    if not rgb:
        return INHERITED
    used = {chosen_colour(c) if chosen_colour(c) is not None else model.colour for c in rgb}
    return used.pop() if len(used) == 1 else None


def prepare_examples(
    model: SegmentationModel, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], what: str = "training",
    colours: Sequence[int | str | None] | None = None,
) -> list[TrainingExample]:
    """Check image/label pairs, bring them to the model's object size (see :func:`at_model_scale`)
    and normalise the images the way prediction does; ``colours``: of each RGB image, what is segmented
    (``colour`` of :func:`~napari_unet.core.predict.iter_planes`: the colour the user chose to segment
    it by; None: "auto" for every image).

    Raises
    ------
    ValueError
        No examples, different counts, mismatched shapes, non-integer or negative labels.
    """
    images, labels = _as_list(images, labels)
    if len(images) == 0:
        raise ValueError(
            f"No {what} examples: give at least one image with its labels (draw or correct some objects first)."
        )
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label images; give one label image per image.")
    colours = ["auto"] * len(images) if colours is None else list(colours)
    if len(colours) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(colours)} colours; give one colour per image.")
    out = []
    for i, (img, lab, colour) in enumerate(zip(images, labels, colours, strict=True)):
        img = np.asarray(img)
        # (infinite values ended the run after its start with numpy's warnings and "before segmenting";
        # float64 values beyond float32's range became infinite)
        check_finite(img, f" (example {i + 1})", before="training")
        img = in_float32_range(img)
        lab = check_labels(lab, name=f"labels of example {i + 1}")
        try:
            check_labels_not_an_image(lab, f"The label image of example {i + 1}")
        except ValueError as error:
            raise ValueError(f"{error} Are the images and the labels given the other way round?") from None
        lab = compact_ids(lab)
        split = _objects_of_a_mask(lab, f"example {i + 1}")
        from_mask, lab = split is not lab, split
        _check_background_not_labelled(lab, f"example {i + 1}")
        if img.shape[:2] != lab.shape:
            raise ValueError(
                f"Example {i + 1}: the image is {img.shape[:2]} but its labels are {lab.shape}; "
                "they must cover the same pixels."
            )
        if min(lab.shape) < MIN_PLANE_SIZE:
            raise ValueError(
                f"Example {i + 1} is only {lab.shape} pixels; training needs planes of at least "
                f"{MIN_PLANE_SIZE} x {MIN_PLANE_SIZE}."
            )
        # pixels without data filled (NaN, a mosaic's black border; nothing is learnt there), hot
        # pixels set to their neighbours' level before the rescale blurs them and a few objects far
        # brighter than the labelled ones clipped, as for prediction
        # (filled before the colour is told, as prediction does: a black border or NaN taken for stain)
        img, missing = fill_missing(img)
        if missing is not None and missing.all():  # (the sampler failed on it: "high <= 0")
            raise ValueError(f"Example {i + 1} holds no data at all (NaN only, or the black fill of a "
                             "mosaic): leave it out.")
        img = _colour_segmented(model, img, colour)
        if is_constant(img) and lab.any():  # (trained on, and saved: "val AP 0.000", nothing said)
            raise ValueError(f"Example {i + 1}: the image has one value everywhere (an empty frame, or another "
                             "channel or colour than the cells' chosen), but its labels hold objects: nothing to "
                             "learn from. Pair the labels with the image they outline.")
        img = without_camera_artefacts(img)
        if (level := bright_outliers_level(img, lab)) is not None:  # clipped as prediction clips them
            img = clipped_at(img, level)
        img, lab, scale = at_model_scale(model, img, lab)
        known = None
        if missing is not None:
            from skimage.transform import resize

            known = ~(missing if missing.shape == lab.shape else resize(missing, lab.shape, order=0, anti_aliasing=False))
        chw = prepare_plane(img, model.in_channels, model.normalization)
        out.append(TrainingExample(chw, lab.astype(np.int32, copy=False), i, scale, known, from_mask=from_mask))
    return out


#: A labels plane with one id is split into its pieces only when at least two of them have a real
#: size: this many pixels, and this fraction of the largest piece.
MASK_PIECE_MIN_PX = 4
MASK_PIECE_MIN_FRACTION = 0.05


def _objects_of_a_mask(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels holding one id over several separate pieces are a mask (e.g. 0/255, or every cell
    painted with label 1), not instance labels: each piece becomes an object of its own, with a
    warning (touching cells stay one object). Trained on as one object, such a mask taught the
    model neither the cells' borders with each other nor their number."""
    ids = np.unique(labels[labels != 0])
    if len(ids) != 1:
        return labels
    from scipy import ndimage as ndi

    pieces, n = ndi.label(labels != 0, structure=np.ones((3, 3), bool))  # diagonal pixels join
    if n < 2:
        return labels
    areas = np.bincount(pieces.ravel())[1:]
    # one cell and a stray brush pixel is not a mask of several cells: pieces of a real size count
    if np.count_nonzero(areas >= max(MASK_PIECE_MIN_PX, MASK_PIECE_MIN_FRACTION * areas.max())) < 2:
        return labels
    log.warning("The labels of %s hold one value (%s) over %d separate objects, like a mask: each separate "
                "piece is taken as an object of its own (touching cells stay one; give one id per cell to "
                "separate them).", where, ids[0], n)
    return pieces.astype(np.int32)


#: An object touching all four edges of its plane, covering more than this share of it and holding
#: :data:`BACKGROUND_OBJECT_HOLES` separate unlabelled parts or more inside is no cell: the background
#: labelled (a mask inverted, cells 0 and the rest 255; a tool's background id 1), its holes the cells.
#: (One cell filling a tile, a muscle fibre or an adipocyte at high magnification, holds none.)
BACKGROUND_OBJECT_SHARE = 0.5
BACKGROUND_OBJECT_HOLES = 2
#: An object touching all four edges around this many unlabelled parts or more, more than there are
#: other objects, is a mask of membranes or cell borders (1 on the membranes, the cells 0: an electron
#: microscopy convention), whatever its share: trained on as one object, shrunk to the model's scale.
MEMBRANE_OBJECT_HOLES = 10


def _check_background_not_labelled(labels: np.ndarray, where: str) -> None:
    """Refuse labels whose background is labelled as an object (:data:`BACKGROUND_OBJECT_SHARE`):
    trained on, an inverted 0/255 mask taught the model to take 78% of an image for cells, and
    fine-tuning said nothing but "only 1 labelled object"."""
    if labels.ndim != 2 or not labels.size:
        return
    edges = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    around = set(np.unique(edges[0]).tolist())
    for edge in edges[1:]:
        around &= set(np.unique(edge).tolist())
    for value in around - {0}:
        region = labels == value
        share = float(np.count_nonzero(region)) / labels.size
        holes = _holes(labels, region)
        if share > BACKGROUND_OBJECT_SHARE and holes >= BACKGROUND_OBJECT_HOLES:
            raise ValueError(
                f"The labels of {where} hold one object ({value}) over {share:.0%} of the image, touching all four "
                "edges: the background labelled? (a mask inverted, the cells 0; or a tool's background id). "
                "Label the cells, with 0 for the background.")
        if holes >= MEMBRANE_OBJECT_HOLES and holes > np.count_nonzero(np.unique(labels)) - 1:  # (other objects)
            raise ValueError(
                f"The labels of {where} hold one object ({value}) touching all four edges around {holes} unlabelled "
                "parts: a mask of membranes or cell borders? Label the cells (the parts between the membranes), "
                "with 0 for the membranes and the background.")


def _holes(labels: np.ndarray, region: np.ndarray) -> int:
    """The parts of a plane outside ``region`` (a boolean mask of one object of ``labels``) that it
    encloses (they do not reach the plane's edge) and that are cells of an inverted mask or of a
    background id: wholly unlabelled, or holding objects that touch the region or lie a one-pixel line
    from it. (A cell within a ring of unlabelled membrane, inside a large profile of an electron
    micrograph, is no hole of it: real crops of such images were refused.)"""
    from scipy import ndimage as ndi

    outside, n = ndi.label(~region)
    enclosed = np.ones(n + 1, bool)  # per part (0: the region itself)
    for edge in (outside[0], outside[-1], outside[:, 0], outside[:, -1]):
        enclosed[edge] = False
    enclosed[0] = False
    if not enclosed.any():
        return 0
    labelled = np.bincount(outside[labels != 0], minlength=n + 1)  # labelled pixels of each part
    # labelled pixels touching the region, or across a line of one pixel (a watershed's dams between a
    # tool's background id and its cells); a ring of membrane, thicker, keeps its cell apart
    rim = ndi.binary_dilation(region, iterations=2) & ~region & (labels != 0)
    touching = np.zeros(n + 1, bool)
    touching[outside[rim]] = True
    return int(np.count_nonzero(enclosed & ((labelled == 0) | touching)))


def at_model_scale(model: SegmentationModel, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """An example rescaled so that its objects (median diameter from its own labels) have the size
    the model segments at, as prediction rescales images (image linear, labels nearest)."""
    from skimage.transform import resize

    from .scale import object_diameters, resize_image, scaled_shape

    size = model.object_size
    diameters = object_diameters(labels)  # specks left out
    scale = size.scale_for(float(np.median(diameters)) if diameters.size else None) if size is not None else 1.0
    if scale == 1.0 or min(scaled_shape(labels.shape, scale)) < MIN_PLANE_SIZE:
        return image, labels, 1.0
    shape = scaled_shape(labels.shape, scale)
    small = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    return resize_image(image, scale), small, scale


def has_objects(examples: Sequence[TrainingExample]) -> bool:
    """True when at least one example holds an object."""
    return any(bool(e.labels.max() > 0) for e in examples)


def split_examples(
    examples: list[TrainingExample], val_fraction: float, rng: np.random.Generator
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Training and validation parts: whole planes if there are enough, else a band of each.

    With ``n`` planes and ``k = floor(n * val_fraction)``: if ``k >= 1`` and the remaining
    planes hold objects, ``k`` random planes are held out; otherwise a band of every plane
    (``val_fraction`` of one side, along one of its four edges) is held out and training
    crops never see it. The band is the edge strip whose objects come closest to
    ``val_fraction`` of the plane's objects while leaving some to train on (see
    :func:`choose_band`): a band of pure background would measure nothing but false
    positives, and would keep the base model whenever it predicts nothing there.
    Nothing is held out when the held-out part would hold fewer than
    :data:`MIN_HELD_OUT_OBJECTS` objects (a few labelled cells: all are trained on).
    """
    if not 0 <= val_fraction < 1:  # (NaN too; a negative one read as "no validation" before)
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if val_fraction == 0:
        return examples, []
    n = len(examples)
    k = int(math.floor(n * val_fraction + 1e-9))
    # planes are held out among those with objects (an empty corrected slice held out measured
    # nothing, and nothing was held out at all)
    with_objects = [i for i, e in enumerate(examples) if has_objects([e])]
    if 1 <= k < n and k <= len(with_objects):
        order = (rng.permutation(n) if len(with_objects) == n
                 else np.asarray(with_objects)[rng.permutation(len(with_objects))])
        held = set(int(i) for i in order[:k])
        val = [examples[i] for i in sorted(held)]
        train = [e for i, e in enumerate(examples) if i not in held]
        if has_objects(train):
            return _enough_held_out(examples, train, val)
    train, val = [], []
    for e in examples:
        # an empty slice keeps no band: one speck there scored 0 and outweighed every cell of the others
        band = choose_band(e.labels, val_fraction) if has_objects([e]) else None
        if band is None:
            train.append(e)
            continue
        axis, start, stop = band
        keep = (slice(0, start) if start > 0 else slice(stop, None))
        take = slice(start, stop)
        every = slice(None)
        if axis == 0:
            train.append(e.part(keep, every))
            val.append(e.part(take, every))
        else:
            train.append(e.part(every, keep))
            val.append(e.part(every, take))
    return _enough_held_out(examples, train, val)


def _enough_held_out(
    examples: list[TrainingExample], train: list[TrainingExample], val: list[TrainingExample]
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """``(train, val)``, or every example and nothing held out when ``val`` holds too few objects."""
    if sum(count_objects(e.labels) for e in val) < MIN_HELD_OUT_OBJECTS:
        return examples, []
    return train, val


def choose_band(labels: np.ndarray, val_fraction: float) -> tuple[int, int, int] | None:
    """The validation band of one plane as ``(axis, start, stop)``, or None if too small.

    Candidates are the four edge strips, ``val_fraction`` of the side they cut (the
    longer side's strips first, the far end before the near one: the order used when
    objects do not decide). An object counts for a strip when most of its pixels lie in
    it. The chosen strip holds at least one object and leaves at least one to train on
    if any strip can; among those, the one whose count is closest to ``val_fraction``
    of all objects.
    """
    h, w = labels.shape
    axes = (0, 1) if h >= w else (1, 0)
    candidates = []
    for axis in axes:
        length = labels.shape[axis]
        if length < 2 * MIN_PLANE_SIZE:
            continue
        size = int(round(length * val_fraction))
        size = min(max(size, MIN_PLANE_SIZE), length - MIN_PLANE_SIZE)
        candidates += [(axis, length - size, length), (axis, 0, size)]
    if not candidates:
        return None
    sizes = np.bincount(labels.ravel())
    n_objects = int(np.count_nonzero(sizes[1:]))
    if n_objects == 0:
        return candidates[0]
    target = max(1.0, val_fraction * n_objects)

    def rank(band: tuple[int, int, int]) -> tuple[int, float]:
        axis, start, stop = band
        part = labels[start:stop] if axis == 0 else labels[:, start:stop]
        inside = np.bincount(part.ravel(), minlength=sizes.size)
        held = int(np.count_nonzero(2 * inside[1:] > sizes[1:]))
        usable = held >= 1 and n_objects - held >= 1
        # unusable strips: prefer the one taking fewest objects away from training
        return (0, abs(held - target)) if usable else (1, float(held))

    return min(candidates, key=rank)  # min() keeps the first of equals: the default order


@dataclass
class TrainingSplit:
    """The examples of a run: all of them, the part trained on and the part held out.

    ``kind`` is how the held-out part was made: "explicit" (given), "planes", "band" or
    "none" (nothing held out). ``notes``: what the user should hear about the examples
    before training (see ``mark`` in :func:`training_split`).
    """

    examples: list[TrainingExample]
    train: list[TrainingExample]
    val: list[TrainingExample]
    kind: str
    notes: list[str] = field(default_factory=list)
    #: what of the RGB images was learnt from, where all of them were given the same (0, 1, 2, "mean",
    #: "without DAB"; the model's own colour counts for "auto"); None where they were told one by one or
    #: given different ones; :data:`INHERITED` without RGB images (the model's own stands)
    colour: Any = INHERITED

    @property
    def partial(self) -> list[int]:
        """Input planes (indices) learnt from in part: only where their class is known."""
        return sorted({e.source for e in self.examples if e.in_part})

    @functools.cached_property
    def labels_diameter(self) -> float:
        """The median object diameter of all the examples' labels as they are (:func:`~napari_unet.core.
        calibrate.training_diameter`): the object size a model of none learns at. Measured once (the
        validation's setting and the model's record both ask for it)."""
        from .calibrate import training_diameter

        return training_diameter([e.labels for e in self.examples])


def training_split(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray] | None,
    val_labels: Sequence[np.ndarray] | None,
    val_fraction: float,
    rng: np.random.Generator,
    mark: Callable[[list[TrainingExample]], list[str]] | None = None,
    colours: Sequence[int | str | None] | None = None,
) -> TrainingSplit:
    """Prepare the examples and hold out a validation part (explicit, or see :func:`split_examples`).

    ``mark``: called on the prepared examples (and on explicit validation examples) before
    the split, e.g. to give the examples labelled in part their ``known`` mask
    (:func:`napari_unet.core.partial.mark_partial`); the notes it returns are the split's.
    ``colours``: see :func:`prepare_examples` (of ``images``; explicit validation images are told "auto").

    Raises
    ------
    ValueError
        Bad examples (see :func:`prepare_examples`), or no object in any label image.
    """
    examples = prepare_examples(model, images, labels, colours=colours)
    colour = _common_colour(model, images, colours)
    if not has_objects(examples):
        raise ValueError(
            "Nothing to learn from: every label image is empty (only background). "
            "Label or correct at least one object before fine-tuning."
        )
    notes = mark(examples) if mark is not None else []
    masks = [e.source + 1 for e in examples if e.from_mask]
    if masks:  # (a warning in the log alone: the GUI's user never heard it)
        which = f"example {masks[0]}" if len(masks) == 1 else f"examples {', '.join(map(str, masks[:10]))}"
        notes.insert(0, f"the labels of {which} hold one value over separate objects, like a mask: each separate "
                        "piece is taken as an object of its own (touching cells stay one; give each cell its own id "
                        "to separate them).")
    if val_images is not None or val_labels is not None:
        train = examples
        val = prepare_examples(model, val_images or [], val_labels or [], what="validation")
        if mark is not None:
            mark(val)  # (said for the training examples; validation ones are only scored where known)
        kind = "explicit"
    else:
        train, val = split_examples(examples, val_fraction, rng)
        kind = "none" if not val else ("planes" if len(train) < len(examples) else "band")
        if val_fraction > 0 and not val:
            n = sum(count_objects(e.labels) for e in examples)
            small = all(choose_band(e.labels, val_fraction) is None for e in examples)  # (no band to take)
            why = "the slices are too small to hold a part out" if small else (
                f"only {n} labelled {'object' if n == 1 else 'objects'}, too few to hold some out")
            notes.append(f"nothing held out to check the model ({why}): it learns from everything labelled "
                         "and the last weights are kept.")
    if not has_objects(train):
        train = examples  # every object fell in the validation part: train on all
        log.warning("All labelled objects are in the validation part; training on everything.")
    return TrainingSplit(examples, train, val, kind, notes, colour)
