"""Multi-channel fluorescence: channels last, channels first without axes, RGB composites.

Real DSB2018 fluorescence nuclei (packaged CC0 sample) with a whole-cell (cytoplasm) channel made
from their labels: the nuclei grown by 0.8 diameter, textured, as bright as the nuclei, dark over
the nuclei (a cytoplasm stain).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core import load_model
from napari_unet.core.metrics import average_precision
from napari_unet.core.predict import segment
from napari_unet.core.preprocess import ImageError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def cytoplasm(labels: np.ndarray, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """A cytoplasm channel around the nuclei of ``labels``, as bright as ``image``."""
    from scipy import ndimage as ndi

    from napari_unet.core.scale import median_diameter

    d = median_diameter(labels) or 10
    dist = ndi.distance_transform_edt(labels == 0)
    cell = (dist < 0.8 * d) & (labels == 0)
    texture = ndi.gaussian_filter(np.random.default_rng(seed).random(labels.shape), 2)
    texture = (texture - texture.min()) / np.ptp(texture)
    c = ndi.gaussian_filter(cell.astype(float), 1.5) * (0.5 + texture)
    return (c / c.max() * float(np.max(image))).astype(np.float32)


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    image = tifffile.imread(SAMPLES / "dsb2018_fluorescence_nuclei.tif")
    labels = tifffile.imread(SAMPLES / "dsb2018_fluorescence_nuclei_labels.tif")
    return image, labels


@pytest.fixture(scope="module")
def model():
    return load_model("nuclei", device="cpu")


def test_two_channels_last_are_refused_at_once_with_how_to_pick_one(model, nuclei):
    """(H, W, 2) was H planes of W x 2 pixels: minutes of work and labels of no use. The readers
    take such a file as two channels (io.guess_axes): core says so and how to choose one."""
    image, labels = nuclei
    two = np.stack([cytoplasm(labels, image), image.astype(np.float32)], -1)
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"2 channel.*image\[\.\.\., 1\]"):
        segment(model, two)
    assert time.perf_counter() - start < 2.0
    from napari_unet.io import guess_axes

    assert guess_axes(two.shape) == "YXC"


def test_five_to_eight_channels_last_are_channels_too(model, nuclei, tmp_path):
    """(H, W, 5) was segmented as H strips 5 px wide (and opened so in napari): channels, as 2 are;
    a stack of planes 9 px wide stays planes."""
    import tifffile

    from napari_unet.io import guess_axes, read_layer_data

    image, _labels = nuclei
    five = np.stack([image] * 5, -1)
    with pytest.raises(ImageError, match=r"5 channel"):
        segment(model, five)
    assert guess_axes(five.shape) == "YXC" and guess_axes((4, *image.shape, 8)) == "ZYXC"
    assert guess_axes((*image.shape, 9)) == "ZYX"
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, five)  # (no axes in the file)
    assert len(read_layer_data(path)) == 5  # a layer per channel


def test_one_channel_last_is_the_plane(model, nuclei):
    image, labels = nuclei
    expected = segment(model, image)
    got = segment(model, image[..., None])
    assert got.shape == image.shape
    np.testing.assert_array_equal(got, expected)
    assert average_precision(labels, got) > 0.6  # real objects (0.75)


@pytest.fixture(scope="module")
def composite(nuclei) -> np.ndarray:
    """The nuclei in blue, their cytoplasm in green, black elsewhere: a merge saved as RGB."""
    image, labels = nuclei
    c = cytoplasm(labels, image)
    return np.stack([np.zeros_like(c), c, image.astype(np.float32)], -1).clip(0, 255).astype(np.uint8)


def test_rgb_fluorescence_merge_segments_its_nuclei_colour(model, nuclei, composite, caplog):
    """The mean of the colours mixed the nuclei with the cytoplasm around them (AP@0.5 0.875 ->
    0.238 on a DSB2018 image in the generality hunt): the blue (nuclei) colour is segmented, and
    a warning says so."""
    image, labels = nuclei
    grey_ap = average_precision(labels, segment(model, image))
    with caplog.at_level("WARNING", logger="napari_unet"):
        got = segment(model, composite)
    assert average_precision(labels, got) >= grey_ap - 0.02
    assert any("blue channel" in r.getMessage() for r in caplog.records)


def test_stained_tissue_and_pseudo_colour_keep_the_mean(model, nuclei):
    """Stained tissue (bright background in every colour) and one channel shown through a colour map
    are no merge of channels: the mean of the colours, as before (DSB2018: 0 of its 91 colour images
    change)."""
    from napari_unet.core.channels import nuclear_colour

    stained = tifffile.imread(SAMPLES / "dsb2018_stained_nuclei.tif")
    assert stained.ndim == 3 and stained.shape[-1] == 3
    assert nuclear_colour(stained) is None
    image, _ = nuclei
    fire = np.stack([np.clip(image * 3.0, 0, 255), np.clip(image * 1.5, 0, 255), image], -1).astype(np.uint8)
    assert nuclear_colour(fire) is None
    np.testing.assert_array_equal(segment(model, stained), segment(model, stained, colour="mean"))


def test_cli_says_which_colour_of_a_merge_it_segmented(tmp_path, nuclei, composite, caplog):
    from skimage.io import imsave

    from napari_unet.cli import main

    image, labels = nuclei
    imsave(tmp_path / "merge.png", composite, check_contrast=False)
    with caplog.at_level("WARNING"):  # (on stderr outside pytest, which takes the log records)
        assert main(["predict", str(tmp_path / "merge.png"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    said = [r.getMessage() for r in caplog.records if "blue channel" in r.getMessage()]
    assert len(said) == 1 and "merge.png" in said[0]
    masks = tifffile.imread(tmp_path / "out" / "merge_masks.tif")
    assert average_precision(labels, masks) > 0.6


def test_segment_widget_says_which_colour_of_a_merge_it_segmented(make_napari_viewer, qtbot, nuclei, composite,
                                                                   notifications):
    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    image, labels = nuclei
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_image(composite, name="merge", rgb=True)
    widget.reset_choices()
    widget._image_combo.value = layer
    widget._scope.value = SCOPE_SLICE
    widget._run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    masks = np.asarray(viewer.layers[masks_layer_name("merge")].data)
    assert average_precision(labels, masks) > 0.6
    assert sum("blue channel" in n for n in notifications) == 1


@pytest.fixture(scope="module")
def two_channel_files(tmp_path_factory, nuclei) -> Path:
    """(cytoplasm, nuclei) as a TIFF that names no axes, an ImageJ CYX and an OME-TIFF CYX with names."""
    image, labels = nuclei
    two = np.stack([cytoplasm(labels, image), image.astype(np.float32)]).clip(0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("two_channels")
    tifffile.imwrite(folder / "plain.tif", two)
    tifffile.imwrite(folder / "imagej.tif", two, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(folder / "ome.ome.tif", two, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["cyto", "DAPI"]}})
    return folder


def test_cli_says_a_short_first_axis_of_a_file_without_axes_is_taken_as_planes(two_channel_files, tmp_path, capsys):
    from napari_unet.cli import main

    assert main(["predict", str(two_channel_files / "plain.tif"), "--out", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "axis 0 (2 entries) is taken as z planes" in err and "--channel" in err
    assert tifffile.imread(tmp_path / "plain_masks.tif").shape[0] == 2


@pytest.mark.parametrize("how", [["--channel", "1"], ["--axes", "CYX", "--channel", "1"]])
def test_cli_channel_of_a_file_without_axes_segments_that_channel(two_channel_files, nuclei, tmp_path, how, capsys):
    """--channel was ignored for a (2, H, W) TIFF that names no axes: both planes were segmented,
    the nuclei one at the object size told on the cytoplasm (AP@0.5 0.778 instead of 1.0 in the hunt)."""
    from napari_unet.cli import main

    _image, labels = nuclei
    assert main(["predict", str(two_channel_files / "plain.tif"), "--out", str(tmp_path), "--no-progress", *how]) == 0
    masks = tifffile.imread(tmp_path / "plain_masks.tif")
    assert masks.shape == labels.shape
    assert average_precision(labels, masks) > 0.6


def test_cli_names_the_channels_of_a_file_that_has_them(two_channel_files, tmp_path, nuclei, capsys):
    from napari_unet.cli import main

    assert main(["predict", str(two_channel_files / "ome.ome.tif"), "--out", str(tmp_path), "--no-progress"]) != 0
    assert "0 cyto, 1 DAPI" in capsys.readouterr().err
    _image, labels = nuclei
    for name in ("ome.ome.tif", "imagej.tif"):
        assert main(["predict", str(two_channel_files / name), "--out", str(tmp_path), "--channel", "1",
                     "--no-progress"]) == 0
    for stem in ("ome", "imagej"):
        assert average_precision(labels, tifffile.imread(tmp_path / f"{stem}_masks.tif")) > 0.6


def test_reader_says_a_short_first_axis_of_a_file_without_axes_is_taken_as_planes(two_channel_files, notifications):
    from napari_unet.io._reader import reader_function

    layers = reader_function(str(two_channel_files / "plain.tif"))
    assert len(layers) == 1 and np.shape(layers[0][0]) == (2, 256, 256)
    assert any("taken as z planes" in n and "type C" in n for n in notifications)
    notifications.clear()
    layers = reader_function(str(two_channel_files / "imagej.tif"))
    assert len(layers) == 2 and not any("taken as" in n for n in notifications)  # a layer per channel



def test_dask_batch_tells_the_colour_of_a_merge_once_for_the_stack(model, nuclei, composite, caplog, tmp_path):
    """A time-lapse of RGB merges through the dask batch path: the colour is told on the first
    plane for the whole stack (said once), as the plain plane loop does, not by each plane's task."""
    import zarr

    from napari_unet.batch import segment_to_ome_zarr

    stack = np.stack([composite, composite[::-1]])
    with caplog.at_level("WARNING", logger="napari_unet"):
        out = segment_to_ome_zarr(model, stack, tmp_path / "merge_masks.ome.zarr", rgb=True, show_progress=False)
    said = [r.getMessage() for r in caplog.records if "blue channel" in r.getMessage()]
    assert len(said) == 1
    labels = np.asarray(zarr.open_group(str(out), mode="r")["0"][...])
    np.testing.assert_array_equal(labels, segment(model, stack, rgb=True))


