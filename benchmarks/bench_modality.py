"""How often `core.modality` tells the kind of image right, on ../shared/data.

Whole images of every kind (DSB2018 fluorescence, colour and bright field; C2C12 and Usiigaci
phase contrast; BBBC030 DIC; SIM+ and the synthetic 3D nuclei, planes), and random crops (96, 128,
256 px; five per transmitted-light image, one of 128 px per DSB2018 fluorescence image), counted by
the kind told. With ``--bright-on-dark``, also what each value of ``BRIGHT_ON_DARK`` would turn:
fluorescence samples told right again and transmitted samples turned wrong, against the rule
without it. With ``--variants``, also the whole images with a smooth background or hot pixels added
(:data:`VARIANTS`: additive ramps, vignetting, brighter edges, hot pixels at the dtype's maximum),
counted the same way: the kind must not change.

    python benchmarks/bench_modality.py [--data ../shared/data] [--bright-on-dark 3.5 5 6 8] [--variants]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.core import modality  # noqa: E402


def _grey(image: np.ndarray) -> np.ndarray:
    return image[..., :3].mean(-1) if image.ndim == 3 else image


def _field(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape[:2]
    return np.linspace(0, 1, h)[:, None], np.linspace(0, 1, w)[None, :]


def _add(image: np.ndarray, amount: float, field: np.ndarray) -> np.ndarray:
    """``image`` plus ``field`` (0..1) scaled to ``amount`` of the image's range."""
    a = np.asarray(image, np.float64)
    return (a + (field[..., None] if a.ndim == 3 else field) * amount * np.ptp(a)).astype(np.float32)


def _times(image: np.ndarray, gain: np.ndarray) -> np.ndarray:
    a = np.asarray(image, np.float64)
    return (a * (gain[..., None] if a.ndim == 3 else gain)).astype(np.float32)


def _vignette(image: np.ndarray, strength: float = 0.7) -> np.ndarray:
    """Off-centre vignetting: 1 at (0.3, 0.3) of the field, falling quadratically (the generality hunt's)."""
    y, x = _field(image.shape)
    return _times(image, 1 - strength * ((y - 0.3) ** 2 * image.shape[0] ** 2 + (x - 0.3) ** 2 * image.shape[1] ** 2)
                  / (0.6 * (image.shape[0] ** 2 + image.shape[1] ** 2)))


def _cos4(image: np.ndarray, edge: float = 0.4) -> np.ndarray:
    """cos⁴ fall-off from the centre, the corners at ``edge`` of the centre (not a paraboloid)."""
    y, x = _field(image.shape)
    r = np.hypot(y - 0.5, x - 0.5) / np.hypot(0.5, 0.5)
    return _times(image, np.cos(r * np.arccos(edge ** 0.25)) ** 4)


def _hot(image: np.ndarray, fraction: float = 0.003) -> np.ndarray:
    """``fraction`` of the pixels at 65535 (8-bit images first scaled by 16 into 16 bits)."""
    a = np.asarray(image)
    a = a.astype(np.uint16) * (16 if a.dtype == np.uint8 else 1)
    flat = a.reshape(a.shape[0] * a.shape[1], -1)
    flat[np.random.default_rng(0).choice(flat.shape[0], int(fraction * flat.shape[0]), replace=False)] = 65535
    return a


#: Changes to a whole image that must not change its kind.
VARIANTS = {
    "ramp 25% of range, left to right": lambda a: _add(a, 0.25, _field(a.shape)[1]),
    "ramp 50%, right to left": lambda a: _add(a, 0.5, 1 - _field(a.shape)[1]),
    "ramp 100%, diagonal": lambda a: _add(a, 1.0, (2 - sum(_field(a.shape))) / 2),
    "vignette 70%, off-centre": _vignette,
    "cos^4 vignette, corners at 40%": _cos4,
    "brighter edges, +50% of range": lambda a: _add(a, 0.5, 2 * ((_field(a.shape)[0] - 0.5) ** 2 + (_field(a.shape)[1] - 0.5) ** 2)),
    "hot pixels, 0.3%": _hot,
}


