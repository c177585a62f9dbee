"""How long the window is held (main-thread stalls) by the widgets' work on large data, beside the
same work done in the window as before 2026-12-06.

A 20 ms ``QTimer`` ticks on the main thread of a shown napari window (under Xvfb on a server); a
stall is the longest gap between two ticks while the action runs. Data: real Usiigaci phase-contrast
fields (MIT, ../shared/data) tiled into a 64 x 2048 x 2048 stack and a 10000 x 10000 slide, with their
ground truth as the masks.

- *Save masks* of the 64-slice stack: ``CorrectWidget.save_masks`` (in the window, as the button did)
  against ``save_masks_in_background`` (what the button does now).
- *Fine-tune Start* with 64 corrected slices: the examples read in the window
  (``gather_examples()``, as Start did) against ``gather_examples(read=False)`` (Start now: the
  training worker reads them).
- *Visible field of view* written into the slide's masks: ``layer.refresh()`` of the whole plane
  against ``refresh_labels_region`` (napari's partial refresh of the region).
- *Fill holes* of the slide: ``core.edit.fill_holes`` in the window (as the button did) against the
  button's thread worker (since 2026-12-06, for slices over 2048 x 2048).

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_stalls.py [--planes 64] [--side 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


class Heartbeat:
    """The longest gap between the ticks of a 20 ms timer on the main thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer, self.ticks = QTimer(), []
        self.timer.setInterval(20)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self) -> "Heartbeat":
        self.ticks = [time.perf_counter()]
        self.timer.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    @property
    def longest(self) -> float:
        return float(np.diff(self.ticks).max())


def pump(seconds: float, until=None) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end or (until is not None and not until()):
        QApplication.processEvents()
        time.sleep(0.005)


def tiles(side: int, planes: int) -> tuple[np.ndarray, np.ndarray]:
    """(planes, side, side) images and labels tiled from the Usiigaci fields, ids unique per plane."""
    import tifffile
    from builtin_data import shared_data

    data = shared_data(ROOT) / "usiigaci_phase"
    images, labels = tifffile.imread(data / "images.tif"), tifffile.imread(data / "labels.tif")
    h, w = images.shape[1:]
    out_i = np.zeros((planes, side, side), images.dtype)
    out_l = np.zeros((planes, side, side), np.int32)
    k = 0
    for p in range(planes):
        top = 0
        for y in range(0, side, h):
            for x in range(0, side, w):
                f = k % len(images)
                k += 1
                dy, dx = min(h, side - y), min(w, side - x)
                out_i[p, y:y + dy, x:x + dx] = images[f, :dy, :dx]
                lab = labels[f, :dy, :dx].astype(np.int32)
                out_l[p, y:y + dy, x:x + dx] = np.where(lab > 0, lab + top, 0)
                top = int(out_l[p].max())
    return out_i, out_l


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=64, help="slices of the 2048 x 2048 stack")
    parser.add_argument("--side", type=int, default=10000, help="side of the slide (pixels)")
    args = parser.parse_args(argv)
    os.environ.setdefault("NAPARI_UNET_MODELS", tempfile.mkdtemp(prefix="bench-stalls-models-"))
    import napari

    from napari_unet.widgets._corrections import CorrectedSlices
    from napari_unet.widgets._napari_compat import refresh_labels_region, viewer_camera

    rows: list[tuple[str, str, float, float]] = []
    viewer = napari.Viewer(show=True)
    pump(1.0)
    images, labels = tiles(2048, args.planes)
    image = viewer.add_image(images, name="stack")
    masks = viewer.add_labels(labels, name="stack masks")
    pump(1.0)

    _dock, correct = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    correct._layer_combo.value = masks
    folder = Path(tempfile.mkdtemp(prefix="bench-stalls-"))
    pump(0.5)
    with Heartbeat() as before:
        correct.save_masks(folder / "before.tif")
        pump(0.3)
    with Heartbeat() as now:
        correct.save_masks_in_background(folder / "now.tif")
        pump(0.3, until=lambda: correct.saving is None)
    rows.append((f"Save masks, {args.planes} x 2048 x 2048", "written in the window", before.longest, now.longest))

    _dock, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    tune.corrected_panel._image_combo.value = image
    tune.corrected_panel._labels_combo.value = masks
    CorrectedSlices.for_layer(masks).update([(i,) for i in range(args.planes)])
    pump(0.5)
    with Heartbeat() as before:
        tune.gather_examples()
        pump(0.3)
    with Heartbeat() as now:
        tune.gather_examples(read=False)
        pump(0.3)
    rows.append((f"Fine-tune Start, {args.planes} corrected 2048 x 2048 slices", "examples read in the window",
                 before.longest, now.longest))
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    del images, labels, image, masks

    slide_image, slide_labels = tiles(args.side, 1)
    viewer.add_image(slide_image[0], name="slide")
    slide = viewer.add_labels(np.zeros_like(slide_labels[0]), name="slide masks")
    camera = viewer_camera(viewer)
    camera.center, camera.zoom = (args.side / 2, args.side / 2), 1.0
    pump(2.0)
    region = (slice(args.side // 2 - 300, args.side // 2 + 300), slice(args.side // 2 - 160, args.side // 2 + 160))
    slide.data[region] = slide_labels[0][region]
    with Heartbeat() as before:
        slide.refresh()
        pump(0.5)
    slide.data[region] = slide_labels[0][region] + 1
    with Heartbeat() as now:
        refresh_labels_region(slide, (), *region)
        pump(0.5)
    rows.append((f"Visible field of view (600 x 320 px) written into a {args.side} x {args.side} slide",
                 "whole plane refreshed", before.longest, now.longest))

    from napari_unet.core import edit as core_edit
    from napari_unet.widgets._object_tools import apply_edit

    slide.data[...] = slide_labels[0]
    slide.data[::40, ::40] = 0  # holes (and some gaps) to fill
    slide.refresh()
    correct._layer_combo.reset_choices()
    correct._layer_combo.value = slide
    pump(0.5)
    with_holes = slide.data.copy()
    with Heartbeat() as before:
        apply_edit(slide, (), core_edit.fill_holes(slide.data))
        pump(0.3)
    slide.data[...] = with_holes
    slide.refresh()
    pump(0.5)
    with Heartbeat() as now:
        correct.tools.fill_holes()
        pump(0.3, until=lambda: not correct.tools.busy)
    rows.append((f"Fill holes of a {args.side} x {args.side} slide", "computed in the window", before.longest,
                 now.longest))
    viewer.close()

    import torch

    print(f"bench_stalls {dt.date.today()}  {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"napari {napari.__version__}, torch {torch.__version__}")
    print("| action | before (how) | longest stall before | now | before / now |")
    print("| --- | --- | ---: | ---: | ---: |")
    for what, how, b, n in rows:
        print(f"| {what} | {how} | {b:.2f} s | {n:.2f} s | {b / max(n, 1e-3):.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
