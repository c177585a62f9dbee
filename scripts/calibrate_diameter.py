"""Record a model's object diameter: the training median, then the calibrated best on val.

    python scripts/calibrate_diameter.py napari_unet/models/nuclei.pt            # print the scan
    python scripts/calibrate_diameter.py napari_unet/models/nuclei.pt --write    # store it in the file

The training median is the median equivalent diameter of the DSB2018 ``train`` objects;
the calibration (:mod:`napari_unet.core.calibrate`) scans object diameters on the ``val``
split and keeps the best mean AP@0.5. Both go into the model's metadata (``diameter``,
``training_diameter``, ``diameter_calibration``); the file is rewritten atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_model import DEFAULT_DATA, load_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--candidates", type=float, nargs="+", default=None)
    parser.add_argument("--write", action="store_true", help="store the result in the model file")
    args = parser.parse_args(argv)

    from napari_unet.core.calibrate import DEFAULT_CANDIDATES, iter_calibrate_diameter, training_diameter
    from napari_unet.core.checkpoint import read_model_file, save_model
    from napari_unet.core.events import run_to_end

    model = read_model_file(args.model, device="cpu")
    train = training_diameter([row["labels"] for row in load_split(args.data, "train")])
    val = load_split(args.data, "val")
    calibration = run_to_end(iter_calibrate_diameter(
        model, [r["image"] for r in val], [r["labels"] for r in val], args.candidates or DEFAULT_CANDIDATES,
    ))
    print(f"training median diameter: {train:.1f} px")
    for diameter, ap in calibration.table().items():
        print(f"  objects at {diameter:>4} px: val AP@0.5 {ap:.3f}")
    print(f"calibrated diameter: {calibration.best:g} px")
    if args.write:
        model.metadata.update(
            diameter=calibration.best, training_diameter=round(train, 2),
            diameter_calibration={"split": "val", "mean_ap50": calibration.table()},
        )
        save_model(model, args.model)
        print(f"written to {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
