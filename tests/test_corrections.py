"""Corrected slices: a Labels layer records which planes the user changed, through its own edits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.layers import Labels

from napari_unet.widgets._corrections import (
    CORRECTED_KEY,
    CorrectedSlices,
    load_corrected_list,
    save_corrected_list,
    sidecar_path,
)
from napari_unet.widgets._registry import get_widget, register_widget, unregister_widget


@pytest.fixture
def stack_layer() -> Labels:
    layer = Labels(np.zeros((5, 32, 32), dtype=np.int32), name="cells masks")
    layer.brush_size = 5
    return layer


def test_brush_fill_polygon_setitem_mark_their_planes(stack_layer):
    layer = stack_layer
    tracker = CorrectedSlices.for_layer(layer)
    assert CorrectedSlices.for_layer(layer) is tracker  # one tracker per layer
    assert tracker.planes == []

    layer.paint((2, 10, 10), 3)  # what the brush does on slice 2
    assert tracker.planes == [(2,)]
    assert layer.data[2, 10, 10] == 3

    layer.fill((4, 1, 1), 2)  # the fill bucket on slice 4
    assert tracker.planes == [(2,), (4,)]
    assert (layer.data[4] == 2).all()

    layer.paint_polygon([(1, 2, 2), (1, 2, 12), (1, 12, 12)], 4)
    layer.data_setitem((np.array([3, 3]), np.array([1, 2]), np.array([1, 1])), 5)
    assert tracker.planes == [(1,), (2,), (3,), (4,)]

    layer.paint((2, 20, 20), 6)  # a second edit of slice 2 is not listed twice
    assert tracker.planes == [(1,), (2,), (3,), (4,)]
    assert layer.metadata[CORRECTED_KEY] == [[1], [2], [3], [4]]  # plain JSON lists
    assert len(tracker) == 4 and (2,) in tracker and (0,) not in tracker


def test_eraser_undo_and_redo_mark_planes(stack_layer):
    layer = stack_layer
    layer.data[0, 5:15, 5:15] = 7  # segmentation written directly: not a correction
    tracker = CorrectedSlices.for_layer(layer)
    layer.paint((0, 10, 10), 0)  # eraser = painting background
    assert tracker.planes == [(0,)]
    assert layer.data[0, 10, 10] == 0

    layer.paint((3, 10, 10), 1)
    assert tracker.planes == [(0,), (3,)]
    layer.undo()  # the only edit of slice 3 undone: the model's again (it stayed listed, and was learnt as true)
    assert layer.data[3, 10, 10] == 0
    assert tracker.planes == [(0,)]
    layer.redo()  # edited again
    assert layer.data[3, 10, 10] == 1
    assert tracker.planes == [(0,), (3,)]
    layer.undo()  # (and undone again)
    assert tracker.planes == [(0,)]
    layer.redo()
    layer.paint((3, 20, 20), 2)  # a second edit of slice 3: undoing it leaves the first
    layer.undo()
    assert tracker.planes == [(0,), (3,)]
    tracker.mark((4,))  # marked by hand ("right as it is"): an edit undone leaves it corrected
    layer.paint((4, 10, 10), 5)
    layer.undo()
    assert tracker.planes == [(0,), (3,), (4,)]
    tracker.unmark((3,))  # unmarked by hand, then its last edit undone: the model's, unmarked
    layer.undo()
    assert tracker.planes == [(0,), (4,)] and layer.data[3, 10, 10] == 0


def test_an_undo_that_brings_back_the_brushs_new_id_moves_the_brush_on():
    """An object deleted, New object (the next free id: the deleted one's), Ctrl+Z: the object came back
    with the brush's id, and the next cell painted was one id with it. A label picked to grow a cell stays."""
    layer = Labels(np.zeros((2, 32, 32), dtype=np.int32))
    layer.data[0, 2:8, 2:8] = 1
    layer.data[0, 10:20, 10:20] = 2  # a model's objects
    CorrectedSlices.for_layer(layer)
    layer.fill((0, 15, 15), 0)  # object 2 deleted
    layer.selected_label = 2  # New object: the next free id
    layer.undo()
    assert (layer.data[0] == 2).any() and layer.selected_label == 3
    layer.selected_label = 1  # picked to grow object 1
    layer.redo()
    layer.undo()
    assert layer.selected_label == 1


def test_2d_layer_and_4d_layer(stack_layer):
    flat = Labels(np.zeros((16, 16), dtype=np.int32))
    t2 = CorrectedSlices.for_layer(flat)
    flat.paint((4, 4), 1)
    assert t2.planes == [()]

    tz = Labels(np.zeros((2, 3, 16, 16), dtype=np.uint16))
    t4 = CorrectedSlices.for_layer(tz)
    tz.paint((1, 2, 8, 8), 9)
    assert t4.planes == [(1, 2)]
    # a 3D brush edits several planes at once: all of them are listed
    tz.n_edit_dimensions = 3
    tz.brush_size = 3
    tz.paint((0, 1, 8, 8), 4)
    assert t4.planes == [(0, 0), (0, 1), (0, 2), (1, 2)]


def test_mark_unmark_and_bad_plane(stack_layer):
    tracker = CorrectedSlices.for_layer(stack_layer)
    seen = []
    tracker.changed.connect(lambda: seen.append(tracker.planes))
    assert tracker.mark(3) is True
    assert tracker.mark((3,)) is False  # already there
    assert tracker.unmark(3) is True and tracker.unmark(3) is False
    assert seen == [[(3,)], []]
    with pytest.raises(ValueError, match="does not exist"):
        tracker.mark(9)


def test_metadata_from_a_reader_is_used_and_survives(stack_layer):
    stack_layer.metadata[CORRECTED_KEY] = [[4], (1,), [4]]  # e.g. read from a sidecar
    tracker = CorrectedSlices.for_layer(stack_layer)
    assert tracker.planes == [(1,), (4,)]
    assert stack_layer.metadata[CORRECTED_KEY] == [[1], [4]]


def test_sidecar_round_trip_is_atomic(tmp_path, stack_layer):
    labels_file = tmp_path / "cells masks.tif"
    tracker = CorrectedSlices.for_layer(stack_layer)
    stack_layer.paint((2, 3, 3), 1)
    stack_layer.paint((0, 3, 3), 1)
    written = tracker.save(labels_file)
    assert written == sidecar_path(labels_file) == tmp_path / "cells masks.tif.corrected.json"
    assert json.loads(written.read_text())["planes"] == [[0], [2]]
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temporary file left
    assert load_corrected_list(labels_file) == [(0,), (2,)]

    # reopen: a fresh layer gets the list back
    reopened = Labels(np.zeros((5, 32, 32), dtype=np.int32))
    assert CorrectedSlices.for_layer(reopened).load(labels_file) == [(0,), (2,)]
    assert reopened.metadata[CORRECTED_KEY] == [[0], [2]]

    # the writer can pass the layer or its metadata
    save_corrected_list(labels_file, {CORRECTED_KEY: [[4]]})
    assert load_corrected_list(labels_file) == [(4,)]
    assert load_corrected_list(tmp_path / "other.tif") == []
    written.write_text("not json")
    with pytest.raises(ValueError, match="corrected slices"):
        load_corrected_list(labels_file)


def test_registry_keeps_weak_references():
    class Viewer:  # any object with identity stands for a viewer here
        pass

    class Widget:
        pass

    viewer, widget = Viewer(), Widget()
    register_widget(viewer, "segment", widget)
    assert get_widget(viewer, "segment") is widget
    assert get_widget(viewer, "finetune") is None
    unregister_widget(viewer, "segment", widget)
    assert get_widget(viewer, "segment") is None
    register_widget(viewer, "segment", widget)
    del widget
    assert get_widget(viewer, "segment") is None


def test_corrected_list_survives_save_and_reopen(make_napari_viewer, tmp_path):
    """Saving the masks with napari's File > Save and opening the file again keeps the list."""
    viewer = make_napari_viewer()
    masks = viewer.add_labels(np.zeros((3, 32, 32), np.int32), name="cells masks")
    tracker = CorrectedSlices.for_layer(masks)
    masks.brush_size = 3
    masks.paint((2, 10, 10), 5)
    tracker.mark((0,))
    path = tmp_path / "cells masks.tif"
    viewer.layers.selection.clear()
    viewer.layers.selection.add(masks)
    viewer.layers.save(str(path), selected=True, plugin="napari-unet")
    assert path.is_file() and sidecar_path(path).is_file()
    viewer.layers.clear()
    (layer,) = viewer.open(str(path), plugin="napari-unet")
    assert layer.__class__.__name__ == "Labels"
    assert CorrectedSlices.for_layer(layer).planes == [(0,), (2,)]
    assert layer.data[2, 10, 10] == 5


@pytest.mark.parametrize("broken", ["not json", '{"planes": [["a"]]}', '{"format": 1}'])
def test_broken_corrected_list_opens_the_labels_with_a_warning(make_napari_viewer, tmp_path, broken, notifications):
    """A damaged "<name>.tif.corrected.json" does not keep the labels from opening."""
    viewer = make_napari_viewer()
    masks = viewer.add_labels(np.zeros((3, 32, 32), np.int32), name="cells masks")
    CorrectedSlices.for_layer(masks).mark((1,))
    masks.data[2, 4:8, 4:8] = 3
    path = tmp_path / "cells masks.tif"
    viewer.layers.save(str(path), selected=False, plugin="napari-unet")
    sidecar_path(path).write_text(broken)
    viewer.layers.clear()
    (layer,) = viewer.open(str(path), plugin="napari-unet")
    assert layer.__class__.__name__ == "Labels"
    assert layer.data[2, 5, 5] == 3
    assert CorrectedSlices.for_layer(layer).planes == []
    assert any("without their list of corrected slices" in m and "corrected.json" in m for m in notifications)


def test_an_edit_across_slices_marks_them_and_says_what_that_means_once(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((5, 32, 32), dtype=np.int32), name="cells masks")
    layer.brush_size = 5
    tracker = CorrectedSlices.for_layer(layer)
    viewer.dims.order = (1, 0, 2)  # "transpose": the canvas shows Z-X cuts through the stack
    layer.paint((2, 10, 10), 3)
    touched = sorted({int(z) for z in np.nonzero(layer.data == 3)[0]})
    assert len(touched) > 1  # a few pixels of several Y-X slices
    assert tracker.planes == [(z,) for z in touched]  # kept from re-segmentation: the user's edit
    layer.paint((2, 20, 20), 4)
    said = [m for m in notifications if "marked them all as corrected" in m]
    assert len(said) == 1 and "Unmark those you did not check" in said[0]  # once: what it means for training


def test_mark_current_slice_refuses_a_transposed_view(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 32, 32), np.float32), name="cells")
    layer = viewer.add_labels(np.zeros((5, 32, 32), dtype=np.int32), name="cells masks")
    _dock, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    tune.corrected_panel._labels_combo.value = layer
    viewer.dims.order = (1, 0, 2)
    tune.corrected_panel.mark_current_slice()
    assert CorrectedSlices.for_layer(layer).planes == []
    assert any("Y-X view" in m for m in notifications)
    viewer.dims.order = (0, 1, 2)
    tune.corrected_panel.mark_current_slice()
    assert CorrectedSlices.for_layer(layer).planes == [(viewer.dims.current_step[0],)]


