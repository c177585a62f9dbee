"""Benchmark: 3D objects from z-stacks (``core.volume``) against the peers a user would try.

1. Accuracy and time on ``nuclei3d_synthetic`` (StarDist's synthetic 3D nuclei, 51 objects,
   (31, 61, 57), BSD-3; no voxel size in the file, so isotropic voxels are assumed), 3D AP@0.5
   (one-to-one matching of 3D objects at IoU > 0.5, ``core.metrics``):

   * napari-unet 3D (defaults: xy + yz + xz views averaged, seeded 3D watershed), built-in model;
   * napari-unet 3D with xy planes only;
   * napari-unet plane stitching (``mode="stitch"``);
   * "today": the built-in model's xy planes stacked, interior components as seeds of a plain 3D
     watershed on the boundary probability (what the issue measured before this work);
   * classic 3D: Gaussian smoothing, Otsu threshold, distance transform, its maxima as seeds of a
     watershed (no network).

   And the same stack z-subsampled (every 1.5th plane by linear interpolation, every 2nd, every
   3rd: planes 1.5x / 2x / 3x further apart than the pixels), the voxel size given (dz, 1, 1):
   the defaults, xy planes only, all three views, and no voxel size given (isotropic assumed).

2. Fine-tuning on a few planes: the built-in model is fine-tuned on the ground truth of planes
   of the top half only (2D examples), and 3D AP@0.5 is scored on the bottom half (planes 16-30
   of the labels, whole-stack segmentation cropped), before and after.

3. A stack larger than 2 GB: the synthetic stack upsampled 2x in xy, tiled and mirrored to
   (Z, Y, X) float32 in a temporary memory map; 3D objects (xy planes only) with the built-in model,
   probabilities in a temporary memory map, labels into a memory-mapped ``out``. Peak resident
   memory (``ru_maxrss`` of a subprocess) and wall time.

Usage::

    nice python benchmarks/bench_3d.py                 # all, writes the "3D objects" section of RESULTS.md
    python benchmarks/bench_3d.py --skip-large --skip-finetune --no-write
    python benchmarks/bench_3d.py --large-gb 0.3 --no-write   # a smaller "large" run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from builtin_data import shared_data  # noqa: E402

DATA = shared_data(ROOT)


def load_stack() -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    folder = DATA / "nuclei3d_synthetic"
    return tifffile.imread(folder / "image.tif"), tifffile.imread(folder / "labels.tif").astype(np.int32)


# --------------------------------------------------------------------- peers
def today_stacked_planes(model, image: np.ndarray) -> np.ndarray:
    """The built-in model's xy probabilities stacked; interior components seed a 3D watershed."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from napari_unet.core.predict import predict_probabilities

    probs = predict_probabilities(model, image)  # (Z, 3, Y, X)
    threshold = model.postprocessing["threshold"]
    interior, boundary = probs[:, 1], probs[:, 2]
    foreground = interior + boundary > threshold
    seeds, _ = ndi.label((interior > threshold) & foreground)
    return watershed(boundary, seeds, mask=foreground).astype(np.int32)


def classic_3d(image: np.ndarray, diameter: float) -> np.ndarray:
    """Gaussian (sigma 1), Otsu, distance transform, maxima >= diameter / 2 apart, watershed."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0)
    foreground = smooth > threshold_otsu(smooth)
    distance = ndi.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=max(1, int(diameter / 2)), labels=foreground.astype(np.int32),
                           exclude_border=False)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def accuracy_table(model, image: np.ndarray, truth: np.ndarray) -> list[tuple[str, float, int, float]]:
    from napari_unet.core.metrics import matching
    from napari_unet.core.scale import median_diameter
    from napari_unet.core.volume import segment_volume

    rows = []
    runs = [
        ("napari-unet 3D (xy + yz + xz, default)", lambda: segment_volume(model, image)),
        ("napari-unet 3D, xy planes only", lambda: segment_volume(model, image, orthogonal=False)),
        ("napari-unet plane stitching", lambda: segment_volume(model, image, mode="stitch")),
        ("xy planes stacked + plain 3D watershed (before)", lambda: today_stacked_planes(model, image)),
        ("classic 3D Otsu + distance watershed", lambda: classic_3d(
            image, np.median([median_diameter(p) for p in truth if p.any()]))),
    ]
    for name, run in runs:
        start = time.perf_counter()
        labels = run()
        took = time.perf_counter() - start
        m = matching(truth, labels, 0.5)
        rows.append((name, m.average_precision, m.n_pred, took))
        print(f"{name:50s} AP@0.5 {m.average_precision:.3f}  objects {m.n_pred:3d} / {m.n_true}  {took:6.1f} s",
              flush=True)
    return rows


ANISOTROPY_FACTORS = (1.0, 1.5, 2.0, 3.0)


def z_subsampled(image: np.ndarray, truth: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The stack with planes ``factor`` times further apart: every factor-th plane (integers), else
    planes interpolated linearly at that step (labels: the nearest plane)."""
    if float(factor).is_integer():
        return image[:: int(factor)], truth[:: int(factor)]
    n = image.shape[0]
    z = np.linspace(0, n - 1, int(round(n / factor)))
    z0 = np.floor(z).astype(int)
    z1 = np.minimum(z0 + 1, n - 1)
    w = (z - z0)[:, None, None]
    planes = (image[z0].astype(np.float32) * (1 - w) + image[z1].astype(np.float32) * w).astype(np.float32)
    return planes, truth[np.round(z).astype(int)]


