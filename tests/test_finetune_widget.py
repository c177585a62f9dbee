"""The Fine-tune dock widget in a real napari viewer, with real (tiny) training runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.widgets._corrections import CorrectedSlices
from napari_unet.widgets._registry import get_widget
from napari_unet.widgets.finetune import FinetuneWidget

FAST = dict(steps=6, patch=64, batch=2)


@pytest.fixture
def c2c12(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Three 128x128 frames of the real C2C12 time-lapse (CC-BY 4.0) and their labels."""
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:3, :128, :128]
    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[:3, :128, :128]
    return np.ascontiguousarray(images), np.ascontiguousarray(labels).astype(np.int32)


@pytest.fixture
def base_model() -> Path:
    """A tiny untrained 3-class model saved in the (temporary) user model folder."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel, save_model, user_model_path
    from napari_unet.core.model import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=2, padding="same", norm="batch").eval()
    return save_model(SegmentationModel(net, metadata={"name": "base"}), user_model_path("base"))


@pytest.fixture
def widget(make_napari_viewer, base_model):
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(w, FinetuneWidget)
    w.settings_panel._steps.value = FAST["steps"]
    w.settings_panel._patch_size.value = FAST["patch"]
    w.settings_panel._batch_size.value = FAST["batch"]
    w.settings_panel._device.value = "cpu"
    w.settings_panel._base_model.value = str(base_model)  # the tiny model, not a built-in one
    return viewer, w


def _add_pair(viewer, images, labels, name="c2c12"):
    image = viewer.add_image(images, name=name)
    masks = viewer.add_labels(labels, name=f"{name} masks")
    return image, masks


def _wait_for_folders(w, timeout=60.0):
    """Add folders reads the files in a thread worker: wait until it has (the button is back)."""
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while w.examples_panel.reading is not None and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    QApplication.processEvents()
    assert w.examples_panel.reading is None and w.examples_panel._add_folder_button.enabled


def _wait(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: w.run_panel._worker is None, timeout=timeout)


def _answer(w, replace: bool) -> None:
    """Click a button of the open "replace your model?" question."""
    from qtpy.QtWidgets import QMessageBox

    box = w.replace_question
    assert box is not None and box.isVisible()
    box.button(QMessageBox.Yes if replace else QMessageBox.No).click()


def _folder_that_breaks(w, folder: Path):
    """(where ``folder`` goes, a ``yielded`` slot): at the run's first training step the model folder
    is moved away and a file put in its place (the save then fails), and the run is stopped. (At an
    earlier event, the run could stop before its first step: nothing to save.)"""
    from napari_unet.core.events import TrainStep

    moved = folder.with_name("models-elsewhere")

    def break_folder(event):
        if isinstance(event, TrainStep) and not moved.exists():
            os.replace(folder, moved)
            folder.write_text("not a folder any more")
            w.stop()

    return moved, break_folder


def _user_models():
    from napari_unet.core.checkpoint import list_models

    return {e.name: e.path for e in list_models() if not e.builtin}


# ---------------------------------------------------------------------- basics
def test_widget_docks_with_defaults(widget, base_model):
    viewer, w = widget
    from napari_unet.core.checkpoint import list_models

    assert FinetuneWidget(viewer).settings_panel._base_model.value == str(list_models()[0].path)  # the first
    assert str(base_model) in w.settings_panel._base_model.choices
    assert w.settings_panel._name.value == "base-tuned"
    assert w.run_panel._device_label.value.startswith("CPU")
    assert w.settings_panel._augment.value is True
    assert w.run_panel._start_button.enabled and not w.run_panel._stop_button.enabled
    assert not w.settings_panel._advanced._collapsible.isExpanded()  # the rest hides behind "Advanced"
    assert w.run_panel.curves.canvas.parent() is not None  # the live curves are in the widget


def test_tab_passes_over_the_controls_of_a_folded_section(widget):
    from qtpy.QtCore import Qt

    _viewer, w = widget
    advanced = w.settings_panel._advanced
    control = w.settings_panel._seed.native  # a spin box of the folded "Advanced"
    from magicgui.widgets import SpinBox

    shown = SpinBox().native.focusPolicy()  # what the spin box had before it was folded
    assert control.focusPolicy() == Qt.FocusPolicy.NoFocus  # folded: out of Tab's way
    advanced._collapsible.expand(animate=False)
    assert control.focusPolicy() == shown != Qt.FocusPolicy.NoFocus
    advanced._collapsible.collapse(animate=False)
    assert control.focusPolicy() == Qt.FocusPolicy.NoFocus


def test_corrected_list_mark_unmark_and_jump(widget, c2c12):
    viewer, w = widget
    images, labels = c2c12
    _image, masks = _add_pair(viewer, images, np.zeros_like(labels))
    assert w.corrected_panel._labels_combo.value is masks  # "<image> masks" chosen by itself
    assert "none yet" in w.corrected_panel._corrected_info.value

    masks.paint((2, 40, 40), 5)  # the brush on slice 2
    assert w.corrected_panel._corrected_info.value.startswith("1: slice 2")
    assert list(w.corrected_panel._corrected_list.choices) == [(2,)]

    viewer.dims.set_current_step(0, 1)
    w.corrected_panel._mark_button.native.click()  # slice 1 is right as it is
    assert CorrectedSlices.for_layer(masks).planes == [(1,), (2,)]
    assert w.corrected_panel._corrected_info.value.startswith("2: slice 1, slice 2")

    # sorted, whatever the order of edits
    assert list(w.corrected_panel._corrected_list.choices) == [(1,), (2,)]
    w.corrected_panel._corrected_list.value = [(2,)]
    w.corrected_panel._jump_button.native.click()
    assert viewer.dims.current_step[0] == 2

    w.corrected_panel._corrected_list.value = [(1,)]
    w.corrected_panel._unmark_button.native.click()
    assert CorrectedSlices.for_layer(masks).planes == [(2,)]


# ---------------------------------------------------------------------- a real run
def test_masks_of_a_renamed_image_are_chosen_without_error(widget, c2c12):
    """The image was renamed in the layer list, then Segment made "<new name> masks": the panel
    picks that layer (its masks list is rebuilt before the image list selects from it)."""
    viewer, w = widget
    images, labels = c2c12
    image = viewer.add_image(images, name="img")
    image.name = "embryo1"
    masks = viewer.add_labels(np.zeros_like(labels), name="embryo1 masks")
    panel = w.corrected_panel
    panel._image_combo.value = image
    assert panel._labels_combo.value is masks


def test_the_image_follows_the_masks_chosen(widget, c2c12):
    """Two images of one size (two channels of one file): the masks of the second are paired with
    the second, whichever image the list showed first."""
    viewer, w = widget
    images, labels = c2c12
    first = viewer.add_image(images, name="chan [DAPI]")
    second = viewer.add_image(images[:, ::-1], name="chan [GFP]")
    panel = w.corrected_panel
    panel._image_combo.value = first
    masks = viewer.add_labels(np.zeros_like(labels), name="chan [GFP] masks")  # Segment made it
    assert panel._labels_combo.value is masks and panel._image_combo.value is second
    other = viewer.add_labels(np.zeros_like(labels), name="chan [DAPI] masks")
    panel._labels_combo.value = masks
    assert panel._image_combo.value is second
    panel._labels_combo.value = other
    assert panel._image_combo.value is first


def test_examples_of_two_images_are_neither_mixed_nor_doubled_nor_silently_left_out(widget, c2c12, notifications):
    """The masks of one image chosen with another image are refused (pos2's pixels trained with pos1's
    labels); slices given twice (the corrected pair added again under More examples) count once (a
    held-out slice's twin was trained on); corrected slices of masks not in the run are said."""
    viewer, w = widget
    images, labels = c2c12
    pos1, masks1 = _add_pair(viewer, images, labels.copy(), name="pos1")
    pos2, masks2 = _add_pair(viewer, images[:, ::-1].copy(), labels[:, ::-1].copy(), name="pos2")
    panel = w.corrected_panel
    for masks in (masks1, masks2):
        masks.paint((0, 30, 30), 90)  # a correction in each
    panel._labels_combo.value = masks1
    assert [p for p in panel.corrections.planes] == [(0,)]
    viewer.layers.remove(masks2)
    panel._image_combo.value = pos2  # pos2 has no masks now: the panel keeps pos1's
    assert panel._labels_combo.value is masks1
    with pytest.raises(ValueError, match="'pos1 masks' holds the masks of 'pos1', not of 'pos2'"):
        w.gather_examples()
    panel._image_combo.value = pos1
    w.examples_panel.add_layer_pair(pos1, masks1)  # the same slices again
    assert [e.source for e in w.gather_examples()] == ["'pos1 masks', slice 0"]
    masks2 = viewer.add_labels(labels[:, ::-1].copy(), name="pos2 masks")
    masks2.paint((1, 30, 30), 91)
    panel._labels_combo.value = masks1
    assert panel._image_combo.value is pos1
    assert [e.source for e in w.gather_examples()] == ["'pos1 masks', slice 0"]
    assert any("corrected in 'pos2 masks' are not in this run" in m for m in notifications)


def test_a_second_image_segmented_leaves_the_corrected_masks_chosen(widget, c2c12):
    """A second image segmented to look at it made Fine-tune switch to its new, empty masks, and
    Start said "No corrected slice yet"; when the chosen masks hold none, Start says where they are."""
    viewer, w = widget
    images, labels = c2c12
    _image, masks1 = _add_pair(viewer, images, labels.copy(), name="pos1")
    masks1.paint((1, 30, 30), 90)  # the user's correction
    panel = w.corrected_panel
    assert panel._labels_combo.value is masks1 and panel.corrections.planes == [(1,)]
    _add_pair(viewer, images[:, ::-1].copy(), np.zeros_like(labels), name="pos2")  # what Segment makes
    assert panel._labels_combo.value is masks1
    assert [e.source for e in w.gather_examples()] == ["'pos1 masks', slice 1"]
    panel._image_combo.value = viewer.layers["pos2"]  # chosen by hand: Start names the corrected masks
    with pytest.raises(ValueError, match="the slices you corrected are in 'pos1 masks'"):
        w.gather_examples()


def test_training_keeps_gui_alive_saves_and_resegments(widget, c2c12, qtbot, base_model):
    """Train in the worker while a QTimer ticks and the user paints; the model is saved with
    its metadata, listed, and the current (uncorrected) slice is segmented again."""
    from qtpy.QtCore import QTimer

    viewer, w = widget
    images, labels = c2c12
    truth = labels.copy()
    _image, masks = _add_pair(viewer, images, labels.copy())
    tracker = CorrectedSlices.for_layer(masks)
    viewer.dims.set_current_step(0, 0)
    w.corrected_panel._mark_button.native.click()  # slice 0: the ground truth, accepted as correct
    viewer.dims.set_current_step(0, 2)
    masks.data[2] = 77  # what a segmentation left there (not a correction)
    base_bytes = base_model.read_bytes()
    w.settings_panel._steps.value = 12

    trained = []
    w.model_trained.connect(trained.append)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(w.run_panel._worker is not None))
    painted_while_running = []

    def paint_now():
        # (the panel's own flag, cleared on the main thread when the run ends: the worker's is cleared on
        # its thread, and the run could end between the first step's wait and this line)
        painted_while_running.append(w.run_panel.is_running)
        masks.paint((1, 64, 64), 9)  # the brush on slice 1 during training

    timer.start(10)
    w.run_panel._start_button.native.click()
    run = w.run_panel
    assert run._worker is not None and not run._start_button.enabled and run._stop_button.enabled
    qtbot.waitUntil(lambda: len(w.run_panel.curves.history["step"]) >= 1, timeout=60_000)
    paint_now()
    _wait(qtbot, w)
    timer.stop()

    # the Qt event loop kept running during training, and painting took effect at once
    assert sum(ticks) >= 5
    assert painted_while_running == [True]
    assert masks.data[1, 64, 64] == 9
    assert tracker.planes == [(0,), (1,)]

    # the new model: saved, listed, with metadata; the base model untouched
    assert trained and Path(trained[0]).name == "base-tuned.pt"
    assert "base-tuned" in _user_models()
    assert base_model.read_bytes() == base_bytes
    from napari_unet.core.checkpoint import read_model_file

    model = read_model_file(trained[0])
    meta = model.metadata
    assert meta["name"] == "base-tuned" and meta["base_model"] == "base"
    assert meta["date"] and meta["steps"] == 12 and meta["n_examples"] == 1
    assert meta["examples"] == ["'c2c12 masks', slice 0"]
    assert "val_ap50" in meta
    assert w.run_panel.curves.history["loss"] and all(np.isfinite(w.run_panel.curves.history["loss"]))
    assert w.run_panel._progress.value == 1000
    # the status says which weights were kept (step 0 = the base, or the best step and by what)
    kept, training = meta["training"]["selected_step"], meta["training"]
    best = w.run_panel._best_label.value
    if training.get("n_val_objects") == 0:  # no AP measured: no "best AP" shown
        assert best == "– (no object was held out for validation)"
    else:
        assert best.startswith("validation AP@0.5")
        assert ("chosen by validation loss" in best) == (training.get("selection_metric") == "loss")
    assert w.run_panel._status.value.startswith("Saved 'base-tuned' after 12 steps")
    if training["selected"] == "latest":  # this 128 x 128 crop has few cells: none may be held out
        assert training["n_val_objects"] == 0
        assert "latest weights (no object was held out" in w.run_panel._status.value
    elif kept == 0:
        assert "starting weights" in w.run_panel._status.value
    else:
        assert f"step {kept} (best" in w.run_panel._status.value
    assert trained[0] in w.settings_panel._base_model.choices  # listed for the next round
    assert w.settings_panel._name.value == "base-tuned-2"  # the next run gets a fresh name

    # the current slice (2) was segmented again by the new model, through the Segment widget
    # (docked for it, as none was there); corrected slices kept
    segment = get_widget(viewer, "segment")
    assert segment is not None and segment._model_combo.value == trained[0]
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    assert not (masks.data[2] == 77).all()
    np.testing.assert_array_equal(masks.data[0], truth[0])
    assert masks.data[1, 64, 64] == 9


