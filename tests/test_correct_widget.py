"""The Correct dock widget in a real napari window: object tools driven by mouse and keyboard on a
plane of the real C2C12 time-lapse masks (ids kept over time), with undo and the corrected-slice list."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_unet.widgets._base import viewer_camera
from napari_unet.widgets._corrections import CorrectedSlices
from napari_unet.widgets.correct import (
    MODE_DELETE,
    MODE_MERGE,
    MODE_OFF,
    MODE_SPLIT,
    SHORTCUTS,
    CorrectWidget,
)

FRAME = 3


@pytest.fixture
def c2c12_masks(data_dir) -> np.ndarray:
    """The C2C12 ground truth, (10, 234, 234) uint16: frame 3 holds ids 1-8, the stack up to 17."""
    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")
    assert sorted(np.unique(labels[FRAME]))[-1] == 8 and labels.max() == 17
    return labels


@pytest.fixture
def correcting(make_napari_viewer, canvas_mouse, c2c12_masks, qtbot):
    """A shown viewer on frame 3 of "c2c12 masks", the Correct widget docked."""
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_labels(c2c12_masks.copy(), name="c2c12 masks")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    assert isinstance(widget, CorrectWidget)
    viewer.dims.set_current_step(0, FRAME)
    viewer.layers.selection.active = layer
    qtbot.wait(100)
    return viewer, layer, widget, canvas_mouse(viewer)


def pixels(labels: np.ndarray, label: int) -> np.ndarray:
    return np.argwhere(labels == label)


def test_widget_lists_the_masks_layer_and_its_shortcuts(correcting):
    viewer, layer, widget, _mouse = correcting
    assert widget.tools is not None and widget.tools.layer is layer
    text = widget._shortcuts.value
    assert [line.split(":")[0] for line in text.splitlines()] == [key for key, _ in SHORTCUTS]
    assert "D: delete: click an object" in text
    # the layer was opened with ids up to 17: "new object" is 18, not 1
    assert layer.selected_label == 18


def test_click_to_delete_marks_the_plane_and_undoes(correcting, c2c12_masks):
    viewer, layer, widget, mouse = correcting
    mouse.key(Qt.Key.Key_D)
    assert widget._mode.value == MODE_DELETE and layer.mode == "pan_zoom"
    centre = mouse.inside(c2c12_masks[FRAME], 5)
    camera = viewer_camera(viewer)
    before = tuple(camera.center)
    mouse.drag([centre, (centre[0] + 30, centre[1] + 30)])  # a drag pans the view, deletes nothing
    np.testing.assert_array_equal(layer.data, c2c12_masks)
    assert tuple(camera.center) != before
    mouse.click(centre)
    assert not (layer.data[FRAME] == 5).any()
    changed = c2c12_masks[FRAME] == 5
    np.testing.assert_array_equal(layer.data[FRAME][~changed], c2c12_masks[FRAME][~changed])
    np.testing.assert_array_equal(np.delete(layer.data, FRAME, 0), np.delete(c2c12_masks, FRAME, 0))
    assert CorrectedSlices.for_layer(layer).planes == [(FRAME,)]
    assert widget._status.value.startswith(f"Deleted object 5 ({changed.sum()} px) in slice {FRAME}")
    mouse.key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # napari's undo
    np.testing.assert_array_equal(layer.data, c2c12_masks)
    mouse.key(Qt.Key.Key_D)  # the same key again: back to napari's tools
    assert widget._mode.value == MODE_OFF and layer.mouse_pan is True


def test_merge_split_by_line_and_by_seeds(correcting, c2c12_masks):
    viewer, layer, widget, mouse = correcting
    frame = c2c12_masks[FRAME]
    # merge: G, then object 2 and object 1: 1 joins 2
    mouse.key(Qt.Key.Key_G)
    assert widget._mode.value == MODE_MERGE
    mouse.click(mouse.inside(frame, 2))
    assert "Object 2 picked" in widget._status.value
    mouse.click(mouse.inside(frame, 1))
    assert not (layer.data[FRAME] == 1).any()
    assert (layer.data[FRAME] == 2).sum() == (frame == 2).sum() + (frame == 1).sum()

    # split by a line: S, then a drag right across object 3 (from background to background)
    mouse.key(Qt.Key.Key_S)
    assert widget._mode.value == MODE_SPLIT and layer.mode == "pan_zoom" and layer.mouse_pan is False
    rows, cols = pixels(frame, 3).T
    col = int(np.median(cols))
    path = [(r, col) for r in np.linspace(rows.min() - 4, rows.max() + 4, 8)]
    mouse.drag(path)
    new = 18  # the stack's next free id (ids 9-17 live in other frames), not the frame's (9)
    parts = [layer.data[FRAME] == 3, layer.data[FRAME] == new]
    assert all(p.any() for p in parts)
    assert parts[0].sum() + parts[1].sum() == (frame == 3).sum()
    left, right = sorted(parts, key=lambda p: np.argwhere(p)[:, 1].mean())
    assert np.argwhere(left)[:, 1].max() <= col + 1 and np.argwhere(right)[:, 1].min() >= col - 1
    assert layer.selected_label not in np.unique(layer.data)  # the brush paints a new cell, not the new piece

    # split by two seeds: two clicks in object 6, at its two ends
    rows, cols = pixels(frame, 6).T
    top = (rows.min() + 3, int(np.median(cols[rows <= rows.min() + 3])))
    bottom = (rows.max() - 3, int(np.median(cols[rows >= rows.max() - 3])))
    mouse.click(top)
    assert "Seed 1 on object 6" in widget._status.value
    mouse.click(bottom)
    assert (layer.data[FRAME] == new + 1).any() and (layer.data[FRAME] == 6).any()
    assert ((layer.data[FRAME] == 6) | (layer.data[FRAME] == new + 1)).sum() == (frame == 6).sum()
    assert "Split object 6 into 2" in widget._status.value

    untouched = ~np.isin(frame, [1, 2, 3, 6])
    np.testing.assert_array_equal(layer.data[FRAME][untouched], frame[untouched])
    np.testing.assert_array_equal(np.delete(layer.data, FRAME, 0), np.delete(c2c12_masks, FRAME, 0))
    assert CorrectedSlices.for_layer(layer).planes == [(FRAME,)]
    for _ in range(3):  # three edits, three undo steps
        layer.undo()
    np.testing.assert_array_equal(layer.data, c2c12_masks)


def test_fill_holes_and_new_object_keys(correcting, c2c12_masks, qtbot):
    viewer, layer, widget, mouse = correcting
    centre = mouse.inside(c2c12_masks[FRAME], 3)
    hole = (FRAME, slice(centre[0] - 2, centre[0] + 3), slice(centre[1] - 2, centre[1] + 3))
    assert (layer.data[hole] == 3).all()
    layer.data[hole] = 0  # a hole in object 3, made before the test (not a correction)
    layer.refresh()
    mouse.key(Qt.Key.Key_H)
    np.testing.assert_array_equal(layer.data, c2c12_masks)
    assert widget._status.value == f"Filled 25 px of holes in 1 object(s) in slice {FRAME}."
    assert CorrectedSlices.for_layer(layer).planes == [(FRAME,)]

    layer.selected_label = 1
    mouse.key(Qt.Key.Key_N)
    assert layer.selected_label == 18 and layer.mode == "paint"
    # paint the new object with napari's brush: it gets the fresh id
    layer.brush_size = 5
    mouse.click((5, 5))
    assert layer.data[FRAME, 5, 5] == 18
    assert widget._status.value == "New object: painting with id 18."
    mouse.key(Qt.Key.Key_E)  # napari's eraser: the line no longer says what the brush does
    assert widget._status.value == "Editing 'c2c12 masks'."


def test_fill_holes_and_remove_small_on_a_large_slice_run_in_a_worker(make_napari_viewer, c2c12_masks, qtbot,
                                                                     notifications):
    """A slide's plane (over WORKER_PIXELS) is filled in a thread worker: the window stays free, the
    result is one undo step, and an edit of the plane meanwhile refuses it (nothing overwritten)."""
    from napari_unet.widgets._object_tools import WORKER_PIXELS

    tiles = np.tile(c2c12_masks[FRAME].astype(np.int32), (10, 10))  # 2340^2 real cells
    assert tiles.size > WORKER_PIXELS
    tile_ids = np.kron(np.arange(100, dtype=np.int32).reshape(10, 10) * 100, np.ones((234, 234), np.int32))
    tiles[tiles > 0] += tile_ids[tiles > 0]  # (each tile's cells their own ids)
    whole = tiles.copy()
    cy, cx = (np.argwhere(tiles == 3).mean(axis=0)).astype(int)
    holes = np.s_[cy - 2:cy + 3, cx - 2:cx + 3]
    assert (tiles[holes] == 3).all()
    tiles[holes] = 0
    viewer = make_napari_viewer()
    layer = viewer.add_labels(tiles.copy(), name="slide masks")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    widget._fill_button.clicked.emit()
    assert widget.tools.busy and "working on the image" in widget._status.value
    widget._fill_button.clicked.emit()  # pressed again meanwhile: said, not started twice
    assert any("Fill holes is still running" in m for m in notifications)
    qtbot.waitUntil(lambda: not widget.tools.busy, timeout=60_000)
    np.testing.assert_array_equal(layer.data, whole)
    assert widget._status.value.startswith("Filled 25 px of holes in 1 object(s)")
    layer.undo()
    np.testing.assert_array_equal(layer.data, tiles)

    # the brush paints while it computes: refused, the stroke kept
    widget._fill_button.clicked.emit()
    layer.selected_label = 7
    layer.paint((5, 5), 7)
    qtbot.waitUntil(lambda: not widget.tools.busy, timeout=60_000)
    assert layer.data[5, 5] == 7 and (layer.data[holes] == 0).all()
    assert "was edited while it was computed" in widget._status.value

    # Ctrl+Z while it computes (napari's undo emits no event): refused too, not written over the undo
    widget._fill_button.clicked.emit()
    layer.undo()
    qtbot.waitUntil(lambda: not widget.tools.busy, timeout=60_000)
    assert layer.data[5, 5] != 7 and (layer.data[holes] == 0).all()
    assert "was edited while it was computed" in widget._status.value

    # Remove smaller objects too
    widget._min_size.value = 1_000_000
    widget._small_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.tools.busy, timeout=60_000)
    assert layer.data.max() == 0


def test_a_status_line_that_grows_is_shown_whole(make_napari_viewer, qtbot):
    """A wrapped line whose text grew (Correct's status after Save masks names the file; Segment's
    model hint from one image to another) kept its old height in the dock's scroll area, among the
    docks of ``napari-unet gui``: cut off at the top and bottom."""
    from napari_unet.cli.gui import populate_viewer, show_dock

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    docked = populate_viewer(viewer, [], "nuclei_fluorescence_fields")
    show_dock(viewer, "Correct")
    qtbot.wait(300)
    for widget, line in ((docked["Correct"], "_status"), (docked["Segment"], "_model_hint")):
        label = getattr(widget, line).native
        show_dock(viewer, "Correct" if line == "_status" else "Segment")
        for text in ("Editing 'nuclei_fluorescence_fields masks' in two lines of the dock, as it is.",
                     "Saved 'nuclei_fluorescence_fields masks' to /home/someone/experiments/2026-12-06/plate 3/"
                     "well B4/nuclei_fluorescence_fields masks.tif (with its list of corrected slices)."):
            getattr(widget, line).value = text
            qtbot.wait(300)
            assert label.height() >= label.heightForWidth(label.width()), (line, text)


def test_delete_on_a_binary_mask_takes_the_cell_clicked(make_napari_viewer, c2c12_masks):
    """A threshold brought as labels (id 1 for every cell): one Delete click removed every cell."""
    viewer = make_napari_viewer()
    binary = (c2c12_masks[FRAME] > 0).astype(np.uint8)
    layer = viewer.add_labels(binary.copy(), name="threshold")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    widget._layer_combo.value = layer
    widget._mode.value = MODE_DELETE
    cell = c2c12_masks[FRAME] == 3
    yx = tuple(np.argwhere(cell)[len(np.argwhere(cell)) // 2])
    widget.tools.click((), yx)
    assert not layer.data[cell].any()
    np.testing.assert_array_equal(layer.data[~cell], binary[~cell])  # the other cells kept
    assert "elsewhere kept" in widget._status.value


def test_bad_clicks_notify_and_change_nothing(correcting, c2c12_masks, notifications):
    viewer, layer, widget, mouse = correcting
    frame = c2c12_masks[FRAME]
    mouse.key(Qt.Key.Key_D)
    mouse.click((2, 2))  # background
    mouse.key(Qt.Key.Key_G)
    mouse.click(mouse.inside(frame, 4))
    mouse.click(mouse.inside(frame, 4))  # the same object twice
    mouse.key(Qt.Key.Key_S)
    mouse.drag([(2, 2), (2, 40)])  # a line through background only
    rows, cols = pixels(frame, 3).T
    mouse.drag([(int(np.median(rows)), cols.min() - 4), (int(np.median(rows)), int(np.median(cols)))])
    np.testing.assert_array_equal(layer.data, c2c12_masks)
    assert CorrectedSlices.for_layer(layer).planes == []
    assert notifications == [
        "Delete: there is no object under the cursor: click inside an object.",
        "Merge: Merging needs two different objects; got object 4.",
        "Split: the line crosses no object: draw it across the object to split.",
        "Split: The line does not cut object 3 in two: draw it right across, from background to background.",
    ]


def test_segment_then_split_on_the_kept_probabilities(make_napari_viewer, dsb_fluo_crop, qtbot):
    image, _truth = dsb_fluo_crop
    viewer = make_napari_viewer()
    _dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    viewer.add_image(image, name="nuclei")
    segment.reset_choices()
    segment._run_button.clicked.emit()
    qtbot.waitUntil(lambda: segment._worker is None, timeout=120_000)
    masks = viewer.layers["nuclei masks"]
    assert widget.tools is not None and widget.tools.layer is masks
    assert masks.selected_label == masks.data.max() + 1  # after the run: the next free id
    before = masks.data.copy()
    sizes = np.bincount(before.ravel())
    sizes[0] = 0
    target = int(np.argmax(sizes))
    rows, cols = pixels(before, target).T
    left = pixels(before, target)[np.argmin(cols)]
    right = pixels(before, target)[np.argmax(cols)]
    widget.tools.mode = MODE_SPLIT
    widget.tools.click((), left)
    widget.tools.click((), right)
    assert widget._status.value.endswith(" (on the kept probabilities).")
    assert set(np.unique(masks.data[before == target])) == {target, before.max() + 1}


def test_save_masks_writes_the_tiff_and_its_corrected_list(correcting, tmp_path, data_dir):
    """Save masks… uses napari-unet's writer whatever napari's own dialog would offer first: the
    TIFF and its list of corrected slices, reopened together; the name proposed sits beside the
    image's file."""
    from napari_unet.io._corrected import MASKS_KEY
    from napari_unet.widgets.correct import default_masks_path

    viewer, layer, widget, _mouse = correcting
    layer.metadata[MASKS_KEY] = True  # a model's masks (made by Segment): their list as it is
    CorrectedSlices.for_layer(layer).mark((FRAME,))
    written = widget.save_masks(tmp_path / "frames")  # ".tif" added
    assert written == [str(tmp_path / "frames.tif")]
    assert (tmp_path / "frames.tif.corrected.json").is_file()
    assert "Saved" in widget._status.value
    (reopened,) = viewer.open(tmp_path / "frames.tif", plugin="napari-unet")
    assert reopened.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(reopened.data, layer.data)
    assert CorrectedSlices.for_layer(reopened).planes == [(FRAME,)]
    assert widget._status.value == "Editing 'frames'."  # (opened, it is the active layer: its tools follow)
    (image,) = viewer.open(data_dir / "c2c12_timelapse" / "images.tif", plugin="napari-unet")
    image.name = "c2c12"
    assert default_masks_path(viewer, layer) == data_dir / "c2c12_timelapse" / "c2c12 masks.tif"
    layer.name = "img [DAPI] masks"  # a channel's masks keep their name, so that they pair again when reopened
    assert default_masks_path(viewer, layer).name == "img [DAPI] masks.tif"


