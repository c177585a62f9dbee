"""Augmentation: image and labels stay aligned, label ids survive, reproducible with a seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.augment import (
    NO_AUGMENT,
    AugmentConfig,
    bright_debris,
    coarse_displacements,
    elastic_deform,
    enlarged_look,
    flip_rot90,
    illumination_ramp,
    intensity_jitter,
    low_light,
    object_spots,
    object_texture,
    random_crop,
    sample_patch,
    saturated,
)


def _pair(h: int = 40, w: int = 50) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((h, w), np.int32)
    labels[5:20, 5:18] = 1
    labels[22:35, 25:45] = 2
    labels[3:12, 30:40] = 3
    image = labels.astype(np.float32)[None]  # image == labels: alignment is checkable
    return image, labels


def test_flip_rot90_keeps_alignment_and_counts():
    image, labels = _pair()
    counts = np.bincount(labels.ravel())
    rng = np.random.default_rng(1)
    for _ in range(8):
        img, lab = flip_rot90(image, labels, rng)
        assert img.shape[1:] == lab.shape and sorted(lab.shape) == sorted(labels.shape)
        np.testing.assert_array_equal(img[0], lab)
        np.testing.assert_array_equal(np.bincount(lab.ravel()), counts)


def test_elastic_deform_moves_pixels_smoothly_and_keeps_ids():
    image, labels = _pair()
    img, lab = elastic_deform(image, labels, np.random.default_rng(0), grid=3, sigma=10.0)
    assert img.shape == image.shape and lab.shape == labels.shape and lab.dtype == labels.dtype
    assert set(np.unique(lab)) <= set(np.unique(labels))
    assert not np.array_equal(lab, labels)  # it did deform
    # image (linear) and labels (nearest) agree away from edges of objects
    assert np.mean(np.rint(img[0]) == lab) > 0.9
    disp = coarse_displacements((64, 64), np.random.default_rng(0), grid=3, sigma=10.0)
    assert disp.shape == (2, 64, 64)
    assert np.abs(np.diff(disp, axis=1)).max() < 3.0  # smooth: small change between neighbours
    zero = coarse_displacements((16, 16), np.random.default_rng(0), sigma=0.0)
    assert np.abs(zero).max() == 0


def test_random_crop_pads_small_planes():
    image, labels = _pair(20, 24)
    img, lab = random_crop(image, labels, 64, np.random.default_rng(0))
    assert img.shape == (1, 64, 64) and lab.shape == (64, 64)
    np.testing.assert_array_equal(img[0], lab)
    img, lab = random_crop(image, labels, (8, 10), np.random.default_rng(0))
    assert lab.shape == (8, 10)


def test_sample_patch_aligned_and_reproducible():
    image, labels = _pair()
    config = AugmentConfig(gain=(1, 1), offset=(0, 0), gamma=(1, 1), noise=0.0, elastic_prob=1.0)
    a = sample_patch(image, labels, 32, np.random.default_rng(5), config)
    b = sample_patch(image, labels, 32, np.random.default_rng(5), config)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    img, lab = a
    assert img.shape == (1, 32, 32) and lab.shape == (32, 32)
    assert set(np.unique(lab)) <= {0, 1, 2, 3}
    assert np.mean(np.rint(img[0]) == lab) > 0.85
    # a patch larger than the plane (mirror padding) works too
    img, lab = sample_patch(image, labels, 96, np.random.default_rng(2))
    assert img.shape == (1, 96, 96) and lab.max() > 0
    # without augmentation: an exact crop
    img, lab = sample_patch(image, labels, 16, np.random.default_rng(3), NO_AUGMENT)
    np.testing.assert_array_equal(img[0], lab)


def test_an_unpadded_networks_patches_reach_the_planes_edges():
    """Drawn by the whole patch, the part an unpadded network's loss sees (its output, the patch's
    centre) never came near the edges: the paper's U-Net learnt from 57% of a 512 px plane."""
    h = w = 100
    ids = np.arange(h * w, dtype=np.int64).reshape(h, w)
    image = ids[None].astype(np.float32)
    rng = np.random.default_rng(0)
    rows = set()
    for _ in range(200):
        _img, lab = sample_patch(image, ids, 60, rng, NO_AUGMENT, valid=20)
        rows.update((lab[20:40, 20:40] // w).ravel().tolist())  # the central 20 px
    assert min(rows) <= 2 and max(rows) >= h - 3
    # the whole patch's draw is unchanged (padded networks: the same patches as before)
    first = sample_patch(image, ids, 60, np.random.default_rng(1), NO_AUGMENT)
    again = sample_patch(image, ids, 60, np.random.default_rng(1), NO_AUGMENT, valid=60)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_intensity_jitter():
    rng = np.random.default_rng(0)
    image = rng.random((2, 16, 16)).astype(np.float32)
    out = intensity_jitter(image, rng)
    assert out.shape == image.shape and out.dtype == np.float32 and not np.allclose(out, image)
    # monotonic per pixel (gain > 0, gamma > 0, no noise): the order of values is kept
    quiet = AugmentConfig(noise=0.0)
    out = intensity_jitter(image, np.random.default_rng(1), quiet)
    assert (np.argsort(out.ravel()) == np.argsort(image.ravel())).all()
    same = intensity_jitter(image, rng, NO_AUGMENT)
    np.testing.assert_allclose(same, image)


def test_enlarged_look_and_illumination_ramp():
    rng = np.random.default_rng(0)
    image, labels = _pair(64, 64)
    # an image that was 3x smaller, noise at that size, enlarged back: same shape, same objects,
    # and its noise is smooth (neighbouring pixels correlate), unlike white noise at full size
    out = enlarged_look(np.zeros((1, 64, 64), np.float32), rng, 3.0, 0.1)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert 0.02 < out.std() < 0.1
    neighbours = np.corrcoef(out[0, :, :-1].ravel(), out[0, :, 1:].ravel())[0, 1]
    assert neighbours > 0.5
    clean = enlarged_look(image, rng, 2.0, 0.0)
    assert np.mean(np.rint(clean[0]) == labels) > 0.9
    # a ramp: mean 0, linear, a total rise of at most the amplitude
    ramp = illumination_ramp((40, 50), rng, 0.5)
    assert abs(ramp.mean()) < 1e-3 and np.ptp(ramp) <= 0.5 + 1e-6
    assert np.allclose(np.diff(ramp, 2, axis=0), 0, atol=1e-5) and np.allclose(np.diff(ramp, 2, axis=1), 0, atol=1e-5)


def test_the_extra_augmentations_are_off_by_default_and_keep_the_random_stream():
    image, labels = _pair()
    default = sample_patch(image, labels, 32, np.random.default_rng(7))
    explicit = sample_patch(image, labels, 32, np.random.default_rng(7), AugmentConfig(upscaled_prob=0.0, gradient=0.0))
    np.testing.assert_array_equal(default[0], explicit[0])
    both = AugmentConfig(noise=0.0, gain=(1, 1), offset=(0, 0), gamma=(1, 1), upscaled_prob=1.0, gradient=0.4)
    img, lab = sample_patch(image, labels, 32, np.random.default_rng(7), both)
    plain = sample_patch(image, labels, 32, np.random.default_rng(7), AugmentConfig(
        noise=0.0, gain=(1, 1), offset=(0, 0), gamma=(1, 1)))
    np.testing.assert_array_equal(lab, plain[1])  # the labels never change
    assert img.shape == (1, 32, 32) and not np.allclose(img, plain[0])


def test_object_texture_changes_objects_only_and_keeps_their_polarity():
    rng = np.random.default_rng(3)
    _image, labels = _pair(64, 64)
    for background, objects in ((0.1, 0.8), (0.9, 0.3)):  # fluorescence-like, then stained tissue
        image = np.where(labels > 0, objects, background).astype(np.float32)[None]
        out = object_texture(image, labels, rng)
        assert out.shape == image.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out[0][labels == 0], image[0][labels == 0])
        inside = out[0][labels > 0]
        assert np.all(np.sign(inside - background) == np.sign(objects - background))  # bright stays bright
        assert inside.std() > 0.01  # uneven: contrast per object and a field inside each
        means = [out[0][labels == k].mean() for k in (1, 2, 3)]
        assert np.ptp(means) > 0.01
    blank = np.zeros((1, 16, 16), np.float32)
    assert object_texture(blank, np.zeros((16, 16), np.int32), rng) is blank  # nothing to texture
    _img, lab = sample_patch(image, labels, 32, np.random.default_rng(7), AugmentConfig(texture_prob=1.0))
    np.testing.assert_array_equal(lab, sample_patch(image, labels, 32, np.random.default_rng(7))[1])
    assert "uneven brightness (contrast x0.5-2" in AugmentConfig(texture_prob=0.5).describe()


def test_bright_debris_lies_in_the_background_and_outshines_the_objects():
    rng = np.random.default_rng(4)
    labels = np.zeros((96, 96), np.int32)
    labels[10:26, 10:26] = 1
    labels[60:78, 50:66] = 2
    labels[30:44, 70:86] = 3
    near = ndi.distance_transform_edt(labels == 0) <= 2  # the objects and 2 px around them
    for background, objects in ((0.1, 0.6), (0.9, 0.4)):  # fluorescence-like, then stained tissue
        image = np.where(labels > 0, objects, background).astype(np.float32)[None]
        out, debris = bright_debris(image, labels, rng, brightness=(3.0, 3.0))
        assert out.shape == image.shape and out.dtype == np.float32 and debris.any()
        assert not (debris & near).any()  # never over an object nor its margin
        np.testing.assert_array_equal(out[0][~debris], image[0][~debris])  # only the debris changed
        peak = background + 3.0 * (objects - background)
        assert np.isclose(out[0][debris], peak, atol=1e-5).any()  # 3x the objects' contrast, same polarity
        assert np.all(np.abs(out[0][debris] - background) <= abs(peak - background) + 1e-5)
        dimmed, debris = bright_debris(image, labels, rng, brightness=(4.0, 4.0), renormalised=1.0)
        np.testing.assert_allclose(dimmed[0][labels > 0], background + (objects - background) / 4, atol=1e-6)
        assert np.isclose(dimmed[0][debris], objects, atol=1e-5).any()  # the debris where the objects were
    blank = np.zeros((1, 16, 16), np.float32)
    assert bright_debris(blank, np.zeros((16, 16), np.int32), rng) == (blank, None)  # no object: nothing
    full = np.ones((16, 16), np.int32)
    assert bright_debris(blank, full, rng)[1] is None  # no background: nothing
    assert "bright debris" in AugmentConfig(debris_prob=0.3).describe() and "(p=0.3)" in AugmentConfig(
        debris_prob=0.3).describe()


def test_describe_names_what_is_on_with_its_ranges():
    assert AugmentConfig().describe() == ("crop, flips, any rotation, scale 0.8-1.25, elastic (3x3 grid, sigma 10 px, "
                                          "p=0.5), gain/offset/gamma/noise")
    assert NO_AUGMENT.describe() == "crop"
    extra = AugmentConfig(rotate="90", upscaled_prob=0.25, upscaled=(2, 3), gradient=0.5).describe()
    assert "90-degree rotations" in extra and "enlarged 2-3x" in extra and "(p=0.25)" in extra
    assert extra.endswith("linear illumination ramps up to 0.5")


def test_shape_errors():
    image, labels = _pair()
    with pytest.raises(ValueError, match="same height and width"):
        flip_rot90(image, labels[:10], np.random.default_rng(0))
    with pytest.raises(ValueError, match="channels, height, width"):
        sample_patch(image[0], labels, 16, np.random.default_rng(0))


def test_low_light_adds_shot_noise_and_normalises_as_inference_does():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    clean = np.zeros((1, 96, 96), np.float32)  # a normalised fluorescence patch: dark background, nuclei near 1
    for cy, cx in ((25, 25), (30, 70), (70, 40)):
        clean[0][(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = 0.9
    errors = []
    for photons in (200.0, 20.0, 4.0):
        out = low_light(clean, rng, photons=(photons, photons))
        assert out.shape == clean.shape and out.dtype == np.float32
        assert np.isclose(np.percentile(out, 1), 0.0, atol=1e-5) and np.isclose(np.percentile(out, 99.8), 1.0, atol=1e-5)
        nuclei, background = out[0][clean[0] > 0], out[0][clean[0] == 0]
        assert nuclei.mean() > background.mean() + 0.2  # still bright objects on a dark ground
        errors.append(background.std() / (nuclei.mean() - background.mean()))
    assert errors[0] < errors[1] < errors[2]  # fewer photons: noisier
    # a patch of background alone keeps the whole image's scale (its reference), not stretched to 0-1
    background_only = np.zeros((1, 32, 32), np.float32)
    out = low_light(background_only, rng, photons=(20.0, 20.0), reference=clean.reshape(1, -1))
    assert np.percentile(out, 99) < 0.5
    assert "low light" in AugmentConfig(low_light_prob=0.3).describe() and "(p=0.3)" in AugmentConfig(
        low_light_prob=0.3).describe()
    assert "low light" not in AugmentConfig().describe()


def test_low_light_noise_can_be_drawn_at_the_images_own_pixel_size():
    """An image of small objects is enlarged to the model's object size, its camera noise with it:
    grains of several pixels. ``grain`` draws the noise on the image's own grid and enlarges it;
    the objects' level over the background stays as without it."""
    yy, xx = np.mgrid[0:120, 0:120]
    clean = np.zeros((1, 120, 120), np.float32)
    clean[0][(yy - 60) ** 2 + (xx - 60) ** 2 < 900] = 0.9
    reference = clean.reshape(1, -1)

    def neighbours(a: np.ndarray) -> float:
        return float(np.corrcoef(a[:, 1:].ravel(), a[:, :-1].ravel())[0, 1])

    fine = low_light(clean, np.random.default_rng(1), photons=(20.0, 20.0), reference=reference)
    coarse = low_light(clean, np.random.default_rng(1), photons=(20.0, 20.0), reference=reference, grain=2.5)
    assert coarse.shape == clean.shape and coarse.dtype == np.float32
    assert abs(neighbours(fine[0, :20, :20])) < 0.2 and neighbours(coarse[0, :20, :20]) > 0.6
    for out in (fine, coarse):
        assert out[0][clean[0] > 0].mean() > out[0][clean[0] == 0].mean() + 0.4
    config = AugmentConfig(low_light_prob=0.5, low_light_native=True)
    assert "drawn at the image's own pixel size" in config.describe()
    assert "own pixel size" not in AugmentConfig(low_light_prob=0.5).describe()


def test_saturated_clips_the_objects_into_plateaus_and_normalises_again():
    """An over-exposed camera: the brighter nuclei become plateaus of one value (touching ones lose
    the grey level between them), and the image's percentiles stretch the clip level to 1."""
    yy, xx = np.mgrid[0:96, 0:96]
    image = np.zeros((1, 96, 96), np.float32)
    labels = np.zeros((96, 96), np.int32)
    for i, (cy, cx, peak) in enumerate(((25, 25, 1.0), (25, 41, 0.8), (70, 40, 0.4)), start=1):
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inside = r2 < 64
        image[0][inside] = peak * (1.0 - r2[inside] / 128.0)  # brightest at the centre, half at the rim
        labels[inside] = i
    rng = np.random.default_rng(0)
    out = saturated(image, rng, (0.3, 0.3), image.reshape(1, -1), labels.reshape(-1))
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.isclose(out.max(), 1.0) and np.isclose(np.percentile(out, 1), 0.0, atol=1e-6)
    assert (out[0][(labels == 1) | (labels == 2)] == out.max()).all()  # the two touching ones: one plateau
    dim = labels == 3
    assert np.ptp(out[0][dim]) > 0.1  # the dim one keeps part of its grey levels, in their order
    assert np.corrcoef(out[0][dim], np.minimum(image[0][dim], 0.3 * np.percentile(image[0][labels > 0], 90)))[0, 1] > 0.999
    # a reference without objects (or without background) leaves the patch as it is
    np.testing.assert_array_equal(saturated(image, rng, (0.3, 0.3), image.reshape(1, -1), np.zeros(96 * 96)), image)
    assert "over-exposed" in AugmentConfig(saturated_prob=0.2).describe()
    assert "over-exposed" not in AugmentConfig().describe()


def test_object_spots_lie_inside_the_objects_brighter_and_normalise_again():
    """Chromocentres: small spots inside each object, brighter than it (darker for dark objects), none
    in the background; the patch scaled back so its top percentile stays put."""
    rng = np.random.default_rng(5)
    labels = np.zeros((96, 96), np.int32)
    labels[8:32, 8:32] = 1
    labels[50:80, 40:70] = 2
    labels[20:44, 60:84] = 3
    for background, objects in ((0.05, 0.9), (0.9, 0.3)):  # fluorescence-like, then stained tissue
        image = np.where(labels > 0, objects, background).astype(np.float32)[None]
        out = object_spots(image, labels, rng, brightness=(3.0, 3.0))
        assert out.shape == image.shape and out.dtype == np.float32
        assert np.ptp(out[0][labels == 0]) < 1e-6  # the background one value still (at most rescaled)
        assert np.percentile(out[0], 99.8) == pytest.approx(np.percentile(image[0], 99.8), abs=1e-3)
        level = np.asarray(ndi.median(out[0], labels, [1, 2, 3]))[np.maximum(labels, 1) - 1]
        contrast = abs(np.median(level) - out[0][labels == 0][0])
        spots = (labels > 0) & ((out[0] - level) * np.sign(objects - background) > 0.3 * contrast)
        assert spots.any()
        per_object = [ndi.label(spots & (labels == k))[1] for k in (1, 2, 3)]
        assert sum(n > 0 for n in per_object) >= 2 and max(per_object) <= 12  # a few an object
    blank = np.zeros((1, 16, 16), np.float32)
    assert object_spots(blank, np.zeros((16, 16), np.int32), rng) is blank
    _img, lab = sample_patch(image, labels, 32, np.random.default_rng(7), AugmentConfig(spots_prob=1.0))
    np.testing.assert_array_equal(lab, sample_patch(image, labels, 32, np.random.default_rng(7))[1])
    assert "small bright spots inside the objects" in AugmentConfig(spots_prob=0.3).describe()
