"""Reader: real TIFF / OME-TIFF / BigTIFF / OME-Zarr / image folders opened through napari."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from napari_unet.io import inspect_stack, read_layer_data, read_stack
from napari_unet.io._formats import StackReadError
from napari_unet.io._reader import _read_levels, napari_get_reader, reader_function

PLUGIN = "napari-unet"


def _hyperstack(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(3, 4, 2, 24, 32), dtype=np.uint16)  # T Z C Y X
    data[:, :, 1] //= 4  # channel 2 dimmer
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um", "finterval": 30.0},
    )
    return data


def test_imagej_hyperstack_splits_channels_with_scale(make_napari_viewer, tmp_path):
    path = tmp_path / "cells.tif"
    data = _hyperstack(path)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [ly.name for ly in layers] == ["cells [ch0]", "cells [ch1]"]
    for c, layer in enumerate(layers):
        assert layer.data.shape == (3, 4, 24, 32)  # T Z Y X, channel split off
        np.testing.assert_allclose(layer.scale, [30.0, 1.5, 0.25, 0.25])
        assert tuple(layer.axis_labels) == ("t", "z", "y", "x")
        np.testing.assert_array_equal(np.asarray(layer.data[2, 1]), data[2, 1, c])
        assert layer.metadata["napari_unet"]["axes"] == "TZCYX"
    # contrast limits come from the data, per channel
    lo0, hi0 = layers[0].contrast_limits
    lo1, hi1 = layers[1].contrast_limits
    assert 3000 < hi0 <= 4000 and hi1 < 1100 and lo0 < 100


def test_ome_tiff_channel_names_and_physical_size(make_napari_viewer, tmp_path):
    path = tmp_path / "embryo.ome.tif"
    data = np.arange(2 * 3 * 5 * 16 * 20, dtype=np.uint16).reshape(2, 3, 5, 16, 20)  # T C Z Y X
    tifffile.imwrite(
        path, data, ome=True,
        metadata={"axes": "TCZYX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 2.0,
                  "TimeIncrement": 60.0, "Channel": {"Name": ["DAPI", "GFP", "RFP"]}},
    )
    info = inspect_stack(path)
    assert info.format == "ome-tiff" and info.axes == "TCZYX"
    assert info.channel_names == ["DAPI", "GFP", "RFP"]
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [ly.name for ly in layers] == ["embryo [DAPI]", "embryo [GFP]", "embryo [RFP]"]
    assert layers[1].data.shape == (2, 5, 16, 20)
    np.testing.assert_allclose(layers[1].scale, [60.0, 2.0, 0.4, 0.4])
    np.testing.assert_array_equal(np.asarray(layers[2].data), data[:, 2])


def test_bigtiff_plain_with_axes_and_resolution_in_cm(make_napari_viewer, tmp_path):
    path = tmp_path / "big.tif"
    data = np.random.default_rng(1).random((6, 20, 24)).astype(np.float32)
    # 1 pixel = 0.5 µm -> 20000 pixels per cm
    tifffile.imwrite(path, data, bigtiff=True, metadata={"axes": "ZYX"},
                     resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert tifffile.TiffFile(path).is_bigtiff
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer.data.shape == (6, 20, 24)
    np.testing.assert_allclose(layer.scale, [1.0, 0.5, 0.5])
    assert tuple(layer.axis_labels) == ("z", "y", "x")
    np.testing.assert_allclose(np.asarray(layer.data), data)


def _write_ome_zarr(path: Path, data: np.ndarray) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=data, chunks=(1, 1, 1, 32, 32))
    root.create_array("1", data=data[..., ::2, ::2], chunks=(1, 1, 1, 32, 32))
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "name": "organoid",
        "axes": [
            {"name": "t", "type": "time", "unit": "second"},
            {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [10.0, 1, 2.0, 0.3, 0.3]}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [10.0, 1, 2.0, 0.6, 0.6]}]},
        ],
    }]
    root.attrs["omero"] = {"channels": [{"label": "nuclei"}, {"label": "membrane"}]}


def test_ome_zarr_axes_named_in_words_are_read_by_their_type(tmp_path):
    import zarr

    path = tmp_path / "chan.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=np.zeros((2, 3, 16, 16), np.uint8))
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "time", "type": "time"}, {"name": "channel", "type": "channel"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5, 0.5]}]}],
    }]
    root.attrs["omero"] = {"channels": [{"label": "DAPI"}, {"label": "GFP"}, {"label": "BF"}]}
    info = inspect_stack(path)
    assert info.axes == "TCYX" and info.channel_names == ["DAPI", "GFP", "BF"]  # not a Z axis of channels
    assert info.scale == {"Y": 0.5, "X": 0.5}


def _zyx_ome_zarr(path: Path, units: tuple[str | None, ...], transforms: list, **multiscales: Any):
    """A one-level (3, 16, 16) ZYX OME-Zarr 0.4 image: axis units (None: none), the dataset's coordinate
    transformations, other ``multiscales`` entries; its root group."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=np.zeros((3, 16, 16), np.uint8))
    axes = [{"name": a, "type": "space", **({"unit": u} if u else {})} for a, u in zip("zyx", units, strict=True)]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                  "datasets": [{"path": "0", "coordinateTransformations": transforms}], **multiscales}]
    return root


def test_ome_zarr_scale_of_zero_or_not_a_number_is_no_calibration(tmp_path):
    """As for TIFF: the axis is uncalibrated (a scale of 0 was kept, then refused by the writer
    after the segmentation, or copied into the masks of the dask path)."""
    path = tmp_path / "zero.ome.zarr"
    _zyx_ome_zarr(path, ("micrometer",) * 3, [{"type": "scale", "scale": ["NaN", 0, -0.5]}])
    assert inspect_stack(path).scale == {}


