"""Memory of Segment's whole-stack masks in napari: held in memory against held in a file on disk.

Masks larger than the memory free go to a file (a memory map, ``napari_unet.widgets._disk_masks``);
the system writes their pages back to it and drops them as it needs the memory. This script opens an
8-bit TYX stack lazily in a real napari window (mostly blank planes: the figures are the masks'
handling, not the network's), segments the whole stack with the Segment dock, once with the masks in
memory and once forced to disk, each in a fresh process, and prints the peak of the process's
anonymous memory (``RssAnon``: what the system cannot drop without swap) and of its file-backed
pages (``RssFile``), the run's time, and the time to save the masks (Correct's writer).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_disk_masks.py [--planes 400] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["bench"])
import numpy as np
import napari
import napari_unet.io._reader as reader
reader.LAZY_THRESHOLD_BYTES = 0  # what a stack over 1 GiB gets
from napari_unet.widgets import _disk_masks
if args["disk"] is True:
    _disk_masks.MASKS_MEMORY_SHARE = 1e-9  # what masks larger than the memory free get
elif args["disk"] is False:
    _disk_masks.MASKS_MEMORY_SHARE = 1e9  # held in memory whatever their size (as before this change)
from bench_gui import wait_until

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out

peak = {"RssAnon": 0, "RssFile": 0}
sampling = True
def sample():
    while sampling:
        for k, v in status().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.02)

viewer = napari.Viewer()
_dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
layers = viewer.open(args["path"], plugin="napari-unet")
image = layers[0]
w.reset_choices()
w._image_combo.value = image
w._scope.value = "Whole stack"
w._sizing.field.value = "17"
wait_until(lambda: True, 5)
before = status()
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
w._run_button.clicked.emit()
wait_until(lambda: w._worker is None, 3600)
took = time.perf_counter() - start
masks = viewer.layers[image.name + " masks"]
from napari_unet.io._writer import write_labels
t = time.perf_counter()
write_labels(args["out"], masks.data, corrected=masks.metadata)
saved = time.perf_counter() - t
sampling = False
time.sleep(0.05)
print("RESULT " + json.dumps({"took": took, "saved": saved, "peak": peak, "before": before,
                              "on_disk": _disk_masks.on_disk(masks.data), "dtype": str(masks.data.dtype),
                              "shape": list(masks.data.shape), "status": w._status.value}))
"""


def make_stack(path: Path, planes: int, side: int) -> int:
    import numpy as np
    import tifffile

    stack = np.full((planes, side, side), 7, np.uint8)
    stack[0, 64:96, 64:96] = 200  # one object on the first plane: the rest is blank
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX"})
    return stack.nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=400)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="run each way in a memory cgroup capped at this (Linux, root, cgroup v1); the masks "
                             "then go where the plugin puts them by itself ('auto'), besides in memory forced")
    args = parser.parse_args()
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_3d import machine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        nbytes = make_stack(path, args.planes, args.side)
        preexec = None
        if args.memory_limit_gb:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from bench_inference import _memory_cgroup

            procs = _memory_cgroup(args.memory_limit_gb) / "cgroup.procs"

            def preexec() -> None:  # runs in the child before exec: join the capped cgroup
                procs.write_text(str(os.getpid()))

        for disk in ((False, None) if args.memory_limit_gb else (False, True)):
            spec = {"path": str(path), "out": str(Path(tmp) / f"masks{disk}.tif"), "disk": disk,
                    "bench": str(ROOT / "benchmarks")}
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                                  env={**os.environ, "NAPARI_UNET_CACHE_DIR": str(Path(tmp) / "cache")},
                                  preexec_fn=preexec)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None and args.memory_limit_gb:
                killed = "killed by the system (out of memory)" if done.returncode in (-9, 137) else \
                    f"failed (exit {done.returncode})"
                rows.append(f"| {'in memory (forced)' if disk is False else 'auto'} | | {killed} | | | |")
                if done.returncode not in (-9, 137):
                    print(done.stderr[-3000:], file=sys.stderr)
                continue
            if line is None:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return 1
            r = json.loads(line[7:])
            mb = 1e6
            masks_mb = int(np.prod(r["shape"])) * (2 if r["dtype"] == "uint16" else 4) / mb
            where = ("on disk" if r["on_disk"] else "in memory") + (" (auto)" if disk is None else "")
            rows.append(f"| {where} | {r['dtype']} {' x '.join(map(str, r['shape']))} "
                        f"({masks_mb:.0f} MB) | {(r['peak']['RssAnon'] - r['before']['RssAnon']) / mb:.0f} | "
                        f"{r['peak']['RssFile'] / mb:.0f} | {r['took']:.1f} | {r['saved']:.1f} |")
    if args.memory_limit_gb:  # (the capped group removed: it held its limit for anything put there later)
        try:
            procs.parent.rmdir()
        except OSError:
            pass
    table = "\n".join([
        f"{args.planes} planes of {args.side} x {args.side}, 8-bit, opened lazily ({nbytes / 1e6:.0f} MB; blank but the "
        "first), Segment's whole stack with the built-in model, then the masks saved (`io._writer.write_labels`)"
        + (f", in a memory cgroup capped at {args.memory_limit_gb:g} GiB. " if args.memory_limit_gb else ". ") +
        f"{machine()}, {dt.date.today()}.",
        "",
        "| masks | layer | anonymous memory, peak over the start (MB) | file-backed pages, peak (MB) | run (s) | save (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ])
    print(table)
    if args.write:
        from _results import write_block

        write_block("bench_disk_masks_capped" if args.memory_limit_gb else "bench_disk_masks", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
