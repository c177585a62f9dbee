"""A built-in model's figures for its card: AP at IoU 0.5-0.9, size, cost and slice time.

For one model file (default: the shipped ``nuclei``), on the val split of its own data (DSB2018
for ``nuclei``; the val parts of Usiigaci phase and BBBC030 DIC for ``cells``), out of the box
(automatic diameter, the model's own post-processing, the default engine):

- mean per-image AP at IoU 0.5, 0.6, 0.7, 0.8, 0.9 by image kind (and their mean, "AP@0.5:0.9");
- parameters and FLOP per pixel of one forward pass (``torch.utils.flop_counter``);
- "current slice": ``core.segment`` of a 1024 x 1024 plane (a mosaic of val images) with the
  default engine and the automatic diameter, median of 3 after one warm-up, and the forward
  pass alone at that size.

Usage::

    python benchmarks/bench_model_card.py                       # the shipped nuclei model
    python benchmarks/bench_model_card.py --model training/nuclei/nuclei.pt --kind nuclei
    python benchmarks/bench_model_card.py --model cells --kind cells --threads 2

Prints a Markdown block (with the machine, date and CPU flags) to paste into the model card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)
KIND_ORDER = ("all", "grey_dark", "color", "grey_bright", "phase", "dic")


def cpu_line() -> str:
    """The CPU's model name and the flags that matter for speed."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({'/'.join(wanted) or 'no AVX2'})"


def val_rows(kind: str, data: Path | None) -> list[dict]:
    import builtin_data

    if kind == "cells":
        return builtin_data.cells_rows(data or builtin_data.shared_data(ROOT), "val")
    return builtin_data.nuclei_rows(data or builtin_data.shared_data(ROOT) / "dsb2018", "val")


def ap_by_kind(model, rows: list[dict]) -> dict[str, list[float]]:
    """Mean AP at each IoU of :data:`IOUS`, by image kind and over all images."""
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment

    per_kind: dict[str, list[list[float]]] = defaultdict(list)
    for n, r in enumerate(rows, 1):
        pred = segment(model, r["image"], diameter="auto")
        aps = [average_precision(r["labels"], pred, t) for t in IOUS]
        per_kind[r["kind"]].append(aps)
        per_kind["all"].append(aps)
        print(f"  {n}/{len(rows)} {r['kind']}: AP@0.5 {aps[0]:.3f}", flush=True)
    return {k: list(np.mean(v, axis=0)) for k, v in per_kind.items()}


def mosaic(rows: list[dict], size: int = 1024) -> np.ndarray:
    """A size x size grey plane tiled from val images (what a user's large field looks like)."""
    out = np.zeros((size, size), np.float32)
    y = x = row_h = 0
    for r in rows * 8:
        img = np.asarray(r["image"], np.float32)
        if img.ndim == 3:  # colour: the mean of the channels, as the models' preprocessing does
            img = img[..., :3].mean(-1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        h, w = img.shape[:2]
        if x + w > size:
            y, x, row_h = y + row_h, 0, 0
        if y >= size:
            break
        out[y : y + h, x : x + w] = img[: size - y, : size - x]
        x, row_h = x + w, max(row_h, h)
    return out


def timings(model, plane: np.ndarray, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of ``segment`` (automatic diameter) and of the forward pass at the plane's size."""
    from napari_unet.core.engine import onnx_network
    from napari_unet.core.predict import segment

    def median(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    slice_s = median(lambda: segment(model, plane, diameter="auto"))
    network = onnx_network(model.net)  # the default CPU engine
    x = np.ascontiguousarray(plane[None, None], np.float32)
    forward_s = median(lambda: network(x))
    return slice_s, forward_s


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name a model and its val data (shared with bench_errors.py)."""
    parser.add_argument("--model", default="nuclei", help="a built-in model's name or a model file")
    parser.add_argument("--kind", choices=("nuclei", "cells"), default=None,
                        help="which val data (default: from the model's name)")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def model_and_rows(args: argparse.Namespace):
    """The model of ``--model`` on the CPU (with ``--threads``) and the val rows of its data."""
    import torch

    from napari_unet.core.checkpoint import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    kind = args.kind or ("cells" if "cells" in str(model.name) else "nuclei")
    return model, val_rows(kind, args.data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from _results import command_line as typed_command

    model, rows = model_and_rows(args)
    n_params = sum(p.numel() for p in model.net.parameters())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_inference import flops_per_pixel

    flop = flops_per_pixel(model.net, torch.device("cpu"))
    scores = ap_by_kind(model, rows)
    lines = [
        f"Figures of `{args.model}` from `{typed_command()}`, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_line()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        f"Out of the box (automatic diameter), val split, {len(rows)} images, mean per-image AP at each IoU:",
        "",
        "| image kind | n | " + " | ".join(f"AP@{t:g}" for t in IOUS) + " | AP@0.5:0.9 |",
        "| --- | ---: | " + " | ".join("---:" for _ in IOUS) + " | ---: |",
    ]
    counts = defaultdict(int)
    for r in rows:
        counts[r["kind"]] += 1
        counts["all"] += 1
    for k in sorted(scores, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 99):
        v = scores[k]
        lines.append(f"| {k} | {counts[k]} | " + " | ".join(f"{a:.3f}" for a in v) + f" | {np.mean(v):.3f} |")
    lines += ["", f"Network: {n_params:,} parameters, {flop:,.0f} FLOP per pixel per forward pass."]
    if not args.skip_speed:
        slice_s, forward_s = timings(model, mosaic(rows))
        lines.append(
            f"Current slice (1024 x 1024 mosaic of val images, `core.segment` with the automatic diameter and "
            f"the default engine, median of 3): {slice_s:.2f} s; the forward pass alone at 1024 x 1024: "
            f"{forward_s:.2f} s."
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
