"""``napari-unet models``: list the built-in and user models (name, kind, path, metric).

The list comes from :mod:`napari_unet.core.catalog`; each row is read from the model file's
metadata only (no network is built), so listing stays quick however many models there are.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the built-in and user models",
        description="List the built-in models and the user's models (name, kind, validation AP@0.5, the model "
                    "each was fine-tuned from, the day it was trained, path).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.set_defaults(run=run)


def model_rows() -> list[dict[str, Any]]:
    """One dict per model: name, kind ("builtin"/"user"), path, val_ap50 (or None), base_model, date.

    A file that cannot be read as a model gets its reason in "error" (and None elsewhere).
    """
    from napari_unet.core.catalog import list_models
    from napari_unet.core.checkpoint import ModelFileError, read_model_metadata

    rows = []
    for entry in list_models():
        row: dict[str, Any] = {
            "name": entry.name,
            "kind": "builtin" if entry.builtin else "user",
            "path": str(entry.path),
            "val_ap50": None,
            "val_objects": None,  # held-out objects the AP was measured on
            "val_split": None,  # how they were held out: "explicit" (images of their own), "planes", "band"
            "base_model": None,
            "date": None,
            "error": None,
        }
        try:
            meta = read_model_metadata(entry.path)
        except ModelFileError as exc:
            row["error"] = str(exc)
        else:
            ap = meta.get("val_ap50")
            row["val_ap50"] = float(ap) if isinstance(ap, (int, float)) else None
            training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
            n = training.get("n_val_objects")
            row["val_objects"] = n if isinstance(n, int) and not isinstance(n, bool) else None
            row["val_split"] = training.get("val_split") if isinstance(training.get("val_split"), str) else None
            row["base_model"] = meta.get("base_model")
            row["date"] = meta.get("date")
        rows.append(row)
    return rows


def _measured_on(row: dict[str, Any]) -> str:
    """Where a model's AP was measured: "536 objects" (images of their own), "15 objects of its training
    images" (a part of the images it learnt, held out), or "" when unknown."""
    if row["val_ap50"] is None or row["val_objects"] is None:
        return ""
    objects = f"{row['val_objects']} object{'s' if row['val_objects'] != 1 else ''}"
    return objects if row["val_split"] == "explicit" else f"{objects} of its training images"


def _day(date: Any) -> str:
    """The day of a model's ISO date ("2026-12-07T16:55:02+00:00" -> "2026-12-07"), "-" when none."""
    text = date.strip() if isinstance(date, str) else ""
    return text[:10] if len(text) >= 10 and text[4] == "-" and text[7] == "-" else "-"


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.catalog import user_models_dir

    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no models found (user models go to {user_models_dir()})")
        return 0
    width = max(4, *(len(r["name"]) for r in rows))
    # (a fine-tuned model's AP is of a few cells held out of the images it learnt: not comparable with a
    # built-in model's, measured on hundreds of cells of other images)
    measured = [_measured_on(r) for r in rows]
    on_width = max(len("measured on"), *(len(m) for m in measured))
    # (which model a fine-tuned one started from, and when it was trained: two "my cells" told apart)
    bases = [str(r["base_model"]) if isinstance(r["base_model"], str) and r["base_model"] else "-" for r in rows]
    base_width = max(len("from"), *(len(b) for b in bases))
    print(f"{'name':<{width}}  {'kind':<7}  {'AP@0.5':>6}  {'measured on':<{on_width}}  {'from':<{base_width}}  "
          f"{'trained':<10}  path")
    for r, on, base in zip(rows, measured, bases, strict=True):
        ap = f"{r['val_ap50']:.3f}" if r["val_ap50"] is not None else ("broken" if r["error"] else "-")
        print(f"{r['name']:<{width}}  {r['kind']:<7}  {ap:>6}  {on:<{on_width}}  {base:<{base_width}}  "
              f"{_day(r['date']):<10}  {r['path']}")
    print(f"user model folder: {user_models_dir()}")
    return 0
