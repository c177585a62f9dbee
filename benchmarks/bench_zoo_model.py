"""A BioImage.IO Model Zoo model beside napari-unet's default model on DSB2018 val fluorescence images.

The zoo model is the spec's example package ``unet2d_nuclei_broad`` (a 2D U-Net for nuclei,
foreground probability; ../shared/data/bioimageio_unet2d_nuclei_broad), read by
:mod:`napari_unet.core.zoo_import` and run through napari-unet's pipeline: its own preprocessing
(zero mean, unit variance per image), its ONNX weights through ONNX Runtime, our tiles (its fixed
512 x 512 input, halo 32), instances from its foreground probability (threshold, connected
components, minimum size). It is run at each image's own scale (it records no object diameter).

For each model it prints the mean AP@0.5 and AP@0.75 over the images (one-to-one matching at
IoU > t, the DSB2018 / StarDist definition, as in the model card) and the seconds per image.

    python benchmarks/bench_zoo_model.py                 # all 39 val fluorescence images
    python benchmarks/bench_zoo_model.py --limit 10
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from builtin_data import shared_data  # noqa: E402

DATA = shared_data(Path(__file__).resolve().parents[1])


def load(limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from skimage.io import imread

    root = DATA / "dsb2018"
    with open(root / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"]
    rows = sorted(rows, key=lambda r: r["id"])[:limit]
    return [(r["id"], imread(root / "images" / f"{r['id']}.png"), imread(root / "labels" / f"{r['id']}.png"))
            for r in rows]


def machine() -> str:
    name, out = platform.processor() or platform.machine(), ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
    simd = " ".join(f for f in flags if f.startswith(("avx", "fma", "amx", "f16c")))
    return f"{name}, {os.cpu_count()} cores, flags: {simd or 'unknown'}"


def evaluate(model, pairs, diameter, threshold=None, min_size=None) -> tuple[float, float, float]:
    from napari_unet.core import segment
    from napari_unet.core.metrics import average_precision

    ap50, ap75, took = [], [], 0.0
    for _id, image, truth in pairs:
        start = time.perf_counter()
        labels = segment(model, image, diameter=diameter, threshold=threshold, min_size=min_size)
        took += time.perf_counter() - start
        ap50.append(average_precision(truth, labels, 0.5))
        ap75.append(average_precision(truth, labels, 0.75))
    return float(np.mean(ap50)), float(np.mean(ap75)), took / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N images (by id)")
    parser.add_argument("--package", default=str(DATA / "bioimageio_unet2d_nuclei_broad"),
                        help="the BioImage.IO package to compare (zip or folder)")
    args = parser.parse_args()

    import torch

    from napari_unet.core import load_model

    pairs = load(args.limit)
    ours = load_model(None, device="cpu")
    zoo = load_model(args.package, device="cpu")
    print(f"napari-unet bench_zoo_model  {datetime.date.today()}  {machine()}  torch {torch.__version__}")
    print(f"{len(pairs)} DSB2018 val fluorescence images (grey_dark); ONNX Runtime engine; mean over images")
    print(f"{'model':<60} | {'AP@0.5':>6} {'AP@0.75':>7} {'s/img':>6}")
    rows = [
        (f"napari-unet {ours.name} (auto diameter, default)", ours, "auto", None, None),
        (f"napari-unet {ours.name} (image's own scale)", ours, "native", None, None),
        (f"zoo {zoo.name} (own scale, threshold 0.5, min 16 px)", zoo, "native", None, None),
    ]
    for label, model, diameter, threshold, min_size in rows:
        ap50, ap75, seconds = evaluate(model, pairs, diameter, threshold, min_size)
        print(f"{label:<60} | {ap50:6.3f} {ap75:7.3f} {seconds:6.2f}", flush=True)
    # the zoo model's post-processing tuned on these very images: an upper bound for it, not a fair figure
    best = max(((t, m, *evaluate(zoo, pairs, "native", t, m)) for t in (0.3, 0.5, 0.7) for m in (0, 16, 32)),
               key=lambda r: r[2])
    print(f"{'zoo, best threshold/min size on these images':<60} | {best[2]:6.3f} {best[3]:7.3f} {best[4]:6.2f}"
          f"  (threshold {best[0]}, min {best[1]} px)")


if __name__ == "__main__":
    main()