def anisotropy_rows(model, image: np.ndarray, truth: np.ndarray) -> list[tuple[float, list[float]]]:
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.volume import segment_volume

    rows = []
    for factor in ANISOTROPY_FACTORS:
        stack, labels = z_subsampled(image, truth, factor)
        spacing = (factor, 1.0, 1.0)
        runs = [dict(spacing=spacing), dict(spacing=spacing, orthogonal=False),
                dict(spacing=spacing, orthogonal=True), {}]
        aps = [average_precision(labels, segment_volume(model, stack, **kw)) for kw in runs]
        rows.append((factor, aps))
        print(f"dz = {factor:g} dx: " + "  ".join(f"{ap:.3f}" for ap in aps), flush=True)
    return rows


def finetune_rows(model, image: np.ndarray, truth: np.ndarray, planes: list[int], budget: float,
                  split: int) -> list[tuple[str, float]]:
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.train import run_finetune
    from napari_unet.core.volume import segment_volume

    before = segment_volume(model, image)
    tuned = run_finetune(model, [image[z] for z in planes], [truth[z] for z in planes], time_budget=budget,
                         device="cpu", seed=0, patch_size=64, batch_size=8)
    after = segment_volume(tuned, image)
    rows = [("built-in model", average_precision(truth[split:], before[split:])),
            (f"fine-tuned on planes {', '.join(map(str, planes))} ({budget:.0f} s)",
             average_precision(truth[split:], after[split:]))]
    for name, ap in rows:
        print(f"{name:50s} 3D AP@0.5 on planes {split}-{len(truth) - 1}: {ap:.3f}", flush=True)
    return rows


# --------------------------------------------------------------------- large
LARGE_CHILD = r"""
import json, resource, sys, threading, time
import numpy as np
peak_anon = [0]
def sample():  # private (anonymous) memory: ru_maxrss also counts the mapped file pages read
    while True:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
sys.path.insert(0, {root!r})
from napari_unet.core import load_model
from napari_unet.core.events import run_to_end
from napari_unet.core.volume import iter_segment_volume
image = np.load({path!r}, mmap_mode="r")
out = np.lib.format.open_memmap({out!r}, mode="w+", dtype=np.int32, shape=image.shape)
model = load_model(device="cpu")
start = time.perf_counter()
labels = run_to_end(iter_segment_volume(model, image, orthogonal=False, out=out, workdir={work!r}))
took = time.perf_counter() - start
print(json.dumps({{"seconds": took, "objects": int(max(int(labels[z].max()) for z in range(0, labels.shape[0], 8))),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": peak_anon[0] / 1024}}))
"""