def test_a_merge_with_inf_is_refused_with_the_non_finite_message(model, nuclei, composite, tmp_path):
    """An RGB float image holding an infinite value: the colours are measured on the first plane
    before it is checked, and skimage's 'autodetected range of [nan, nan]' came out instead of the
    plane loop's message saying how to fix it; the dask batch's colour, told up front, did the same.
    (NaN marks pixels without data: filled, see test_predict.)"""
    from napari_unet.batch import segment_to_ome_zarr

    merge = composite.astype(np.float32)
    merge[5, 5, 1] = np.inf
    with pytest.raises(ImageError, match="infinite values"):
        segment(model, merge)
    with pytest.raises(ImageError, match="infinite values"):
        segment_to_ome_zarr(model, np.stack([merge, merge]), tmp_path / "nan.ome.zarr", rgb=True,
                            show_progress=False)


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """A real immunohistochemistry section (colonic glands, FHL2 in brown DAB, haematoxylin
    counterstain; scikit-image's sample, no known copyright restrictions), 512 x 512 RGB."""
    from skimage import data

    return data.immunohistochemistry()


def _haematoxylin_covered(labels: np.ndarray, rgb: np.ndarray) -> float:
    """The share of the most haematoxylin-stained tenth of the pixels (the nuclei) that ``labels`` cover."""
    from napari_unet.core.channels import stain_densities

    h = stain_densities(rgb)[..., 0]
    return float((labels > 0)[h > np.percentile(h, 90)].mean())


