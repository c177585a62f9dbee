"""GUI responsiveness: how long the main (Qt) thread stalls while napari-unet works.

A 10 ms ``QTimer`` on the main thread of a real napari window (run it under Xvfb, or on a
desktop) records when it fires; a gap between two ticks is a stall (the main thread was busy:
drawing, creating layers, or waiting for the GIL held by a worker thread). Two phases:

1. *first current slice*: the Segment widget's first "Current slice" run on a 1024 x 1024
   image (a 4 x 4 mosaic of DSB2018 fluorescence fields, CC0) with the built-in model: model
   loading, the new masks layer, the network, writing and drawing the labels.
2. *fine-tuning*: the Fine-tune widget trains the built-in model for ``--steps`` steps on that
   image with its ground truth as the correction (live curves, progress, validation).

Reported per phase: the longest gap, the 99th percentile, and how many exceed 100 / 200 ms.
``--diagnose`` prints where the main thread (or, when the GIL was held, every thread) was
during each stall over 100 ms.

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui.py            # RESULTS.md
    xvfb-run -a python benchmarks/bench_gui.py --steps 50 --no-write --diagnose

The functions here are also used by ``tests/test_responsiveness.py`` (with fewer steps).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from builtin_data import shared_data  # noqa: E402

DATA = shared_data(ROOT)
SECTION = "## GUI responsiveness"
TICK_MS = 10


class StallMeter:
    """Ticks of a 10 ms ``QTimer`` on the main thread; the gaps between them are the stalls.

    With ``diagnose``, a watchdog thread samples the main thread's stack while a tick is
    overdue (and every thread's stack when the watchdog itself was kept waiting: the GIL was
    held), so that a report can say what blocked.
    """

    def __init__(self, diagnose: bool = False) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self._timer = QTimer()
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)
        self._diagnose = diagnose
        self.samples: list[tuple[float, str]] = []  # (time, stack text)
        self._watching = False
        self._main_id = threading.main_thread().ident
        self.full_collections: list[float] = []  # seconds of each full garbage collection (any thread)
        self._gc_started = 0.0

    def _gc_probe(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.full_collections.append(time.perf_counter() - self._gc_started)
            self._gc_started = 0.0

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.samples = []
        self.full_collections = []
        gc.callbacks.append(self._gc_probe)
        self._timer.start()
        if self._diagnose:
            from qtpy.QtWidgets import QApplication

            self._events = _EventLog()
            QApplication.instance().installEventFilter(self._events)
            self._watching = True
            threading.Thread(target=self._watch, daemon=True).start()

    def stop(self) -> list[float]:
        """Stop; the gaps between ticks (seconds)."""
        self._timer.stop()
        if self._gc_probe in gc.callbacks:
            gc.callbacks.remove(self._gc_probe)
        if self._watching:
            from qtpy.QtWidgets import QApplication

            QApplication.instance().removeEventFilter(self._events)
        self._watching = False
        self.ticks.append(time.perf_counter())
        return list(np.diff(self.ticks))

    def _watch(self) -> None:
        last = time.perf_counter()
        while self._watching:
            time.sleep(0.02)
            now = time.perf_counter()
            late_self = now - last - 0.02  # the watchdog itself waited (the GIL was held)
            last = now
            overdue = now - self.ticks[-1]
            if overdue < 0.08 and late_self < 0.08:
                continue
            frames = sys._current_frames()
            if late_self >= 0.08:  # who had the GIL: every thread, where it is now
                text = f"GIL held ~{late_self * 1000:.0f} ms; threads:\n" + "\n".join(
                    f"-- thread {tid}{' (main)' if tid == self._main_id else ''}\n"
                    + "".join(traceback.format_stack(frame, limit=12))
                    for tid, frame in frames.items() if tid != threading.get_ident())
            else:
                frame = frames.get(self._main_id)
                text = f"main thread busy {overdue * 1000:.0f} ms (Qt event: {self._events.last}):\n" + "".join(
                    traceback.format_stack(frame, limit=25)) if frame is not None else "?"
            self.samples.append((now, text))


def _event_log_class():
    from qtpy.QtCore import QObject

    class EventLog(QObject):
        """Remembers the Qt event being delivered on the main thread (receiver, type)."""

        last = ""

        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            self.last = f"{type(obj).__name__} {event.type().name if hasattr(event.type(), 'name') else event.type()}"
            return False

    return EventLog


def _EventLog():  # noqa: N802 - a class made on first use (Qt is imported then)
    return _event_log_class()()


def summarise(gaps: list[float]) -> dict[str, float]:
    """Longest gap, 99th percentile (seconds) and counts over 100 / 200 ms."""
    arr = np.asarray(gaps if gaps else [0.0])
    return {
        "max": float(arr.max()),
        "p99": float(np.percentile(arr, 99)),
        "over_100ms": int((arr > 0.1).sum()),
        "over_200ms": int((arr > 0.2).sum()),
        "ticks": int(arr.size),
    }


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    """Run the Qt event loop (a real one, not a processEvents loop) until ``predicate()``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.perf_counter() + timeout
    check = QTimer()
    check.setInterval(20)

    def poll() -> None:
        if predicate() or time.perf_counter() > deadline:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    loop.exec()
    check.stop()
    if not predicate():
        raise TimeoutError(f"not done within {timeout:.0f} s")