def test_save_button_writes_in_the_background(correcting, tmp_path, qtbot, notifications):
    """The button's save runs in a thread worker, the button off meanwhile: the file holds the
    labels and the list of corrected slices as they were when Save was pressed, whatever is painted
    while it is written; a failure is said in the status and a notification, the button back on."""
    from napari_unet.io._corrected import MASKS_KEY, load_corrected_list

    viewer, layer, widget, _mouse = correcting
    layer.metadata[MASKS_KEY] = True
    tracker = CorrectedSlices.for_layer(layer)
    tracker.mark((FRAME,))
    saved = layer.data.copy()
    worker = widget.save_masks_in_background(tmp_path / "frames")
    assert worker is not None and not widget._save_button.enabled and "Saving" in widget._status.value
    tracker.mark((FRAME + 1,))  # marked while the file is written: in the layer's list, not in this file
    qtbot.waitUntil(lambda: widget.saving is None, timeout=60_000)
    assert widget._save_button.enabled and widget._status.value.startswith("Saved")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "frames.tif"), saved)
    assert load_corrected_list(tmp_path / "frames.tif") == [(FRAME,)]
    assert tracker.planes == [(FRAME,), (FRAME + 1,)]
    assert any("Saved 'c2c12 masks'" in m for m in notifications)

    widget.save_masks_in_background(tmp_path / "no such folder" / "frames.tif")
    qtbot.waitUntil(lambda: widget.saving is None, timeout=60_000)
    assert widget._save_button.enabled
    assert "not saved" in widget._status.value and "does not exist" in widget._status.value
    assert any("Save masks: Labels not saved to 'frames.tif'" in m for m in notifications)
    assert not (tmp_path / "no such folder").exists()