def large_run(gigabytes: float, folder: Path) -> dict:
    image, _ = load_stack()
    up = np.repeat(np.repeat(image.astype(np.float32), 2, axis=1), 2, axis=2)  # (31, 122, 114), ~22 px nuclei
    nz = 64
    side = int(np.sqrt(gigabytes * 1e9 / 4 / nz)) + 1
    shape = (nz, side, side)
    path = folder / "large.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    zidx = np.array([i % (2 * up.shape[0]) for i in range(nz)])
    zidx = np.where(zidx < up.shape[0], zidx, 2 * up.shape[0] - 1 - zidx)  # mirrored in z
    for z in range(nz):
        plane = up[zidx[z]]
        reps = (side // plane.shape[0] + 1, side // plane.shape[1] + 1)
        big[z] = np.tile(plane, reps)[:side, :side]
    big.flush()
    size_gb = big.nbytes / 1e9
    del big
    print(f"large stack {shape} float32, {size_gb:.2f} GB", flush=True)
    code = LARGE_CHILD.format(root=str(ROOT), path=str(path), out=str(folder / "labels.npy"), work=str(folder))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(shape=shape, gigabytes=size_gb)
    print(result, flush=True)
    return result


# --------------------------------------------------------------------- report
def machine() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"Model name:\s*(.+)", text)
        model = found.group(1).strip() if found else model
        flag_line = re.search(r"Flags:\s*(.+)", text)
        wanted = ("avx", "avx2", "avx512f", "avx512_bf16", "amx_tile", "fma", "sse4_2")
        flags = " ".join(f for f in (flag_line.group(1).split() if flag_line else []) if f in wanted)
    except OSError:
        pass
    import torch

    return (f"{model} ({os.cpu_count()} cores seen; flags {flags}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def command_line() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _results import command_line as typed

    return typed()


def write_section(text: str) -> None:
    """The run's block of RESULTS.md (``benchmarks/_results.py``: the hand-written sections stay)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _results import write_block

    write_block("bench_3d", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--large-gb", type=float, default=2.1)
    parser.add_argument("--budget", type=float, default=120.0, help="fine-tuning seconds")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from napari_unet.core import load_model

    model = load_model(device="cpu")
    image, truth = load_stack()
    lines = ["## 3D objects", "",
             f"`{command_line()}` on {dt.date.today().isoformat()}. Machine: {machine()}; "
             f"load average {os.getloadavg()[0]:.1f} at the start (other jobs on the machine slow the timings).", "",
             "### Accuracy on nuclei3d_synthetic (31 x 61 x 57, 51 nuclei, no voxel size: isotropic assumed)", "",
             "| method | 3D AP@0.5 | objects (51 true) | time |", "| --- | ---: | ---: | ---: |"]
    for name, ap, n, took in accuracy_table(model, image, truth):
        lines.append(f"| {name} | {ap:.3f} | {n} | {took:.1f} s |")
    lines += ["", "### Planes further apart than the pixels (the stack z-subsampled, voxel size given)", "",
              "| dz / dx | default | xy planes only | xy + yz + xz | no voxel size given |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {factor:g} | " + " | ".join(f"{ap:.3f}" for ap in aps) + " |"
              for factor, aps in anisotropy_rows(model, image, truth)]
    if not args.skip_finetune:
        split = image.shape[0] // 2 + 1
        rows = finetune_rows(model, image, truth, [3, 7, 11], args.budget, split)
        lines += ["", f"### Fine-tuned on three planes of the top half, scored on planes {split}-{image.shape[0] - 1}",
                  "", "Ground truth of xy planes 3, 7 and 11 as 2D examples (`core.train.run_finetune`, patch 64, "
                  f"batch 8, {args.budget:.0f} s on the CPU); 3D segmentation of the whole stack with the default "
                  f"3D settings, labels of both cropped to planes {split}-{image.shape[0] - 1} (no plane used for "
                  "training is scored).", "", "| model | 3D AP@0.5 (bottom half) |", "| --- | ---: |"]
        lines += [f"| {name} | {ap:.3f} |" for name, ap in rows]
    if not args.skip_large:
        with tempfile.TemporaryDirectory(prefix="bench3d-") as folder:
            big = large_run(args.large_gb, Path(folder))
        lines += ["", "### A stack larger than 2 GB", "",
                  f"{big['shape']} float32, {big['gigabytes']:.2f} GB (the synthetic stack upsampled 2x in xy, tiled, "
                  "mirrored in z) in a memory map; built-in model, 3D mode with xy planes only (orthogonal views "
                  "off: three times the network time on this 2-core machine), probabilities in a temporary "
                  "memory map, labels into a memory-mapped `out`, watershed in blocks. Run in a subprocess.", "",
                  "| wall time | peak private memory (RssAnon, sampled) | peak ru_maxrss | objects |",
                  "| ---: | ---: | ---: | ---: |",
                  f"| {big['seconds'] / 60:.1f} min | {big['anon_mb']:.0f} MB | {big['maxrss_mb']:.0f} MB | "
                  f"{big['objects']} (max id seen) |", "",
                  "ru_maxrss counts the pages of the memory-mapped files (image, probabilities, labels: about "
                  f"{big['gigabytes'] * 3:.1f} GB on disk) that were resident at once; the "
                  "kernel can drop those at will. The private memory (RssAnon, sampled every 0.2 s) is what the run "
                  "itself holds: Python, ONNX Runtime and one watershed block with its halo."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
