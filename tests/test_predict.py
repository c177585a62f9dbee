"""Tiled inference: exactness against whole-image passes, stacks, progress, stop, bad inputs.

Models here are small *untrained* networks (random weights, fixed seed): exactness of the
tiling does not depend on training. Images are real DSB2018 crops where the content matters.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from napari_unet.core import (
    ImageError,
    ModelFileError,
    SegmentationModel,
    UNet,
    load_model,
    predict_probabilities,
    probabilities_to_labels,
    save_model,
    segment,
)
from napari_unet.core.predict import (
    PlaneResult,
    PredictionStopped,
    iter_planes,
    iter_predict_probabilities,
    iter_segment,
    run_to_end,
)
from napari_unet.core.tiling import default_halo, plan_tiles, receptive_radius


def _model(padding: str = "same", n_classes: int = 3, in_channels: int = 1, depth: int = 3,
           width: int = 4, norm: str | None = "batch", seed: int = 0) -> SegmentationModel:
    torch.manual_seed(seed)
    net = UNet(in_channels=in_channels, n_classes=n_classes, base_width=width, depth=depth,
               padding=padding, norm=norm)
    if norm == "batch":  # non-trivial running statistics, as in a trained model
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    rep = "bg-interior-boundary" if n_classes == 3 else "foreground"
    return SegmentationModel(net, rep)


def _reference_same(model: SegmentationModel, image: np.ndarray) -> np.ndarray:
    """One whole-image pass over the image mirror-padded by the halo (and to the divisor); hot
    pixels and stripes taken out first, as the plane loop does."""
    from napari_unet.core.preprocess import prepare_plane, without_camera_artefacts

    net = model.net
    halo, div = default_halo(net), net.divisor
    chw = prepare_plane(without_camera_artefacts(image), net.config.in_channels, model.normalization)
    H, W = chw.shape[1:]
    ph = -(-H // div) * div - H
    pw = -(-W // div) * div - W
    padded = np.pad(chw, ((0, 0), (halo, halo + ph), (halo, halo + pw)), mode="reflect")
    with torch.inference_mode():
        out = torch.softmax(net(torch.from_numpy(padded)[None]), 1)[0].numpy()
    return out[:, halo : halo + H, halo : halo + W]


def _reference_valid(model: SegmentationModel, image: np.ndarray) -> np.ndarray:
    """The paper's scheme without tiles: mirror-pad by the margin, one pass, crop (hot pixels
    and stripes taken out first, as the plane loop does)."""
    from napari_unet.core.preprocess import prepare_plane, without_camera_artefacts

    net = model.net
    m = net.margin
    chw = prepare_plane(without_camera_artefacts(image), net.config.in_channels, model.normalization)
    H, W = chw.shape[1:]
    div = net.divisor
    # any valid input >= image + 2 * margin whose output is aligned with the pooling grid
    th = net.valid_input_size(H + 2 * m)
    tw = net.valid_input_size(W + 2 * m)
    padded = np.pad(chw, ((0, 0), (m, th - H - m), (m, tw - W - m)), mode="reflect")
    assert div > 1
    with torch.inference_mode():
        out = torch.softmax(net(torch.from_numpy(padded)[None]), 1)[0].numpy()
    return out[:, :H, :W]


@pytest.fixture(scope="module")
def real_image(data_dir) -> np.ndarray:
    """A DSB2018 fluorescence crop (CC0) of a size that is no multiple of anything."""
    import csv

    from skimage.io import imread

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark")
    image = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png")
    if image.ndim == 3:
        image = image[..., :3].mean(-1)
    return np.ascontiguousarray(image[:117, :101]).astype(np.float32)


# ----------------------------------------------------------------- exactness
def test_receptive_radius_bounds_the_real_dependency():
    """Changing one input pixel never changes outputs farther away than the radius."""
    model = _model("same", depth=3)
    net = model.net
    r = receptive_radius(net)
    x = torch.rand(1, 1, 96, 96)
    y = x.clone()
    y[0, 0, 48, 48] += 5.0
    with torch.inference_mode():
        diff = (net(x) - net(y)).abs().amax(1)[0].numpy()
    rows, cols = np.nonzero(diff > 0)
    assert len(rows) > 0
    assert np.abs(rows - 48).max() <= r and np.abs(cols - 48).max() <= r
    assert default_halo(net) % net.divisor == 0 and default_halo(net) >= r


@pytest.mark.parametrize("depth,shape", [(3, (117, 101)), (2, (75, 130))])
def test_tiled_equals_whole_image_same(real_image, depth, shape):
    model = _model("same", depth=depth)
    image = np.resize(real_image, shape).astype(np.float32) if shape != real_image.shape else real_image
    plan = plan_tiles(image.shape, model.net, 80)
    assert plan.n_tiles >= 4  # several tiles, sizes not multiples of the tile
    tiled = predict_probabilities(model, image, tile_size=80, batch_size=3)
    whole = _reference_same(model, image)
    assert tiled.shape == (3, *image.shape)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    # no seams: the result does not depend on where the tiles are
    other = predict_probabilities(model, image, tile_size=120)
    np.testing.assert_allclose(tiled, other, atol=2e-5)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_tiled_equals_whole_image_valid(real_image):
    model = _model("valid", n_classes=2, depth=3, norm=None)
    plan = plan_tiles(real_image.shape, model.net, 64)
    assert plan.n_tiles >= 9 and plan.y.step % model.net.divisor == 0
    tiled = predict_probabilities(model, real_image, tile_size=64, batch_size=4)
    whole = _reference_valid(model, real_image)
    # exact up to float rounding (the same arithmetic in differently sized convolutions)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    assert np.array_equal(tiled.argmax(0), whole.argmax(0))


def test_paper_unet_tiled_equals_whole(real_image):
    """UNet.paper() (31M parameters) on a small image: smallest valid tiles vs one pass."""
    torch.manual_seed(0)
    model = SegmentationModel(UNet.paper().eval(), "foreground")
    image = real_image[:40, :36]
    smallest = plan_tiles((1, 1), model.net, 1).tile_shape[0]
    start = time.perf_counter()
    tiled = predict_probabilities(model, image, tile_size=smallest)
    plan = plan_tiles(image.shape, model.net, smallest)
    assert plan.n_tiles >= 4
    whole = _reference_valid(model, image)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    assert time.perf_counter() - start < 60


# ----------------------------------------------------------------- stacks, colour
def test_stack_equals_planes_and_rgb(real_image):
    model = _model("same")
    stack = np.stack([real_image, real_image[::-1], real_image * 2 + 7])[None]  # (1, 3, H, W)
    probs = predict_probabilities(model, stack, tile_size=96)
    assert probs.shape == (1, 3, 3, *real_image.shape)
    np.testing.assert_allclose(probs[0, 1], predict_probabilities(model, real_image[::-1], tile_size=96), atol=1e-6)
    # percentile normalisation per plane: an affine change of intensities changes nothing
    np.testing.assert_allclose(probs[0, 2], probs[0, 0], atol=1e-5)
    labels = segment(model, stack, tile_size=96)
    assert labels.shape == (1, 3, *real_image.shape) and labels.dtype == np.int32

    rgb_model = _model("same", in_channels=3)
    rgb = np.stack([real_image, real_image * 0.5, real_image[::-1]], axis=-1).astype(np.uint8)
    out = predict_probabilities(rgb_model, rgb)
    assert out.shape == (3, *real_image.shape)
    rgb_stack = np.stack([rgb, rgb])
    labels = segment(rgb_model, rgb_stack, rgb=True)
    assert labels.shape == (2, *real_image.shape)
    np.testing.assert_array_equal(labels[0], labels[1])


def test_grey_image_with_rgb_model_is_converted(real_image):
    """Documented conversion: a grey plane is repeated into the 3 channels of an RGB model."""
    model = _model("same", in_channels=3)
    grey = predict_probabilities(model, real_image)
    as_rgb = predict_probabilities(model, np.repeat(real_image[..., None], 3, axis=-1))
    np.testing.assert_allclose(grey, as_rgb, atol=1e-6)


def test_rgb_image_for_two_channel_model_is_refused(real_image):
    model = _model("same", in_channels=2)
    rgb = np.repeat(real_image[..., None], 3, axis=-1)
    with pytest.raises(ImageError, match="channels"):
        predict_probabilities(model, rgb)


# ----------------------------------------------------------------- events, stop, out
def test_progress_events_and_stop(real_image):
    model = _model("same")
    stack = np.stack([real_image, real_image])
    n = plan_tiles(real_image.shape, model.net, 80).n_tiles
    events = []
    result = run_to_end(iter_predict_probabilities(model, stack, tile_size=80), events.append)
    assert result.shape == (2, 3, *real_image.shape)
    tiles = [e for e in events if e.message.startswith("tile ")]
    assert [e.done for e in tiles] == list(range(1, 2 * n + 1))
    assert all(e.total == 2 * n for e in events)
    assert events[-1].fraction == 1.0 and events[-1].plane == 1
    # said before the first tile runs (the engine is made then: seconds for a large network), not after it
    assert events[0].message == f"plane 1/2: {n} tiles" and events[0].done == 0
    assert events[1].message.startswith("tile 1/") and "plane 1/2" in events[1].message
    # the steps after a plane's tiles are said too (and a stop is heard there), without counting as tiles
    steps = [e for e in events[1:] if not e.message.startswith("tile ")]
    assert steps and all("(plane " in e.message for e in steps)
    assert [e.done for e in events] == sorted(e.done for e in events)

    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    gen = iter_segment(model, stack, tile_size=80, should_stop=stop_after_three)
    seen = []
    with pytest.raises(PredictionStopped):
        for event in gen:
            seen.append(event)
    assert len(seen) == 4  # the run's start, then a tile for each check of the stop before the fourth

    tiles_done = {"n": 0}  # a stop asked after a plane's last tile is heard before its labels are made

    def after_the_tiles() -> bool:
        return tiles_done["n"] >= n

    gen = iter_segment(model, real_image, tile_size=80, should_stop=after_the_tiles, diameter="native")
    with pytest.raises(PredictionStopped):
        for event in gen:
            assert not isinstance(event, PlaneResult)
            tiles_done["n"] += event.message.startswith("tile ")

    gen = iter_predict_probabilities(model, stack, tile_size=80)
    next(gen)
    gen.close()  # a napari worker's quit(): no error, nothing more computed
    with pytest.raises(StopIteration):
        next(gen)


def test_stack_streams_into_memory_map(tmp_path, real_image):
    model = _model("same")
    stack = np.stack([real_image, real_image[:, ::-1], real_image[::-1, ::-1] * 3])
    src = np.lib.format.open_memmap(tmp_path / "in.npy", mode="w+", dtype=np.float32, shape=stack.shape)
    src[:] = stack
    src.flush()
    src = np.load(tmp_path / "in.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.int32, shape=stack.shape)
    result = segment(model, src, out=out, tile_size=96)
    assert result is out
    np.testing.assert_array_equal(np.asarray(out[1]), segment(model, stack[1], tile_size=96))


class _OOMOnLargeBatches(UNet):
    """A real UNet whose forward pass runs out of 'memory' above a pixel budget."""

    limit_pixels = 12000

    def forward(self, x):
        if x.shape[0] * x.shape[-1] * x.shape[-2] > self.limit_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_halves_batch_then_tile(real_image, caplog):
    torch.manual_seed(0)
    net = _OOMOnLargeBatches(1, 3, 4, 3, "same", "batch").eval()
    model = SegmentationModel(net, "bg-interior-boundary")
    reference = SegmentationModel(UNet(1, 3, 4, 3, "same", "batch").eval(), "bg-interior-boundary")
    reference.net.load_state_dict(net.state_dict())
    with caplog.at_level(logging.WARNING):
        events = []
        # torch's own out-of-memory errors (a GPU's): ONNX Runtime would not raise them here
        probs = run_to_end(iter_predict_probabilities(model, real_image, tile_size=160, batch_size=4,
                                                      engine="torch"), events.append)
    assert "tiles per batch" in caplog.text and "tiles of at most" in caplog.text
    np.testing.assert_allclose(probs, _reference_same(reference, real_image), atol=2e-5)
    assert events[-1].done == events[-1].total


# ----------------------------------------------------------------- instances
def _touching_cells() -> np.ndarray:
    """Probabilities of two touching discs with a boundary band around each."""
    from skimage.draw import disk
    from skimage.segmentation import find_boundaries

    truth = np.zeros((64, 80), dtype=np.int32)
    truth[disk((32, 26), 14)] = 1
    truth[disk((32, 52), 14)] = 2  # overlaps disc 1: they touch along a line
    truth[disk((8, 70), 2)] = 3  # 13 pixels: small debris
    boundary = find_boundaries(truth, mode="inner")
    probs = np.zeros((3, *truth.shape), dtype=np.float32)
    probs[0] = truth == 0
    probs[2] = boundary
    probs[1] = (truth > 0) & ~boundary
    return probs * 0.9 + 0.1 / 3


def test_touching_cells_are_separated_and_thresholds_are_cheap():
    probs = _touching_cells()
    labels = probabilities_to_labels(probs, threshold=0.5, min_size=20)
    assert labels.dtype == np.int32 and labels.max() == 2
    left, right = labels[32, 20], labels[32, 58]
    assert left and right and left != right
    assert probabilities_to_labels(probs, threshold=0.5, min_size=0).max() == 3  # debris kept
    assert probabilities_to_labels(probs, threshold=0.99, min_size=0).max() == 0  # nothing that sure
    fg = np.stack([probs[0], probs[1] + probs[2]])
    merged = probabilities_to_labels(fg, threshold=0.5, min_size=20)  # foreground: one blob
    assert merged.max() == 1
    stack = probabilities_to_labels(np.stack([probs, probs]), 0.5, 20)
    assert stack.shape == (2, 64, 80) and stack.max() == 2
    with pytest.raises(ValueError, match="threshold"):
        probabilities_to_labels(probs, threshold=1.5)


def test_segment_returns_int32_labels_of_spatial_shape(real_image):
    model = _model("same")
    labels = segment(model, real_image, threshold=0.4, min_size=0)
    assert labels.shape == real_image.shape and labels.dtype == np.int32
    probs = predict_probabilities(model, real_image)
    np.testing.assert_array_equal(labels, probabilities_to_labels(probs, 0.4, 0))


# ----------------------------------------------------------------- bad inputs
def test_constant_image_gives_empty_labels_and_a_warning(caplog):
    model = _model("same")
    with caplog.at_level(logging.WARNING):
        labels = segment(model, np.full((50, 40), 7, dtype=np.uint16))
    assert labels.shape == (50, 40) and not labels.any()
    assert "constant" in caplog.text
    assert not segment(model, np.zeros((20, 20), dtype=np.uint8)).any()


def test_camera_noise_is_told_from_images_at_any_scale(data_dir):
    import tifffile

    from napari_unet.core.preprocess import is_camera_noise

    rng = np.random.default_rng(0)
    for noise in (rng.normal(100, 5, (512, 600)), rng.poisson(2, (300, 300)), rng.integers(0, 5, (234, 234)),
                  (rng.normal(30, 20, (1024, 1024))).clip(0, 255).astype(np.uint8), rng.normal(0, 1, (64, 64, 3))):
        assert is_camera_noise(noise)
    assert not is_camera_noise(np.full((64, 64), 3.0))  # one value: see is_constant
    for name in ("c2c12_timelapse", "ctc_sim_plus"):
        assert not any(is_camera_noise(p) for p in tifffile.imread(data_dir / name / "images.tif")[:4])
    # large cells under strong pixel noise show once binned (the model's coarse passes see them too)
    yy, xx = np.mgrid[:512, :512]
    cells = sum(((yy - y) ** 2 + (xx - x) ** 2 < 45**2) for y, x in ((100, 100), (300, 350), (420, 120)))
    assert not is_camera_noise(cells + rng.normal(0, 3, cells.shape))


def _noise_with_disks(centres, radius=7, contrast=60.0, size=512, sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disks = sum(((yy - y) ** 2 + (xx - x) ** 2 <= radius**2) for y, x in centres)
    return rng.normal(100.0, sigma, (size, size)).astype(np.float32) + contrast * disks, disks > 0


def test_a_field_with_few_objects_is_normalised_on_them_not_on_its_noise(data_dir):
    """Three small objects in a field of camera noise: the 99.8th percentile lies in the noise, which
    plain percentile normalisation stretched to the full range (its spread 0.19 here); the objects'
    brightness is the top instead. Fields full of objects, dark or bright, are normalised as before."""
    import tifffile
    from skimage.io import imread

    from napari_unet.core.preprocess import is_camera_noise, normalize

    field, disks = _noise_with_disks([(100, 100), (300, 400), (420, 150)])
    out = normalize(field[None])[0]
    assert out[~disks].std() < 0.05
    assert 0.8 < np.median(out[disks]) < 1.2
    assert not is_camera_noise(field)  # three objects are no noise (the correlation alone missed them)
    assert not is_camera_noise(_noise_with_disks([(250, 250)], contrast=20.0)[0])
    assert is_camera_noise(_noise_with_disks([])[0])

    def plain(x):
        lo, hi = np.percentile(x[:: max(1, x.shape[0] // 512), :: max(1, x.shape[1] // 512)], [1.0, 99.8])
        return (x - lo) / (hi - lo)

    dense = [imread(data_dir / "dsb2018" / "images" / f"{i}.png")
             for i in _dsb_ids(data_dir, ("grey_dark", "color"))]
    dense += list(tifffile.imread(data_dir / "isbi2012" / "volume.tif")[15:20])  # EM: texture and pixel noise
    for image in dense:
        x = (image[..., :3].mean(-1) if image.ndim == 3 else image).astype(np.float32)
        np.testing.assert_allclose(normalize(x[None])[0], plain(x), atol=1e-5)


def test_small_objects_of_a_large_sparse_field_are_found_on_the_plane_not_its_sample():
    """Nuclei of 7-9 px in a 1024 px field of noise: in the percentiles' sample (every other pixel) they
    are 4-5 px, under the objects' smallest part after the 3 x 3 median, and the noise was stretched to
    the full range (spread 0.22; the `nuclei-fluo` model outlined 96 of its grains in such a field)."""
    from napari_unet.core.preprocess import normalize

    field, disks = _noise_with_disks([(200, 200), (700, 301)], radius=3.5, contrast=200.0, size=1024)
    out = normalize(field[None])[0]
    assert out[~disks].std() < 0.05
    assert 0.8 < np.median(out[disks]) < 1.2


def _dsb_ids(data_dir, kinds, split="val"):
    import csv

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        return [r["id"] for r in csv.DictReader(fh) if r["split"] == split and r["kind"] in kinds]


@pytest.mark.parametrize("index", [6, 18])
def test_a_sparse_field_is_segmented_on_its_objects_not_its_noise(data_dir, index):
    """Three real nuclei (DSB2018 val, CC0) in a 1024 px field of their own image's camera noise, as
    in a sparse culture. Before: the field's noise stretched by the normalisation and enlarged by the
    diameter search came out as 5,173 objects (val fluorescence image 18), or the field was taken for
    camera noise alone and nothing was segmented (image 6)."""
    from scipy import ndimage as ndi
    from skimage.io import imread

    from napari_unet.core.metrics import average_precision

    image_id = _dsb_ids(data_dir, ("grey_dark",))[index]
    image = imread(data_dir / "dsb2018" / "images" / f"{image_id}.png")
    labels = imread(data_dir / "dsb2018" / "labels" / f"{image_id}.png").astype(np.int32)
    image = (image[..., :3].mean(-1) if image.ndim == 3 else image).astype(np.float32)
    far = ndi.distance_transform_edt(labels == 0) > 12
    rng = np.random.default_rng(0)
    field = rng.normal(np.median(image[far]), image[far].std(), (1024, 1024)).astype(np.float32)
    truth = np.zeros(field.shape, np.int32)
    inner = ndi.binary_erosion(np.ones(labels.shape, bool), iterations=8)
    whole = [i for i in range(1, labels.max() + 1) if (labels == i).any() and inner[labels == i].all()]
    for n, (i, (py, px)) in enumerate(zip(whole[:3], [(200, 200), (700, 300), (400, 800)], strict=True)):
        nucleus = labels == i  # with its own surroundings, without its neighbours
        neighbours = ndi.binary_dilation((labels > 0) & ~nucleus, iterations=3)
        keep = ndi.binary_dilation(nucleus, iterations=6) & ~neighbours
        ys, xs = np.nonzero(keep)
        field[py + ys - ys.min(), px + xs - xs.min()] = image[ys, xs]
        oy, ox = np.nonzero(nucleus)
        truth[py + oy - ys.min(), px + ox - xs.min()] = n + 1
    found = segment(load_model("nuclei", device="cpu"), field)
    assert 2 <= found.max() <= 5
    assert average_precision(truth, found) >= 0.5


def _striped(image, labels, fraction, axis=0, seed=0):
    """``image`` with each row (axis 0) or column (axis 1) offset at random by ``fraction`` of its
    nuclei's contrast, and the offsets."""
    contrast = float(np.percentile(image[labels > 0], 90) - np.median(image[labels == 0]))
    offsets = np.random.default_rng(seed).normal(0, fraction * contrast, image.shape[axis])
    offsets = offsets.astype(np.float32)
    return image.astype(np.float32) + (offsets[:, None] if axis == 0 else offsets[None, :]), offsets