def test_immunohistochemistry_is_segmented_without_its_dab(model, ihc, caplog):
    """In the mean of the colours the brown DAB (a protein in the cells' membranes and cytoplasm) is as
    dark as the nuclei: `nuclei` outlined the stained cells and missed the blue nuclei, covering 45-54% of
    the most haematoxylin-stained pixels. Without the DAB (colour deconvolution) it covers ~90% of them;
    a warning says so and how to have the mean."""
    from napari_unet.core.channels import WITHOUT_DAB, colour_to_segment

    assert colour_to_segment(ihc) == WITHOUT_DAB
    from napari_unet.core.predict import PlaneResult, iter_planes

    with caplog.at_level("WARNING", logger="napari_unet"):
        result = next(r for r in iter_planes(model, ihc) if isinstance(r, PlaneResult))
    auto = result.labels
    assert sum("DAB" in r.getMessage() for r in caplog.records) == 1
    # nuclei of 10-20 px, found one by one (the network was surest of 6 clumps of "113 px" at 1/8)
    assert result.diameter < 30 and auto.max() > 150
    mean = segment(model, ihc, colour="mean")
    assert _haematoxylin_covered(auto, ihc) > 0.8
    assert _haematoxylin_covered(auto, ihc) > _haematoxylin_covered(mean, ihc) + 0.25
    np.testing.assert_array_equal(auto, segment(model, ihc, colour="without DAB"))
    # the dtype's range does not matter: the background (the light) is measured on the image
    as16 = (ihc.astype(np.uint16) * 200)
    assert colour_to_segment(as16) == WITHOUT_DAB
    assert colour_to_segment(ihc.astype(np.float32) / 255) == WITHOUT_DAB