def test_after_training_on_the_only_corrected_slice_the_next_one_is_segmented(widget, c2c12, qtbot, notifications):
    """The slice shown is the only corrected one: the re-segmentation moves to the next slice
    instead of saying "Nothing to segment", and says which."""
    viewer, w = widget
    images, labels = c2c12
    _image, masks = _add_pair(viewer, images, labels.copy())
    masks.data[1:] = 77  # what an earlier segmentation left there
    viewer.dims.set_current_step(0, 0)
    w.corrected_panel._mark_button.native.click()  # slice 0, the one shown, is the only example
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    segment = get_widget(viewer, "segment")
    assert segment is not None
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    message = "Slice 0 is one you corrected: segmenting slice 1 instead."
    assert message in notifications
    assert viewer.dims.current_step[0] == 1
    assert not (masks.data[1] == 77).all() and (masks.data[2] == 77).all()
    np.testing.assert_array_equal(masks.data[0], labels[0])
    assert segment._status.value.startswith("Done")


def test_the_image_learnt_from_is_segmented_again_not_the_one_segment_shows(widget, c2c12, qtbot, notifications):
    viewer, w = widget
    images, labels = c2c12
    _a, a_masks = _add_pair(viewer, images, labels.copy(), name="a")
    b, b_masks = _add_pair(viewer, images, labels.copy(), name="b")
    a_masks.data[:] = 55  # what the user has on image a: never touched by a run on b
    b_masks.data[1:] = 77
    _dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment._image_combo.value = viewer.layers["a"]  # Segment shows image a
    w.corrected_panel._image_combo.value = b
    viewer.dims.set_current_step(0, 0)
    w.corrected_panel._mark_button.native.click()  # slice 0 of b is the example
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    assert (a_masks.data == 55).all()
    assert not (b_masks.data[1] == 77).all() and segment._image_combo.value.name == "b"
    assert not [m for m in notifications if m.startswith("Segment")]
    assert w._trained_on() is b  # held weakly: a removed image does not stay in memory for it


def test_a_model_that_kept_its_starting_weights_is_chosen_not_run_again(widget, c2c12, qtbot, notifications):
    """A run whose steps were not clearly better saves the weights it started from: segmenting again
    with them gave the same masks after seconds of work; Segment now only chooses the model."""
    viewer, w = widget
    images, labels = c2c12
    image, masks = _add_pair(viewer, images, labels.copy())
    _dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.corrected_panel._mark_button.native.click()
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    path = Path(_user_models()[w.run_panel._run_name])
    before = masks.data.copy()
    w.run_panel.saved_start_weights = True  # (as a run that kept them leaves it)
    w.resegment_current_view(path)
    assert segment._worker is None and "new model is chosen" in segment._status.value
    assert Path(segment._model_combo.value).resolve() == path.resolve()
    np.testing.assert_array_equal(masks.data, before)


def test_after_training_on_files_alone_segment_only_chooses_the_model(widget, c2c12, qtbot, tmp_path, notifications):
    viewer, w = widget
    images, labels = c2c12
    for i in range(2):
        tifffile.imwrite(tmp_path / f"f{i}.tif", images[i])
        tifffile.imwrite(tmp_path / f"f{i}_masks.tif", labels[i])
    assert w.examples_panel.add_example_folders(tmp_path, tmp_path) == 2
    name = w.settings_panel.model_name
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    segment = get_widget(viewer, "segment")
    assert segment is not None and segment._worker is None
    assert "new model is chosen" in segment._status.value
    assert Path(segment._model_combo.value).resolve() == Path(_user_models()[name]).resolve()
    assert not [m for m in notifications if "open an image first" in m]


def test_labels_that_look_partial_are_said_when_the_run_starts(widget, data_dir, qtbot, notifications):
    """A labels layer of a whole C2C12 frame with 2 of its 8 cells drawn: a warning says that the
    slice looks labelled in part and is learnt from where it is known (the run goes on); with
    "Cells labelled: All" the run takes the user's word and says nothing."""
    from napari_unet.core.catalog import resolve_model_path

    viewer, w = widget
    image = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif", key=0)
    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif", key=0).astype(np.int32)
    ids = [i for i in np.unique(labels) if i][:2]
    _add_pair(viewer, image, np.where(np.isin(labels, ids), labels, 0))
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._base_model.value = str(resolve_model_path("cells"))
    w.settings_panel._steps.value = 2
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert any("labelled in part" in n and "2 labelled" in n for n in notifications)
    segment = get_widget(viewer, "segment")  # segments the view again with the new model: let it finish
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    assert w.settings_panel.training_settings()["labelled"] == "auto"
    notifications.clear()
    w.settings_panel._labelled.value = "all"
    assert w.settings_panel.training_settings()["labelled"] == "all"
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert not any("labelled in part" in n for n in notifications)
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)


def test_a_name_that_exists_is_replaced_only_after_asking(widget, c2c12, qtbot, base_model, notifications):
    """Fine-tuning under the name of an existing model (here the base model itself) asks
    first: "Keep it" starts nothing and leaves the file alone, "Replace" trains and replaces it."""
    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    before = base_model.read_bytes()
    w.settings_panel._name.value = "base"
    w.run_panel._start_button.native.click()
    box = w.replace_question
    assert w.run_panel._worker is None  # nothing runs while the question is open
    assert "'base' exists" in box.text() and "the base model of this run" in box.text()
    w.run_panel._start_button.native.click()  # a second Start does not ask twice
    assert w.replace_question is box
    _answer(w, replace=False)
    assert w.replace_question is None and w.run_panel._worker is None
    assert w.run_panel._status.value.startswith("Not started: 'base' is taken")
    assert base_model.read_bytes() == before

    w.run_panel._start_button.native.click()
    _answer(w, replace=True)
    assert w.run_panel._worker is not None
    _wait(qtbot, w)
    assert base_model.read_bytes() != before
    from napari_unet.core.checkpoint import read_model_file

    assert read_model_file(base_model).metadata["steps"] == FAST["steps"]
    assert "Fine-tuned model saved as 'base'." in notifications
    segment = get_widget(viewer, "segment")  # segments the view again with it: let it finish
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)


