"""Object tools on real instance labels (DSB2018 nuclei, C2C12 frames, synthetic 3D nuclei)."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.draw import disk
from skimage.io import imread

from napari_unet.core.edit import (
    LabelEdit,
    delete_object,
    fill_holes,
    merge_objects,
    next_free_label,
    relabel_sequential,
    remove_small,
    split_object,
)


# ---------------------------------------------------------------------- real labels
@pytest.fixture(scope="module")
def crowded(data_dir) -> np.ndarray:
    """The DSB2018 fluorescence field with the most nuclei (520 x 696, 369 objects)."""
    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "grey_dark"]
    row = max(rows, key=lambda r: int(r["n_objects"]))
    labels = imread(data_dir / "dsb2018" / "labels" / f"{row['id']}.png").astype(np.int32)
    assert len(np.unique(labels)) - 1 == int(row["n_objects"]) > 300
    labels.setflags(write=False)  # no operation may change its input
    return labels


@pytest.fixture(scope="module")
def volume(data_dir) -> np.ndarray:
    """StarDist's synthetic 3D nuclei (31, 61, 57)."""
    labels = tifffile.imread(data_dir / "nuclei3d_synthetic" / "labels.tif")
    labels.setflags(write=False)
    return labels


def touching_pair(labels: np.ndarray) -> tuple[int, int]:
    """The two touching objects whose smaller one is largest (two clear nuclei side by side)."""
    pairs = set()
    for a, b in ((labels[..., :-1], labels[..., 1:]), (labels[..., :-1, :], labels[..., 1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(a[touch].tolist(), b[touch].tolist()))
    sizes = np.bincount(labels.ravel())
    return max(pairs, key=lambda p: (min(sizes[p[0]], sizes[p[1]]), p))


def areas(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)


def applied(labels: np.ndarray, edit: LabelEdit) -> np.ndarray:
    out = labels.copy()
    edit.apply(out)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def assert_only_region_changed(before: np.ndarray, after: np.ndarray, edit: LabelEdit) -> None:
    outside = np.ones(before.shape, dtype=bool)
    outside[edit.region] = False
    np.testing.assert_array_equal(before[outside], after[outside])


# ---------------------------------------------------------------------- delete, merge
def test_delete_object_removes_only_that_object(crowded):
    target = 100
    edit = delete_object(crowded, target)
    after = applied(crowded, edit)
    assert not (after == target).any()
    before_areas, after_areas = areas(crowded), areas(after)
    assert after_areas[0] == before_areas[0] + before_areas[target]
    others = np.arange(1, len(before_areas)) != target
    np.testing.assert_array_equal(after_areas[1:][others], before_areas[1:][others])
    assert_only_region_changed(crowded, after, edit)
    # the region is the object's bounding box, no more
    rows, cols = np.nonzero(crowded == target)
    assert edit.region == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert edit.message == f"deleted object {target} ({before_areas[target]} px)"


def test_merge_objects_keeps_the_first_id_and_leaves_neighbours(crowded):
    a, b = touching_pair(crowded)
    edit = merge_objects(crowded, [a, b])
    after = applied(crowded, edit)
    assert not (after == b).any()
    assert (after == a).sum() == (crowded == a).sum() + (crowded == b).sum()
    untouched = (crowded != a) & (crowded != b)
    np.testing.assert_array_equal(after[untouched], crowded[untouched])
    # the region is the bounding box of what changed: object b
    rows, cols = np.nonzero(crowded == b)
    assert edit.region == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))


