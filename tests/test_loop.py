"""The whole human-in-the-loop in a real viewer: segment, correct with the Labels layer's own
tools, see the slice listed, fine-tune in the worker, get the new model listed and the view
segmented again with it, the corrected slice left as the user made it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import regionprops

from napari_unet.widgets._corrections import CorrectedSlices
from napari_unet.widgets._registry import get_widget
from napari_unet.widgets.finetune import FinetuneWidget


@pytest.fixture
def base_model() -> Path:
    """A tiny untrained 3-class model in the (temporary) user model folder."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel, save_model, user_model_path
    from napari_unet.core.model import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=2, padding="same", norm="batch").eval()
    return save_model(SegmentationModel(net, metadata={"name": "base"}), user_model_path("base"))


def test_correct_finetune_resegment_loop(make_napari_viewer, qtbot, data_dir, base_model):
    from napari_unet.core.checkpoint import list_models
    from napari_unet.widgets.segment import SegmentWidget

    images = np.ascontiguousarray(tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:3, :128, :128])
    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[:3, :128, :128].astype(np.int32)

    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    _dock, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(finetune, FinetuneWidget)
    settings = finetune.settings_panel
    for w, value in ((settings._steps, 10), (settings._patch_size, 64), (settings._batch_size, 2)):
        w.value = value
    settings._device.value = "cpu"

    # 1. open a real stack and segment slice 1 with the base model (Segment widget)
    image = viewer.add_image(images, name="c2c12")
    segment.reset_choices()
    segment._image_combo.value = image
    segment.select_model(base_model)  # the tiny model, not a built-in one; Fine-tune's base follows it
    assert Path(settings.base_model_path).resolve() == Path(base_model).resolve()
    viewer.dims.set_current_step(0, 1)
    segment._run_button.clicked.emit()
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    masks = viewer.layers["c2c12 masks"]
    corrected_panel = finetune.corrected_panel
    assert corrected_panel._image_combo.value is image and corrected_panel._labels_combo.value is masks
    assert "none yet" in finetune.corrected_panel._corrected_info.value

    # 2. correct slice 1 with the layer's own tools: brush a few cells, fill one with a new id
    masks.brush_size = 9
    cells = regionprops(truth[1])[:6]
    for k, cell in enumerate(cells, start=1):
        r, c = (int(round(v)) for v in cell.centroid)
        masks.paint((1, r, c), 100 + k)
    r, c = (int(round(v)) for v in cells[0].centroid)
    masks.fill((1, r, c), 200)
    assert masks.data[1, r, c] == 200

    # 3. the slice is listed as corrected (and stored with the layer)
    assert CorrectedSlices.for_layer(masks).planes == [(1,)]
    assert finetune.corrected_panel._corrected_info.value == "1: slice 1"
    assert masks.metadata["napari_unet_corrected"] == [[1]]
    corrected = masks.data[1].copy()

    # 4. look at slice 2 (stale masks there), fine-tune in the worker
    viewer.dims.set_current_step(0, 2)
    masks.data[2] = 77
    trained: list[str] = []
    finetune.model_trained.connect(trained.append)
    finetune.run_panel._start_button.native.click()
    assert finetune.run_panel._worker is not None
    qtbot.waitUntil(lambda: finetune.run_panel._worker is None, timeout=120_000)
    assert trained, finetune.run_panel._status.value

    # 5. the new model is listed everywhere and slice 2 was segmented again with it
    new_path = trained[0]
    assert Path(new_path).stem in [e.name for e in list_models()]
    # the Fine-tune widget (given a proxy viewer by npe2) found the docked Segment widget, docked no other
    assert segment._model_combo.value == new_path and get_widget(viewer, "segment") is segment
    # and the next round builds on it: Fine-tune's base follows the model Segment took as the run ended
    assert Path(settings.base_model_path).resolve() == Path(new_path).resolve()
    qtbot.waitUntil(lambda: segment._worker is None, timeout=60_000)
    assert not (masks.data[2] == 77).any()
    assert segment._status.value.startswith("Done")

    # 6. the corrected slice is exactly as the user left it; slice 0 was never touched
    np.testing.assert_array_equal(masks.data[1], corrected)
    assert not masks.data[0].any()
    assert CorrectedSlices.for_layer(masks).planes == [(1,)]
