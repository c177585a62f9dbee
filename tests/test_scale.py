"""Object size: diameters, rescaling, the automatic estimate and bad diameters."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core import load_model
from napari_unet.core.predict import PlaneResult, iter_planes, segment
from napari_unet.core.preprocess import ImageError
from napari_unet.core.scale import (
    DiameterSearch,
    check_diameter,
    median_diameter,
    min_size_at,
    nested_share,
    object_diameters,
    parse_diameter,
    pixel_correlation,
    resize_image,
    resize_probabilities,
    ObjectSize,
)


def _upscale_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(labels, np.ones((factor, factor), dtype=labels.dtype))


@pytest.fixture(scope="module")
def dsb_val_fluo(data_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three DSB2018 val fluorescence images (CC0) with their labels."""
    from skimage.io import imread

    root = data_dir / "dsb2018"
    with open(root / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"]
    rows = sorted(rows, key=lambda r: r["id"])[:3]
    return [(imread(root / "images" / f"{r['id']}.png"), imread(root / "labels" / f"{r['id']}.png")) for r in rows]


# ------------------------------------------------------------------ plain functions
def test_median_diameter_of_discs():
    from skimage.draw import disk

    labels = np.zeros((200, 200), np.int32)
    for i, (r, c) in enumerate([(40, 40), (40, 140), (140, 90)], start=1):
        labels[disk((r, c), 15)] = i
    assert median_diameter(labels) == pytest.approx(30, rel=0.03)
    assert median_diameter(np.zeros((5, 5), np.int32)) is None


@pytest.mark.parametrize("text, expected", [("auto", None), ("", None), ("12", 12.0), ("12 px", 12.0),
                                            (" 7,5 ", 7.5), ("12,25", 12.25), ("4 um", 8.0), ("4µm", 8.0), ("500 nm", 1.0)])
def test_parse_diameter(text, expected):
    assert parse_diameter(text, pixel_size_um=0.5) == expected


@pytest.mark.parametrize("bad", ["0", "-3", "nan", "inf", "big", "3 um", "1,000", "2,500 px"])
def test_bad_diameters_say_why(bad):
    with pytest.raises(ImageError, match="diameter"):
        parse_diameter(bad)  # no pixel size: a physical size cannot be used


def test_segment_takes_a_diameter_as_the_gui_and_cli_do(dsb_fluo_crop):
    image, _labels = dsb_fluo_crop
    model = load_model(device="cpu")
    np.testing.assert_array_equal(segment(model, image, diameter="20 px"), segment(model, image, diameter=20))
    with pytest.raises(ImageError, match="'8 um' is a physical size, but the image has no pixel size"):
        segment(model, image, diameter="8 um")  # (the API has no pixel size to turn it into pixels)


def test_diameter_larger_than_half_the_image_is_refused():
    with pytest.raises(ImageError, match="more than half of the image"):
        check_diameter(60, (100, 300))
    assert check_diameter(50, (100, 300)) == 50


def test_a_measured_size_segments_at_the_scale_it_was_measured_at(data_dir, monkeypatch):
    """A cancelled whole-stack run goes on at the size it measured (a review): given as a typed
    diameter, its scale was worked out again and checked, and an estimate capped by the enlargement
    limit of a large plane failed as "too large to segment". A MeasuredSize runs at its own scale."""
    import tifffile

    from napari_unet.core import scale as core_scale
    from napari_unet.core.scale import MeasuredSize

    monkeypatch.setattr(core_scale, "MAX_ENLARGED_PIXELS", 2**17)  # (a large plane's limit, on a small one)
    frame = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[2]
    model = load_model("cells", device="cpu")
    (auto,) = [r for r in iter_planes(model, frame) if isinstance(r, PlaneResult)]
    assert auto.diameter is not None and auto.scale < model.object_size.scale_for(auto.diameter)  # (capped)
    with pytest.raises(ImageError, match="too large to segment"):
        segment(model, frame, diameter=auto.diameter)
    (again,) = [r for r in iter_planes(model, frame, diameter=MeasuredSize(auto.diameter, auto.scale))
                if isinstance(r, PlaneResult)]
    assert (again.diameter, again.scale, again.note) == (auto.diameter, auto.scale, "")
    np.testing.assert_array_equal(again.labels, auto.labels)


def test_a_typed_diameter_beyond_the_largest_rescale_is_said():
    """1 px typed for the `cells` model (30 px) needs the image enlarged 26x; it is enlarged 8x, the
    most, and that was not said (a review: 3.5 min, 3.6 GB, objects still 3.7x too small)."""
    model = load_model("cells", device="cpu")
    plane = np.zeros((64, 64), np.uint8)
    plane[20:40, 20:40] = 200
    (result,) = [r for r in iter_planes(model, plane, diameter=1) if isinstance(r, PlaneResult)]
    assert result.scale == 8.0 and "needs the image enlarged x" in result.note and "x8, the most" in result.note
    assert "smaller than the model's: check the diameter" in result.note
    (result,) = [r for r in iter_planes(model, plane, diameter=12) if isinstance(r, PlaneResult)]
    assert result.note == ""


def test_a_typed_diameter_that_would_enlarge_the_image_too_far_is_refused_before_any_work():
    """A 4096 px plane at a typed 2 px was enlarged 8x: 32,768 px a side, ~12 GB of probabilities."""
    from napari_unet.core.scale import MAX_ENLARGED_PIXELS, enlargement_limit

    model = load_model("nuclei", device="cpu")
    plane = np.zeros((4096, 4096), np.uint8)
    with pytest.raises(ImageError, match=r"2 px would enlarge the image x[0-9.]+ \(to [0-9]{5} x [0-9]{5} px\).*too large"):
        segment(model, plane, diameter=2)
    # the part segmented counts: a field of view of 512 px enlarged 8x is 4096 px a side
    (result,) = [r for r in iter_planes(model, plane, diameter=2, region=(slice(0, 512), slice(0, 512)))
                 if isinstance(r, PlaneResult)]
    assert result.labels.shape == (512, 512) and not result.labels.any()
    assert enlargement_limit((4096, 4096)) == pytest.approx(np.sqrt(MAX_ENLARGED_PIXELS) / 4096)
    assert enlargement_limit((100, 100)) > 8 and enlargement_limit((20000, 20000)) == 1.0
    # an estimate beyond the limit is capped where it is recorded (results, min. sizes, re-thresholds
    # used the scale not run)
    from napari_unet.core.predict import _Sizing

    sizing = _Sizing(model.object_size, limit=2.0)
    sizing.scale = 3.27
    assert sizing.scale == 2.0


def test_scale_brings_objects_into_the_models_range():
    one = ObjectSize.around(14)
    assert one.scale_for(15) == 1.0  # within 15 %
    assert one.scale_for(28) == pytest.approx(16.1 / 28, rel=0.01)  # to the range's upper end
    assert one.scale_for(None) == 1.0
    wide = ObjectSize(17, 11, 30)
    assert wide.scale_for(12) == 1.0 and wide.scale_for(29) == 1.0  # in range: the image's own scale
    assert wide.scale_for(60) == 0.5 and wide.scale_for(5.5) == 2.0
    assert min_size_at(16, 0.5) == 64 and min_size_at(0, 0.5) == 0


def test_resized_probabilities_keep_their_sums():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 37, 53)).astype(np.float32)
    probs /= probs.sum(0)
    back = resize_probabilities(probs, (111, 160))
    assert back.shape == (3, 111, 160)
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)
    assert resize_image(np.zeros((40, 60, 3), np.uint8), 0.5).shape == (20, 30, 3)


@pytest.mark.parametrize("shape, scale", [((128, 175), 2.0), ((128, 175), 1.37), ((128, 175), 0.63),
                                          ((75, 76), 0.25), ((37, 41, 3), 7.3), ((1, 60), 3.0),
                                          ((5, 3), 1.7)])
