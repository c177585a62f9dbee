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

Usage::

    python scripts/train_default_model.py --time-budget 300            # CPU stand-in
    python scripts/train_default_model.py --steps 20000 --device cuda   # the real one

The model is written atomically to ``--out`` with a model card in its metadata, and
``MODEL_CARD.md`` beside it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import sys
import tempfile
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


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_card_markdown(meta: dict) -> str:
    card = meta["model_card"]
    lines = [
        "# napari-unet default model: `nuclei`",
        "",
        f"Trained {meta['date']} with `scripts/train_default_model.py` ({card['training']['steps']} steps, "
        f"{card['training']['time_s'] / 60:.1f} min on {card['training']['hardware']}).",
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
        "## Limits",
        "",
        card["limits"],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--validations", type=int, default=10, help="validations over the run")
    parser.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md")
    args = parser.parse_args(argv)
    if args.steps is None and args.time_budget is None:
        parser.error("give --steps or --time-budget")

    import torch

    from napari_unet.cli._progress import TrainingBar
    from napari_unet.core.checkpoint import SegmentationModel, save_model
    from napari_unet.core.device import describe_device, select_device
    from napari_unet.core.events import run_to_end
    from napari_unet.core.model import UNet
    from napari_unet.core.predict import segment
    from napari_unet.core.train import finetune

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = select_device(args.device)
    t_load = time.perf_counter()
    train_rows = load_split(args.data, "train")
    val_rows = load_split(args.data, "val")
    print(f"loaded {len(train_rows)} train and {len(val_rows)} val images in {time.perf_counter() - t_load:.1f} s")

    net = UNet(in_channels=1, n_classes=3, base_width=args.base_width, depth=args.depth,
               padding="same", norm="batch")
    model = SegmentationModel(net, "bg-interior-boundary", metadata={"name": "nuclei"})
    if args.steps:
        validate_every: int | float = max(1, args.steps // args.validations)
    else:
        validate_every = float(args.time_budget) / args.validations
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
        validate_every=validate_every,
        validate_start=False,
        device=device,
        seed=args.seed,
        from_scratch=True,
    )
    bar = TrainingBar(args.steps, args.time_budget)
    result = run_to_end(gen, bar)
    bar.close()
    train_meta = dict(result.metadata)

    result.net.eval()
    t_eval = time.perf_counter()
    val_scores = evaluate(val_rows, lambda img: segment(result, img, device=device))
    baseline = evaluate(val_rows, otsu_watershed)
    print(f"evaluation {time.perf_counter() - t_eval:.1f} s")

    result.net.to("cpu")
    n_params = sum(p.numel() for p in result.net.parameters())
    training = train_meta["training"]
    card = {
        "data": (
            f"DSB2018 (BBBC038, Caicedo et al. 2019, CC0; community-fixed masks), train split: {len(train_rows)} "
            f"images (kinds: {dict(sorted(_count(train_rows).items()))}); selection and figures on the val split: "
            f"{len(val_rows)} images (kinds: {dict(sorted(_count(val_rows).items()))}). Colour images are converted "
            "to grey by the mean of R, G, B (the shared preprocessing), at training and inference."
        ),
        "recipe": {
            "network": f"UNet(in_channels=1, n_classes=3, base_width={args.base_width}, depth={args.depth}, "
                       f"padding='same', norm='batch'), {n_params:,} parameters",
            "representation": "bg-interior-boundary (2 px inner boundary band), watershed from interior seeds",
            "loss": "pixel-weighted cross-entropy, class balance 1/sqrt(freq) + border term w0=10, sigma=5 px",
            "augmentation": "crop, flips, any rotation, scale 0.8-1.25, elastic (3x3 grid, sigma 10 px, p=0.5), "
                            "gain/offset/gamma/noise",
            "optimiser": f"AdamW lr {args.lr} (warm-up 5%, cosine to 5%), weight decay 1e-4, "
                         f"batch {args.batch_size} x {training['patch_size']} px patches",
            "normalisation": "per-image percentiles 1-99.8 to 0-1",
            "seed": args.seed,
            "selection": f"best val AP@0.5 among {len(training['history'])} validations "
                         f"(step {training['selected_step']})",
        },
        "training": {
            "steps": train_meta["steps"],
            "time_s": train_meta["training_time_s"],
            "hardware": describe_device(device) + f" ({platform.processor() or platform.machine()})",
            "torch": str(torch.__version__),
        },
        "val": val_scores,
        "baseline_otsu_watershed": baseline,
        "limits": (
            "Trained on 2D nuclei images only (fluorescence mostly: 362 of 450 training images are dark-field); "
            "bright-field and H&E kinds are few, so expect lower quality there. Not for whole cells or 3D. "
            "A short training run (see steps/time above) is a stand-in, not the final model."
        ),
    }
    result.metadata = {
        "name": "nuclei",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": "Nuclei in 2D fluorescence, bright-field and stained-tissue images (DSB2018).",
        "val_ap50": val_scores["all"]["ap50"],
        "val_ap75": val_scores["all"]["ap75"],
        "val_dice": val_scores["all"]["dice"],
        "steps": train_meta["steps"],
        "training_time_s": train_meta["training_time_s"],
        "device": train_meta["device"],
        "n_examples": train_meta["n_examples"],
        "model_card": card,
        "training": training,
    }
    path = save_model(result, args.out)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB)")
    if not args.no_card:
        card_path = path.parent / "MODEL_CARD.md"
        write_text_atomic(card_path, model_card_markdown(result.metadata))
        print(f"wrote {card_path}")
    for p in (path, path.parent / "MODEL_CARD.md"):
        if p.exists():
            os.chmod(p, 0o644)  # mkstemp makes 0600 files; shipped files must be readable by all
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
