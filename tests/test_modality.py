"""The model proposed from the image: nuclei for fluorescence and stained nuclei, cells for phase contrast / DIC."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from skimage.io import imread

from napari_unet.core.modality import image_modality, propose_model
from napari_unet.io import load_sample


@pytest.mark.parametrize("key, kind, model", [
    ("nuclei_fluorescence_2d", "fluorescence", "nuclei-fluo"),
    ("nuclei_stained_2d", "colour", "nuclei"),
    ("cells_phase_2d", "transmitted", "cells"),
])
def test_samples_get_the_model_that_fits(key, kind, model):
    image, _, _ = load_sample(key)
    assert image_modality(image).kind == kind
    assert propose_model(image) == model


def test_real_images_of_each_kind(data_dir):
    c2c12 = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    dic = [imread(p) for p in sorted((data_dir / "bbbc030_dic" / "images").glob("*.png"))[:5]]
    nuclei3d = tifffile.imread(data_dir / "nuclei3d_synthetic" / "image.tif")
    sim = tifffile.imread(data_dir / "ctc_sim_plus" / "images.tif")[:3]
    assert {propose_model(p) for p in [*c2c12[:3], *dic]} == {"cells"}
    assert {propose_model(p) for p in [*nuclei3d[::10], *sim]} == {"nuclei-fluo"}
    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        bright = [r["id"] for r in csv.DictReader(fh) if r["kind"] == "grey_bright"][:3]
    for name in bright:
        m = image_modality(imread(data_dir / "dsb2018" / "images" / f"{name}.png"))
        assert m.kind == "bright-field" and m.bright_spread < 0.3


def test_only_available_models_are_proposed_and_bad_planes_are_refused():
    image, _, _ = load_sample("cells_phase_2d")
    assert propose_model(image, available=["nuclei"]) is None
    assert image_modality(np.zeros((32, 32), np.uint8)).kind == "fluorescence"  # flat: nothing to tell
    with pytest.raises(ValueError, match="one 2D plane"):
        image_modality(np.zeros((4, 32, 32)))


def test_dense_fluorescence_is_fluorescence(data_dir):
    """Nuclei that fill so much of the field that the median pixel lies in one: the dark side no
    longer tells fluorescence (dark_spread over 5), the bright side does (bright_spread far above 1).
    Whole phase-contrast fields keep their kind."""
    from napari_unet.core.modality import BRIGHT_ON_DARK, FLAT_DARK_BACKGROUND

    folder = data_dir / "dsb2018" / "images"
    dense = [p for p in sorted(folder.glob("*.png"))
             if p.name.startswith(("5bda829acd82", "2869fad54664", "07fb37aafa66"))]
    assert len(dense) == 3
    for path in dense:
        image = imread(path)
        image = image[..., :3].mean(-1) if image.ndim == 3 else image  # RGBA files of grey images
        m = image_modality(image)
        assert m.dark_spread > FLAT_DARK_BACKGROUND and m.bright_spread > BRIGHT_ON_DARK
        assert m.kind == "fluorescence" and propose_model(image) == "nuclei-fluo"
    phase = tifffile.imread(data_dir / "usiigaci_phase" / "images.tif")
    assert {image_modality(p).kind for p in phase} == {"transmitted"}


def test_pseudo_coloured_fluorescence_is_not_stained_tissue():
    """Nuclei shown in blue (a DAPI look-up table saved as RGB), or two fluorescence channels merged,
    are fluorescence; stained tissue stays colour."""
    grey, _, _ = load_sample("nuclei_fluorescence_2d")
    blue = np.zeros(grey.shape + (3,), np.uint8)
    blue[..., 2] = grey
    fields, _, _ = load_sample("nuclei_fluorescence_fields")
    merged = np.stack([fields[1], np.zeros_like(fields[0]), fields[0]], axis=-1)  # two channels, red and blue
    assert image_modality(blue).kind == image_modality(merged).kind == "fluorescence"
    stained, _, _ = load_sample("nuclei_stained_2d")
    assert image_modality(stained).kind == "colour"


def _with_background(image, field, amount):
    """``image`` plus ``field`` (0..1) scaled to ``amount`` of its range, as float32."""
    a = np.asarray(image, np.float64)
    return (a + field * amount * np.ptp(a)).astype(np.float32)


def _vignetted(image, strength=0.7):
    """Off-centre vignetting: full brightness at (0.3, 0.3) of the field, falling quadratically."""
    h, w = image.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    gain = 1 - strength * ((y - 0.3 * h) ** 2 + (x - 0.3 * w) ** 2) / (0.6 * (h * h + w * w))
    return (np.asarray(image, np.float64) * gain).astype(np.float32)


def test_fluorescence_on_a_smooth_background_is_fluorescence(data_dir):
    """An additive ramp (either way) or vignetting puts the darkest pixels of a fluorescence field far
    below its median, as in phase contrast: the kind is told once the smooth background is off."""
    sim = tifffile.imread(data_dir / "ctc_sim_plus" / "images.tif")[0]
    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        name = next(r["id"] for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark")
    dsb = imread(data_dir / "dsb2018" / "images" / f"{name}.png")
    for image in (sim, dsb):
        h, w = image.shape
        x = np.linspace(0, 1, w)[None, :]
        y = np.linspace(0, 1, h)[:, None]
        for changed in (_with_background(image, x, 0.5), _with_background(image, 1 - x, 0.25),
                        _with_background(image, (2 - x - y) / 2, 1.0), _vignetted(image)):
            assert image_modality(changed).kind == "fluorescence"
            assert propose_model(changed) == "nuclei-fluo"


def test_transmitted_light_with_vignetting_or_hot_pixels_is_transmitted(data_dir):
    """DIC with vignetting was told bright field (its dark corners outweigh the bright side), and a few
    hot pixels at the dtype's maximum made phase contrast look like a flat fluorescence background."""
    dic = [imread(p) for p in sorted((data_dir / "bbbc030_dic" / "images").glob("*.png"))[:3]]
    for image in dic:
        assert image_modality(_vignetted(image)).kind == "transmitted"
        assert propose_model(_vignetted(image)) == "cells"
    phase = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:3]
    rng = np.random.default_rng(0)
    for image in phase:
        hot = image.astype(np.uint16) * 16  # (12 bits in 16, as a camera writes them)
        hot.flat[rng.choice(hot.size, int(0.003 * hot.size), replace=False)] = 65535
        m = image_modality(hot)
        assert m.kind == "transmitted" and m.dark_spread > 5
        assert propose_model(hot) == "cells"