def test_resizing_is_scikit_image_and_scipy_to_float_rounding(shape, scale):
    """The fast resizing (torch's bilinear resampling, edges redone) gives what the models were
    trained with: scikit-image's ``resize`` (edges mirrored, anti-aliased when shrinking) for
    images, ``ndimage.zoom`` (edges kept) for probabilities."""
    from scipy import ndimage as ndi
    from skimage.transform import resize

    from napari_unet.core.scale import scaled_shape

    rng = np.random.default_rng(1)
    plane = ndi.gaussian_filter((rng.random(shape) * 255).astype(np.uint8), 1)
    size = scaled_shape(shape[:2], scale)
    expected = resize(plane.astype(np.float32), size + shape[2:], order=1, anti_aliasing=scale < 1,
                      preserve_range=True)
    got = resize_image(plane, scale)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=0.01)  # grey levels 0-255
    probs = rng.random((3, *shape[:2])).astype(np.float32)
    probs /= probs.sum(0)
    zoom = (1.0, size[0] / shape[0], size[1] / shape[1])
    np.testing.assert_allclose(resize_probabilities(probs, size),
                               ndi.zoom(probs, zoom, order=1, mode="nearest", grid_mode=True), atol=1e-4)


def test_resizing_gives_a_new_array_and_takes_read_only_ones():
    import warnings

    plane = np.zeros((3, 3), np.float32)
    assert not np.shares_memory(resize_image(plane, 1.1), plane)  # (3 x 3 again once rounded)
    plane.setflags(write=False)  # a memory-mapped file's plane
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resize_image(plane, 2.0).shape == (6, 6)