def test_stripes_are_taken_out_and_nothing_else(dsb_fluo_crop):
    """Rows (an sCMOS camera's row noise, a scanner's flicker) or columns (a CCD's) offset from one
    another: their offsets are found and taken out; a plane without them, camera noise, a colour
    plane's other channels and the light's slow changes are left alone."""
    from napari_unet.core.preprocess import without_camera_artefacts, without_stripes

    image, labels = dsb_fluo_crop
    camera = image.astype(np.float32) * 4 + 400
    for axis in (0, 1):
        striped, offsets = _striped(camera, labels, 0.15, axis)
        found = striped - without_stripes(striped)
        residual = found - (offsets[:, None] if axis == 0 else offsets[None, :])
        assert np.std(residual) < 0.15 * np.std(offsets)
    assert without_stripes(camera) is camera and without_camera_artefacts(image) is image
    noise = np.random.default_rng(1).normal(100, 5, (300, 400)).astype(np.float32)
    assert without_stripes(noise) is noise
    ramp = camera + np.linspace(0, 300, camera.shape[0], dtype=np.float32)[:, None]  # uneven light
    striped, offsets = _striped(ramp, labels, 0.15)
    assert np.abs(without_stripes(striped) - ramp).mean() < 0.15 * np.abs(offsets).mean() + 1
    rgb = np.stack([striped, camera, camera], axis=-1)
    out = without_stripes(rgb)
    assert out.dtype == np.float32 and np.array_equal(out[..., 1:], rgb[..., 1:])