def test_ome_zarr_translation_places_the_layer(tmp_path):
    """A crop of a larger image (OME-Zarr's translation after its scale, and the multiscales' own
    transformations after the dataset's) lies where it was cut from, in micrometres."""
    path = tmp_path / "crop.ome.zarr"
    root = _zyx_ome_zarr(path, ("micrometer", "millimeter", None), [{"type": "scale", "scale": [2.0, 0.0005, 1.0]},
                                       {"type": "translation", "translation": [4.0, 0.01, 7.0]}],
                         coordinateTransformations=[{"type": "scale", "scale": [1.0, 1.0, 1.0]},
                                                    {"type": "translation", "translation": [10.0, 0.0, 0.0]}])
    ((_data, meta, kind),) = napari_get_reader(str(path))(str(path))
    assert kind == "image"
    np.testing.assert_allclose(meta["scale"], [2.0, 0.5, 1.0])
    np.testing.assert_allclose(meta["translate"], [14.0, 10.0, 7.0])  # 0.01 mm = 10 um; x in pixels

    # a translation in the units of a scale that is no calibration (0) is left out with it
    root.attrs["multiscales"] = [{**root.attrs["multiscales"][0], "coordinateTransformations": [], "datasets": [
        {"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.0, 0.5, 0.5]}, {"type": "translation", "translation": [4.0, 3.0, 1.0]}]}]}]
    ((_data, meta, _),) = napari_get_reader(str(path))(str(path))
    np.testing.assert_allclose(meta["translate"], [0.0, 3000.0, 1.0])  # (3 mm; x in pixels)


def test_ome_zarr_v04_multiscale(make_napari_viewer, tmp_path):
    path = tmp_path / "organoid.zarr"
    data = np.random.default_rng(2).integers(0, 255, size=(2, 2, 3, 64, 64), dtype=np.uint8)
    _write_ome_zarr(path, data)
    info = inspect_stack(path)
    assert (info.format, info.axes, info.n_levels) == ("ome-zarr", "TCZYX", 2)
    assert info.scale == {"T": 10.0, "Z": 2.0, "Y": 0.3, "X": 0.3}
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [ly.name for ly in layers] == ["organoid [nuclei]", "organoid [membrane]"]
    # small: read in memory, full resolution only
    assert not layers[0].multiscale and layers[0].data.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(layers[1].scale, [10.0, 2.0, 0.3, 0.3])
    np.testing.assert_array_equal(np.asarray(layers[1].data[1, 2]), data[1, 1, 2])
    # lazily: every resolution level, as a napari multiscale image
    viewer.layers.clear()
    (nuclei, _membrane) = [viewer.add_image(d, **m) for d, m, _ in read_layer_data(path, lazy=True)]
    assert nuclei.multiscale and len(nuclei.data) == 2
    assert nuclei.data[0].shape == (2, 3, 64, 64) and nuclei.data[1].shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(np.asarray(nuclei.data[0][1, 2]), data[1, 0, 2])


def test_folder_of_images_in_natural_order(make_napari_viewer, tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 3):  # natural order 1, 2, 3, 10 (not 1, 10, 2, 3)
        Image.fromarray(np.full((12, 16), i, dtype=np.uint8)).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    assert napari_get_reader(str(folder)) is not None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(folder, plugin=PLUGIN)
    assert layer.name == "frames" and layer.data.shape == (4, 12, 16)
    assert [int(np.asarray(layer.data[i])[0, 0]) for i in range(4)] == [1, 2, 3, 10]
    # axes can be corrected (a folder of frames is a time-lapse)
    arr, info = read_stack(folder, lazy=True, axes="TYX")
    assert info.axes == "TYX" and arr.shape == (4, 12, 16) and not isinstance(arr, np.ndarray)
    # an 8-bit and a 16-bit plane: the whole lazy stack computes as 16 bits, as the planes read whole do
    Image.fromarray(np.full((12, 16), 40000, np.uint16)).save(folder / "frame_20.png")
    lazy, info = read_stack(folder, lazy=True)
    whole = np.asarray(lazy)
    assert info.dtype == whole.dtype == np.uint16 and whole[-1, 0, 0] == 40000 and whole[0, 0, 0] == 1
    np.testing.assert_array_equal(whole, read_stack(folder, lazy=False)[0])


def test_lazy_read_touches_no_pixels_until_sliced(tmp_path):
    path = tmp_path / "stack.tif"
    data = _hyperstack(path)
    arr, info = read_stack(path, lazy=True)
    assert not isinstance(arr, np.ndarray) and arr.shape == data.shape
    np.testing.assert_array_equal(arr[1, 3, 0].compute(), data[1, 3, 0])
    arr2, _ = read_stack(path, lazy=None)  # small: auto = in memory
    assert isinstance(arr2, np.ndarray)


def test_rgb_tiff_is_one_rgb_layer(make_napari_viewer, tmp_path):
    path = tmp_path / "he.tif"
    rgb = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    tifffile.imwrite(path, rgb, photometric="rgb")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer.rgb and layer.data.shape == (40, 50, 3)


def test_axes_are_guessed_when_metadata_is_missing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 16, 16), np.uint8), metadata=None)
    info = inspect_stack(path)
    assert info.axes == "ZYX" and not info.axes_from_file
    assert inspect_stack(path, axes="tyx").axes == "TYX"


@pytest.mark.parametrize("name", ["image.png", "data.csv"])
def test_other_files_are_not_ours(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    assert napari_get_reader(str(path)) is None


def test_a_png_named_tif_is_left_to_naparis_reader(make_napari_viewer, tmp_path):
    # napari-unet's reader took every .tif and said this one was broken; napari's own opens it
    from PIL import Image

    image = (np.arange(64 * 80) % 251).astype(np.uint8).reshape(64, 80)
    Image.fromarray(image).save(tmp_path / "renamed.tif", format="PNG")
    assert napari_get_reader(str(tmp_path / "renamed.tif")) is None
    (layer,) = make_napari_viewer().open(str(tmp_path / "renamed.tif"))
    np.testing.assert_array_equal(np.asarray(layer.data), image)
    tifffile.imwrite(tmp_path / "real.tif", image)
    assert napari_get_reader(str(tmp_path / "real.tif")) is reader_function


def test_non_ome_zarr_and_empty_folder_are_not_ours(tmp_path):
    import zarr

    z = tmp_path / "plain.zarr"
    zarr.open_group(str(z), mode="w").create_array("a", shape=(4, 4), dtype="u1")
    assert napari_get_reader(str(z)) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None


def test_auto_opens_lazily_above_the_threshold(make_napari_viewer, tmp_path, monkeypatch):
    import napari_unet.io._reader as reader

    path = tmp_path / "stack.tif"
    data = _hyperstack(path)
    monkeypatch.setattr(reader, "LAZY_THRESHOLD_BYTES", data.nbytes // 2)  # "too big for memory"
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert all(not isinstance(ly.data, np.ndarray) for ly in layers)  # dask, nothing read yet
    viewer.dims.set_current_step(0, 2)
    np.testing.assert_array_equal(np.asarray(layers[1].data[2, 0]), data[2, 0, 1])


def test_grey_with_alpha_and_two_channel_planes_are_not_read_as_stacks(tmp_path, dsb_fluo_crop, caplog):
    """A grey+alpha PNG is its grey plane; an (H, W, 2) TIFF is two channels of one plane (it was
    read as H planes 2 pixels wide); an OME-XML pixel size that is no number ("0,5") leaves that
    axis uncalibrated, with a warning, instead of the file failing to open."""
    from PIL import Image

    from napari_unet.io._formats import open_any

    image = dsb_fluo_crop[0]
    grey = image if image.ndim == 2 else image[..., 0]
    grey = grey.astype(np.uint8)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "la.png")
    opened = open_any(tmp_path / "la.png")
    assert opened.info.axes == "YX"
    np.testing.assert_array_equal(opened.load(), grey)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([grey, grey // 2], -1))
    opened = open_any(tmp_path / "two.tif")
    assert opened.info.axes == "YXC" and opened.info.shape == (*grey.shape, 2)
    tifffile.imwrite(tmp_path / "comma.ome.tif", grey, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": "0,5", "PhysicalSizeY": 0.5})
    opened = open_any(tmp_path / "comma.ome.tif")
    assert opened.info.scale == {"Y": 0.5}
    assert "not a number" in caplog.text


def test_bioformats2raw_layout_opens_its_first_image(tmp_path):
    """bioformats2raw writes each image of a file as a group 0, 1, ... under the top folder."""
    import zarr

    path = tmp_path / "converted.ome.zarr"
    data = np.random.default_rng(3).integers(0, 255, size=(2, 2, 3, 64, 64), dtype=np.uint8)
    top = zarr.open_group(str(path), mode="w", zarr_format=2)
    top.attrs["bioformats2raw.layout"] = 3
    top.create_group("OME")
    _write_ome_zarr(path / "0", data)
    info = inspect_stack(path)
    assert (info.format, info.axes, info.shape) == ("ome-zarr", "TCZYX", data.shape)
    image, _info = read_stack(path)
    np.testing.assert_array_equal(np.asarray(image), data)
    assert napari_get_reader(str(path)) is reader_function  # File > Open takes it too (it refused it)


def test_an_hcs_plate_says_which_field_to_open_and_its_fields_are_named_and_saved_beside_it(
        tmp_path, make_napari_viewer, notifications, capsys):
    import os

    from napari_unet.io import stack_name

    """A plate (NGFF: plate / row / column / field groups): refused with "no multiscales" (its root) or by
    npe2 (File > Open); a well opened its first field unsaid; every field was named "0" (masks of all of
    them written by predict to one "0_masks.tif", another well's masks replaced with --overwrite), and Save
    masks proposed a TIFF inside the plate's store. The root says which field to open; a well opens its
    first field and names the others; fields are named by the plate and their place; masks save beside it."""
    import zarr

    from napari_unet.cli import main
    from napari_unet.io import StackReadError
    from napari_unet.widgets.correct import default_masks_path

    plate = tmp_path / "plate.ome.zarr"
    root = zarr.open_group(str(plate), mode="w", zarr_format=2)
    root.attrs["plate"] = {"version": "0.4", "rows": [{"name": "A"}, {"name": "B"}],
                           "columns": [{"name": "1"}, {"name": "2"}],
                           "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0},
                                     {"path": "B/2", "rowIndex": 1, "columnIndex": 1}]}
    rng = np.random.default_rng(5)
    for well in ("A/1", "B/2"):
        group = root.require_group(well)
        group.attrs["well"] = {"version": "0.4", "images": [{"path": "0"}, {"path": "1"}]}
        for field in ("0", "1"):
            _write_ome_zarr(plate / well / field, rng.integers(0, 255, size=(1, 1, 1, 64, 64), dtype=np.uint8))
    with pytest.raises(StackReadError, match=r"is a plate of 2 well\(s\) \(A/1, B/2\): open one field of a "
                                             r"well, e.g. plate.ome.zarr/A/1/0"):
        inspect_stack(plate)
    assert napari_get_reader(str(plate)) is reader_function  # (the reason said, not npe2's refusal)
    well = inspect_stack(plate / "A" / "1")
    assert well.name == "plate_A_1_0" and well.other_series == 1 and well.others_at == ("plate.ome.zarr/A/1/1",)
    assert "the others: plate.ome.zarr/A/1/1" in well.describe()
    viewer = make_napari_viewer()
    viewer.open(plate / "A" / "1", plugin=PLUGIN)
    assert any("open the others by their paths (plate.ome.zarr/A/1/1)" in m for m in notifications)
    assert inspect_stack(plate / "B" / "2" / "1").name == "plate_B_2_1"

    layers = viewer.open(plate / "B" / "2" / "1", plugin=PLUGIN)
    image = layers[0]
    assert image.name.startswith("plate_B_2_1")
    masks = viewer.add_labels(np.zeros(image.data.shape, np.int32), name=f"{image.name} masks")
    assert default_masks_path(viewer, masks).parent == tmp_path  # beside the plate, not in its store
    out = tmp_path / "out"
    for field in ("A/1/0", "B/2/0"):
        assert main(["predict", str(plate / field), "--out", str(out), "--no-progress", "--channel", "0",
                     "--diameter", "14"]) == 0
    assert sorted(p.name for p in out.glob("*.tif")) == ["plate_A_1_0_masks.tif", "plate_B_2_0_masks.tif"]
    # a well given to predict: its first field's masks, named as that field's layer (they paired with none)
    assert main(["predict", str(plate / "A" / "1"), "--out", str(tmp_path / "well"), "--no-progress",
                 "--channel", "0", "--diameter", "14"]) == 0
    assert [p.name for p in (tmp_path / "well").glob("*.tif")] == ["plate_A_1_0_masks.tif"]
    assert "napari-unet: plate.ome.zarr/A/1: 2 images" in capsys.readouterr().err  # (not "napari-unet: 1: ...")
    # from inside the plate, by a relative path: the same name
    here = os.getcwd()
    try:
        os.chdir(plate)
        assert stack_name(Path("A") / "1" / "0") == "plate_A_1_0"
    finally:
        os.chdir(here)
    # a project folder named .zarr that is no store, and labels in a field: their own names
    project = tmp_path / "project.zarr" / "train"
    project.mkdir(parents=True)
    assert stack_name(project / "a.tif") == "a" and stack_name(plate / "A" / "1" / "0" / "labels" / "nuclei") == "nuclei"


def test_y_and_x_are_moved_last_when_time_comes_after_them(tmp_path):
    """A time-lapse stored (Y, X, T), as MATLAB writes it, told with axes YXT: read as (T, Y, X), so
    napari shows and predict segments the Y, X planes (it segmented 6-px-wide strips before), and
    its masks save and open again as the image's."""
    from napari_unet.io import inspect_stack, read_layer_data, read_stack, write_labels

    stack = np.zeros((40, 50, 3), np.uint8)
    for t in range(3):
        stack[10 + t : 20 + t, 10:20, t] = 200
    path = tmp_path / "yxt.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    data, info = read_stack(path, axes="YXT")
    assert info.axes == "TYX" and info.shape == (3, 40, 50) and data.shape == info.shape
    np.testing.assert_array_equal(data, np.moveaxis(stack, -1, 0))
    assert inspect_stack(path, axes="YXT").axes == "YXT"  # the file's order, as axes= names it
    assert read_stack(path, axes="XYT")[1].shape == (3, 50, 40)  # X before Y: the planes transposed
    ((layer, meta, _kind),) = read_layer_data(path, axes="YXT")
    assert layer.shape == (3, 40, 50) and meta["metadata"]["napari_unet"]["layer_axes"] == "TYX"
    # labels written with the axes of such a layer (Y, X not last) neither fail nor lose the file
    masks = write_labels(tmp_path / "yxt_masks.tif", (stack > 0).astype(np.uint16), axes="YXT", corrected=[(1,)])
    assert read_stack(masks)[0].shape == (3, 40, 50)
    assert read_layer_data(masks)  # opens (it raised ValueError: substring not found)


def test_time_units_in_words_and_one_pixel_size_given(tmp_path):
    """An ImageJ frame interval in hours is 3600 s each (it read as seconds), an unknown time unit
    leaves T uncalibrated, and an OME-TIFF that gives only PhysicalSizeX has square pixels (it was
    shown stretched, Y at 1)."""
    plane = np.zeros((4, 32, 32), np.uint8)
    for unit, seconds in (("hours", 7200.0), ("msec", 0.002), ("fortnights", None)):
        path = tmp_path / f"{unit}.tif"
        tifffile.imwrite(path, plane, imagej=True, resolution=(2, 2),
                         metadata={"axes": "TYX", "unit": "micron", "finterval": 2.0, "tunit": unit})
        scale = inspect_stack(path).scale
        assert scale.get("T") == (pytest.approx(seconds) if seconds else None) and scale["X"] == 0.5
    path = tmp_path / "x_only.ome.tif"
    tifffile.imwrite(path, plane[0], metadata={"axes": "YX", "PhysicalSizeX": 0.25})
    assert inspect_stack(path).scale == {"X": 0.25, "Y": 0.25}


def test_ome_zarr_with_a_missing_level_or_wrong_axes_says_so(tmp_path):
    """A lower resolution level that is missing is left out (the others open); a missing full
    resolution or axes that do not match the array are one-line errors (KeyError, IndexError before)."""
    import shutil

    import zarr

    data = np.random.default_rng(0).integers(0, 255, size=(1, 2, 3, 64, 64), dtype=np.uint8)
    path = tmp_path / "a.ome.zarr"
    _write_ome_zarr(path, data)
    shutil.rmtree(path / "1")
    levels, info = _read_levels(path)
    assert info.n_levels == 1 and len(levels) == 1 and levels[0].shape == data.shape
    shutil.rmtree(path / "0")
    with pytest.raises(StackReadError, match="full-resolution array '0'.* is missing"):
        read_stack(path)
    _write_ome_zarr(path, data)
    group = zarr.open_group(str(path), mode="r+")
    meta = group.attrs["multiscales"]
    meta[0]["axes"] = meta[0]["axes"][1:]  # four axes named for five dimensions
    group.attrs["multiscales"] = meta
    with pytest.raises(StackReadError, match="names 4 axes but the array has 5 dimensions"):
        read_stack(path)


def test_a_tiff_of_several_series_says_only_the_first_is_read(make_napari_viewer, tmp_path, notifications, capsys):
    """Positions written one after the other into one TIFF (not all of one shape: no stack): the
    first is opened, and File > Open, Load stack's info line and predict say so (only the log said it)."""
    from napari_unet.cli import main

    path = tmp_path / "positions.tif"
    with tifffile.TiffWriter(path) as tif:
        for k in range(3):
            tif.write(np.full((32, 40 - k), 10 * k, np.uint8), photometric="minisblack")
    info = inspect_stack(path)
    assert info.other_series == 2 and info.shape == (32, 40)
    thumbnail = tmp_path / "with_preview.tif"  # a reduced-resolution copy is no image of its own
    with tifffile.TiffWriter(thumbnail) as tif:
        tif.write(np.zeros((64, 64), np.uint16))
        tif.write(np.zeros((8, 8), np.uint16), subfiletype=1)
    assert inspect_stack(thumbnail).other_series == 0
    assert "the first of 3 images in the file" in info.describe()
    viewer = make_napari_viewer()
    viewer.open(path, plugin=PLUGIN)
    assert any("holds 3 images" in m for m in notifications)
    main(["predict", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert "3 images (positions, series or fields); the first one is segmented; --series N segments another" \
        in capsys.readouterr().err
    # the others: Load stack's Series and predict --series (there was no way to them)
    other = inspect_stack(path, series=2)
    assert other.shape == (32, 38) and other.series == 2 and other.name == "positions_s2"
    assert other.series_names == ("0: 32 x 40", "1: 32 x 39", "2: 32 x 38")
    data, _info = read_stack(path, series=2)
    assert np.asarray(data).shape == (32, 38) and int(np.asarray(data).max()) == 20
    with pytest.raises(StackReadError, match="holds 3 image"):
        inspect_stack(path, series=3)
    assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--series", "2",
                 "--diameter", "14"]) == 0
    assert (tmp_path / "out" / "positions_s2_masks.tif").is_file()
    assert tifffile.imread(tmp_path / "out" / "positions_s2_masks.tif").shape == (32, 38)


def test_a_stack_written_plane_by_plane_opens_as_the_stack(tmp_path):
    """A script's loop of ``TiffWriter.write``, one plane a call (a series each), is the stack
    ImageJ opens, not its first plane and "positions"; lazily too."""
    path = tmp_path / "by_planes.tif"
    planes = np.stack([np.full((20, 24), 10 * k, np.uint16) for k in range(6)])
    with tifffile.TiffWriter(path) as tif:
        for plane in planes:
            tif.write(plane)
    info = inspect_stack(path)
    assert info.shape == (6, 20, 24) and info.other_series == 0 and not info.axes_from_file
    for lazy in (False, True):
        data, _info = read_stack(path, lazy=lazy)
        np.testing.assert_array_equal(np.asarray(data), planes)


def test_grey_channels_stored_side_by_side_are_channels_not_colour(tmp_path):
    """Y, X, C of 3 or 4 grey channels (photometric MINISBLACK) is not an RGB(A) image: channels."""
    path = tmp_path / "yxc.tif"
    image = np.random.default_rng(0).integers(0, 4000, (30, 34, 4), dtype=np.uint16)
    tifffile.imwrite(path, image, photometric="minisblack", planarconfig="contig")
    info = inspect_stack(path)
    assert info.axes.endswith("C") or info.axes.startswith("C")
    assert "S" not in info.axes and info.axes_from_file
    layers = reader_function(str(path))
    assert len(layers) == 4 and not any(meta.get("rgb") for _data, meta, _kind in layers)
    np.testing.assert_array_equal(np.asarray(layers[3][0]), image[..., 3])
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, image[..., :3].astype(np.uint8), photometric="rgb")
    assert inspect_stack(rgb).axes == "YXS"
    both = tmp_path / "cyxs.tif"  # channels named, and samples beside: opened as before (not "CYXC")
    tifffile.imwrite(both, np.zeros((2, 16, 16, 3), np.uint8), photometric="minisblack", metadata={"axes": "CYXS"})
    assert inspect_stack(both).shape == (2, 16, 16, 3)


def test_a_folder_of_calibrated_planes_keeps_their_pixel_size(tmp_path):
    """ImageJ's Save As > Image Sequence: each plane a calibrated TIFF; the folder opens at that
    pixel size (it opened uncalibrated); stacks saved a time point each keep their Z and axes."""
    folder = tmp_path / "sequence"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"s{i:04d}.tif", np.full((12, 16), i, np.uint16), imagej=True,
                         resolution=(1 / 0.16, 1 / 0.16), metadata={"unit": "micron"})
    info = inspect_stack(folder)
    assert info.axes == "ZYX" and info.scale == pytest.approx({"Y": 0.16, "X": 0.16})
    timepoints = tmp_path / "timepoints"
    timepoints.mkdir()
    for i in range(2):
        tifffile.imwrite(timepoints / f"t{i}.tif", np.zeros((5, 12, 16), np.uint16), imagej=True,
                         resolution=(1 / 0.2, 1 / 0.2), metadata={"unit": "micron", "spacing": 1.5, "axes": "ZYX"})
    info = inspect_stack(timepoints)
    assert info.axes == "TZYX" and info.scale == pytest.approx({"Z": 1.5, "Y": 0.2, "X": 0.2})


def test_a_huge_plane_without_a_pyramid_opens_lazily_as_levels(make_napari_viewer, tmp_path, monkeypatch):
    """A plane larger than LARGE_PLANE_SIDE on a side (a slide scan without a pyramid), read
    lazily, gets lazy overview levels (napari read the whole plane and copied it: a 2 GB plane took
    6.5 GB); level 0 is the file's plane; the contrast comes from the plane's middle; masks of such
    a plane open as one level (napari paints no levels)."""
    from napari_unet.io import _reader, write_labels

    monkeypatch.setattr(_reader, "LARGE_PLANE_SIDE", 512)
    monkeypatch.setattr(_reader, "OVERVIEW_SIDE", 128)
    monkeypatch.setattr(_reader, "SAMPLE_WINDOW", 256)
    image = np.zeros((600, 1100), np.uint16)
    image[172:428, 422:678] = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256) % 1000 + 100  # its middle
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, image, tile=(128, 128))
    (data, meta, kind), = read_layer_data(path, lazy=True)
    assert kind == "image" and meta["multiscale"]
    assert [tuple(level.shape) for level in data] == [(600, 1100), (300, 550), (150, 275), (75, 138)]
    np.testing.assert_array_equal(np.asarray(data[0]), image)
    np.testing.assert_array_equal(np.asarray(data[2]), image[::4, ::4])
    assert meta["contrast_limits"][0] >= 100  # the middle's pixels, not the empty border
    (small, small_meta, _), = read_layer_data(path, lazy=False)  # in memory: one array
    assert not small_meta["multiscale"] and small.shape == (600, 1100)
    masks = write_labels(tmp_path / "scan_masks.tif", (image > 0).astype(np.uint16))
    # masks of a layer with axes of size 1 (a slide's T=1, Z=1), stored without them, put back on reading
    tz = write_labels(tmp_path / "scan_tz_masks.tif", (image > 0).astype(np.uint16)[None, None], axes="TZYX",
                      corrected=[(0, 0)])
    viewer = make_napari_viewer()
    monkeypatch.setattr(_reader, "should_open_lazily", lambda nbytes: True)
    viewer.open(masks, plugin=PLUGIN)
    assert viewer.layers[-1].__class__.__name__ == "Labels" and not viewer.layers[-1].multiscale
    viewer.open(tz, plugin=PLUGIN)
    assert viewer.layers[-1].__class__.__name__ == "Labels" and not viewer.layers[-1].multiscale
    assert viewer.layers[-1].data.shape == (1, 1, 600, 1100)
    viewer.open(path, plugin=PLUGIN)
    assert viewer.layers[-1].multiscale and tuple(viewer.layers[-1].data[0].shape) == (600, 1100)


