"""Training examples for the Fine-tune widget: gathering and checking them.

Plain logic over arrays and napari layers (no Qt): an :class:`Example` is one 2D image plane
with its instance labels; examples come from the planes of an image/labels layer pair
(:func:`examples_from_layers`) or from folders of image and label files
(:func:`examples_from_folders`, paired by :func:`napari_unet.io.pair_images_with_labels`, the
rule ``napari-unet train`` uses), labels are checked to be whole non-negative ids
(:func:`as_label_plane`), and :func:`check_examples` refuses sets that cannot teach anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._shapes import is_rgb
from napari_unet.io._corrected import MASKS_KEY, OBJECTS_3D_KEY, colours_by_slice

from ._base import full_resolution
from ._corrections import CorrectedSlices, format_plane

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One 2D training example: an image plane and its instance labels."""

    image: np.ndarray  # (H, W) or (H, W, 3|4)
    labels: np.ndarray  # (H, W) int32
    source: str  # "c2c12 masks, slice 17"
    #: what of an RGB image is learnt from: the colour its masks were segmented by (Segment's Colour,
    #: :data:`COLOUR_KEY`), as ``colour`` of core's ``iter_planes``
    colour: Any = "auto"
    #: the labels are a plane through 3D objects (masks of 3D objects: :data:`OBJECTS_3D_KEY`), whose
    #: cross-sections measure smaller than the objects (``sections`` of core's ``finetune``)
    sections: bool = False


def colour_metadata(labels: Any, image: Any) -> dict | None:
    """The metadata of the masks ``labels`` that says which colour of ``image`` each slice was
    segmented by (see :data:`~napari_unet.io._corrected.COLOUR_KEY`); None for an image without colours."""
    if not getattr(image, "rgb", False):
        return None
    metadata = getattr(labels, "metadata", None)
    return dict(metadata) if isinstance(metadata, dict) else None


@dataclass
class LayerPairSource:
    """Extra examples from another image/labels layer pair (gathered at Start)."""

    image_name: str
    labels_name: str
    # the layers themselves (behind napari's proxies), so that a renamed layer is still found
    image_layer: Any = field(default=None, compare=False, repr=False)
    labels_layer: Any = field(default=None, compare=False, repr=False)

    @property
    def description(self) -> str:
        return f"layers {self.image_name!r} + {self.labels_name!r}"

    def follow_renames(self) -> None:
        """Take the current names of the layers (a rename in the layer list)."""
        for attr, layer in (("image_name", self.image_layer), ("labels_name", self.labels_layer)):
            if layer is not None:
                setattr(self, attr, layer.name)


@dataclass
class FolderSource:
    """Extra examples read from folders of image and label files (read when added)."""

    image_dir: Path
    labels_dir: Path
    examples: list[Example] = field(default_factory=list)

    @property
    def description(self) -> str:
        return f"folder {self.image_dir.name}/ ({len(self.examples)} examples)"


def as_label_plane(labels: Any, where: str) -> np.ndarray:
    """Labels as int32 (a copy), or raise ``ValueError`` (floats with fractions, negative ids, ...).
    Ids past int32's (another tool's 64-bit labels) are numbered again from 1: an id only names an
    object in its plane (they were refused, where Segment and Correct take them)."""
    arr = _checked_label_plane(labels, where)
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        ids, renumbered = np.unique(arr, return_inverse=True)
        if ids[0] != 0:  # (no background in the plane: ids from 1)
            renumbered = renumbered + 1
        return renumbered.reshape(arr.shape).astype(np.int32)
    return arr.astype(np.int32, copy=True)


def _checked_label_plane(labels: Any, where: str) -> np.ndarray:
    """Labels checked (as they are: no copy of integer labels), or ``ValueError``."""
    from napari_unet.core.labels import check_labels  # lazily: napari_unet.core imports torch

    arr = np.asarray(labels)
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        return arr  # (unsigned: whole, none negative; as_label_plane numbers them again)
    return check_labels(arr, f"labels in {where}", ndim=None)


def _plane_of(data: Any, index: tuple[int, ...], copy: bool = True) -> np.ndarray:
    """The plane ``index`` of ``data`` as an array (a copy; with ``copy=False`` a view of data in memory)."""
    arr = data[index] if index else data
    if hasattr(arr, "compute"):
        arr = arr.compute()
    return np.array(arr, copy=True) if copy else np.asarray(arr)