@pytest.mark.parametrize("axis", [0, 1])
def test_a_striped_plane_is_segmented_as_a_clean_one(dsb_fluo_crop, axis):
    """Rows (or columns) offset by 15% of the nuclei's contrast: the model took the lines for edges
    (DSB2018 val fluorescence 0.815 -> 0.036 for rows, 0.196 for columns, benchmarks/RESULTS.md)."""
    from napari_unet.core.metrics import average_precision

    image, labels = dsb_fluo_crop
    camera = image.astype(np.float32) * 4 + 400
    model = load_model("nuclei", device="cpu")
    clean_ap = average_precision(labels, segment(model, camera))
    striped, _ = _striped(camera, labels, 0.15, axis)
    assert average_precision(labels, segment(model, striped)) > clean_ap - 0.05


def test_infinite_values_are_refused_clearly():
    model = _model("same")
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    image[3, 4] = -np.inf
    with pytest.raises(ValueError, match="infinite values"):
        segment(model, image)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_one_pixel_image(padding):
    model = _model(padding, n_classes=3, norm=None)
    assert segment(model, np.array([[5.0]])).shape == (1, 1)
    probs = predict_probabilities(model, np.arange(7, dtype=np.float32)[None])
    assert probs.shape == (3, 1, 7)


def test_more_than_four_stack_axes_is_a_clear_error():
    model = _model("same")
    with pytest.raises(ImageError, match=r"axis 0 \(size 2\).*axis 4 \(size 2\).*Choose one index"):
        segment(model, np.zeros((2, 3, 4, 1, 2, 16, 16), dtype=np.float32))
    assert segment(model, np.zeros((2, 3, 1, 2, 16, 16), dtype=np.float32)).shape == (2, 3, 1, 2, 16, 16)