def samples(data: Path) -> list[tuple[str, str, np.ndarray]]:
    """(set, expected kind, plane): whole images and crops."""
    import tifffile
    from skimage.io import imread

    rng = np.random.default_rng(1)
    out = []

    def crops(name, kind, plane, sizes, n):
        for c in sizes:
            for _ in range(n):
                if min(plane.shape[:2]) <= c:
                    continue
                y, x = rng.integers(0, plane.shape[0] - c), rng.integers(0, plane.shape[1] - c)
                out.append((f"{name} crop {c}", kind, plane[y:y + c, x:x + c]))

    transmitted = {
        "c2c12": list(tifffile.imread(data / "c2c12_timelapse" / "images.tif")),
        "usiigaci": list(tifffile.imread(data / "usiigaci_phase" / "images.tif")),
        "bbbc030": [_grey(imread(p)) for p in sorted((data / "bbbc030_dic" / "images").glob("*.png"))],
    }
    for name, planes in transmitted.items():
        for plane in planes:
            out.append((name, "transmitted", plane))
            crops(name, "transmitted", plane, (96, 128, 256), 5)
    for name, path in (("sim+", "ctc_sim_plus/images.tif"), ("nuclei3d", "nuclei3d_synthetic/image.tif")):
        out += [(name, "fluorescence", p) for p in tifffile.imread(data / path)]
    expected = {"grey_dark": "fluorescence", "color": "colour", "grey_bright": "bright-field"}
    with open(data / "dsb2018" / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        image = imread(data / "dsb2018" / "images" / f"{r['id']}.png")
        image = image[..., :3] if r["kind"] == "color" else _grey(image)
        out.append((f"dsb2018 {r['kind']}", expected[r["kind"]], image))
        if r["kind"] == "grey_dark":
            crops("dsb2018 grey_dark", "fluorescence", image, (128,), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="the data folder (default: NAPARI_UNET_DATA, else "
                        "../shared/data)")
    parser.add_argument("--bright-on-dark", type=float, nargs="*", default=[])
    parser.add_argument("--variants", action="store_true", help="also whole images with ramps, vignetting, hot pixels")
    args = parser.parse_args(argv)
    if args.data is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from builtin_data import shared_data

        args.data = shared_data(ROOT)
    items = samples(args.data)
    told = [modality.image_modality(plane) for _, _, plane in items]
    by_set: dict[str, Counter] = {}
    for (name, kind, _), m in zip(items, told):
        by_set.setdefault(f"{name} ({kind})", Counter())[m.kind] += 1
    print(f"BRIGHT_ON_DARK = {modality.BRIGHT_ON_DARK:g}")
    for name, counts in by_set.items():
        right = counts[name.rsplit("(", 1)[1].rstrip(")")]
        print(f"{name:40s} {right:4d} of {sum(counts.values()):4d} right  {dict(counts)}")
    if args.bright_on_dark:
        kept = modality.BRIGHT_ON_DARK
        modality.BRIGHT_ON_DARK = float("inf")
        without = [modality.image_modality(plane) for _, _, plane in items]
        for value in args.bright_on_dark:
            modality.BRIGHT_ON_DARK = value
            fixed = broken = 0
            for (_, kind, plane), before in zip(items, without):
                now = modality.image_modality(plane).kind
                fixed += before.kind != kind and now == kind
                broken += before.kind == kind and now != kind
            print(f"BRIGHT_ON_DARK {value:g}: {fixed} samples told right again, {broken} turned wrong "
                  f"(of {sum(b.kind != k for (_, k, _), b in zip(items, without))} wrong and "
                  f"{sum(b.kind == k for (_, k, _), b in zip(items, without))} right without it)")
        modality.BRIGHT_ON_DARK = kept
    if args.variants:
        whole = [(name, kind, plane) for name, kind, plane in items if " crop " not in name]
        for label, change in VARIANTS.items():
            right, total = Counter(), Counter()
            for name, kind, plane in whole:
                group = "fluorescence" if kind == "fluorescence" else "transmitted" if kind == "transmitted" else "other"
                total[group] += 1
                right[group] += modality.image_modality(change(plane)).kind == kind
            print(f"{label:34s} right: fluorescence {right['fluorescence']:3d} of {total['fluorescence']}, "
                  f"transmitted {right['transmitted']:3d} of {total['transmitted']}, "
                  f"colour and bright field {right['other']:3d} of {total['other']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
