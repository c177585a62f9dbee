"""Train a built-in model in legs (``train_default_model.py --leg-minutes M`` / ``--resume``).

A leg trains for at most M minutes and leaves the whole state of the run (weights,
optimiser, schedule position, random state, validations) in
``training/<model>/checkpoint.pt`` (:mod:`napari_unet.core.resume`), written after
validations every ``--checkpoint-every`` seconds and at the end of the leg, one file
replaced each time. ``--resume`` goes on from it with the recipe it records; the steps
are those of one uninterrupted run. Each leg adds a line to ``training/LOG.md``:
steps, minutes, machine, precision and the val AP@0.5 by image kind of the best weights
so far. When the run's steps are all done, the last leg tunes the post-processing,
evaluates and writes the model and its card (``--out``, by default
``training/<model>/<model>.pt``: a candidate, copied into ``napari_unet/models`` by hand
once it beats the shipped model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import numpy as np

class _ResumeLegs:
    """``--resume`` given alone (not a string, so argparse does not make a path of it)."""

    def __repr__(self) -> str:
        return "RESUME_LEGS"


RESUME_LEGS = _ResumeLegs()

#: The options that make up a run's recipe: recorded in the checkpoint, restored by ``--resume``.
RECIPE_KEYS = ("model", "steps", "patch_size", "batch_size", "lr", "seed", "base_width", "depth", "diameter",
               "repeat_kind", "validations", "precision", "augment_upscaled", "augment_gradient",
               "augment_texture", "texture_contrast", "augment_debris", "augment_low_light", "augment_saturated",
               "kinds", "low_light_native", "augment_spots")

LOG_HEADER = (
    "# Training log of the built-in models\n\n"
    "One line per leg of `scripts/train_default_model.py --leg-minutes M` / `--resume` "
    "(checkpoints in `training/<model>/`). Val AP@0.5: mean over the model's val images of each kind, "
    "best weights so far, each image at its own object scale (median diameter of its labels).\n\n"
    "| date (UTC) | model | leg | steps | of | minutes | machine | precision | best val AP@0.5 (step) | "
    "val AP@0.5 by kind |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)


def cpu_name() -> str:
    """The CPU model and the vector extensions that matter for speed (for the log)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({'/'.join(ext) or 'no AVX2'})"


def patch_workers(device) -> dict:
    """How patches are made: on a GPU, spawned processes on the cores this process may use but two,
    at most 8 (each holds a copy of the training planes, about 750 MB for DSB2018; eight threads of
    one process made about 190 patches/s on a 16-core H200 machine, GIL-bound: it trained 32 x 128 px
    batches at 0.17 s/step, waiting on them); on the CPU, the trainer's own default (none ahead)."""
    import os

    if device.type != "cuda":
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return {"workers": min(8, max(1, cores - 2)), "patch_processes": True}


def machine_line(device) -> str:
    import os

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def new_model(args: argparse.Namespace):
    """The untrained network of the recipe, with the object diameter it is trained at."""
    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.model import UNet

    net = UNet(in_channels=1, n_classes=3, base_width=args.base_width, depth=args.depth, padding="same",
               norm="batch")
    metadata = {"name": args.model}
    if args.diameter:
        metadata["diameter"] = float(args.diameter)
    return SegmentationModel(net, "bg-interior-boundary", metadata=metadata)


def evaluate_by_kind(model, rows: list[dict], device) -> dict[str, float]:
    """Mean AP@0.5 per kind (and "all") of ``model`` on ``rows``, each image at its own object scale."""
    from collections import defaultdict

    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment
    from napari_unet.core.scale import median_diameter

    scores: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        diameter = median_diameter(r["labels"]) if model.diameter else "native"
        pred = segment(model, r["image"], diameter=diameter, device=device, engine="torch")
        ap = average_precision(r["labels"], pred, 0.5)
        scores[r["kind"]].append(ap)
        scores["all"].append(ap)
    return {k: round(float(np.mean(v)), 3) for k, v in scores.items()}


def append_log(log_path: Path, record: dict) -> None:
    """Add a leg's line to the log (created with its header)."""
    from napari_unet._atomic import atomic_write

    text = log_path.read_text() if log_path.is_file() else LOG_HEADER
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in record["val_by_kind"].items())
    best = record["best_val_ap50"]
    text += (f"| {record['date']} | {record['model']} | {record['leg']} | {record['from_step']}-{record['to_step']} | "
             f"{record['total_steps']} | {record['minutes']:.0f} | {record['machine']} | {record['precision']} | "
             f"{'-' if best is None else f'{best:.3f}'} ({record['best_step']}) | {kinds} |\n")
    with atomic_write(log_path, "w") as fh:
        fh.write(text)


def augment_config(args: argparse.Namespace):
    """The augmentation of a run: core.augment's defaults, with the recipe's extra options."""
    from napari_unet.core.augment import AugmentConfig

    return AugmentConfig(upscaled_prob=args.augment_upscaled, gradient=args.augment_gradient,
                         texture_prob=args.augment_texture, texture=tuple(args.texture_contrast),
                         debris_prob=args.augment_debris, low_light_prob=args.augment_low_light,
                         low_light_native=bool(getattr(args, "low_light_native", False)),
                         saturated_prob=args.augment_saturated,
                         spots_prob=getattr(args, "augment_spots", 0.0))