def held_in_memory(data: Any) -> bool:
    """Whether ``data`` is a numpy array in memory (a plane of it is there at once: not read from a file,
    nor from a memory map of one: masks larger than the memory, see ``_disk_masks``)."""
    return isinstance(data, np.ndarray) and not isinstance(data, np.memmap)


@dataclass
class ExampleToRead:
    """One training example still in its layers' arrays: :meth:`read` copies its planes and checks
    its labels. Fine-tune reads its examples in the training worker (64 corrected 2048 x 2048
    slices held the window 2.6 s; a layer pair opened lazily from its files, 5.6 s)."""

    image_data: Any
    labels_data: Any
    plane: tuple[int, ...]
    source: str
    colour: Any = "auto"  # (see Example.colour)
    sections: bool = False  # (see Example.sections)
    #: (y0, y1, x0, x1) spanned by the user's edits of a model's masks in this plane (see
    #: :func:`unedited_note`); None: not known, or labels that are all the user's
    edited: tuple[int, int, int, int] | None = None

    @property
    def in_memory(self) -> bool:
        return held_in_memory(self.labels_data)

    def checked_labels(self) -> np.ndarray:
        """The plane's labels as they are (a view of labels in memory), checked: ``ValueError``."""
        return _checked_label_plane(_plane_of(self.labels_data, self.plane, copy=False), self.source)

    def read(self) -> Example:
        labels = as_label_plane(_plane_of(self.labels_data, self.plane, copy=False), self.source)  # (one copy)
        return Example(_plane_of(self.image_data, self.plane), labels, self.source, self.colour, self.sections)


@dataclass
class LabelledSlicesToRead:
    """The slices holding labels of a labels stack read lazily from its file (found by reading it
    all, in the training worker): a layer pair given as extra examples without a corrected list."""

    image_data: Any
    labels_data: Any
    name: str  # the labels layer's
    description: str
    colours: dict | None = None  # the labels layer's metadata, for its slices' colours (see colour_metadata)

    @property
    def source(self) -> str:
        return repr(self.name)

    def expand(self, stop: Any = None) -> tuple[list[ExampleToRead], str | None]:
        """Its examples, and the note saying the slices left out (None: none); ``stop`` (an Event) set
        meanwhile: none (a 500-frame stack read from a slow drive took seconds to scan)."""
        from napari_unet.io._corrected import planes_holding_labels

        kept = planes_holding_labels(self.labels_data, stop)
        if stop is not None and stop.is_set():
            return [], None
        colours = colours_by_slice(self.colours)
        examples = [ExampleToRead(self.image_data, self.labels_data, plane, _source(self.name, plane),
                                  colours.get(tuple(plane), "auto")) for plane in kept]
        return examples, empty_slices_note(self.description, len(kept), self.labels_data.shape)


def empty_slices_note(description: str, kept: int, shape: tuple[int, ...]) -> str | None:
    """What is said of the slices without labels of a labels stack left out (None: none)."""
    every = int(np.prod(shape[:-2]))
    if kept >= every:
        return None
    n = every - kept
    return (f"{description}: left out {n} {'slice' if n == 1 else 'slices'} with no labels (never segmented or "
            "drawn, most likely); mark a slice as correct (Corrected slices) to teach that it holds no cells.")


def _source(labels_name: str, plane: tuple[int, ...]) -> str:
    return f"{labels_name!r}" + (f", {format_plane(plane)}" if plane else "")


