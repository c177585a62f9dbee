"""The "Load stack" dock widget in a real viewer: detect, correct axes, load lazily or in memory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Load stack")
    return viewer, widget


def _planes_folder(tmp_path, n: int):
    """A folder of ``n`` 8 x 9 PNG planes p0.png, p1.png, ... (plane i holds the value i)."""
    from PIL import Image

    folder = tmp_path / "planes"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 9), i, np.uint8)).save(folder / f"p{i}.png")
    return folder


def _load(qtbot, widget):
    assert widget._load_button.enabled
    widget._load_button.clicked.emit()
    # the worker sets widget._worker back to None when it has finished (layers added)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=20_000)


def test_detects_and_loads_a_timelapse_with_corrected_axes(qtbot, widget, tmp_path):
    viewer, w = widget
    path = tmp_path / "timelapse.tif"
    data = np.random.default_rng(0).integers(0, 255, (6, 32, 40), dtype=np.uint8)
    tifffile.imwrite(path, data)  # no axes metadata: looks like a Z stack
    w._path.value = path
    assert "ZYX" in w._info.value and "guessed" in w._info.value and "6" in w._info.value
    assert w._axes.value == "ZYX"
    w._axes.value = "TYX"  # the user knows better
    assert "TYX" in w._info.value
    w._loading.value = "lazy"
    _load(qtbot, w)
    (layer,) = viewer.layers
    assert layer.name == "timelapse" and layer.data.shape == (6, 32, 40)
    assert tuple(layer.axis_labels) == ("t", "y", "x")
    assert not isinstance(layer.data, np.ndarray)  # lazy (dask)
    np.testing.assert_array_equal(np.asarray(layer.data[4]), data[4])
    assert Path(layer.source.path) == path  # as File > Open tells (napari's layer info; Segment's owner check)
    # the folder is remembered for next time, in the settings file
    settings = Path(os.environ["NAPARI_UNET_CONFIG_DIR"]) / "settings.json"
    assert json.loads(settings.read_text())["last_folder"] == str(tmp_path)


def test_loads_hyperstack_in_memory_with_channels_and_scale(qtbot, widget, tmp_path):
    viewer, w = widget
    path = tmp_path / "hyper.tif"
    data = np.random.default_rng(1).integers(0, 999, (2, 3, 2, 16, 16), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 3.0})
    w._path.value = path
    assert "0.5 µm" in w._info.value and w._axes.value == "TZCYX"
    w._loading.value = "in memory"
    _load(qtbot, w)
    assert [ly.name for ly in viewer.layers] == ["hyper [ch0]", "hyper [ch1]"]
    assert all(isinstance(ly.data, np.ndarray) for ly in viewer.layers)
    np.testing.assert_allclose(viewer.layers[1].scale, [1.0, 3.0, 0.5, 0.5])


def test_folder_mode_and_bad_inputs(qtbot, widget, tmp_path):
    viewer, w = widget
    folder = _planes_folder(tmp_path, 3)
    w._source.value = "folder"
    assert w._path.mode.value == "d"
    w._path.value = folder
    assert w._axes.value == "ZYX"
    # an impossible axes string disables Load and says why
    w._axes.value = "ZZX"
    assert not w._load_button.enabled and "more than once" in w._info.value
    w._axes.value = "TYX"
    _load(qtbot, w)
    assert viewer.layers[0].data.shape == (3, 8, 9)
    # a broken file: a message, no Load button
    w._source.value = "file"
    bad = tmp_path / "broken.tif"
    bad.write_text("not a tiff")
    w._path.value = bad
    assert "not a TIFF" in w._info.value and not w._load_button.enabled


def test_remembers_last_folder(make_napari_viewer, tmp_path):
    from napari_unet.io._settings import update_settings
    from napari_unet.widgets.load import LoadWidget

    update_settings(last_folder=str(tmp_path))
    w = LoadWidget(make_napari_viewer())
    assert Path(w._path.value) == tmp_path


def test_missing_path_is_a_notification(qtbot, widget, tmp_path, notifications):
    """A typed path that does not exist, or a file deleted after it was chosen, is said out loud."""
    from qtpy.QtCore import Qt

    viewer, w = widget
    line = w._path.line_edit.native
    line.clear()
    missing = tmp_path / "no such.tif"
    qtbot.keyClicks(line, str(missing))
    qtbot.keyClick(line, Qt.Key_Return)
    assert any("no such file or folder" in m and "no such.tif" in m for m in notifications)
    assert w._info.value == f"No such file or folder: {missing}" and not w._load_button.enabled

    path = tmp_path / "gone.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    w._path.value = path
    assert w._load_button.enabled
    path.unlink()  # moved away before Load
    w._load_button.clicked.emit()
    assert w._worker is None and len(viewer.layers) == 0
    assert any("gone.tif no longer exists" in m for m in notifications)
    assert "No such file or folder" in w._info.value


def test_switching_to_folder_after_the_hint_takes_the_folder_and_home_is_expanded(widget, tmp_path, monkeypatch):
    _viewer, w = widget
    folder = _planes_folder(tmp_path, 2)
    w._source.value = "file"
    w._path.value = folder
    assert "switch Open to 'folder'" in w._info.value and not w._load_button.enabled
    w._source.value = "folder"  # as the hint says: the folder chosen is now taken
    assert w._load_button.enabled and w._axes.value == "ZYX"
    monkeypatch.setenv("HOME", str(tmp_path))
    w._path.value = "~/planes"
    assert w._load_button.enabled
    # pasted from Windows Explorer's "Copy as path": in quotes (taken for a name in the current folder)
    w._path.value = ""
    w._path.line_edit.value = f'"{folder}"'
    assert w._load_button.enabled and w._selected_path() == folder


def test_a_saved_masks_file_loads_as_labels_with_its_corrected_slices(qtbot, widget, tmp_path):
    from napari_unet.io import write_labels
    from napari_unet.widgets._corrections import CorrectedSlices

    viewer, w = widget
    labels = np.zeros((3, 32, 32), np.int32)
    labels[1, 5:15, 5:15] = 4
    write_labels(tmp_path / "cells masks.tif", labels, axes="TYX", corrected=[(1,)])
    w._source.value = "file"
    w._path.value = tmp_path / "cells masks.tif"
    _load(qtbot, w)
    layer = viewer.layers["cells masks"]
    assert layer.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(layer.data, labels)
    assert CorrectedSlices.for_layer(layer).planes == [(1,)]


def test_a_folder_leaves_masks_files_out_and_a_changed_folder_is_looked_at_again(qtbot, widget, tmp_path,
                                                                                 notifications):
    from PIL import Image

    viewer, w = widget
    folder = _planes_folder(tmp_path, 3)
    for i in range(3):  # what `napari-unet predict FOLDER --out FOLDER` writes beside the planes
        tifffile.imwrite(folder / f"p{i}_masks.tif", np.full((8, 9), 1, np.uint16))
    w._source.value = "folder"
    w._path.value = folder
    assert "Z3" in w._info.value and "left out 3 masks file(s)" in w._info.value
    Image.fromarray(np.full((8, 9), 3, np.uint8)).save(folder / "p3.png")  # a plane added meanwhile
    w._load_button.clicked.emit()
    assert not viewer.layers and any("changed since you chose it" in m for m in notifications)
    assert "Z4" in w._info.value
    _load(qtbot, w)
    np.testing.assert_array_equal(viewer.layers[0].data[:, 0, 0], [0, 1, 2, 3])  # the planes alone


def _load_catching_uncaught(qtbot, widget) -> list:
    """Press Load and wait for its end; the exceptions that reached the main thread uncaught."""
    import sys

    raised: list = []
    hook, sys.excepthook = sys.excepthook, lambda *args: raised.append(args)
    try:
        widget._load_button.clicked.emit()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=20_000)
        qtbot.wait(50)
    finally:
        sys.excepthook = hook
    return raised


def test_a_plane_that_cannot_be_read_is_one_message(qtbot, widget, tmp_path, notifications):
    viewer, w = widget
    folder = _planes_folder(tmp_path, 4)
    raw = (folder / "p2.png").read_bytes()
    w._source.value = "folder"
    w._path.value = folder
    (folder / "p2.png").write_bytes(raw[:50])  # its header reads, its pixels do not
    raised = _load_catching_uncaught(qtbot, w)
    assert not raised and not viewer.layers
    assert any("cannot read 'p2.png'" in m for m in notifications)


def test_a_damaged_first_plane_of_a_lazily_read_file_is_one_message(qtbot, widget, tmp_path, notifications):
    """Read lazily, the first plane is read by napari drawing the layer as it is added (the worker read
    the middle one): a damaged one raised there, a traceback, and the status said "Loading..." on."""
    viewer, w = widget
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 4000, (9, 128, 128), dtype=np.uint16),
                     compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        fh.write(b"\x00" * 200)
    w._path.value = path
    w._loading.value = "lazy"
    raised = _load_catching_uncaught(qtbot, w)
    assert not raised and not viewer.layers
    assert w._status.value.startswith("Loading failed") and w._load_button.enabled
    assert any(m.startswith("Loading failed") for m in notifications)


def test_masks_open_as_labels_in_their_layer_order_as_with_file_open(qtbot, widget, tmp_path):
    from napari_unet.io import write_labels

    viewer, w = widget
    labels = np.zeros((4, 2, 8, 9), np.uint16)
    labels[3, 1, 2:4, 2:4] = 5
    write_labels(tmp_path / "zt masks.tif", labels, axes="ZTYX", corrected=[(3, 1)])  # stored T, Z
    tifffile.imwrite(tmp_path / "cells_masks.tif", np.ones((8, 9), np.uint16))  # as predict writes them
    for name in ("zt masks.tif", "cells_masks.tif"):
        w._path.value = tmp_path / name
        _load(qtbot, w)
    zt, cells = viewer.layers
    assert type(zt).__name__ == "Labels" and zt.data.shape == (4, 2, 8, 9) and zt.data[3, 1, 2, 2] == 5
    assert zt.metadata["napari_unet_corrected"] == [[3, 1]]
    assert type(cells).__name__ == "Labels"


def test_a_read_that_ends_after_the_viewer_was_closed_does_nothing(qtbot, widget, tmp_path, notifications):
    """The user closes napari while Load stack reads a file: the worker's last signals (layers
    read, an error, finished) reach a widget whose Qt parts are gone, and must not raise there."""
    viewer, w = widget
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16))
    w._path.value = str(path)
    _load(qtbot, w)  # a first read, to have what a late one would deliver
    layer = viewer.layers[0]
    layer_data = [(layer.data, {"name": "late"}, "image")]
    viewer.close()
    w._on_loaded(layer_data, path)
    w._on_error(ValueError("the file went"))
    w._on_finished()
    assert w._worker is None
    assert "late" not in [x.name for x in viewer.layers]
    assert any("the file went" in m for m in notifications)  # (the error still reaches the user)


def test_a_file_stored_y_x_t_loads_as_time_points_of_y_x_planes(qtbot, widget, tmp_path):
    """A time-lapse stored (Y, X, T) that says so (MATLAB): the Axes field shows the file's order,
    and the layer is (T, Y, X), as File > Open gives it (it was loaded as planes of X by T)."""
    viewer, w = widget
    stack = np.zeros((40, 50, 6), np.uint8)
    stack[10:20, 10:20, 2] = 200
    path = tmp_path / "yxt.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "YXT"})
    w._path.value = path
    assert w._axes.value == "YXT"
    _load(qtbot, w)
    (layer,) = viewer.layers
    assert layer.data.shape == (6, 40, 50) and tuple(layer.axis_labels) == ("t", "y", "x")
    assert np.asarray(layer.data[2]).max() == 200


def test_the_zarr_group_picked_is_the_one_loaded(qtbot, widget, tmp_path):
    """A labels group inside an OME-Zarr image loads as those labels (not the image around it); a
    metadata file picked (``.zattrs``) means its group, in a folder of any name; a chunk picked
    inside a level means the image."""
    import zarr

    viewer, w = widget
    axes = [{"name": a, "type": "space"} for a in "yx"]
    root = zarr.open_group(str(tmp_path / "experiment 1"), mode="w", zarr_format=2)  # (not named .zarr)
    root.create_array("0", shape=(16, 20), dtype="uint16", chunks=(8, 10))[...] = 100
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    nuclei = root.create_group("labels").create_group("nuclei")
    root["labels"].attrs["labels"] = ["nuclei"]
    nuclei.create_array("0", shape=(16, 20), dtype="uint32")[...] = 1
    nuclei.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    nuclei.attrs["image-label"] = {"version": "0.4"}
    base = tmp_path / "experiment 1"
    for source, picked, kind, name in (("file", base / "labels" / ".zattrs", "Labels", "nuclei"),  # (its one)
                                       ("folder", base / "labels", "Labels", "nuclei"),
                                       ("file", base / "labels" / "nuclei" / ".zattrs", "Labels", "nuclei"),
                                       ("folder", base / "labels" / "nuclei", "Labels", "nuclei"),
                                       ("file", base / ".zattrs", "Image", "experiment 1"),
                                       ("file", base / "0" / "0.0", "Image", "experiment 1")):
        viewer.layers.clear()
        w._source.value = source
        w._path.value = str(picked)
        _load(qtbot, w)
        assert [(type(layer).__name__, layer.name) for layer in viewer.layers] == [(kind, name)], picked


def test_series_chooses_another_position_of_a_multi_position_file(qtbot, widget, tmp_path):
    """A multi-position TIFF (positions written one after the other): only the first could be opened.
    Series lists the file's images; the one chosen is described, loaded and named apart."""
    viewer, w = widget
    path = tmp_path / "positions.tif"
    with tifffile.TiffWriter(path) as tif:
        for k in range(3):
            tif.write(np.full((32, 40 - k), 10 * k, np.uint8), photometric="minisblack")
    w._path.value = path
    assert not w._series.native.isHidden()
    assert [w._series.native.itemText(i) for i in range(3)] == ["0: 32 x 40", "1: 32 x 39", "2: 32 x 38"]
    assert "Series chooses another" in w._info.value
    w._series.value = 2
    assert "image 2 of 3" in w._info.value
    _load(qtbot, w)
    (layer,) = viewer.layers
    assert layer.name == "positions_s2" and layer.data.shape == (32, 38) and int(np.asarray(layer.data).max()) == 20
    w._path.value = tmp_path / "missing.tif"  # (the last file's images are not offered for another)
    assert w._series.native.isHidden()
    w._path.value = path
    w._axes.value = "XY"  # (corrected by the user: kept when another image of the file is chosen)
    w._series.value = 1
    assert w._axes.value == "XY" and "image 1 of 3" in w._info.value
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, np.zeros((8, 9), np.uint8))
    w._path.value = single
    assert w._series.native.isHidden()


