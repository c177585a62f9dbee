"""Segment proposes the built-in model that fits the image, and never overrides the user's choice."""

from __future__ import annotations

from pathlib import Path

from napari_unet.io import load_sample
from napari_unet.widgets.segment import SegmentWidget


def _stem(path) -> str:
    return Path(path).stem


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