def run_legs(args: argparse.Namespace, load_rows, finalize, stage_record, repeat_kinds) -> int:
    """One leg of a run (a new one, or ``--resume``); finalize the model when its steps are done.
    ``repeat_kinds(rows, specs)``: the train rows with ``--repeat-kind``'s kinds repeated (as one run
    trains on them)."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.device import select_device
    from napari_unet.core.events import TrainStep, Validation, run_to_end
    from napari_unet.core.resume import CheckpointError, capture, iter_leg, load_checkpoint, restore, save_checkpoint
    from napari_unet.core.schedule import validation_interval
    from napari_unet.core.train import prepare_run

    folder = args.checkpoint_dir or Path(__file__).resolve().parents[1] / "training" / args.model
    ckpt = folder / "checkpoint.pt"
    resuming = args.resume is RESUME_LEGS
    if resuming:
        try:
            state = load_checkpoint(ckpt)
        except CheckpointError as exc:
            raise SystemExit(f"--resume: {exc}") from None
        for key, value in state["extra"]["args"].items():
            setattr(args, key, value)
        model = SegmentationModel.from_dict(state["model"])
        legs = list(state["extra"].get("legs") or [])
        done = args.out if args.out_given else folder / f"{args.model}.pt"
        if state["run"]["steps"] >= args.steps and Path(done).is_file():
            raise SystemExit(f"The run in {folder} is finished ({args.steps} steps); its model is {done}.")
        # a finished run without its model (the last leg stopped before writing it): this leg writes it
    else:
        if ckpt.exists():
            raise SystemExit(f"A run is under way in {folder}: go on with --resume, or move the folder away "
                             "to start a new one.")
        if not args.steps:
            raise SystemExit("Training in legs needs --steps (the length of the whole run).")
        torch.manual_seed(args.seed)
        model, legs, state = new_model(args), [], None
    out = args.out if args.out_given else folder / f"{args.model}.pt"
    device = select_device(args.device)
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    train_rows, val_rows = load_rows(args, "train"), load_rows(args, "val")
    print(f"{'leg ' + str(len(legs) + 1)} of the {args.model} run in {folder}: {len(train_rows)} train and "
          f"{len(val_rows)} val images; recipe {recipe}", flush=True)

    examples = repeat_kinds(train_rows, args.repeat_kind or [])
    prepared = prepare_run(
        model, [r["image"] for r in examples], [r["labels"] for r in examples],
        val_images=[r["image"] for r in val_rows], val_labels=[r["labels"] for r in val_rows],
        steps=args.steps, lr=args.lr, patch_size=args.patch_size, batch_size=args.batch_size,
        validate_every=validation_interval(args.validations, args.steps, None), device=device, seed=args.seed,
        mixed_precision=args.precision == "bf16", from_scratch=True, augment=augment_config(args),
        **patch_workers(device),
    )
    start = restore(prepared, state) if resuming else None
    first_step = start.steps if start else 0
    t0 = time.monotonic()
    extra = {"args": recipe, "legs": legs}

    def report(event) -> None:
        if isinstance(event, TrainStep) and event.step % 200 == 0:
            print(f"step {event.step}/{args.steps} loss {event.loss:.4f} lr {event.lr:.2e} "
                  f"{(time.monotonic() - t0) / max(1, event.step - first_step):.3f} s/step", flush=True)
        elif isinstance(event, Validation):
            print(f"step {event.step}: val AP@0.5 {event.ap50:.3f} Dice {event.dice:.3f} loss {event.loss:.4f}"
                  f"{' (best)' if event.is_best else ''}", flush=True)

    run, finished = run_to_end(iter_leg(prepared, ckpt, start=start, leg_seconds=args.leg_minutes * 60,
                                        checkpoint_every=args.checkpoint_every, extra=extra), report)
    minutes = (time.monotonic() - t0) / 60
    tracker = prepared.tracker
    scored = prepared.work.copy()
    if tracker._state is not None:
        scored.net.load_state_dict(tracker._state)
    scored.net.eval()
    record = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "model": args.model,
        "leg": len(legs) + 1, "from_step": first_step, "to_step": run.steps, "total_steps": args.steps,
        "minutes": round(minutes, 1), "machine": machine_line(device),
        "precision": prepared.recipe.mixed_precision,
        "best_val_ap50": tracker.best.ap50 if tracker.best else None,
        "best_step": tracker.best.step if tracker.best else None,
        "val_by_kind": evaluate_by_kind(scored, val_rows, device),
    }
    extra["legs"] = legs + [record]
    save_checkpoint(capture(prepared, run, extra), ckpt)
    append_log(folder.parent / "LOG.md", record)
    print(f"leg {record['leg']}: steps {first_step}-{run.steps} of {args.steps} in {minutes:.1f} min; "
          f"val AP@0.5 by kind {record['val_by_kind']}", flush=True)
    if not finished:
        import shlex

        data = (f" --data {shlex.quote(str(args.data))}" if args.data else "") + (
            f" --out {shlex.quote(str(args.out))}" if args.out_given else "")
        print(f"go on with: python scripts/train_default_model.py --model {args.model} --resume --leg-minutes "
              f"{args.leg_minutes:g} --checkpoint-dir {shlex.quote(str(folder))}{data}")
        return 0
    result = prepared.result(run)
    args.resume = None  # one stage from scratch, trained in legs (listed in "legs")
    stage = stage_record(result.metadata, args)
    stage.update(base_width=result.net.config.base_width, depth=result.net.config.depth)
    result.metadata["stages"] = [stage]
    result.metadata["legs"] = extra["legs"]
    args.out = out
    return finalize(result, dict(result.metadata), train_rows, val_rows, args, device)