def test_delete_and_merge_at_a_pixel_take_only_the_part_connected_to_it(crowded):
    """Two planes numbered each from 1 (a stack segmented plane by plane, edited as a volume): the
    id clicked is another cell in the other plane; ``at`` keeps the edit to the object clicked."""
    stack = np.stack([crowded, np.roll(crowded, crowded.shape[1] // 2, axis=1)])
    target = 100
    where = tuple(int(v) for v in np.argwhere(stack[0] == target)[0])
    assert not ((stack[0] == target) & (stack[1] == target)).any()  # (the twin is elsewhere: not connected)
    after = applied(stack, delete_object(stack, target, at=(0, *where)))
    assert not (after[0] == target).any()
    np.testing.assert_array_equal(after[1], stack[1])
    np.testing.assert_array_equal(after[0][crowded != target], crowded[crowded != target])
    a, b = touching_pair(crowded)
    pa, pb = (tuple(int(v) for v in np.argwhere(crowded == i)[0]) for i in (a, b))
    after = applied(stack, merge_objects(stack, [a, b], at=[(0, *pa), (0, *pb)]))
    assert not (after[0] == b).any() and (after[0] == a).sum() == (crowded == a).sum() + (crowded == b).sum()
    np.testing.assert_array_equal(after[1], stack[1])  # b's twin in the other plane is another cell
    # a cell whose pixels touch only at a corner is one object (numbered 8-connected): deleted whole
    corner = np.zeros((2, 8, 8), np.int32)
    corner[:, 1:4, 1:4] = 1
    corner[:, 4:7, 4:7] = 1
    assert not (applied(corner, delete_object(corner, 1, at=(1, 2, 2))) == 1).any()
    # without ``at``, or ``at`` off the object: the whole id, as before
    assert not (applied(stack, delete_object(stack, target)) == target).any()
    assert not (applied(stack, delete_object(stack, target, at=(1, 0, 0))) == target).any()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lab: merge_objects(lab, [7, 7]), "Merging needs two different objects; got object 7."),
        (lambda lab: merge_objects(lab, [7, 9999]), "There is no object 9999 in these labels."),
        (lambda lab: delete_object(lab, 9999), "There is no object 9999 in these labels."),
        (lambda lab: delete_object(lab, 0), "Object ids are whole numbers above 0 (0 is the background), got 0."),
        (lambda lab: fill_holes(lab, 9999), "There is no object 9999 in these labels."),
        (lambda lab: split_object(lab, 9999, seeds=[(0, 0), (1, 1)]), "There is no object 9999 in these labels."),
        (lambda lab: remove_small(lab, -1), "The minimum size must be 0 or more pixels, got -1."),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(crowded, call, message):
    before = crowded.copy()
    with pytest.raises(ValueError) as info:
        call(crowded)
    assert str(info.value) == message
    np.testing.assert_array_equal(crowded, before)


# ---------------------------------------------------------------------- split
def test_split_with_seeds_undoes_a_merge_on_the_distance_transform(crowded):
    a, b = touching_pair(crowded)
    merged = applied(crowded, merge_objects(crowded, [a, b]))
    seeds = [np.argwhere(crowded == i).mean(axis=0) for i in (a, b)]
    edit = split_object(merged, a, seeds=seeds)
    after = applied(merged, edit)
    new = edit.new_labels[0]
    assert new == next_free_label(merged) == crowded.max() + 1
    # two parts that match the two original nuclei
    assert iou(after == a, crowded == a) > 0.8 or iou(after == a, crowded == b) > 0.8
    assert max(iou(after == new, crowded == a), iou(after == new, crowded == b)) > 0.8
    assert (after == a).sum() >= (after == new).sum()  # the largest part keeps the id
    untouched = (merged != a)
    np.testing.assert_array_equal(after[untouched], merged[untouched])
    assert_only_region_changed(merged, after, edit)


def test_split_with_seeds_undoes_merges_of_every_touching_pair(crowded):
    """Each pair of touching nuclei of the real field, merged, then split from a seed at each
    nucleus' centre: the parts match the nuclei. Plain flooding of the distance transform gave
    the seed that first reached the merged object's ridge nearly all of it when there is no neck
    between the two (a sliver for the other): 45 of 155 such pairs of DSB2018 val fields."""
    from scipy import ndimage as ndi

    ious = []
    for a in np.unique(crowded)[1:60]:
        mask = crowded == a
        around = np.unique(crowded[ndi.binary_dilation(mask) & ~mask])
        around = around[(around != 0) & (around > a)]
        if around.size == 0:
            continue
        b = int(around[0])
        seeds = [tuple(np.round(np.argwhere(crowded == i).mean(axis=0)).astype(int)) for i in (a, b)]
        if crowded[seeds[0]] != a or crowded[seeds[1]] != b:
            continue
        merged = applied(crowded, merge_objects(crowded, [int(a), b]))
        after = applied(merged, split_object(merged, int(a), seeds=seeds))
        part = after == after[seeds[0]]
        ious.append(iou(part, crowded == a))
    assert len(ious) >= 20
    assert np.median(ious) > 0.9 and np.mean(np.array(ious) < 0.6) < 0.1, np.round(ious, 2)


def test_split_with_seeds_cuts_an_object_without_a_neck_between_the_seeds():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:25, 5:55] = 1  # two cells fused in a bar, no neck
    after = applied(labels, split_object(labels, 1, seeds=[(15, 8), (15, 50)]))
    left, right = (after == 1).sum(), (after == 2).sum()
    assert min(left, right) >= 0.4 * (left + right)
    cols = np.argwhere(after == after[15, 8])[:, 1]
    assert cols.max() <= 31  # the cut lies between the seeds, near their middle (29)


def test_split_on_smooth_probabilities_cuts_an_object_without_a_neck_between_the_seeds():
    from scipy import ndimage as ndi

    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:25, 5:55] = 1  # two cells fused in a bar, no neck, no dip in the probability
    probabilities = ndi.gaussian_filter(np.where(labels > 0, 0.99, 0.01).astype(np.float32), 2)
    after = applied(labels, split_object(labels, 1, seeds=[(15, 8), (15, 50)], probabilities=probabilities))
    left, right = (after == 1).sum(), (after == 2).sum()
    assert min(left, right) >= 0.4 * (left + right)  # not one part and a sliver