def test_closing_the_window_just_after_save_still_writes_the_masks(correcting, tmp_path, qtbot):
    """Save masks, then the window closed at once, from the event loop (as in napari, where superqt
    started a worker on a timer): napari asks its running tasks to stop as its window closes, and the
    masks were not written. A save is not stopped: the file is written."""
    from qtpy.QtCore import QTimer

    viewer, layer, widget, _mouse = correcting
    saved = layer.data.copy()

    def save_and_close() -> None:
        widget.save_masks_in_background(tmp_path / "frames.tif")
        viewer.close()

    QTimer.singleShot(0, save_and_close)
    qtbot.waitUntil(lambda: (tmp_path / "frames.tif").exists(), timeout=30_000)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "frames.tif"), saved)


def test_tools_never_edit_a_plane_that_is_not_shown(make_napari_viewer, canvas_mouse, c2c12_masks, data_dir,
                                                    qtbot, notifications):
    """Masks of the first 5 frames over the 10-frame time-lapse, the slider on frame 8 (napari
    shows no masks there): a click, H and "Remove smaller objects" refuse instead of editing frame 4
    unseen; so do H and "Remove smaller objects" when the 2D view shows a T-X cut."""
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    masks = c2c12_masks[:5].copy()
    from scipy import ndimage as ndi

    label = int(np.unique(masks[4])[1])
    distance = ndi.distance_transform_edt(masks[4] == label)
    centre = tuple(int(v) for v in np.unravel_index(np.argmax(distance), distance.shape))
    masks[4, centre[0] - 1 : centre[0] + 2, centre[1] - 1 : centre[1] + 2] = 0  # a hole in it
    masks[4, 0:2, 0:2] = 99  # a speck
    viewer = make_napari_viewer(show=True)
    viewer.add_image(images, name="c2c12")
    layer = viewer.add_labels(masks.copy(), name="c2c12 masks")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 8)
    qtbot.wait(100)
    mouse = canvas_mouse(viewer)
    mouse.key(Qt.Key.Key_D)
    mouse.click(mouse.inside(c2c12_masks[4], label))
    mouse.key(Qt.Key.Key_D)
    mouse.key(Qt.Key.Key_H)
    widget._small_button.clicked.emit()
    np.testing.assert_array_equal(layer.data, masks)
    assert CorrectedSlices.for_layer(layer).planes == []
    assert len(notifications) == 3 and all("no slice at the viewer's position" in n for n in notifications)

    viewer.dims.set_current_step(0, 4)
    viewer.dims.order = (1, 0, 2)  # a T-X cut through the stack
    qtbot.wait(50)
    mouse.key(Qt.Key.Key_H)
    widget._small_button.clicked.emit()
    np.testing.assert_array_equal(layer.data, masks)
    assert notifications[3:] == ["Fill holes: show the Y-X plane (the last two axes) to edit objects.",
                                 "Remove small objects: show the Y-X plane (the last two axes) to edit objects."]

    viewer.dims.order = (0, 1, 2)
    viewer.dims.ndisplay = 3  # the 3D view: the slider's frame is not the one in sight
    qtbot.wait(50)
    widget._small_button.clicked.emit()
    np.testing.assert_array_equal(layer.data, masks)
    assert notifications[-1] == "Remove small objects: switch to the 2D view (Ctrl+Y): the edit acts on the slice shown."

    viewer.dims.ndisplay = 2  # back on the Y-X plane of frame 4: both work
    qtbot.wait(50)
    mouse.key(Qt.Key.Key_H)
    widget._small_button.clicked.emit()
    assert (layer.data[4, centre[0] - 1 : centre[0] + 2, centre[1] - 1 : centre[1] + 2] == label).all()
    assert not (layer.data == 99).any()
    assert CorrectedSlices.for_layer(layer).planes == [(4,)]