def test_model_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(junk)


def test_saved_model_round_trip_predicts_the_same(tmp_path, real_image):
    model = _model("same")
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path, device="cpu")
    np.testing.assert_allclose(predict_probabilities(loaded, real_image),
                               predict_probabilities(model, real_image), atol=1e-6)


def test_inference_net_folds_batch_norm_and_follows_weight_changes():
    from napari_unet.core.predict import inference_net

    model = _model("same")
    net = model.net
    fused = inference_net(net)
    assert fused is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.rand(1, 1, 40, 48)
    with torch.inference_mode():
        np.testing.assert_allclose(fused(x).numpy(), net(x).numpy(), atol=1e-5)
    assert inference_net(net) is fused  # cached
    with torch.no_grad():
        net.head.bias.add_(1.0)  # e.g. a fine-tuning step
    refreshed = inference_net(net)
    assert refreshed is not fused
    with torch.inference_mode():
        np.testing.assert_allclose(refreshed(x).numpy(), net(x).numpy(), atol=1e-5)


def test_segment_uses_the_models_own_postprocessing_unless_given(dsb_fluo_crop, tiny_model_path):
    from napari_unet.core.checkpoint import read_model_file

    image, _labels = dsb_fluo_crop
    model = read_model_file(tiny_model_path)
    model.metadata["postprocessing"] = {"threshold": 0.05, "min_size": 0}
    loose = segment(model, image)
    assert np.array_equal(loose, segment(model, image, threshold=0.05, min_size=0))
    model.metadata["postprocessing"] = {"threshold": 0.95, "min_size": 10_000}
    assert segment(model, image).max() == 0  # nothing is that large
    assert np.array_equal(segment(model, image, threshold=0.05, min_size=0), loose)


def _cell_with_a_thin_neck() -> np.ndarray:
    """(3, 60, 90) probabilities: a cell whose interior narrows to nothing at a neck, leaving a
    small interior part (a protrusion) beyond it, and apart from it a small round object."""
    probs = np.zeros((3, 60, 90), np.float32)
    probs[0] = 1.0
    yy, xx = np.mgrid[:60, :90]
    body = ((yy - 30) ** 2 + (xx - 25) ** 2) < 18**2
    arm = (np.abs(yy - 30) <= 3) & (xx >= 40) & (xx < 62)
    small = ((yy - 30) ** 2 + (xx - 80) ** 2) < 4**2
    for mask in (body, arm, small):
        probs[:, mask] = np.array([[0.05], [0.1], [0.85]])  # boundary first
    interior_body = ((yy - 30) ** 2 + (xx - 25) ** 2) < 15**2
    interior_arm = (np.abs(yy - 30) <= 1) & (xx >= 54) & (xx < 60)  # 18 px, cut off from the body
    interior_small = ((yy - 30) ** 2 + (xx - 80) ** 2) < 2**2
    for mask in (interior_body, interior_arm, interior_small):
        probs[:, mask] = np.array([[0.02], [0.9], [0.08]])
    return probs