def test_split_follows_the_probabilities_when_given(crowded):
    a, b = touching_pair(crowded)
    merged = applied(crowded, merge_objects(crowded, [a, b]))
    # probabilities that put the border between the two parts elsewhere than the distance
    # transform would: a valley along one column through the merged object
    rows, cols = np.nonzero(merged == a)
    valley = int(np.percentile(cols, 30))
    probabilities = np.ones(merged.shape, dtype=np.float32)
    probabilities[:, valley] = 0.0
    seeds = [(rows[cols == cols.min()].mean(), cols.min()), (rows[cols == cols.max()].mean(), cols.max())]
    edit = split_object(merged, a, seeds=seeds, probabilities=probabilities)
    after = applied(merged, edit)
    new = edit.new_labels[0]
    parts = [after == a, after == new]
    left = next(p for p in parts if p[:, : valley - 1].any())
    assert not left[:, valley + 1 :].any()  # the parts meet at the valley
    without = applied(merged, split_object(merged, a, seeds=seeds))
    assert not np.array_equal(without, after)


def test_split_along_a_line(crowded):
    target = int(np.argmax(areas(crowded)[1:])) + 1  # the largest nucleus
    rows, cols = np.nonzero(crowded == target)
    mid = int(np.median(rows))
    line = [(mid, cols.min() - 3), (mid, cols.max() + 3)]  # right across, background to background
    edit = split_object(crowded, target, line=line)
    after = applied(crowded, edit)
    new = edit.new_labels
    assert len(new) == 1 and new[0] == crowded.max() + 1
    top, bottom = after == target, after == new[0]
    assert top.sum() + bottom.sum() == (crowded == target).sum()
    # each part lies on one side of the line (its own pixels joined one part or the other)
    sides = [np.nonzero(part)[0] for part in (top, bottom)]
    assert sorted([(s.min() >= mid, s.max() <= mid) for s in sides]) == [(False, True), (True, False)]
    untouched = crowded != target
    np.testing.assert_array_equal(after[untouched], crowded[untouched])


def test_split_line_that_misses_or_does_not_cut_is_refused(crowded):
    target = int(np.argmax(areas(crowded)[1:])) + 1
    rows, cols = np.nonzero(crowded == target)
    mid = int(np.median(rows))
    far = [(0, 0), (0, 5)]
    with pytest.raises(ValueError, match=f"^The line misses object {target}: draw it across the object.$"):
        split_object(crowded, target, line=far)
    half_way = [(mid, cols.min() - 3), (mid, int(np.median(cols)))]  # stops inside the object
    with pytest.raises(ValueError, match=f"^The line does not cut object {target} in two"):
        split_object(crowded, target, line=half_way)
    outside_seed = [(rows[0], cols[0]), (0, 0)]
    with pytest.raises(ValueError, match=f"is not on object {target}: put every seed inside the object."):
        split_object(crowded, target, seeds=outside_seed)
    with pytest.raises(ValueError, match="either seeds or a line"):
        split_object(crowded, target)