def read_examples(items: list[Any], stop: Any = None):
    """Generator: the examples of ``items`` read (planes copied, labels checked) one by one, yielding
    :class:`~napari_unet.core.events.Progress` after each and a
    :class:`~napari_unet.core.events.TrainNote` for slices left out; returns the examples, checked
    with :func:`check_examples` (None when ``stop`` was set meanwhile).

    Raises
    ------
    ExamplesError
        Labels that are not whole ids, or examples that cannot teach anything.
    """
    from napari_unet.core.events import Progress, TrainNote

    todo: list[Any] = []
    for item in items:
        if isinstance(item, LabelledSlicesToRead):
            found, note = item.expand(stop)
            if stop is not None and stop.is_set():
                return None
            todo += found
            if note:
                yield TrainNote(note)
        else:
            todo.append(item)
    unedited: list[tuple[str, int, int]] = []
    seen: set[str] = set()  # a layer's slice given twice (a lazy pair also chosen under Corrected slices) counts once
    todo = [item for item in todo if not isinstance(item, ExampleToRead) or not (item.source in seen or seen.add(item.source))]
    examples: list[Example] = []
    for k, item in enumerate(todo):
        if stop is not None and stop.is_set():
            return None
        try:
            examples.append(item.read() if isinstance(item, ExampleToRead) else item)
        except ValueError as exc:
            raise ExamplesError(str(exc)) from None
        if isinstance(item, ExampleToRead) and item.edited is not None:
            unedited.append((item.source, *_objects_away(examples[-1].labels, item.edited)))
        yield Progress(k + 1, len(todo), message=f"Reading the examples: {k + 1}/{len(todo)}…")
    for note in (mixed_colours_note(examples), unedited_note(unedited)):
        if note:
            yield TrainNote(note)
    try:
        check_examples(examples)
    except ValueError as exc:
        raise ExamplesError(str(exc)) from None
    return examples


#: A corrected slice with at least this many of a model's objects away from the user's edits, and more
#: of them than near, is named (see :func:`unedited_note`).
UNEDITED_MIN = 5


