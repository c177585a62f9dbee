"""Segment proposes the built-in model that fits the image, and never overrides the user's choice."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from napari_unet.io import load_sample
from napari_unet.widgets.segment import SegmentWidget


def _stem(path) -> str:
    return Path(path).stem

def _phase_and_dapi(data_dir, side: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A phase-contrast field (Usiigaci, MIT) and a DAPI field (DSB2018, CC0), side x side, uint8."""
    import tifffile
    from skimage.io import imread

    phase = tifffile.imread(data_dir / "usiigaci_phase" / "images.tif")[0, :side, :side].astype(np.float32)
    phase = ((phase - phase.min()) / np.ptp(phase) * 255).astype(np.uint8)
    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["kind"] == "grey_dark" and int(r["height"]) >= 256
                   and int(r["width"]) >= 256)
    dapi = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png")
    dapi = (dapi[..., :3].mean(-1) if dapi.ndim == 3 else dapi)[:side, :side].astype(np.uint8)
    return phase, dapi


def _phase_and_dapi_stack(make_napari_viewer, qtbot, data_dir):
    """A viewer with Segment and the (C, Y, X) stack "cyx" of those two fields, the phase plane shown
    and told (viewer, dock, widget, layer)."""
    phase, dapi = _phase_and_dapi(data_dir)
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    stack = viewer.add_image(np.stack([phase, dapi]), name="cyx")
    viewer.dims.set_current_step(0, 0)
    w.reset_choices()
    w._image_combo.value = stack
    qtbot.waitUntil(lambda: w._proposal.kind == "transmitted", timeout=5_000)
    return viewer, _dock, w, stack


def _segment_dock_on_a_phase_field(make_napari_viewer):
    """A viewer with Segment on a 128 px phase-contrast field "phase" (viewer, dock, widget, layer)."""
    cells, _, _ = load_sample("cells_phase_2d")
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    image = viewer.add_image(cells[:128, :128], name="phase")
    w.reset_choices()
    w._image_combo.value = image
    return viewer, _dock, w, image



def test_model_follows_the_image_until_the_user_chooses(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(w, SegmentWidget)
    cells, _, _ = load_sample("cells_phase_2d")
    nuclei, _, _ = load_sample("nuclei_fluorescence_2d")

    viewer.add_image(cells[:512, :512], name="phase")
    w.reset_choices()
    w._image_combo.value = viewer.layers["phase"]
    assert _stem(w._model_combo.value) == "cells"
    assert "Proposed 'cells'" in w._model_hint.value and "phase-contrast" in w._model_hint.value

    viewer.add_image(nuclei, name="fluo")
    w.reset_choices()
    w._image_combo.value = viewer.layers["fluo"]
    assert _stem(w._model_combo.value) == "nuclei-fluo"
    assert "fluorescence" in w._model_hint.value

    # the user picks a model: proposals still show, but no longer switch it
    w._model_combo.value = next(v for _label, v in w._model_choices() if _stem(v) == "cells")
    w._image_combo.value = viewer.layers["phase"]
    w._image_combo.value = viewer.layers["fluo"]
    assert _stem(w._model_combo.value) == "cells"
    assert "Proposed 'nuclei-fluo'" in w._model_hint.value


def test_the_proposal_follows_the_plane_the_slider_rests_on(make_napari_viewer, qtbot, data_dir):
    """A (C, Y, X) stack of phase contrast and DAPI is two kinds of image: when the slider rests on the
    DAPI plane the proposal is for fluorescence (it stayed with the plane shown when the image was picked)."""
    viewer, _dock, w, stack = _phase_and_dapi_stack(make_napari_viewer, qtbot, data_dir)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: w._proposal.kind == "fluorescence", timeout=5_000)
    assert "nuclei-fluo" in str(w._model_combo.value)
    viewer.window.remove_dock_widget(_dock)  # the dock closed, the viewer goes on: the slider still moves
    w.native.deleteLater()
    qtbot.wait(50)
    viewer.dims.set_current_step(0, 0)
    qtbot.wait(400)