def test_a_labels_container_naming_itself_is_refused_not_followed(tmp_path):
    """A labels container's list naming "." or a path out of it: one line, no endless recursion."""
    import zarr

    from napari_unet.io._reader import _is_ome_zarr_labels

    path = tmp_path / "x.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    for name in (".", "../x.zarr", "a/b"):
        group.attrs["labels"] = [name]
        assert not _is_ome_zarr_labels(path)
        with pytest.raises(StackReadError, match="labels images"):
            inspect_stack(path)


# ------------------------------------------------------------------ files written by other tools
_OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def _ome_xml(images: list[tuple[str, int, list[tuple[str, str, int]]]], own_uuid: str) -> str:
    """OME-XML of Z stacks: per image (name, size z, [(file name, uuid, first z)...] one per plane)."""
    parts = []
    for k, (name, size_z, planes) in enumerate(images):
        data = "".join(f'<TiffData FirstZ="{z}" IFD="{ifd}" PlaneCount="1"><UUID FileName="{file}">{uuid}</UUID>'
                       "</TiffData>" for z, (file, uuid, ifd) in enumerate(planes))
        parts.append(f'<Image ID="Image:{k}" Name="{name}"><Pixels ID="Pixels:{k}" DimensionOrder="XYZCT" '
                     f'Type="uint16" SizeX="64" SizeY="48" SizeC="1" SizeZ="{size_z}" SizeT="1" PhysicalSizeX="0.{k + 2}" '
                     f'PhysicalSizeY="0.{k + 2}" PhysicalSizeZ="1.0"><Channel ID="Channel:{k}:0" SamplesPerPixel="1"/>'
                     f"{data}</Pixels></Image>")
    return f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{_OME_NS}" UUID="{own_uuid}">{"".join(parts)}</OME>'


