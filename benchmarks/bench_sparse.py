"""Fields with few objects: a sparse culture, cells clumped in one part of a large scan, one nucleus in
the field of view.

Per-image percentile normalisation maps the 99.8th percentile to 1; with few objects that percentile
lies in the background's noise, which is stretched to the full range. This builds such fields from
DSB2018 val fluorescence images (every third ``grey_dark`` image, made grey): ``k`` of an image's
nuclei that lie whole inside it, each with its own surroundings (6 px, without its neighbours),
pasted at random places into a 1024 x 1024 field of Gaussian noise with the median and spread of
that image's background (pixels more than 12 px from any nucleus). It prints AP@0.5 (automatic
diameter) against the pasted nuclei and the objects found beyond them.

Usage::

    NAPARI_UNET_DATA=../shared/data python benchmarks/bench_sparse.py [--model nuclei other.pt]
        [--objects 1 3 10 30 100]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DATA = Path(os.environ.get("NAPARI_UNET_DATA", ROOT.parent / "shared" / "data"))
FIELD = 1024
MARGIN = 6  # px of each nucleus' surroundings pasted with it


def sparse_field(
    image: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A FIELD x FIELD noise field holding ``k`` of the image's whole nuclei, and its truth."""
    from scipy import ndimage as ndi

    far = ndi.distance_transform_edt(labels == 0) > 12
    background = image[far] if far.sum() > 100 else image[labels == 0]
    field = rng.normal(np.median(background), background.std(), (FIELD, FIELD)).astype(np.float32)
    truth = np.zeros((FIELD, FIELD), np.int32)
    taken = np.zeros((FIELD, FIELD), bool)
    inner = ndi.binary_erosion(np.ones(labels.shape, bool), iterations=MARGIN + 2)
    ids = [i for i in np.unique(labels) if i and inner[labels == i].all()]
    rng.shuffle(ids)
    for i in ids:
        if truth.max() == k:
            break
        nucleus = labels == i
        neighbours = ndi.binary_dilation((labels > 0) & ~nucleus, iterations=3)
        keep = ndi.binary_dilation(nucleus, iterations=MARGIN) & ~neighbours
        ys, xs = np.nonzero(keep)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        for _ in range(50):  # a free place
            y, x = int(rng.integers(0, FIELD - h)), int(rng.integers(0, FIELD - w))
            if not taken[y : y + h, x : x + w].any():
                break
        else:
            continue
        field[y + ys - ys.min(), x + xs - xs.min()] = image[ys, xs]
        oy, ox = np.nonzero(nucleus)
        truth[y + oy - ys.min(), x + ox - xs.min()] = truth.max() + 1
        taken[y : y + h, x : x + w] = True
    return field, truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["nuclei"], help="built-in names or model files")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3, 10, 30, 100])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from builtin_data import nuclei_rows

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment

    logging.getLogger("napari_unet").setLevel(logging.ERROR)
    rows = [r for r in nuclei_rows(DATA / "dsb2018", "val") if r["kind"] == "grey_dark"][::3]
    images = [((r["image"].mean(-1) if r["image"].ndim == 3 else r["image"]).astype(np.float32), r["labels"])
              for r in rows]
    table: dict[int, dict[str, str]] = {}
    for name in args.model:
        model = load_model(name, device="cpu")
        t0 = time.perf_counter()
        for k in args.objects:
            scores, extra, worst = [], 0, 0
            for i, (image, labels) in enumerate(images):
                field, truth = sparse_field(image, labels, k, np.random.default_rng([args.seed, i, k]))
                found = segment(model, field, device="cpu")
                scores.append(average_precision(truth, found))
                surplus = max(0, int(found.max()) - int(truth.max()))
                extra, worst = extra + surplus, max(worst, surplus)
            table.setdefault(k, {})[name] = f"{np.mean(scores):.3f} ({extra}; {worst})"
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{len(images)} DSB2018 val fluorescence images, their nuclei in a {FIELD} px field of their own "
          "camera noise; AP@0.5 with the automatic diameter (objects found beyond the nuclei: all fields; "
          f"the worst field); {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print("| nuclei per field | " + " | ".join(args.model) + " |")
    print("| ---: |" + " --- |" * len(args.model))
    for k, cells in table.items():
        print(f"| {k} | " + " | ".join(cells.get(m, "-") for m in args.model) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
