"""Images with regions that hold no data: a black border (a stitched mosaic, an image rotated or
registered onto a larger canvas), NaN there, or marks burned in (a scale bar, a time stamp).

Per-image normalisation takes a black fill for the darkest thing in the image. This puts DSB2018 val
images on such canvases and scores AP@0.5 (automatic diameter) against their truth on the same
canvas:

- fluorescence images (every third val ``grey_dark`` image, made grey) as a camera gives them, on
  an offset of 100 grey levels, and the stained-tissue (``color``) val images in colour;
- conditions: as they are; a scale bar and a time stamp burned in at the image's highest value
  (bottom right); on a canvas 1.4x as tall and wide, black right and below ("black border"); the
  same border as NaN; rotated by 25 degrees onto a black canvas (bilinear).

Usage::

    NAPARI_UNET_DATA=../shared/data python benchmarks/bench_borders.py [--model nuclei other.pt]

A condition the code refuses (before NaN marked missing pixels) prints as "refused".
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
BORDER = 0.4
ANGLE = 25.0


def _marks(shape: tuple[int, int]) -> np.ndarray:
    """Where an exported image's scale bar (a tenth of its width, 1% of its height, bottom right)
    and time stamp (five strokes above it) are burned in."""
    h, w = shape
    mask = np.zeros(shape, bool)
    mask[int(0.95 * h) : int(0.96 * h) + 1, int(0.85 * w) : int(0.95 * w)] = True
    stroke = max(1, w // 200)
    for k in range(5):
        x = int(0.85 * w) + k * int(0.02 * w)
        mask[int(0.9 * h) : int(0.93 * h), x : x + stroke] = True
        mask[int(0.9 * h), x : x + int(0.012 * w)] = True
    return mask


def conditions(image: np.ndarray, truth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The image (H, W) or (H, W, 3) and its truth on each canvas, by name."""
    from scipy import ndimage as ndi

    h, w = truth.shape
    pad = ((0, int(BORDER * h)), (0, int(BORDER * w)))
    pad_image = pad + (((0, 0),) if image.ndim == 3 else ())
    if image.ndim == 3:
        rotated = np.stack([ndi.rotate(image[..., c], ANGLE, order=1, cval=0) for c in range(3)], axis=-1)
    else:
        rotated = ndi.rotate(image, ANGLE, order=1, cval=0.0)
    marked = image.copy()
    marked[_marks(truth.shape)] = np.max(image, axis=(0, 1))
    return {
        "as it is": (image, truth),
        "scale bar and time stamp burned in": (marked, truth),
        "black border": (np.pad(image, pad_image), np.pad(truth, pad)),
        "NaN border": (np.pad(image.astype(np.float32), pad_image, constant_values=np.nan), np.pad(truth, pad)),
        f"rotated {ANGLE:.0f} deg on black": (rotated, ndi.rotate(truth, ANGLE, order=0, cval=0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["nuclei"], help="built-in names or model files")
    args = parser.parse_args(argv)

    import torch
    from builtin_data import nuclei_rows

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment
    from napari_unet.core.preprocess import ImageError

    logging.getLogger("napari_unet").setLevel(logging.ERROR)  # the filled border's warning, once per image
    rows = nuclei_rows(DATA / "dsb2018", "val")
    sets = {
        "fluorescence (camera, offset 100)": [
            ((r["image"].mean(-1) if r["image"].ndim == 3 else r["image"]).astype(np.float32) + 100, r["labels"])
            for r in rows if r["kind"] == "grey_dark"][::3],
        "stained tissue (colour)": [(r["image"][..., :3], r["labels"]) for r in rows if r["kind"] == "color"],
    }
    table: dict[tuple[str, str], dict[str, str]] = {}
    for name in args.model:
        model = load_model(name, device="cpu")
        t0 = time.perf_counter()
        for kind, pairs in sets.items():
            scores: dict[str, list[float]] = {}
            refused: set[str] = set()
            for image, truth in pairs:
                for condition, (x, t) in conditions(image, truth).items():
                    try:
                        scores.setdefault(condition, []).append(average_precision(t, segment(model, x, device="cpu")))
                    except ImageError:
                        refused.add(condition)
            for condition, s in scores.items():
                cell = "refused" if condition in refused else f"{np.mean(s):.3f}"
                table.setdefault((kind, condition), {})[name] = cell
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"DSB2018 val: {len(sets['fluorescence (camera, offset 100)'])} fluorescence, "
          f"{len(sets['stained tissue (colour)'])} stained-tissue images; AP@0.5 with the automatic diameter; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| images | condition | " + " | ".join(args.model) + " |")
    print("| --- | --- |" + " ---: |" * len(args.model))
    for (kind, condition), cells in table.items():
        print(f"| {kind} | {condition} | " + " | ".join(cells.get(m, "-") for m in args.model) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