def test_a_pick_outlived_by_its_slice_pan_zoom_keys_and_the_transposed_view(correcting, c2c12_masks, notifications,
                                                                            qtbot):
    """A merge whose first object changed under the first click (the slice segmented again between
    the clicks) is refused (another cell was merged); napari's pan/zoom key leaves the tools (a pan
    drag then split a cell); in the transposed view (X drawn down) the tools still act."""
    viewer, layer, widget, mouse = correcting
    frame = c2c12_masks[FRAME]
    mouse.key(Qt.Key.Key_G)
    mouse.click(mouse.inside(frame, 2))
    layer.data[FRAME][frame == 2] = 9  # what a run writing this slice does: other ids
    layer.refresh()
    mouse.click(mouse.inside(frame, 1))
    assert (layer.data[FRAME] == 1).sum() == (frame == 1).sum()  # nothing merged
    assert notifications[-1].startswith("Merge: the slice changed since object 2 was picked")
    layer.data[FRAME] = frame
    layer.refresh()

    mouse.key(Qt.Key.Key_S)
    assert widget._mode.value == MODE_SPLIT and layer.mouse_pan is False
    mouse.key(Qt.Key.Key_6)  # napari's pan/zoom: the layer is in pan/zoom already, so napari says nothing
    assert widget._mode.value == MODE_OFF and layer.mode == "pan_zoom" and layer.mouse_pan
    rows, cols = pixels(frame, 3).T
    mouse.drag([(r, int(np.median(cols))) for r in np.linspace(rows.min() - 4, rows.max() + 4, 8)])
    np.testing.assert_array_equal(layer.data, c2c12_masks)  # a pan, not a split

    layer.mode = "paint"  # D, then D again: back to the brush that was in use
    mouse.key(Qt.Key.Key_D)
    assert layer.mode == "pan_zoom"
    mouse.key(Qt.Key.Key_D)
    assert widget._mode.value == MODE_OFF and layer.mode == "paint"
    # Z held (napari's press-and-hold: pan while held), then released: the brush again, as napari does
    # without the plugin (the layer stayed in pan/zoom); a tap stays in pan/zoom
    mouse.canvas.setFocus()
    qtbot.keyPress(mouse.canvas, Qt.Key.Key_Z)
    assert layer.mode == "pan_zoom"
    qtbot.wait(700)  # (napari's hold delay: 0.5 s)
    qtbot.keyRelease(mouse.canvas, Qt.Key.Key_Z)
    qtbot.wait(10)
    assert layer.mode == "paint"
    mouse.key(Qt.Key.Key_S)
    qtbot.keyPress(mouse.canvas, Qt.Key.Key_Z)
    qtbot.wait(700)
    qtbot.keyRelease(mouse.canvas, Qt.Key.Key_Z)
    qtbot.wait(10)
    assert widget._mode.value == MODE_SPLIT  # (one of the plugin's tools: that one again)
    mouse.key(Qt.Key.Key_Z)
    assert widget._mode.value == MODE_OFF and layer.mode == "pan_zoom"
    layer.mode = "pan_zoom"

    viewer.dims.transpose()  # X drawn down, Y across: a real click there, in screen order (x, y)
    qtbot.wait(50)
    mouse.key(Qt.Key.Key_D)
    mouse.click(tuple(reversed(mouse.inside(frame, 4))))
    assert not (layer.data[FRAME] == 4).any()  # deleted (it said "show the Y-X plane")
    widget.tools.fill_holes()  # the slice shown, found in that view too
    assert not any("show the Y-X plane" in m for m in notifications)


