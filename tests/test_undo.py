"""Ctrl+Z / Ctrl+Shift+Z and the corrected slices: what is the user's stays protected, what is the
model's again is not (a review's findings, 2026-12-08)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.widgets._base import unsaved_masks
from napari_unet.widgets._corrections import CorrectedSlices
from napari_unet.widgets.segment import SCOPE_SLICE, SCOPE_STACK, masks_layer_name


@pytest.fixture
def c2c12(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Four C2C12 phase-contrast frames (CC-BY 4.0) and their ground truth, cropped."""
    folder = data_dir / "c2c12_timelapse"
    return (tifffile.imread(folder / "images.tif")[:4, 100:196, 100:196],
            tifffile.imread(folder / "labels.tif")[:4, 100:196, 100:196].astype(np.int32))


@pytest.fixture
def segment(make_napari_viewer, tiny_model_path, qtbot):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.add_model_file(tiny_model_path)

    def run(image, scope=SCOPE_SLICE, overwrite=False) -> None:
        widget.reset_choices()
        widget._image_combo.value = image
        widget._threshold.value = 0.05
        widget._min_size.value = 0
        widget._scope.value = scope
        widget._overwrite.value = overwrite
        widget._run_button.clicked.emit()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)

    return viewer, widget, run


def test_a_slice_a_run_replaced_is_the_models_again_after_a_stroke_and_its_undo(segment, c2c12, notifications):
    """A run replaced a corrected slice (Overwrite ticked); a stroke, then Ctrl+Z: the slice is the
    model's, bit for bit, and no longer listed as corrected (it stayed listed: "Nothing to segment", and
    Fine-tune learnt the model's output as the truth)."""
    viewer, _widget, run = segment
    image = viewer.add_image(c2c12[0], name="c")
    viewer.dims.set_current_step(0, 0)
    run(image)
    masks = viewer.layers[masks_layer_name("c")]
    masks.brush_size = 5
    masks.paint((0, 30, 30), 77)
    tracker = CorrectedSlices.for_layer(masks)
    assert (0,) in tracker
    run(image, overwrite=True)
    assert (0,) not in tracker
    model = np.array(masks.data[0])
    masks.paint((0, 60, 60), 55)
    assert (0,) in tracker
    masks.undo()
    np.testing.assert_array_equal(masks.data[0], model)
    assert (0,) not in tracker
    masks.redo()  # the stroke again: corrected again
    assert (0,) in tracker


def test_overwrite_is_the_consent_of_one_run(segment, c2c12, notifications, qtbot):
    """Ticked to segment one slice again, Overwrite stayed ticked, and a Whole-stack run later replaced
    the other corrected slices unasked (their undo steps dropped): it unticks once its run starts."""
    viewer, widget, run = segment
    image = viewer.add_image(c2c12[0], name="c")
    viewer.dims.set_current_step(0, 0)
    run(image, scope=SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c")]
    masks.brush_size = 9
    masks.paint((1, 30, 30), 901)
    masks.paint((2, 30, 30), 902)
    corrected = np.array(masks.data)
    viewer.dims.set_current_step(0, 0)
    run(image, overwrite=True)  # slice 0 again, Overwrite ticked for it
    assert not widget._overwrite.value
    widget._scope.value = SCOPE_STACK
    widget._run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    for k in (1, 2):
        np.testing.assert_array_equal(masks.data[k], corrected[k])
    assert {(1,), (2,)} <= set(CorrectedSlices.for_layer(masks).planes)


def test_someones_labels_stay_protected_after_a_stroke_on_them_is_undone(segment, c2c12, notifications):
    """Hand labels brought from another tool (no napari-unet list): a stroke on slice 0, then a run
    marks the slices holding labels as theirs; Ctrl+Z of the stroke unmarked slice 0 (its labels still
    there), and a Whole-stack run replaced it with no undo."""
    viewer, _widget, run = segment
    image = viewer.add_image(c2c12[0], name="c")
    theirs = c2c12[1]
    masks = viewer.add_labels(theirs.copy(), name=masks_layer_name("c"))
    viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    masks.brush_size = 5
    masks.paint((0, 90, 5), 99)  # one more stroke on their slice 0
    stroked = np.array(masks.data[0])
    viewer.dims.set_current_step(0, 2)
    run(image)  # slice 2 holds their labels: kept, and every slice holding them marked
    np.testing.assert_array_equal(masks.data[2], theirs[2])
    masks.undo()
    assert not np.array_equal(masks.data[0], stroked)
    np.testing.assert_array_equal(masks.data[0], theirs[0])
    assert (0,) in CorrectedSlices.for_layer(masks)
    masks.paint((0, 2, 2), 98)  # two strokes in opposite corners, undone: still theirs
    masks.paint((0, 93, 93), 99)
    masks.undo()
    masks.undo()
    np.testing.assert_array_equal(masks.data[0], theirs[0])
    assert (0,) in CorrectedSlices.for_layer(masks)
    run(image, scope=SCOPE_STACK)
    holding = [k for k in range(4) if theirs[k].any()]
    assert 0 in holding and 2 in holding
    for k in holding:  # (the others are segmented)
        np.testing.assert_array_equal(masks.data[k], theirs[k])


def test_labels_painted_before_the_docks_opened_are_unsaved(make_napari_viewer, c2c12):
    """Cells painted in plain napari, then Fine-tune opened on them: listed as corrected, and closing
    napari asks to save them (it did only after an undo)."""
    viewer = make_napari_viewer()
    image = viewer.add_image(c2c12[0], name="c")
    masks = viewer.add_labels(np.zeros((4, 96, 96), np.int32), name="c masks")
    masks.brush_size = 9
    for k in range(5):
        masks.paint((1, 20 + 10 * k, 40), k + 1)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.corrected_panel._image_combo.value = image
    widget.corrected_panel._labels_combo.value = masks
    assert (1,) in CorrectedSlices.for_layer(masks)
    assert masks in unsaved_masks(viewer)


def test_a_cell_painted_in_a_new_labels_layer_then_undone_leaves_its_slice_unlisted(segment, c2c12, notifications):
    """A new labels layer named as masks: one cell painted on slice 0, a run on slice 2 (the slices
    holding labels taken as the user's), then Ctrl+Z: slice 0 is empty, and no longer listed as corrected
    (it was: learnt as holding no cells, skipped by Whole stack)."""
    viewer, _widget, run = segment
    image = viewer.add_image(c2c12[0], name="c")
    masks = viewer.add_labels(np.zeros((4, 96, 96), np.int32), name=masks_layer_name("c"))
    viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    masks.brush_size = 9
    masks.paint((0, 30, 30), 5)
    viewer.dims.set_current_step(0, 2)
    run(image)
    assert (0,) in CorrectedSlices.for_layer(masks)
    masks.undo()
    assert not masks.data[0].any()
    assert (0,) not in CorrectedSlices.for_layer(masks)