def test_small_seeds_join_their_neighbour_and_isolated_small_objects_stay():
    probs = _cell_with_a_thin_neck()
    every_seed = probabilities_to_labels(probs, 0.5, 0)
    assert every_seed.max() == 3  # body, arm, small object
    labels = probabilities_to_labels(probs, 0.5, 0, min_seed=30)
    assert labels.max() == 2
    assert labels[30, 25] == labels[30, 58] != 0  # the arm belongs to the body
    assert labels[30, 80] not in (0, labels[30, 25])  # the small object, alone, is still an object
    # only the interior-boundary representation has seeds: the others take and ignore it
    fg = np.stack([probs[0], probs[1] + probs[2]])
    assert np.array_equal(probabilities_to_labels(fg, 0.5, 0, min_seed=30), probabilities_to_labels(fg, 0.5, 0))


def test_the_smallest_seed_is_a_fraction_of_the_models_object_area(tiny_model_path):
    from napari_unet.core.checkpoint import read_model_file
    from napari_unet.core.instances import DEFAULT_SEED_FRACTION

    model = read_model_file(tiny_model_path)
    model.metadata.pop("diameter", None)
    model.metadata.pop("training_diameter", None)
    assert model.min_seed == 0  # no object size known: every seed counts
    model.metadata["diameter"] = 20.0
    assert model.postprocessing["seed_fraction"] == DEFAULT_SEED_FRACTION
    assert model.min_seed == round(DEFAULT_SEED_FRACTION * np.pi * 100)
    model.metadata["postprocessing"] = {"threshold": 0.5, "min_size": 0, "seed_fraction": 0.2}
    assert model.min_seed == round(0.2 * np.pi * 100)
    # and segment uses it: with seeds as large as whole objects, no image gives more objects
    image = np.zeros((64, 64), np.uint8)
    image[10:30, 10:30] = 200
    image[40:50, 40:60] = 180
    many = segment(model, image, diameter="native").max()
    model.metadata["postprocessing"]["seed_fraction"] = 5.0
    assert segment(model, image, diameter="native").max() <= many


def test_hot_pixels_are_set_to_their_neighbours_level_and_real_structures_are_kept():
    from napari_unet.core.preprocess import without_spikes

    plane = np.full((40, 40), 100, dtype=np.uint16)
    plane[10:20, 10:20] = 1000  # an object
    plane[30, 5:35] = 900  # a line one pixel wide (a membrane, a filament)
    plane[5, 30] = plane[25, 25] = plane[26, 25] = 65535  # a hot pixel, and two side by side
    plane[0, 0] = 65535  # at the corner (mirrored neighbours)
    plane[0, 20] = plane[1, 20] = plane[39, 12] = plane[38, 12] = 65535  # pairs across the edge (they stayed)
    before = plane.copy()
    out = without_spikes(plane)
    assert np.array_equal(plane, before)  # the input is not changed
    assert out.dtype == plane.dtype
    assert out[5, 30] == out[25, 25] == out[26, 25] == out[0, 0] == 100
    assert out[0, 20] == out[1, 20] == out[39, 12] == out[38, 12] == 100
    hot = np.zeros(plane.shape, bool)
    hot[[5, 25, 26, 0, 0, 1, 39, 38], [30, 25, 25, 0, 20, 20, 12, 12]] = True
    assert np.array_equal(out[~hot], plane[~hot])  # the object and the line are untouched
    rgb = np.stack([plane, before, np.full_like(plane, 7)], axis=-1)
    assert np.array_equal(without_spikes(rgb)[..., 0], out)  # each colour on its own
    clean = before.copy()
    clean[hot] = 100
    assert without_spikes(clean) is clean  # nothing to change: no copy


def test_hot_pixels_of_a_camera_do_not_ruin_the_segmentation(dsb_fluo_crop):
    """A real fluorescence field as 12-bit camera data in a 16-bit file with 0.3% hot pixels at
    the maximum: they set the top percentile of the normalisation (the nuclei squashed near 0,
    AP 0 before), and even fewer reach the network as bright points taken for nuclei."""
    from napari_unet.core.metrics import average_precision

    image, labels = dsb_fluo_crop
    camera = image.astype(np.uint16) * 16 + 100
    hot = camera.copy()
    rng = np.random.default_rng(0)
    hot.flat[rng.choice(hot.size, int(0.003 * hot.size), replace=False)] = 65535
    model = load_model("nuclei", device="cpu")
    clean_ap = average_precision(labels, segment(model, camera))
    assert clean_ap > 0.7
    assert average_precision(labels, segment(model, hot)) > clean_ap - 0.05


def test_pixels_without_data_are_filled_with_the_image_mirrored():
    """NaN, and the black fill of a mosaic or a rotated image (a region at the lowest value, at the
    edge, far below the rest), are filled with the image mirrored at their edge; a fluorescence
    image's own black background clipped at zero is not; a few NaN pixels are filled but hold data."""
    from napari_unet.core.preprocess import fill_missing

    rng = np.random.default_rng(0)
    field = (100 + rng.normal(0, 3, (60, 80))).astype(np.float32)
    field[20:30, 20:30] += 200  # an object
    canvas = np.zeros((90, 120), np.float32)
    canvas[:60, :80] = field
    out, missing = fill_missing(canvas)
    assert missing is not None and missing.sum() == 90 * 120 - 60 * 80 and not missing[:60, :80].any()
    assert abs(float(np.median(out[missing])) - 100) < 3
    assert np.array_equal(out[:60, :80], field)
    assert np.array_equal(out[60:, :80], field[58:28:-1]) and np.array_equal(out[:60, 80:], field[:, 78:38:-1])
    # NaN marks the same border; a few dead pixels are filled too, but are no region without data
    nan = canvas.copy()
    nan[missing] = np.nan
    nan[25, 25] = nan[5, 70] = np.nan
    out_nan, missing_nan = fill_missing(nan)
    assert np.array_equal(missing_nan, missing) and np.isfinite(out_nan).all()
    assert out_nan[25, 25] > 250 and abs(out_nan[5, 70] - 100) < 10  # inside the object: the object's level
    # integers stay integers; nothing missing: the plane itself
    as_int = np.clip(canvas, 0, 65535).astype(np.uint16)
    out_int, missing_int = fill_missing(as_int)
    assert out_int.dtype == np.uint16 and np.array_equal(missing_int, missing)
    assert fill_missing(field) == (field, None)
    # a background clipped at zero beside dim noise is part of the image
    clipped = np.clip(rng.normal(0, 2, (60, 80)), 0, None).round().astype(np.uint8)
    clipped[20:30, 20:30] = 120
    assert fill_missing(clipped)[1] is None
    # a colour image on a black canvas (a dark object on a bright background): every colour mirrored
    rgb = np.zeros((90, 120, 3), np.uint8)
    rgb[:60, :80] = (230, 200, 220)
    rgb[20:30, 20:30] = (90, 40, 120)
    out_rgb, missing_rgb = fill_missing(rgb)
    assert np.array_equal(missing_rgb, missing) and np.array_equal(out_rgb[60:, :80], rgb[58:28:-1, :80])
    # a scale bar and a letter burned in at the highest value: marks, unlike a saturated object
    yy, xx = np.mgrid[:120, :160]
    marked = (100 + 800 * np.exp(-((yy - 20) ** 2 + (xx - 50) ** 2) / 60.0)).clip(None, 600).astype(np.uint16)
    marked[114:117, 120:150] = marked[100:110, 140] = marked[100, 136:142] = 600
    marks = fill_missing(marked)[1]
    assert marks is not None and marks.sum() == 3 * 30 + 10 + 5 and marks[114:117, 120:150].all()
    assert not marks[:60].any()  # the saturated object's plateau (its flank is nearly as bright) stays
    # one value alone is a constant plane (nothing to segment), not a plane without data
    assert fill_missing(np.full((20, 20), 9, np.uint8))[1] is None
    # NaN alone: a constant plane, all of it without data
    out_all, missing_all = fill_missing(np.full((20, 20), np.nan, np.float32))
    assert missing_all.all() and not out_all.any()


