"""How the built-in model copes with how other microscopes make nuclei look: uneven illumination,
defocus, saturation and stripes.

DSB2018's fluorescence images are mostly evenly lit, in focus and not saturated; a lab's own often
are not. This changes DSB2018 val fluorescence images in one way at a time, segments each with the
automatic diameter and scores AP@0.5 against the ground truth of the unchanged image:

- an additive ramp of background light, left to right, up to 0.5x or 2x the nuclei's contrast (their
  90th percentile above the median of the background);
- vignetting: the whole image (nuclei and background) dimmed towards the corners as ``1 / (1 +
  r^2 / 2)^2`` (r: distance from the centre over half the longer side; corners of a square image at
  25%), alone and on a background offset of 0.3x the contrast; a glow of that shape added instead;
- defocus: a Gaussian blur of sigma d / 8 or d / 4 (d: the image's median nucleus diameter); the
  truth is the in-focus outline, so part of the loss at d / 4 is the blurred nuclei looking larger;
- saturation: the image clipped at 0.5x or 0.25x the nuclei's contrast above the background (the
  brighter nuclei become plateaus of one value);
- stripes: each row offset at random (Gaussian, sigma 0.05x or 0.15x the contrast: an sCMOS camera's
  row noise, a scanner's flicker), each column (0.15x: a CCD's), rows gained at random (sigma 0.1x /
  0.25x: multiplicative flicker), a sine of 7.3 rows (0.1x: banding); and Gaussian camera noise of
  0.1x the contrast, alone and under rows offset by 0.05x;
- chromocentres: bright spots inside the nuclei (as DNA stains show mouse nuclei), about 4 a
  nucleus at random places more than d / 8 inside it, Gaussian of sigma d / 12 (at least 1 px),
  their peaks 2x or 4x the nuclei's contrast above the nucleus. Seeded per image.

Usage::

    NAPARI_UNET_DATA=../shared/data python benchmarks/bench_appearance.py [--model nuclei other.pt]

``--model`` takes built-in names or model files, measured on the same images in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DATA = Path(os.environ.get("NAPARI_UNET_DATA", ROOT.parent / "shared" / "data"))


def _fields(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A ramp from 0 (left) to 1 (right), and a vignette: 1 at the centre, 0.25 at a square's corners."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    half = max(h, w) / 2
    r2 = ((x - w / 2) / half) ** 2 + ((y - h / 2) / half) ** 2
    return x / max(w - 1, 1), 1.0 / (1.0 + r2 / 2.0) ** 2


def variants(image: np.ndarray, truth: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """The changed images of one (H, W) image, by name (made when called)."""
    from scipy.ndimage import gaussian_filter

    from napari_unet.core.scale import median_diameter

    img = np.asarray(image, np.float64)
    background = float(np.median(img[truth == 0])) if (truth == 0).any() else float(img.min())
    contrast = max(float(np.percentile(img[truth > 0], 90)) - background, 1e-6) if truth.any() else 1.0
    d = median_diameter(truth) or 10.0
    ramp, vignette = _fields(img.shape)
    h, w = img.shape
    rng = np.random.default_rng(h * 100_003 + w)  # the same stripes on every run and in every model's column

    def lines(sigma: float, n: int) -> np.ndarray:
        return rng.normal(0.0, sigma, n)

    rows_5, rows_15 = lines(0.05 * contrast, h)[:, None], lines(0.15 * contrast, h)[:, None]
    cols_15 = lines(0.15 * contrast, w)
    gains_10, gains_25 = 1 + lines(0.10, h)[:, None], 1 + lines(0.25, h)[:, None]
    noise = rng.normal(0.0, 0.1 * contrast, img.shape)
    spots = _chromocentres(truth, d, rng)
    band = 0.1 * contrast * np.sin(2 * np.pi * np.arange(h) / 7.3)[:, None]
    return {
        "as it is": lambda: img,
        "ramp 0.5": lambda: img + 0.5 * contrast * ramp,
        "ramp 2": lambda: img + 2.0 * contrast * ramp,
        "vignette": lambda: img * vignette,
        "vignette + offset": lambda: img * vignette + 0.3 * contrast,
        "glow": lambda: img + contrast * vignette,
        "blur d/8": lambda: gaussian_filter(img, d / 8),
        "blur d/4": lambda: gaussian_filter(img, d / 4),
        "saturated 0.5": lambda: np.minimum(img, background + 0.5 * contrast),
        "saturated 0.25": lambda: np.minimum(img, background + 0.25 * contrast),
        "rows offset 0.05": lambda: img + rows_5,
        "rows offset 0.15": lambda: img + rows_15,
        "columns offset 0.15": lambda: img + cols_15[None, :],
        "rows gained 0.1": lambda: background + (img - background) * gains_10,
        "rows gained 0.25": lambda: background + (img - background) * gains_25,
        "banding 7.3 rows 0.1": lambda: img + band,
        "camera noise 0.1": lambda: img + noise,
        "camera noise 0.1 + rows offset 0.05": lambda: img + noise + rows_5,
        "chromocentres 2x": lambda: img + 2.0 * contrast * spots,
        "chromocentres 4x": lambda: img + 4.0 * contrast * spots,
    }


def _chromocentres(truth: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    """Spots of peak 1 inside the objects of ``truth`` (median diameter ``d``): about 4 an object."""
    from scipy import ndimage as ndi

    inside = np.argwhere(ndi.binary_erosion(truth > 0, iterations=max(1, int(d / 8))))
    points = np.zeros(truth.shape)
    if len(inside):
        n = min(4 * (len(np.unique(truth)) - 1), len(inside))
        points[tuple(inside[rng.choice(len(inside), n, replace=False)].T)] = 1.0
    sigma = max(1.0, d / 12)
    return ndi.gaussian_filter(points, sigma) * 2 * np.pi * sigma * sigma


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["nuclei"], help="built-in names or model files")
    parser.add_argument("--every", type=int, default=3, help="every k-th val fluorescence image")
    args = parser.parse_args(argv)

    import torch
    from builtin_data import nuclei_rows

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment

    rows = [r for r in nuclei_rows(DATA / "dsb2018", "val") if r["kind"] == "grey_dark"][:: args.every]
    table: dict[str, dict[str, list[float]]] = {}
    for name in args.model:
        model = load_model(name, device="cpu")
        scores: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for row in rows:
            truth = row["labels"]
            image = row["image"].mean(-1) if row["image"].ndim == 3 else row["image"]
            for condition, make in variants(image, truth).items():
                x = make().astype(np.float32)
                scores.setdefault(condition, []).append(average_precision(truth, segment(model, x, device="cpu")))
        table[name] = scores
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{len(rows)} DSB2018 val fluorescence images (one in {args.every}), AP@0.5 with the automatic diameter; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print("| condition | " + " | ".join(table) + " |")
    print("| --- |" + " ---: |" * len(table))
    for condition in next(iter(table.values())):
        print(f"| {condition} | " + " | ".join(f"{np.mean(s[condition]):.3f}" for s in table.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