def test_a_model_saved_under_the_name_during_the_run_is_kept(widget, c2c12, qtbot, base_model, notifications):
    """The name was free at Start (nothing asked); another model is saved under it while the run
    trains (the CLI, another napari): it is kept, the tuned model goes to NAME-2, and both say so."""
    from napari_unet.core.checkpoint import read_model_file, user_model_path

    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._steps.value = 60
    w.settings_panel._name.value = "mine"
    w.run_panel._start_button.native.click()
    assert w.replace_question is None  # free at Start
    qtbot.waitUntil(lambda: len(w.run_panel.curves.history["step"]) >= 1, timeout=60_000)
    other = user_model_path("mine")
    other.write_bytes(base_model.read_bytes())  # saved meanwhile by something else
    _wait(qtbot, w)
    assert other.read_bytes() == base_model.read_bytes()  # not replaced unasked
    tuned = read_model_file(user_model_path("mine-2"))
    assert tuned.metadata["name"] == "mine-2" and tuned.metadata["steps"] > 0
    assert any("fine-tuned model is saved as 'mine-2'" in n for n in notifications)
    assert "Saved 'mine-2'" in w.run_panel._status.value and "is kept" in w.run_panel._status.value
    segment = get_widget(viewer, "segment")  # segments the view again with it: let it finish
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)


def test_closing_the_viewer_mid_training_keeps_the_best_model(widget, c2c12, qtbot, caplog):
    """viewer.close() during a long run: the training stops after its current step and the
    best model so far is saved before close() returns; nothing is drawn into the closed widget."""
    import logging

    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._steps.value = 100_000
    w.run_panel._start_button.native.click()
    qtbot.waitUntil(lambda: len(w.run_panel.curves.history["step"]) >= 2, timeout=60_000)
    assert "base-tuned" not in _user_models()
    with caplog.at_level(logging.INFO, logger="napari_unet"):
        viewer.close()
        assert "base-tuned" in _user_models()  # saved before close() returned
        qtbot.wait(300)  # the worker's last signals are delivered: to the log only
    from napari_unet.core.checkpoint import read_model_file

    steps = read_model_file(_user_models()["base-tuned"]).metadata["steps"]
    assert 2 <= steps < 1000
    assert "best model so far" in caplog.text and "base-tuned.pt" in caplog.text


def test_closing_the_window_just_after_start_does_not_hold_it(widget, c2c12, qtbot):
    """Start, then the window closed in the same turn of the event loop (as a click can be): the
    close waited 30 s (CLOSE_WAIT_SECONDS) for a run whose thread could not begin meanwhile. napari's
    list of running tasks (what its dialog on closing says) names the job."""
    from qtpy.QtCore import QThreadPool, QTimer

    from napari_unet.widgets._finetune.run import CLOSE_WAIT_SECONDS

    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._steps.value = 100_000
    took: list[float] = []
    tasks: list[str] = []

    def start_and_close() -> None:
        w.run_panel._start_button.native.click()
        tasks.extend(viewer.window._task_status_manager.get_status())
        started = time.perf_counter()
        viewer.close()
        took.append(time.perf_counter() - started)

    QTimer.singleShot(0, start_and_close)
    qtbot.waitUntil(lambda: bool(took), timeout=120_000)
    assert QThreadPool.globalInstance().waitForDone(120_000)
    qtbot.wait(300)  # (the worker's last signals: to the log only)
    assert took[0] < CLOSE_WAIT_SECONDS / 2, took  # not the wait for a run that could not begin
    assert any("napari-unet: Fine-tune of 'base-tuned'" in t for t in tasks), tasks
    assert not any("<function" in t for t in tasks), tasks


# ---------------------------------------------------------------------- bad inputs
def test_no_corrected_slice_gives_a_clear_notification(widget, c2c12, notifications):
    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("No corrected slice yet" in m for m in notifications)
    assert w.run_panel._start_button.enabled


def test_removing_the_corrected_masks_layer_clears_the_list_and_start_says_so(widget, c2c12, notifications):
    """The masks layer the user corrected goes (the only Labels layer: the combo emits no change):
    its slices leave the list, and Start asks for a masks layer instead of raising in the GUI."""
    viewer, w = widget
    _image, masks = _add_pair(viewer, *c2c12)
    CorrectedSlices.for_layer(masks).mark((0,))
    assert w.corrected_panel.corrections.planes == [(0,)]
    viewer.layers.remove(masks)
    assert w.corrected_panel.corrections is None
    assert "none yet" in w.corrected_panel._corrected_info.value
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("No corrected slice yet" in m for m in notifications)
    # and should the list still hold slices of a layer that is gone, Start says what to choose
    w.corrected_panel._tracker = CorrectedSlices.for_layer(masks)
    with pytest.raises(ValueError, match="choose the masks layer"):
        w.corrected_panel.examples()


def test_steps_and_time_budget_settings(widget, c2c12, notifications):
    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._steps.value = 0
    w.settings_panel._time_budget.value = 0.0
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("set a number of steps or a time budget" in m for m in notifications)
    w.settings_panel._time_budget.value = 1.5
    # patch and batch: Auto by default (the network's own: 128 x 8 for the built-in models)
    from napari_unet.widgets._finetune.settings import TrainingSettingsPanel

    fresh = TrainingSettingsPanel()
    defaults = fresh.training_settings()
    assert defaults["patch_size"] is None and defaults["batch_size"] is None
    for box in (fresh._patch_size, fresh._batch_size):  # shown as "Auto" at 0, the minimum
        assert box.value == 0 == box.native.minimum() and box.native.lineEdit().text() == "Auto"
    w.settings_panel._patch_size.value = 16
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("patch size to Auto (0) or to 32 pixels or more" in m for m in notifications)
    w.settings_panel._patch_size.value = 192
    w.settings_panel._advanced._collapsible.expand(animate=False)
    w.settings_panel._batch_size.value = 3
    settings = w.training_settings()
    assert settings["steps"] is None and settings["time_budget"] == 90.0
    assert settings["batch_size"] == 3 and settings["patch_size"] == 192
    assert settings["augment"] is True and settings["device"] == "cpu"


def test_all_background_correction_is_refused(widget, c2c12, notifications):
    viewer, w = widget
    images, _labels = c2c12
    _image, masks = _add_pair(viewer, images, np.zeros((3, 128, 128), np.int32))
    masks.data[1, 10:20, 10:20] = 3  # one wrong object from the segmentation
    masks.fill((1, 12, 12), 0)  # the user removes it: slice 1 has no cells at all
    assert CorrectedSlices.for_layer(masks).planes == [(1,)]
    assert not masks.data[1].any()
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("contain no cells" in m for m in notifications)


def test_an_inverted_mask_is_refused_with_its_reason(widget, qtbot, c2c12, notifications):
    """A slice whose background was painted as one object (a bucket fill of the background, an inverted
    mask): the model learnt to take most of an image for cells, unsaid (a review). Fine-tune says why."""
    viewer, w = widget
    images, _labels = c2c12
    cells = np.zeros(images.shape, np.int32)
    for k, (y, x) in enumerate([(20, 20), (20, 80), (80, 30), (90, 90)], start=1):
        cells[:, y : y + 14, x : x + 12] = k
    inverted = np.where(cells > 0, 0, 1).astype(np.int32)  # the cells 0, the rest one object
    _image, masks = _add_pair(viewer, images, inverted)
    CorrectedSlices.for_layer(masks).update([(0,)])
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert any("the background labelled?" in m for m in notifications), notifications


def test_image_and_labels_of_different_shapes(widget, c2c12, notifications):
    viewer, w = widget
    images, labels = c2c12
    viewer.add_image(images, name="c2c12")
    masks = viewer.add_labels(labels[:, :100, :100].copy(), name="c2c12 masks")
    masks.paint((0, 50, 50), 3)
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("must have the same shape" in m for m in notifications)


def test_labels_of_floats_are_refused(widget, c2c12, notifications, tmp_path):
    viewer, w = widget
    images, labels = c2c12
    image = viewer.add_image(images, name="c2c12")
    # label files often open as Image layers; these hold fractions, not label ids
    floats = viewer.add_image(labels.astype(np.float32) * 0.5, name="float labels")
    w.examples_panel._extra_image_combo.value = image
    w.examples_panel._extra_labels_combo.value = floats
    w.examples_panel._add_pair_button.native.click()
    assert any("floating-point values with fractions" in m for m in notifications)
    assert w.examples_panel._extra_sources == []

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", images[0])
    tifffile.imwrite(tmp_path / "lab" / "a_masks.tif", labels[0].astype(np.float32) + 0.25)
    w.examples_panel._image_folder.value = tmp_path / "img"
    w.examples_panel._labels_folder.value = tmp_path / "lab"
    n_before = len(notifications)
    w.examples_panel._add_folder_button.native.click()
    _wait_for_folders(w)
    # (read as napari-unet train reads files: the same message)
    assert any("fractional or non-finite values" in m for m in notifications[n_before:])
    assert w.examples_panel._extra_sources == []


def test_extra_examples_from_layers_and_folders(widget, c2c12, tmp_path, notifications):
    viewer, w = widget
    images, labels = c2c12
    _image, masks = _add_pair(viewer, images, labels.copy())
    masks.paint((0, 5, 5), 1)
    other_image = viewer.add_image(images[1], name="other")
    other_labels = viewer.add_image(labels[1].astype(np.uint16), name="other labels")  # a tif opened as Image
    w.examples_panel._extra_image_combo.value = other_image
    w.examples_panel._extra_labels_combo.value = other_labels
    w.examples_panel._add_pair_button.native.click()
    other_labels.name = "other masks"  # renamed after adding: the pair follows it
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        tifffile.imwrite(tmp_path / "img" / f"f{i}.tif", images[i])
        tifffile.imwrite(tmp_path / "lab" / f"f{i}_labels.tif", labels[i].astype(np.uint16))
    tifffile.imwrite(tmp_path / "img" / "unlabelled.tif", images[2])
    w.examples_panel._image_folder.value = tmp_path / "img"
    w.examples_panel._labels_folder.value = tmp_path / "lab"
    w.examples_panel._add_folder_button.native.click()
    # read in a worker (502 pairs held the window 3.3 s): the button is off meanwhile
    assert w.examples_panel.reading is not None and not w.examples_panel._add_folder_button.enabled
    w.run_panel._start_button.native.click()  # (it trained without the folder, "Added 2 examples" said after)
    assert not w.run_panel.is_running and "still being read" in w.run_panel._status.value
    assert any("still being read" in m for m in notifications)
    _wait_for_folders(w)
    assert len(w.examples_panel._extra_list.choices) == 2
    assert any("Left out 1 image(s) without a labels file: unlabelled.tif" in m for m in notifications)

    examples = w.gather_examples()
    assert [e.source for e in examples] == [
        "'c2c12 masks', slice 0", "'other masks'", "f0.tif", "f1.tif",
    ]
    np.testing.assert_array_equal(examples[2].labels, labels[0])
    w.examples_panel._extra_list.value = [0]
    w.examples_panel._remove_extra_button.native.click()
    assert len(w.gather_examples()) == 3
    # a second folder of the same name: its own row, removable on its own
    (tmp_path / "other" / "img").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "other" / "img" / "g0.tif", images[2])
    tifffile.imwrite(tmp_path / "other" / "img" / "g0_labels.tif", labels[2].astype(np.uint16))
    w.examples_panel._image_folder.value = tmp_path / "other" / "img"
    w.examples_panel._labels_folder.value = tmp_path / "other" / "img"
    w.examples_panel._add_folder_button.native.click()
    _wait_for_folders(w)
    rows = w.examples_panel._extra_list.native
    assert rows.count() == 2 and rows.item(0).text() != rows.item(1).text()