def test_earlier_edits_across_slices_are_said_and_edits_of_other_axes_ignored(make_napari_viewer, notifications):
    from napari_unet.widgets._corrections import CorrectedSlices

    viewer = make_napari_viewer()
    flat = viewer.add_labels(np.zeros((64, 64), np.int32), name="flat")
    flat.brush_size = 8
    flat.paint((30, 30), 3)  # a 2D edit, then the data becomes a stack: the old edit is not a slice
    flat.data = np.zeros((50, 64, 64), np.int32)
    assert CorrectedSlices.for_layer(flat).planes == []
    deep = viewer.add_labels(np.zeros((40, 64, 64), np.int32), name="deep")
    deep.n_edit_dimensions = 3
    deep.brush_size = 6
    deep.paint((20, 30, 30), 5)  # a 3D brush before the plugin watched the layer
    planes = CorrectedSlices.for_layer(deep).planes
    assert len(planes) > 1
    assert any(f"An edit across {len(planes)} slices" in m for m in notifications)


def test_a_run_leaves_a_slice_under_a_stroke_in_progress(stack_layer):
    """While the mouse is down napari holds a brush stroke back (not yet in the undo history nor
    said): a run that writes that slice then keeps it, as a slice corrected during the run, rather
    than replacing the part painted so far."""
    from napari_unet.widgets._masks import RunCorrections

    run = RunCorrections.start(stack_layer, overwrite=False)
    with stack_layer.block_history():  # what napari's brush does from press to release
        stack_layer.paint((2, 10, 10), 7)
        assert run.planes_to_keep(stack_layer, [(1,), (2,), (3,)]) == {(2,)}
    assert run.meanwhile == [(2,)]
    assert run.planes_to_keep(stack_layer, [(1,)]) == set()  # no stroke now, nothing corrected there
    assert (2,) in CorrectedSlices.for_layer(stack_layer).planes  # the stroke, once ended, is a correction


