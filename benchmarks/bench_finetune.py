"""Fine-tuning benchmark: training speed and the human-in-the-loop simulation.

1. Speed: optimisation steps per second of the default network configuration
   (patch 256, batch 4 and patch 128, batch 8) on ``--device``.
2. Human in the loop: start from the default model, take the ground truth of one frame
   of a time-lapse as the user's "correction", fine-tune for a fixed time budget
   (default 120 s on CPU, 30 s on GPU) and report AP@0.5 on the *other* frames before and
   after, beside the time taken. Data: ``c2c12_timelapse`` (phase contrast, CC-BY) and
   ``ctc_sim_plus`` (simulated fluorescence, dev only).

Usage::

    python benchmarks/bench_finetune.py                      # CPU, writes benchmarks/RESULTS.md
    python benchmarks/bench_finetune.py --device cuda
    python benchmarks/bench_finetune.py --skip-speed --datasets c2c12_timelapse --budget 60

Results are appended/replaced in the "Fine-tuning" section of ``benchmarks/RESULTS.md``
(other sections are left alone) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from builtin_data import shared_data  # noqa: E402

DATA = shared_data(ROOT)

SECTION = "## Fine-tuning"


def speed(device, patch: int, batch: int, n_steps: int = 10) -> float:
    """Steps per second of the default configuration on random-looking real-sized patches."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.events import TrainStep
    from napari_unet.core.model import UNet
    from napari_unet.core.train import finetune

    rng = np.random.default_rng(0)
    image = rng.random((512, 512)).astype(np.float32)
    yy, xx = np.mgrid[0:512, 0:512]
    labels = np.zeros((512, 512), np.int32)
    for k in range(1, 60):
        cy, cx = rng.integers(20, 492, size=2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 144] = k
    torch.manual_seed(0)
    model = SegmentationModel(UNet(1, 3, 16, 4, "same", "batch"))
    times = []
    for event in finetune(model, [image], [labels], steps=n_steps + 2, patch_size=patch, batch_size=batch,
                          val_fraction=0, device=device):
        if isinstance(event, TrainStep):
            times.append(event.step_time)
    return 1.0 / float(np.median(times[2:]))