def test_delete_and_merge_act_on_the_3d_object_when_napari_edits_in_3d(make_napari_viewer, data_dir, qtbot):
    """3D masks (one id per nucleus over its planes): Delete took one click per plane. With napari's
    "n edit dim" at 3 (its brush, eraser and fill then act in 3D), Delete and Merge act on the objects
    in every plane, as one undo step; with 2 (the default) on the plane shown, as before."""
    truth = tifffile.imread(data_dir / "nuclei3d_synthetic" / "labels.tif").astype(np.int32)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(truth.copy(), name="nuclei masks")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    widget.tools.mode = MODE_DELETE
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    victim = int(ids[np.argmax(counts)])
    zs = np.unique(np.nonzero(truth == victim)[0])
    z = int(zs[len(zs) // 2])
    yx = np.argwhere(truth[z] == victim)[0]
    widget.tools.click((z,), yx)  # napari's default: the plane shown only
    assert not (layer.data[z] == victim).any() and (layer.data == victim).sum() == (truth == victim).sum() - (
        truth[z] == victim).sum()
    layer.undo()
    np.testing.assert_array_equal(layer.data, truth)
    layer.n_edit_dimensions = 3
    widget.tools.click((z,), yx)
    assert not (layer.data == victim).any()
    np.testing.assert_array_equal(layer.data[truth != victim], truth[truth != victim])
    assert set(CorrectedSlices.for_layer(layer).planes) >= {(int(k),) for k in zs}
    assert "in all planes" in widget._status.value
    layer.undo()  # one step
    np.testing.assert_array_equal(layer.data, truth)
    # Merge: the second object clicked in another plane of the volume
    other = next(int(i) for i in ids if i != victim and (truth[int(zs[0])] == i).any())
    widget.tools.mode = MODE_MERGE
    widget.tools.click((z,), yx)
    widget.tools.click((int(zs[0]),), np.argwhere(truth[int(zs[0])] == other)[0])
    assert not (layer.data == other).any() and (layer.data == victim).sum() == (
        (truth == victim) | (truth == other)).sum()

    # a stack segmented plane by plane: each plane numbers its objects from 1, so the id clicked is also
    # other cells in other planes; through the planes, Delete and Merge take the object clicked only
    from skimage.measure import label as number

    per_plane = np.stack([number(plane > 0) for plane in truth]).astype(np.int32)
    layer.data = per_plane.copy()
    widget.tools.mode = MODE_DELETE
    clicked = int(per_plane[z, yx[0], yx[1]])
    twins = (per_plane == clicked).sum()
    widget.tools.click((z,), yx)
    from scipy import ndimage as ndi

    parts, _n = ndi.label(per_plane == clicked)
    gone = parts == parts[z, yx[0], yx[1]]
    assert 0 < gone.sum() < twins  # (the same id elsewhere, not connected to it, is another cell)
    np.testing.assert_array_equal(layer.data[gone], 0)
    np.testing.assert_array_equal(layer.data[~gone], per_plane[~gone])


def test_a_hidden_labels_layer_comes_after_shown_ones_and_a_tool_shows_it(make_napari_viewer, c2c12_masks):
    """A sample opened by ``napari-unet gui`` has its ground truth hidden: Correct proposes a shown
    Labels layer before it, says when the one chosen is hidden, and choosing a tool shows it (edits
    to a layer not shown could not be seen)."""
    viewer = make_napari_viewer()
    truth = viewer.add_labels(c2c12_masks[:2].copy(), name="c2c12 ground truth", visible=False)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    assert widget._layer_combo.value is truth and "hidden" in widget._status.value
    shown = viewer.add_labels(c2c12_masks[:2].copy(), name="other labels")
    assert [name for name, _ in widget._labels_choices()] == ["other labels", "c2c12 ground truth"]
    widget._layer_combo.value = truth
    assert not truth.visible
    widget._mode.value = MODE_DELETE
    assert truth.visible and viewer.layers.selection.active is truth
    widget._layer_combo.value = shown
    assert widget._status.value == "Editing 'other labels'."
    shown.visible = False  # (Segment's new masks are shown once drawn, napari-unet gui hides a ground truth)
    assert widget._status.value == "Editing 'other labels'. It is hidden: choosing a tool shows it."
    shown.visible = True
    assert widget._status.value == "Editing 'other labels'."
    widget._layer_combo.value = truth  # the layer left is no longer followed
    shown.visible = False
    assert widget._status.value.startswith("Editing 'c2c12 ground truth'.")


def test_the_buttons_edit_the_layer_shown_and_active(make_napari_viewer, c2c12_masks):
    """Fill holes, New object and Remove smaller objects edited the layer picked in Correct while
    another stayed active: Ctrl+Z then undid the other layer, and a hidden layer was edited unseen."""
    viewer = make_napari_viewer()
    picked = viewer.add_labels(c2c12_masks[:2].copy(), name="c2c12 masks", visible=False)
    other = viewer.add_labels(c2c12_masks[:2].copy(), name="nuclei masks")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    viewer.layers.selection.active = other
    widget._layer_combo.value = picked  # (picked after: a layer clicked in the list is followed, see below)
    widget._min_size.value = 10_000
    widget._small_button.changed.emit(True)
    assert viewer.layers.selection.active is picked and picked.visible
    assert np.count_nonzero(picked.data) < np.count_nonzero(c2c12_masks[:2])  # the slice shown emptied
    np.testing.assert_array_equal(other.data, c2c12_masks[:2])


def test_the_tools_follow_the_labels_layer_clicked_in_the_layer_list(correcting, c2c12_masks):
    """The keys were bound to the masks added last: on another masks layer, clicked in the layer list, D
    and a click did nothing, and in paint mode the click painted into the cell, counted as a correction."""
    viewer, layer, widget, mouse = correcting
    newer = viewer.add_labels(c2c12_masks.copy(), name="other masks")
    assert widget._layer_combo.value is newer
    viewer.layers.selection.active = layer  # the first masks clicked in the layer list
    assert widget._layer_combo.value is layer and widget.tools.layer is layer
    mouse.key(Qt.Key.Key_D)
    mouse.click(mouse.inside(c2c12_masks[FRAME], 5))
    assert not (layer.data[FRAME] == 5).any()
    np.testing.assert_array_equal(newer.data, c2c12_masks)  # (the other layer untouched)
    viewer.layers.selection.active = viewer.add_image(np.zeros((10, 234, 234), np.uint8), name="img")
    assert widget._layer_combo.value is layer  # (an image made active: the tools stay where they were)


def test_closing_the_dock_switches_its_tools_off(correcting, qtbot):
    """napari's close button keeps the widget (hidden): its Delete tool stayed on (a plain click
    deleted an object, nothing showing a tool was on) and D, G, S, H, N stayed bound to the layer."""
    from napari_unet.widgets._registry import get_widget

    viewer, layer, widget, _mouse = correcting
    widget._mode.value = MODE_DELETE
    tools = widget.tools
    assert tools._on_mouse in layer.mouse_drag_callbacks
    from napari_unet.widgets._object_tools import _keybinding

    assert all(layer.keymap.get(_keybinding(k)) for k in ("D", "G", "S", "H", "N"))
    viewer.window.remove_dock_widget(widget.native)
    assert widget.tools is None and tools.mode == MODE_OFF
    assert tools._on_mouse not in layer.mouse_drag_callbacks
    assert not any(layer.keymap.get(_keybinding(k)) for k in ("D", "G", "S", "H", "N"))
    assert get_widget(viewer, "correct") is None
    viewer.add_labels(np.zeros((4, 8, 8), np.int32), name="other masks")  # followed no more: no tools again
    assert widget.tools is None


def test_closing_the_window_with_edits_not_saved_asks_first(correcting, tmp_path, qtbot):
    """napari's own question ("Close window?") did not say that corrections would be lost: closing by
    hand with masks edited since they were saved (or opened) asks, and Cancel keeps the window."""
    from qtpy.QtCore import QTimer
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication

    from napari_unet.widgets._base import close_with_unsaved_masks, unsaved_masks
    from napari_unet.widgets._napari_compat import main_window

    viewer, layer, widget, mouse = correcting
    assert unsaved_masks(viewer) == []  # (opened: nothing to save)
    mouse.key(Qt.Key.Key_D)
    mouse.click(mouse.inside(layer.data[FRAME], 5))  # an edit
    assert unsaved_masks(viewer) == [layer]

    def answer(text: str) -> None:
        box = QApplication.activeModalWidget()
        button = next(b for b in box.buttons() if b.text() == text)
        button.click()

    class ByHand(QCloseEvent):  # (a close from the window's button: napari asks only then, and so does this)
        def spontaneous(self) -> bool:
            return True

    window = main_window(viewer)
    (ask,) = [child for child in window.children() if type(child).__name__ == "AskFirst"]
    QTimer.singleShot(200, lambda: answer("Cancel"))
    event = ByHand()
    assert ask.eventFilter(window, event) is True and not event.isAccepted()  # the window stays
    QTimer.singleShot(200, lambda: answer("Close without saving"))
    assert close_with_unsaved_masks(viewer) is True
    # napari's File > Close Window and File > Exit (Ctrl+W, Ctrl+Q) close it from the program, not the window
    # system: not a spontaneous event, and they were not asked about
    QTimer.singleShot(200, lambda: answer("Cancel"))
    assert window.close(quit_app=False, confirm_need=True) is None
    qtbot.wait(50)
    assert window.isVisible() and layer in viewer.layers

    widget.save_masks(tmp_path / "frames.tif")  # saved: nothing to ask
    assert unsaved_masks(viewer) == [] and ask.eventFilter(window, ByHand()) is False
    layer.undo()  # edited again, then saved by napari's File > Save with napari-unet's writer
    assert unsaved_masks(viewer) == [layer]
    assert layer.save(str(tmp_path / "again.tif"), plugin="napari-unet")
    assert unsaved_masks(viewer) == []


def test_saving_over_a_masks_file_changed_on_disk_since_asks_first(correcting, tmp_path, qtbot):
    """A colleague's corrected masks unzipped over the file opened: Save masks replaced them, saying
    only "Saved" (a review of a handoff between labs). Saved there again after the file changed since
    it was opened or saved, Save masks asks; No keeps the file as it is."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet.io import write_labels
    from napari_unet.io._corrected import MASKS_KEY

    viewer, layer, widget, _mouse = correcting
    layer.metadata[MASKS_KEY] = True
    path = tmp_path / "c2c12 masks.tif"
    assert widget.save_masks(path) == [str(path)]
    viewer.layers.remove(layer)
    (mine,) = viewer.open(path, plugin="napari-unet")  # opened again: the file as it is now is recorded
    widget._layer_combo.value = mine
    assert widget.save_masks(path) == [str(path)]  # unchanged since: no question
    theirs = np.zeros_like(mine.data)
    theirs[FRAME, :10, :10] = 7
    write_labels(path, theirs, corrected=[(FRAME,)])  # someone else's version put there

    def answer(text: str) -> None:
        box = QApplication.activeModalWidget()
        next(b for b in box.buttons() if text in b.text().replace("&", "")).click()

    QTimer.singleShot(200, lambda: answer("No"))
    assert widget.save_masks(path) == []
    assert "was changed by someone else" in widget._status.value
    np.testing.assert_array_equal(tifffile.imread(path), theirs)  # kept
    QTimer.singleShot(200, lambda: answer("Yes"))
    assert widget.save_masks(path) == [str(path)]
    np.testing.assert_array_equal(tifffile.imread(path), mine.data)
    assert widget.save_masks(path) == [str(path)]  # saved by this layer: no question again


def test_a_second_masks_file_of_an_image_is_said_and_saved_beside_its_own_file(correcting, tmp_path, notifications):
    """A colleague's version of "c2c12 masks" opened beside one's own became "c2c12 masks [1]", paired with
    nothing, unsaid, and Save masks… proposed the current folder for it (a review of a handoff)."""
    from napari_unet.io import write_labels
    from napari_unet.widgets.correct import default_masks_path

    viewer, layer, _widget, _mouse = correcting
    theirs = tmp_path / "from colleague"
    theirs.mkdir()
    path = write_labels(theirs / "c2c12 masks.tif", layer.data, corrected=[])
    (second,) = viewer.open(path, plugin="napari-unet")
    assert second.name == "c2c12 masks [1]"
    assert any("'c2c12 masks [1]' was opened beside 'c2c12 masks'" in m for m in notifications)
    assert default_masks_path(viewer, second).parent == theirs