def test_reopened_masks_propose_the_model_that_made_them(make_napari_viewer, qtbot, tiny_model_path, tmp_path):
    """Masks saved after segmenting with the user's fine-tuned model, reopened the next day beside
    their image: Segment proposed the built-in model of the image's kind (a second session segmented
    with 'cells', not the user's 'cells-tuned'). The masks record their model, and it is proposed while
    it is listed; gone, the hint says so and the built-in model is proposed."""
    import shutil

    from napari_unet.core.catalog import user_models_dir
    from napari_unet.io._corrected import MODEL_KEY, stored_layout
    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    user_models_dir().mkdir(parents=True, exist_ok=True)
    tuned = shutil.copy(tiny_model_path, user_models_dir() / "cells-tuned.pt")
    viewer, _dock, w, image = _segment_dock_on_a_phase_field(make_napari_viewer)
    cells = image.data
    assert _stem(w._model_combo.value) == "cells"
    w.select_model(tuned)
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    masks = viewer.layers[masks_layer_name("phase")]
    assert masks.metadata[MODEL_KEY]["name"] == "cells-tuned"
    # (the hint follows the masks' model at the run's end: it named the built-in model they were made by before)
    assert "Proposed 'cells-tuned': it made this image's masks" in w._model_hint.value
    path = tmp_path / f"{masks.name}.tif"
    assert masks.save(str(path), plugin="napari-unet")
    assert stored_layout(path).model["name"] == "cells-tuned"

    # the next day: the image, a new Segment dock (the built-in model proposed), then the masks opened
    viewer.layers.clear()
    viewer.window.remove_dock_widget(_dock)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    viewer.add_image(cells[:128, :128], name="phase")
    w.reset_choices()
    assert _stem(w._model_combo.value) == "cells"
    viewer.open(path, plugin="napari-unet")
    assert _stem(w._model_combo.value) == "cells-tuned"
    assert "Proposed 'cells-tuned': it made this image's masks" in w._model_hint.value

    # the model renamed in the file manager: the built-in one, and the hint says why
    Path(tuned).rename(Path(tuned).with_name("old.pt"))
    w.reset_choices()  # (as any layer event does)
    assert "'cells-tuned' is gone" in w._status.value
    assert _stem(w._model_combo.value) == "cells"
    assert "made by 'cells-tuned', not in the Model list. Proposed 'cells'" in w._model_hint.value


def test_reopened_masks_give_back_the_diameter_typed_for_them(make_napari_viewer, qtbot, tiny_model_path, tmp_path):
    """A size found by hand on day one (C2C12's cells need 14 px: Auto finds nothing there) was lost
    with the window: the masks reopened the next day left the field at Auto. They record the diameter
    typed for their last run; the field shows it again while it says Auto, goes back to Auto for an
    image without one, and a size the user types is never replaced."""
    from napari_unet.io._corrected import DIAMETER_KEY, stored_layout
    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    viewer, _dock, w, image = _segment_dock_on_a_phase_field(make_napari_viewer)
    cells = image.data
    w.select_model(tiny_model_path)
    w._scope.value = SCOPE_SLICE
    w._diameter.value = "14"
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    masks = viewer.layers[masks_layer_name("phase")]
    assert masks.metadata[DIAMETER_KEY] == "14"
    path = tmp_path / f"{masks.name}.tif"
    assert masks.save(str(path), plugin="napari-unet")
    assert stored_layout(path).diameter == "14"

    # the next day: the image, a new Segment dock (Auto), then the masks opened beside it
    viewer.layers.clear()
    viewer.window.remove_dock_widget(_dock)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    viewer.add_image(cells[:128, :128], name="phase")
    w.reset_choices()
    assert w._diameter.value == "auto"
    viewer.open(path, plugin="napari-unet")
    assert w._diameter.value == "14"
    assert "given when these masks were made" in w._diameter_used.value
    # another image, without masks: Auto again; back to the first: 14
    other = viewer.add_image(load_sample("cells_phase_2d")[0][128:256, :128], name="other")
    w.reset_choices()
    w._image_combo.value = other
    assert w._diameter.value == "auto" and w._diameter_used.value == ""
    w._image_combo.value = viewer.layers["phase"]
    assert w._diameter.value == "14"
    # the user's own size stays theirs, whichever image is chosen
    w._diameter.value = "20"
    w._image_combo.value = other
    w._image_combo.value = viewer.layers["phase"]
    assert w._diameter.value == "20"
    # a run given Auto forgets the size typed before
    w._diameter.value = "auto"
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert DIAMETER_KEY not in viewer.layers[masks_layer_name("phase")].metadata


def test_masks_do_not_propose_another_model_of_the_same_name(make_napari_viewer, tiny_model_path, tmp_path):
    """Masks brought from another computer, made by its 'cells-tuned': this computer's own
    'cells-tuned' (trained another day) is not the model that made them; one moved from the folder
    recorded, trained the same day, is."""
    from napari_unet.core.catalog import user_models_dir
    from napari_unet.core.checkpoint import read_model_file, read_model_metadata, save_model
    from napari_unet.io._corrected import record_model
    from napari_unet.widgets._proposal import masks_model

    user_models_dir().mkdir(parents=True, exist_ok=True)
    model = read_model_file(tiny_model_path)
    date = model.metadata["date"] = "2026-12-01T10:00:00+00:00"
    ours = save_model(model, user_models_dir() / "cells-tuned.pt")
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="phase")
    masks = viewer.add_labels(np.zeros((64, 64), np.int32), name="phase masks")
    choices = [("cells-tuned (yours)", str(ours))]
    elsewhere = tmp_path / "other computer" / "cells-tuned.pt"
    record_model(masks.metadata, elsewhere, "2020-01-01T00:00:00+00:00")
    assert masks_model(viewer, image, choices, read_model_metadata) == (None, "cells-tuned")
    record_model(masks.metadata, elsewhere, date)
    assert masks_model(viewer, image, choices, read_model_metadata) == (str(ours), "cells-tuned")
    record_model(masks.metadata, elsewhere)  # (masks saved before models' dates were recorded)
    assert masks_model(viewer, image, choices, read_model_metadata) == (str(ours), "cells-tuned")