@pytest.mark.parametrize("blank_at", ["start", "end"])
def test_blank_frames_of_a_short_time_lapse_leave_its_frames_sized_as_without_them(data_dir, blank_at):
    """Blank frames (a lamp not on yet, or off) among a few frames with few cells: the size search,
    which looks at the next frames while too few objects are found, ran out of frames with the
    search still open (no size taken, each frame at the scale of its own pass)."""
    import tifffile

    from napari_unet.core.predict import PlaneResult, iter_planes

    real = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:3, :128, :128]
    blank = np.zeros((2, 128, 128), real.dtype)
    model = load_model("cells", device="cpu")

    def results(stack):
        return {r.index[0]: r for r in iter_planes(model, stack) if isinstance(r, PlaneResult)}

    alone = results(real)
    offset = 2 if blank_at == "start" else 0
    mixed = results(np.concatenate([blank, real] if blank_at == "start" else [real, blank]))
    assert {mixed[t + offset].diameter for t in range(3)} == {alone[0].diameter} != {None}
    for t in range(3):
        np.testing.assert_array_equal(mixed[t + offset].labels, alone[t].labels)


def test_a_plane_of_nan_alone_is_said_to_hold_no_data_at_all(caplog):
    model = _model("same")
    stack = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    stack[1] = np.nan
    with caplog.at_level("WARNING", logger="napari_unet"):
        labels = segment(model, stack)
    said = [r.getMessage() for r in caplog.records if "no data" in r.getMessage()]
    assert said == ["The plane at index 1 holds no data at all (NaN only): nothing is segmented there."]
    assert not labels[1].any()


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (10.0, 20.0)])
def test_a_mask_of_two_values_is_segmented_into_its_objects(dsb_fluo_crop, values):
    """A thresholded mask (0/1, 0/255) given to split into objects: its background is no black
    fill, its objects no burned-in marks or hot pixels (a 0/1 mask came out blank); as a boolean."""
    from napari_unet.core.metrics import average_precision

    _image, labels = dsb_fluo_crop
    model = load_model("nuclei", device="cpu")
    as_bool = segment(model, labels > 0)
    assert average_precision(labels, as_bool) > 0.5
    lo, hi = values
    mask = np.where(labels > 0, hi, lo).astype(np.float32 if isinstance(lo, float) else np.uint8)
    np.testing.assert_array_equal(segment(model, mask), as_bool)


@pytest.mark.parametrize("border", ["black", "nan", "rotated"])
def test_a_black_border_does_not_cost_the_objects(dsb_fluo_crop, border, caplog):
    """A real fluorescence field (dim camera data on an offset) on a larger black canvas, as a
    stitched mosaic or a rotated, registered image comes: per-image normalisation took the black
    for the darkest thing in the image and lifted the background to mid-grey (DSB2018 val 0.815 ->
    0.600 with a 40% border, stained tissue 0.695 -> 0.249, benchmarks/RESULTS.md). Filled, the
    objects come as without the border, and none is found in it."""
    from scipy import ndimage as ndi

    from napari_unet.core.metrics import average_precision

    image, labels = dsb_fluo_crop
    camera = image.astype(np.float32) * 4 + 400  # a dim field on a camera's offset
    model = load_model("nuclei", device="cpu")
    clean_ap = average_precision(labels, segment(model, camera))
    assert clean_ap > 0.7
    if border == "rotated":
        canvas = ndi.rotate(camera, 25, order=1, cval=0.0)
        truth = ndi.rotate(labels, 25, order=0, cval=0)
    else:
        canvas = np.pad(camera, ((0, 80), (0, 80)), constant_values=np.nan if border == "nan" else 0.0)
        truth = np.pad(labels, ((0, 80), (0, 80)))
    with caplog.at_level("WARNING", logger="napari_unet"):
        found = segment(model, canvas)
    said = [r.getMessage() for r in caplog.records if "holds no data" in r.getMessage()]
    assert len(said) == 1 and "left without objects" in said[0]
    assert found.shape == truth.shape
    assert average_precision(truth, found) > clean_ap - 0.05
    if border != "rotated":
        assert not found[128:].any() and not found[:, 128:].any()


def test_a_burned_in_scale_bar_and_text_are_left_out(dsb_fluo_crop):
    """A scale bar and a time stamp burned into an exported image at its highest value: the model
    took the marks for objects (and a large bar set the top of the normalisation); they are filled
    as pixels without data, and nothing is found on them."""
    from napari_unet.core.metrics import average_precision

    image, labels = dsb_fluo_crop
    model = load_model("nuclei", device="cpu")
    clean_ap = average_precision(labels, segment(model, image))
    drawn = np.zeros(image.shape, bool)
    drawn[118:121, 90:124] = True  # the bar
    for x in (92, 100, 108):  # the time stamp's strokes
        drawn[104:114, x : x + 2] = drawn[104, x : x + 6] = True
    found = segment(model, np.where(drawn, 255, image).astype(np.uint8))
    assert not found[drawn].any()
    assert average_precision(labels, found) > clean_ap - 0.03


def test_a_frame_without_data_is_said_once_and_not_called_constant(dsb_fluo_crop, caplog):
    """A time-lapse frame that registration moved out of the field (all NaN): empty labels, said as
    a part without data, not as 'a plane of the image is constant'."""
    model = _model("same")
    image, _ = dsb_fluo_crop
    stack = np.stack([image, image, image]).astype(np.float32)
    stack[1] = np.nan
    with caplog.at_level("WARNING", logger="napari_unet"):
        labels = segment(model, stack, axes="TYX", diameter="native")
    assert labels.shape == stack.shape and not labels[1].any()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("holds no data" in m for m in messages) == 1
    assert not any("constant" in m for m in messages)