def _write_planes(path: Path, planes: np.ndarray, description: str) -> None:
    with tifffile.TiffWriter(path) as tif:
        for i, plane in enumerate(planes):
            tif.write(plane, description=description if i == 0 else None, metadata=None, contiguous=False)


def test_a_position_of_an_acquisition_split_per_file_opens_its_own_pixels(tmp_path, data_dir):
    """bfconvert splits a multi-position acquisition into one OME-TIFF per position, each carrying the
    OME-XML of every position: the second file opened the first position's pixels (from the other
    file) and its calibration; a folder of them was the first position twice."""
    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:6, :48, :64].astype(np.uint16)
    names, uuids = ["acq_s0.ome.tif", "acq_s1.ome.tif"], ["urn:uuid:0a", "urn:uuid:1b"]
    images = [(f"position {s}", 3, [(names[s], uuids[s], z) for z in range(3)]) for s in range(2)]
    (tmp_path / "acq").mkdir()
    for s in range(2):
        _write_planes(tmp_path / "acq" / names[s], frames[3 * s: 3 * s + 3], _ome_xml(images, uuids[s]))
    for s in range(2):
        for lazy in (False, True):
            data, info = read_stack(tmp_path / "acq" / names[s], lazy=lazy)
            np.testing.assert_array_equal(np.asarray(data), frames[3 * s: 3 * s + 3])
            assert info.other_series == 0 and info.scale["X"] == pytest.approx(0.2 + 0.1 * s)
    data, info = read_stack(tmp_path / "acq", lazy=False)  # the folder: both positions
    np.testing.assert_array_equal(np.asarray(data), frames.reshape(2, 3, 48, 64))