def _objects_away(labels: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """(objects with no pixel in ``box``, all objects) of a labels plane."""
    y0, y1, x0, x1 = box
    every = np.unique(labels)
    near = np.unique(labels[y0:y1, x0:x1])
    n_all = int(every.size - (every[0] == 0 if every.size else 0))
    n_near = int(near.size - (near[0] == 0 if near.size else 0))
    return n_all - n_near, n_all


def unedited_note(counts: list[tuple[str, int, int]]) -> str | None:
    """What to say of the corrected slices of a model's masks where most objects lie away from the
    user's edits ((source, objects away, all objects) each; None: none such). A slice is learnt whole:
    a review that corrected 5-10 of a frame's cells and left the rest found them all learnt as right,
    and every cell the model missed there as background, with nothing said."""
    many = [(source, away, n) for source, away, n in counts if away >= UNEDITED_MIN and 2 * away > n]
    if not many:
        return None
    shown = "; ".join(f"{source}: {away} of {n}" for source, away, n in many[:4]) + ("; ..." if len(many) > 4 else "")
    return (f"most of the model's objects in {len(many)} corrected slice(s) lie away from your edits ({shown}). "
            "Every object of a corrected slice is learnt as right, and any cell not drawn there as background: "
            "fine if you checked them; otherwise correct them, or unmark the slice.")


def mixed_colours_note(examples: list[Example]) -> str | None:
    """What to say when the RGB examples were segmented by different colours (Segment's Colour): each
    is learnt from its own (None: one colour, or no RGB example)."""
    from collections import Counter

    from napari_unet.core.channels import COLOUR_NAMES

    rgb = [e.colour for e in examples if is_rgb(np.shape(e.image))]
    counts = Counter(COLOUR_NAMES[c] if isinstance(c, int) else str(c) for c in rgb)
    if len(counts) < 2:
        return None
    said = ", ".join(f"{name}: {n}" for name, n in counts.most_common())
    return (f"the RGB slices were segmented by different colours ({said}): each is learnt from its own; check "
            "Colour in Segment when you segment with the new model")


class ExamplesError(ValueError):
    """The examples cannot be trained on (said as "Cannot start fine-tuning")."""


def _check_pair_shapes(image: Any, labels: Any) -> None:
    """Raise ValueError unless the labels layer covers exactly the image's planes."""
    rgb = bool(getattr(image, "rgb", False))
    image_shape = tuple(image.data.shape[:-1] if rgb else image.data.shape)
    labels_shape = tuple(labels.data.shape)
    if image_shape != labels_shape:
        raise ValueError(
            f"Image {image.name!r} has shape {image_shape} but labels {labels.name!r} have shape "
            f"{labels_shape}; they must have the same shape. Pick the masks made for this image."
        )
    if len(labels_shape) < 2:
        raise ValueError(f"Labels {labels.name!r} must be at least 2D.")


def examples_from_layers(image: Any, labels: Any, planes: list[tuple[int, ...]] | None = None,
                         read: bool = True) -> list[Any]:
    """Training examples from an image layer and a labels layer (Labels or Image layer).

    Parameters
    ----------
    image, labels : napari layers
        Same shape (the image may have an extra RGB axis).
    planes : list of tuples or None
        Plane indices (leading axes) to use; None = every plane.
    read : bool
        Read them now (:class:`Example`); False: :class:`ExampleToRead`, read later.

    Raises
    ------
    ValueError
        Different shapes, or (read now) labels that are not whole numbers.
    """
    _check_pair_shapes(image, labels)
    n_lead = labels.ndim - 2
    if planes is None:
        planes = [tuple(int(i) for i in idx) for idx in np.ndindex(*labels.data.shape[:n_lead])]
    colours = colours_by_slice(colour_metadata(labels, image))
    sections = isinstance(labels.metadata, dict) and bool(labels.metadata.get(OBJECTS_3D_KEY))
    tracker = CorrectedSlices.existing(labels)
    if not (isinstance(labels.metadata, dict) and labels.metadata.get(MASKS_KEY)):  # (not masks napari-unet made)
        tracker = None
    to_read = [ExampleToRead(full_resolution(image), full_resolution(labels), plane, _source(labels.name, plane),
                             colours.get(tuple(plane), "auto"), sections,
                             tracker.edited_box(plane) if tracker is not None else None)
               for plane in planes]
    return [item.read() for item in to_read] if read else to_read


def examples_from_folders(image_dir: str | Path, labels_dir: str | Path,
                          not_corrected: list[tuple[str, int]] | None = None) -> list[Example]:
    """Training examples from a folder of images and a folder of label images.

    Files are paired by :func:`napari_unet.io.pair_images_with_labels` ("a.tif" with "a.tif",
    "a_masks.tif", "a_labels.png", ...; images without labels are left out) and read by
    :func:`napari_unet.io.read_training_pair`, as ``napari-unet train`` reads them: a 2D image (grey
    or RGB) gives one example, a stack one per plane (paired by the axes' names); of masks saved by
    napari-unet with some slices marked corrected, only those (``not_corrected``, when given, gets
    (labels file name, slices left out) for each such file).

    Raises
    ------
    ValueError
        Missing folders, files that do not pair, different shapes, labels that are not integers
        or look like an intensity image.
    """
    from napari_unet.io import pair_images_with_labels, read_training_pair

    examples: list[Example] = []
    for image_path, labels_path in pair_images_with_labels(image_dir, labels_dir):
        # (each plane learnt from the colour its masks were segmented by, when saved from napari)
        planes, left_out = read_training_pair(image_path, labels_path, with_colours=True)
        if left_out and not_corrected is not None:
            not_corrected.append((labels_path.name, left_out))
        for image, labels, source, colour in planes:
            examples.append(Example(image, as_label_plane(labels, source), source, colour))
    return examples


def check_examples(examples: list[Any]) -> None:
    """Raise ValueError when the examples cannot teach the model anything.

    Examples still to be read are checked where their labels are in memory (views, no copy); those
    read from files are checked when read (:func:`read_examples`)."""
    if not examples:
        raise ValueError(
            "No corrected slice yet: correct the masks of at least one slice (brush, eraser, fill) "
            "or press 'Mark current slice as correct', then Start."
        )
    cells = unknown = False
    for ex in examples:
        if isinstance(ex, Example):
            img_shape = ex.image.shape[:2]
            if tuple(img_shape) != tuple(ex.labels.shape):
                raise ValueError(f"{ex.source}: image {ex.image.shape} and labels {ex.labels.shape} differ in size.")
            cells = cells or bool(ex.labels.any())
        elif isinstance(ex, ExampleToRead) and ex.in_memory:
            cells = bool(ex.checked_labels().any()) or cells
        else:
            unknown = True
    if not cells and not unknown:
        raise ValueError(
            "The examples (the corrected slices, and pairs added under More examples) contain no cells (only "
            "background); paint at least one cell "
            "so the model can learn what a cell looks like."
        )