def _bright_debris(image: np.ndarray, labels: np.ndarray, brightness: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with soft discs (1.2x the median nucleus, blurred as the optics blur the nuclei) at
    ``brightness`` times the nuclei's 90th percentile over about 1% of it, away from the nuclei;
    and where they are."""
    from scipy import ndimage as ndi

    from napari_unet.core.scale import median_diameter

    radius = 0.6 * median_diameter(labels)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    free = ndi.distance_transform_edt(labels == 0) > radius + 3
    rng = np.random.default_rng(1)
    discs = np.zeros(image.shape, bool)
    while discs.mean() < 0.01:
        cy, cx = rng.integers(0, image.shape[0]), rng.integers(0, image.shape[1])
        if free[cy, cx]:
            discs |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    level = brightness * float(np.percentile(image[labels > 0], 90))
    blob = ndi.gaussian_filter(discs.astype(np.float32), 1.0) * level
    return np.maximum(image.astype(np.float32), blob), discs


def test_bright_outliers_are_told_from_the_objects_found_and_not_from_clean_planes(dsb_fluo_crop):
    from napari_unet.core.preprocess import OUTLIER_CLIP, bright_outliers_level, object_percentile

    image, labels = dsb_fluo_crop
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(object_percentile(image, labels, 90.0),
                          [np.percentile(image[labels == i], 90, method="lower") for i in ids])
    assert bright_outliers_level(image, labels) is None  # a clean plane: its own range
    debris, _ = _bright_debris(image, labels)
    level = bright_outliers_level(debris, labels)
    typical = np.median(object_percentile(image, labels, 90.0)) - np.percentile(image, 1.0)
    assert level is not None and level == pytest.approx(np.percentile(debris, 1.0) + OUTLIER_CLIP * typical, rel=0.05)
    assert bright_outliers_level(debris.max() - debris, labels) is None  # dark objects on a bright background
    assert bright_outliers_level(debris, np.where(labels == ids[0], labels, 0)) is None  # one object: no median


def test_bright_debris_does_not_dim_the_nuclei_around_it(data_dir, caplog, monkeypatch):
    """Blobs 8x brighter than the nuclei over 1% of a real fluorescence field (DSB2018 val, small
    nuclei) set the top of the normalisation, and the nuclei reached the network far dimmer than it
    ever saw them; the plane is segmented again with the blobs clipped at twice the typical nucleus'
    brightness."""
    from skimage.io import imread

    import napari_unet.core.preprocess as preprocess
    from napari_unet.core.metrics import average_precision

    (image_id,) = [i for i in _dsb_ids(data_dir, ("grey_dark",)) if i.startswith("9586e48a")]
    image = imread(data_dir / "dsb2018" / "images" / f"{image_id}.png")[:128, :128]
    labels = imread(data_dir / "dsb2018" / "labels" / f"{image_id}.png")[:128, :128].astype(np.int32)
    model = load_model("nuclei", device="cpu")
    clean_ap = average_precision(labels, segment(model, image))
    debris, discs = _bright_debris(image, labels)
    with caplog.at_level("WARNING", logger="napari_unet"):
        found = segment(model, debris)
    assert sum("far brighter than the others" in r.getMessage() for r in caplog.records) == 1
    (result,) = [r for r in iter_planes(model, debris, labels=False) if isinstance(r, PlaneResult)]
    assert result.labels is None and result.clipped is not None  # probabilities only: clipped too
    monkeypatch.setattr(preprocess, "OUTLIER_RATIO", np.inf)  # the rule off: as before it
    before = segment(model, debris)
    after_ap, before_ap = (average_precision(labels, _without_objects_on(found, discs)),
                           average_precision(labels, _without_objects_on(before, discs)))
    assert after_ap > clean_ap - 0.05
    assert after_ap > before_ap + 0.1


def _without_objects_on(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``labels`` without the objects mostly in ``where`` (the debris found as objects: not scored)."""
    counts = np.bincount(labels[where].ravel(), minlength=int(labels.max()) + 1)
    sizes = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    return np.where(np.isin(labels, np.flatnonzero(2 * counts > sizes)) | where, 0, labels)


def test_training_examples_clip_bright_debris_as_prediction_does(dsb_fluo_crop, monkeypatch):
    """A corrected slice with bright debris trains on nuclei as bright as prediction will show
    them (the outliers told from the user's own labels), not dimmed by the debris."""
    import napari_unet.core.preprocess as preprocess
    from napari_unet.core.examples import prepare_examples

    image, labels = dsb_fluo_crop
    model = load_model("nuclei", device="cpu")
    debris, _ = _bright_debris(image, labels)

    def nuclei_level(img):
        (example,) = prepare_examples(model, [img], [labels])
        return float(np.median(example.image[0][example.labels > 0]))

    clean = nuclei_level(image)
    assert nuclei_level(debris) > 0.6 * clean
    monkeypatch.setattr(preprocess, "OUTLIER_RATIO", np.inf)
    assert nuclei_level(debris) < 0.4 * clean


def test_an_array_of_two_channels_last_says_how_to_split_them_in_napari_too(real_image):
    """(H, W, 2) added to napari as an array: the refusal says how to get one channel in napari (the
    reader splits the channels of such files), not only in Python."""
    from napari_unet.core.preprocess import ImageError

    two = np.stack([real_image, real_image], -1)
    with pytest.raises(ImageError, match=r"napari-unet's reader .* layer of its own; in Python, image\[\.\.\., 1\]"):
        run_to_end(iter_segment(_model("same"), two))


def test_a_large_planes_watershed_in_bands_gives_the_same_objects(monkeypatch, data_dir):
    """The watershed of a slide ran on the whole plane (scikit-image takes ~21 bytes a pixel of what it
    is given); it now runs on bands of whole rows that hold whole parts of the foreground. Each part
    floods alone, so the objects are the same: checked on a mosaic of real nuclei with small bands."""
    import csv

    from skimage.io import imread

    from napari_unet.core import instances
    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.instances import probabilities_to_labels

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"][:4]
    tiles = [imread(data_dir / "dsb2018" / "images" / f"{r['id']}.png")[:256, :256] for r in rows]
    tiles = [t[..., :3].mean(-1) if t.ndim == 3 else t for t in tiles]
    mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]]).astype(np.float32)
    model = load_model("nuclei-fluo", device="cpu")
    probs = predict_probabilities(model, mosaic, diameter=16, device="cpu")
    whole = probabilities_to_labels(probs, 0.5, 10, model.representation, min_seed=11)
    monkeypatch.setattr(instances, "WATERSHED_BAND_PX", 512 * 40)  # bands of 40 rows
    banded = probabilities_to_labels(probs, 0.5, 10, model.representation, min_seed=11)
    assert whole.max() > 50
    np.testing.assert_array_equal(banded, whole)

    # Cancel (the job's RunInterrupt) ends it between bands: a slide's watershed took ~8 s after Cancel
    from napari_unet.core.engine import RunInterrupt, RunInterrupted

    interrupt = RunInterrupt()
    with interrupt.around():
        np.testing.assert_array_equal(probabilities_to_labels(probs, 0.5, 10, model.representation, min_seed=11),
                                      whole)
        interrupt.set()
        with pytest.raises(RunInterrupted, match="post-processing"):
            probabilities_to_labels(probs, 0.5, 10, model.representation, min_seed=11)


