"""3D objects from z-stacks (core.volume): one id per object over the planes it spans, two ids
for objects touching in z, blocks that agree with one piece, stitching, bad inputs, cancel."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core import ImageError, load_model
from napari_unet.core.events import run_to_end
from napari_unet.core.metrics import average_precision, matching
from napari_unet.core.predict import PredictionStopped, segment
from napari_unet.core.volume import VolumeNote, iter_segment_volume, segment_volume, stitch_plane
from napari_unet.core.volume_instances import block_plan, instances_3d


def _balls(shape, centres, radius) -> np.ndarray:
    """Labels of balls (radius in voxels, may be per axis) at ``centres``: 1, 2, ..."""
    grid = np.indices(shape, dtype=float)
    labels = np.zeros(shape, dtype=np.int32)
    radius = np.broadcast_to(np.asarray(radius, dtype=float), (3,))
    for k, c in enumerate(centres, start=1):
        inside = sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, radius)) <= 1.0
        labels[inside & (labels == 0)] = k
    return labels


def _nuclei_volume(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fluorescence-like volume of the objects: bright blurred nuclei, darker seams, noise."""
    rng = np.random.default_rng(seed)
    inside = np.zeros(labels.shape, dtype=float)
    for k in range(1, int(labels.max()) + 1):  # each nucleus bright inside, dimmer at its edge
        inside = np.maximum(inside, ndi.distance_transform_edt(labels == k))
    image = 20 + 200 * np.clip(inside / 3.0, 0, 1)
    image = ndi.gaussian_filter(image, 1.0) + rng.normal(0, 6, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")  # the built-in model: real objects need a real network


@pytest.fixture(scope="module")
def stacked():
    """Two nuclei touching in z (same x, y) and a third one beside them, isotropic voxels."""
    truth = _balls((36, 40, 56), [(10, 20, 16), (24, 20, 16), (17, 20, 40)], 7.0)
    return _nuclei_volume(truth), truth


def test_an_object_spanning_planes_gets_one_id_and_objects_touching_in_z_two(model, stacked):
    image, truth = stacked
    labels = segment_volume(model, image, spacing=(1.0, 1.0, 1.0))
    assert labels.dtype == np.int32 and labels.shape == image.shape
    top, bottom, beside = (labels[c] for c in [(10, 20, 16), (24, 20, 16), (17, 20, 40)])
    assert top and bottom and beside
    assert len({top, bottom, beside}) == 3  # the two stacked nuclei are two objects
    # each nucleus is one id over all the planes it spans
    for k, label in zip((1, 2, 3), (top, bottom, beside)):
        planes = np.unique(np.nonzero(truth == k)[0])
        ids = [np.bincount(labels[z][truth[z] == k]).argmax() for z in planes[2:-2]]
        assert set(ids) == {label}
    assert matching(truth, labels).tp == 3


def test_segment_with_zyx_axes_is_the_3d_path_and_notes_a_missing_voxel_size(model, stacked):
    image = stacked[0][6:30, 4:36, 24:56]  # the nucleus beside the stacked ones
    options = {"diameter": 14.0}
    events = []
    labels = run_to_end(iter_segment_volume(model, image, **options), events.append)
    notes = [e.message for e in events if isinstance(e, VolumeNote)]
    assert any("voxel size is unknown" in n and "isotropic" in n for n in notes)
    assert labels.max() > 0
    np.testing.assert_array_equal(segment(model, image, axes="ZYX", **options), labels)
    over_time = segment(model, np.stack([image, image]), axes="TZYX", spacing=(1, 1, 1), **options)
    np.testing.assert_array_equal(over_time[1], labels)


def test_anisotropic_voxels_resample_the_side_views(model):
    """Planes twice as far apart as the pixels: the same nuclei sampled every other plane."""
    truth = _balls((36, 40, 56), [(10, 20, 16), (24, 20, 16), (17, 20, 40)], 7.0)[::2]
    image = _nuclei_volume(truth, seed=1)
    labels = segment_volume(model, image, spacing=(2.0, 1.0, 1.0))
    assert matching(truth, labels).tp == 3


def test_blocks_give_the_labels_of_one_piece():
    truth = _balls((30, 60, 60), [(8, 12, 12), (20, 12, 12), (14, 40, 30), (15, 20, 45), (15, 45, 50)], 6.0)
    probs = np.zeros((3, *truth.shape), dtype=np.float32)
    inner = ndi.binary_erosion(truth > 0, iterations=2) & (truth > 0)
    probs[1] = ndi.gaussian_filter(inner.astype(np.float32), 1.0)
    probs[2] = np.clip((truth > 0) - probs[1], 0, 1)
    probs[0] = 1 - probs[1] - probs[2]
    whole = instances_3d(probs, diameter=12.0, threshold=0.5)
    assert len(block_plan(truth.shape, (6, 6, 6), 8_000)) > 4
    from napari_unet.core.volume_instances import iter_watershed_blocks

    stacked = np.stack([probs[1] + probs[2], probs[1]])
    pieces = run_to_end(iter_watershed_blocks(stacked, 1, (1, 1, 1), 12.0, 0.5, 0, block_voxels=8_000))
    assert matching(whole, pieces).tp == int(whole.max()) == int(pieces.max()) == 5
    assert average_precision(truth, pieces) == 1.0


def test_stitch_links_overlapping_plane_objects_one_to_one():
    above = np.zeros((10, 10), dtype=np.int32)
    above[1:5, 1:5] = 7
    plane = np.zeros((10, 10), dtype=np.int32)
    plane[1:5, 2:6] = 1  # overlaps object 7
    plane[6:9, 6:9] = 2  # new
    linked, next_id = stitch_plane(plane, above, 8)
    assert linked[2, 3] == 7 and linked[7, 7] == 8 and next_id == 9
    first, next_id = stitch_plane(plane, None, 1)
    assert set(np.unique(first)) == {0, 1, 2} and next_id == 3


def test_stitch_mode_gives_unique_ids_over_the_volume(model, stacked):
    image, truth = stacked
    labels = segment_volume(model, image, mode="stitch")
    beside = labels[17, 20, 40]
    assert beside and np.all(labels[12:23, 20, 40] == beside)  # one id over the planes it spans


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.zeros((32, 32), np.uint8), {}, "single 2D plane"),
        (np.zeros((1, 32, 32), np.uint8), {}, "single plane"),
        (np.zeros((4, 3, 32, 32), np.uint8), {}, "one grey"),
        (np.zeros((4, 32, 32), np.uint8), {"spacing": (1, 0, 1)}, "voxel size"),
        (np.zeros((4, 32, 32), np.uint8), {"spacing": (1, 1)}, "voxel size"),
        (np.zeros((4, 32, 32), np.uint8), {"spacing": (2e-6, 0.5, 0.5)}, "one unit"),  # z in metres
        (np.zeros((4, 32, 32), np.uint8), {"mode": "4d"}, "mode"),
        (np.zeros((31, 1, 61), np.uint8), {}, "too narrow"),  # (a TypeError deep inside before)
        (np.zeros((31, 61, 2), np.uint8), {}, "too narrow"),
    ],
)
def test_bad_volumes_are_refused_with_a_clear_message(tiny_model_path, image, kwargs, message):
    model = load_model(tiny_model_path, device="cpu")
    with pytest.raises(ImageError, match=message):
        segment_volume(model, image, **kwargs)