def discs(radius: int, size: int = 256) -> np.ndarray:
    """A row of discs of ``radius`` across a size x size plane, as labels."""
    from skimage.draw import disk

    labels = np.zeros((size, size), np.int32)
    for i, c in enumerate(range(radius * 2, size - radius * 2, radius * 3), start=1):
        labels[disk((size // 2, c), radius, shape=labels.shape)] = i
    return labels


def test_diameter_search_converges_and_falls_back():
    size = ObjectSize(14, 12, 16)
    search = DiameterSearch(size)
    assert search.next_scale() == 1.0
    search.found(discs(7), 1.0)  # at its own scale, a large cell looks like pieces of ~14 px
    assert search.next_scale() == 0.5 and search.diameter is None
    search.found(discs(14), 0.5)  # at half scale the pieces are whole cells of 28 px: no agreement
    search.found(discs(7), 0.25)  # and at a quarter they still measure 56 px: they agree
    assert search.next_scale() is None
    assert search.diameter == pytest.approx(56, rel=0.05)
    assert search.final_scale == pytest.approx(16 / 56, rel=0.05)

    # of two agreeing levels the finer stands, unless the objects looked larger there than the model's range
    model_17 = ObjectSize(17, 15, 19)
    merged = DiameterSearch(model_17)  # 14 px nuclei: at half scale (7 px) neighbours merge
    merged.found(discs(7), merged.next_scale())  # 14 px at scale 1
    merged.found(discs(4), merged.next_scale())  # 8 px at scale 1/2: "16 px" objects
    assert merged.next_scale() is None and merged.diameter == pytest.approx(14, rel=0.05)
    cut = DiameterSearch(model_17)  # 32 px nuclei: at scale 1 some are cut in pieces
    cut.found(discs(14), cut.next_scale())  # 28 px at scale 1
    cut.found(discs(8), cut.next_scale())  # 16 px at scale 1/2: 32 px objects
    assert cut.next_scale() is None and cut.diameter == pytest.approx(32, rel=0.1)

    # no two levels agree: the finest level whose objects were within the model's range stands
    # (objects larger than the range there are merged neighbours or pieces of larger objects)
    merged_first = DiameterSearch(model_17, smallest_side=256)  # 15 px nuclei, neighbours merged at scale 1
    merged_first.found(discs(17), merged_first.next_scale())  # "35 px" at scale 1: above the range
    merged_first.found(discs(4), merged_first.next_scale())  # 7.6 px at 1/2: 15 px
    merged_first.found(discs(15), merged_first.next_scale())  # 31 px at 1/4: "124 px"; 1/8 is too small
    assert merged_first.next_scale() is None and merged_first.diameter == pytest.approx(15, rel=0.1)
    all_large = DiameterSearch(model_17, smallest_side=256)  # no level within the range: the coarsest
    for radius in (20, 17, 12):
        all_large.found(discs(radius), all_large.next_scale())
    assert all_large.next_scale() is None and all_large.diameter == pytest.approx(24 / 0.25, rel=0.1)

    # objects of the model's size at one level that shrink below its range at the next end the
    # pyramid there: coarser levels only merge them into clumps, whose sizes can agree by chance
    # (bright-field nuclei of 10-20 px measured 80 and 99 px at scales 1/4 and 1/8)
    clumps = DiameterSearch(model_17, smallest_side=1024)
    clumps.found(discs(9), clumps.next_scale())  # 18 px at scale 1, within the range (15-19 px)
    clumps.found(discs(6), clumps.next_scale())  # 12 px at scale 1/2 ("24 px"): below the range
    assert clumps.next_scale() is None and clumps.diameter == pytest.approx(18, rel=0.1)
    # ... but small objects after a level that saw none of the model's size do not: they can be the
    # texture inside objects many times that size
    giant = DiameterSearch(model_17, smallest_side=1024)  # 137 px nuclei
    giant.found(discs(5), giant.next_scale())  # specks of 10 px at scale 1
    giant.found(discs(6), giant.next_scale())  # and of 12 px at 1/2 ("24 px")
    assert giant.next_scale() == 0.25
    giant.found(discs(15), 0.25)  # 120 px at 1/4
    giant.found(discs(9), giant.next_scale())  # 144 px at 1/8: agrees
    assert giant.next_scale() is None and giant.diameter == pytest.approx(137, rel=0.1)

    small = DiameterSearch(size, smallest_side=100)
    small.found(discs(5, 100), 1.0)  # the next level would be 50 px: too small to look at
    assert small.next_scale() is None and small.diameter == pytest.approx(10, rel=0.1)

    empty = DiameterSearch(size)
    while (scale := empty.next_scale()) is not None:
        empty.found(np.zeros((64, 64), np.int32), scale)
    assert [s for s, _d in empty.passes] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert empty.diameter is None and empty.final_scale == 1.0 and "no object found" in empty.note


def test_without_agreement_the_network_surest_of_its_objects_measures_stained_tissue():
    """On a stained-tissue image (``by_certainty``), of levels that do not agree the one where the
    network is clearly surest of its objects (lowest foreground entropy, by more than
    CERTAINTY_MARGIN) measures them, not the level the size rules choose, when its objects show whole
    one level finer too; on other images (bright-field nuclei were surest merged into clumps), within
    the margin, and where the surest level's objects come apart one level finer (clumps of small
    nuclei: the IHC section at its own size), the size rules stand."""
    from napari_unet.core.scale import CERTAINTY_MARGIN

    model_17 = ObjectSize(17, 15, 19)

    def run(by_certainty: bool, levels: list[np.ndarray], uncertainties: list[float]) -> float | None:
        search = DiameterSearch(model_17, smallest_side=256, by_certainty=by_certainty)  # (1/8 is too small)
        for labels, u in zip(levels, uncertainties):
            search.found(labels, search.next_scale(), uncertainty=u)
        assert search.next_scale() is None
        return search.diameter

    # three levels that do not agree: the rules take 1/2's objects, the network is surest at scale 1
    # (the finest level: nothing finer to find its objects again)
    levels = [discs(18, 256), discs(4, 128), discs(15, 64)]  # 36 px (above the range), "16 px", "120 px"
    surest_at_1 = [0.60, 0.75, 0.72]
    assert run(False, levels, surest_at_1) == pytest.approx(16, rel=0.1)  # the finest level within the range
    assert run(True, levels, surest_at_1) == pytest.approx(36, rel=0.1)
    assert run(True, levels, [0.75 - CERTAINTY_MARGIN / 2, 0.75, 0.72]) == pytest.approx(16, rel=0.1)

    # the network surest at 1/4, whose objects are found again one to one at 1/2 (among pieces there):
    # large objects found whole, they measure
    pieces = discs(12, 128)  # three objects of 24 px at 1/2 ...
    for c in range(8, 120, 12):  # ... among pieces of 6 px
        pieces[(np.mgrid[:128, :128][0] - 20) ** 2 + (np.mgrid[:128, :128][1] - c) ** 2 <= 9] = pieces.max() + 1
    whole = [discs(18, 256), pieces, discs(6, 64)]  # 36 px (above the range), "12 px", "48 px"
    assert run(False, whole, [0.80, 0.75, 0.60]) == pytest.approx(12, rel=0.1)
    assert run(True, whole, [0.80, 0.75, 0.60]) == pytest.approx(48, rel=0.1)
    # ... but where none of them is found again one level finer, they are clumps: the rules stand
    clumps = [discs(9, 512), discs(12, 256), discs(10, 128)]  # 18 px, "48 px", "80 px" (3 of them)
    assert run(True, clumps, [0.80, 0.78, 0.60]) == pytest.approx(18, rel=0.1)


def test_stained_tissue_enlarged_is_measured_whole(data_dir):
    """A DSB2018 val colour image of large nuclei (60 px) enlarged 2x: the size rules took the 18 px
    pieces the model cut the 120 px nuclei into (AP@0.5 0.02); the level the network was surest of
    measures them (AP@0.5 over 0.3)."""
    from skimage.io import imread
    from skimage.transform import rescale, resize

    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import PlaneResult, iter_planes
    from napari_unet.core.scale import median_diameter

    name = "13f2bec0a24c70345372febb14c4352877b1b6c1b01896246048e83c345c0914.png"
    image = imread(data_dir / "dsb2018" / "images" / name)[..., :3]
    truth = imread(data_dir / "dsb2018" / "labels" / name)
    big = rescale(image.astype(np.float32), 2, channel_axis=2, order=3, preserve_range=True).clip(0, 255).astype(np.uint8)
    labels = resize(truth, big.shape[:2], order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    result = next(r for r in iter_planes(load_model("nuclei", device="cpu"), big) if isinstance(r, PlaneResult))
    assert result.diameter == pytest.approx(median_diameter(labels), rel=0.25)
    assert average_precision(labels, result.labels) > 0.3


def test_diameter_search_looks_finer_for_tiny_objects():
    """Objects far smaller than the model's (4-5 px nuclei of a 10x objective, for a 14 px model) are
    lost to the minimum size at the image's own scale, or merge: enlarged passes (2x, then 4x) find
    them when the two agree, and the image is segmented enlarged."""
    size = ObjectSize.around(14)
    search = DiameterSearch(size)
    search.found(np.zeros((80, 80), np.int32), search.next_scale())  # nothing at the image's own scale
    assert search.next_scale() == 2.0 and search.diameter is None
    search.found(discs(5), 2.0)  # 10 px there: 5 px objects
    assert search.next_scale() == 4.0
    search.found(discs(9), 4.0)  # 18 px there: 4.5 px, in agreement
    assert search.next_scale() is None and search.passes == [(1.0, None)]
    # of the two, the finer unless its objects looked larger than the model's range (as in the pyramid)
    assert search.diameter == pytest.approx(median_diameter(discs(5)) / 2)
    assert search.count == len(np.unique(discs(5))) - 1
    assert search.final_scale == pytest.approx(size.low / search.diameter, rel=0.01)

    # objects far below the model's size (less than half its range's lower end) also look finer
    small = DiameterSearch(size)
    small.found(discs(2), small.next_scale())  # many 4 px objects
    assert small.next_scale() == 2.0
    small.found(discs(4), 2.0)  # 4 px
    small.found(discs(7), 4.0)  # 3.5 px: agrees, and its objects were within the range there
    assert small.next_scale() is None and small.diameter == pytest.approx(median_diameter(discs(7)) / 4)

    # no two enlarged passes agree (noise, or one or two large objects): the pyramid as before
    unsure = DiameterSearch(size, smallest_side=256)
    unsure.found(discs(40), unsure.next_scale())  # one 80 px object
    for scale, radius in ((2.0, 30), (4.0, 12)):
        assert unsure.next_scale() == scale
        unsure.found(discs(radius), scale)
    assert unsure.next_scale() == 0.5
    unsure.found(discs(20), 0.5)  # 80 px: agrees with the image's own scale
    assert unsure.next_scale() is None and unsure.diameter == pytest.approx(80, rel=0.05)
    assert [s for s, _d in unsure.passes] == [1.0, 0.5]

    # an image of pixel noise (a blank frame): enlarged, its noise looks like 2-3 px objects; not looked for
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:200, :300]
    camera = rng.poisson(90 * np.exp(-((yy - 100) ** 2 + (xx - 150) ** 2) / 4e4))  # uneven illumination
    assert abs(pixel_correlation(camera)) < 0.05
    noise = DiameterSearch(size, correlation=pixel_correlation(camera))
    noise.found(np.zeros((200, 300), np.int32), noise.next_scale())
    assert noise.next_scale() == 0.5 and noise.fine == []

    # an empty field (a textured background): the model sees no specks under the minimum size either
    empty = DiameterSearch(size)
    empty.found(np.zeros((200, 300), np.int32), empty.next_scale(), specks=lambda: discs(40)[:200, :300])
    assert empty.next_scale() == 0.5 and empty.fine == []
    specks = DiameterSearch(size)  # tiny nuclei: specks where the model saw them, dropped by the minimum size
    specks.found(np.zeros((256, 256), np.int32), specks.next_scale(), specks=lambda: discs(2))
    assert specks.next_scale() == 2.0

    # objects the model finds at the image's own scale: no enlarged pass
    plain = DiameterSearch(size)
    plain.found(discs(7), plain.next_scale())
    assert plain.next_scale() == 0.5 and plain.fine == []


def test_diameter_search_starts_at_the_prior_and_checks_it():
    size = ObjectSize(30, 26, 34)  # a whole-cell model; the user's cells are 12 px
    search = DiameterSearch(size, prior=12.0)
    first = search.next_scale()
    assert first == pytest.approx(26 / 12)
    search.found(discs(13), first)  # 26 px at that scale: 12 px in the image, as the prior says
    assert search.next_scale() is None and search.diameter == pytest.approx(12, rel=0.05)
    assert search.final_scale == first  # that pass is the final one
    assert search.passes == []  # no pyramid

    assert search.checks == [(first, pytest.approx(12, rel=0.05))]

    other = DiameterSearch(size, prior=12.0)  # images at five times the magnification
    other.found(discs(65, 1024), other.next_scale())  # 130 px there: 60 px objects, not the prior's 12
    second = other.next_scale()
    assert other.diameter is None and second == pytest.approx(34 / 60, rel=0.05)  # where 60 px objects fit
    other.found(discs(17), second)  # 60 px objects again: the size is confirmed
    assert other.next_scale() is None and other.diameter == pytest.approx(60, rel=0.05)
    assert other.final_scale == second

    unsure = DiameterSearch(size, prior=12.0)
    first = unsure.next_scale()
    unsure.found(discs(65, 1024), first)  # 60 px objects ...
    unsure.found(discs(5), unsure.next_scale())  # ... but 18 px ones where those should fit
    assert unsure.next_scale() is None and unsure.diameter == 12.0 and unsure.final_scale == first

    # two agreeing passes: the finer one measures (at the coarser one small cells merge more)
    wide = ObjectSize(30, 26, 36)
    merging = DiameterSearch(wide, prior=10.0)
    first = merging.next_scale()  # 2.6
    merging.found(discs(17), first)  # 34 px there: 13 px cells, 30% over the prior
    second = merging.next_scale()
    assert second == pytest.approx(26 / 13.1, rel=0.05)
    merging.found(discs(15), second)  # 30 px there: "15 px" cells, in agreement, but merged more
    assert merging.next_scale() is None and merging.diameter == pytest.approx(13.1, rel=0.05)

    tiny = DiameterSearch(size, prior=300.0, smallest_side=100)  # its pass would be 10 px wide
    assert tiny.next_scale() == 1.0

    # a size off the prior that its own pass would measure at the same scale (both within the model's
    # range): what was measured stands (the prior was said: 22 px for nuclei of 14)
    ranged = DiameterSearch(ObjectSize(20, 10, 30), prior=21.6)
    first = ranged.next_scale()
    assert first == 1.0
    ranged.found(discs(7), first)  # 14 px objects
    assert ranged.next_scale() is None and ranged.diameter == pytest.approx(14, rel=0.05)
    assert ranged.final_scale == first


# ------------------------------------------------------------------ with the built-in model
def test_builtin_model_knows_its_diameter():
    model = load_model(device="cpu")
    assert 8 <= model.diameter <= 30
    # the median of its training objects, or (trained at a fixed object diameter) that diameter
    trained_at = (model.metadata.get("stages") or [{}])[-1].get("diameter")
    assert (model.metadata.get("training_diameter") or 0) > 0 or trained_at == pytest.approx(model.diameter)


@pytest.mark.parametrize("factor", [2])
def test_estimate_finds_the_size_of_upscaled_nuclei(dsb_val_fluo, factor):
    from skimage.transform import rescale

    model = load_model(device="cpu")
    for image, labels in dsb_val_fluo:
        big = rescale(image.astype(np.float32), factor, order=3, preserve_range=True)
        truth = median_diameter(_upscale_labels(labels, factor))
        result = next(i for i in iter_planes(model, big) if isinstance(i, PlaneResult))
        assert result.diameter == pytest.approx(truth, rel=0.15)
        assert result.labels.shape == big.shape


def test_tiny_nuclei_are_found_and_segmented_enlarged(dsb_val_fluo):
    """DSB2018 val nuclei shrunk to about 4 px (a 10x objective; anti-aliased, labels nearest): the
    pass at the image's own scale finds none of them (below the minimum size), the enlarged passes
    do. Before, nothing was found and nothing segmented (AP 0)."""
    from skimage.transform import resize

    from napari_unet.core.metrics import average_precision

    model = load_model(device="cpu")
    for image, labels in dsb_val_fluo[:2]:
        factor = 4.0 / median_diameter(labels)
        shape = (round(image.shape[0] * factor), round(image.shape[1] * factor))
        small = resize(image.astype(np.float32), shape, order=1, anti_aliasing=True, preserve_range=True)
        truth = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
        assert pixel_correlation(small) > 0.5  # structure of a few pixels, not noise
        result = next(i for i in iter_planes(model, small) if isinstance(i, PlaneResult))
        assert result.diameter == pytest.approx(median_diameter(truth), rel=0.25)
        assert result.scale > 2 and result.labels.shape == shape
        assert average_precision(truth, result.labels) > 0.6


def test_cli_refuses_a_bad_diameter_and_writes_nothing(tmp_path, dsb_val_fluo, capsys):
    image = dsb_val_fluo[0][0]
    tifffile.imwrite(tmp_path / "a.tif", image)
    for bad in ("-2", "nan", "0"):  # refused before any work
        rc = main(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"), "--diameter", bad,
                   "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "diameter" in err and len(err.splitlines()) == 1
    # larger than half the image: that input fails, with the reason, and nothing is written
    rc = main(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"), "--diameter",
               str(image.shape[0]), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "more than half of the image" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_takes_a_diameter_in_micrometres_through_the_files_pixel_size(tmp_path, dsb_val_fluo, capsys):
    image = dsb_val_fluo[0][0]
    tifffile.imwrite(tmp_path / "cal.tif", image, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "px.tif", image, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"})
    assert main(["predict", str(tmp_path / "cal.tif"), "--out", str(tmp_path / "um"), "--diameter", "8um",
                 "--no-progress"]) == 0
    assert main(["predict", str(tmp_path / "px.tif"), "--out", str(tmp_path / "px"), "--diameter", "16",
                 "--no-progress"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "um" / "cal_masks.tif"),
                                  tifffile.imread(tmp_path / "px" / "px_masks.tif"))  # 8 um = 16 px of 0.5 um
    tifffile.imwrite(tmp_path / "one.tif", image, imagej=True, resolution=(1, 1), metadata={"unit": "um"})
    assert main(["predict", str(tmp_path / "one.tif"), "--out", str(tmp_path / "one"), "--diameter", "16um",
                 "--no-progress"]) == 0  # pixels of exactly 1 um are a pixel size too
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "one" / "one_masks.tif"),
                                  tifffile.imread(tmp_path / "px" / "px_masks.tif"))
    capsys.readouterr()
    tifffile.imwrite(tmp_path / "plain.tif", image)  # no pixel size: a physical diameter cannot be used
    assert main(["predict", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "x"), "--diameter", "8um",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no pixel size" in err and "plain.tif: plain.tif" not in err  # the file named once


def test_widget_diameter_field(make_napari_viewer, qtbot, dsb_val_fluo, notifications):
    from napari_unet.widgets.segment import masks_layer_name

    image, _labels = dsb_val_fluo[0]
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_image(image, name="nuclei")
    w.reset_choices()
    w._image_combo.value = layer
    w._diameter.value = "-1"
    w._run_button.clicked.emit()
    assert w._worker is None and any("diameter" in m for m in notifications)
    assert masks_layer_name("nuclei") not in viewer.layers or viewer.layers[masks_layer_name("nuclei")].data.max() == 0

    # a cell drawn in a Labels layer of its own, before any masks exist, gives the diameter
    drawn = viewer.add_labels(np.zeros(image.shape[:2], np.int32), name="drawn")
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    drawn.data[(yy - 40) ** 2 + (xx - 40) ** 2 <= 10 ** 2] = 1
    drawn.selected_label = 1
    w.diameter_from_selected_label()
    assert float(w._diameter.value) == pytest.approx(20, abs=1)
    viewer.layers.selection.active = layer

    w._diameter.value = "auto"
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "estimated" in w._diameter_used.value
    masks = viewer.layers[masks_layer_name("nuclei")]
    assert masks.data.max() > 5
    notes = len([m for m in notifications if m.startswith("Object diameter")])
    w._diameter.value = "25"  # typed after the run, then Threshold moved: the run's diameter was estimated
    w._threshold.value = 0.6
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert "estimated" in w._diameter_used.value
    assert len([m for m in notifications if m.startswith("Object diameter")]) == notes  # not said again
    masks.selected_label = 0
    w.diameter_from_selected_label()
    assert w._diameter.value == "25" and any("background" in m for m in notifications)
    masks.selected_label = int(np.bincount(masks.data.ravel())[1:].argmax()) + 1
    w.diameter_from_selected_label()
    assert float(w._diameter.value) > 3


def test_a_typed_diameter_fits_a_zoomed_in_field_of_view(make_napari_viewer, qtbot, dsb_val_fluo, notifications):
    from napari_unet.widgets.segment import SCOPE_VIEW, masks_layer_name

    image, _labels = dsb_val_fluo[0]
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_image(image, name="nuclei")
    w.reset_choices()
    w._image_combo.value = layer
    viewer.camera.zoom = 30  # a few big cells fill the view: the view is far smaller than twice 60 px
    viewer.camera.center = (0, image.shape[0] / 2, image.shape[1] / 2)
    w._scope.value = SCOPE_VIEW
    w._diameter.value = "60"
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert not [m for m in notifications if "more than half" in m]
    assert w._status.value.startswith("Done") and "60 px (given)" in w._diameter_used.value
    assert masks_layer_name("nuclei") in viewer.layers


# ------------------------------------------------------------------ training at the model's scale
def test_training_examples_are_brought_to_the_models_object_size(dsb_fluo_crop):
    from napari_unet.core.examples import prepare_examples

    model = load_model(device="cpu")
    image, labels = dsb_fluo_crop
    image, labels = np.kron(image, np.ones((3, 3), image.dtype)), _upscale_labels(labels.astype(np.int32), 3)
    (example,) = prepare_examples(model, [image], [labels])
    truth = float(np.median(object_diameters(labels)))  # the labels' size, specks (cut slivers) left out
    assert truth > model.object_size.high  # nuclei three times larger than the model's
    assert example.scale == pytest.approx(model.object_size.scale_for(truth))
    assert example.labels.shape == tuple(round(s * example.scale) for s in labels.shape)
    assert median_diameter(example.labels) == pytest.approx(truth * example.scale, rel=0.1)
    assert set(np.unique(example.labels)) <= set(np.unique(labels))  # ids kept, none invented


def test_a_model_trained_from_scratch_records_its_training_diameter(dsb_fluo_crop):
    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.events import run_to_end
    from napari_unet.core.model import UNet
    from napari_unet.core.train import finetune

    image, labels = dsb_fluo_crop
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch")
    fresh = SegmentationModel(net, "bg-interior-boundary", metadata={"name": "fresh"})
    assert fresh.diameter is None
    model = run_to_end(finetune(fresh, [image], [labels], steps=2, patch_size=64, batch_size=2, from_scratch=True))
    size = float(np.median(object_diameters(labels)))  # specks (cut slivers) left out
    assert model.metadata["training_diameter"] == pytest.approx(size, rel=0.01)
    assert model.diameter == pytest.approx(size, rel=0.01)


def test_estimate_finds_the_size_of_nuclei_four_times_the_models(data_dir):
    """SIM+ nuclei (~55 px; the built-in model's diameter is 14 px): large objects, cut into pieces
    at the finer pyramid levels, are measured at the coarser level of the agreeing pair (at the
    finer one they look larger than the sizes the model segments well)."""
    frames = tifffile.imread(data_dir / "ctc_sim_plus" / "images.tif")
    truths = tifffile.imread(data_dir / "ctc_sim_plus" / "labels.tif")
    model = load_model(device="cpu")
    result = next(i for i in iter_planes(model, frames[10]) if isinstance(i, PlaneResult))
    assert result.diameter == pytest.approx(median_diameter(truths[10]), rel=0.15)


def test_a_fine_tuned_model_records_the_size_of_its_data(dsb_fluo_crop):
    """The diameter of the user's objects, in the user's pixels (not the rescaled training grid),
    is where the automatic diameter starts on their other images; from scratch there is none."""
    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.events import run_to_end
    from napari_unet.core.model import UNet
    from napari_unet.core.train import finetune

    image, labels = dsb_fluo_crop
    image, labels = np.kron(image, np.ones((3, 3), image.dtype)), _upscale_labels(labels.astype(np.int32), 3)
    base = load_model(device="cpu")
    assert base.data_diameter is None
    # (the latest weights: with the starting ones kept the model stays as it was, see test_resume)
    tuned = run_to_end(finetune(base, [image], [labels], steps=2, patch_size=64, batch_size=2, select="latest"))
    assert tuned.data_diameter == pytest.approx(median_diameter(labels), rel=0.1)
    assert tuned.diameter == base.diameter  # the model's own scale is its base's
    # planes through 3D objects (a z-stack's masks): their cross-sections measure smaller than the objects
    # (10.3 px against 13.4 on the synthetic nuclei: 3D AP 0.61 -> 0.67 with the base's start kept)
    cut = run_to_end(finetune(base, [image], [labels], steps=2, patch_size=64, batch_size=2, select="latest",
                              sections=True))
    assert cut.data_diameter == base.data_diameter and cut.metadata["training"]["sections"] is True

    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch")
    fresh = SegmentationModel(net, "bg-interior-boundary", metadata={"name": "fresh", "data_diameter": 40.0})
    scratch = run_to_end(finetune(fresh, [image], [labels], steps=2, patch_size=64, batch_size=2, from_scratch=True))
    assert scratch.data_diameter is None


def test_a_stack_whose_first_plane_holds_no_object_is_sized_on_the_next(dsb_val_fluo):
    """A time-lapse that starts with an empty frame: the automatic diameter comes from the first
    plane where the model finds objects (it was the image's own scale for the whole stack)."""
    from skimage.transform import rescale

    model = load_model(device="cpu")
    image, _truth = dsb_val_fluo[0]
    big = rescale(image.astype(np.float32), 2, order=3, preserve_range=True)  # not at the model's size
    rng = np.random.default_rng(0)
    ramp = 10 * np.mgrid[: big.shape[0], : big.shape[1]][1] / big.shape[1]  # uneven illumination, no cell
    empty = (np.median(big) + rng.normal(0, 3, big.shape) + ramp).astype(big.dtype)
    results = [r for r in iter_planes(model, np.stack([empty, big])) if isinstance(r, PlaneResult)]
    assert results[0].diameter is None and "next plane" in results[0].note
    alone = next(r for r in iter_planes(model, big) if isinstance(r, PlaneResult))
    assert results[1].diameter == pytest.approx(alone.diameter) and results[1].scale == alone.scale
    assert "index 1" in results[1].note
    np.testing.assert_array_equal(results[1].labels, alone.labels)
    # the empty plane is segmented again at that size, so that every plane of the run has it
    assert len(results) == 3 and results[2].index == (0,) and results[2].scale == alone.scale
    assert results[2].diameter == pytest.approx(alone.diameter)
    # the planes of a z-stack too: the 3D path's xy view takes the later result of a plane
    volume = [r for r in iter_planes(model, np.stack([empty, big]), to_model_diameter=True)
              if isinstance(r, PlaneResult)]
    assert [r.index for r in volume] == [(0,), (1,), (0,)]
    assert volume[2].scale == volume[1].scale != 1.0


def test_a_noise_only_first_frame_does_not_set_the_size_of_a_time_lapse(data_dir):
    """SIM+ frames (nuclei ~54 px) after a noise-only frame, in which the model finds one stray
    blob: the stack was sized on that blob (33 px for the whole run, AP@0.5 on the frames with
    cells 0.57 instead of 0.80); an estimate on fewer than three objects now waits for the next
    planes, and the one resting on the most objects is taken."""
    from napari_unet.core.metrics import average_precision

    model = load_model(device="cpu")
    images = tifffile.imread(data_dir / "ctc_sim_plus" / "images.tif")[[5, 10]]
    truth = tifffile.imread(data_dir / "ctc_sim_plus" / "labels.tif")[[5, 10]]
    blank = np.random.default_rng(0).poisson(90, images[0].shape).astype(np.float32)  # the camera's background
    yy, xx = np.mgrid[: blank.shape[0], : blank.shape[1]]
    blank[(yy - 300) ** 2 + (xx - 300) ** 2 < 20**2] += 40  # and one stray blob
    blank = blank.astype(images.dtype)
    alone = next(r for r in iter_planes(model, images) if isinstance(r, PlaneResult))
    results = {}
    for r in iter_planes(model, np.concatenate([blank[None], images])):
        if isinstance(r, PlaneResult):
            results[r.index] = r  # the blank plane comes again once the size is known
    assert results[(1,)].diameter == pytest.approx(alone.diameter, rel=0.1)
    assert results[(0,)].scale == results[(1,)].scale == results[(2,)].scale
    assert "index 1" in results[(1,)].note
    for t in (0, 1):
        assert average_precision(truth[t], results[(t + 1,)].labels) >= 0.75


def test_frames_of_camera_noise_are_left_empty_and_take_no_part_in_the_size(data_dir, caplog):
    """A time-lapse whose first frames are dark (camera noise alone): a model outlined its noise as
    hundreds of objects of a few pixels, and each such frame took one of the planes the size is
    looked for on. Now they come out empty, said once, and the size comes from the cells."""
    import logging

    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import ESTIMATE_RETRY_PLANES

    model = load_model("cells", device="cpu")
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[[6, 7]]
    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[[6, 7]]
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 5, (ESTIMATE_RETRY_PLANES + 1, *images.shape[1:])).astype(images.dtype)
    alone = [r for r in iter_planes(model, images) if isinstance(r, PlaneResult)]
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.predict"):
        results = [r for r in iter_planes(model, np.concatenate([dark, images])) if isinstance(r, PlaneResult)]
    said = [r.getMessage() for r in caplog.records if "camera noise" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("The plane at index 0 holds camera noise alone")
    assert "constant" not in caplog.text  # (how the plane is left empty is no news)
    assert [r.index[0] for r in results] == list(range(len(dark) + 2))  # each plane once: nothing to redo
    assert not any(r.labels.any() for r in results[: len(dark)])
    assert [r.blank for r in results] == ["noise"] * len(dark) + [None, None]  # why, for the GUI's note
    first = results[len(dark)]
    assert first.diameter == pytest.approx(alone[0].diameter) and first.scale == alone[0].scale
    for t in (0, 1):
        np.testing.assert_array_equal(results[len(dark) + t].labels, alone[t].labels)
        assert average_precision(truth[t], results[len(dark) + t].labels) > 0.2


def test_a_plane_drowned_in_shot_noise_is_not_enlarged_into_specks(data_dir):
    """A DSB2018 val image with ~4 photons at its brightest nuclei (no structure of a few pixels
    left): the model finds a piece of a nucleus at scale 1, which sized the image at 6.6 px; enlarged
    3.5x (after the objects there measured 4.2 px) the model outlined 675 specks of noise. Such a
    plane is not enlarged, and the note says why."""
    from skimage.io import imread

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"]
    row = rows[1]
    image = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png").astype(float)
    image = image[..., :3].mean(-1) if image.ndim == 3 else image
    truth = imread(data_dir / "dsb2018" / "labels" / f"{row['id']}.png")
    dim = np.random.default_rng(1).poisson(image / image.max() * 4 + 1).astype(np.uint16)
    result = next(r for r in iter_planes(load_model(device="cpu"), dim) if isinstance(r, PlaneResult))
    assert result.scale <= 1.0 and "no structure of a few pixels" in result.note
    assert result.labels.max() <= truth.max()


def test_the_objects_segmented_at_the_estimate_measure_it_again():
    from napari_unet.core.predict import _Sizing

    model = load_model(device="cpu")
    size = model.object_size
    yy, xx = np.mgrid[:200, :200]

    def discs(diameter: float) -> np.ndarray:
        labels = np.zeros((200, 200), np.int32)
        for n, (y, x) in enumerate([(30, 30), (30, 120), (120, 30), (120, 120), (170, 170)], 1):
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= (diameter / 2) ** 2] = n
        return labels

    # estimated 12 px (merged pairs, say), but at that scale the objects measure 6 px: 6 px it is
    sizing = _Sizing(size, scale=size.scale_for(12.0), diameter=12.0, check_pending=True)
    assert sizing.check(discs(6.0)) and sizing.diameter == pytest.approx(median_diameter(discs(6.0)))
    assert sizing.scale == pytest.approx(size.scale_for(sizing.diameter)) and not sizing.check_pending
    # they measure what was estimated: nothing to do
    sizing = _Sizing(size, scale=size.scale_for(12.0), diameter=12.0, check_pending=True)
    assert not sizing.check(discs(12.5)) and sizing.diameter == 12.0
    # objects that measure larger at that scale are merged by the model at its own size: it stands
    sizing = _Sizing(size, scale=size.scale_for(12.0), diameter=12.0, check_pending=True)
    assert not sizing.check(discs(30.0)) and sizing.diameter == 12.0


def test_specks_in_a_users_labels_do_not_set_their_size(data_dir):
    """Eraser or brush leftovers among real cells (Usiigaci phase contrast, MIT): the size training
    rescales an example by, and a fine-tuned model records, is the cells', not the specks'."""
    from napari_unet.core.calibrate import training_diameter
    from napari_unet.core.examples import at_model_scale
    from napari_unet.core.scale import median_diameter

    image = tifffile.imread(data_dir / "usiigaci_phase" / "images.tif", key=0)
    labels = tifffile.imread(data_dir / "usiigaci_phase" / "labels.tif", key=0).astype(np.int32)
    specked = labels.copy()
    rng = np.random.default_rng(0)
    n = int(specked.max())
    for k in range(int(1.2 * len(np.unique(labels)))):  # more specks than cells
        y, x = rng.integers(0, labels.shape[0] - 3), rng.integers(0, labels.shape[1] - 3)
        specked[y:y + 2, x:x + 2] = n + 1 + k
    cells = median_diameter(labels)
    assert median_diameter(specked) < 0.5 * cells  # what a plain median makes of them
    assert training_diameter([specked]) == pytest.approx(cells, rel=0.1)
    model = load_model("cells", device="cpu")
    assert at_model_scale(model, image, specked)[2] == pytest.approx(at_model_scale(model, image, labels)[2], rel=0.1)


def test_nuclei_far_larger_than_a_crop_of_the_plane_are_measured_whole(data_dir):
    """SIM+ nuclei enlarged 3x (about 150 px): the coarse passes of the estimate, which measure large
    objects, see a shrunk view of the whole plane's centre, not a 1024 px crop of it shrunk (a few
    nuclei, mostly cut by the crop: measured at 11 px, AP 0)."""
    from scipy import ndimage as ndi

    from napari_unet.core.metrics import average_precision

    frame = tifffile.imread(data_dir / "ctc_sim_plus" / "images.tif", key=20).astype(np.float32)
    truth = tifffile.imread(data_dir / "ctc_sim_plus" / "labels.tif", key=20).astype(np.int32)
    image = ndi.zoom(frame, 3, order=1)
    truth = _upscale_labels(truth, 3)
    results = [r for r in iter_planes(load_model("nuclei", device="cpu"), image) if isinstance(r, PlaneResult)]
    (result,) = results
    assert result.diameter == pytest.approx(median_diameter(truth), rel=0.25)
    assert average_precision(truth, result.labels) > 0.5


def test_bright_field_nuclei_are_not_sized_by_clumps_at_coarse_levels(data_dir):
    """A bright-field DSB2018 train image (1024 x 1024, nuclei of 20 px): the pass at scale 1 finds
    nuclei of the model's size, at 1/2 they look smaller than its range, and the levels below
    merged them into clumps of 80 and 99 px that agreed: the plane was segmented at a fifth of its
    nuclei's size (AP@0.5 0). The pyramid now stops where the objects shrank below the range."""
    from skimage.io import imread

    from napari_unet.core.metrics import average_precision

    name = "8d05fb18ee0cda107d56735cafa6197a31884e0a5092dc6d41760fb92ae23ab4.png"
    image = imread(data_dir / "dsb2018" / "images" / name)
    image = image[..., :3] if image.ndim == 3 else image  # RGBA: no alpha
    truth = imread(data_dir / "dsb2018" / "labels" / name).astype(np.int32)
    (result,) = [r for r in iter_planes(load_model("nuclei", device="cpu"), image) if isinstance(r, PlaneResult)]
    assert result.diameter == pytest.approx(median_diameter(truth), rel=0.15)
    assert average_precision(truth, result.labels) > 0.5


def _discs_at(size: int, discs: list[tuple[float, float, float]], scale: float) -> np.ndarray:
    """Labels of a plane of ``size`` px rescaled by ``scale``: discs (row, column, radius) in the
    plane's own pixels."""
    from skimage.draw import disk

    n = round(size * scale)
    labels = np.zeros((n, n), np.int32)
    for i, (r, c, radius) in enumerate(discs, start=1):
        labels[disk((r * scale, c * scale), radius * scale, shape=labels.shape)] = i
    return labels


def test_levels_without_agreement_are_told_apart_by_the_objects_found_at_both():
    model_17 = ObjectSize(17, 15, 19)
    # large nuclei (32 px) found whole at scale 1 among fragments of others (17 px): the median at
    # scale 1 is a fragment's; at 1/2 the large nuclei measure 16 px there, 32 px: the coarser stands
    nuclei = [(60, 40 + 60 * i, 16) for i in range(4)]
    fragments = [(160, 30 + 40 * i, 8.5) for i in range(5)]
    large = DiameterSearch(model_17, smallest_side=128)  # (no level below 1/2)
    large.found(_discs_at(256, nuclei + fragments, 1.0), large.next_scale())
    large.found(_discs_at(256, nuclei, 0.5), large.next_scale())
    assert large.next_scale() is None
    assert large.passes[0][1] == pytest.approx(17, rel=0.1) and large.diameter == pytest.approx(32, rel=0.1)
    # small nuclei (18 px) found at both levels, and clumps of others that look of the model's size
    # at 1/2 (36 px): the finer stands
    single = [(30, 30 + 40 * i, 9) for i in range(4)]
    clumped = [(120 + 40 * (i // 3), 30 + 70 * (i % 3) + d, 9) for i in range(5) for d in (0, 18)]
    small = DiameterSearch(model_17, smallest_side=128)
    small.found(_discs_at(256, single + clumped, 1.0), small.next_scale())
    clumps = [(120 + 40 * (i // 3), 39 + 70 * (i % 3), 18) for i in range(5)]
    small.found(_discs_at(256, single + clumps, 0.5), small.next_scale())
    assert small.next_scale() is None
    assert small.passes[1][1] == pytest.approx(36, rel=0.1) and small.diameter == pytest.approx(18, rel=0.1)


def test_planes_segmented_again_at_the_size_found_keep_the_bar_going_forward(data_dir):
    """C2C12 frames where the first two tell no size (no object, then two): they are segmented
    again once the third tells it. The bar went back (100% -> 87%) and ended at 93%, and the message
    named plane 1 again as if the run had restarted."""
    from napari_unet.core.events import Progress

    model = load_model("cells", device="cpu")
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[[0, 9, 1]]
    events = list(iter_planes(model, images))
    assert [e.index[0] for e in events if isinstance(e, PlaneResult)] == [0, 1, 2, 0, 1]
    bars = [e for e in events if isinstance(e, Progress)]
    fractions = [e.fraction for e in bars]
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:], strict=False))
    assert fractions[-1] == pytest.approx(1.0)
    again = [e.message for e in bars if "again" in e.message]
    assert again and again[0].endswith("of plane 1/3 again, at the object size found")
    # the run ends while the size is still looked for: the last plane runs again at the best estimate
    # (it was counted as new work: the bar went back to 87.5% and ended there)
    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    events = list(iter_planes(model, np.stack([np.zeros_like(frames[9]), frames[9]])))
    assert [e.index[0] for e in events if isinstance(e, PlaneResult)] == [0, 1, 1]
    fractions = [e.fraction for e in events if isinstance(e, Progress)]
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:], strict=False)) and fractions[-1] == 1.0


def test_diameter_from_shapes_drawn_and_pixels_of_unequal_sides(make_napari_viewer, notifications):
    """A circle (or box) drawn around a cell gives the diameter of a circle of its area, a line
    across it its length, an outline its equivalent diameter, in the image's pixels; a point is
    refused. A physical diameter on pixels of unequal sides converts through the side of a square
    pixel of the same area (as the equivalent diameters measured are): a 10 um cell drawn on pixels
    of 0.25 x 0.5 um is 28.3 px, both ways."""
    from napari_unet.widgets._diameter import pixel_size_um

    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    image = viewer.add_image(np.zeros((200, 300), np.float32), name="cells", scale=(0.25, 0.5))
    w.reset_choices()
    w._image_combo.value = image
    shapes = viewer.add_shapes(scale=(0.25, 0.5))
    shapes.add_ellipses(np.array([[50, 50], [50, 30]]))  # centre, radii (y, x) in the layer's pixels
    shapes.add_lines(np.array([[10, 10], [10, 40]]))
    shapes.add_polygons(np.array([[0, 0], [0, 20], [20, 20], [20, 0]]))
    viewer.layers.selection.active = shapes
    shapes.selected_data = {0}
    w.diameter_from_selected_label()
    assert float(w._diameter.value) == pytest.approx(np.sqrt(100 * 60), abs=0.1)
    shapes.selected_data = {1}
    w.diameter_from_selected_label()
    assert float(w._diameter.value) == pytest.approx(30, abs=0.1)
    shapes.selected_data = {2}
    w.diameter_from_selected_label()
    assert float(w._diameter.value) == pytest.approx(2 * np.sqrt(400 / np.pi), abs=0.1)
    points = viewer.add_points([[5, 5]])
    viewer.layers.selection.active = points
    w._diameter.value = "auto"
    w.diameter_from_selected_label()
    assert w._diameter.value == "auto" and any("point has no size" in m for m in notifications)
    # pixels of 0.25 x 0.5 um: a square pixel of the same area is sqrt(0.125) um a side
    assert pixel_size_um(image) == pytest.approx(np.sqrt(0.25 * 0.5))
    cell = viewer.add_labels(np.zeros((200, 300), np.int32), name="drawn", scale=(0.25, 0.5))
    yy, xx = np.mgrid[:200, :300]
    cell.data[((yy - 100) * 0.25) ** 2 + ((xx - 150) * 0.5) ** 2 <= 5 ** 2] = 1  # 10 um across
    cell.selected_label = 1
    viewer.layers.selection.active = cell
    w.diameter_from_selected_label()
    from_label = float(w._diameter.value)
    assert from_label == pytest.approx(10 / pixel_size_um(image), rel=0.02)


def test_a_diameter_given_to_a_model_without_one_is_not_reported_as_used(dsb_val_fluo):
    """A model file that records no object size runs at the image's scale: the result says no
    diameter was used (it said the one given), and its note says why."""
    from napari_unet.core import load_model
    from napari_unet.core.predict import PlaneResult, iter_planes

    image, _labels = dsb_val_fluo[0]
    model = load_model("nuclei", device="cpu")
    model.metadata.pop("diameter", None)
    model.metadata.pop("training_diameter", None)
    model.metadata.pop("data_diameter", None)
    if model.object_size is not None:
        pytest.skip("this model's size comes from elsewhere in its metadata")
    result = next(r for r in iter_planes(model, image, diameter=40) if isinstance(r, PlaneResult))
    assert result.diameter is None and result.scale == 1.0 and "not used" in result.note


def test_the_estimate_looks_where_the_objects_are(dsb_val_fluo):
    """A large plane whose nuclei are all at one side (a colony, a wound's edge): the estimation
    pass's window holds them, not the background of the centre; objects everywhere: the centre."""
    from napari_unet.core.scale import central_crop, structured_crop

    image, _labels = dsb_val_fluo[0]
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    plane = rng.normal(float(np.percentile(image, 5)), 1.0, (2 * h, 4 * w)).astype(np.float32)
    plane[:h, :w] = image  # the nuclei in one corner
    crop = structured_crop(plane, max(h, w))
    offset = crop.__array_interface__["data"][0] - plane.__array_interface__["data"][0]
    y0, x0 = divmod(offset // plane.itemsize, plane.shape[1])
    assert y0 < h // 4 and x0 < w // 4, (y0, x0)  # (the centre's window starts at y h / 2, x 1.5 w)
    tiled = np.tile(image, (2, 4)).astype(np.float32)
    np.testing.assert_array_equal(structured_crop(tiled, max(h, w)), central_crop(tiled, max(h, w)))


def test_field_of_view_is_sized_with_its_surroundings(dsb_val_fluo):
    """A zoomed-in field of view of a few large nuclei (DSB2018 val, 100 px nuclei enlarged 2x; a view of
    216 px, two or three nuclei, most cut by its edge) was sized from itself: 16 px, the nuclei cut into
    pieces (AP@0.5 0.12). The estimate's shrunk passes look around the view, and the view's edge cuts
    no object that measures the size again: as the whole slice."""
    from skimage.transform import rescale

    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import PlaneResult, iter_planes

    image, truth = dsb_val_fluo[1]
    image = rescale(image.astype(np.float32), 2, order=3, preserve_range=True, anti_aliasing=False)
    truth = np.kron(truth, np.ones((2, 2), truth.dtype))
    h, w = truth.shape
    view = (slice(h * 35 // 100, h * 65 // 100), slice(w * 35 // 100, w * 65 // 100))
    result = next(r for r in iter_planes(load_model("nuclei", device="cpu"), image, region=view, context=32)
                  if isinstance(r, PlaneResult))
    assert result.diameter == pytest.approx(median_diameter(truth), rel=0.2)
    assert result.labels.shape == truth[view].shape
    assert average_precision(truth[view], result.labels) > 0.5


def test_estimate_windows_of_a_view():
    from napari_unet.core.scale import ESTIMATE_CROP, ESTIMATE_MIN_SIDE, estimate_window, surroundings

    # a view of 200 px in a 3000 x 900 plane: looked around up to 4 x 512 px, within the plane
    around = surroundings((slice(1000, 1200), slice(50, 250)), (3000, 900))
    assert around == (slice(76, 2124), slice(0, 900))
    # a large view: at most 2048 px a side, or its own side (a 2000 px view of an 8000 px plane read it all)
    assert surroundings((slice(3000, 5000), slice(3000, 5000)), (8000, 8000)) == (slice(2976, 5024),) * 2
    assert surroundings((slice(1000, 4000), slice(0, 100)), (8000, 8000)) == (slice(1000, 4000), slice(0, 2048))
    plane = np.zeros((2048, 900), np.float32)
    view = (slice(924, 1124), slice(50, 250))  # (the view in those surroundings)
    rows, cols = estimate_window(plane, 1.0, view)  # scale 1: at least 512 px a side
    assert (rows.stop - rows.start, cols.stop - cols.start) == (ESTIMATE_MIN_SIDE, ESTIMATE_MIN_SIDE)
    assert rows.start <= 924 and rows.stop >= 1124 and cols.start == 0
    rows, cols = estimate_window(plane, 0.5, view)  # half scale: twice that, clipped to the plane
    assert (rows.stop - rows.start, cols.stop - cols.start) == (2 * ESTIMATE_MIN_SIDE, 900)
    rows, cols = estimate_window(plane, 2.0, view)  # enlarged: within the view
    assert (rows, cols) == view
    # a view larger than the crop: its centre, as a whole plane's
    big = np.zeros((3000, 3000), np.float32)
    rows, cols = estimate_window(big, 1.0, (slice(0, 3000), slice(0, 3000)))
    assert rows.stop - rows.start == ESTIMATE_CROP == cols.stop - cols.start


def test_field_of_view_is_told_with_its_surroundings(data_dir):
    """A view of 76 x 96 px in a corner of a stained section (DSB2018 val, CC0) was taken for merged
    fluorescence channels (its blue one segmented): told with its surroundings, it is what the
    whole slice is, and sized as it is."""
    from skimage.io import imread

    from napari_unet.core.predict import PlaneResult, iter_planes

    name = "f4b7c24baf69b8752c49d0eb5db4b7b5e1524945d48e54925bff401d5658045d.png"
    image = imread(data_dir / "dsb2018" / "images" / name)[..., :3]
    model = load_model("nuclei", device="cpu")
    whole, view = (next(r for r in iter_planes(model, image, region=region, context=32) if isinstance(r, PlaneResult))
                   for region in (None, (slice(166, 242), slice(208, 304))))
    assert view.labels.shape == (76, 96)
    assert (view.colour, view.kind) == (whole.colour, whole.kind) == (None, "colour")
    assert view.diameter == pytest.approx(whole.diameter, rel=0.05)
    # an infinite value around the view, not in it: the view is segmented (sized on itself)
    spoilt = image.astype(np.float32)
    spoilt[5, 5] = np.inf
    (alone,) = [r for r in iter_planes(model, spoilt, region=(slice(166, 242), slice(208, 304)), context=32)
                if isinstance(r, PlaneResult)]
    assert alone.labels.shape == (76, 96) and alone.diameter > 0


def test_spots_inside_larger_objects_are_not_taken_for_the_objects():
    # chromocentres: at scale 1 the network outlines four bright spots of its own size (17 px) inside
    # each of four 48 px nuclei; at 1/2 the nuclei measure 48 px (too large for the model there), at 1/4
    # 38 px: no two levels agree. The spots lie four to one inside the nuclei of the next level: they are
    # parts of objects, not objects, and the coarsest level within the model's range measures the size
    model_17 = ObjectSize(17, 15, 19)
    centres = [(64, 64), (64, 192), (192, 64), (192, 192)]
    spots = [(r + dr, c + dc, 8.5) for r, c in centres for dr in (-10, 10) for dc in (-10, 10)]
    search = DiameterSearch(model_17, smallest_side=256)
    search.found(_discs_at(256, spots, 1.0), search.next_scale())
    search.found(_discs_at(256, [(r, c, 24) for r, c in centres], 0.5), search.next_scale())
    search.found(_discs_at(256, [(r, c, 19) for r, c in centres], 0.25), search.next_scale())
    assert search.next_scale() is None
    assert [d for _s, d in search.passes] == pytest.approx([17, 48, 38], rel=0.05)
    assert nested_share(_discs_at(256, spots, 1.0), _discs_at(256, [(r, c, 24) for r, c in centres], 0.5)) == 1.0
    assert search.diameter == pytest.approx(38, rel=0.05)


def test_nuclei_merged_into_bands_at_coarser_levels_are_not_taken_for_parts():
    # rows of 17 px nuclei that the next level merges into bands and the one after into one blob (a
    # Drosophila embryo's ring): nested in the bands, but the bands are no whole objects (they merge
    # again one level coarser): the nuclei stand (their level was dropped for a 69 px "size")
    from skimage.draw import rectangle

    def bands(scale: float, rows: list[tuple[int, int]]) -> np.ndarray:
        n = round(256 * scale)
        labels = np.zeros((n, n), np.int32)
        for i, (top, bottom) in enumerate(rows, start=1):
            labels[rectangle((round(top * scale), round(31 * scale)), end=(round(bottom * scale), round(103 * scale)),
                             shape=labels.shape)] = i
        return labels

    model_17 = ObjectSize(17, 15, 19)
    nuclei = [(y, x, 8.5) for y in (64, 128, 192) for x in (40, 58, 76, 94)]
    search = DiameterSearch(model_17, smallest_side=256)
    search.found(_discs_at(256, nuclei, 1.0), search.next_scale())
    search.found(bands(0.5, [(55, 73), (119, 137), (183, 201)]), search.next_scale())
    search.found(bands(0.25, [(55, 201)]), search.next_scale())
    assert search.next_scale() is None
    assert nested_share(_discs_at(256, nuclei, 1.0), bands(0.5, [(55, 73), (119, 137), (183, 201)])) == 1.0
    assert search.diameter == pytest.approx(17, rel=0.05)


def test_the_diameter_words_mean_the_same_in_every_path(tiny_model_path):
    """"" is "auto" for the widget, the CLI's parser and the 3D path, but the plane loop refused it
    ("got None"); one reading of the words now serves them all."""
    from napari_unet.core.scale import diameter_word

    assert [diameter_word(d) for d in (None, "", " AUTO ", "native", "Native ", 12, "12 px")] == \
        ["auto", "auto", "auto", "native", "native", None, None]
    model = load_model(tiny_model_path)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    auto = segment(model, image, diameter="auto", threshold=0.5)
    for word in ("", " AUTO ", None):
        np.testing.assert_array_equal(segment(model, image, diameter=word, threshold=0.5), auto)


def test_the_diameter_used_is_said_in_micrometres_too_for_a_calibrated_image(make_napari_viewer, qtbot, dsb_val_fluo):
    """A diameter typed in µm was said back in pixels alone ("Diameter used: 20 px (given)")."""
    image, _labels = dsb_val_fluo[0]
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_image(image[:128, :128], name="calibrated", scale=(0.5, 0.5), units=("um", "um"))
    w.reset_choices()
    w._image_combo.value = layer
    w._diameter.value = "10 um"
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w._diameter_used.value.startswith("20 px = 10 µm (given)"), w._diameter_used.value
    layer.scale, layer.units = (1, 1), ("pixel", "pixel")  # an image without a pixel size: pixels alone
    w._diameter.value = "20"
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w._diameter_used.value.startswith("20 px (given)"), w._diameter_used.value


def test_the_passes_that_measure_the_object_size_say_so(dsb_val_fluo):
    """The size search's passes said "tile 1/1 of plane 1/1" again and again: a user saw the same
    words for seconds, before the plane's own tiles."""
    from napari_unet.core.events import Progress

    image, _labels = dsb_val_fluo[0]
    messages = [e.message for e in iter_planes(load_model("nuclei-fluo", device="cpu"), image)
                if isinstance(e, Progress)]
    measuring = [m for m in messages if m.startswith("measuring the object size, pass ")]
    # (said before the run's first tile, then after it)
    assert measuring[:2] == ["measuring the object size, pass 1 (plane 1/1): 1 tile",
                             "measuring the object size, pass 1 (plane 1/1): tile 1/1"], messages
