"""Low light: how the built-in model copes with the shot noise of a camera that caught few photons.

Live-cell fluorescence is imaged with as little light as will do (bleaching, phototoxicity), so
many real images are far noisier than DSB2018's. This turns DSB2018 val fluorescence images into
camera images of a given photon count: the nuclei's 90th percentile above the background becomes
N photons, plus 2 photons of background light, Poisson (shot) noise on all of it, Gaussian read
noise of 3 e-, an offset of 100 and 16-bit integers, as a camera writes them. Each is segmented
with the automatic diameter and scored (AP@0.5) against the ground truth. At 10-20 photons the
nuclei are still plain to see (a nucleus of 15 px holds thousands of photons); at 5 they are
faint but visible.

Usage::

    NAPARI_UNET_DATA=../shared/data python benchmarks/bench_noise.py [--model nuclei] [--photons 200 50 20 10 5]

``--model`` takes a built-in name or a model file, so that a candidate is measured beside the
shipped model in one run.

The noise is drawn from one generator (``--seed``) across the images and photon levels, in order:
the figures of a level depend on the levels asked before it, so compare only runs with the same
``--photons`` (the figures in RESULTS.md and the README are the default levels'). With 13 images,
one draw of the noise moves a level's AP by up to about 0.1 (``--photons 10 5`` alone: 0.720 / 0.416
for nuclei-fluo, against 0.695 / 0.533 in the default run): differences smaller than that between
two models are within the noise of the benchmark itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DATA = Path(os.environ.get("NAPARI_UNET_DATA", ROOT.parent / "shared" / "data"))
BACKGROUND_PHOTONS = 2.0
READ_NOISE = 3.0
OFFSET = 100.0


def camera_image(image: np.ndarray, truth: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` as a camera image whose nuclei (their 90th percentile above the background, the
    median outside them) caught ``photons`` photons: uint16 with shot and read noise."""
    image = np.asarray(image, np.float64)
    background = float(np.median(image[truth == 0])) if (truth == 0).any() else float(image.min())
    nuclei = float(np.percentile(image[truth > 0], 90)) if truth.any() else float(image.max())
    signal = np.clip(image - background, 0.0, None) / max(nuclei - background, 1e-6)
    counts = rng.poisson(signal * photons + BACKGROUND_PHOTONS) + rng.normal(OFFSET, READ_NOISE, image.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["nuclei"], help="built-in names or model files")
    parser.add_argument("--photons", type=float, nargs="+", default=[200, 50, 20, 10, 5])
    parser.add_argument("--every", type=int, default=3, help="every k-th val fluorescence image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from builtin_data import nuclei_rows

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment

    rows = [r for r in nuclei_rows(DATA / "dsb2018", "val") if r["kind"] == "grey_dark"][:: args.every]
    conditions: list[float | None] = [None, *args.photons]
    table: dict[str, list[float]] = {}
    for name in args.model:
        model = load_model(name, device="cpu")
        rng = np.random.default_rng(args.seed)  # the same noisy images for every model
        scores: dict[float | None, list[float]] = {c: [] for c in conditions}
        t0 = time.perf_counter()
        for row in rows:
            truth = row["labels"]
            image = row["image"].mean(-1) if row["image"].ndim == 3 else row["image"]
            for photons in conditions:
                x = image if photons is None else camera_image(image, truth, photons, rng)
                scores[photons].append(average_precision(truth, segment(model, x, device="cpu")))
        table[name] = [float(np.mean(scores[c])) for c in conditions]
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{len(rows)} DSB2018 val fluorescence images (one in {args.every}), AP@0.5 with the automatic diameter; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    header = " | ".join(["model", "clean", *(f"{p:g} photons" for p in args.photons)])
    print(f"| {header} |")
    print("| --- |" + " ---: |" * len(conditions))
    for name, values in table.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