def test_dab_is_left_out_only_where_it_is_most_of_the_stain(ihc):
    """H&E-like tissue (DSB2018's 91 colour images measure at most 0.30 DAB) keeps the mean; an IHC
    section whose DAB is weak (a negative control) too; a grey image stored as RGB is no stained tissue."""
    from skimage.color import rgb_from_hed

    from napari_unet.core.channels import DAB_SHARE, dab_share, leaves_out_dab, stain_densities

    stained = tifffile.imread(SAMPLES / "dsb2018_stained_nuclei.tif")
    assert dab_share(stained) < 0.1 and not leaves_out_dab(stained)
    assert dab_share(ihc) > 0.8
    faint = stain_densities(ihc)
    faint[..., 2] *= 0.1
    negative = (np.exp(-(faint @ rgb_from_hed.astype(np.float32))) * 255).clip(0, 255).astype(np.uint8)
    assert dab_share(negative) < DAB_SHARE and not leaves_out_dab(negative)
    grey = np.repeat(ihc.mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    assert not leaves_out_dab(grey)


def test_dab_is_told_in_zoomed_views_and_beside_black_and_not_in_colour_maps(ihc, nuclei):
    """A review's cases: cytoplasmic DAB filling a zoomed-in view (what Segment's visible region tells
    the colour on) is one convex sheet, once taken for compact nuclei (8 of 121 views of 192 px); a
    black border (1.4% of black moved the share from 0.85 to 0.73); a fluorescence image shown in a
    yellow colour map, taken for a colour image, lost its nuclei without "DAB" (AP@0.5 0.864 -> 0.019):
    deconvolution is for white light."""
    from napari_unet.core.channels import WITHOUT_DAB, colour_to_segment, leaves_out_dab

    views = [ihc[y:y + 192, x:x + 192] for y in range(0, 321, 64) for x in range(0, 321, 64)]
    assert all(colour_to_segment(v) == WITHOUT_DAB for v in views)
    bordered = ihc.copy()
    bordered[:, :150] = 0
    assert leaves_out_dab(bordered)
    image, _labels = nuclei
    g = (image.astype(np.float32) / image.max() * 255)
    yellow = np.stack([g, g, np.zeros_like(g)], -1).astype(np.uint8)
    assert not leaves_out_dab(yellow)


def test_fine_tuning_examples_of_immunohistochemistry_are_made_without_dab(model, ihc):
    """Fine-tuning must see what prediction segments: the examples of an IHC image are made without
    its DAB too, told after the pixels without data are filled, as prediction tells it (a black border
    of 30% or NaN made fine-tuning take the mean where prediction took the image without DAB)."""
    from napari_unet.core.channels import WITHOUT_DAB, colour_to_segment, without_dab
    from napari_unet.core.examples import _colour_segmented, prepare_examples
    from napari_unet.core.preprocess import fill_missing

    np.testing.assert_allclose(_colour_segmented(model, ihc), without_dab(ihc))
    holed = ihc.astype(np.float32)
    holed[:, :150] = np.nan
    assert colour_to_segment(fill_missing(holed)[0]) == WITHOUT_DAB  # what prediction's plane loop tells
    labels = np.zeros(ihc.shape[:2], np.int32)
    labels[200:220, 300:320] = 1
    labels[260:280, 400:420] = 2
    (example,) = prepare_examples(model, [holed], [labels])
    assert example.known is not None and not example.known.all()
    assert np.isfinite(example.image).all()


def test_cli_channel_mean_or_without_dab_for_an_rgb_image(tmp_path, ihc, model, capsys):
    """The note of an IHC image tells how to have the mean: ``--channel mean`` (the command line had
    numbers only); ``without-dab`` asks for the other; a grey file of the batch leaves it aside, said."""
    from napari_unet.cli import main

    tifffile.imwrite(tmp_path / "ihc.tif", ihc, photometric="rgb")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "ihc.tif"), "--out", str(out), "--no-progress", "--channel", "mean"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "ihc_masks.tif"), segment(model, ihc, colour="mean"))
    assert main(["predict", str(tmp_path / "ihc.tif"), "--out", str(out / "d"), "--no-progress", "--dask",
                 "--channel", "mean"]) == 0
    tifffile.imwrite(tmp_path / "grey.tif", ihc[..., 0])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "grey.tif"), "--out", str(out), "--no-progress",
                 "--channel", "without-dab"]) == 0
    assert "not an RGB image: --channel without-dab left aside" in capsys.readouterr().err
    assert (out / "grey_masks.tif").exists()
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "ihc.tif"), "--out", str(out), "--channel", "blue"])
    assert "'blue' is not a channel" in capsys.readouterr().err


