"""Why a built-in model misses objects: error kinds on its val images, by image kind.

For one model (default: the shipped ``nuclei``), out of the box (automatic diameter, the model's
own post-processing, the default engine), every object of the val split counted at IoU 0.5
(:func:`napari_unet.core.metrics.error_kinds`): ground-truth objects found, merged with a
neighbour, missed, split, or with an outline too large / too small; predictions on background
(spurious) or otherwise wrong (pieces of splits, merges and poor outlines). It tells which lever
to pull: merges call for better splitting of touching objects, misses for detection.

Usage::

    python benchmarks/bench_errors.py                                   # shipped nuclei, DSB2018 val
    python benchmarks/bench_errors.py --model cells --threads 2
    python benchmarks/bench_errors.py --model training/nuclei/nuclei.pt --kind nuclei

Prints a Markdown table with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    from bench_model_card import KIND_ORDER, cpu_line, model_and_rows, model_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold (0.5 or more)")
    args = parser.parse_args(argv)

    import torch

    from napari_unet.core.metrics import ERROR_KINDS, TRUE_OBJECT_KINDS, error_kinds
    from napari_unet.core.predict import segment

    model, rows = model_and_rows(args)
    totals: dict[str, Counter] = defaultdict(Counter)
    for n, r in enumerate(rows, 1):
        counts = error_kinds(r["labels"], segment(model, r["image"], diameter="auto"), args.iou)
        for key in (r["kind"], "all"):
            totals[key].update(counts)
            totals[key]["objects"] += sum(counts[k] for k in TRUE_OBJECT_KINDS)
        print(f"  {n}/{len(rows)} {r['kind']}: found {counts['found']}, merged {counts['merged']}", flush=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _results import command_line as typed_command

    lines = [
        f"`{typed_command()}`, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_line()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; out of the box, {len(rows)} val images, every object counted at IoU {args.iou:g}.",
        "",
        "| image kind | objects | " + " | ".join(k.replace("_", " ") for k in ERROR_KINDS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in ERROR_KINDS) + " |",
    ]
    for k in sorted(totals, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 99):
        c = totals[k]
        lines.append(f"| {k} | {c['objects']} | " + " | ".join(str(c[e]) for e in ERROR_KINDS) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
