"""What the automatic diameter's first pass sees: C2C12 frames (cells of about 14 px, smaller than the
``cells`` model's) against empty fields of BBBC030 DIC (textured background, no cell).

The search looks for objects too small for the model (enlarged passes) only when the pass at the
image's own scale sees at least ``MIN_OBJECTS`` specks without the minimum size
(:meth:`napari_unet.core.scale.DiameterSearch._tiny`). This prints, per image, the objects and specks
of that pass (their diameters) and whether the enlarged passes ran, to see whether a rule on the
specks could tell a sparse field of small cells from an empty textured one.

    python benchmarks/bench_specks.py c2c12
    python benchmarks/bench_specks.py bbbc 60    # empty crops of the first 60 BBBC030 images
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.io import imread
from skimage.measure import label, regionprops

from napari_unet.core import scale
from napari_unet.core.checkpoint import load_model
from napari_unet.core.predict import segment

DATA = Path(os.environ.get("NAPARI_UNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
seen: list[dict] = []
_tiny = scale.DiameterSearch._tiny


def _recording(self, at, estimate, specks):
    """The search's own test, with what it looked at written down."""
    found = specks() if specks is not None else None
    row = {"objects": self._counts[at], "estimate": estimate}
    if found is not None:
        row["specks"] = scale.count_objects(found)
        row["speck_px"] = sorted(round(p.equivalent_diameter_area, 1) for p in regionprops(label(found > 0)))[:10]
    row["enlarged"] = _tiny(self, at, estimate, (lambda: found) if found is not None else None)
    seen.append(row)
    return row["enlarged"]


def run(model, name: str, image: np.ndarray) -> dict:
    seen.clear()
    labels = segment(model, image.astype(np.float32), diameter=None)
    row = {**(seen[0] if seen else {}), "found": int(labels.max())}
    print(name, image.shape, row, flush=True)
    return row


def main() -> None:
    torch.set_num_threads(1)
    scale.DiameterSearch._tiny = _recording
    model = load_model("cells", device="cpu")
    if sys.argv[1] == "c2c12":
        frames = tifffile.imread(DATA / "c2c12_timelapse" / "images.tif")
        for t, frame in enumerate(frames):
            run(model, f"c2c12 t{t}", frame)
        return
    rows = []
    names = sorted(os.listdir(DATA / "bbbc030_dic" / "images"))[: int(sys.argv[2])]
    for name in names:
        image = imread(DATA / "bbbc030_dic" / "images" / name)
        image = image[..., :3].mean(-1) if image.ndim == 3 else image
        truth = imread(DATA / "bbbc030_dic" / "labels" / name)
        taken = 0
        for side in (256, 160, 128):  # two empty crops per image, the largest that are empty
            for y in range(0, image.shape[0] - side + 1, side // 2):
                for x in range(0, image.shape[1] - side + 1, side // 2):
                    if taken < 2 and truth[y:y + side, x:x + side].max() == 0:
                        rows.append(run(model, f"{name} empty {side} px at {y},{x}", image[y:y + side, x:x + side]))
                        taken += 1
    print("empty crops:", len(rows), "specks:", sorted(Counter(r.get("specks", 0) for r in rows).items()),
          "enlarged:", sum(bool(r.get("enlarged")) for r in rows),
          "with objects found:", sum(r["found"] > 0 for r in rows))


if __name__ == "__main__":
    main()
