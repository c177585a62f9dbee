"""Bright debris: how much a few very bright blobs in a fluorescence image cost the nuclei around them.

Dead cells, dust and precipitates are often several times brighter than the nuclei. This adds
discs (1.2x the image's median nucleus diameter, at random places, their edges blurred as the optics
blur the nuclei: ``--blur``, sigma in px) covering 0.5% or 2% of DSB2018 val fluorescence images, at
1x, 3x or 8x the nuclei's brightness (their 90th percentile), segments them with the automatic
diameter and scores AP@0.5 against the ground truth with the discs left out of both (the objects
found mostly on a disc too: only what the debris does to the nuclei counts). 1x (dim debris of the
same shapes) separates the cost of the shapes from that of the brightness. (``--blur 0``: the sharp
discs of the first version, whose plateaus at the image's highest value the plane loop now takes for
marks burned in, and fills.)

Usage::

    NAPARI_UNET_DATA=../shared/data python benchmarks/bench_debris.py [--model nuclei] [--high 99.8]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("NAPARI_UNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CONDITIONS = [(0.0, 0.0), (0.02, 1.0), (0.005, 3.0), (0.02, 3.0), (0.005, 8.0), (0.02, 8.0)]


def debris_mask(shape: tuple[int, int], diameter: float, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Random discs of 1.2x ``diameter`` until they cover ``fraction`` of the plane."""
    mask = np.zeros(shape, bool)
    if fraction <= 0:
        return mask
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    while mask.mean() < fraction:
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < (0.6 * diameter) ** 2
    return mask


def _mostly_in(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The labels of ``labels`` with more than half of their pixels in ``mask``."""
    inside = np.bincount(labels[mask].ravel(), minlength=int(labels.max()) + 1)
    total = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    ids = np.flatnonzero(inside * 2 > total)
    return ids[ids > 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--high", type=float, default=None, help="normalisation's high percentile (default: the model's)")
    parser.add_argument("--every", type=int, default=3, help="every k-th val fluorescence image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blur", type=float, default=1.0, help="sigma (px) of the debris' edges; 0: sharp discs")
    args = parser.parse_args(argv)

    import torch
    from scipy import ndimage as ndi
    from skimage.io import imread

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment
    from napari_unet.core.scale import median_diameter

    model = load_model(args.model, device="cpu")
    if args.high is not None:
        model.normalization = {**model.normalization, "high": args.high}
    with open(DATA / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"][:: args.every]
    rng = np.random.default_rng(args.seed)
    scores: dict[tuple[float, float], list[float]] = {c: [] for c in CONDITIONS}
    t0 = time.perf_counter()
    for row in rows:
        image = imread(DATA / "dsb2018" / "images" / f"{row['id']}.png")
        truth = imread(DATA / "dsb2018" / "labels" / f"{row['id']}.png").astype(np.int32)
        if image.ndim == 3:
            image = image[..., :3].mean(-1)
        image = image.astype(np.float32)
        nuclei = float(np.percentile(image[truth > 0], 90)) if truth.any() else float(image.max())
        diameter = median_diameter(truth) or 15.0
        masks = {f: debris_mask(image.shape, diameter, f, rng) for f in sorted({f for f, _ in CONDITIONS})}
        for fraction, brightness in CONDITIONS:
            mask = masks[fraction]
            x = image.copy()
            if brightness > 0:
                # the debris seen through the same optics as the nuclei: soft edges, not the abrupt
                # plateau of a mark burned in (which the plane loop takes for a region without data)
                blob = ndi.gaussian_filter(mask.astype(np.float32), args.blur) if args.blur > 0 else mask
                x = np.maximum(x, blob * nuclei * brightness)
            pred = segment(model, x, device="cpu")
            pred[np.isin(pred, _mostly_in(pred, mask))] = 0  # the debris found as objects: not scored
            pred[mask] = 0
            scores[(fraction, brightness)].append(average_precision(np.where(mask, 0, truth), pred))
    print(f"{len(rows)} DSB2018 val fluorescence images, model {model.name!r}, normalisation "
          f"{model.normalization}, {time.perf_counter() - t0:.0f} s; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    print("| debris | area | brightness (x nuclei) | AP@0.5 | change |")
    print("| --- | ---: | ---: | ---: | ---: |")
    clean = float(np.mean(scores[(0.0, 0.0)]))
    for (fraction, brightness), values in scores.items():
        what = "none" if fraction == 0 else "discs"
        ap = float(np.mean(values))
        print(f"| {what} | {100 * fraction:g}% | {brightness:g} | {ap:.3f} | {ap - clean:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