def test_bioformats2raws_ome_metadata_picked_means_its_images(tmp_path):
    """bioformats2raw writes OME/METADATA.ome.xml in a group of its own, beside the images 0, 1, ...:
    picked in the file dialog, it was opened as a group ("cannot read 'OME'"); it means the images."""
    import zarr

    from napari_unet.widgets.load import zarr_group_of

    top = zarr.open_group(str(tmp_path / "scan.ome.zarr"), mode="w", zarr_format=2)
    top.attrs["bioformats2raw.layout"] = 3
    top.create_group("OME")
    (tmp_path / "scan.ome.zarr" / "OME" / "METADATA.ome.xml").write_text("<OME/>")
    for picked in ("OME/METADATA.ome.xml", "OME/.zgroup", "OME"):
        assert zarr_group_of(tmp_path / "scan.ome.zarr" / picked) == tmp_path / "scan.ome.zarr", picked


def test_masks_too_large_for_memory_load_into_a_file_on_disk_where_they_can_be_edited(
        qtbot, widget, tmp_path, monkeypatch, notifications):
    """Saved masks larger than half the free memory opened lazily and were locked (napari's brush in a
    dask array); Load stack (Loading: auto) copies them into a file on disk: editable, the brush's next
    free id above the file's ids. Loading "lazy" keeps them lazy (and locked), as chosen. (The memory
    free made small by the share of it masks may take, and the size above which stacks are read lazily.)"""
    import napari_unet.io._reader as reader
    from napari_unet.io import write_labels
    from napari_unet.widgets import _disk_masks
    from napari_unet.widgets._object_tools import select_next_free_label

    viewer, w = widget
    masks = np.zeros((5, 40, 48), np.uint16)
    masks[1, 5:15, 5:15] = 3
    masks[4, 20:30, 20:30] = 9
    path = write_labels(tmp_path / "cells masks.tif", masks, corrected=[(1,)])
    monkeypatch.setattr(reader, "LAZY_THRESHOLD_BYTES", 0)  # (what a stack over 1 GiB gets)
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    w._path.value = path
    _load(qtbot, w)
    layer = viewer.layers["cells masks"]
    assert type(layer).__name__ == "Labels" and _disk_masks.on_disk(layer.data) and layer.editable
    np.testing.assert_array_equal(np.asarray(layer.data), masks)
    assert any("held in a file on disk" in m for m in notifications)
    assert select_next_free_label(layer) == 10
    layer.paint((2, 35, 40), 25)
    assert layer.data[2, 35, 40] == 25 and select_next_free_label(layer) == 26

    w._loading.value = "lazy"
    viewer.layers.remove(layer)
    _load(qtbot, w)
    lazy = viewer.layers["cells masks"]
    assert not isinstance(lazy.data, np.ndarray)
