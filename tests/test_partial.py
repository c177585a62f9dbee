"""Training slices labelled in part (napari_unet.core.partial): a user who draws a few cells on an
empty labels layer must not teach the model that the others are background. Real DSB2018 and
C2C12 images, the shipped models, real fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_unet.core.augment import AugmentConfig
from napari_unet.core.checkpoint import load_model
from napari_unet.core.events import TrainNote, TrainStep, run_to_end
from napari_unet.core.examples import prepare_examples, split_examples
from napari_unet.core.partial import known_region, mark_partial
from napari_unet.core.patches import PatchGeometry, build_patch
from napari_unet.core.targets import TargetRecipe
from napari_unet.core.train import finetune
from napari_unet.core.validation import validation_planes, where_known

def _some(labels: np.ndarray, n: int) -> np.ndarray:
    ids = [i for i in np.unique(labels) if i][:n]
    return np.where(np.isin(labels, ids), labels, 0)


@pytest.fixture(scope="module")
def nuclei():
    return load_model("nuclei", device="cpu")


def test_known_region_is_the_labelled_cells_and_a_ring_less_what_was_left_out():
    labels = np.zeros((40, 40), np.int32)
    labels[10:16, 10:16] = 1
    left_out = np.zeros_like(labels, bool)
    left_out[10:16, 18:24] = True  # an unlabelled cell next to it
    known = known_region(labels, 4, left_out)
    assert known[labels > 0].all()
    assert known[8, 8] and known[13, 17] and not known[13, 20]  # the ring, less the neighbour
    assert not known[30, 30]  # far away: unknown
    assert known_region(labels, 4, None)[13, 19]
    # given what the starting model found (both cells), what is far from all of it is background
    found = labels.copy()
    found[left_out] = 2
    known = known_region(labels, 4, left_out, found)
    assert known[30, 30] and known[2, 38] and not known[13, 20] and not known[13, 26]


def test_a_plane_labelled_in_part_is_told_and_learnt_only_where_known(dsb_fluo_crop, nuclei):
    """2 of the crop's nuclei labelled: the starting model finds the others, so the plane gets a
    known mask (the two nuclei and their surroundings, not the other nuclei) and a note; labelled
    in full, nothing is marked; "all" marks nothing, "some" marks every plane."""
    image, labels = dsb_fluo_crop
    partial = _some(labels, 2)
    examples = prepare_examples(nuclei, [image, image], [partial, labels])
    notes = mark_partial(nuclei, examples, "auto")
    assert len(notes) == 1 and "example 1 looks labelled in part" in notes[0] and "2 labelled" in notes[0]
    known, full = examples[0].known, examples[1].known
    assert full is None and known is not None
    assert known[examples[0].labels > 0].all()
    from skimage.transform import resize

    at_scale = resize(labels, known.shape, order=0, preserve_range=True, anti_aliasing=False)
    others = (at_scale > 0) & (examples[0].labels == 0)
    assert known[others].mean() < 0.2  # the unlabelled nuclei are left out
    assert 0.05 < known.mean() < 0.9

    fresh = prepare_examples(nuclei, [image, image], [partial, labels])
    assert mark_partial(nuclei, fresh, "all") == [] and all(e.known is None for e in fresh)
    assert mark_partial(nuclei, fresh, "some") == [] and all(e.known is not None for e in fresh)
    with pytest.raises(ValueError, match="labelled must be one of"):
        mark_partial(nuclei, fresh, "half")


def test_neighbours_touching_a_labelled_cell_are_left_out_and_empty_or_unchecked_planes_said(
        dsb_fluo_crop, nuclei):
    from napari_unet.core import partial

    image, labels = dsb_fluo_crop
    example = prepare_examples(nuclei, [image], [labels])[0]
    # nuclei labelled whose neighbours touch them: every other object found, touching or not, is left out
    lab = example.labels
    crowded = [i for i in np.unique(lab)[1:]
               if np.setdiff1d(lab[ndi.binary_dilation(lab == i, iterations=2)], [0, i]).size][:3]
    some = np.where(np.isin(lab, crowded), lab, 0)
    result = partial.find_unlabelled(nuclei, example.image, some)
    found = result.found
    inside = np.bincount(found[some > 0].ravel(), minlength=found.max() + 1)
    others = (found > 0) & (inside[found] == 0)
    touching = np.unique(found[ndi.binary_dilation(some > 0, iterations=partial.NEAR_PX) & others])
    assert touching.size >= 1  # (this crop has neighbours touching the labelled nuclei)
    assert result.mask[others].all() and not result.mask[some > 0].any()
    # an empty plane where the model finds nuclei is said; planes after the 8th are said unchecked
    empty = prepare_examples(nuclei, [image], [np.zeros_like(labels)])
    notes = mark_partial(nuclei, empty, "auto")
    assert len(notes) == 1 and "has no labelled object, yet the model finds" in notes[0]
    assert empty[0].known is None
    many = prepare_examples(nuclei, [image] * (partial.AUTO_LIMIT + 1), [labels] * (partial.AUTO_LIMIT + 1))
    notes = mark_partial(nuclei, many, "auto")
    assert notes == [f"examples {partial.AUTO_LIMIT + 1} were not looked at for cells left unlabelled (only the "
                     f"first {partial.AUTO_LIMIT}, of at most 4 Mpx, are): they are taken as labelled in full. If "
                     "they are not, say so (Cells labelled: Some; --labelled some)."]


def test_patches_of_a_plane_labelled_in_part_weigh_nothing_where_unknown(dsb_fluo_crop, nuclei):
    image, labels = dsb_fluo_crop
    example = prepare_examples(nuclei, [image], [_some(labels, 2)])[0]
    mark_partial(nuclei, [example], "some")
    geometry = PatchGeometry(48, 48)
    recipe = TargetRecipe()
    with_unknown = 0
    for seed in range(6):
        img, cls, wts = build_patch(example, seed, geometry, recipe, AugmentConfig())
        assert img.shape == (1, 48, 48) and cls.shape == wts.shape == (48, 48)
        assert (wts > 0).any() and (wts[wts > 0] >= 0.1).all()  # centred on what is known
        with_unknown += bool((wts == 0).any())
    assert with_unknown >= 1
    # without augmentation a patch is a crop of the plane: its zero weights are exactly the unknown pixels
    plane, n, checked = example.image[0], 40, 0
    for seed in range(20):
        img, cls, wts = build_patch(example, seed, PatchGeometry(n, n), recipe, None)
        offsets = [(y, x) for y in range(plane.shape[0] - n + 1) for x in range(plane.shape[1] - n + 1)
                   if np.array_equal(plane[y:y + n, x:x + n], img[0])]
        if len(offsets) == 1:  # (a patch that runs over the edge is mirrored: not a plain crop)
            y, x = offsets[0]
            np.testing.assert_array_equal(wts == 0, ~example.known[y:y + n, x:x + n])
            checked += 1
    assert checked >= 3


def test_validation_scores_only_what_is_known(dsb_fluo_crop, nuclei):
    image, labels = dsb_fluo_crop
    partial = _some(labels, 3)
    known = known_region(partial, 4, (labels > 0) & (partial == 0))
    # the full truth as the prediction: every unlabelled nucleus lies outside what is known
    kept = where_known(labels, known)
    assert set(np.unique(kept)) == set(np.unique(partial))
    assert where_known(labels, None) is labels
    example = prepare_examples(nuclei, [image], [partial])[0]
    example.known = known
    plane = validation_planes([example], TargetRecipe())[0]
    assert plane.known is known and (plane.weights[~known] == 0).all()
    train, val = split_examples([example], 0.3, np.random.default_rng(0))
    assert train[0].known.shape == train[0].labels.shape and val[0].known.shape == val[0].labels.shape


def test_fine_tuning_on_a_few_labelled_cells_does_not_learn_to_miss_the_others(data_dir):
    """A simulated nuclei frame (Cell Tracking Challenge SIM+) with 5 of its 30 nuclei drawn, the
    'nuclei' model fine-tuned on it: with every unlabelled pixel taken as background ("all") the
    model learns to miss nuclei (benchmark, 180 steps: AP@0.5 on other frames 0.815 -> 0.320); told
    per plane ("auto", the default), it keeps finding them (-> 0.989). Same steps and seed for both."""
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment

    images = tifffile.imread(data_dir / "ctc_sim_plus" / "images.tif")
    truth = tifffile.imread(data_dir / "ctc_sim_plus" / "labels.tif").astype(np.int32)
    base = load_model("nuclei", device="cpu")
    ids = np.random.default_rng(0).choice(np.unique(truth[0][truth[0] > 0]), size=5, replace=False)
    partial = np.where(np.isin(truth[0], ids), truth[0], 0)
    found = {}
    for labelled in ("all", "auto"):
        events = []
        tuned = run_to_end(finetune(base, [images[0]], [partial], steps=STEPS, patch_size=128, batch_size=4,
                                    device="cpu", val_fraction=0, labelled=labelled, seed=0), events.append)
        assert sum(isinstance(e, TrainStep) for e in events) == STEPS
        assert any(isinstance(e, TrainNote) for e in events) == (labelled == "auto")
        assert tuned.metadata["training"]["labelled"] == labelled
        assert tuned.metadata["training"]["partial_examples"] == ([1] if labelled == "auto" else [])
        found[labelled] = np.mean([average_precision(truth[i], segment(tuned, images[i], device="cpu"))
                                   for i in (10, 20)])
    assert found["auto"] > found["all"] + 0.2, found


STEPS = 30


def test_a_corrected_segmentation_is_not_taken_for_a_plane_labelled_in_part(data_dir):
    """C2C12 frames labelled in full: the 'cells' model finds again, away from every labelled cell,
    objects a user would delete when correcting (a frame had 14 for 13 labelled). Taken as
    labelled in part, those deletions would never be learnt: 'auto' asks for twice as many."""
    from napari_unet.core.examples import count_objects
    from napari_unet.core.partial import find_unlabelled, looks_partial

    cells = load_model("cells", device="cpu")
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[::3]
    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif").astype(np.int32)[::3]
    seen = []
    for example in prepare_examples(cells, list(images), list(truth)):
        found = find_unlabelled(cells, example.image, example.labels)
        seen.append(found.count)
        assert not looks_partial(found, count_objects(example.labels)), (found.count, count_objects(example.labels))
    assert max(seen) >= 3  # (the model does find objects where nothing is labelled)


def test_a_black_border_is_learnt_from_nowhere_and_is_not_taken_for_a_part_left_unlabelled(dsb_fluo_crop):
    """A training slice on a larger black canvas (a mosaic, a registered image): its border is filled
    (the mirrored cells there are no cells to learn as background) and weighs nothing; the cells the
    starting model finds in it do not make the slice look labelled in part."""
    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.examples import prepare_examples
    from napari_unet.core.partial import mark_partial

    image, labels = dsb_fluo_crop
    canvas = np.pad(image.astype(np.float32) * 4 + 400, ((0, 96), (0, 96)))
    truth = np.pad(labels, ((0, 96), (0, 96)))
    model = load_model("nuclei", device="cpu")
    (example,) = prepare_examples(model, [canvas], [truth])
    assert example.known is not None and not example.in_part
    h, w = example.labels.shape
    assert 0.3 < example.known.mean() < 0.4  # the 128 x 128 px of data in 224 x 224
    assert example.known[: h // 3, : w // 3].all() and not example.known[-h // 4 :].any()
    assert mark_partial(model, [example], "auto") == [] and not example.in_part
    labelled_in_part = truth.copy()
    labelled_in_part[labelled_in_part % 4 != 0] = 0  # a quarter of the cells drawn
    (part,) = prepare_examples(model, [canvas], [labelled_in_part])
    mark_partial(model, [part], "some")
    assert part.in_part
    assert not part.known[-part.labels.shape[0] // 4 :].any()  # still nothing learnt in the border


def test_a_segmentation_whose_false_objects_were_deleted_is_not_taken_for_labels_in_part(data_dir):
    """Segment's objects on a C2C12 frame, the ones over no cell deleted (what a user corrects first):
    Auto counted the specks that the model's defaults make and Segment never showed (14 objects found
    for 7 left) and took the frame for one labelled in part, so its deletions taught nothing. The
    objects are now made as the model makes its own."""
    from napari_unet.core.predict import segment

    image = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[1]
    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[1].astype(np.int32)
    model = load_model("cells", device="cpu")
    masks = np.asarray(segment(model, image)).astype(np.int32)
    for i in np.unique(masks[masks > 0]):  # the user deletes the objects mostly over no cell
        if (truth[masks == i] > 0).mean() < 0.5:
            masks[masks == i] = 0
    assert 5 <= len(np.unique(masks)) - 1
    events: list = []
    run_to_end(finetune(model, [image], [masks], steps=1, val_fraction=0, device="cpu"), events.append)
    assert not [e.message for e in events if isinstance(e, TrainNote) and "labelled in part" in e.message]
