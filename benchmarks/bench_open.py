"""Benchmark: open a > 4 GB BigTIFF stack and show one slice, napari-unet's reader vs napari's own.

Each reader runs in its own subprocess (a headless ``napari.components.ViewerModel``), so that the
peak memory (``resource.getrusage(...).ru_maxrss``) of one does not pollute the other.

Usage::

    python benchmarks/bench_open.py                 # make a 4.2 GB stack in a temp folder, delete it after
    python benchmarks/bench_open.py --path big.tif  # use (or create, and keep) this file
    python benchmarks/bench_open.py --size-gb 1     # a smaller stack

Prints, per reader: time to open (``viewer.open``, including the first slice napari draws), time
to show another slice, and the process's peak resident memory; then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLANE = (2048, 1024)  # Y, X of each uint16 plane (4 MiB)
READERS = {"napari-unet": "napari-unet", "napari builtin": "napari"}


def make_stack(path: Path, size_gb: float) -> tuple[int, int, int]:
    """Write a ZYX uint16 BigTIFF of about ``size_gb`` GB plane by plane (little memory)."""
    import numpy as np
    import tifffile

    plane_bytes = PLANE[0] * PLANE[1] * 2
    n = int(np.ceil(size_gb * 1e9 / plane_bytes))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 200, size=PLANE, dtype=np.uint16)

    def planes():
        for z in range(n):
            yield noise + np.uint16(z % 1000)

    tifffile.imwrite(path, planes(), shape=(n, *PLANE), dtype=np.uint16, bigtiff=True,
                     metadata={"axes": "ZYX"}, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return (n, *PLANE)


def child(reader: str, path: str) -> None:
    """Measure one reader (runs in a fresh process); prints one JSON line."""
    import numpy as np
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # discover npe2 plugins, as napari's app does at start
    viewer = ViewerModel()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    layers = viewer.open(path, plugin=reader)
    t_open = time.perf_counter() - t0
    layer = layers[0]
    n = layer.data.shape[0]
    target = n // 3 if viewer.dims.current_step[0] != n // 3 else n // 4
    t0 = time.perf_counter()
    viewer.dims.set_current_step(0, target)
    shown = np.asarray(layer._slice.image.view)
    t_slice = time.perf_counter() - t0
    expected = np.asarray(layer.data[target])
    ok = shown.shape == expected.shape and bool(np.array_equal(shown, expected))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "reader": reader, "open_s": t_open, "slice_s": t_slice, "peak_mb": peak_kb / 1024,
        "baseline_mb": rss_before / 1024, "lazy": not isinstance(layer.data, np.ndarray),
        "shape": list(layer.data.shape), "slice_ok": ok,
    }))


def run_reader(reader: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", reader, str(path)],
                         capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{reader} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, help="stack to open (created if missing, then kept)")
    parser.add_argument("--size-gb", type=float, default=4.2, help="size of the created stack (GB)")
    parser.add_argument("--child", nargs=2, metavar=("PLUGIN", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    tmpdir = None
    path = args.path
    if path is None:
        tmpdir = Path(tempfile.mkdtemp(prefix="napari_unet_bench_"))
        path = tmpdir / "stack_4gb.tif"
    try:
        if not path.exists():
            t0 = time.perf_counter()
            shape = make_stack(path, args.size_gb)
            print(f"wrote {path} {shape} uint16 in {time.perf_counter() - t0:.1f} s")
        size = path.stat().st_size
        print(f"file: {size / 1e9:.2f} GB; machine: {platform.node()} {platform.machine()}, "
              f"{os.cpu_count()} CPUs, {_ram_gb():.0f} GB RAM, Python {platform.python_version()}")
        results = {name: run_reader(plugin, path) for name, plugin in READERS.items()}
        ours, theirs = results["napari-unet"], results["napari builtin"]
        print(f"{'':28}{'napari-unet':>14}{'napari builtin':>16}{'ratio builtin/ours':>20}")
        for key, label, unit in (("open_s", "open (viewer.open)", "s"), ("slice_s", "show another slice", "s"),
                                 ("peak_mb", "peak memory (maxrss)", "MB")):
            a, b = ours[key], theirs[key]
            print(f"{label:28}{a:>12.2f} {unit:<2}{b:>13.2f} {unit:<2}{b / a if a else float('inf'):>19.1f}x")
        for name, r in results.items():
            print(f"{name}: lazy={r['lazy']} shape={r['shape']} slice correct={r['slice_ok']} "
                  f"(memory before open {r['baseline_mb']:.0f} MB)")
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return float("nan")


if __name__ == "__main__":
    sys.exit(main())
