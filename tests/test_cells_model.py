"""The built-in whole-cell model: shipped beside nuclei, with its card, and it finds cells the nuclei model cannot."""

from __future__ import annotations

from pathlib import Path

from napari_unet.core.catalog import list_models
from napari_unet.core.checkpoint import load_model
from napari_unet.core.metrics import average_precision
from napari_unet.core.predict import segment
from napari_unet.io import load_sample


def test_cells_is_a_builtin_model_with_its_card():
    builtin = [e.name for e in list_models() if e.builtin]
    assert builtin[:2] == ["nuclei", "cells"]  # the default first
    cells = load_model("cells", device="cpu")
    meta = cells.metadata
    assert cells.diameter == 30.0 and meta["postprocessing"]["threshold"] > 0
    card = meta["model_card"]
    assert {"phase", "dic", "all"} <= set(card["val"]) and card["val"]["dic"]["ap50"] > 0.8
    assert "Usiigaci" in card["data"] and "BBBC030" in card["data"]
    card_file = Path(cells.metadata["path"]).with_name("MODEL_CARD_cells.md")
    assert card_file.is_file() and f"{card['val']['phase']['ap50']:.3f}" in card_file.read_text()


def test_cells_model_segments_a_held_out_phase_contrast_field():
    image, truth, _ = load_sample("cells_phase_2d")  # a field the model never trained on
    image, truth = image[:512, :512], truth[:512, :512]
    cells = segment(load_model("cells", device="cpu"), image, device="cpu")
    nuclei = segment(load_model("nuclei", device="cpu"), image, device="cpu")
    ap_cells, ap_nuclei = average_precision(truth, cells, 0.5), average_precision(truth, nuclei, 0.5)
    assert cells.shape == truth.shape
    assert ap_cells > 0.4 and ap_cells > ap_nuclei + 0.2, (ap_cells, ap_nuclei)