def test_stop_right_after_start(widget, c2c12, qtbot, notifications):
    viewer, w = widget
    _image, masks = _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._steps.value = 100_000
    t0 = time.perf_counter()
    w.run_panel._start_button.native.click()
    w.run_panel._stop_button.native.click()
    # (it stays enabled, so that the keyboard focus stays on it: disabled, it went to the dock's title bar)
    assert w.run_panel._stop_button.text == "Stopping…"
    _wait(qtbot, w, timeout=60_000)
    assert w.run_panel._stop_button.text == "Stop"
    assert time.perf_counter() - t0 < 60
    assert w.run_panel._start_button.enabled and not w.run_panel._stop_button.enabled
    assert len(w.run_panel.curves.history["step"]) < 100  # it did not run on
    assert w.run_panel._progress.value < 1000  # the bar shows how far it got, not a full run
    if not w.run_panel.curves.history["step"]:
        assert "base-tuned" not in _user_models()
        assert any("no model was saved" in m for m in notifications)
    else:  # the stop came after some steps: the best model so far is saved
        assert "base-tuned" in _user_models()


def test_error_inside_the_worker_is_a_notification(widget, c2c12, qtbot, notifications, base_model):
    viewer, w = widget
    _image, masks = _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    base_model.write_bytes(b"this is not a model anymore")  # damaged after it was listed
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is not None
    _wait(qtbot, w)
    assert any(m.startswith("Fine-tuning failed:") and "not a napari-unet model" in m for m in notifications)
    assert all("\n" not in m for m in notifications)  # one line, no traceback
    assert w.run_panel._status.value.startswith("Failed")
    assert w.run_panel._start_button.enabled and not w.run_panel._stop_button.enabled
    masks.paint((2, 10, 10), 4)  # the GUI keeps working
    assert w.corrected_panel._corrected_info.value.startswith("2:")


def test_unwritable_model_folder_refuses_to_start(widget, c2c12, notifications, monkeypatch, tmp_path, base_model):
    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the model folder should be")
    # mkdir fails here even for root, unlike a chmod'ed folder
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(blocker / "models"))
    before = base_model.read_bytes()
    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is None
    assert any("cannot be written" in m and "NAPARI_UNET_MODELS" in m for m in notifications)
    assert base_model.read_bytes() == before


def test_save_failure_keeps_previous_model_and_save_again(widget, c2c12, qtbot, notifications, base_model):
    """The model folder disappears during training (disk unplugged, replaced by a file):
    a clear error, the previous model of that name intact, and 'Save again' works later."""
    from napari_unet.core.checkpoint import read_model_file, save_model

    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    folder = base_model.parent
    previous = save_model(read_model_file(base_model), folder / "mine.pt")
    previous_bytes = previous.read_bytes()
    w.settings_panel._base_model.value = str(base_model)
    w.settings_panel._name.value = "mine"
    w.settings_panel._steps.value = 5000
    moved, break_folder = _folder_that_breaks(w, folder)

    w.run_panel._start_button.native.click()
    _answer(w, replace=True)  # "mine" exists: the widget asks first
    w.run_panel._worker.yielded.connect(break_folder)
    _wait(qtbot, w)
    assert any(m.startswith("Could not save the fine-tuned model") and "Save again" in m for m in notifications)
    assert not w.run_panel._save_again_button.native.isHidden()
    assert (moved / "mine.pt").read_bytes() == previous_bytes  # the previous model is intact
    assert sorted(p.name for p in moved.iterdir()) == ["base.pt", "mine.pt"]  # no temp files

    folder.unlink()
    os.replace(moved, folder)
    w.run_panel._save_again_button.native.click()
    assert w.run_panel._save_again_button.native.isHidden()
    assert (folder / "mine.pt").read_bytes() != previous_bytes
    assert read_model_file(folder / "mine.pt").metadata["base_model"] == "base"


def test_save_again_keeps_a_model_saved_under_the_name_meanwhile(widget, c2c12, qtbot, notifications, base_model):
    """The name was free at Start (nothing asked) and the save failed; before 'Save again' another
    model was saved under that name (the CLI, another napari): it is kept, as at the run's end, and
    the tuned model goes to NAME-2 (Save again replaced it unasked)."""
    from napari_unet.core.checkpoint import read_model_file

    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    folder = base_model.parent
    w.settings_panel._name.value = "mine"
    w.settings_panel._steps.value = 5000
    moved, break_folder = _folder_that_breaks(w, folder)

    w.run_panel._start_button.native.click()
    assert w.replace_question is None  # free at Start
    w.run_panel._worker.yielded.connect(break_folder)
    _wait(qtbot, w)
    assert not w.run_panel._save_again_button.native.isHidden()
    folder.unlink()
    os.replace(moved, folder)
    other = folder / "mine.pt"
    other.write_bytes(base_model.read_bytes())  # saved meanwhile by something else
    w.run_panel._save_again_button.native.click()
    assert w.run_panel._save_again_button.native.isHidden()
    assert other.read_bytes() == base_model.read_bytes()  # not replaced unasked
    tuned = read_model_file(folder / "mine-2.pt")
    assert tuned.metadata["name"] == "mine-2" and tuned.metadata["steps"] > 0
    assert any("fine-tuned model is saved as 'mine-2'" in n for n in notifications)


# ---------------------------------------------------------------------- manage models
def test_rename_delete_with_confirmation_and_export(widget, base_model, tmp_path, notifications, qtbot):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    from napari_unet.core.checkpoint import read_model_file

    viewer, w = widget
    _dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment._model_combo.reset_choices()
    segment._model_combo.value = str(base_model)
    segment._threshold.value, segment._min_size.value = 0.2, 3  # the user's own
    from napari_unet.io._corrected import record_model, recorded_model

    made = viewer.add_labels(np.zeros((8, 8), np.int32), name="earlier masks")
    record_model(made.metadata, base_model)  # (masks this model made, to be saved later)
    w.models_panel._manage_combo.reset_choices()
    assert w.models_panel._manage_combo.value == "base"
    w.models_panel._rename_edit.value = "nuclei v2"
    w.models_panel._rename_button.native.click()
    assert set(_user_models()) == {"nuclei v2"}
    assert recorded_model(made.metadata)["name"] == "nuclei v2"  # (saved and reopened, they propose it)
    # chosen as the base model here and in Segment: it stays chosen there, under its new name, and
    # Segment keeps the threshold and min. size the user set (the model's own came back)
    assert Path(w.settings_panel._base_model.value).stem == "nuclei v2"
    assert Path(segment._model_combo.value).stem == "nuclei v2"
    assert (segment._threshold.value, segment._min_size.value) == (0.2, 3)
    assert read_model_file(_user_models()["nuclei v2"]).metadata["name"] == "nuclei v2"
    base_list = w.settings_panel._base_model.native
    assert "nuclei v2 (yours)" in [base_list.itemText(i) for i in range(base_list.count())]

    w.models_panel._rename_edit.value = "bad/name"
    w.models_panel._rename_button.native.click()
    assert any("is not usable" in m for m in notifications)

    # a file named as downloads are ("… (1)"), not a name one could type: renamed all the same
    import shutil

    odd = shutil.copy(_user_models()["nuclei v2"], Path(_user_models()["nuclei v2"]).with_name("my cells (1).pt"))
    w.models_panel.refresh()
    w.models_panel._manage_combo.value = "my cells (1)"
    w.models_panel._rename_edit.value = "my cells"
    w.models_panel._rename_button.native.click()
    assert "my cells" in _user_models() and not Path(odd).exists()
    from napari_unet.core.catalog import delete_model

    delete_model("my cells")
    w.models_panel.refresh()

    out = w.export_model(tmp_path / "shared copy")
    assert out == tmp_path / "shared copy.pt"
    assert out.read_bytes() == _user_models()["nuclei v2"].read_bytes()

    def answer(button):
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            box.button(button).click()

    QTimer.singleShot(200, lambda: answer(QMessageBox.No))
    w.models_panel._delete_button.native.click()
    assert "nuclei v2" in _user_models()  # "No" keeps it
    QTimer.singleShot(200, lambda: answer(QMessageBox.Yes))
    w.models_panel._delete_button.native.click()
    assert _user_models() == {}
    assert w.models_panel._manage_combo.choices == ()
    assert all(Path(v).exists() for v in segment._model_combo.choices)  # Segment no longer offers it


def test_after_training_on_a_corrected_2d_image_it_is_not_segmented_again_nor_warned(widget, c2c12, qtbot,
                                                                                       notifications):
    viewer, w = widget
    images, labels = c2c12
    _image, _masks = _add_pair(viewer, images[0], labels[0].copy())
    w.corrected_panel._mark_button.native.click()
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    segment = get_widget(viewer, "segment")
    assert segment is not None and segment._worker is None
    assert "not segmented again" in segment._status.value
    assert not [m for m in notifications if "Skipped" in m]


def test_marking_an_empty_slice_says_what_it_teaches(widget, c2c12, notifications):
    viewer, w = widget
    images, labels = c2c12
    empty = labels.copy()
    empty[2] = 0
    _add_pair(viewer, images, empty)
    viewer.dims.set_current_step(0, 2)
    w.corrected_panel._mark_button.native.click()
    assert any("holds no object" in m for m in notifications)
    assert w.corrected_panel.corrections.planes == [(2,)]


