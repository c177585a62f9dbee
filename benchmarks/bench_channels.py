"""RGB merges of fluorescence channels: AP@0.5 with the colour the plane loop picks vs the mean.

On DSB2018's val split (../shared/data or NAPARI_UNET_DATA): its 39 grey fluorescence images made
into RGB merges (nuclei in blue, a cytoplasm channel in green made from their labels, black
elsewhere; tests/test_channels.cytoplasm), and its 12 colour (stained tissue) images as they are;
the built-in ``nuclei`` model, automatic diameter, one thread. Then scikit-image's immunohistochemistry
section (no ground truth: the share of its most haematoxylin-stained tenth of pixels, the nuclei, that
the masks cover) with colour="auto" (without its DAB) and "mean", and the time of telling the colour
and of taking the DAB out of a 4096 x 4096 mosaic of it.

Usage::

    python benchmarks/bench_channels.py            # both sets, colour="auto" and colour="mean"
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # (--help, and no options)
    from skimage.io import imread

    from napari_unet.core import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment
    from test_channels import _haematoxylin_covered, cytoplasm

    logging.disable(logging.WARNING)
    data = Path(os.environ.get("NAPARI_UNET_DATA", ROOT.parent / "shared" / "data")) / "dsb2018"
    model = load_model("nuclei", device="cpu")
    rows = [r for r in csv.DictReader(open(data / "manifest.csv")) if r["split"] == "val"]
    for kind in ("grey_dark", "color"):
        ap: dict[str, list[float]] = {"auto": [], "mean": []}
        for r in (r for r in rows if r["kind"] == kind):
            image, labels = imread(data / "images" / f"{r['id']}.png"), imread(data / "labels" / f"{r['id']}.png")
            if kind == "grey_dark":
                grey = (image[..., :3].mean(-1) if image.ndim == 3 else image).astype(np.float32)
                c = cytoplasm(labels, grey)
                image = np.stack([np.zeros_like(c), c, grey], -1).clip(0, 255).astype(np.uint8)
            for colour in ap:
                ap[colour].append(average_precision(labels, segment(model, image[..., :3], colour=colour)))
        name = "merges (nuclei blue, cytoplasm green)" if kind == "grey_dark" else "stained tissue (colour)"
        print(f"{name}, {len(ap['auto'])} images: mean AP@0.5 colour='mean' {np.mean(ap['mean']):.3f}, "
              f"colour='auto' {np.mean(ap['auto']):.3f}")

    import time

    from skimage import data as skdata

    from napari_unet.core.channels import colour_to_segment, without_dab

    ihc = skdata.immunohistochemistry()
    covered = {c: _haematoxylin_covered(segment(model, ihc, colour=c), ihc) for c in ("auto", "mean")}
    print(f"IHC section (scikit-image), haematoxylin-stained pixels covered: colour='mean' {covered['mean']:.3f}, "
          f"colour='auto' ({colour_to_segment(ihc)}) {covered['auto']:.3f}")
    mosaic = np.tile(ihc, (8, 8, 1))
    start = time.perf_counter()
    colour_to_segment(mosaic)
    told = time.perf_counter() - start
    start = time.perf_counter()
    without_dab(mosaic)
    print(f"4096 x 4096 IHC mosaic: colour told in {told:.2f} s, DAB taken out in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