def test_a_channel_of_another_kind_is_proposed_its_own_model(make_napari_viewer, qtbot, tiny_model_path, data_dir):
    """A (C, Y, X) stack of phase contrast and DAPI as one layer: once the phase plane was segmented,
    the DAPI plane was proposed the phase model too ("it made this image's masks"; 0 objects there).
    The masks record the kind of image their model segmented; a plane of another kind gets its own
    proposal, and the hint says whose masks these are when the user chose another model."""
    import shutil

    from napari_unet.core.catalog import user_models_dir
    from napari_unet.io._corrected import MODEL_KEY
    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    user_models_dir().mkdir(parents=True, exist_ok=True)
    tuned = shutil.copy(tiny_model_path, user_models_dir() / "phase-tuned.pt")
    viewer, _dock, w, _stack = _phase_and_dapi_stack(make_napari_viewer, qtbot, data_dir)
    w.select_model(tuned)
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert viewer.layers[masks_layer_name("cyx")].metadata[MODEL_KEY]["kind"] == "transmitted"
    assert "Proposed 'phase-tuned': it made this image's masks" in w._model_hint.value
    viewer.dims.set_current_step(0, 1)  # the DAPI plane: the fluorescence model proposed, not the phase one
    qtbot.waitUntil(lambda: w._proposal.kind == "fluorescence", timeout=5_000)
    assert "Proposed 'nuclei-fluo'" in w._model_hint.value
    assert _stem(w._model_combo.value) == "phase-tuned"  # (the user's choice stays theirs)
    viewer.dims.set_current_step(0, 0)  # back on phase: the masks' model, and the user chose another
    qtbot.waitUntil(lambda: w._proposal.kind == "transmitted", timeout=5_000)
    w._model_combo.value = next(v for _label, v in w._model_choices() if _stem(v) == "cells")
    w._proposal.refresh()
    assert w._model_hint.value == "This image's masks were made by 'phase-tuned'; 'cells' is chosen."


def test_a_whole_stack_run_takes_unnamed_channels_of_different_kinds_as_the_channel_axis(
        make_napari_viewer, qtbot, tiny_model_path, data_dir, notifications):
    """A (T, C, Y, X) file opened by napari's own reader names no axis: a whole-stack run segmented the
    nuclear channel with the phase model (and moved past a corrected slice into the other channel).
    Its channels, planes of different kinds, are taken as the channel axis, said once an image."""

    from napari_unet.widgets.segment import SCOPE_STACK, masks_layer_name

    phase, dapi = _phase_and_dapi(data_dir, 128)
    tcyx = np.stack([np.stack([np.roll(phase, 7 * t, axis=1), dapi]) for t in range(3)])  # (3, 2, 128, 128), unnamed
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    stack = viewer.add_image(tcyx, name="tcyx")
    w.reset_choices()
    w._image_combo.value = stack
    assert w._channel_axis.value is None
    w.select_model(tiny_model_path)
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w._channel_axis.value == 1
    assert sum("Axis 1 of 'tcyx' holds planes of different kinds" in m for m in notifications) == 1
    masks = viewer.layers[masks_layer_name("tcyx")]
    assert sorted(tuple(r.index) for r in w._kept.results(masks)) == [(0, 0), (1, 0), (2, 0)]  # the channel shown
    w._channel_axis.value = None  # the user's 'none': not taken again
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w._channel_axis.value is None


def test_a_model_file_added_by_hand_is_listed_in_the_next_session(make_napari_viewer, tiny_model_path, tmp_path):
    """A colleague's model added with Add model file… was gone the next session, and the masks it made
    said it was not in the Model list; the hint also went stale when it was added."""
    import shutil

    from napari_unet.io._corrected import record_model

    theirs = Path(shutil.copy(tiny_model_path, tmp_path / "colleague-tuned.pt"))
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="field")
    masks = viewer.add_labels(np.zeros((64, 64), np.int32), name="field masks")
    record_model(masks.metadata, tmp_path / "elsewhere" / "colleague-tuned.pt")
    w.reset_choices()
    w._image_combo.value = image
    w._proposal.refresh()  # (as the masks' arrival does)
    assert "made by 'colleague-tuned', not in the Model list" in w._model_hint.value
    w.add_model_file(theirs)
    assert "Proposed 'colleague-tuned': it made this image's masks" in w._model_hint.value
    viewer.window.remove_dock_widget(_dock)  # the next session: a new dock
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert str(theirs.resolve()) in [value for _label, value in w._model_choices()]