def test_mark_refuses_a_slice_the_stack_does_not_have(make_napari_viewer, data_dir, notifications):
    """A 4-frame masks layer beside a 10-frame image, the slider at frame 7: Mark does not mark
    the last frame of the short one."""
    viewer = make_napari_viewer()
    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:, :96, :96]
    viewer.add_image(frames, name="long")
    masks = viewer.add_labels(np.zeros((4, 96, 96), np.int32), name="short masks")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    viewer.dims.set_current_step(0, 7)
    widget.corrected_panel._labels_combo.value = masks
    widget.corrected_panel._mark_button.native.click()
    assert CorrectedSlices.for_layer(masks).planes == []
    assert any("'short masks' has no slice" in m for m in notifications)


def test_base_model_follows_the_model_segment_uses_until_the_user_picks_one(make_napari_viewer):
    """A phase-contrast image segmented with `cells`: fine-tuning starts from `cells` (not the
    first model of the list), and from the model just fine-tuned once Segment uses it; a base
    the user picks stays."""
    from pathlib import Path as P

    from napari_unet.core.catalog import resolve_model_path

    viewer = make_napari_viewer()
    _d1, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment.select_model(resolve_model_path("cells"))
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    base = lambda: P(tune.settings_panel.base_model_path).resolve()  # noqa: E731
    assert base() == P(resolve_model_path("cells")).resolve()
    assert tune.settings_panel.model_name.startswith("cells-tuned")
    segment.select_model(resolve_model_path("nuclei"))
    assert base() == P(resolve_model_path("nuclei")).resolve()
    tune.settings_panel.set_running(True)  # during a run its base and name stay as shown ...
    segment.select_model(resolve_model_path("cells"))
    assert base() == P(resolve_model_path("nuclei")).resolve()
    assert tune.settings_panel.model_name.startswith("nuclei-tuned")
    tune.settings_panel.set_running(False)  # ... and the model Segment took meanwhile is followed after it
    assert base() == P(resolve_model_path("cells")).resolve()
    tune.settings_panel._base_model.value = str(resolve_model_path("nuclei-fluo"))  # the user's own choice
    segment.select_model(resolve_model_path("nuclei"))
    segment.select_model(resolve_model_path("cells"))
    segment.select_model(resolve_model_path("nuclei"))
    assert base() == P(resolve_model_path("nuclei-fluo")).resolve()


def test_a_model_file_added_in_segment_is_the_base_model(make_napari_viewer, tiny_model_path, tmp_path):
    """Segment > Add model file...: Fine-tune builds on that model (it trained `nuclei`, the first of
    its list, and Segment then left the added model); another network's BioImage.IO package, which
    cannot be fine-tuned, is not taken as the base."""
    import shutil
    from pathlib import Path as P

    viewer = make_napari_viewer()
    _d1, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    colleague = P(shutil.copy(tiny_model_path, tmp_path / "colleague.pt"))
    segment.add_model_file(colleague)
    assert P(tune.settings_panel.base_model_path).resolve() == colleague.resolve()
    assert tune.settings_panel.model_name.startswith("colleague-tuned")
    package = tmp_path / "other"  # a package of another network (no napari-unet section)
    package.mkdir()
    (package / "rdf.yaml").write_text("format_version: 0.5.3\ntype: model\nname: other\n")
    segment.add_model_file(package)
    assert P(tune.settings_panel.base_model_path).resolve() == colleague.resolve()


def test_deleting_the_model_segment_uses_goes_back_to_the_proposed_one(make_napari_viewer, data_dir):
    import shutil
    from pathlib import Path as P

    from napari_unet.core.catalog import delete_model, resolve_model_path, user_model_path

    viewer = make_napari_viewer()
    viewer.add_image(tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[0], name="phase")
    _d1, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    mine = user_model_path("my cells")
    mine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(resolve_model_path("cells"), mine)
    segment.select_model(mine)  # the user's choice
    delete_model("my cells")
    tune.refresh_models()  # what Manage models > Delete does next
    assert P(segment._model_combo.value).resolve() == P(resolve_model_path("cells")).resolve()  # proposed
    assert "'my cells' is gone" in segment._status.value and "'cells'" in segment._status.value


def test_a_layer_pair_leaves_out_the_slices_nobody_labelled(widget, c2c12, notifications):
    """A stack segmented slice by slice and added as a layer pair: its empty slices were never
    segmented, and are not taught as "no cells here"."""
    viewer, w = widget
    images, labels = c2c12
    partly = np.zeros_like(labels)
    partly[2] = labels[2]
    image, masks = _add_pair(viewer, images, partly, name="other")
    w.examples_panel.add_layer_pair(image, masks)
    examples = w.examples_panel.examples()
    assert len(examples) == 1
    assert any("left out" in m and f"{len(labels) - 1} slices with no labels" in m for m in notifications)


def test_a_corrected_slice_whose_objects_are_mostly_unedited_model_masks_is_said(widget, dsb_fluo_crop, qtbot,
                                                                                 notifications):
    """A slice is learnt whole: a few cells corrected in a model's masks, the rest left as they were,
    taught every one of them as right and every cell the model missed as background, unsaid (a
    review's first finding on partial corrections). Said now, naming how many objects lie away from
    the edits; not for labels of the user's own, nor where the edits span the slice."""
    from napari_unet.io._corrected import MASKS_KEY

    viewer, w = widget
    image, labels = dsb_fluo_crop
    n = len(np.unique(labels)) - 1
    assert n >= 12
    _image, masks = _add_pair(viewer, image, labels.copy())
    masks.metadata[MASKS_KEY] = True  # (masks Segment made: their objects are the model's)
    w.corrected_panel._image_combo.value = _image
    w.corrected_panel._labels_combo.value = masks
    masks.brush_size = 3
    masks.paint((5, 5), int(labels.max()) + 1)  # one cell drawn in a corner
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    said = [m for m in notifications if "lie away from your edits" in m]
    assert len(said) == 1 and "'c2c12 masks': " in said[0] and f" of {n + 1}" in said[0]
    assert "unmark the slice" in said[0]

    notifications.clear()  # labels of the user's own (not napari-unet's masks): every object theirs
    del masks.metadata[MASKS_KEY]
    w.settings_panel._name.value = "base-tuned-2"
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert not [m for m in notifications if "lie away from your edits" in m]


def test_the_unedited_note_needs_most_objects_away_from_the_edits(dsb_fluo_crop):
    from napari_unet.widgets._examples import UNEDITED_MIN, _objects_away, unedited_note

    _image, labels = dsb_fluo_crop
    n = len(np.unique(labels)) - 1
    assert _objects_away(labels, (0, 128, 0, 128)) == (0, n)  # edits spanning the slice: every object near
    away, total = _objects_away(labels, (0, 4, 0, 4))
    assert total == n and away >= n - 1
    assert unedited_note([("'a', slice 3", away, total)]).startswith("most of the model's objects in 1 corrected")
    assert unedited_note([("'a'", 0, n)]) is None
    assert unedited_note([("'a'", UNEDITED_MIN - 1, UNEDITED_MIN)]) is None  # (too few to say)


def test_the_best_weights_of_a_run_going_on_are_on_disk_until_it_ends(widget, c2c12, qtbot, base_model):
    """napari killed during fine-tuning (out of memory, a force-quit) kept nothing: the best weights so far
    are written as 'NAME unfinished' (listed with the user's models) and removed once the model is saved;
    one left by a run that did not end is kept (the next goes beside it)."""
    from napari_unet.core.checkpoint import read_model_file
    from napari_unet.widgets._training_job import _UnfinishedCopy

    keeper = _UnfinishedCopy("mine")
    keeper(read_model_file(base_model))
    assert "mine unfinished" in _user_models()
    assert read_model_file(_user_models()["mine unfinished"]).metadata["description"].startswith("The best weights")
    again = _UnfinishedCopy("mine")  # (a later run of that name: the one left is kept)
    assert again.path.name == "mine unfinished-2.pt"
    keeper.remove()
    assert "mine unfinished" not in _user_models()
    other = _UnfinishedCopy("mine")  # (two runs of one name at once, in two windows: a file each)
    assert other.path != again.path and again.path.exists() is False
    other.remove()
    again.remove()

    viewer, w = widget
    images, labels = c2c12
    _add_pair(viewer, images, labels.copy())[1].paint((0, 30, 30), 90)
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert w.run_panel._status.value.startswith("Saved")
    assert not [name for name in _user_models() if "unfinished" in name]


def test_an_edit_while_the_worker_reads_the_examples_is_said(widget, c2c12, qtbot, notifications):
    """The worker reads the corrected slices after Start (not to hold the window): a stroke or Ctrl+Z
    meanwhile was learnt as it was read, unsaid (an undone correction trained on as the truth)."""
    viewer, w = widget
    images, labels = c2c12
    _image, masks = _add_pair(viewer, images, labels.copy())
    masks.paint((0, 30, 30), 90)
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert w.run_panel._status.value.startswith("Saved")
    assert not any("changed while its slices were being read" in m for m in notifications)
    w.settings_panel._name.value = "base-tuned-2"
    w.run_panel._start_button.native.click()
    masks.undo()  # (in the window's thread, before it hears that the reading ended)
    _wait(qtbot, w)
    said = [m for m in notifications if "changed while its slices were being read" in m]
    assert len(said) == 1 and "'c2c12 masks'" in said[0] and "press Stop, then Start" in said[0]
    notifications.clear()  # a slice not learnt from, edited meanwhile: nothing to say
    w.settings_panel._name.value = "base-tuned-3"
    masks.redo()
    w.run_panel._start_button.native.click()
    masks.paint((2, 30, 30), 91)
    _wait(qtbot, w)
    assert not [m for m in notifications if "changed while its slices were being read" in m]


