"""Training slices labelled in part: learning from the labelled cells only.

A biologist who draws a few cells on an empty labels layer (rather than correcting a full
segmentation) leaves most cells of the slice unlabelled. Taken as they are, those pixels
are learnt as background and teach the model to miss cells (C2C12, 2 of 8 cells labelled:
AP@0.5 0.50 -> 0.00 after fine-tuning, while the held-out part of the same labels agreed).

Such an example gets a *known* mask (:attr:`TrainingExample.known`, see
:func:`known_region`): the labelled objects, a ring of background around them, and the
background far from every object the starting model finds, less the objects it finds away
from every labelled one (cells most likely left out). Pixels outside it weigh nothing in
the loss, patches are centred on it, and validation scores only what it covers
(:mod:`~napari_unet.core.validation`). The far background matters: trained on the labelled
cells and their surroundings alone, the 'cells' model fine-tuned on 4 of C2C12 frame 0's 8
cells split cells and found debris on the other frames (AP@0.5 0.498 -> 0.264; with the far
background 0.525 and 0.642 for two draws of the 4 cells; every unlabelled pixel taken as
background: 0.000). A cell that the starting model misses and nobody labels is learnt as
background: such cells are the ones to label.

Which examples get one follows ``labelled``:

* ``"all"``: every cell is labelled; what is not labelled is background (no mask);
* ``"some"``: every example is labelled in part;
* ``"auto"`` (default): examples where the starting model finds at least
  :data:`PARTIAL_MIN_UNLABELLED` objects, and :data:`PARTIAL_FACTOR` times as many as are
  labelled, away from every labelled one (:func:`mark_partial` says which, in a note per example).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import SegmentationModel

log = logging.getLogger(__name__)

LABELLED_CHOICES = ("auto", "all", "some")

#: The starting model finding at least this many objects where nothing is labelled in a training
#: example (and PARTIAL_FACTOR times as many as are labelled there) says the example was labelled in part.
PARTIAL_MIN_UNLABELLED = 3
#: A corrected segmentation is labelled in full, yet the model finds again the false positives the
#: user deleted, away from every labelled cell: with "as many as are labelled", 4 of 10 fully
#: labelled DSB2018 images of the rarer kinds and 1 of 4 C2C12 frames were taken as labelled in part
#: (their deletions never learnt); with twice as many, 1 of 10 and none (60 of 60 DSB grey and colour
#: images, 44 Usiigaci, 10 BBBC030, 10 SIM+ frames: none either way). A user who labels more than
#: about a third of the cells of a slice says so (labelled="some").
PARTIAL_FACTOR = 2

#: Background known around a labelled object: this fraction of the model's object diameter
#: (at least RING_MIN_PX pixels), the cells' own surroundings.
RING_FRACTION = 0.5
RING_MIN_PX = 4

#: A found object is "away from every labelled one" when it does not come within this many
#: pixels of a labelled pixel.
NEAR_PX = 2

#: Examples the starting model looks at in "auto" mode (one network pass each), and the largest.
AUTO_LIMIT = 8
AUTO_LARGEST = 2048 * 2048


def check_labelled(labelled: str) -> str:
    """``labelled`` if it is one of :data:`LABELLED_CHOICES`, else ValueError."""
    if labelled not in LABELLED_CHOICES:
        raise ValueError(f"labelled must be one of {', '.join(LABELLED_CHOICES)}, got {labelled!r}.")
    return labelled


def ring_width(model: SegmentationModel, labels: np.ndarray) -> int:
    """Pixels of known background around each labelled object of an example: half the labelled
    objects' median diameter (the model's own when nothing is labelled), at least RING_MIN_PX."""
    from .scale import object_diameters

    sizes = object_diameters(labels)
    diameter = float(np.median(sizes)) if sizes.size else float(model.diameter or 0.0)
    return max(RING_MIN_PX, int(round(RING_FRACTION * diameter)))


def known_region(labels: np.ndarray, ring: int, left_out: np.ndarray | None = None,
                 found: np.ndarray | None = None) -> np.ndarray:
    """The pixels whose class is known: labelled objects, ``ring`` pixels of background around
    them and, given the objects the starting model ``found``, what lies further than ``ring``
    from all of them; less ``left_out`` (pixels of objects nobody labelled; never a labelled pixel)."""
    from scipy import ndimage as ndi

    objects = labels > 0
    known = ndi.distance_transform_edt(~objects) <= ring if objects.any() else objects.copy()
    if found is not None:
        known |= ndi.distance_transform_edt(found == 0) > ring if found.any() else True
    if left_out is not None:
        known &= ~left_out
    return known | objects


@dataclass
class Unlabelled:
    """What the starting model finds in a training example beside the labelled objects."""

    count: int  # objects found away from every labelled one
    mask: np.ndarray  # pixels of the objects found that are not labelled ones, grown by NEAR_PX (bool)
    found: np.ndarray  # every object found (labels)


def find_unlabelled(model: SegmentationModel, image: np.ndarray, labels: np.ndarray,
                    has_data: np.ndarray | None = None) -> Unlabelled:
    """Objects the starting model finds in a (C, H, W) example that are not labelled ones (on the
    device its network is on); ``has_data``: where the example holds data (None: everywhere), the
    objects found mostly elsewhere (in a mosaic's black border, filled) left out.

    ``count``: those that no labelled object comes within NEAR_PX of (what tells a plane labelled
    in part). ``mask``: every found object that is not mostly labelled, touching or not (a
    neighbour of a labelled cell in a crowded field must not be learnt as background), grown by
    NEAR_PX, less the labelled pixels. The objects are made as the model makes its own (its threshold,
    minimum size and smallest seed): with the defaults, specks the user never saw counted (14 objects
    found on a C2C12 frame where Segment showed 9, the 2 the user deleted among them), and the frame
    was taken for one labelled in part."""
    from scipy import ndimage as ndi

    from .instances import probabilities_to_labels
    from .optimise import evaluation_mode
    from .validation import forward_plane, where_known

    device = next(model.net.parameters()).device
    post = model.postprocessing_for(None)  # (the example is at the model's scale, where its sizes are)
    with evaluation_mode(model.net), torch.inference_mode():
        probs = forward_plane(model.net, image, device)
    found = probabilities_to_labels(probs, float(post["threshold"]), int(post["min_size"]), model.representation,
                                    model.min_seed)
    found = where_known(found, has_data)
    objects = labels > 0
    near = ndi.binary_dilation(objects, iterations=NEAR_PX)
    touching = np.unique(found[near & (found > 0)])
    count = len(np.setdiff1d(np.unique(found[found > 0]), touching))
    area = np.bincount(found.ravel())
    labelled_area = np.bincount(found[objects].ravel(), minlength=area.size)
    other = 2 * labelled_area <= area  # found objects that are not mostly a labelled one
    other[0] = False
    mask = ndi.binary_dilation(other[found], iterations=NEAR_PX) & ~objects
    return Unlabelled(count, mask, found)


def looks_partial(found: Unlabelled, n_labelled: int) -> bool:
    """Whether an example with ``n_labelled`` objects, where the model found ``found``, was labelled in part."""
    return found.count >= max(PARTIAL_MIN_UNLABELLED, PARTIAL_FACTOR * n_labelled)


def mark_partial(model: SegmentationModel, examples: Sequence, labelled: str, untrained: bool = False) -> list[str]:
    """Give the examples labelled in part (as ``labelled`` says, see the module docs) their known
    mask (``example.known``); return the notes to tell the user: each example found labelled in
    part, an empty example where the model finds cells, examples not looked at.

    ``model``: the starting model, on the device to run it on. ``untrained``: it tells nothing
    (training from scratch): "auto" marks nothing and "some" keeps a ring around the labelled
    objects without leaving any found object out; so do planes over :data:`AUTO_LARGEST` pixels
    (the starting model is not run on them).
    """
    from .examples import count_objects

    check_labelled(labelled)
    if labelled == "all" or (labelled == "auto" and untrained):
        return []
    notes = []
    unchecked = []
    for k, example in enumerate(examples):
        n_labelled = count_objects(example.labels)
        too_large = example.labels.size > AUTO_LARGEST
        if labelled == "auto" and (k >= AUTO_LIMIT or too_large):
            unchecked.append(example.source + 1)
            continue
        found = None if untrained or too_large else find_unlabelled(model, example.image, example.labels, example.known)
        if labelled == "auto":
            if n_labelled == 0:
                if found.count >= PARTIAL_MIN_UNLABELLED:
                    notes.append(f"example {example.source + 1} has no labelled object, yet the model finds "
                                 f"{found.count}: all of it is learnt as background. If cells were left unlabelled "
                                 "there, label them or leave the slice out.")
                continue
            if not looks_partial(found, n_labelled):
                continue
        ring = ring_width(model, example.labels)
        if found is None:
            known = known_region(example.labels, ring)
        else:
            known = known_region(example.labels, ring, found.mask, found.found)
        example.known = known if example.known is None else known & example.known  # (and where it holds data)
        example.in_part = True
        share = float(example.known.mean())
        if labelled == "auto":
            notes.append(
                f"example {example.source + 1} looks labelled in part: the model finds {found.count} objects where "
                f"nothing is labelled ({n_labelled} labelled). They are left out: only the labelled cells and the "
                f"background (around them, and where the model finds no cell; {100 * share:.0f}% of the slice) "
                "are learnt from. If every cell is labelled after all, say so (Cells labelled: All; --labelled all)."
            )
        else:
            log.info("Example %d: learning from the labelled cells and the background (%.0f%% of it).",
                     example.source + 1, 100 * share)
    if unchecked:
        which = ", ".join(map(str, unchecked[:5])) + (", ..." if len(unchecked) > 5 else "")
        notes.append(f"examples {which} were not looked at for cells left unlabelled (only the first {AUTO_LIMIT}, "
                     f"of at most {AUTO_LARGEST // 2**20} Mpx, are): they are taken as labelled in full. If they "
                     "are not, say so (Cells labelled: Some; --labelled some).")
    return notes
