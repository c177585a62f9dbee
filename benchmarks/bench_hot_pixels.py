"""Hot pixels: AP@0.5 of the built-in model on camera-like versions of DSB2018 val fluorescence
images, with and without the plane loop's removal of isolated spikes
(:func:`napari_unet.core.preprocess.without_spikes`; stripes are taken out in both columns).

Variants of each image (grey, scaled to [0, 1] first): ``camera`` (16-bit: offset 300 ADU,
Poisson photon noise of a 1500 e- peak, read noise 2 e-, gain 0.5), the same with 0.05% or 0.3%
of the pixels at 65535 (hot pixels), and ``12-bit hot`` (the 8-bit image x 16 in a 16-bit file,
0.3% hot pixels). ``--clean`` also scores every unmodified val fluorescence image both ways
(no change wanted there).

    python benchmarks/bench_hot_pixels.py --limit 6 [--clean]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("NAPARI_UNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    from skimage.io import imread

    root = DATA / "dsb2018"
    with open(root / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"]
    out = []
    for r in rows[:limit]:
        image = imread(root / "images" / f"{r['id']}.png")
        if image.ndim == 3:
            image = image[..., :3].mean(-1).astype(np.uint8)
        out.append((image, imread(root / "labels" / f"{r['id']}.png")))
    return out


def camera(image: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    unit = (image - image.min()) / max(float(np.ptp(image)), 1e-9)
    electrons = rng.poisson(unit * 1500 + 5) + rng.normal(0, 2.0, unit.shape)
    return np.clip(electrons / 0.5 + 300, 0, 65535).astype(np.uint16)


def with_hot(image: np.ndarray, fraction: float, seed: int = 1) -> np.ndarray:
    out = image.copy()
    rng = np.random.default_rng(seed)
    out.flat[rng.choice(out.size, int(fraction * out.size), replace=False)] = 65535
    return out


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "camera": camera(image),
        "camera, 0.05% hot": with_hot(camera(image), 0.0005),
        "camera, 0.3% hot": with_hot(camera(image), 0.003),
        "12-bit, 0.3% hot": with_hot(image.astype(np.uint16) * 16, 0.003),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--clean", action="store_true", help="also every unmodified val fluorescence image")
    args = parser.parse_args()

    import napari_unet.core.predict as predict
    from napari_unet.core import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.preprocess import without_camera_artefacts, without_stripes

    model = load_model("nuclei", device="cpu")

    def score(image: np.ndarray, labels: np.ndarray, removal: bool) -> float:
        predict.without_camera_artefacts = without_camera_artefacts if removal else without_stripes
        try:
            return average_precision(labels, predict.segment(model, image))
        finally:
            predict.without_camera_artefacts = without_camera_artefacts

    print(f"{platform.processor() or platform.machine()}, torch threads {__import__('torch').get_num_threads()}")
    print("| images | spikes kept | spikes removed (now) |\n| --- | ---: | ---: |")
    pairs = load(args.limit)
    for name in variants(pairs[0][0]):
        rows = [(variants(image)[name], labels) for image, labels in pairs]
        kept = np.mean([score(i, lab, False) for i, lab in rows])
        removed = np.mean([score(i, lab, True) for i, lab in rows])
        print(f"| {name} ({len(rows)}) | {kept:.3f} | {removed:.3f} |")
    if args.clean:
        every = load(None)
        kept = np.mean([score(i, lab, False) for i, lab in every])
        removed = np.mean([score(i, lab, True) for i, lab in every])
        print(f"| unmodified ({len(every)}) | {kept:.3f} | {removed:.3f} |")


if __name__ == "__main__":
    main()