def test_segment_widget_segments_the_colour_chosen_and_fine_tuning_learns_from_it(
        make_napari_viewer, qtbot, model, nuclei, composite, notifications, tmp_path):
    """Segment had no colour choice: an RGB merge was segmented by its most nuclei-like colour, and
    another colour took splitting the layer. Colour (shown for RGB images) chooses it; the masks record
    it, and fine-tuning on them learns from that colour (as the next runs segment it)."""
    from napari_unet.core.examples import prepare_examples
    from napari_unet.io._corrected import COLOUR_KEY
    from napari_unet.widgets._examples import examples_from_layers
    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    _image, labels = nuclei
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    grey = viewer.add_image(_image, name="grey")
    widget.reset_choices()
    widget._image_combo.value = grey
    assert widget._colour.native.isHidden()  # (a grey image has no colours to choose from)
    layer = viewer.add_image(composite, name="merge", rgb=True)
    widget.reset_choices()
    widget._image_combo.value = layer
    assert not widget._colour.native.isHidden() and widget._colour.value == "auto"
    widget._colour.value = 1  # green: the cytoplasm
    widget._scope.value = SCOPE_SLICE
    widget._run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    masks = viewer.layers[masks_layer_name("merge")]
    green = segment(model, composite, colour=1)
    assert average_precision(green, np.asarray(masks.data)) == 1.0
    assert not np.array_equal(segment(model, composite), green)  # (not what Auto segments: the blue nuclei)
    assert not any("blue channel" in n for n in notifications)  # (the user chose: no "looks like a merge")
    assert masks.metadata[COLOUR_KEY] == [[[], 1]]  # (each slice's: here the image's one)
    (example,) = examples_from_layers(layer, masks, [()])
    assert example.colour == 1
    (chosen,) = prepare_examples(model, [example.image], [labels], colours=[example.colour])
    (auto,) = prepare_examples(model, [example.image], [labels])
    green_alone, blue_alone = (prepare_examples(model, [composite[..., c]], [labels])[0].image for c in (1, 2))

    def likeness(a: np.ndarray, b: np.ndarray) -> float:  # (the colours' pixels without data are filled apart)
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert likeness(chosen.image, green_alone) > 0.5 > 0 > likeness(chosen.image, blue_alone)  # (0.75, -0.32)
    assert likeness(auto.image, blue_alone) > 0.9 and likeness(auto.image, green_alone) < 0  # (Auto: the nuclei's)
    # saved and reopened, the masks still say it (in the list beside the file)
    from napari_unet.io._corrected import stored_layout

    path = tmp_path / f"{masks.name}.tif"
    assert masks.save(str(path), plugin="napari-unet") and stored_layout(path).colours == [[[], 1]]
    reopened = viewer.open(path, plugin="napari-unet", name="reopened")[0]
    assert reopened.metadata[COLOUR_KEY] == [[[], 1]] and examples_from_layers(layer, reopened, [()])[0].colour == 1
    viewer.layers.remove(reopened)
    # the choice follows the image: another image's masks have their own; Auto again forgets it
    widget._image_combo.value = grey
    widget._image_combo.value = layer
    assert widget._colour.value == 1
    widget._colour.value = "auto"
    widget._run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert COLOUR_KEY not in masks.metadata
    assert examples_from_layers(layer, masks, [()])[0].colour == "auto"
    assert sum("blue channel" in n and "Colour in Segment" in n for n in notifications) == 1