def test_start_reads_the_examples_in_the_training_worker(widget, c2c12, qtbot, notifications):
    """Start copies no slice in the window (64 corrected 2048 x 2048 slices held it 2.6 s; a layer
    pair opened lazily from its files 5.6 s): the training worker reads them, says the slices left
    out of a lazy pair, and refuses one that holds no cells ("Not started", nothing saved)."""
    import dask.array as da

    from napari_unet.widgets._examples import Example, ExampleToRead, LabelledSlicesToRead

    viewer, w = widget
    images, labels = c2c12
    _image, masks = _add_pair(viewer, images, labels.copy())
    masks.paint((0, 30, 30), 90)
    partly = np.zeros_like(labels)
    partly[2] = labels[2]
    lazy_image = viewer.add_image(da.from_array(images, chunks=(1, 128, 128)), name="lazy")
    lazy_labels = viewer.add_labels(da.from_array(partly, chunks=(1, 128, 128)), name="lazy ground truth")
    w.examples_panel.add_layer_pair(lazy_image, lazy_labels)
    items = w.gather_examples(read=False)
    assert [type(item) for item in items] == [ExampleToRead, LabelledSlicesToRead]
    # read now (scripts, tests): the same examples, the lazy pair's empty slices left out and said
    read = w.gather_examples()
    assert [ex.source for ex in read] == ["'c2c12 masks', slice 0", "'lazy ground truth', slice 2"]
    assert all(isinstance(ex, Example) for ex in read)
    np.testing.assert_array_equal(read[1].labels, labels[2])
    assert read[0].labels.base is None  # a copy: the masks may be painted while it trains
    notifications.clear()

    w.run_panel._start_button.native.click()
    assert w.run_panel._worker is not None and w.run_panel._status.value == "Reading the examples…"
    _wait(qtbot, w)
    assert w.run_panel._status.value.startswith("Saved")
    assert any("left out 2 slices with no labels" in m for m in notifications)
    from napari_unet.core.checkpoint import read_model_file

    model = read_model_file(_user_models()["base-tuned"])
    assert model.metadata["examples"] == ["'c2c12 masks', slice 0", "'lazy ground truth', slice 2"]

    # the lazy labels also chosen under Corrected slices: a slice given twice counts once
    CorrectedSlices.for_layer(lazy_labels).mark((2,))
    w.corrected_panel._image_combo.value = lazy_image
    w.corrected_panel._labels_combo.value = lazy_labels
    assert [ex.source for ex in w.gather_examples()] == ["'lazy ground truth', slice 2"]
    CorrectedSlices.for_layer(lazy_labels).unmark((2,))

    # a lazy pair with no cells at all, the only examples: refused by the worker
    viewer.layers.remove(masks)
    w.examples_panel._extra_list.value = [0]
    w.examples_panel._remove_extra_button.native.click()
    empty = viewer.add_labels(da.zeros(labels.shape, dtype=np.int32, chunks=(1, 128, 128)), name="nothing")
    w.examples_panel.add_layer_pair(lazy_image, empty)
    w.settings_panel._name.value = "never"
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    assert w.run_panel._status.value.startswith("Not started: ")
    assert any(m.startswith("Cannot start fine-tuning: No corrected slice yet") for m in notifications)
    assert any("'nothing': left out 3 slices with no labels" in m for m in notifications)
    assert w.run_panel._start_button.enabled and w.run_panel._progress.value == 0
    assert "never" not in _user_models()


def test_a_labels_pyramid_teaches_its_finest_level_and_stop_ends_a_scan(widget, c2c12):
    """napari-unet opens an OME-Zarr labels pyramid as a multiscale Labels layer: Start failed ("list
    indices must be integers"), Add layer pair raised a TypeError, a 2D one was said to differ in size
    (its coarsest level was read). The scan of a lazy pair's slices for labels heeds Stop."""
    import threading

    import dask.array as da

    from napari_unet.widgets._examples import LabelledSlicesToRead, read_examples

    viewer, w = widget
    images, labels = c2c12
    image = viewer.add_image(images, name="c2c12")
    pyramid = viewer.add_labels([labels.copy(), labels[:, ::2, ::2].copy()], name="truth")
    assert pyramid.multiscale
    w.examples_panel.add_layer_pair(image, pyramid)
    examples = w.gather_examples()
    assert [ex.source for ex in examples] == [f"'truth', slice {k}" for k in range(3)]
    np.testing.assert_array_equal(examples[1].labels, labels[1])
    CorrectedSlices.for_layer(pyramid).mark((2,))
    w.corrected_panel._image_combo.value = image
    w.corrected_panel._labels_combo.value = pyramid
    assert w.corrected_panel.examples()[0].labels.shape == labels.shape[1:]

    stop = threading.Event()
    stop.set()
    lazy = LabelledSlicesToRead(images, da.from_array(labels, chunks=(1, 128, 128)), "lazy", "layers 'a' + 'lazy'")
    assert lazy.expand(stop) == ([], None)
    reading = read_examples([lazy], stop)
    with pytest.raises(StopIteration) as done:
        next(reading)
    assert done.value.value is None


def test_a_fully_labelled_layer_pair_gives_every_slice_even_one_touched_up_by_hand(make_napari_viewer, c2c12):
    viewer = make_napari_viewer()
    images, labels = c2c12
    image = viewer.add_image(images, name="gt")
    truth = viewer.add_labels(labels.copy(), name="gt labels")
    truth.brush_size = 3
    truth.paint((1, 20, 20), 77)  # a touch-up in plain napari, before Fine-tune is opened
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    w.examples_panel.add_layer_pair(image, truth)
    assert len(w.examples_panel.examples()) == len(labels)


def test_the_base_model_follows_again_after_the_users_base_is_deleted_and_through_renames(make_napari_viewer):
    import shutil
    from pathlib import Path as P

    from napari_unet.core.catalog import delete_model, rename_model, resolve_model_path, user_model_path

    viewer = make_napari_viewer()
    _d1, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    mine = user_model_path("mine")
    mine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(resolve_model_path("cells"), mine)
    base = lambda: P(tune.settings_panel.base_model_path).resolve()  # noqa: E731
    segment.select_model(mine)  # followed ...
    assert base() == mine.resolve()
    renamed = rename_model("mine", "mine2")
    tune._on_model_renamed(str(mine), str(renamed))  # what Manage models > Rename does next
    assert base() == P(renamed).resolve()
    segment.select_model(resolve_model_path("nuclei"))  # ... and still followed after the rename
    assert base() == P(resolve_model_path("nuclei")).resolve()
    tune.settings_panel._base_model.value = str(renamed)  # the user's own base, then deleted
    delete_model("mine2")
    tune.refresh_models()
    assert base() == P(segment._model_combo.value).resolve()


def test_following_segments_model_keeps_a_name_the_user_typed(make_napari_viewer):
    from napari_unet.core.catalog import resolve_model_path

    viewer = make_napari_viewer()
    _d1, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    segment.select_model(resolve_model_path("nuclei"))
    tune.settings_panel._name.value = "my experiment"
    segment.select_model(resolve_model_path("cells"))
    assert tune.settings_panel.model_name == "my experiment"


def test_folders_with_files_named_alike_both_count_and_names_with_commas_are_matched(widget, c2c12, tmp_path,
                                                                                    notifications):
    """Two example folders holding '001.tif' each give two examples (the twin rule is for corrected
    slices given again); a masks layer whose name holds a comma is recognised as in the run."""
    viewer, w = widget
    images, labels = c2c12
    for k, name in enumerate(("dsA", "dsB")):
        for kind, data in (("images", images[k]), ("labels", labels[k])):
            (tmp_path / name / kind).mkdir(parents=True)
            tifffile.imwrite(tmp_path / name / kind / "001.tif", data)
        w.examples_panel.add_example_folders(tmp_path / name / "images", tmp_path / name / "labels")
    assert len(w.gather_examples()) == 2
    image, masks = _add_pair(viewer, images, labels.copy(), name="well A1, pos 2")
    masks.paint((0, 30, 30), 90)
    w.corrected_panel._labels_combo.value = masks
    assert len(w.gather_examples()) == 3
    assert not any("are not in this run" in m for m in notifications)


def test_model_lists_follow_the_folder_on_layer_events(widget, base_model):
    """A model saved by `napari-unet train` or deleted in a file manager: Segment's list followed, but
    Fine-tune's lists were never made again (its panels sit in the layout): the new model could not be
    renamed, deleted or exported until the widget was reopened."""
    import shutil

    from napari_unet.core.catalog import user_models_dir

    viewer, w = widget
    shutil.copy(base_model, user_models_dir() / "from-cli.pt")
    viewer.add_points(name="any layer event")
    assert "from-cli" in w.models_panel._manage_combo.choices
    assert any("from-cli" in str(v) for v in w.settings_panel._base_model.choices)
    (user_models_dir() / "from-cli.pt").unlink()
    viewer.layers.remove("any layer event")
    assert "from-cli" not in w.models_panel._manage_combo.choices


def test_names_made_from_files_are_names_a_model_can_have(base_model):
    from napari_unet.core.catalog import check_model_name, suggest_model_name

    for downloaded in ("cells (1)", "unet@v2", "((x))"):  # Fine-tune proposed names it then refused
        check_model_name(suggest_model_name(downloaded))
    with pytest.raises(ValueError, match="too long for a file name"):  # 80 letters of 4 bytes: not a file
        check_model_name("\U0001d402\U0001d41e\U0001d425\U0001d425\U0001d42c" * 13)


def test_auto_sizes_say_auto(widget):
    """Patch and batch size at 0 showed "0" (superqt's spin box ignores Qt's special text) where the
    README and the messages say Auto."""
    viewer, w = widget
    for spin in (w.settings_panel._patch_size, w.settings_panel._batch_size):
        spin.value = 0
        assert spin.native.lineEdit().text() == "Auto"
        spin.value = 64
        assert spin.native.lineEdit().text() == "64" and spin.value == 64
        spin.value = 0


def test_the_docks_fit_a_laptop_screen(make_napari_viewer, qtbot):
    """No dock could be shorter than its controls: napari's window needed 1119 px of height (Fine-tune
    1053), so on a 768 px laptop screen the dock tabs, the slider and the status bar were off the
    screen, and folded sections opened to a 44 px strip. The docks' controls now scroll (Fine-tune's
    run, status lines and curves stay in view below them)."""
    from napari_unet.cli.gui import populate_viewer

    viewer = make_napari_viewer(show=True)
    populate_viewer(viewer, [], "nuclei_fluorescence_fields")
    qtbot.wait(200)
    assert viewer.window._qt_window.minimumSizeHint().height() <= 700