def test_split_needs_a_free_id_in_the_dtype():
    labels = np.zeros((20, 40), dtype=np.uint8)
    labels[5:15, 5:35] = 255
    assert split_object(labels, 255, seeds=[(10, 8), (10, 30)]).new_labels == (1,)  # 255 taken: 1 is free
    labels[0, 0] = 1
    edit = split_object(labels, 255, seeds=[(10, 8), (10, 30)], new_label=2)
    assert edit.new_labels == (2,)


# ---------------------------------------------------------------------- clean-up
def test_fill_holes_fills_background_only(crowded):
    big = int(np.argmax(areas(crowded)[1:])) + 1
    rows, cols = np.nonzero(crowded == big)
    centre = (int(rows.mean()), int(cols.mean()))
    holed = crowded.copy()
    hole = np.zeros(crowded.shape, dtype=bool)
    hole[disk(centre, 3, shape=crowded.shape)] = True
    assert (crowded[hole] == big).all()
    holed[hole] = 0
    holed[centre] = 5000  # an object of one pixel inside the hole: not background, kept
    one = fill_holes(holed, big)
    after = applied(holed, one)
    assert after[centre] == 5000
    expected = crowded.copy()
    expected[centre] = 5000
    np.testing.assert_array_equal(after, expected)
    assert one.message == f"filled {int(hole.sum()) - 1} px of holes in object {big}"
    # every object at once: the same, and nothing else moves
    every = fill_holes(holed)
    np.testing.assert_array_equal(applied(holed, every), expected)
    assert fill_holes(crowded).is_empty  # the ground truth has no holes


def test_fill_every_hole_matches_one_fill_per_object(crowded):
    """Filling every hole at once gives what separate per-object fills give (nested objects win)."""
    rng = np.random.default_rng(0)
    holed = crowded.copy()
    sizes = areas(crowded)
    for target in rng.choice(np.flatnonzero(sizes > 200), size=20, replace=False):
        rows, cols = np.nonzero(crowded == target)
        centre = (int(rows.mean()), int(cols.mean()))
        if crowded[centre] == target:
            holed[disk(centre, 2, shape=crowded.shape)] = 0
            if target % 2:  # a small object nested in the hole
                holed[centre] = 6000 + target
    reference = holed.copy()
    ids = [i for i in np.unique(holed) if i]
    boxes = {i: fill_holes(holed, i) for i in ids}
    for i in sorted(ids, key=lambda i: -(holed == i).sum()):  # larger first: nested ones written last
        edit = boxes[i]
        if not edit.is_empty:
            target = reference[edit.region]
            target[edit.values == i] = i
    every = fill_holes(holed)
    np.testing.assert_array_equal(applied(holed, every), reference)
    assert not np.array_equal(reference, holed)


def test_remove_small(crowded):
    sizes = areas(crowded)
    small = set(np.flatnonzero((sizes < 40) & (np.arange(len(sizes)) > 0)).tolist())
    assert 0 < len(small) < 50
    edit = remove_small(crowded, 40)
    after = applied(crowded, edit)
    assert set(np.unique(after).tolist()) == set(np.unique(crowded).tolist()) - small
    kept = ~np.isin(crowded, list(small))
    np.testing.assert_array_equal(after[kept], crowded[kept])
    assert edit.message == f"removed {len(small)} object(s) under 40 px"
    assert remove_small(crowded, 1).is_empty