def test_fine_tuning_takes_the_colour_of_each_rgb_image(model, nuclei, composite):
    from napari_unet.core.train import finetune

    _image, labels = nuclei

    def run(colours):
        gen = finetune(model, [composite], [labels], steps=1, val_fraction=0, validate_start=False, colours=colours)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    assert run([1]).colour == 1  # (learnt from green: recorded, see the model test below)
    with pytest.raises(ValueError, match="colour must be"):
        run(["purple"])
    with pytest.raises(ValueError, match="one colour per image"):
        run([1, 2])


def test_cli_train_learns_from_the_colour_given(tmp_path, nuclei, composite, capsys):
    """``napari-unet train --channel``, as ``predict --channel``: an RGB merge's green learnt from, not the
    nuclear blue that is told by default; a colour that is none is refused in one line."""
    from napari_unet.cli import main
    from napari_unet.core.checkpoint import read_model_file

    _image, labels = nuclei
    tifffile.imwrite(tmp_path / "merge.tif", composite, photometric="rgb")
    tifffile.imwrite(tmp_path / "merge_masks.tif", labels)
    common = ["train", "--images", str(tmp_path / "merge.tif"), "--labels", str(tmp_path / "merge_masks.tif"),
              "--from", "nuclei", "--steps", "1", "--batch-size", "2", "--val-fraction", "0", "--device", "cpu",
              "--no-progress"]
    weights = {}
    for channel in (None, "1", "2"):
        out = tmp_path / f"{channel}.pt"
        assert main([*common, "--out", str(out), *(["--channel", channel] if channel else [])]) == 0, capsys.readouterr().err
        weights[channel] = next(iter(read_model_file(out).net.state_dict().values()))
    assert weights[None].equal(weights["2"]) and not weights[None].equal(weights["1"])  # (default: the blue nuclei)
    assert main([*common, "--out", str(tmp_path / "x.pt"), "--channel", "3"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--channel must be 0, 1 or 2" in err[0] and not (tmp_path / "x.pt").exists()
    # a file with channels (C, Y, X): the number takes its channel, not said to be left aside (it was)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([composite[..., 0], composite[..., 2]]), imagej=True,
                     metadata={"axes": "CYX"})
    channels = [a if a != str(tmp_path / "merge.tif") else str(tmp_path / "two.tif") for a in common]
    assert main([*channels, "--out", str(tmp_path / "c.pt"), "--channel", "1"]) == 0
    assert "--channel" not in capsys.readouterr().err
    # a grey file without channels: the number is left aside, and said so (it was, silently)
    tifffile.imwrite(tmp_path / "grey.tif", composite[..., 2])
    grey = [a if a != str(tmp_path / "merge.tif") else str(tmp_path / "grey.tif") for a in common]
    assert main([*grey, "--out", str(tmp_path / "g.pt"), "--channel", "1"]) == 0
    assert "no RGB training image nor one with channels: --channel 1 left aside" in capsys.readouterr().err


def test_compactness_of_thousands_of_parts_is_measured_on_a_few_hundred():
    """A 2048 px merge's surroundings hold thousands of nuclei: a convex hull each took 0.6 s of the
    1.0 s that told its colour. The largest parts and every n-th of the others by size stand for all."""
    from skimage.draw import disk, rectangle
    from skimage.measure import regionprops

    from napari_unet.core.channels import MAX_MEASURED_OBJECTS, _solidity

    rng = np.random.default_rng(0)
    labels = np.zeros((1200, 1200), np.int32)
    for i in range(1600):  # discs of 3-9 px radius, and one part in four an L (solidity about 0.5-0.75)
        r, c = divmod(i, 40)
        centre, radius = (15 + 30 * r, 15 + 30 * c), int(rng.integers(3, 10))
        labels[disk(centre, radius, shape=labels.shape)] = i + 1
        if i % 4 == 0:
            labels[rectangle((centre[0] - radius, centre[1] - radius), extent=(radius, radius))] = 0
    props = regionprops(labels)
    exact = float(np.average([p.solidity for p in props], weights=[p.area for p in props]))
    assert len(props) > 5 * MAX_MEASURED_OBJECTS
    assert _solidity(props) == pytest.approx(exact, abs=0.01)
    few = props[:MAX_MEASURED_OBJECTS]  # (as many as are measured: all of them, exactly)
    assert _solidity(few) == pytest.approx(np.average([p.solidity for p in few], weights=[p.area for p in few]))
    assert _solidity(props, largest=0) == 0.0 and _solidity([]) == 0.0


def test_each_slice_keeps_its_colour_and_colour_follows_masks_opened_later(make_napari_viewer, qtbot, nuclei,
                                                                          composite, tmp_path):
    """One colour a masks layer, replaced by every run: a frame segmented by green and corrected was then
    learnt from the colour of the next run (blue nuclei for green cells). Each slice keeps its own; the
    masks of the image opened after it set Colour to theirs (it said Auto, and the next run forgot theirs)."""
    from napari_unet.io._corrected import colours_by_slice
    from napari_unet.widgets._examples import examples_from_layers
    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_image(np.stack([composite, composite]), name="merge", rgb=True)
    widget.reset_choices()
    widget._image_combo.value = layer
    widget._scope.value = SCOPE_SLICE
    for frame, colour in ((0, 1), (1, "auto")):
        viewer.dims.set_current_step(0, frame)
        widget._colour.value = colour
        widget._run_button.clicked.emit()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    masks = viewer.layers[masks_layer_name("merge")]
    assert colours_by_slice(masks.metadata).get((0,), "auto") == 1
    assert colours_by_slice(masks.metadata).get((1,), "auto") == "auto"
    assert [e.colour for e in examples_from_layers(layer, masks, [(0,), (1,)])] == [1, "auto"]
    path = tmp_path / "merge masks.tif"
    assert masks.save(str(path), plugin="napari-unet")
    viewer.layers.remove(masks)
    widget._colour.value = "auto"
    viewer.open(path, plugin="napari-unet")  # the masks after the image: Colour takes their last choice
    assert widget._colour.value == 1
    reopened = viewer.layers[masks_layer_name("merge")]
    assert [e.colour for e in examples_from_layers(layer, reopened, [(0,), (1,)])] == [1, "auto"]


def test_a_model_fine_tuned_on_one_colour_segments_it_by_default(model, nuclei, composite, caplog):
    """A model fine-tuned on the green of RGB merges was given their blue nuclei again by "auto": it
    records the colour it learnt from, and segments (and is fine-tuned again on) that one."""
    from napari_unet.core.train import finetune

    _image, labels = nuclei

    def tuned(base, images, colours):
        gen = finetune(base, images, [labels] * len(images), steps=1, val_fraction=0, validate_start=False,
                       colours=colours)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    green = tuned(model, [composite], [1])
    assert green.colour == 1 and model.colour is None
    caplog.clear()
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(segment(green, composite), segment(green, composite, colour=1))
    assert any("fine-tuned on the green colour" in r.getMessage() for r in caplog.records)
    assert tuned(green, [composite], ["auto"]).colour == 1  # ("auto" is its own colour)
    assert tuned(green, [composite[..., 2]], None).colour == 1  # (no RGB image: it keeps it)
    assert tuned(green, [composite, composite], [2, "mean"]).colour is None  # (two colours: told on each)
    assert tuned(model, [composite], None).colour is None  # (told on the image: nothing to record)


def test_training_from_files_learns_from_the_colour_saved_with_the_masks(tmp_path, nuclei, composite):
    from napari_unet.cli.train import read_examples
    from napari_unet.io import write_labels
    from napari_unet.io._corrected import COLOUR_KEY
    from napari_unet.widgets._examples import examples_from_folders

    _image, labels = nuclei
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "img" / "merge.tif", composite, photometric="rgb")
    write_labels(tmp_path / "lab" / "merge.tif", labels, corrected=[()], colours={COLOUR_KEY: [[[], 1]]})
    (example,) = examples_from_folders(tmp_path / "img", tmp_path / "lab")
    assert example.colour == 1
    _images, _labels, colours = read_examples([str(tmp_path / "img")], [str(tmp_path / "lab")])
    assert colours == [1]
    # a time-lapse whose frame 0 was segmented by green, frame 1 on Auto: each frame learnt from its own
    tifffile.imwrite(tmp_path / "img" / "merge.tif", np.stack([composite, composite]), photometric="rgb")
    write_labels(tmp_path / "lab" / "merge.tif", np.stack([labels, labels]), axes="TYX", corrected=[(0,), (1,)],
                 colours={COLOUR_KEY: [[[0], 1]]})
    assert [e.colour for e in examples_from_folders(tmp_path / "img", tmp_path / "lab")] == [1, "auto"]
    assert read_examples([str(tmp_path / "img")], [str(tmp_path / "lab")])[2] == [1, "auto"]