def test_a_file_of_a_multi_file_ome_tiff_alone_is_refused_naming_the_missing_file(tmp_path, data_dir, capsys):
    """Its planes in another file not beside it were read as zeros, silently (and tifffile's
    warning went to the terminal)."""
    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:6, :48, :64].astype(np.uint16)
    names, uuids = ["pos_1.ome.tif", "pos_2.ome.tif"], ["urn:uuid:1a", "urn:uuid:2b"]
    images = [("stack", 6, [(names[z // 3], uuids[z // 3], z % 3) for z in range(6)])]
    for f in range(2):
        _write_planes(tmp_path / names[f], frames[3 * f: 3 * f + 3], _ome_xml(images, uuids[f]))
    data, _info = read_stack(tmp_path / names[0], lazy=False)  # both there: the whole stack
    np.testing.assert_array_equal(np.asarray(data), frames)
    (tmp_path / "alone").mkdir()
    (tmp_path / names[0]).rename(tmp_path / "alone" / names[0])
    for lazy in (False, True):
        with pytest.raises(StackReadError, match=r"multi-file OME-TIFF.*not beside it \(pos_2\.ome\.tif\)"):
            read_stack(tmp_path / "alone" / names[0], lazy=lazy)
    assert "Missing data are zeroed" not in capsys.readouterr().err
    # one file whose OME-XML lists more planes than it holds (an acquisition stopped early; a channel
    # taken every other time point): no other file is missing, it opens, the planes without data zeros
    xml = _ome_xml([("run", 6, [(names[0], uuids[0], z) for z in range(6)])], uuids[0])
    _write_planes(tmp_path / "stopped.ome.tif", frames[:3], xml.replace(f' FileName="{names[0]}"', ""))
    for lazy in (False, True):
        data, _info = read_stack(tmp_path / "stopped.ome.tif", lazy=lazy)
        np.testing.assert_array_equal(np.asarray(data)[:3], frames[:3])


def test_planar_rgb_and_a_preview_page_first(make_napari_viewer, tmp_path, data_dir):
    """Colour stored as planes (PlanarConfiguration separate, as Bio-Formats and scanners write it)
    opened as three grey channels; a TIFF whose first page is a reduced preview opened the preview."""
    from skimage import data as skdata

    rgb = skdata.immunohistochemistry()[:96, :128]  # (a real IHC section: CC0, scikit-image)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate",
                     metadata=None)  # (no tifffile "shaped" description: as another tool writes it)
    tifffile.imwrite(tmp_path / "planar.ome.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate", metadata={"axes": "SYX"})
    # tifffile's own (3, Y, X) file: colour or three planes, it cannot tell; three planes, as before
    tifffile.imwrite(tmp_path / "three.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert read_stack(tmp_path / "three.tif")[1].axes == "CYX"
    viewer = make_napari_viewer()
    for name in ("planar.tif", "planar.ome.tif"):
        for lazy in (False, True):
            data, info = read_stack(tmp_path / name, lazy=lazy)
            assert info.axes == "YXS"
            np.testing.assert_array_equal(np.asarray(data), rgb)
        (layer,) = viewer.open(tmp_path / name, plugin=PLUGIN)
        assert layer.rgb and layer.data.shape == rgb.shape
    grey = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[0, :64, :80]
    with tifffile.TiffWriter(tmp_path / "preview_first.tif") as tif:
        tif.write(grey[::4, ::4], subfiletype=1)  # a reduced-resolution preview
        tif.write(grey)
    data, info = read_stack(tmp_path / "preview_first.tif", lazy=False)
    np.testing.assert_array_equal(data, grey)
    assert info.other_series == 0


def test_file_open_takes_bigtiff_endings_and_an_ome_zarr_labels_folder(make_napari_viewer, tmp_path, data_dir):
    """.btf / .tf8 / .tf2 BigTIFFs went to napari's own reader (channels on a slider, no scale, all in
    memory, the name with '.ome' in it); an image's labels/ folder holding one labels image, which
    Load stack opens, was refused by File > Open."""
    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:2, :48, :64]
    tifffile.imwrite(tmp_path / "cells.ome.btf", frames, bigtiff=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "Channel": {"Name": ["DAPI", "GFP"]}})
    viewer = make_napari_viewer()
    layers = viewer.open(tmp_path / "cells.ome.btf", plugin=PLUGIN)
    assert [ly.name for ly in layers] == ["cells [DAPI]", "cells [GFP]"]
    np.testing.assert_allclose(layers[0].scale, [0.5, 0.5])

    import zarr

    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[:3, :48, :64].astype(np.uint16)
    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    root.attrs["labels"] = ["cells"]  # (a labels container: its one labels image below)
    group = root.create_group("cells")
    group.create_array("0", data=labels) if hasattr(group, "create_array") else group.array("0", labels)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "micrometer"}
                                                              for a in "zyx"],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]}]
    group.attrs["image-label"] = {"version": "0.4"}
    assert napari_get_reader(str(tmp_path / "img.ome.zarr")) is not None
    (layer,) = viewer.open(tmp_path / "img.ome.zarr", plugin=PLUGIN)
    assert type(layer).__name__ == "Labels" and layer.name == "cells"
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
    np.testing.assert_allclose(layer.scale, [2.0, 0.5, 0.5])


