"""Benchmark: the object tools on a 1024 x 1024 plane with several hundred real nuclei.

The plane is the DSB2018 fluorescence field with the most nuclei (520 x 696, 369 objects, CC0),
tiled 2 x 2 with new ids and cut to 1024 x 1024. Each operation of :mod:`napari_unet.core.edit`
runs on 25 different objects (or 25 times for whole-plane operations); the script prints the
median and the worst time of each.

The second table is the whole path of one edit in napari (no window): the core operation on
plane 10 of a (20, 1024, 1024) int32 masks layer (a view of the plane), ``data_setitem`` of the
changed pixels (undo history, partial refresh, paint event) and the corrected-slice tracker; then
the undo. Its last column is the peak of new memory (tracemalloc) during one edit, to show that
no edit copies the 80 MB stack.

Usage::

    python benchmarks/bench_edit.py [--data ../shared/data] [--repeats 25]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.io import imread

from napari_unet.core import edit

LIMIT_MS = 50.0


def crowded_plane(data: Path) -> np.ndarray:
    """1024 x 1024 int32 labels: the most crowded DSB2018 fluorescence field, tiled 2 x 2."""
    with open(data / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "grey_dark"]
    row = max(rows, key=lambda r: int(r["n_objects"]))
    field = imread(data / "dsb2018" / "labels" / f"{row['id']}.png").astype(np.int32)
    step = int(field.max())
    tiles = [[np.where(field > 0, field + step * (2 * i + j), 0) for j in range(2)] for i in range(2)]
    plane = np.ascontiguousarray(np.block(tiles)[:1024, :1024])  # like a plane of a stack
    edit.relabel_sequential(plane).apply(plane)  # ids 1..N
    return plane


def touching_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[touch].tolist(), b[touch].tolist())}
    return sorted(pairs)


class Clock:
    """Wall and CPU (process) time of a block, in ms."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_exc) -> None:
        self.wall = 1000 * (time.perf_counter() - self.wall)
        self.cpu = 1000 * (time.process_time() - self.cpu)


def timed(fn, runs) -> tuple[list[float], list[float]]:
    """Wall and CPU times of ``fn(*args)`` for each args of ``runs`` (after one untimed warm-up call,
    which pays for the lazy imports of scikit-image)."""
    fn(*runs[0])
    walls, cpus = [], []
    for args in runs:
        with Clock() as clock:
            fn(*args)
        walls.append(clock.wall)
        cpus.append(clock.cpu)
    return walls, cpus


def hole_centres(labels: np.ndarray, targets: list[int]) -> dict[int, tuple[int, int]]:
    """The pixel of each target object farthest from its edge."""
    centres = {}
    for t in targets:
        mask = labels == t
        box = edit.bounding_box(mask)
        obj = mask[box]
        local = np.unravel_index(np.argmax(ndi.distance_transform_edt(obj)), obj.shape)
        centres[t] = tuple(int(b.start + c) for b, c in zip(box, local))
    return centres


def split_seeds(labels: np.ndarray, label: int) -> list[tuple[int, int]]:
    """Two seeds at the two ends of an object's longest axis."""
    pts = np.argwhere(labels == label)
    axis = int(np.argmax(pts.max(0) - pts.min(0)))
    return [tuple(pts[np.argmin(pts[:, axis])]), tuple(pts[np.argmax(pts[:, axis])])]


def split_line(labels: np.ndarray, label: int) -> list[tuple[int, int]]:
    """A straight line right across the object, through its middle, across its longest axis."""
    pts = np.argwhere(labels == label)
    lo, hi = pts.min(0), pts.max(0)
    mid = (lo + hi) // 2
    if hi[0] - lo[0] >= hi[1] - lo[1]:
        return [(mid[0], lo[1] - 2), (mid[0], hi[1] + 2)]
    return [(lo[0] - 2, mid[1]), (hi[0] + 2, mid[1])]


def core_rows(plane: np.ndarray, repeats: int) -> list[tuple[str, tuple[list[float], list[float]]]]:
    rng = np.random.default_rng(0)
    sizes = np.bincount(plane.ravel())
    big = np.flatnonzero(sizes >= 150)
    big = big[big > 0]
    targets = [int(i) for i in rng.choice(big, size=repeats, replace=False)]
    pairs = [touching_pairs(plane)[i] for i in rng.choice(len(touching_pairs(plane)), size=repeats, replace=False)]
    probabilities = ndi.gaussian_filter((plane > 0).astype(np.float32), 2)
    holed = plane.copy()
    for y, x in hole_centres(plane, targets).values():  # a 3 x 3 hole in each target
        holed[y - 1 : y + 2, x - 1 : x + 2] = 0
    gappy = plane.copy()
    for t in targets:
        gappy[plane == t] = 0
    rows = [
        ("delete_object", timed(edit.delete_object, [(plane, t) for t in targets])),
        ("merge_objects (two touching)", timed(edit.merge_objects, [(plane, p) for p in pairs])),
        ("split_object, 2 seeds, distance transform",
         timed(lambda lab, t, s: edit.split_object(lab, t, seeds=s), [(plane, t, split_seeds(plane, t)) for t in targets])),
        ("split_object, 2 seeds, probabilities",
         timed(lambda lab, t, s: edit.split_object(lab, t, seeds=s, probabilities=probabilities),
               [(plane, t, split_seeds(plane, t)) for t in targets])),
        ("split_object, line",
         timed(lambda lab, t, line: edit.split_object(lab, t, line=line), [(plane, t, split_line(plane, t)) for t in targets])),
        ("fill_holes, one object", timed(edit.fill_holes, [(holed, t) for t in targets])),
        ("fill_holes, every object of the plane", timed(edit.fill_holes, [(holed,)] * repeats)),
        ("remove_small (under 30 px)", timed(edit.remove_small, [(plane, 30)] * repeats)),
        ("next_free_label (plane)", timed(edit.next_free_label, [(plane,)] * repeats)),
        ("relabel_sequential (25 gaps)", timed(edit.relabel_sequential, [(gappy,)] * repeats)),
    ]
    return rows


