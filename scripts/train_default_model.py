"""Train the shipped nuclei model (``napari_unet/models/nuclei.pt``) from scratch on DSB2018.

Recipe (the model card written next to the model repeats it):

* data: DSB2018 (BBBC038, CC0) ``train`` split of ``/work/shared/data/dsb2018/manifest.csv``
  (450 images: dark-field fluorescence, bright-field, H&E colour); model selection on the
  ``val`` split only (52 images), by AP@0.5 of whole-image segmentation.
* network: UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same",
  norm="batch"), output "bg-interior-boundary".
* colour: the model takes one channel; RGB images are converted to grey by the common
  preprocessing (mean of R, G, B, :func:`napari_unet.core.preprocess.as_channels_first`),
  at training time exactly as at inference. Dark nuclei on a bright background (bright
  field, H&E) are learnt from the data, no inversion is applied.
* training: :func:`napari_unet.core.train.finetune` with ``from_scratch=True`` (BatchNorm
  statistics updated), AdamW, warm-up + cosine schedule, weighted cross-entropy with the
  paper's border weights, flips/rotations/scale/elastic/intensity augmentation, fixed seed.
  The run is finetune's own trainer: patch sampling, schedule, validation with best-weights
  tracking and the model's metadata are the parts in ``napari_unet.core`` (``patches``,
  ``schedule``, ``validation``, ``train_metadata``), and the model card describes the loss,
  schedule and selection from those parts and the metadata they wrote.

* post-processing: the probability threshold and minimum object size are chosen on ``val``
  (a small grid, from probabilities computed once) and stored in the model file, where
  ``segment``, the CLI and the Segment widget take them as defaults.

Usage::

    python scripts/train_default_model.py --time-budget 4200 --patch-size 128   # CPU, about 70 min
    python scripts/train_default_model.py --steps 20000 --device cuda            # on a GPU
    python scripts/train_default_model.py --finalize run.pt --patch-size 128     # re-tune/evaluate a file
    python scripts/train_default_model.py --reproduce napari_unet/models/nuclei.pt --out retrained/nuclei.pt
                                                     # retrain the shipped model, every recorded stage

A run can go on from a model this script wrote (``--resume MODEL``): the weights, BatchNorm
statistics and recorded stages carry over, a new warm-up + cosine schedule starts, and
the card lists every stage. The shipped model's stages are listed in ``MODEL_CARD.md``.

The model is written atomically to ``--out`` with a model card in its metadata, and
``MODEL_CARD.md`` beside it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = Path("/work/shared/data/dsb2018")
if not DEFAULT_DATA.is_dir():
    DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018"


def load_split(data: Path, split: str) -> list[dict]:
    """Rows of the manifest for ``split`` with their image and labels loaded."""
    from skimage.io import imread

    with open(data / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    if not rows:
        raise SystemExit(f"No '{split}' rows in {data / 'manifest.csv'}.")
    for r in rows:
        img = imread(data / "images" / f"{r['id']}.png")
        if img.ndim == 3:
            img = img[..., :3]
        r["image"] = img
        r["labels"] = imread(data / "labels" / f"{r['id']}.png").astype(np.int32)
    return rows


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """Classic baseline: grey, Otsu threshold (polarity: the minority side is the nuclei),
    distance transform, markers from local maxima, watershed; objects < 16 px dropped."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    grey = image.astype(np.float32).mean(-1) if image.ndim == 3 else image.astype(np.float32)
    grey = gaussian(grey, 1.0)
    if grey.max() == grey.min():
        return np.zeros(grey.shape, np.int32)
    t = threshold_otsu(grey)
    fg = grey > t
    if fg.mean() > 0.5:
        fg = ~fg
    fg = ndi.binary_fill_holes(_drop_small(ndi.label(fg)[0], 16) > 0)
    dist = ndi.distance_transform_edt(fg)
    dist = gaussian(dist, 1.0)
    peaks = peak_local_max(dist, min_distance=5, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    return _drop_small(labels, 16).astype(np.int32)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def evaluate(rows: list[dict], segment_fn) -> dict:
    """AP@0.5, AP@0.75 and Dice per image kind and over all images (means over images)."""
    from napari_unet.core.metrics import average_precision, dice

    per_kind: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        pred = segment_fn(r["image"])
        scores = (
            average_precision(r["labels"], pred, 0.5),
            average_precision(r["labels"], pred, 0.75),
            dice(r["labels"], pred),
        )
        per_kind[r["kind"]].append(scores)
        per_kind["all"].append(scores)
    out = {}
    for kind, vals in per_kind.items():
        arr = np.asarray(vals)
        out[kind] = {"n": len(vals), "ap50": round(float(arr[:, 0].mean()), 4),
                     "ap75": round(float(arr[:, 1].mean()), 4), "dice": round(float(arr[:, 2].mean()), 4)}
    return out


THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (0, 8, 16, 32, 48)


def tune_postprocessing(model, rows: list[dict], device) -> tuple[dict, list[np.ndarray]]:
    """Threshold and minimum size with the best mean AP@0.5 on ``rows`` (the val split).

    The network runs once per image; the grid only re-runs the instance extraction.
    Returns the chosen values and the labels they give for each row.
    """
    from napari_unet.core.instances import probabilities_to_labels
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import predict_probabilities

    # at the images' own scale: the recipe trains and tunes on DSB2018 as it is
    probs = [predict_probabilities(model, r["image"], device=device, diameter="native") for r in rows]
    best = None
    for t in THRESHOLDS:
        for m in MIN_SIZES:
            labels = [probabilities_to_labels(p, t, m, model.representation) for p in probs]
            score = float(np.mean([average_precision(r["labels"], lab, 0.5) for r, lab in zip(rows, labels)]))
            if best is None or score > best[0] + 1e-9:
                best = (score, t, m, labels)
    score, t, m, labels = best
    print(f"post-processing on val: threshold {t}, min. size {m} px -> AP@0.5 {score:.3f}")
    return {"threshold": t, "min_size": m}, labels


def model_card_markdown(meta: dict) -> str:
    card = meta["model_card"]
    lines = [
        "# napari-unet default model: `nuclei`",
        "",
        (f"Trained {meta['date']} with `scripts/train_default_model.py` ({card['training']['steps']} steps, "
         f"{card['training']['time_s'] / 60:.1f} min on {card['training']['hardware']}; stages below)."),
        "",
        "## Data",
        "",
        card["data"],
        "",
        "## Recipe",
        "",
    ]
    for key, value in card["recipe"].items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "## Validation (DSB2018 `val` split, whole-image segmentation, means over images)",
        "",
        "| image kind | n | AP@0.5 | AP@0.75 | Dice | Otsu+watershed AP@0.5 | AP@0.75 | Dice |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, v in _ordered(card["val"]):
        b = card["baseline_otsu_watershed"].get(kind, {})
        lines.append(
            f"| {kind} | {v['n']} | {v['ap50']:.3f} | {v['ap75']:.3f} | {v['dice']:.3f} | "
            f"{b.get('ap50', float('nan')):.3f} | {b.get('ap75', float('nan')):.3f} | {b.get('dice', float('nan')):.3f} |"
        )
    lines += [
        "",
        "AP@t = TP / (TP + FP + FN) with one-to-one matching at IoU > t (DSB2018 / StarDist definition).",
        "",
        "## Reproduce",
        "",
        ("From the repository root, with ../shared/data in place, one command retrains this model from scratch "
         "(fixed seeds; every recorded stage is repeated step for step, where the original runs were driven by "
         "a time budget on a 2-core CPU):"),
        "",
        "```bash",
        "python scripts/train_default_model.py --reproduce napari_unet/models/nuclei.pt --out retrained/nuclei.pt",
        "```",
        "",
        "It runs these stages, one after the other (stage files are written beside `--out`):",
        "",
        "```bash",
        *reproduce_commands(meta.get("stages") or []),
        "```",
        "",
        "## Limits",
        "",
        card["limits"],
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from napari_unet.core.schedule import DEFAULT_VALIDATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "napari_unet" / "models" / "nuclei.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--validations", type=int, default=DEFAULT_VALIDATIONS, help="validations over the run")
    parser.add_argument("--resume", type=Path, metavar="MODEL",
                        help="go on training from MODEL (a file this script wrote) instead of from scratch")
    parser.add_argument("--repeat-kind", action="append", default=[], metavar="KIND=N",
                        help="sample the train images of KIND N times as often (e.g. color=2)")
    parser.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md")
    parser.add_argument("--finalize", type=Path, metavar="MODEL",
                        help="skip training: tune post-processing, evaluate and write the card for MODEL "
                             "(a file this script trained; give the same recipe options)")
    parser.add_argument("--reproduce", type=Path, metavar="MODEL", nargs="?",
                        const=ROOT / "napari_unet" / "models" / "nuclei.pt",
                        help="retrain MODEL (default: the shipped model) from scratch: run every stage recorded "
                             "in its metadata, step for step, and write the result to --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reproduce:
        return reproduce(args.reproduce, args.out, args.data, args.device)
    if args.steps is None and args.time_budget is None and args.finalize is None:
        parser.error("give --steps, --time-budget, --finalize or --reproduce")

    import torch

    from napari_unet.core.checkpoint import read_model_file
    from napari_unet.core.device import select_device

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = select_device(args.device)
    t_load = time.perf_counter()
    train_rows = load_split(args.data, "train")
    val_rows = load_split(args.data, "val")
    print(f"loaded {len(train_rows)} train and {len(val_rows)} val images in {time.perf_counter() - t_load:.1f} s")

    if args.finalize:
        result = read_model_file(args.finalize, device=device)
        train_meta = dict(result.metadata)
    else:
        result = train(args, _repeat_kinds(train_rows, args.repeat_kind), val_rows, device)
        train_meta = dict(result.metadata)
    return finalize(result, train_meta, train_rows, val_rows, args, device)


def train(args: argparse.Namespace, train_rows: list[dict], val_rows: list[dict], device):
    """Train from scratch (BatchNorm statistics updated) and return the best model on val."""
    from napari_unet.cli._progress import TrainingBar
    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.events import run_to_end
    from napari_unet.core.model import UNet
    from napari_unet.core.schedule import validation_interval
    from napari_unet.core.train import finetune

    if args.resume:
        from napari_unet.core.checkpoint import read_model_file

        model = read_model_file(args.resume, device=device)
        stages = list(model.metadata.get("stages") or [_stage_record(model.metadata, None)])
        print(f"resuming from {args.resume} ({sum(s['steps'] for s in stages)} steps in {len(stages)} stage(s))")
    else:
        net = UNet(in_channels=1, n_classes=3, base_width=args.base_width, depth=args.depth,
                   padding="same", norm="batch")
        model = SegmentationModel(net, "bg-interior-boundary", metadata={"name": "nuclei"})
        stages = []
    gen = finetune(
        model,
        [r["image"] for r in train_rows],
        [r["labels"] for r in train_rows],
        val_images=[r["image"] for r in val_rows],
        val_labels=[r["labels"] for r in val_rows],
        steps=args.steps,
        time_budget=args.time_budget,
        lr=args.lr,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        validate_every=validation_interval(args.validations, args.steps, args.time_budget),
        validate_start=bool(args.resume),  # a resumed run never ends worse than it started
        device=device,
        seed=args.seed,
        from_scratch=True,  # BatchNorm statistics keep learning, also when resuming
    )
    bar = TrainingBar(args.steps, args.time_budget)
    result = run_to_end(gen, bar)
    bar.close()
    record = _stage_record(result.metadata, args)
    record["base_width"] = result.net.config.base_width
    record["depth"] = result.net.config.depth
    result.metadata["stages"] = stages + [record]
    return result


def stage_arguments(stages: list[dict], out: str) -> list[list[str]]:
    """Command-line arguments that retrain the recorded ``stages`` one after the other, step for step.

    Stage ``i`` (from 1) writes ``stage{i}.pt`` beside ``out``; the last one writes ``out``.
    """
    out_path = Path(out)
    argvs = []
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        argv = ["--steps", str(st["steps"]), "--patch-size", str(st["patch_size"]),
                "--batch-size", str(st["batch_size"]), "--lr", str(st["lr"]), "--seed", str(st.get("seed", 0))]
        if i == 0:
            argv += ["--base-width", str(st.get("base_width", 16)), "--depth", str(st.get("depth", 4))]
        else:
            argv += ["--resume", str(out_path.with_name(f"stage{i}.pt"))]
        for kind in st.get("repeat_kind") or []:
            argv += ["--repeat-kind", kind]
        if not last:
            argv.append("--no-card")
        argv += ["--out", str(out_path if last else out_path.with_name(f"stage{i + 1}.pt"))]
        argvs.append(argv)
    return argvs


def reproduce_commands(stages: list[dict], out: str = "retrained/nuclei.pt") -> list[str]:
    """Shell commands that retrain the recorded stages one after the other (by step counts)."""
    return [f"python scripts/train_default_model.py {' '.join(argv)}" for argv in stage_arguments(stages, out)]


def reproduce(model_path: Path, out: Path, data: Path, device: str) -> int:
    """Run every stage recorded in ``model_path`` from scratch, the last one writing ``out``."""
    from napari_unet.core.checkpoint import ModelFileError, read_model_file

    try:
        stages = read_model_file(model_path).metadata.get("stages")
    except ModelFileError as exc:
        raise SystemExit(f"--reproduce: {exc}") from None
    if not stages:
        raise SystemExit(f"{model_path} records no training stages: it was not written by this script.")
    argvs = stage_arguments(stages, str(out))
    for i, argv in enumerate(argvs, 1):
        print(f"stage {i} of {len(argvs)}: {' '.join(argv)}", flush=True)
        code = main(argv + ["--data", str(data), "--device", device])
        if code:
            return code
    return 0


def _stage_record(meta: dict, args: argparse.Namespace | None) -> dict:
    """One training stage for the card: the run as the metadata records it, and this script's options."""
    from napari_unet.core.train_metadata import run_record

    record = run_record(meta)
    if args is not None:
        record["resumed_from"] = str(args.resume.name) if args.resume else None
        record["repeat_kind"] = list(args.repeat_kind)
        record["seed"] = args.seed
    return record


def _repeat_kinds(rows: list[dict], specs: list[str]) -> list[dict]:
    """``rows`` with the rows of each ``KIND=N`` spec present N times (uniform sampling over the list)."""
    out = list(rows)
    for spec in specs:
        kind, _, times = spec.partition("=")
        if not times.isdigit() or int(times) < 1:
            raise SystemExit(f"--repeat-kind expects KIND=N with N >= 1, got {spec!r}.")
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            raise SystemExit(f"--repeat-kind: no train image of kind {kind!r}.")
        out += chosen * (int(times) - 1)
    return out


def finalize(result, train_meta: dict, train_rows: list[dict], val_rows: list[dict],
             args: argparse.Namespace, device) -> int:
    """Tune post-processing on val, evaluate beside the classic pipeline, write model and card."""
    import torch

    from napari_unet._atomic import atomic_write
    from napari_unet.core.checkpoint import save_model
    from napari_unet.core.device import describe_device
    from napari_unet.core.optimise import describe_loss
    from napari_unet.core.schedule import WarmupCosine
    from napari_unet.core.validation import describe_selection

    result.net.eval()
    t_eval = time.perf_counter()
    postprocessing, val_labels = tune_postprocessing(result, val_rows, device)
    by_image = {id(r["image"]): lab for r, lab in zip(val_rows, val_labels)}
    val_scores = evaluate(val_rows, lambda img: by_image[id(img)])
    baseline = evaluate(val_rows, otsu_watershed)
    print(f"evaluation {time.perf_counter() - t_eval:.1f} s")

    result.net.to("cpu")
    n_params = sum(p.numel() for p in result.net.parameters())
    training = train_meta["training"]
    stages = train_meta.get("stages") or [_stage_record(train_meta, None)]
    total_steps = sum(st["steps"] for st in stages)
    total_time = round(sum(st["time_s"] for st in stages), 1)
    card = {
        "data": (
            f"DSB2018 (BBBC038, Caicedo et al. 2019, CC0; community-fixed masks), train split: {len(train_rows)} "
            f"images (kinds: {dict(sorted(_count(train_rows).items()))}); selection and figures on the val split: "
            f"{len(val_rows)} images (kinds: {dict(sorted(_count(val_rows).items()))}). Colour images are converted "
            "to grey by the mean of R, G, B (the shared preprocessing), at training and inference."
        ),
        "recipe": {
            "network": f"UNet(in_channels=1, n_classes=3, base_width={result.net.config.base_width}, "
                       f"depth={result.net.config.depth}, padding='same', norm='batch'), {n_params:,} parameters",
            "representation": "bg-interior-boundary (2 px inner boundary band), watershed from interior seeds",
            "loss": describe_loss(training.get("w0", 10.0), training.get("sigma", 5.0)),
            "augmentation": "crop, flips, any rotation, scale 0.8-1.25, elastic (3x3 grid, sigma 10 px, p=0.5), "
                            "gain/offset/gamma/noise",
            "optimiser": f"AdamW lr {args.lr} ({WarmupCosine(args.lr).describe()}), "
                         f"weight decay {training.get('weight_decay', 1e-4):g}, "
                         f"batch {args.batch_size} x {training['patch_size']} px patches",
            "normalisation": "per-image percentiles 1-99.8 to 0-1",
            "post-processing": f"threshold {postprocessing['threshold']}, min. size {postprocessing['min_size']} px "
                               f"(best mean AP@0.5 on val over thresholds {THRESHOLDS} x sizes {MIN_SIZES})",
            "seed": args.seed,
            "selection": f"{describe_selection(training)} (step {training['selected_step']} of the last stage)",
            "stages": "; ".join(
                f"{i + 1}: {st['steps']} steps, {st['time_s'] / 60:.0f} min, patch {st['patch_size']} x "
                f"{st['batch_size']}, lr {st['lr']}"
                + (f", resumed from {st['resumed_from']}" if st.get("resumed_from") else ", from scratch")
                + (f", {' '.join(st['repeat_kind'])} sampling" if st.get("repeat_kind") else "")
                for i, st in enumerate(stages)
            ),
        },
        "training": {
            "steps": total_steps,
            "time_s": total_time,
            "hardware": describe_device(device) + f" ({platform.processor() or platform.machine()})",
            "torch": str(torch.__version__),
        },
        "val": val_scores,
        "baseline_otsu_watershed": baseline,
        "limits": (
            "Trained on 2D nuclei images only (fluorescence mostly: 362 of 450 training images are dark-field); "
            "bright-field and H&E kinds are few, so expect lower quality there. Not for whole cells or 3D: "
            "fine-tune it on your own corrections for those."
        ),
    }
    result.metadata = {
        "name": "nuclei",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": "Nuclei in 2D fluorescence, bright-field and stained-tissue images (DSB2018).",
        "val_ap50": val_scores["all"]["ap50"],
        "val_ap75": val_scores["all"]["ap75"],
        "val_dice": val_scores["all"]["dice"],
        "steps": total_steps,
        "training_time_s": total_time,
        "stages": stages,
        "device": train_meta["device"],
        "n_examples": train_meta["n_examples"],
        "model_card": card,
        "postprocessing": postprocessing,
        "training": training,
    }
    path = save_model(result, args.out)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB)")
    if not args.no_card:
        card_path = path.parent / "MODEL_CARD.md"
        with atomic_write(card_path, "w") as fh:
            fh.write(model_card_markdown(result.metadata))
        print(f"wrote {card_path}")
    for kind, v in _ordered(val_scores):
        b = baseline[kind]
        print(f"{kind:12s} n={v['n']:3d}  U-Net AP@0.5 {v['ap50']:.3f} AP@0.75 {v['ap75']:.3f} Dice {v['dice']:.3f}"
              f"   | Otsu+ws AP@0.5 {b['ap50']:.3f} AP@0.75 {b['ap75']:.3f} Dice {b['dice']:.3f}")
    return 0


def _ordered(scores: dict) -> list:
    """"all" first, then the kinds by number of images."""
    return sorted(scores.items(), key=lambda kv: (kv[0] != "all", -kv[1]["n"], kv[0]))


def _count(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r["kind"]] += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