def test_masks_open_in_memory_when_they_fit_and_are_locked_when_read_lazily(tmp_path, monkeypatch, make_napari_viewer,
                                                                            notifications):
    """Masks compress well: a 19 MB file of 2 GB of masks opened lazily by the 1 GiB rule of images,
    and napari's brush then painted into the dask array, each dab a step replayed on every read (the
    window slower at each). napari-unet's masks open in memory whenever they fit in half the free
    memory; read lazily (they do not), the Correct dock locks them with what to do."""
    import dask.array as da

    import napari_unet.io._reader as reader
    from napari_unet.io import write_labels

    masks = np.zeros((16, 256, 256), np.int32)
    masks[3, 10:40, 10:40] = 1
    path = write_labels(tmp_path / "cells masks.tif", masks, corrected=[])
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, masks.astype(np.uint16) * 100)
    monkeypatch.setattr(reader, "LAZY_THRESHOLD_BYTES", 1 << 20)  # (an image of 2 MB is "large" by this rule)
    assert not isinstance(reader_function(str(image))[0][0], np.ndarray)  # an image that large: lazy
    data, meta, kind = reader_function(str(path))[0]
    assert kind == "labels" and isinstance(data, np.ndarray)  # masks: in memory, to be edited

    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    layer = viewer.add_labels(da.from_array(masks, chunks=(1, 256, 256)), name="big masks")
    assert not layer.editable
    assert any("too large to be edited" in m and "Load stack (Loading: auto)" in m for m in notifications)