def layer_rows(plane: np.ndarray, repeats: int) -> list[tuple[str, list[float], list[float], float]]:
    from napari.layers import Labels

    from napari_unet.widgets._corrections import CorrectedSlices
    from napari_unet.widgets._object_tools import apply_edit

    stack = np.zeros((20, *plane.shape), dtype=np.int32)
    stack[10] = plane
    layer = Labels(stack, name="bench masks")
    tracker = CorrectedSlices.for_layer(layer)
    index = (10,)
    rng = np.random.default_rng(1)
    sizes = np.bincount(plane.ravel())
    targets = [int(i) for i in rng.choice(np.flatnonzero(sizes[1:] >= 150) + 1, size=repeats, replace=False)]
    seeds = {t: split_seeds(plane, t) for t in targets}
    centres = hole_centres(plane, targets)

    def prepare_fill(t):  # a 3 x 3 hole in object t, set directly (not an edit)
        y, x = centres[t]
        layer.data[index][y - 1 : y + 2, x - 1 : x + 2] = 0

    def delete(t):
        apply_edit(layer, index, edit.delete_object(layer.data[index], t))

    def split(t):
        apply_edit(layer, index, edit.split_object(layer.data[index], t, seeds=seeds[t],
                                                    new_label=edit.next_free_label(layer.data)))

    def fill(_t):
        apply_edit(layer, index, edit.fill_holes(layer.data[index]))

    rows = []
    for name, prepare, action in (("delete (click)", None, delete),
                                  ("split, 2 seeds (+ next free id of the stack)", None, split),
                                  ("fill holes of the plane (one 3 x 3 hole)", prepare_fill, fill)):
        walls, cpus, undo_walls, undo_cpus = [], [], [], []
        for n, t in enumerate([targets[0], *targets]):  # the first run is a warm-up
            if prepare:
                prepare(t)
            with Clock() as clock:
                action(t)
            with Clock() as undo:
                layer.undo()
            layer.data[index] = plane
            if n:
                walls.append(clock.wall)
                cpus.append(clock.cpu)
                undo_walls.append(undo.wall)
                undo_cpus.append(undo.cpu)
        if prepare:
            prepare(targets[0])
        tracemalloc.start()  # once more, for memory only (tracing slows numpy down)
        action(targets[0])
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        layer.undo()
        layer.data[index] = plane
        rows.append((name, walls, cpus, peak))
        rows.append(("  its undo (napari)", undo_walls, undo_cpus, float("nan")))
    assert tracker.planes == [index]
    return rows


def cpu_model() -> str:
    try:
        for line in os.popen("lscpu").read().splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("NAPARI_UNET_DATA", "../shared/data")))
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()

    import napari
    import scipy
    import skimage

    plane = crowded_plane(args.data)
    n_objects = len(np.unique(plane)) - 1
    print(f"{datetime.date.today()} | CPU: {cpu_model()}, {os.cpu_count()} logical cores | "
          f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"scikit-image {skimage.__version__}, napari {napari.__version__}")
    print(f"plane 1024 x 1024 int32, {n_objects} objects (DSB2018 field tiled 2 x 2); "
          f"{args.repeats} runs per operation\n")
    print("| operation (core, one plane) | median ms | worst ms | median CPU ms |")
    print("| --- | ---: | ---: | ---: |")
    worst_cpu = 0.0
    for name, (walls, cpus) in core_rows(plane, args.repeats):
        worst_cpu = max(worst_cpu, statistics.median(cpus))
        print(f"| {name} | {statistics.median(walls):.1f} | {max(walls):.1f} | {statistics.median(cpus):.1f} |")
    print("\n| in a napari Labels layer, plane 10 of (20, 1024, 1024) int32 | median ms | worst ms | median CPU ms "
          "| peak new memory |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, walls, cpus, peak in layer_rows(plane, args.repeats):
        if "undo" not in name:
            worst_cpu = max(worst_cpu, statistics.median(cpus))
        memory = "" if np.isnan(peak) else f"{peak:.1f} MB"
        print(f"| {name} | {statistics.median(walls):.1f} | {max(walls):.1f} | {statistics.median(cpus):.1f} "
              f"| {memory} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nslowest operation, median CPU time: {worst_cpu:.1f} ms "
          f"({'within' if worst_cpu <= LIMIT_MS else 'OVER'} the {LIMIT_MS:.0f} ms target); "
          f"load average during the run: {load:.1f} on {os.cpu_count()} cores")

if __name__ == "__main__":
    main()