def load_timelapse(name: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    folder = DATA / name
    return tifffile.imread(folder / "images.tif"), tifffile.imread(folder / "labels.tif").astype(np.int32)


def mean_ap(model, images, labels, device) -> float:
    return evaluate(model, images, labels, device)[0]


def evaluate(model, images, labels, device) -> tuple[float, float | None]:
    """Mean AP@0.5 over the frames (automatic diameter), and the largest relative error of the
    estimated object diameter against each frame's true median diameter (None: no estimate)."""
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import PlaneResult, iter_planes
    from napari_unet.core.scale import median_diameter

    aps, errors = [], []
    for img, lab in zip(images, labels):
        result = next(r for r in iter_planes(model, img, device=device) if isinstance(r, PlaneResult))
        aps.append(average_precision(lab, result.labels))
        truth = median_diameter(lab)
        if result.diameter is not None and truth:
            errors.append(abs(result.diameter / truth - 1))
            print(f"  diameter: estimate {result.diameter:.1f} px, true median {truth:.1f} px, "
                  f"{int(lab.max())} objects; AP@0.5 {aps[-1]:.3f}", flush=True)
    return float(np.mean(aps)), (max(errors) if errors else None)


def hitl(name: str, device, budget: float | None, frame: int, eval_every: int, seed: int, base_name: str | None = None,
         compare_prior: bool = False, keep_objects: int | None = None, **train_kw) -> dict:
    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.train import run_finetune

    images, labels = load_timelapse(name)
    n = images.shape[0]
    others = [i for i in range(n) if i != frame][::eval_every]
    base = load_model(base_name, device=device)
    t = time.perf_counter()
    before = mean_ap(base, images[others], labels[others], device)
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    if budget is not None:
        train_kw["time_budget"] = budget
    correction = labels[frame]
    if keep_objects:  # the user drew only some of the frame's cells on an empty labels layer
        ids = np.unique(correction[correction > 0])
        chosen = np.random.default_rng(seed).choice(ids, size=min(keep_objects, ids.size), replace=False)
        correction = np.where(np.isin(correction, chosen), correction, 0)
        print(f"  correction: {len(chosen)} of the frame's {ids.size} cells labelled")
    tuned = run_finetune(base, [images[frame]], [correction], device=device, seed=seed, **train_kw)
    t_train = time.perf_counter() - t
    after, diameter_error = evaluate(tuned, images[others], labels[others], device)
    without = None
    if compare_prior and tuned.metadata.get("data_diameter"):  # the search as for a model that was not fine-tuned
        prior = tuned.metadata.pop("data_diameter")
        print(f"  without the recorded size of the data ({prior} px):")
        without = evaluate(tuned, images[others], labels[others], device)
        tuned.metadata["data_diameter"] = prior
    meta = tuned.metadata
    return {
        "dataset": name,
        "base": base.name,
        "frame": frame,
        "eval_frames": len(others),
        "shape": "x".join(map(str, images.shape[1:])),
        "before": before,
        "after": after,
        "train_s": t_train,
        "steps": meta["steps"],
        "selected_step": meta["training"]["selected_step"],
        "kept_by": (meta["training"].get("selection_metric") or meta["training"]["selected"]).replace("ap50", "AP@0.5"),
        "val_objects": meta["training"].get("n_val_objects"),
        "val_ap50": meta["val_ap50"],
        "eval_s": t_eval,
        "diameter_error": diameter_error,
        "without_prior": without,  # (AP@0.5, largest diameter error) without the data's recorded size
    }


def command_line() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _results import command_line as typed

    return typed()


def write_results(text: str, path: Path) -> None:
    """The run's block of RESULTS.md (``benchmarks/_results.py``: the hand-written sections stay)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _results import write_block

    write_block("bench_finetune", f"{SECTION}\n\n{text.strip()}", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=None, help="fine-tuning seconds (default 120 CPU, 30 GPU)")
    parser.add_argument("--datasets", nargs="+", default=["c2c12_timelapse", "ctc_sim_plus"])
    parser.add_argument("--models", nargs="+", default=None,
                        help="built-in base models to fine-tune (default: every built-in model)")
    parser.add_argument("--frame", type=int, default=0, help="frame whose ground truth is the correction")
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate every k-th other frame")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=None, help="fine-tuning patch (default: finetune's)")
    parser.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch (default: finetune's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tune for this many steps instead of a time budget (load-independent)")
    parser.add_argument("--compare-prior", action="store_true",
                        help="also score the fine-tuned model without the recorded object size of its data")
    parser.add_argument("--keep-objects", type=int, default=None,
                        help="label only this many (random) cells of the correction frame, the rest left unlabelled")
    parser.add_argument("--labelled", choices=("auto", "all", "some"), default=None,
                        help="finetune's labelled= (default: finetune's)")
    parser.add_argument("--val-fraction", type=float, default=None, help="finetune's val_fraction (default: finetune's)")
    parser.add_argument("--select", choices=("best", "latest"), default=None, help="finetune's select (default: finetune's)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)

    import torch

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.device import describe_device, select_device

    device = select_device(args.device)
    budget = args.budget or (30.0 if device.type == "cuda" else 120.0)
    machine = f"{describe_device(device)}, {platform.machine()}, torch {torch.__version__}"
    from napari_unet.core.catalog import list_models

    models = args.models or [e.name for e in list_models() if e.builtin]
    bases = [load_model(m, device="cpu") for m in models]
    lines = [
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine} "
        f"(`{command_line()}`). Base models: "
        + ", ".join(f"`{b.name}` ({b.metadata.get('steps', '?')} training steps, val AP@0.5 "
                    f"{b.metadata.get('val_ap50', '?')})" for b in bases) + ".",
        "",
    ]
    if not args.skip_speed:
        lines += ["Training speed, UNet(base_width=16, depth=4, same, batch norm):", "",
                  "| patch | batch | steps/s | patches/s |", "| --- | --- | --- | --- |"]
        for patch, batch in ((256, 4), (128, 8)):
            sps = speed(device, patch, batch)
            print(f"speed: patch {patch} batch {batch}: {sps:.2f} steps/s")
            lines.append(f"| {patch} | {batch} | {sps:.2f} | {sps * batch:.1f} |")
        lines.append("")
    how_long = f"{args.steps} steps" if args.steps else f"{budget:.0f} s"
    from napari_unet.core.train import default_patch

    sizes = sorted({(args.patch_size or default_patch(b.net)[0], args.batch_size or default_patch(b.net)[1])
                    for b in bases})  # (what the runs take: the network's own when not given)
    used = " / ".join(f"patch {p}, batch {n}" for p, n in sizes)
    lines += [
        f"Human in the loop: ground truth of frame {args.frame} as the correction, fine-tuning for {how_long} "
        f"(AdamW, {used}{'' if args.patch_size and args.batch_size else ' (the network’s own where not given)'}, "
        "validation on an edge band of that frame), AP@0.5 on the other frames:",
        "",
        "| data | base model | frame size | other frames | AP@0.5 before | AP@0.5 after | steps (kept) "
        "| kept by (held-out cells) | fine-tune s | largest diameter estimate error after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    train_kw = {k: v for k, v in (("patch_size", args.patch_size), ("batch_size", args.batch_size),
                                  ("steps", args.steps), ("labelled", args.labelled),
                                  ("select", args.select)) if v}
    if args.val_fraction is not None:
        train_kw["val_fraction"] = args.val_fraction
    if args.steps:
        budget = None
    for name in args.datasets:
        for model_name in models:
            r = hitl(name, device, budget, args.frame, args.eval_every, args.seed, base_name=model_name,
                     compare_prior=args.compare_prior, keep_objects=args.keep_objects, **train_kw)
            err = "-" if r["diameter_error"] is None else f"{100 * r['diameter_error']:.0f}%"
            print(f"{name} from {model_name}: AP@0.5 {r['before']:.3f} -> {r['after']:.3f} in {r['train_s']:.0f} s "
                  f"({r['steps']} steps); fine-tuned model's diameter estimates off by at most {err}")
            lines.append(
                f"| {name} | {r['base']} | {r['shape']} | {r['eval_frames']} | {r['before']:.3f} | {r['after']:.3f} | "
                f"{r['steps']} ({r['selected_step']}) | {r['kept_by']} ({r['val_objects']}) | {r['train_s']:.0f} | {err} |"
            )
            if r["without_prior"] is not None:
                ap, e = r["without_prior"]
                print(f"  without the data's recorded size: AP@0.5 {ap:.3f}, diameter estimates off by at most "
                      f"{'-' if e is None else f'{100 * e:.0f}%'}")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(text, args.results)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
