"""One rule pairs image files with labels files (CLI and Fine-tune widget alike); labels that
are an intensity image given by mistake are refused; one list of file name endings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.cli.train import read_examples
from napari_unet.io import (
    PLANE_IMAGE_SUFFIXES,
    READABLE_SUFFIXES,
    PairingError,
    check_labels_not_an_image,
    pair_images_with_labels,
    read_stack,
)
from napari_unet.widgets._examples import examples_from_folders


def _files(folder, names, data):
    folder.mkdir(exist_ok=True)
    for name in names:
        if name.endswith((".tif", ".tiff")):
            tifffile.imwrite(folder / name, data)
        else:
            Image.fromarray(data).save(folder / name)
    return folder


def _names(pairs):
    return [(a.name, b.name) for a, b in pairs]


@pytest.fixture
def pair(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    return image[:64, :64], labels[:64, :64].astype(np.uint16)


def _both_ways(images, labels):
    """What the CLI and the widget make of two folders: (image, labels) names, or the error."""
    try:
        cli = [(a.name, b.name) for a, b in _cli_pairs(images, labels)]
    except ValueError as exc:
        cli = str(exc)
    try:
        gui = [e.source for e in examples_from_folders(images, labels)]
    except ValueError as exc:
        gui = str(exc)
    return cli, gui


def _cli_pairs(images, labels):
    from napari_unet.cli.train import _pair_files

    return _pair_files([str(images)], [str(labels)])


def test_suffixed_names_pair_by_name_not_by_order(tmp_path, pair):
    # the CLI used to pair these by sorted order when names did not match exactly:
    # img.tif <-> img_2_masks.tif; the widget paired them by name
    image, labels = pair
    images = _files(tmp_path / "img", ["img.tif", "img_2.tif"], image)
    masks = _files(tmp_path / "lab", ["img_2_masks.tif", "img_masks.tif"], labels)
    expected = [("img.tif", "img_masks.tif"), ("img_2.tif", "img_2_masks.tif")]
    assert _names(pair_images_with_labels(images, masks)) == expected
    cli, gui = _both_ways(images, masks)
    assert cli == expected and gui == ["img.tif", "img_2.tif"]


def test_a_labels_file_without_its_image_is_an_error_in_both(tmp_path, pair):
    # the CLI used to pair b.tif with c.tif (same count, sorted order); the widget ignored c.tif
    image, labels = pair
    images = _files(tmp_path / "img", ["a.tif", "b.tif"], image)
    masks = _files(tmp_path / "lab", ["a.tif", "c.tif"], labels)
    with pytest.raises(PairingError, match="labels file c.tif .* fits no image"):
        pair_images_with_labels(images, masks)
    cli, gui = _both_ways(images, masks)
    assert cli == gui and "c.tif" in cli


def test_images_without_labels_are_left_out_and_named(tmp_path, pair, caplog):
    image, labels = pair
    images = _files(tmp_path / "img", ["f1.tif", "f2.tif", "f10.tif"], image)
    masks = _files(tmp_path / "lab", ["f10_labels.tif", "f1_labels.tif"], labels)
    with caplog.at_level(logging.WARNING):
        pairs = pair_images_with_labels(images, masks)
    assert _names(pairs) == [("f1.tif", "f1_labels.tif"), ("f10.tif", "f10_labels.tif")]  # natural order
    assert "f2.tif" in caplog.text and "left out" in caplog.text
    cli, gui = _both_ways(images, masks)
    assert [a for a, _ in cli] == gui == ["f1.tif", "f10.tif"]


def test_bmp_and_ome_tiff_names_pair_in_both(tmp_path, pair):
    # the CLI read no .bmp; the widget looked for "a.ome_masks" for a.ome.tif
    image, labels = pair
    images = _files(tmp_path / "img", ["a.bmp"], image)
    tifffile.imwrite(images / "b.ome.tif", image)
    masks = _files(tmp_path / "lab", ["a.tif", "b_masks.tif"], labels)
    expected = [("a.bmp", "a.tif"), ("b.ome.tif", "b_masks.tif")]
    assert _names(pair_images_with_labels(images, masks)) == expected
    cli, gui = _both_ways(images, masks)
    assert cli == expected and gui == ["a.bmp", "b.ome.tif"]
    assert ".bmp" in PLANE_IMAGE_SUFFIXES and ".bmp" in READABLE_SUFFIXES
    data, info = read_stack(images / "a.bmp", lazy=False)
    np.testing.assert_array_equal(data, image)
    assert info.name == "a" and info.axes == "YX"


def test_one_folder_holding_images_and_their_labels(tmp_path, pair):
    # the CLI paired each file with itself here, the widget found nothing
    image, labels = pair
    folder = _files(tmp_path / "both", ["a.tif", "b.png"], image)
    _files(folder, ["a_masks.tif", "b_seg.png"], labels)
    expected = [("a.tif", "a_masks.tif"), ("b.png", "b_seg.png")]
    assert _names(pair_images_with_labels(folder, folder)) == expected
    images, masks, _colours = read_examples([str(folder)], [str(folder)])
    assert len(images) == 2
    np.testing.assert_array_equal(masks[1], labels)
    assert [e.source for e in examples_from_folders(folder, folder)] == ["a.tif", "b.png"]


def test_exact_name_wins_and_two_candidates_are_an_error(tmp_path, pair):
    image, labels = pair
    images = _files(tmp_path / "img", ["a.tif", "a_masks.tif"], image)
    masks = _files(tmp_path / "lab", ["a.tif", "a_masks.tif"], labels)
    expected = [("a.tif", "a.tif"), ("a_masks.tif", "a_masks.tif")]
    assert _names(pair_images_with_labels(images, masks)) == expected
    _files(masks, ["a.png"], labels)
    with pytest.raises(PairingError, match="a.tif has 2 labels files .*a.png, a.tif"):
        pair_images_with_labels(images, masks)


def test_two_labels_files_with_different_endings_are_an_error(tmp_path, pair):
    # one folder: a_labels.png was taken for an image without labels and left out with a warning;
    # two folders: the error said a_labels.png fits no image
    image, labels = pair
    both = _files(tmp_path / "both", ["a.png", "b.png"], image)
    _files(both, ["a_masks.png", "a_labels.png", "b_masks.png"], labels)
    with pytest.raises(PairingError, match=r"^a.png has 2 labels files in .*both: a_masks.png, a_labels.png; keep one"):
        pair_images_with_labels(both, both)
    images = _files(tmp_path / "img", ["a.png"], image)
    masks = _files(tmp_path / "lab", ["a_masks.png", "a_labels.png"], labels)
    with pytest.raises(PairingError, match=r"^a.png has 2 labels files in .*lab: a_masks.png, a_labels.png; keep one"):
        pair_images_with_labels(images, masks)
    cli, gui = _both_ways(images, masks)
    assert cli == gui and "a.png has 2 labels files" in cli


def test_a_labels_file_without_its_image_in_one_folder_is_an_error(tmp_path, pair):
    # it was taken for an image without labels and left out with a warning
    image, labels = pair
    both = _files(tmp_path / "both", ["a.png"], image)
    _files(both, ["a_masks.png", "orphan_labels.png"], labels)
    with pytest.raises(PairingError, match="labels file orphan_labels.png in .*both fits no image"):
        pair_images_with_labels(both, both)
    # an image with a labels-like name that has its own labels is an image, as before
    (both / "orphan_labels.png").rename(both / "x_seg.png")
    _files(both, ["x_seg_masks.png"], labels)
    assert _names(pair_images_with_labels(both, both)) == [("a.png", "a_masks.png"), ("x_seg.png", "x_seg_masks.png")]


def test_missing_or_empty_folders_and_no_pair_are_clear(tmp_path, pair):
    image, labels = pair
    with pytest.raises(PairingError, match="images folder .*nope does not exist"):
        pair_images_with_labels(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairingError, match="holds no images"):
        pair_images_with_labels(tmp_path / "empty", tmp_path)
    images = _files(tmp_path / "img", ["a.tif"], image)
    (tmp_path / "lab").mkdir()
    with pytest.raises(PairingError, match="No image in .* has a labels file.*_masks"):
        pair_images_with_labels(images, tmp_path / "lab")


def test_real_labels_pass_and_images_given_as_labels_are_refused(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    check_labels_not_an_image(labels, "labels.tif")
    check_labels_not_an_image(labels > 0, "mask.tif")  # one object id: not an image
    check_labels_not_an_image(labels.astype(np.float32), "labels.tif")  # whole numbers in floats
    check_labels_not_an_image(np.stack([labels, labels[::-1]]), "stack.tif")
    with pytest.raises(ValueError, match="image.tif looks like an intensity image: its .* ids are scattered"):
        check_labels_not_an_image(image, "image.tif")
    with pytest.raises(ValueError, match=r"stack.tif \(plane 1\) looks like an intensity image"):
        check_labels_not_an_image(np.stack([labels, image]), "stack.tif")
    with pytest.raises(ValueError, match="fractional"):
        check_labels_not_an_image(image / 255.0, "probabilities.tif")
    noisy = np.random.default_rng(0).integers(1, 60000, (128, 128)).astype(np.uint16)
    with pytest.raises(ValueError, match="most of them single pixels"):
        check_labels_not_an_image(noisy, "noisy.tif")


def test_widget_folders_refuse_an_image_given_as_labels(tmp_path, dsb_fluo_crop):
    image, _labels = dsb_fluo_crop
    _files(tmp_path / "img", ["a.tif"], image)
    _files(tmp_path / "lab", ["a.tif"], image)
    with pytest.raises(ValueError, match="intensity image"):
        examples_from_folders(tmp_path / "img", tmp_path / "lab")


def test_palette_png_labels_read_the_same_in_both(tmp_path, pair):
    # the widget read PNGs with skimage, which turns a palette PNG into RGB colours
    image, labels = pair
    images = _files(tmp_path / "img", ["a.tif"], image)
    (tmp_path / "lab").mkdir()
    palette = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    palette.save(tmp_path / "lab" / "a_masks.png")
    _images, cli_labels, _colours = read_examples([str(images)], [str(tmp_path / "lab")])
    (example,) = examples_from_folders(images, tmp_path / "lab")
    np.testing.assert_array_equal(cli_labels[0], labels)
    np.testing.assert_array_equal(example.labels, labels)


def test_masks_saved_with_some_slices_corrected_train_on_those_only(tmp_path, caplog):
    """Save masks writes every slice, the model's output included, and lists the corrected ones
    beside the file: training from the folder took every slice (the model learnt its own mistakes)."""
    from napari_unet.io import write_labels

    image = np.zeros((2, 3, 64, 64), np.uint8)  # Z, T in the OME-TIFF; the masks are stored T, Z
    labels = np.zeros(image.shape, np.uint16)
    for k, (z, t) in enumerate(np.ndindex(2, 3)):
        image[z, t, 7 * k : 7 * k + 6, 10:20] = 200
        labels[z, t, 7 * k : 7 * k + 6, 10:20] = 1
    (tmp_path / "img").mkdir()
    tifffile.imwrite(tmp_path / "img" / "pos.ome.tif", image, metadata={"axes": "ZTYX"})
    write_labels(tmp_path / "img" / "pos masks.tif", labels, axes="ZTYX", corrected=[(1, 2), (0, 1)])
    with caplog.at_level(logging.WARNING):
        images, masks, _colours = read_examples([str(tmp_path / "img")], [str(tmp_path / "img")])
    assert len(images) == 2 and "4 of its 6 slices are not marked corrected" in caplog.text
    for got, want in zip(images, (image[0, 1], image[1, 2]), strict=True):  # each with its own labels
        np.testing.assert_array_equal(got, want)
    for got, want in zip(masks, (labels[0, 1], labels[1, 2]), strict=True):
        np.testing.assert_array_equal(got, want)
    not_corrected = []
    examples = examples_from_folders(tmp_path / "img", tmp_path / "img", not_corrected)
    assert [e.source for e in examples] == ["pos.ome.tif, slice 1", "pos.ome.tif, slice 5"]
    assert not_corrected == [("pos masks.tif", 4)]
    # masks with no slice marked (written by napari-unet predict, corrected in another program): all count
    write_labels(tmp_path / "img" / "pos masks.tif", labels, axes="ZTYX", corrected=[])
    assert len(examples_from_folders(tmp_path / "img", tmp_path / "img")) == 6
    # a damaged list: said, and every slice counts (as napari's File > Open reads it; training refused it)
    (tmp_path / "img" / "pos masks.tif.corrected.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert len(examples_from_folders(tmp_path / "img", tmp_path / "img")) == 6
    assert "its list of corrected slices is not read" in caplog.text


def test_folders_of_four_dimensional_stacks_give_one_example_per_plane(tmp_path):
    # the widget refused a TZYX image and its TZYX masks: "has shape (4, 2, 96, 120) but ... has (4, 2, 96, 120)"
    image = np.zeros((4, 2, 48, 40), np.uint8)
    labels = np.zeros(image.shape, np.uint16)
    image[..., 10:20, 10:20] = 200
    labels[..., 10:20, 10:20] = 1
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "img" / "tz.tif", image, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "lab" / "tz.tif", labels, imagej=True, metadata={"axes": "TZYX"})
    examples = examples_from_folders(tmp_path / "img", tmp_path / "lab")
    assert len(examples) == 8 and all(e.labels.shape == (48, 40) for e in examples)