def test_bad_axes_are_refused(tiny_model_path):
    model = load_model(tiny_model_path, device="cpu")
    with pytest.raises(ImageError, match="Y and X last"):
        segment(model, np.zeros((4, 2, 32, 32), np.uint8), axes="ZCYX")
    two = np.zeros((32, 32, 2), np.uint8)
    for axes in ("YXC", "CYX", "XY", "AB", "TT"):  # planes: only T in front, Y and X last
        with pytest.raises(ImageError, match="axes"):
            segment(model, two if axes != "CYX" else two.transpose(2, 0, 1), axes=axes)
    assert segment(model, np.zeros((2, 32, 32), np.uint8), axes="TYX").shape == (2, 32, 32)
    assert segment(model, np.zeros((32, 32, 3), np.uint8), axes="YXS").shape == (32, 32)


def test_stop_ends_the_run_and_removes_the_temporary_probabilities(tiny_model_path, tmp_path, monkeypatch):
    import napari_unet.core.volume as volume

    monkeypatch.setattr(volume, "IN_MEMORY_PROBABILITIES", 0)  # a memory map even for a small stack
    model = load_model(tiny_model_path, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    work = tmp_path / "work"
    work.mkdir()
    calls = []

    def stop_after_some():
        calls.append(1)
        return len(calls) > 8

    with pytest.raises(PredictionStopped):
        segment_volume(model, image, diameter="native", workdir=str(work), should_stop=stop_after_some)
    assert list(work.iterdir()) == []
    # closing the generator half way also cleans up
    gen = iter_segment_volume(model, image, diameter="native", workdir=str(work))
    for _ in range(5):
        next(gen)
    assert len(list(work.iterdir())) == 1
    gen.close()
    assert list(work.iterdir()) == []
    # and a whole run through the memory map works
    labels = segment_volume(model, image, diameter="native", workdir=str(work), threshold=0.3)
    assert labels.shape == image.shape and list(work.iterdir()) == []


def test_seed_maxima_are_those_of_a_maximum_filter():
    from napari_unet.core.volume_instances import _ellipsoid, _maxima

    values = ndi.gaussian_filter(np.random.default_rng(0).random((30, 50, 60)), 2)
    footprint = _ellipsoid([3.0, 5.0, 4.5])
    expected = (values >= ndi.maximum_filter(values, footprint=footprint, mode="nearest")) & (values > 0.45)
    found = _maxima(values, values > 0.45, footprint)
    assert found.any()
    np.testing.assert_array_equal(found, expected)


def test_z_planes_much_closer_than_the_pixels_keep_memory_bounded():
    """Footprint, smoothing and halo of the 3D watershed never reach beyond the volume (a z step
    500x finer than the pixels asked for a footprint thousands of planes deep)."""
    from napari_unet.core.volume_instances import instances_3d

    probabilities = np.zeros((3, 6, 40, 40), np.float32)
    probabilities[1, :, 10:20, 10:20] = 1.0
    probabilities[0] = 1.0 - probabilities[1]
    import tracemalloc

    tracemalloc.start()
    try:
        labels = instances_3d(probabilities, diameter=10, spacing=(1e-4, 1, 1), threshold=0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.shape == (6, 40, 40) and labels.max() == 1
    assert peak < 50e6, f"{peak / 1e6:.0f} MB"  # the uncapped footprint alone was 100k planes deep


def test_hot_pixels_are_taken_out_of_the_side_views_before_z_is_resampled(model):
    """A z-stack of 16-bit camera planes with 0.3% hot pixels, planes three pixels apart: the
    yz / xz planes are stretched along z before the plane loop reads them, so a hot pixel reached it
    as a streak (no longer an isolated spike it takes out) and ruined the side views' normalisation."""
    from napari_unet.core.volume import _SidePlanes

    truth = _balls((36, 40, 56), [(10, 20, 16), (24, 20, 16), (17, 20, 40)], 7.0)[::3]
    image = _nuclei_volume(truth, seed=1).astype(np.uint16) * 16 + 100
    hot = image.copy()
    rng = np.random.default_rng(0)
    hot.flat[rng.choice(hot.size, int(0.003 * hot.size), replace=False)] = 65535
    clean_side, hot_side = _SidePlanes(image, 2, 3.0), _SidePlanes(hot, 2, 3.0)
    assert max(float(hot_side[i].max()) for i in range(hot.shape[2])) <= max(
        float(clean_side[i].max()) for i in range(image.shape[2]))
    labels = segment_volume(model, hot, spacing=(3.0, 1.0, 1.0), orthogonal=True)
    assert matching(truth, labels).tp == 3  # 0 when the side views saw the hot pixels


def test_objects_narrower_than_the_plane_step_get_no_side_views(model):
    """Planes 3 px apart and objects of 2.5 px (typed, or estimated on tiny nuclei): a yz / xz view's
    pixel is one plane step, so its objects would be under a pixel; that raised "less than one
    pixel". Only the xy planes are predicted, and a note says why."""
    truth = _balls((36, 40, 56), [(10, 20, 16), (24, 20, 16), (17, 20, 40)], 7.0)[::3]
    image = _nuclei_volume(truth, seed=1)
    events = []
    labels = run_to_end(iter_segment_volume(model, image, spacing=(3.0, 1.0, 1.0), orthogonal=True, diameter=2.5),
                        events.append)
    notes = [e.message for e in events if isinstance(e, VolumeNote)]
    assert any("narrower than the planes are apart" in n and "only xy planes" in n for n in notes)
    assert labels.shape == image.shape


@pytest.fixture(scope="module")
def synthetic_nuclei(data_dir):
    """StarDist's synthetic 3D nuclei (31, 61, 57), 51 objects (BSD-3)."""
    import tifffile

    folder = data_dir / "nuclei3d_synthetic"
    return tifffile.imread(folder / "image.tif"), tifffile.imread(folder / "labels.tif").astype(np.int32)


def test_planes_twice_as_far_apart_as_the_pixels_keep_the_side_views_useful(model, synthetic_nuclei):
    """Every other plane of the synthetic nuclei, dz = 2 dx: the yz / xz views (on by default up to
    2x) help instead of ruining the result. Their planes stretched in z to the xy pixel size gave
    3D AP@0.5 0.095 (xy planes alone 0.62); on a square grid of the z step, weighted dx / dz, 0.72."""
    from napari_unet.core.volume import _SidePlanes

    image, truth = (a[::2] for a in synthetic_nuclei)
    labels = segment_volume(model, image, spacing=(2.0, 1.0, 1.0))
    assert average_precision(truth, labels) >= 0.65
    side = _SidePlanes(image, 2, 2.0)
    assert side.shape == (57, 16, 30) and side[0].shape == (16, 30)  # z kept, y shrunk to the z step


def test_side_views_see_the_planes_on_one_background_and_brightness(model, synthetic_nuclei):
    """A side view's rows are the z planes: their backgrounds (182-192 grey levels in the synthetic
    stack) came in as offsets between the rows, and light lost with depth as a fading of the objects
    (dimmed to 10% at the deepest plane: 3D AP@0.5 0.424, the stack as it is 0.633, xy planes alone
    0.567). Each plane's background and the objects' trend of brightness with z, measured on what the
    xy view found, are taken out of the side views."""
    image, truth = synthetic_nuclei
    z = np.arange(image.shape[0], dtype=np.float32)[:, None, None]
    background = float(np.median(image[truth == 0]))
    dimmed = (background + (image - background) * 10.0 ** (-z / (image.shape[0] - 1))).astype(np.float32)
    events: list = []
    labels = run_to_end(iter_segment_volume(model, dimmed), events.append)
    assert average_precision(truth, labels) >= 0.7
    assert any("differ in brightness up to" in e.message for e in events if isinstance(e, VolumeNote))
    assert average_precision(truth, segment_volume(model, image)) >= 0.7


def test_plane_levels_follow_the_trend_not_each_plane():
    """Dimmer caps of nuclei in some planes are no trend (gains stay near 1); an exponential fading
    with z is one (gains up to its inverse); fewer than three planes with objects: left as they are."""
    from napari_unet.core.volume import _PlaneLevels

    rng = np.random.default_rng(0)
    probs = np.zeros((3, 40, 40), np.float32)
    probs[0] = 1.0
    probs[0, 10:30, 10:30], probs[1, 10:30, 10:30] = 0.0, 1.0  # foreground in the middle
    caps = np.where(np.arange(20) % 4 == 0, 0.6, 1.0)  # every fourth plane through the nuclei's caps
    for contrast in (100 * caps, 100 * 0.9 ** np.arange(20)):
        volume = rng.normal(50, 2, (20, 40, 40)).astype(np.float32)
        volume[:, 10:30, 10:30] += contrast[:, None, None].astype(np.float32)
        levels = _PlaneLevels(20)
        for k in range(20):
            levels.add(volume, k, probs, "bg-interior-boundary")
        background, gain = levels.levels()
        assert np.allclose(background, 50, atol=1)
        if contrast[-1] == 100:  # the caps
            assert gain.max() < 1.2 * gain.min()
        else:
            assert np.isclose(gain[-1] / gain[0], 0.9**-19, rtol=0.05)
    few = _PlaneLevels(20)
    few.add(volume, 0, probs, "bg-interior-boundary")
    assert few.levels() is None


def _class_probabilities(truth: np.ndarray, erode: int = 2) -> np.ndarray:
    """(3, Z, Y, X) background / interior / boundary probabilities drawn from the labels."""
    probs = np.zeros((3, *truth.shape), dtype=np.float32)
    inner = np.zeros(truth.shape, dtype=bool)
    for k in range(1, int(truth.max()) + 1):
        inner |= ndi.binary_erosion(truth == k, iterations=erode)
    probs[1] = ndi.gaussian_filter(inner.astype(np.float32), 1.0)
    probs[2] = np.clip((truth > 0) - probs[1], 0, 1)
    probs[0] = 1 - probs[1] - probs[2]
    return probs


def test_flat_objects_on_top_of_one_another_stay_apart():
    """Nuclei twice as wide as deep (adherent cells; or planes further apart than the voxel size
    says), two of them touching in z: seeds half a width apart along z merged them. The objects'
    depth over width, measured on the interior, spaces the seeds along z."""
    from napari_unet.core.volume_instances import object_aspect

    truth = _balls((24, 40, 64), [(7, 20, 18), (15, 20, 18), (11, 20, 46)], (4.0, 9.0, 9.0))
    probs = _class_probabilities(truth, erode=1)
    stacked = np.stack([probs[1] + probs[2], probs[1]])
    aspect = object_aspect(stacked, 1, (1, 1, 1), 0.5)
    assert 0.3 < aspect < 0.6
    round_seeds = instances_3d(probs, diameter=18.0, threshold=0.5, aspect=1.0)
    assert matching(truth, round_seeds).tp < 3  # the two on top of one another merged
    labels = instances_3d(probs, diameter=18.0, threshold=0.5)
    assert average_precision(truth, labels) == 1.0
    # the same objects at their true depth (planes 2x further apart than the pixels): rounder (the
    # interior, a boundary's width inside the outline, is relatively shorter across the thin axis)
    assert object_aspect(stacked, 1, (2, 1, 1), 0.5) > 0.7
    assert object_aspect(np.zeros_like(stacked), 1, (1, 1, 1), 0.5) == 1.0


def _flat_nuclei(seed: int, shape=(40, 96, 96), n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels): crowded nuclei half as deep as wide (xy radius 6-9 px), of 0.4-1.6x a
    200 grey-level contrast, blurred 1.5 px, Gaussian noise of sd 15."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for _ in range(3000):
        r = rng.uniform(6, 9)
        c = [rng.uniform(r / 2, shape[0] - r / 2)] + [rng.uniform(r, s - r) for s in shape[1:]]
        inside = ((zz - c[0]) / (r / 2)) ** 2 + ((yy - c[1]) / r) ** 2 + ((xx - c[2]) / r) ** 2 <= 1
        if labels[inside].any():
            continue
        labels[inside] = labels.max() + 1
        if labels.max() == n:
            break
    brightness = np.concatenate([[0], rng.uniform(0.4, 1.6, int(labels.max()))])
    image = ndi.gaussian_filter(20 + 200 * brightness[labels], 1.5) + rng.normal(0, 15, shape)
    return image.astype(np.float32), labels


def test_crowded_flat_nuclei_are_told_apart_in_z_and_the_note_says_so(model):
    """Seeds spaced for round objects merged flat nuclei lying on top of one another (3D AP@0.5
    0.89 on this volume, 0.98 now)."""
    image, truth = _flat_nuclei(4)
    events: list = []
    labels = run_to_end(iter_segment_volume(model, image), events.append)
    assert average_precision(truth, labels) >= 0.95
    notes = [e.message for e in events if isinstance(e, VolumeNote)]
    assert any("wider than deep" in n and "give the voxel size" in n for n in notes)
    # with the voxel size given, the hint to give it goes (the shape is still named)
    events.clear()
    run_to_end(iter_segment_volume(model, image[:, :48, :48], spacing=(1, 1, 1)), events.append)
    notes = [e.message for e in events if isinstance(e, VolumeNote)]
    assert any("wider than deep" in n for n in notes) and not any("give the voxel size" in n for n in notes)


def test_the_synthetic_stack_keeps_flat_nuclei_on_top_of_one_another_apart(model, synthetic_nuclei):
    """StarDist's synthetic nuclei are about half as deep as wide (7 x 15 px): with seeds spaced
    for round objects, some lying on top of one another merged, more or fewer as the estimated
    diameter moved with the threshold (3D AP@0.5 0.700 / 0.786 at thresholds 0.6 / 0.7)."""
    image, truth = synthetic_nuclei
    scores = [average_precision(truth, segment_volume(model, image, threshold=t)) for t in (0.6, 0.7)]
    assert min(scores) >= 0.78, scores


def _random_balls(seed: int, shape: tuple[int, int, int], n: int, radius=(5.0, 8.0)) -> np.ndarray:
    """Labels of up to ``n`` balls of random radius at random places, none overlapping."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(20 * n):
        r = rng.uniform(*radius)
        c = np.array([rng.uniform(r, s - r) for s in shape])
        if any(np.linalg.norm(c - c2) < r + r2 + 1 for c2, r2 in placed):
            continue
        placed.append((c, r))
        box = tuple(slice(max(0, int(ci - r)), min(s, int(ci + r) + 2))
                    for ci, s in zip(c, shape, strict=True))
        grid = np.indices([b.stop - b.start for b in box], dtype=float)
        inside = sum((g + b.start - ci) ** 2 for g, b, ci in zip(grid, box, c, strict=True)) <= r * r
        labels[box][inside] = len(placed)
        if len(placed) == n:
            break
    return labels


def test_planes_far_apart_without_a_voxel_size_turn_the_side_views_off(model):
    """Touching nuclei blurred along z as a microscope does, every 4th plane kept, no voxel size:
    taken for isotropic, the side views showed the network squashed nuclei it missed (3D AP@0.5
    0.21). Objects that look flat in the xy view alone turn them off, with a note."""
    truth = _random_balls(0, (96, 96, 96), 150)
    rng = np.random.default_rng(1)
    brightness = np.concatenate([[0], rng.uniform(0.4, 1.6, int(truth.max()))])
    image = ndi.gaussian_filter(20 + 200 * brightness[truth], (3, 1.5, 1.5)) + rng.normal(0, 15, truth.shape)
    image, truth = image[::4].astype(np.float32), truth[::4]
    events: list = []
    labels = run_to_end(iter_segment_volume(model, image), events.append)
    assert average_precision(truth, labels) >= 0.7
    notes = [e.message for e in events if isinstance(e, VolumeNote)]
    assert any("wider than deep" in n and "Only xy planes" in n for n in notes)


def test_bright_debris_in_a_stack_is_clipped_for_the_whole_stack(model, synthetic_nuclei, monkeypatch):
    """Three balls 8x brighter than the nuclei (0.5% of the stack): the planes through them were
    normalised on them (the nuclei there dimmed), the objects came out cut in z, the xy view looked
    flat and the side views were turned off (3D AP@0.5 0.15; 0.86 without the balls). The stack is
    clipped at one level, measured plane by plane on what the xy view found, and its xy view run
    again (0.62)."""
    from test_predict import _without_objects_on

    import napari_unet.core.preprocess as preprocess

    image, truth = synthetic_nuclei
    nuclei = float(np.percentile(image[truth > 0], 90))
    free = np.argwhere(ndi.distance_transform_edt(truth == 0) > 6)  # centres 6 voxels from any nucleus
    free = free[np.all((free >= 3) & (free < np.array(image.shape) - 3), axis=1)]
    centres = free[np.random.default_rng(1).choice(len(free), 3, replace=False)]
    balls = _balls(image.shape, centres, 4.0) > 0
    debris = np.maximum(image.astype(np.float32), ndi.gaussian_filter(balls.astype(np.float32), 1.0) * 8 * nuclei)
    truth = np.where(balls, 0, truth)

    def scored(volume):
        events: list = []
        labels = run_to_end(iter_segment_volume(model, volume), events.append)
        notes = [e.message for e in events if isinstance(e, VolumeNote)]
        return average_precision(truth, _without_objects_on(labels, balls)), notes  # the debris: not scored

    ap, notes = scored(debris)  # (balls as bright as the clipping leaves them, 2x, cost as much: 0.74)
    assert ap >= 0.55
    assert sum("far brighter than the others" in n for n in notes) == 1
    assert not any("look" in n and "wider than deep" in n for n in notes)  # the side views kept
    monkeypatch.setattr(preprocess, "OUTLIER_RATIO", np.inf)
    before, notes = scored(debris)
    assert ap > before + 0.3 and not any("far brighter" in n for n in notes)


def test_a_blank_volume_is_said_so_once_and_its_side_views_are_not_run(caplog):
    """A dark time point of a 4D stack: the xy planes are all constant; the yz and xz views said
    'a plane of the image is constant' again each (three times in the CLI), for nothing."""
    model = load_model("nuclei", device="cpu")
    notes: list[str] = []
    with caplog.at_level("WARNING", logger="napari_unet"):
        labels = run_to_end(iter_segment_volume(model, np.zeros((20, 48, 48), np.float32), spacing=(1.0, 1.0, 1.0)),
                            lambda e: notes.append(e.message) if isinstance(e, VolumeNote) else None)
    assert any(n.startswith("Every plane of the volume is blank") for n in notes)
    assert sum("is constant" in r.getMessage() for r in caplog.records) == 1
    assert not np.asarray(labels).any()


def test_3d_probabilities_that_the_disk_cannot_hold_are_a_clear_error(tmp_path, monkeypatch):
    """The memory-mapped probabilities of a large volume take their disk space first: a full disk is
    an ImageError, and the temporary folder is removed (a bus error ended the process before). In the
    temporary folder, the message names it and TMPDIR (it named the run's own folder, removed by then)."""
    import shutil
    import tempfile

    from napari_unet.core.preprocess import ImageError
    from napari_unet.core.volume import _ProbabilityStore

    side = 1 << 15
    depth = shutil.disk_usage(tmp_path).free // (4 * side * side) + 2  # float16, two maps: 4 bytes a voxel
    with pytest.raises(ImageError, match="not enough free space.*3D probabilities"):
        _ProbabilityStore((int(depth), side, side), workdir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (what TMPDIR sets)
    with pytest.raises(ImageError) as caught:
        _ProbabilityStore((int(depth), side, side))
    message = str(caught.value)
    assert f"not enough free space in {tmp_path} for" in message and "set TMPDIR to a folder" in message
    assert "napari-unet-3d-" not in message and list(tmp_path.iterdir()) == []
    # where the blocks cannot be taken ahead (macOS, Windows): the folder's free space is asked, and a
    # volume that fits is stored (the folder given with its hint failed every large 3D run there)
    import os

    from napari_unet.core import volume

    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    with pytest.raises(ImageError, match=f"not enough free space in {tmp_path}"):
        _ProbabilityStore((int(depth), side, side))
    monkeypatch.setattr(volume, "IN_MEMORY_PROBABILITIES", 0)  # (a memory map even for a small volume)
    store = _ProbabilityStore((2, 64, 64))
    assert store.folder is not None and os.path.isdir(store.folder)
    store.close()


def test_a_narrow_stack_is_segmented_in_xy_planes_with_a_note(model, data_dir):
    # a 20 px wide crop of the synthetic nuclei: 2D segmented it, 3D refused a side view's diameter
    # ("more than half of the image (31 x 20 px)"), a size the user never typed
    import tifffile

    strip = tifffile.imread(data_dir / "nuclei3d_synthetic" / "image.tif")[:, 20:40, :]
    events = []
    labels = run_to_end(iter_segment_volume(model, strip, spacing=(1.0, 1.0, 1.0)), events.append)
    notes = [e.message for e in events if isinstance(e, VolumeNote)]
    assert any("px wide in y or x" in n and "only xy planes" in n for n in notes), notes
    assert labels.max() > 0


def test_the_bar_goes_on_when_the_xy_planes_run_again_clipped(model, data_dir):
    # two nuclei 8x brighter than the others: the xy planes run again clipped, under the same stage,
    # and the bar went back from 30% to 1% (the time left jumped to minutes)
    import tifffile

    from napari_unet.core.events import Progress

    image = tifffile.imread(data_dir / "nuclei3d_synthetic" / "image.tif").astype(np.float32)
    truth = tifffile.imread(data_dir / "nuclei3d_synthetic" / "labels.tif")
    image = np.clip(image - np.percentile(image, 1), 0, None)
    for k in (8, 31):
        image[truth == k] *= 8
    events = []
    run_to_end(iter_segment_volume(model, image, spacing=(1.0, 1.0, 1.0)), events.append)
    bars = [e for e in events if isinstance(e, Progress)]
    assert any("clipped" in e.message for e in bars)
    done = [e.done for e in bars]
    assert done == sorted(done) and done[-1] == bars[-1].total
    # a side view's planes are said as counted ("yz planes: brought back to the image's size (plane 3/57)",
    # its planes' last step, stood for the whole stage)
    sides = [e.message for e in bars if e.message.startswith(("yz", "xz"))]
    assert sides and all(re.fullmatch(r"(yz|xz) planes: plane \d+/\d+", m) for m in sides), sides[:5]


def test_side_views_say_nothing_of_their_own_planes(model, data_dir, caplog):
    # a z-stack with a NaN border: "The plane at index 0 holds no data at all" (a side view's plane, not
    # the z plane 0 the user sees, which has data) and "Part of the image holds no data" twice
    import logging

    import tifffile

    image = tifffile.imread(data_dir / "nuclei3d_synthetic" / "image.tif").astype(np.float32)
    image[:, :, :3] = np.nan
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.predict"):
        labels = segment_volume(model, image, spacing=(1.0, 1.0, 1.0))
    said = [r.getMessage() for r in caplog.records]
    assert not any("holds no data at all" in m for m in said), said
    assert sum("Part of the image holds no data" in m for m in said) == 1
    assert labels.max() > 0 and not labels[:, :, :3].any()


def test_3d_memory_follows_the_memory_free(tmp_path, monkeypatch):
    """A cluster job's limit (a cgroup): the 3D path's fixed budgets, 512 MiB of probabilities in memory
    and watershed blocks of 16 M voxels (634 MB a block), killed a 1.5 GiB job. Both follow the memory
    free; probability folders of runs killed (SIGKILL) are removed by the next run."""
    import os
    import subprocess
    import sys

    import napari_unet._memory as memory
    from napari_unet.core import volume, volume_instances

    free = memory.available_memory()
    assert volume_instances.block_budget() == volume_instances.BLOCK_VOXELS or (free is not None and free < 4 * 2**30)
    monkeypatch.setattr(memory, "available_memory", lambda: 900 * 2**20)  # (what a 1.5 GiB job has left)
    assert 2**20 < volume_instances.block_budget() < 8 * 2**20
    monkeypatch.setattr(memory, "available_memory", lambda: 0)
    assert volume_instances.block_budget() == 2**20  # (a floor: blocks of a few planes are slow, not wrong)
    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 2**20)
    store = volume._ProbabilityStore((16, 256, 256), workdir=str(tmp_path))  # 8 MiB: more than a quarter of 16
    try:
        assert store.folder is not None and os.path.basename(store.folder).startswith(f"napari-unet-3d-{os.getpid()}-")
    finally:
        store.close()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"napari-unet-3d-{int(ended.stdout)}-abc"
    running = tmp_path / "napari-unet-3d-1-def"  # (pid 1 runs)
    for folder in (killed, running):
        folder.mkdir()
        (folder / "probabilities.npy").write_bytes(b"x")
    volume._remove_left_behind(str(tmp_path))
    assert not killed.exists() and running.exists()