def idle(seconds: float) -> None:
    """Let the event loop run (drawing included) for ``seconds``."""
    end = time.perf_counter() + seconds
    wait_until(lambda: time.perf_counter() >= end, seconds + 5)


def dsb_mosaic(data_dir: Path = DATA, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A (256 n) x (256 n) mosaic of DSB2018 fluorescence fields (val, 256 x 256) and its labels."""
    import csv

    from skimage.io import imread

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["kind"] == "grey_dark" and r["height"] == "256" and r["width"] == "256"]
    rows.sort(key=lambda r: (r["split"] != "val", r["id"]))
    image = np.zeros((256 * n, 256 * n), np.uint8)
    labels = np.zeros((256 * n, 256 * n), np.int32)
    offset = 0
    for k, row in enumerate(rows[: n * n]):
        y, x = divmod(k, n)
        tile = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png")
        lab = imread(data_dir / "dsb2018" / "labels" / f"{row['id']}.png").astype(np.int32)
        image[256 * y: 256 * (y + 1), 256 * x: 256 * (x + 1)] = tile if tile.ndim == 2 else tile[..., 0]
        labels[256 * y: 256 * (y + 1), 256 * x: 256 * (x + 1)] = np.where(lab > 0, lab + offset, 0)
        offset = int(labels.max())
    return image, labels


def click_in_event_loop(click: Callable[[], None]) -> float:
    """Press a button as a user does: from inside the running event loop, where Qt delivers a
    click (superqt then starts a worker in a later turn, once the window has painted what the
    click changed; called from outside any event loop, it starts the thread at once). Returns the
    time of the click (``time.perf_counter()``)."""
    from qtpy.QtCore import QTimer

    clicked: list[float] = []

    def press() -> None:
        clicked.append(time.perf_counter())
        click()

    QTimer.singleShot(0, press)
    wait_until(lambda: bool(clicked), 30)
    return clicked[0]


def phase_first_slice(viewer: Any, image_layer: Any, meter: StallMeter, timeout: float = 300) -> dict[str, Any]:
    """The Segment widget's first "Current slice" run with the built-in model (the widget is
    docked, or docked now, before the clock starts); the clock stops 0.5 s after the run ended
    (the labels drawn)."""
    dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")  # (the docked one)
    dock.raise_()
    segment.reset_choices()
    segment._image_combo.value = image_layer
    segment._model_cache.clear()
    idle(0.5)
    meter.start()
    t0 = click_in_event_loop(segment._run_button.clicked.emit)
    wait_until(lambda: segment._worker is None, timeout)
    took = time.perf_counter() - t0
    idle(0.5)
    return {"gaps": meter.stop(), "seconds": took, "widget": segment}


def phase_finetune(viewer: Any, image_layer: Any, masks_layer: Any, meter: StallMeter, *, steps: int,
                   patch: int, batch: int, timeout: float = 3600) -> dict[str, Any]:
    """Fine-tune the built-in model for ``steps`` steps on the masks layer's (corrected) plane."""
    from napari_unet.core.catalog import list_models
    from napari_unet.widgets._corrections import CorrectedSlices

    dock, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    dock.raise_()
    CorrectedSlices.for_layer(masks_layer).mark(())
    tune.corrected_panel._image_combo.value = image_layer
    tune.corrected_panel._labels_combo.value = masks_layer
    settings = tune.settings_panel
    settings._base_model.value = str(next(e.path for e in list_models() if e.builtin))
    settings._steps.value, settings._patch_size.value, settings._batch_size.value = steps, patch, batch
    settings._device.value = "cpu"
    idle(0.5)
    meter.start()
    t0 = click_in_event_loop(tune.run_panel._start_button.native.click)
    if getattr(tune, "replace_question", None) is not None:
        raise RuntimeError("the new model name is taken; use an empty model folder (NAPARI_UNET_MODELS)")
    wait_until(lambda: tune.run_panel._worker is None, timeout)
    took = time.perf_counter() - t0
    idle(0.5)
    return {"gaps": meter.stop(), "seconds": took, "widget": tune,
            "steps": len(tune.run_panel.curves.history["step"])}


