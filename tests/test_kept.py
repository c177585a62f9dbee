"""What the Segment widget keeps per masks layer (widgets/_kept.py), with real Labels layers."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from napari_unet.core.predict import PlaneResult
from napari_unet.widgets._kept import KeptResults

WHOLE = (slice(0, 8), slice(0, 8))


def _result(index: tuple[int, ...]) -> PlaneResult:
    probabilities = np.zeros((3, 8, 8), np.float32)  # 768 bytes
    return PlaneResult(index, WHOLE, np.zeros((8, 8), np.int32), probabilities, WHOLE, "classes")


def test_records_follow_the_layer_object_not_its_name():
    kept = KeptResults(cap_bytes=10**6)
    a, b = Labels(np.zeros((3, 8, 8), np.int32), name="x masks"), Labels(np.zeros((3, 8, 8), np.int32), name="x masks")
    kept.keep(a, _result((0,)), checksum=7)
    a.name = "renamed"
    assert kept.result(a, (0,)) is not None and kept.written(a, _result((0,))) == 7
    assert kept.result(a, (0,)).labels is None  # (the layer holds them; the memory cap counts probabilities)
    assert kept.result(b, (0,)) is None  # same name, another layer
    kept.made_3d(b)
    assert kept.is_3d(b) and not kept.is_3d(a)
    kept.keep(b, _result((1,)), checksum=1)  # a plane run later: no longer 3D objects
    assert not kept.is_3d(b)
    kept.forget(a)
    assert kept.result(a, (0,)) is None and kept.results(a) == [] and kept.results(b)[0].index == (1,)


def test_the_memory_cap_drops_the_oldest_planes_of_any_layer_and_says_which():
    kept = KeptResults(cap_bytes=2 * 768)
    a, b = Labels(np.zeros((3, 8, 8), np.int32)), Labels(np.zeros((3, 8, 8), np.int32))
    kept.keep(a, _result((0,)), 1)
    kept.keep(b, _result((0,)), 2)
    kept.keep(a, _result((1,)), 3)  # over the cap: a's plane 0, kept first, goes
    assert [r.index for r in kept.results(a)] == [(1,)] and kept.dropped(a) == [(0,)]
    assert kept.written(a, _result((0,))) is None and kept.result(b, (0,)) is not None
    kept.keep(a, _result((0,)), 4)  # segmented again: kept, no longer dropped; b's plane goes
    assert kept.dropped(a) == [] and kept.dropped(b) == [(0,)]
    kept.forget(a)
    kept.forget(b)
    assert not kept and kept.results(a) == [] and kept.dropped(b) == []


def test_fields_of_view_of_one_plane_are_kept_apart_until_a_whole_plane_covers_them():
    kept = KeptResults(cap_bytes=10**6)
    layer = Labels(np.zeros((2, 8, 16), np.int32))
    left, right = (slice(0, 8), slice(0, 8)), (slice(0, 8), slice(8, 16))
    for region in (left, right):
        kept.keep(layer, PlaneResult((0,), region, np.zeros((8, 8), np.int32), np.zeros((3, 8, 8), np.float32),
                                     WHOLE, "classes"), checksum=1)
    assert [r.region for r in kept.results(layer)] == [left, right]  # both re-threshold
    assert kept.result(layer, (0,)).region == right  # the last one first
    whole = (slice(0, 8), slice(0, 16))
    kept.keep(layer, PlaneResult((0,), whole, np.zeros((8, 16), np.int32), np.zeros((3, 8, 16), np.float32),
                                 (slice(0, 8), slice(0, 16)), "classes"), checksum=2)
    assert [r.region for r in kept.results(layer)] == [whole]  # it overwrote both


def test_a_plane_larger_than_the_cap_is_not_kept_and_said_dropped():
    """One plane's probabilities beyond the cap (a whole slide: 1.5 GB of float16 at 16000 px a side,
    against 512 MB) are not kept, and the plane is listed as dropped; the others stay."""
    kept = KeptResults(cap_bytes=768)
    a = Labels(np.zeros((3, 8, 8), np.int32))
    kept.keep(a, _result((0,)), 1)
    big = PlaneResult((1,), WHOLE, np.zeros((8, 8), np.int32), np.zeros((3, 9, 9), np.float32), WHOLE, "classes")
    kept.keep(a, big, 2)
    assert [r.index for r in kept.results(a)] == [(0,)] and kept.too_large(a) == [(1,)] and kept.dropped(a) == []


def test_masks_written_into_a_field_of_view_take_ids_above_those_around_it():
    """The new ids of a field of view start above the highest id outside it, read from the strips
    around it (a copy of the whole plane before: a gigabyte for a slide)."""
    from napari_unet.widgets._masks import _max_outside, write_plane

    plane = np.zeros((40, 50), np.int32)
    plane[0, 0], plane[39, 49], plane[20, 0], plane[20, 49], plane[20, 25] = 3, 9, 4, 5, 70  # 70 inside
    assert _max_outside(plane, slice(10, 30), slice(10, 40)) == 9
    assert _max_outside(plane, slice(None), slice(1, 50)) == 4  # only column 0 outside (slices without ends)
    layer = Labels(plane.copy())
    fov = (slice(10, 30), slice(10, 40))
    new = np.zeros((20, 30), np.int32)
    new[5:8, 5:8] = 1
    write_plane(layer, PlaneResult((), fov, new, np.zeros((3, 20, 30), np.float32), fov, "classes"))
    assert layer.data[15:18, 15:18].max() == 10 and layer.data[0, 0] == 3
