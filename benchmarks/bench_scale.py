"""Object size: AP@0.5 and time on DSB2018 val fluorescence images rescaled 0.2x to 4x.

(``--kind color``: its stained-tissue colour images instead.)

For each rescaling of the images (bicubic; labels by nearest neighbour), and for each object size
of ``--diameters`` (every image rescaled so that its nuclei measure that many pixels at the median:
the tiny nuclei of a 10x objective), it prints the mean AP@0.5 and the seconds per image of the
built-in model

* ``fixed``: at the image's own scale (``diameter="native"``, what napari-unet did before),
* ``auto``: with the automatic object diameter (the default now),

and, for ``auto``, the median ratio of the estimated to the true diameter.

    python benchmarks/bench_scale.py                  # all 39 val fluorescence images
    python benchmarks/bench_scale.py --limit 12 --factors 0.5 1 2 3
    python benchmarks/bench_scale.py --factors 0.25 0.2 --diameters 4 3   # small and tiny nuclei
    python benchmarks/bench_scale.py --factors 2 --view 0.3   # a zoomed-in field of view of each image

(``--view F``: fields of view of F times each side are segmented, as the Segment panel's "visible
region" does, with its 32 px of context: nine of each image, centred at 20%, 50% and 80% of its
height and width, those holding nuclei; AP@0.5 and seconds per view.)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from builtin_data import shared_data  # noqa: E402

DATA = shared_data(Path(__file__).resolve().parents[1])


def load(limit: int | None, kind: str = "grey_dark") -> list[tuple[np.ndarray, np.ndarray]]:
    from skimage.io import imread

    root = DATA / "dsb2018"
    with open(root / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == kind]
    rows = sorted(rows, key=lambda r: r["id"])[:limit]
    pairs = [(imread(root / "images" / f"{r['id']}.png"), imread(root / "labels" / f"{r['id']}.png")) for r in rows]
    return [(image[..., :3] if image.ndim == 3 else image, labels) for image, labels in pairs]


def rescaled(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import rescale

    if factor == 1:
        return image, labels
    img = rescale(image.astype(np.float32), factor, order=3, preserve_range=True, anti_aliasing=factor < 1,
                  channel_axis=2 if image.ndim == 3 else None)
    lab = rescale(labels, factor, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return img, lab


def views(labels: np.ndarray, fraction: float) -> list[tuple[slice, slice]]:
    """The whole image (``fraction`` 1), or its fields of view of ``fraction`` of each side centred
    at 20%, 50% and 80% of its height and width (shifted inside it) that hold nuclei."""
    h, w = labels.shape
    if fraction >= 1:
        return [(slice(0, h), slice(0, w))]
    rh, rw = int(h * fraction), int(w * fraction)
    found = []
    for fy in (0.2, 0.5, 0.8):
        for fx in (0.2, 0.5, 0.8):
            y0, x0 = int(np.clip(fy * h - rh / 2, 0, h - rh)), int(np.clip(fx * w - rw / 2, 0, w - rw))
            view = (slice(y0, y0 + rh), slice(x0, x0 + rw))
            if labels[view].any():
                found.append(view)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N images (by id)")
    parser.add_argument("--model", default=None, help="model name or file (default: the built-in model)")
    parser.add_argument("--kind", default="grey_dark", choices=["grey_dark", "color"],
                        help="DSB2018 val images of this kind: fluorescence (default) or stained tissue (colour)")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.2, 0.25, 0.5, 1, 2, 3, 4])
    parser.add_argument("--diameters", type=float, nargs="*", default=[4],
                        help="also rescale every image so that its nuclei measure this many pixels")
    parser.add_argument("--view", type=float, default=1.0,
                        help="segment fields of view of this fraction of each side (nine per image)")
    args = parser.parse_args()

    import torch

    from napari_unet.core import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import PlaneResult, iter_planes
    from napari_unet.core.scale import median_diameter

    if "OMP_NUM_THREADS" not in os.environ:  # (told: as told, e.g. one thread on a shared machine)
        torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(args.model, device="cpu")
    pairs = load(args.limit, args.kind)
    print(f"napari-unet bench_scale  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}"
          f"  {os.cpu_count()} cores, {torch.get_num_threads()} threads  torch {torch.__version__}")
    if pairs:  # one untimed run: the engine's one-off set-up (ONNX export, session) is no row's time
        next(i for i in iter_planes(model, pairs[0][0], diameter="native") if isinstance(i, PlaneResult))
    print(f"model {model.name}: diameter {model.diameter:g} px, range {model.object_size.low:.1f}-"
          f"{model.object_size.high:.1f} px; {len(pairs)} DSB2018 val "
          f"{'fluorescence' if args.kind == 'grey_dark' else 'stained-tissue (colour)'} images"
          + (f", views of {args.view:g} of each side" if args.view < 1 else ""))
    per = "s/view" if args.view < 1 else "s/img"
    print(f"{'factor':>6} | {'fixed AP':>8} {per:>6} | {'auto AP':>8} {per:>6} | {'est/true':>8}")
    rows = [(f"{f:g}", lambda _labels, f=f: f) for f in args.factors]
    rows += [(f"{d:g} px", lambda labels, d=d: d / median_diameter(labels)) for d in args.diameters]
    for name, factor_of in rows:
        row = {}
        for mode in ("native", "auto"):
            aps, ratios, took = [], [], 0.0
            for image, labels in pairs:
                img, lab = rescaled(image, labels, factor_of(labels))
                truth = median_diameter(lab)
                for view in views(lab, args.view):
                    start = time.perf_counter()
                    result = next(i for i in iter_planes(model, img, diameter=mode, region=view, context=32)
                                  if isinstance(i, PlaneResult))
                    took += time.perf_counter() - start
                    aps.append(average_precision(lab[view], result.labels))
                    if mode == "auto" and result.diameter and truth:
                        ratios.append(result.diameter / truth)
            row[mode] = (float(np.mean(aps)), took / len(aps), float(np.median(ratios)) if ratios else float("nan"))
        (fa, ft, _), (aa, at, ratio) = row["native"], row["auto"]
        print(f"{name:>6} | {fa:>8.3f} {ft:>6.2f} | {aa:>8.3f} {at:>6.2f} | {ratio:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