def full_collection_cost(repeats: int = 3) -> dict[str, float]:
    """What one full garbage collection costs now (the window waits that long whenever Python runs
    one, from any thread): the shortest of a few, in seconds, and how many objects it walks and how
    many are frozen out of its way (``gc.freeze``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}


def run(steps: int, patch: int, batch: int, diagnose: bool, size: int = 1024) -> dict[str, Any]:
    """Both phases in a new napari window; returns their summaries (and stall samples)."""
    import napari

    image, truth = dsb_mosaic(n=size // 256)
    viewer = napari.Viewer(show=True)
    try:
        # as `napari-unet gui` does: the widgets are docked when napari starts, then an image is opened
        viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
        layer = viewer.add_image(image, name="mosaic")
        idle(5.0)  # the user looks at the image before pressing Segment
        meter = StallMeter(diagnose)
        first = phase_first_slice(viewer, layer, meter)
        first_samples, first_gc = meter.samples, list(meter.full_collections)
        masks = viewer.layers["mosaic masks"]
        masks.data = truth  # the user's correction: the ground truth
        idle(0.5)
        tune = phase_finetune(viewer, layer, masks, meter, steps=steps, patch=patch, batch=batch)
        tune_samples, tune_gc = meter.samples, list(meter.full_collections)
        collection = full_collection_cost()
    finally:
        viewer.close()
    return {
        "first_slice": {**summarise(first["gaps"]), "seconds": first["seconds"], "samples": first_samples,
                        "full_gc": first_gc},
        "finetune": {**summarise(tune["gaps"]), "seconds": tune["seconds"], "steps": tune["steps"],
                     "samples": tune_samples, "full_gc": tune_gc},
        "collection": collection,
    }


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    model = re.search(r"Model name:\s*(.+)", out)
    cpus = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M)
    return f"{model.group(1).strip() if model else '?'}, {cpus.group(1) if cpus else '?'} CPUs"


def _collections(seconds: list[float]) -> str:
    """"2 (251 ms)": how many full garbage collections, the longest; "0" when none."""
    return f"{len(seconds)} ({max(seconds) * 1000:.0f} ms)" if seconds else "0"


def _table(results: dict[str, Any]) -> str:
    rows = ["| phase | run time | longest stall | 99th percentile | stalls > 100 ms | stalls > 200 ms | ticks "
            "| full garbage collections (longest) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = {"first_slice": "first current slice, 1024 x 1024", "finetune": "fine-tuning"}
    for key, name in names.items():
        r = results[key]
        label = name + (f", {r['steps']} steps" if key == "finetune" else "")
        rows.append(f"| {label} | {r['seconds']:.1f} s | {r['max'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms "
                    f"| {r['over_100ms']} | {r['over_200ms']} | {r['ticks']} | {_collections(r['full_gc'])} |")
    return "\n".join(rows)


def write_results(text: str) -> None:
    """The run's block of RESULTS.md (``benchmarks/_results.py``: the hand-written sections stay)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _results import write_block

    write_block("bench_gui", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--patch-size", type=int, default=0, help="0: Auto, the widget's default (the network's own)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: Auto, the widget's default (the network's own)")
    parser.add_argument("--diagnose", action="store_true", help="print what blocked each stall over 100 ms")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence added under the table (e.g. the machine's load)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("NAPARI_UNET_DEVICE", "cpu")
    if "NAPARI_UNET_MODELS" not in os.environ:  # a fresh model folder: the new model's name is free
        import tempfile

        os.environ["NAPARI_UNET_MODELS"] = tempfile.mkdtemp(prefix="bench-gui-models-")
    import torch

    load = os.getloadavg()
    results = run(args.steps, args.patch_size, args.batch_size, args.diagnose)
    load_after = os.getloadavg()
    table = _table(results)
    c = results["collection"]
    table += (f"\n\nA full garbage collection after both phases: {c['seconds'] * 1000:.0f} ms "
              f"({c['tracked']:,} objects walked, {c['frozen']:,} frozen out of its way).")
    print(table)
    if args.diagnose:
        for key in ("first_slice", "finetune"):
            print(f"\n===== {key}: stall samples =====")
            for when, text in results[key]["samples"]:
                print(f"--- t={when:.3f}\n{text}")
    import napari

    text = (f"{SECTION}\n\n`xvfb-run -a -s \"-screen 0 1600x1000x24\" python benchmarks/bench_gui.py"
            f"{'' if args.steps == 300 else f' --steps {args.steps}'}` (a real napari window under Xvfb; a "
            f"{TICK_MS} ms `QTimer` on the main thread, a stall is the gap between two of its ticks). "
            f"Phase 1: the Segment widget's first *Current slice* on a 1024 x 1024 mosaic of 16 DSB2018 "
            f"fluorescence fields with the built-in model (model loading, masks layer, network, labels drawn). "
            f"Phase 2: *Fine-tune* of the built-in model on that image with its ground truth as the "
            f"correction, patch {args.patch_size or 'Auto'}, batch {args.batch_size or 'Auto'} (Auto: the "
            f"built-in model's 128 x 8), on the CPU.\n\n"
            f"Machine: {_cpu()}; {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), napari {napari.__version__}. "
            f"Load average {load[0]:.1f} before, {load_after[0]:.1f} after: the VM is shared with other jobs, "
            f"so stalls from the OS scheduler are part of the figures. "
            f"Date: {dt.date.today().isoformat()}.\n\n{table}\n")
    if args.note:
        text += f"\n{args.note}\n"
    if not args.no_write:
        write_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