def test_the_controls_a_review_found_silent_say_what_they_do(make_napari_viewer):
    from napari_unet.cli.gui import populate_viewer

    viewer = make_napari_viewer()
    docked = populate_viewer(viewer, [], None)
    seg, cor, tune = docked["Segment"], docked["Correct"], docked["Fine-tune"]
    panel, slices, sources = tune.settings_panel, tune.corrected_panel, tune.examples_panel
    for control in (seg._image_combo, seg._model_combo, seg._scope, seg._overwrite, seg._sizing.from_label_button,
                    cor._fill_button, cor._new_button, cor._min_size, cor._small_button,
                    panel._base_model, panel._name, panel._seed, panel._augment, panel._device,
                    slices._mark_button, slices._unmark_button, slices._jump_button,
                    sources._add_pair_button, sources._add_folder_button):
        assert control.tooltip and len(control.tooltip) > 20, control


def test_buttons_that_act_on_a_choice_are_enabled_only_with_one(widget, base_model):
    """Unmark and Go to with no slice selected, Rename, Delete and Export with no model of yours: enabled,
    they did nothing (or said so only when clicked)."""
    viewer, w = widget
    slices, models = w.corrected_panel, w.models_panel
    assert not slices._unmark_button.enabled and not slices._jump_button.enabled
    masks = viewer.add_labels(np.zeros((3, 32, 32), np.int32), name="img masks")
    slices._labels_combo.value = masks
    slices._tracker.mark((1,))
    slices._corrected_list.value = [(1,)]
    assert slices._unmark_button.enabled and slices._jump_button.enabled
    assert models._rename_button.enabled and models._export_button.enabled  # the fixture's model "base"
    models.set_running(True)
    assert not models._rename_button.enabled and not models._delete_button.enabled and models._export_button.enabled
    models.set_running(False)
    base_model.unlink()
    models.refresh()
    assert not models._rename_button.enabled and not models._delete_button.enabled
    assert not models._export_button.enabled


def test_closing_the_dock_stops_the_run_and_saves_the_best_so_far(widget, c2c12, qtbot):
    """napari's close button keeps the widget (hidden): its training went on, and the Fine-tune the
    Plugins menu makes anew could start a second beside it ("saved as NAME-2")."""
    from napari_unet.core.events import TrainStep
    from napari_unet.widgets._registry import get_widget

    viewer, w = widget
    _add_pair(viewer, *c2c12)
    w.corrected_panel._mark_button.native.click()
    w.settings_panel._steps.value = 5000
    w.run_panel._start_button.native.click()
    worker = w.run_panel._worker
    steps: list[int] = []

    def close_at_step_2(event):
        if isinstance(event, TrainStep):
            steps.append(event.step)
            if event.step == 2:
                viewer.window.remove_dock_widget(w.native)

    worker.yielded.connect(close_at_step_2)
    _wait(qtbot, w)
    assert 2 <= max(steps) < 100
    assert "base-tuned" in _user_models()  # the best so far, saved
    assert get_widget(viewer, "finetune") is None
    _dock, again = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert again is not w and get_widget(viewer, "finetune") is again and again.run_panel._start_button.enabled


def test_a_run_that_failed_after_a_better_validation_says_so_and_its_model_is_listed(widget, data_dir, base_model,
                                                                                     notifications):
    """A failure in the middle of a run (out of memory) keeps the best weights validated before it:
    saved, listed, and the status says what failed and which step's weights were kept."""
    from napari_unet.core.checkpoint import user_model_path
    from napari_unet.core.events import run_to_end
    from napari_unet.widgets._examples import Example
    from napari_unet.widgets._training_job import train_and_save

    class FailsAtCall:  # the stop flag, looked at before every step: raises as a device would
        calls = 0

        def is_set(self):
            self.calls += 1
            if self.calls >= 14:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return False

    _viewer, w = widget
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:1]  # a whole frame: cells to hold out
    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[:1].astype(np.int32)
    settings = dict(steps=30, patch_size=64, batch_size=2, validate_every=5, validate_start=False, device="cpu")
    result = run_to_end(train_and_save(str(base_model), [Example(images[0], labels[0], "frame 0")],
                                       user_model_path("rescued"), name="rescued", settings=settings,
                                       stop=FailsAtCall()), lambda _event: None)
    w.run_panel._run_started = 0.0
    w.run_panel._on_returned(result)
    status = w.run_panel._status.value
    assert status.startswith("Failed at step") and "ran out of memory while training" in status and "'rescued'" in status
    assert f"(step {result.failed_step})" in status
    assert any("were saved as 'rescued'" in m for m in notifications)
    assert "rescued" in w.models_panel._manage_combo.choices  # listed among the user's models


@pytest.mark.parametrize(("dtype", "base"), [(np.int64, 2**31), (np.uint64, 2**63)])
def test_labels_with_ids_past_32_bits_are_numbered_again_to_learn_from(dtype, base):
    """Another tool's 64-bit ids (Segment and Correct take them) were refused by Start: "too large
    for int32". An id only names an object in its plane: the plane's objects are numbered from 1."""
    from napari_unet.widgets._examples import as_label_plane

    labels = np.zeros((8, 8), dtype)
    labels[:3, :3] = dtype(base + 7)
    labels[4:, 4:] = dtype(base + 2)
    plane = as_label_plane(labels, "'cells masks', slice 0")
    assert plane.dtype == np.int32 and set(np.unique(plane).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(plane > 0, labels > 0)
    assert len({int(v) for v in plane[:3, :3].ravel()}) == 1 and plane[0, 0] != plane[5, 5]


def test_corrected_slices_close_together_are_said_at_start(widget, data_dir, notifications):
    """Frames 0 and 1 of the C2C12 time-lapse corrected: the model learnt (and was checked on) the
    round cells of the start only, and did worse on the later frames (AP@0.5 0.51 -> 0.41); frames 0
    and 9: 0.50 -> 0.69. Start says so when the corrected slices lie within a third of the stack."""
    viewer, w = widget
    images = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:, :128, :128]
    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[:, :128, :128].astype(np.int32)
    _image, masks = _add_pair(viewer, images, labels.copy())
    panel = w.corrected_panel
    panel._labels_combo.value = masks
    panel.corrections.update([(0,), (1,)])
    w.gather_examples(read=False)
    said = [m for m in notifications if "lie close together (0 to 1 of 10)" in m]
    assert len(said) == 1
    panel.corrections.update([(9,)])  # one from the end too
    w.gather_examples(read=False)
    assert len([m for m in notifications if "lie close together" in m]) == 1


def test_the_weights_kept_by_the_loss_say_on_how_few_cells():
    """Chosen by the validation loss (fewer than 10 held-out cells), the weights were said "best"
    with nothing to weigh it: 4 held-out cells kept weights worse on the other frames than the start."""
    from napari_unet.widgets._finetune.run import _kept_weights

    by_loss = {"training": {"selected_step": 240, "selected": "best", "selection_metric": "loss", "n_val_objects": 4}}
    assert _kept_weights(by_loss) == ("Kept the weights of step 240 (best validation loss, judged on only 4 "
                                      "held-out cells: check them on other slices).")
    by_ap = {"training": {"selected_step": 120, "selected": "best", "selection_metric": "ap50", "n_val_objects": 30}}
    assert _kept_weights(by_ap) == "Kept the weights of step 120 (best validation AP@0.5)."
    # an AP tied with other validations' (none found at any step: 0.000 everywhere): the loss chose, said so
    tied = {"training": {**by_ap["training"], "history": [{"step": s, "ap50": 0.0} for s in (0, 60, 120)]}}
    assert _kept_weights(tied) == ("Kept the weights of step 120 (no held-out cell found at any validation yet, AP@0.5 "
                                   "0.000; the lowest validation loss).")
    for h, ap in zip(tied["training"]["history"], (0.1, 0.25, 0.25), strict=True):
        h["ap50"] = ap
    assert _kept_weights(tied) == ("Kept the weights of step 120 (validation AP@0.5 0.250 at several steps; the lowest "
                                   "validation loss of them).")
    tied["training"]["history"][2]["ap50"] = 0.2  # the best AP alone
    tied["training"]["selected_step"] = 60
    assert _kept_weights(tied) == "Kept the weights of step 60 (best validation AP@0.5)."
    # held out of the corrected slices themselves: a closer fit to them, maybe no better elsewhere
    by_ap["training"]["val_split"] = "band"
    assert _kept_weights(by_ap).startswith("Kept the weights of step 120 (best validation AP@0.5, on 30 cells held "
                                           "out of the slices you corrected: check the new model on a slice")
    by_loss["training"]["val_split"] = "planes"  # too few for the gate (core.validation) to tell
    assert "too few to tell whether they beat the model it started from" in _kept_weights(by_loss)
    # slices of 3D objects: validated on planes, its 3D objects unchecked (they came out worse)
    by_ap["training"]["sections"] = True
    assert _kept_weights(by_ap).endswith("It was validated plane by plane: check its 3D objects on a volume you did "
                                         "not correct before relying on it.")
    # the gate kept the start: say why, and what to do
    gated = {"base_model": "cells", "training": {"selected_step": 0, "selected": "best", "selection_metric": "ap50",
                                                 "n_val_objects": 30, "val_split": "band", "gate_kept_start": True}}
    text = _kept_weights(gated)
    assert text.startswith("Kept the starting weights: the steps that scored higher on the cells held out of your "
                           "slices were not clearly better than 'cells' there.")
    assert text.endswith("Correct cells on other slices or fields, then fine-tune again.")
    gated["training"]["stopped_early"] = True  # (Stop, or the time budget): not the slices' fault
    assert _kept_weights(gated).endswith("The run was stopped early: a longer run may do better.")
    # no step did better at all (a run that wrecked the model): not the gate's doing
    gated["training"]["gate_kept_start"] = False
    assert _kept_weights(gated) == ("Kept the starting weights: no step found clearly more of the 30 cells held out "
                                    "(a score higher by a cell or so is within chance).")
    # chosen by the loss (too few held-out cells for an AP): no cells were compared, the losses were
    gated["training"].update(selection_metric="loss", n_val_objects=6)
    assert _kept_weights(gated).startswith("Kept the starting weights: no step had a lower validation loss on the 6 "
                                           "cells held out")