def test_next_free_label_and_relabel_sequential(crowded):
    assert next_free_label(crowded) == int(crowded.max()) + 1
    assert next_free_label(np.zeros((4, 4), np.uint16)) == 1
    gappy = applied(crowded, delete_object(crowded, 3))
    gappy = applied(gappy, delete_object(gappy, 50))
    edit = relabel_sequential(gappy)
    after = applied(gappy, edit)
    n = len(np.unique(crowded)) - 3
    assert set(np.unique(after).tolist()) == set(range(n + 1))
    # same partition: each old id maps to exactly one new id
    pairs = np.unique(np.stack([gappy.ravel(), after.ravel()]), axis=1)
    assert pairs.shape[1] == n + 1
    assert np.array_equal(after[gappy < 3], gappy[gappy < 3])  # ids below the first gap stay
    assert relabel_sequential(crowded).is_empty  # already 1..N: nothing to do
    # a type full at its top (a 0/255 mask, an id of 2**31-1): the lowest run of free ids below it
    mask = np.zeros((8, 8), np.uint8)
    mask[:4], mask[5:, :2] = 255, 1
    assert next_free_label(mask) == 2 and next_free_label(mask, 100) == 2
    assert next_free_label(np.full((2, 2), np.iinfo(np.int32).max, np.int32)) == 1
    edit = split_object(np.where(mask == 255, 255, 0).astype(np.uint8), 255, seeds=[(1, 0), (1, 7)])
    assert edit.new_labels == (1,)  # (it said "no free object id left")
    stack = np.zeros((2, 20, 40), np.uint8)  # one plane of a stack: the new id is free in the whole stack
    stack[1].flat[:200] = np.arange(1, 201)
    stack[0, 5:15, 5:35] = 255
    assert split_object(stack[0], 255, seeds=[(10, 8), (10, 30)], ids_of=stack).new_labels == (201,)
    full = np.zeros((20, 20), np.uint8)  # every id of uint8 in use
    full.flat[:254] = np.arange(1, 255)
    full[15:] = 255
    with pytest.raises(ValueError, match="No free object id left in uint8 labels"):
        split_object(full, 255, seeds=[(15, 0), (19, 19)])


def test_changes_are_the_pixels_apply_writes(crowded):
    edit = delete_object(crowded, 42)
    indices, values = edit.changes(crowded)
    assert len(indices) == 2 and (values == 0).all()
    assert len(values) == (crowded == 42).sum()
    via_changes = crowded.copy()
    via_changes[indices] = values
    np.testing.assert_array_equal(via_changes, applied(crowded, edit))
    empty = remove_small(crowded, 0)
    idx, vals = empty.changes(crowded)
    assert empty.is_empty and len(idx) == 2 and idx[0].size == 0 and vals.size == 0


# ---------------------------------------------------------------------- 3D
def test_operations_on_a_3d_volume(volume):
    a, b = touching_pair(volume)
    merged = applied(volume, merge_objects(volume, [a, b]))
    assert (merged == a).sum() == (volume == a).sum() + (volume == b).sum()
    seeds = [np.argwhere(volume == i).mean(axis=0) for i in (a, b)]
    split = split_object(merged, a, seeds=seeds)
    after = applied(merged, split)
    new = split.new_labels[0]
    assert max(iou(after == new, volume == a), iou(after == new, volume == b)) > 0.7
    assert len(split.region) == 3
    deleted = applied(volume, delete_object(volume, a))
    assert not (deleted == a).any() and (deleted == b).sum() == (volume == b).sum()
    # a cavity inside a nucleus is filled in 3D
    zz, yy, xx = np.nonzero(volume == a)
    centre = (int(np.median(zz)), int(np.median(yy)), int(np.median(xx)))
    cavity = volume.copy()
    cavity[centre] = 0
    filled = fill_holes(cavity, a)
    assert filled.region == tuple(slice(c, c + 1) for c in centre)
    np.testing.assert_array_equal(applied(cavity, filled), volume)


def test_core_edit_imports_no_gui():
    code = (
        "import sys, napari_unet.core.edit;"
        "print(','.join(m for m in ('qtpy', 'napari', 'magicgui') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_fill_holes_of_uint64_ids_past_2_63_as_of_small_ids():
    """A cell inside another's hole, ids of another tool past 2^63 (the int64 pairs wrapped them
    negative: a KeyError from the button)."""
    small = np.zeros((40, 40), np.uint64)
    small[5:20, 5:20] = 1
    small[10:13, 10:13] = 0
    small[22:38, 22:38] = 2
    small[25:35, 25:35] = 0
    small[28:32, 28:32] = 3
    big = np.where(small > 0, small + np.uint64(2**63), 0).astype(np.uint64)
    filled_small, filled_big = fill_holes(small), fill_holes(big)
    assert filled_big.message == filled_small.message == "filled 93 px of holes in 2 object(s)"
    np.testing.assert_array_equal(filled_big.values, np.where(filled_small.values > 0,
                                                              filled_small.values + np.uint64(2**63), 0))