def test_small_crops_of_phase_contrast_stay_transmitted(data_dir):
    """On a crop of a few cells a fitted background follows the cells themselves: none is fitted
    on planes under BACKGROUND_MIN_SIDE (C2C12 128-px crops were called fluorescence)."""
    import tifffile

    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    crops = [f[y:y + 128, x:x + 128] for f in frames for y in (0, 106) for x in (0, 106)]
    kinds = [image_modality(c).kind for c in crops]
    assert kinds.count("transmitted") >= 0.95 * len(crops), kinds


def test_planes_one_pixel_wide_or_high_are_told_without_numpy_warnings():
    import warnings

    from napari_unet.core.modality import image_modality

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        kinds = [image_modality(rng.random(shape).astype(np.float32)).kind for shape in ((1, 1), (1, 50), (50, 1))]
    assert kinds == ["fluorescence"] * 3


def test_a_large_plane_is_told_at_its_own_pixel_size(data_dir):
    """A mosaic of 8192 px a side is told by its central part, sampled every second pixel at most: its
    nuclei keep their size, and the fluorescence score its level (sampled every 8th pixel, as before,
    17 px nuclei were dots of 2 px and the score fell fourfold, to the edge of phase contrast)."""
    from napari_unet.core.modality import sample_plane

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "grey_dark" and int(r["height"]) >= 256
                and int(r["width"]) >= 256][:12]
    tiles = []
    for row in rows:
        image = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png").astype(np.float32)
        image = image[..., :3].mean(-1) if image.ndim == 3 else image
        lo, hi = np.percentile(image, (5, 99.5))
        tiles.append(np.clip((image[:256, :256] - lo) / (hi - lo + 1e-6), 0, 1))  # an evenly lit slide
    rng = np.random.default_rng(0)
    grid = rng.integers(len(tiles), size=(32, 32))
    mosaic = (np.block([[tiles[k] for k in row] for row in grid]) * 200 + 20).astype(np.uint8)
    assert mosaic.shape == (8192, 8192)
    part = image_modality(mosaic[3072:5120, 3072:5120])
    whole = image_modality(mosaic)
    assert sample_plane(mosaic).shape == (1024, 1024) and whole.kind == part.kind == "fluorescence"
    assert whole.bright_spread == pytest.approx(part.bright_spread, rel=0.05)
    assert image_modality(mosaic[::8, ::8]).bright_spread < 0.5 * part.bright_spread  # (the old sampling)


def test_a_large_plane_whose_middle_is_empty_is_told_by_a_quarter(data_dir):
    """Phase-contrast fields around an empty middle (glass: flat grey and camera noise) of a 6000 px
    plane: the middle alone tells nothing (a flat plane says fluorescence); a quarter's middle, with
    far more structure, is looked at instead."""
    from napari_unet.core.modality import central_window

    tile = tifffile.imread(data_dir / "usiigaci_phase" / "images.tif")[0][:1000, :1000]
    big = np.tile(tile, (6, 6))
    middle = central_window(big.shape)
    noise = np.random.default_rng(0).normal(0, 2, big[middle].shape)
    big[middle] = np.clip(np.median(tile) + noise, 0, None).astype(big.dtype)
    assert image_modality(big[middle]).kind == "fluorescence"
    assert image_modality(big).kind == "transmitted" and propose_model(big) == "cells"
