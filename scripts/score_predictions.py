"""Score masks written by ``napari-unet predict`` against DSB2018 ground truth, by image kind.

Usage (the check of the default model on the ``val`` split)::

    ids=$(awk -F, '$2=="val"{print "../shared/data/dsb2018/images/"$1".png"}' ../shared/data/dsb2018/manifest.csv)
    napari-unet predict $ids --out /tmp/val-masks
    python scripts/score_predictions.py /tmp/val-masks --split val

AP@t is the project's own metric (``napari_unet.core.metrics.average_precision``, checked against a
hand-computed example in ``tests/test_metrics.py``): TP / (TP + FP + FN) at IoU > t, mean over images.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("masks", type=Path, help="folder with <id>_masks.tif files")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="val")
    args = parser.parse_args(argv)

    import tifffile
    from skimage.io import imread

    from napari_unet.core.metrics import average_precision, dice

    with open(args.data / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == args.split]
    scores: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    missing = 0
    for r in rows:
        path = args.masks / f"{r['id']}_masks.tif"
        if not path.is_file():
            missing += 1
            continue
        pred = tifffile.imread(path)
        truth = imread(args.data / "labels" / f"{r['id']}.png")
        s = (average_precision(truth, pred, 0.5), average_precision(truth, pred, 0.75), dice(truth, pred))
        scores[r["kind"]].append(s)
        scores["all"].append(s)
    if missing:
        print(f"{missing} of {len(rows)} images have no masks in {args.masks}", file=sys.stderr)
        return 1
    print("| image kind | n | AP@0.5 | AP@0.75 | Dice |")
    print("| --- | --- | --- | --- | --- |")
    for kind in sorted(scores, key=lambda k: (k != "all", -len(scores[k]))):
        a = np.asarray(scores[kind])
        print(f"| {kind} | {len(a)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