def test_the_best_label_says_when_a_higher_ap_was_held_back(widget):
    """The gate (core.validation) keeps the start although a later step's AP on the held-out cells is
    higher: the Best line said only "(now 0.882)" beside 0.824, with no reason."""
    from napari_unet.core.events import Validation

    _viewer, w = widget
    panel = w.run_panel
    panel.curves.clear(300)
    panel._on_yielded(Validation(step=0, ap50=0.824, dice=0.9, loss=0.366, is_best=True, best_ap50=0.824))
    assert panel._best_label.value == "validation AP@0.5 0.824 (at step 0)"
    panel._on_yielded(Validation(step=30, ap50=0.882, dice=0.9, loss=0.358, is_best=False, best_ap50=0.824,
                                 held_back=True))
    assert panel._best_label.value == ("validation AP@0.5 0.824 (now 0.882, not kept: not clearly better than the "
                                       "starting model)")
    panel._on_yielded(Validation(step=60, ap50=0.80, dice=0.9, loss=0.40, is_best=False, best_ap50=0.824))
    assert panel._best_label.value == "validation AP@0.5 0.824 (now 0.800)"


def test_the_trained_weights_the_gate_held_back_can_be_kept_instead(widget, base_model):
    """The gate kept the starting weights (saved under the new name): the weights it held back are not
    lost, a button saves them there instead, and Segment is told (the minutes of training are the user's)."""
    import time

    import torch

    from napari_unet.core.catalog import user_model_path
    from napari_unet.core.checkpoint import read_model_file, save_model
    from napari_unet.widgets._training_job import TrainingResult

    _viewer, w = widget
    panel = w.run_panel
    kept = read_model_file(base_model)
    kept.metadata.update(name="base-tuned", base_model="base", val_ap50=0.5, training={
        "selected": "best", "selected_step": 0, "selection_metric": "ap50", "n_val_objects": 20, "val_split": "band",
        "gate_kept_start": True})
    path = save_model(kept, user_model_path("base-tuned"))
    held = read_model_file(base_model)
    with torch.no_grad():
        for p in held.net.parameters():
            p.add_(0.01)
    held.metadata.update(base_model="base", val_ap50=0.7, training={"selected": "best", "selected_step": 30,
                                                                   "kept_against_gate": True})
    saved = []
    panel.saved.connect(saved.append)
    panel._run_started = time.perf_counter()
    panel._on_returned(TrainingResult(kept, path, None, 60, path, held_back=held))
    assert not panel._keep_trained_button.native.isHidden()
    assert panel._keep_trained_button.text == "Keep the trained weights instead (step 30, AP@0.5 0.700)"
    assert panel._best_label.value == "validation AP@0.5 0.500 (the starting weights, kept); step 30 scored 0.700, held back"
    assert panel._status.value.startswith("Saved 'base-tuned' after 60 steps")
    assert "Kept the starting weights" in panel._status.value and "the button below" in panel._status.value
    assert saved == [str(path)]

    panel._keep_trained_button.native.click()
    assert panel._keep_trained_button.native.isHidden() and panel._held_back is None
    assert saved == [str(path), str(path)]  # Segment takes the model again (its file changed)
    now = read_model_file(path)
    assert now.name == "base-tuned" and now.metadata["training"]["kept_against_gate"]
    for k, v in now.net.state_dict().items():
        assert torch.equal(v, held.net.state_dict()[k]), k
    assert panel._status.value == ("Saved the trained weights (step 30, validation AP@0.5 0.700) as 'base-tuned': "
                                   "check them on a slice you did not correct.")
    assert panel._best_label.value == "validation AP@0.5 0.700 (at step 30, kept at your request)"

    # the model the run saved renamed (Manage models) before Keep: the trained weights go in its place
    path = save_model(kept, path)
    panel._on_returned(TrainingResult(kept, path, None, 60, path, held_back=held))
    from napari_unet.core.catalog import rename_model

    renamed = rename_model("base-tuned", "my cells")  # (as Manage models does: a new file, the old one deleted)
    panel.follow_renamed(str(path), str(renamed))
    panel._keep_trained_button.native.click()
    assert saved[-1] == str(renamed) and not path.exists() and not renamed.with_name("my cells-2.pt").exists()
    assert "had changed meanwhile" not in panel._status.value
    assert read_model_file(renamed).metadata["training"]["kept_against_gate"]

    # no step scored better, the gate aside (a held-out part mostly of the model's own masks favours the
    # start): the run's last weights are offered too, not said to be held back
    kept.metadata["training"].update(gate_kept_start=False)
    held.metadata.update(val_ap50=0.45, training={"selected": "best", "selected_step": 60, "kept_against_gate": False})
    path = save_model(kept, user_model_path("base-tuned"))
    panel._on_returned(TrainingResult(kept, path, None, 60, path, held_back=held))
    assert panel._keep_trained_button.text == "Keep the trained weights instead (step 60, AP@0.5 0.450)"
    assert panel._best_label.value == "validation AP@0.5 0.500 (the starting weights, kept); step 60 scored 0.450"


def test_a_save_that_failed_then_succeeded_still_offers_the_held_back_weights(widget, base_model):
    """The end-of-run save failed, Save again succeeded: the status said only "Saved 'x'." (the starting
    weights, unannounced) and the trained weights the gate held back were never offered."""
    import time

    from napari_unet.core.catalog import user_model_path
    from napari_unet.core.checkpoint import read_model_file, save_model
    from napari_unet.widgets._training_job import TrainingResult

    _viewer, w = widget
    panel = w.run_panel
    kept, held = read_model_file(base_model), read_model_file(base_model)
    kept.metadata.update(base_model="base", training={"selected": "best", "selected_step": 0, "n_val_objects": 20,
                                                     "val_split": "band", "gate_kept_start": True})
    held.metadata.update(val_ap50=0.7, training={"selected_step": 30, "kept_against_gate": True})
    target = user_model_path("base-tuned")
    unfinished = save_model(held, user_model_path("base-tuned unfinished"))  # (kept while the model was not saved)
    panel._run_started = time.perf_counter()
    panel._on_returned(TrainingResult(kept, None, OSError(28, "No space left on device"), 60, target, held_back=held,
                                      unfinished=unfinished))
    assert not panel._save_again_button.native.isHidden() and panel._keep_trained_button.native.isHidden()
    assert unfinished.exists()
    panel._save_again_button.native.click()
    assert target.exists() and panel._status.value.startswith("Saved 'base-tuned'. Kept the starting weights:")
    assert not panel._keep_trained_button.native.isHidden() and panel._held_back[0] is held
    assert not unfinished.exists()  # (the model saved: its copy removed)


def test_a_model_trained_or_renamed_in_one_viewer_is_listed_and_followed_in_the_others(widget, make_napari_viewer,
                                                                                       base_model):
    """Two viewers: a model saved in one was not listed in the other until a layer changed there, and
    after a rename in one, the other's Segment said the model "gone" and fell back to a built-in one."""
    import shutil

    from napari_unet.core.checkpoint import user_model_path

    _viewer, w = widget
    other = make_napari_viewer()
    _dock, other_segment = other.window.add_plugin_dock_widget("napari-unet", "Segment")
    _dock, other_finetune = other.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    other_segment._model_combo.reset_choices()
    other_segment._model_combo.value = str(base_model)

    trained = shutil.copy(base_model, user_model_path("trained here"))
    w.run_panel.saved.emit(str(trained))  # as a run saving its model
    assert "trained here" in [Path(str(v)).stem for v in other_segment._model_combo.choices]
    assert "trained here" in other_finetune.models_panel._manage_combo.choices

    w.models_panel._manage_combo.value = "base"
    w.models_panel._rename_edit.value = "mine"
    w.models_panel._rename_button.native.click()
    assert Path(other_segment._model_combo.value).stem == "mine"  # followed, not "gone"


def test_tab_reaches_start_right_after_the_settings(make_napari_viewer, base_model, qtbot):
    """The settings sit in a scroll area made after the run panel: Tab went from the last setting
    round the whole napari window (72 presses from Image) before it reached Start. The live curves
    wait for the first Start, leaving their height to the settings on a laptop's screen."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    qtbot.wait(100)
    assert not w.run_panel.curves.canvas.isVisible()
    toggle = w.models_panel._collapsible._toggle_btn  # the last control above the run panel (folded)
    widget, reached = toggle, []
    for _ in range(200):
        widget = widget.nextInFocusChain()
        if widget.isVisible() and widget.isEnabled() and widget.focusPolicy() & Qt.FocusPolicy.TabFocus:
            reached.append(widget)
            if len(reached) == 1:
                break
    assert reached == [w.run_panel._start_button.native]


def test_the_plugins_docks_open_as_tabs_not_one_under_another(make_napari_viewer, base_model, qtbot):
    """napari's Plugins menu put a second dock under the first: Fine-tune's notes and curves under
    Segment made the window taller than a laptop's screen. The plugin's docks join one another as tabs."""
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    fine_dock, _w = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    window = viewer.window._qt_window
    qtbot.waitUntil(lambda: bool(window.tabifiedDockWidgets(fine_dock)), timeout=5000)
    assert [d.windowTitle() for d in window.tabifiedDockWidgets(fine_dock)] == ["Segment (napari-unet)"]
    assert isinstance(fine_dock, QDockWidget) and not fine_dock.visibleRegion().isEmpty()  # the new one in front


def test_masks_held_on_disk_are_learnt_from_and_segmented_again(widget, c2c12, qtbot, monkeypatch):
    """Masks larger than the memory free live in a file (a memory map, see _disk_masks): Fine-tune reads
    their corrected slices in its worker, learns, and the run after it writes into them on disk. (The
    memory free made small by the share of it masks may take.)"""
    from napari_unet.widgets import _disk_masks

    viewer, w = widget
    images, labels = c2c12
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    image = viewer.add_image(images, name="c2c12")
    disk = _disk_masks.new_masks(labels.shape, np.int32, "c2c12 masks")
    disk[0] = labels[0]
    _disk_masks.note_ids(disk, int(labels[0].max()))
    masks = viewer.add_labels(disk, name="c2c12 masks")
    viewer.dims.set_current_step(0, 0)
    w.corrected_panel._mark_button.native.click()
    w.run_panel._start_button.native.click()
    _wait(qtbot, w)
    segment = get_widget(viewer, "segment")
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    assert segment._status.value.startswith("Done") and _disk_masks.on_disk(masks.data)
    from napari_unet.core.checkpoint import read_model_file

    meta = read_model_file(_user_models()["base-tuned"]).metadata  # (learnt from the slice on disk)
    assert meta["n_examples"] == 1 and meta["examples"] == ["'c2c12 masks', slice 0"]
    np.testing.assert_array_equal(np.asarray(masks.data[0]), labels[0])  # (the corrected slice kept)
    assert np.asarray(masks.data[1]).any()  # (the next slice segmented, on disk)
    assert image is viewer.layers["c2c12"]
