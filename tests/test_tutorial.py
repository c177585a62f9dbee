"""The README's run command and its illustrated tutorial, in a real napari window.

``test_gui_command_opens_napari_with_the_plugin`` runs ``napari-unet gui`` (what
``scripts/launch.sh`` ends with) in a subprocess on the test display and checks its screenshot.
``test_tutorial_walkthrough`` is the tutorial of the README, step by step; with
``NAPARI_UNET_WRITE_DOCS=1`` it (re)writes the README's pictures in ``docs/images/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from skimage.io import imread

from napari_unet.cli.gui import DOCKED_WIDGETS, populate_viewer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "images"


def _looks_like_a_window(png: Path) -> np.ndarray:
    img = imread(png)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 10  # not a blank frame
    return img


def test_gui_command_opens_napari_with_the_plugin(tmp_path):
    shot = tmp_path / "gui.png"
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "gui", "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _looks_like_a_window(shot)


def test_gui_command_rejects_a_missing_file():
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "gui", "/nonexistent/cells.tif"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "napari-unet: error: No such file or folder: /nonexistent/cells.tif"


def test_gui_command_in_a_home_folder_that_cannot_be_written_says_what_to_set(tmp_path):
    """A cluster's read-only home: napari writes its theme icons there first, and the message named one
    of them; it says what to set too."""
    (tmp_path / "a file").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = str(tmp_path / "a file" / "home")  # (read-only for root too)
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "gui"], capture_output=True, text=True,
                            timeout=240, env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "napari could not write its own files" in result.stderr
    assert "set XDG_CACHE_HOME and XDG_CONFIG_HOME" in result.stderr


def test_tutorial_walkthrough(make_napari_viewer, qtbot, tmp_path, canvas_mouse):
    from napari_unet.cli.gui import show_dock

    write_docs = os.environ.get("NAPARI_UNET_WRITE_DOCS") == "1"
    out = DOCS if write_docs else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 860)
    docked = populate_viewer(viewer, [], "nuclei_fluorescence_fields")  # what `napari-unet gui` opens
    assert set(docked) == set(DOCKED_WIDGETS)
    segment, finetune = docked["Segment"], docked["Fine-tune"]
    shots = []

    def shoot(name: str) -> None:
        viewer.reset_view()
        qtbot.wait(300)
        path = out / f"tutorial-{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        shots.append(_looks_like_a_window(path))

    # 1. the sample: 4 fields of view of fluorescent nuclei (and their ground truth, hidden)
    image = viewer.layers["nuclei_fluorescence_fields"]
    assert not viewer.layers["nuclei_fluorescence_fields ground truth"].visible  # shown on demand
    assert viewer.dims.current_step[0] == 0  # the first field, as the README says (napari shows the middle one)
    shoot("1-open")

    # 2. segment the current field with the built-in model
    segment.reset_choices()
    segment._image_combo.value = image
    assert segment._model_combo.value.endswith("nuclei-fluo.pt")  # the built-in model for fluorescence
    segment._run_button.clicked.emit()
    qtbot.waitUntil(lambda: segment._worker is None, timeout=120_000)
    masks = viewer.layers["nuclei_fluorescence_fields masks"]
    assert masks.data[0].max() > 5 and not masks.data[1:].any()  # found nuclei, only in field 0
    shoot("2-segment")

    # 3. correct with the object tools (delete the smallest nucleus, split the largest with a line)
    #    and the brush (a new object with a fresh id)
    correct = docked["Correct"]
    show_dock(viewer, "Correct")
    viewer.layers.selection.active = masks
    assert correct.tools.layer is masks
    viewer.reset_view()
    qtbot.wait(100)
    mouse = canvas_mouse(viewer)
    field = masks.data[0].copy()
    sizes = np.bincount(field.ravel())
    sizes[0] = 0
    smallest = int(np.argmin(np.where(sizes > 0, sizes, sizes.max() + 1)))
    largest = int(np.argmax(sizes))
    mouse.key(Qt.Key.Key_D)
    mouse.click(mouse.inside(field, smallest))
    assert not (masks.data[0] == smallest).any()
    mouse.key(Qt.Key.Key_S)
    rows, cols = np.nonzero(field == largest)
    mouse.drag([(r, int(np.median(cols))) for r in np.linspace(rows.min() - 3, rows.max() + 3, 6)])
    assert set(np.unique(masks.data[0][field == largest])) == {largest, int(masks.data.max())}
    mouse.key(Qt.Key.Key_N)  # new object: the next free id, with the brush
    assert masks.selected_label == masks.data.max() + 1 and masks.mode == "paint"
    masks.brush_size = 12
    masks.paint((0, 60, 60), masks.selected_label)
    assert finetune.corrected_panel._corrected_info.value.startswith("1")
    shoot("3-correct")

    # 4. fine-tune on the correction: the loss curve fills in
    show_dock(viewer, "Fine-tune")
    finetune.settings_panel._steps.value = 6
    finetune.settings_panel._patch_size.value = 128
    finetune.settings_panel._batch_size.value = 2
    finetune.settings_panel._name.value = "my-nuclei"
    finetune.run_panel._start_button.native.click()
    qtbot.waitUntil(lambda: finetune.run_panel._worker is None, timeout=240_000)
    assert len(finetune.run_panel.curves.history["loss"]) == 6 and finetune.run_panel.curves.history["ap50"]
    shoot("4-finetune")

    # 5. on to the next field: segment it with the new model; field 0 stays as corrected
    qtbot.waitUntil(lambda: segment._worker is None, timeout=120_000)
    corrected = masks.data[0].copy()
    show_dock(viewer, "Segment")
    assert segment._model_combo.value.endswith("my-nuclei.pt")
    viewer.dims.set_current_step(0, 1)
    segment._run_button.clicked.emit()
    qtbot.waitUntil(lambda: segment._worker is None, timeout=120_000)
    assert masks.data[1].max() > 5
    np.testing.assert_array_equal(masks.data[0], corrected)
    shoot("5-segment-again")

    # 6. save the corrected labels (File > Save Selected Layers...)
    saved = tmp_path / "nuclei masks.tif"
    viewer.layers.selection.active = masks
    viewer.layers.save(str(saved), selected=True, plugin="napari-unet")
    assert saved.is_file()
    assert len(shots) == 5


def test_gui_opens_files_its_reader_does_not_take_with_naparis(make_napari_viewer, tmp_path, dsb_fluo_crop):
    """`napari-unet gui cells.png`: a PNG (not a file type of napari-unet's reader) opens with
    napari's own, beside a TIFF opened with napari-unet's."""
    import tifffile
    from PIL import Image

    image, _ = dsb_fluo_crop
    Image.fromarray(image).save(tmp_path / "cells.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image]))
    viewer = make_napari_viewer()
    populate_viewer(viewer, [str(tmp_path / "cells.png"), str(tmp_path / "stack.tif")], None)
    assert [layer.name for layer in viewer.layers] == ["cells", "stack"]
    np.testing.assert_array_equal(np.asarray(viewer.layers["cells"].data), image)


def test_gui_says_in_one_line_what_it_cannot_open_or_show(make_napari_viewer, tmp_path):
    # a folder of text files: napari's own reader raised struct.error, a screen of traceback
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("plate 3, well B2\n")
    viewer = make_napari_viewer()
    with pytest.raises(ValueError, match=r"^cannot open .*notes: ") as exc:
        populate_viewer(viewer, [str(tmp_path / "notes")], None)
    assert "\n" not in str(exc.value)
    # no display (an SSH session): Qt aborted the process; now one line and exit status 2
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "gui"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no display" in result.stderr and "xvfb-run" in result.stderr