def test_an_undo_of_an_edit_in_another_slice_shows_that_slice(make_napari_viewer, notifications):
    """napari keeps one undo history for the whole stack: Ctrl+Z on slice 3 silently erased a stroke
    on slice 9. The viewer now moves to the slice the undo changed, and says so."""
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((10, 32, 32), dtype=np.int32), name="cells masks")
    CorrectedSlices.for_layer(layer)
    viewer.dims.set_current_step(0, 9)
    layer.paint((9, 10, 10), 4)
    viewer.dims.set_current_step(0, 3)
    layer.undo()
    assert viewer.dims.current_step[0] == 9 and not layer.data[9].any()
    assert any("Undid an edit in slice 9 of 'cells masks', not the slice shown" in m for m in notifications)
    notifications.clear()
    layer.redo()  # (shown already: nothing said)
    assert viewer.dims.current_step[0] == 9 and not notifications


def test_an_undo_leaves_a_slice_corrected_while_edits_out_of_napari_s_history_remain(stack_layer):
    """napari keeps 100 undo steps: a stroke that fell out of them is still in its slice. Undoing a later
    stroke of that slice unmarked it, and the next run replaced the older stroke."""
    layer = stack_layer
    tracker = CorrectedSlices.for_layer(layer)
    layer.paint((0, 10, 10), 3)  # stroke A
    for k in range(105):  # (more than napari keeps)
        layer.paint((1, 5 + k % 20, 5), 4 + k % 3)
    layer.paint((0, 20, 20), 5)  # stroke B
    layer.undo()
    assert layer.data[0, 10, 10] == 3 and (0,) in tracker.planes