def test_colour_choices_are_read_whatever_their_case_and_others_are_none():
    from napari_unet.core.channels import WITHOUT_DAB, chosen_colour

    assert chosen_colour("Without DAB") == WITHOUT_DAB and chosen_colour(" MEAN ") == "mean"
    assert chosen_colour(np.int64(2)) == 2 and chosen_colour(0) == 0
    assert all(chosen_colour(v) is None for v in ("auto", "1", 1.0, True, 3, -1, None, [1], "purple"))


def test_cli_train_takes_a_channel_of_a_multi_channel_file(two_channel_files, nuclei, tmp_path, capsys):
    """``train`` refused an image with channels ("save the channel as its own file") where ``predict
    --channel`` segments one: ``--channel N`` picks it, as training on that channel's own file."""
    from napari_unet.cli import main
    from napari_unet.core.checkpoint import read_model_file

    _image, labels = nuclei
    tifffile.imwrite(tmp_path / "masks.tif", labels)
    tifffile.imwrite(tmp_path / "alone.tif", tifffile.imread(two_channel_files / "ome.ome.tif")[1])
    common = ["train", "--labels", str(tmp_path / "masks.tif"), "--from", "nuclei", "--steps", "1", "--batch-size",
              "2", "--val-fraction", "0", "--device", "cpu", "--no-progress"]
    assert main([*common, "--images", str(two_channel_files / "ome.ome.tif"), "--out", str(tmp_path / "no.pt")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 channels" in err[0] and "--channel N" in err[0]
    assert main([*common, "--images", str(two_channel_files / "ome.ome.tif"), "--channel", "5",
                 "--out", str(tmp_path / "no.pt")]) != 0
    assert "0 to 1" in capsys.readouterr().err and not (tmp_path / "no.pt").exists()
    for name, extra in (("one", ["--images", str(two_channel_files / "ome.ome.tif"), "--channel", "1"]),
                        ("alone", ["--images", str(tmp_path / "alone.tif")])):
        assert main([*common, *extra, "--out", str(tmp_path / f"{name}.pt")]) == 0, capsys.readouterr().err
    one, alone = (next(iter(read_model_file(tmp_path / f"{n}.pt").net.state_dict().values())) for n in ("one", "alone"))
    assert one.equal(alone)


def test_a_bioimageio_package_of_a_colour_model_says_which_colour_it_takes(model, composite):
    """A model fine-tuned on the green of RGB merges, exported: its input was described as "colour images
    averaged over R, G and B" and its test tensors made so, which another BioImage.IO tool would follow."""
    from napari_unet.core.zoo_export import _grey_of_colour, make_test_tensors

    green = model.copy()
    green.metadata["colour"] = 1
    assert "green colour of RGB images" in _grey_of_colour(green) and "averaged" in _grey_of_colour(model)
    raw, _probs = make_test_tensors(green, composite)
    np.testing.assert_array_equal(raw, make_test_tensors(model, composite[..., 1])[0])  # (not the colours' mean)
    assert not np.array_equal(raw, make_test_tensors(model, composite)[0])


def test_fine_tune_says_when_its_rgb_slices_were_segmented_by_different_colours(nuclei, composite):
    from napari_unet.core.events import TrainNote
    from napari_unet.widgets._examples import Example, read_examples

    _image, labels = nuclei

    def notes(colours):
        gen = read_examples([Example(composite, labels, f"merge {i}", c) for i, c in enumerate(colours)])
        said = []
        while True:
            try:
                event = next(gen)
            except StopIteration:
                return said
            if isinstance(event, TrainNote):
                said.append(event.message)

    (note,) = notes([1, "auto", 1])
    assert "different colours (green: 2, auto: 1)" in note
    assert notes([1, 1]) == [] and notes(["auto"]) == []


def test_the_colour_words_are_read_alike_in_the_plane_loop_training_and_the_batch():
    """One reading of the colour words (the plane loop, training's examples and the dask batch each
    parsed them; the batch took only "auto" as is, so "Auto" told the colour block by block)."""
    from napari_unet.core.channels import WITHOUT_DAB, colour_choice

    assert [colour_choice(c) for c in (None, "auto", " Auto ", "MEAN", "without dab", 1, np.int64(2), 7)] == \
        ["auto", "auto", "auto", "mean", WITHOUT_DAB, 1, 2, 7]
    for bad in ("purple", True, 1.5, [0]):
        with pytest.raises(ValueError, match="colour must be"):
            colour_choice(bad)