def test_predicts_masks_open_named_as_the_masks_of_their_image(tmp_path, make_napari_viewer):
    """`napari-unet predict` writes "<image>_masks.tif"; opened in napari it was the layer
    "<image>_masks", paired with nothing (Segment made a second masks layer, Fine-tune did not find
    them). It opens as "<image> masks"; another tool's "_masks" file keeps its name."""
    from napari_unet.io import write_labels

    labels = np.zeros((32, 32), np.uint16)
    labels[4:10, 4:10] = 1
    ours = write_labels(tmp_path / "field_masks.tif", labels)  # (no list beside it: predict's own output)
    tifffile.imwrite(tmp_path / "other_masks.tif", labels)  # another tool's
    viewer = make_napari_viewer()
    (layer,) = viewer.open(ours, plugin="napari-unet")
    assert layer.name == "field masks" and type(layer).__name__ == "Labels"
    (other,) = viewer.open(tmp_path / "other_masks.tif", plugin="napari-unet")
    assert other.name == "other_masks"
    # with the list predict writes beside them (the model that made them): the same
    listed = write_labels(tmp_path / "listed_masks.tif", labels,
                          model={"napari_unet_model": {"name": "m", "path": "/m.pt"}})
    assert (tmp_path / "listed_masks.tif.corrected.json").is_file()
    (layer,) = viewer.open(listed, plugin="napari-unet")
    assert layer.name == "listed masks" and layer.metadata["napari_unet_model"]["name"] == "m"


def test_zarr_labels_stay_editable_beside_the_correct_dock(make_napari_viewer):
    """A review of the day's changes: Correct locked every Labels layer not held as a numpy array,
    a writeable zarr array included (napari paints it as it is); only napari-unet's lazy reading (dask)
    is locked."""
    import zarr

    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    layer = viewer.add_labels(zarr.zeros((4, 64, 64), dtype="int32"), name="zarr masks")
    assert layer.editable


def test_imagej_spacing_in_nanometres_is_converted(tmp_path):
    import tifffile

    from napari_unet.io._reader import napari_get_reader

    tifffile.imwrite(tmp_path / "em.tif", np.zeros((3, 16, 16), np.uint8), imagej=True,
                     resolution=(1 / 65, 1 / 65), metadata={"unit": "nm", "spacing": 200, "axes": "ZYX"})
    ((_data, meta, _kind),) = napari_get_reader(str(tmp_path / "em.tif"))(str(tmp_path / "em.tif"))
    assert tuple(meta["scale"]) == pytest.approx((0.2, 0.065, 0.065))