def test_a_tile_too_small_or_a_bad_halo_is_a_clear_error(real_image):
    """A tile no larger than twice the context it re-reads adds a few pixels a tile (128 px with
    the built-in model: 1024 tiles for a 256 px image, 45x slower) and is refused; a negative halo
    is refused and a halo beyond the network's reach is the network's own (24 GB for 5000 px)."""
    from napari_unet.core.tiling import min_tile_size

    model = load_model("nuclei", device="cpu")
    context = default_halo(model.net)
    with pytest.raises(ValueError, match=rf"tile_size {2 * context} is too small.*at least {min_tile_size(model.net)}"):
        predict_probabilities(model, real_image, tile_size=2 * context)
    for bad in (-5, float("nan"), 2.5):
        with pytest.raises(ValueError, match="halo must be"):
            predict_probabilities(model, real_image, halo=bad)
    np.testing.assert_array_equal(predict_probabilities(model, real_image, halo=5000),
                                  predict_probabilities(model, real_image))


def test_an_out_array_too_narrow_for_the_ids_is_refused(real_image):
    """``out=`` of uint8 kept 255 of 324 ids (the others wrapped onto them) without a word."""
    model = _model()
    stack = np.stack([real_image, real_image[::-1]])
    for dtype in (np.uint8, np.uint16, np.float32):
        with pytest.raises(ValueError, match="32 bits"):
            segment(model, stack, out=np.zeros(stack.shape, dtype))
    with pytest.raises(ValueError, match="float"):
        predict_probabilities(model, real_image, out=np.zeros((3, *real_image.shape), np.int32))
    out = np.zeros(stack.shape, np.uint32)
    np.testing.assert_array_equal(segment(model, stack, out=out), segment(model, stack))


def test_a_slice_that_tells_no_size_is_sized_on_the_next_slices_given(data_dir):
    """C2C12's first frame (8 cells of about 14 px, smaller than `cells`' objects) alone: "no object
    found at any scale", nothing segmented; the next frames tell the size. Given as size_planes (the
    Segment widget's current slice), they are measured only, and the slice segmented at that size."""
    import tifffile

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import PlaneResult, iter_planes

    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:5]
    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[0]
    model = load_model("cells", device="cpu")
    alone = [r for r in iter_planes(model, images, planes=[(0,)]) if isinstance(r, PlaneResult)]
    assert len(alone) == 1 and alone[0].labels.max() == 0 and alone[0].diameter is None
    results = [r for r in iter_planes(model, images, planes=[(0,)], size_planes=[(1,), (2,), (3,), (4,)])
               if isinstance(r, PlaneResult)]
    assert {tuple(r.index) for r in results} == {(0,)}  # the others measured only
    last = results[-1]
    assert last.diameter is not None and 8 < last.diameter < 20 and "estimated on the plane at index" in last.note
    assert average_precision(truth, last.labels, 0.5) > 0.4
    typed = [r for r in iter_planes(model, images, planes=[(0,)], diameter=14.0, size_planes=[(1,)])
             if isinstance(r, PlaneResult)]
    assert len(typed) == 1 and typed[0].diameter == 14.0  # (a size given: the others are not read)


def test_planes_segmented_before_the_size_was_found_are_said_provisional(data_dir):
    """With the automatic diameter, planes that tell no size are yielded at the image's own scale,
    then again at the size found: the first result says so (a cancelled whole-stack run counted it
    finished, and the run that went on from there left the plane at the wrong scale; a review)."""
    import tifffile

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.predict import PlaneResult, iter_planes

    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:4, :120, :120]
    results = [r for r in iter_planes(load_model("cells", device="cpu"), frames) if isinstance(r, PlaneResult)]
    provisional = [tuple(r.index) for r in results if r.provisional]
    assert provisional and len(results) == 4 + len(provisional)
    for idx in provisional:  # each comes again, at the size found, after its provisional result
        last = max(k for k, r in enumerate(results) if tuple(r.index) == idx)
        assert not results[last].provisional and results[last].diameter is not None
    assert all(not r.provisional for r in results if r.diameter is not None)


# ---- found by a mutation audit: tiles no larger than asked, seeds, foreground corners, large planes
def _audit_net(padding="same", depth=3):
    torch.manual_seed(0)
    return UNet(in_channels=1, n_classes=3, base_width=4, depth=depth, padding=padding, norm=None).eval()


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_plan_axis_tiles_never_exceed_the_tile_asked_for(padding):
    from napari_unet.core.tiling import min_tile_size, plan_axis

    net = _audit_net(padding)
    smallest = min_tile_size(net)
    for max_tile in (smallest, smallest + 40, 256, 300):
        for length in (1, 37, 255, 256, 257, 1000):
            p = plan_axis(length, net, max_tile)
            assert p.tile <= max(max_tile, smallest), (length, max_tile, p)
            assert p.step * p.n_tiles >= length and p.pad_after >= 0


def _seed_probs(seed_px):
    """One object whose interior is two parts joined by boundary: a big one and one of seed_px pixels."""
    probs = np.zeros((3, 20, 60), np.float32)
    probs[0] = 1
    probs[:, 5:15, 5:55] = [[[0]], [[0]], [[1]]]  # boundary everywhere on the object
    probs[:, 7:13, 7:30] = [[[0]], [[1]], [[0]]]  # big interior
    probs[:, 9:9 + 1, 40:40 + seed_px] = [[[0]], [[1]], [[0]]]  # small interior of seed_px pixels, apart
    return probs


def test_a_seed_of_exactly_min_seed_pixels_seeds_its_own_object():
    from napari_unet.core.instances import probabilities_to_labels

    probs = _seed_probs(6)
    assert probabilities_to_labels(probs, 0.5, 0, min_seed=6).max() == 2  # 6 px is not "smaller than 6"
    assert probabilities_to_labels(probs, 0.5, 0, min_seed=7).max() == 1


def test_foreground_objects_touching_at_a_corner_are_one():
    from napari_unet.core.instances import probabilities_to_labels

    fg = np.zeros((10, 10), np.float32)
    fg[2:5, 2:5] = 1
    fg[5:8, 5:8] = 1  # meets the first at one corner
    labels = probabilities_to_labels(np.stack([1 - fg, fg]), 0.5, 0)
    assert labels.max() == 1


def test_label_counts_of_a_large_plane_are_bincounts():
    from napari_unet.core.instances import label_counts

    labels = np.zeros((2100, 1000), np.int32)  # > 2**20 pixels: counted block by block
    labels[:10, :10] = 1
    labels[-10:, :] = 7  # a larger id appears only in the last block
    np.testing.assert_array_equal(label_counts(labels), np.bincount(labels.ravel()))


def test_foreground_watershed_keeps_islands_no_seed_reached():
    """A BioImage.IO foreground model's islands too small for a seed of their own stay objects
    (with no minimum size): dropping them left 1 object of 3."""
    from napari_unet.core.instances import probabilities_to_labels

    fg = np.zeros((40, 40), np.float32)
    fg[5:25, 5:25] = 1  # a large object
    fg[30, 30] = 1  # a 1 px island
    fg[34, 5:7] = 1  # a 2 px island
    labels = probabilities_to_labels(np.stack([1 - fg, fg]), 0.5, 0, representation="foreground-watershed")
    assert labels.max() == 3 and labels[30, 30] and labels[34, 5] == labels[34, 6] != 0
