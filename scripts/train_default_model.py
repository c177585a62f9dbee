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
import datetime as dt
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import builtin_data  # noqa: E402  (beside this script)
import training_legs  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/dsb2018")
if not DEFAULT_DATA.is_dir():
    DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018"


def load_split(data: Path, split: str) -> list[dict]:
    """Rows of the DSB2018 manifest for ``split`` with their image and labels loaded."""
    return builtin_data.nuclei_rows(data, split)


def load_rows(args: argparse.Namespace, split: str) -> list[dict]:
    """The ``split`` rows of the model's data (``--data``: the dsb2018 folder for nuclei, the shared
    data folder for cells; default: found beside the repository)."""
    if args.model == "cells":
        rows = builtin_data.cells_rows(args.data or builtin_data.shared_data(ROOT), split)
    else:
        rows = load_split(args.data or DEFAULT_DATA, split)
    kinds = getattr(args, "kinds", None)
    if kinds:
        rows = [r for r in rows if r["kind"] in kinds]
        if not rows:
            raise SystemExit(f"--kinds {' '.join(kinds)}: no {split} image of these kinds.")
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
    """AP@0.5, AP@0.75 and Dice per image kind and over all images (means over images);
    ``segment_fn(row)`` gives the labels of a row's image."""
    from napari_unet.core.metrics import average_precision, dice

    per_kind: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        pred = segment_fn(r)
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
SEED_FRACTIONS = (0.0, 0.05, 0.1, 0.2)


def oracle_diameter(model, row: dict):
    """The diameter to segment ``row`` with when its labels are known: "native" for a model without
    an object size, else the median diameter of the row's labels."""
    from napari_unet.core.scale import median_diameter

    return "native" if model.diameter is None else median_diameter(row["labels"])


def tune_postprocessing(model, rows: list[dict], device, also: dict | None = None
                        ) -> tuple[dict, list[np.ndarray], list[np.ndarray] | None]:
    """Threshold, minimum size and smallest seed (a fraction of the model's object area) with the
    best mean AP@0.5 on ``rows`` (the val split).

    The network runs once per image; the grid only re-runs the instance extraction. Sizes are
    counted at the model's scale, as at inference. Returns the chosen values, the labels they
    give for each row, and those of the setting ``also`` (None when not given or off the grid).
    """
    from napari_unet.core.instances import _remove_small_and_relabel, probabilities_to_labels, seed_pixels
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import predict_probabilities
    from napari_unet.core.scale import min_size_at

    # each image at the scale the model was trained at: its own (a model trained on the images as
    # they are), or rescaled so that its objects (median diameter of its labels) have the model's size
    diameters = [oracle_diameter(model, r) for r in rows]
    probs = [predict_probabilities(model, r["image"], device=device, engine="torch", diameter=d)
             for r, d in zip(rows, diameters)]
    scales = [1.0 if d == "native" else model.diameter / d for d in diameters]
    seeds = SEED_FRACTIONS if model.diameter is not None and model.representation == "bg-interior-boundary" else (0.0,)
    best, also_labels = None, None
    for t in THRESHOLDS:
        for f in seeds:
            seed_px = seed_pixels(f, model.diameter) if f else 0
            found = [probabilities_to_labels(p, t, 0, model.representation, min_seed=min_size_at(seed_px, s))
                     for p, s in zip(probs, scales)]
            for m in MIN_SIZES:
                labels = [_remove_small_and_relabel(lab, min_size_at(m, s)) for lab, s in zip(found, scales)]
                score = float(np.mean([average_precision(r["labels"], lab, 0.5) for r, lab in zip(rows, labels)]))
                if best is None or score > best[0] + 1e-9:
                    best = (score, t, m, f, labels)
                setting = {"threshold": t, "min_size": m, "seed_fraction": f}
                if also is not None and _same_setting(also, setting):
                    also_labels = labels
                    print(f"post-processing on val, the start's setting: threshold {t}, min. size {m} px, "
                          f"seed fraction {f} -> AP@0.5 {score:.3f}")
    score, t, m, f, labels = best
    print(f"post-processing on val: threshold {t}, min. size {m} px, seed fraction {f} -> AP@0.5 {score:.3f}")
    return {"threshold": t, "min_size": m, "seed_fraction": f}, labels, also_labels


_SETTING_KEYS = ("threshold", "min_size", "seed_fraction")


def _same_setting(a: dict, b: dict) -> bool:
    """Whether two post-processing settings are the same (threshold, min. size, seed fraction)."""
    return all(abs(float(a.get(k, -1)) - float(b[k])) < 1e-9 for k in _SETTING_KEYS)


def start_postprocessing(args: argparse.Namespace) -> dict | None:
    """The general post-processing the model file a stage starts from (``--resume MODEL``)
    segments with (:attr:`SegmentationModel.postprocessing`); None for a run from scratch or legs
    (``--resume`` alone: their checkpoint)."""
    from napari_unet.core.checkpoint import ModelFileError, read_model_file

    path = args.resume
    if not isinstance(path, Path) or not path.is_file():
        return None
    try:
        return read_model_file(path).postprocessing
    except ModelFileError:
        return None


def tune_by_kind(model, rows: list[dict], val_rows: list[dict], device) -> dict:
    """Post-processing of its own per kind of image, tuned on ``rows`` (the train split) out of the
    box (:func:`napari_unet.core.calibrate.iter_tune_postprocessing_by_kind`, the grid of
    :func:`tune_postprocessing`); kinds where it does not beat the general setting get none. The
    result replaces ``model``'s ``metadata["postprocessing_by_kind"]`` (removed when empty) and is
    returned.

    The general setting is tuned on ``val_rows``, most of them of one kind (by
    :func:`~napari_unet.core.modality.image_modality`): that kind keeps it, only the others are
    tuned. (For the nuclei model, fluorescence's own setting gained 0.017 on train but 0.005 on val
    and lost 0.010 on SIM+: benchmarks/RESULTS.md.)
    """
    from collections import Counter

    from napari_unet.core.calibrate import iter_tune_postprocessing_by_kind
    from napari_unet.core.events import run_to_end
    from napari_unet.core.modality import MODALITIES, image_modality

    t0 = time.perf_counter()
    majority = Counter(image_modality(r["image"]).kind for r in val_rows).most_common(1)
    kinds = [k for k in MODALITIES if not majority or k != majority[0][0]]
    by_kind = run_to_end(iter_tune_postprocessing_by_kind(
        model, [r["image"] for r in rows], [r["labels"] for r in rows], THRESHOLDS, MIN_SIZES, SEED_FRACTIONS,
        kinds=kinds, seed=0, device=device, engine="torch"))
    model.metadata.pop("postprocessing_by_kind", None)
    if by_kind:
        model.metadata["postprocessing_by_kind"] = by_kind
    for kind, v in by_kind.items():
        print(f"post-processing for {kind} images (train, {v['n_images']} images): threshold {v['threshold']}, "
              f"min. size {v['min_size']} px, seed fraction {v['seed_fraction']} -> AP@0.5 {v['ap50']:.3f} "
              f"(general setting {v['ap50_general']:.3f})")
    print(f"post-processing per kind of image: {len(by_kind)} kind(s) kept, {time.perf_counter() - t0:.0f} s")
    return by_kind


def describe_by_kind(by_kind: dict) -> str:
    """The card's words for ``metadata["postprocessing_by_kind"]`` ("" when there is none)."""
    return "".join(
        f"; for {kind} images (told from the image) threshold {v['threshold']}, min. size {v['min_size']} px, seed "
        f"fraction {v['seed_fraction']} (best on the {v['n_images']} train images of that kind out of the box: "
        f"AP@0.5 {v['ap50']:.3f} against {v['ap50_general']:.3f} with the general setting)"
        for kind, v in sorted(by_kind.items()))


MODEL_TEXT = {
    "nuclei": {
        "title": "napari-unet default model: `nuclei`",
        "description": "Nuclei in 2D fluorescence, bright-field and stained-tissue images (DSB2018).",
        "data": ("DSB2018 (BBBC038, Caicedo et al. 2019, CC0; community-fixed masks), train split: {n_train} "
                 "images (kinds: {train_kinds}); selection and figures on the val split: {n_val} images (kinds: "
                 "{val_kinds}). Colour images are converted to grey by the mean of R, G, B (the shared "
                 "preprocessing), at training and inference."),
        "validation": "DSB2018 `val` split",
        "limits": ("Trained on 2D nuclei images only (fluorescence mostly: 362 of 450 training images are "
                   "dark-field); bright-field and H&E kinds are few, so expect lower quality there. Not for whole "
                   "cells or 3D: fine-tune it on your own corrections for those."),
    },
    "cells": {
        "title": "napari-unet built-in model: `cells`",
        "description": "Whole cells in 2D phase-contrast and DIC / bright-field images (Usiigaci, BBBC030).",
        "data": ("Usiigaci (Tsai et al. 2019, MIT; phase contrast, kind `phase`) and BBBC030 (Koos et al. 2016, "
                 "CC BY 3.0, not shipped; DIC, kind `dic`; fragments left by filling its outlines dropped): every "
                 "7th field of each held out for validation. Train: {n_train} fields (kinds: {train_kinds}); "
                 "selection and figures on val: {n_val} fields (kinds: {val_kinds}). The C2C12 time-lapse "
                 "(CC-BY 4.0) is never trained on (it is the fine-tuning benchmark); no whole-cell fluorescence "
                 "data was available. Images are rescaled so that cells measure the model's diameter."),
        "validation": "val fields of Usiigaci and BBBC030",
        "limits": ("Trained on phase contrast (one lab, 10x) and DIC (CHO cells) only; no fluorescence-cytoplasm "
                   "images: fine-tune it on your own corrections for those, and for other microscopes."),
    },
}


def model_card_markdown(meta: dict) -> str:
    card = meta["model_card"]
    text = MODEL_TEXT[meta.get("name", "nuclei")]
    lines = [
        f"# {text['title']}",
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
        f"## Validation ({text['validation']}, whole-image segmentation, means over images)",
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
    if card.get("val_auto_diameter"):
        lines += [
            "",
            ("The figures above segment each image at its objects' known size (the median diameter of its "
             "labels, brought to the model's diameter). Out of the box, with the diameter estimated from the image "
             "(`diameter=\"auto\"`, the default):"),
            "",
            "| image kind | n | AP@0.5 | AP@0.75 | Dice | model it replaces, AP@0.5 |",
            "| --- | --- | --- | --- | --- | --- |",
            *(f"| {kind} | {v['n']} | {v['ap50']:.3f} | {v['ap75']:.3f} | {v['dice']:.3f} | "
              f"{_ap_or_dash((card.get('shipped_auto_diameter') or {}).get(kind))} |"
              for kind, v in _ordered(card["val_auto_diameter"])),
        ]
    lines += [
        "",
        "AP@t = TP / (TP + FP + FN) with one-to-one matching at IoU > t (DSB2018 / StarDist definition).",
        "",
        "## Reproduce",
        "",
        ("From the repository root, with ../shared/data in place, one command retrains this model from scratch "
         "(fixed seeds; every recorded stage is repeated by its number of steps, also where the original run was "
         "cut into legs; a stage that was driven by a time budget is repeated by the steps it made, so its "
         "learning-rate schedule and validations follow steps and its weights may differ; the same weights come "
         "back on a CPU like the one that trained it, for bf16 stages one that computes bf16; elsewhere, and on a "
         "GPU, whose convolutions are not deterministic, close but not equal ones):"),
        "",
        "```bash",
        f"python scripts/train_default_model.py --reproduce napari_unet/models/{meta.get('name', 'nuclei')}.pt "
        f"--out retrained/{meta.get('name', 'nuclei')}.pt",
        "```",
        "",
        "It runs these stages, one after the other (stage files are written beside `--out`):",
        "",
        "```bash",
        *reproduce_commands(meta.get("stages") or [], f"retrained/{meta.get('name', 'nuclei')}.pt"),
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
    parser.add_argument("--out", type=Path, default=None,
                        help="default: napari_unet/models/<model>.pt; in legs training/<model>/<model>.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("nuclei", "cells"), default="nuclei",
                        help="which built-in model: nuclei (DSB2018) or cells (Usiigaci phase contrast + BBBC030 DIC)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the training data; for --model nuclei the dsb2018 folder (manifest.csv, images/, "
                             "labels/), for --model cells the shared data folder that holds usiigaci_phase/ and "
                             "bbbc030_dic/ (with --reproduce: the folder for the model retrained); default: "
                             "/work/shared/data or ../shared/data beside the repository (its dsb2018/ for nuclei)")
    parser.add_argument("--diameter", type=float, default=None,
                        help="train at this object diameter (px): every image is rescaled so that its objects "
                             "have it, and the model records it (default: the images as they are)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: mixed precision where the CPU (AVX-512 BF16, AMX) or GPU has it")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own); 1 when other work shares the machine: "
                             "threads that wait for each other on a busy CPU cost more than they bring")
    parser.add_argument("--leg-minutes", type=float, default=None,
                        help="train in legs of this many minutes, the state in --checkpoint-dir (see training_legs.py)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="default: training/<model>")
    parser.add_argument("--checkpoint-every", type=float, default=600.0, help="seconds between checkpoints in a leg")
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--validations", type=int, default=DEFAULT_VALIDATIONS, help="validations over the run")
    parser.add_argument("--resume", nargs="?", const=training_legs.RESUME_LEGS, default=None, type=Path,
                        metavar="MODEL",
                        help="alone: go on with the run in --checkpoint-dir where its last leg stopped; with MODEL "
                             "(a file this script wrote): a new stage from it instead of from scratch")
    parser.add_argument("--repeat-kind", action="append", default=[], metavar="KIND=N",
                        help="sample the train images of KIND N times as often (e.g. color=2)")
    parser.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                        help="train, select and tune on these kinds of image only (e.g. grey_dark: a "
                             "fluorescence-only stage); default: all")
    parser.add_argument("--augment-upscaled", type=float, default=0.0, metavar="P",
                        help="probability that a patch is made to look enlarged 1.5-4x (as inference enlarges "
                             "images of small objects): core.augment's upscaled_prob (default 0)")
    parser.add_argument("--augment-gradient", type=float, default=0.0, metavar="A",
                        help="uneven illumination: a random linear ramp of up to A (normalised intensity) "
                             "across each patch (default 0)")
    parser.add_argument("--augment-texture", type=float, default=0.0, metavar="P",
                        help="probability that the objects of a patch get uneven brightness (their own contrast, "
                             "brighter and dimmer parts inside): core.augment's texture_prob (default 0)")
    parser.add_argument("--texture-contrast", type=float, nargs=2, default=[0.5, 2.0], metavar=("LO", "HI"),
                        help="range of each object's contrast factor with --augment-texture (default 0.5 2; "
                             "1 1: only the texture inside)")
    parser.add_argument("--augment-debris", type=float, default=0.0, metavar="P",
                        help="probability that a patch gets a few bright foreign blobs near its objects (dead "
                             "cells, dust), left out of the loss: core.augment's debris_prob (default 0)")
    parser.add_argument("--augment-low-light", type=float, default=0.0, metavar="P",
                        help="probability that a patch of a fluorescence image gets the shot and read noise of a "
                             "camera that caught few photons: core.augment's low_light_prob (default 0)")
    parser.add_argument("--low-light-native", action="store_true",
                        help="draw --augment-low-light's noise at the image's own pixel size and enlarge it "
                             "with the image (small objects enlarged to the model's size show enlarged noise "
                             "grains)")
    parser.add_argument("--augment-saturated", type=float, default=0.0, metavar="P",
                        help="probability that a patch of a fluorescence image is clipped as an over-exposed "
                             "camera clips it (plateaus of one value): core.augment's saturated_prob (default 0)")
    parser.add_argument("--augment-spots", type=float, default=0.0, metavar="P",
                        help="probability that the objects of a patch get small bright spots inside them "
                             "(chromocentres, nucleoli): core.augment's spots_prob (default 0)")
    parser.add_argument("--within-stage", action="store_true",
                        help="with --resume MODEL: keep the best weights of this stage's own validations, not "
                             "MODEL's when none scores higher (a stage that trades a little val AP for "
                             "robustness, e.g. with --augment-gradient)")
    parser.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md")
    parser.add_argument("--finalize", type=Path, metavar="MODEL",
                        help="skip training: tune post-processing, evaluate and write the card for MODEL "
                             "(a file this script trained; give the same recipe options)")
    parser.add_argument("--rescore", type=Path, metavar="MODEL",
                        help="skip training: measure MODEL (a file this script wrote) out of the box again, beside "
                             "the shipped model of the same name, and rewrite its card (after a change to the "
                             "automatic diameter); the weights and post-processing stay as they are (see --tune-kinds)")
    parser.add_argument("--tune-kinds", action="store_true",
                        help="with --rescore: first tune MODEL's post-processing per kind of image on the train "
                             "split, as training now does at its end (the general setting stays as it is)")
    parser.add_argument("--reproduce", type=Path, metavar="MODEL", nargs="?",
                        const=ROOT / "napari_unet" / "models" / "nuclei.pt",
                        help="retrain MODEL (default: the shipped model) from scratch: run every stage recorded "
                             "in its metadata by its number of steps, and write the result to --out (required)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out_given = args.out is not None
    if args.reproduce and not args.out_given:
        # the default out is the shipped model of --model: a retrained cells model would replace nuclei.pt
        parser.error("--reproduce needs --out (where the retrained model goes, e.g. retrained/nuclei.pt)")
    if args.leg_minutes is not None and isinstance(args.resume, Path):
        parser.error("--resume MODEL starts a new stage from MODEL in one run (give --steps); training in legs "
                     "goes on with its own run: --resume alone, with --checkpoint-dir")
    if args.out is None:
        args.out = ROOT / "napari_unet" / "models" / f"{args.model}.pt"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from napari_unet.core.checkpoint import ModelFileError

    try:
        return _run(parser, args)
    except (ModelFileError, OSError, ValueError) as exc:  # a missing data folder, a damaged model file, a
        # model that cannot be trained (a package made elsewhere): one line
        raise SystemExit(f"error: {exc}") from None


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.reproduce:
        return reproduce(args.reproduce, args.out, args.data, args.device)  # None: each model's own default
    if args.tune_kinds and not args.rescore:
        parser.error("--tune-kinds goes with --rescore MODEL (training tunes them at its end by itself)")
    if args.rescore:
        return rescore(args.rescore, args)
    if args.leg_minutes is not None or args.resume is training_legs.RESUME_LEGS:
        if args.leg_minutes is None:
            args.leg_minutes = 120.0
        return training_legs.run_legs(args, load_rows, finalize, _stage_record, _repeat_kinds)
    if args.steps is None and args.time_budget is None and args.finalize is None:
        parser.error("give --steps, --time-budget, --finalize or --reproduce")

    import torch

    from napari_unet.core.checkpoint import read_model_file
    from napari_unet.core.device import select_device

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = select_device(args.device)
    t_load = time.perf_counter()
    train_rows = load_rows(args, "train")
    val_rows = load_rows(args, "val")
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
    from napari_unet.core.events import run_to_end
    from napari_unet.core.schedule import validation_interval
    from napari_unet.core.train import finetune

    if args.resume:
        from napari_unet.core.checkpoint import read_model_file

        model = read_model_file(args.resume, device=device)
        stages = list(model.metadata.get("stages") or [_stage_record(model.metadata, None)])
        print(f"resuming from {args.resume} ({sum(s['steps'] for s in stages)} steps in {len(stages)} stage(s))")
    else:  # the network and object diameter of the recipe, as a run in legs starts
        model = training_legs.new_model(args)
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
        # a resumed run never ends worse than it started, unless asked to keep this stage's own best
        validate_start=bool(args.resume) and not args.within_stage,
        device=device,
        seed=args.seed,
        from_scratch=True,  # BatchNorm statistics keep learning, also when resuming
        mixed_precision=args.precision == "bf16",  # fp32 means fp32 on a GPU too (as in legs)
        augment=training_legs.augment_config(args),
        **training_legs.patch_workers(device),
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
        if st.get("model", "nuclei") != "nuclei":
            argv += ["--model", st["model"]]
        if st.get("diameter"):
            argv += ["--diameter", f"{st['diameter']:g}"]
        if st.get("precision", "fp32") != "fp32":  # (fp16: bf16 asked on a GPU without it, as again here)
            argv += ["--precision", "bf16"]
        if i == 0:
            argv += ["--base-width", str(st.get("base_width", 16)), "--depth", str(st.get("depth", 4))]
        else:
            argv += ["--resume", str(out_path.with_name(f"stage{i}.pt"))]
        for kind in st.get("repeat_kind") or []:
            argv += ["--repeat-kind", kind]
        if st.get("kinds"):
            argv += ["--kinds", *st["kinds"]]
        if st.get("validations"):
            argv += ["--validations", str(st["validations"])]
        if st.get("within_stage"):
            argv.append("--within-stage")
        if st.get("augment_upscaled"):
            argv += ["--augment-upscaled", f"{st['augment_upscaled']:g}"]
        if st.get("augment_gradient"):
            argv += ["--augment-gradient", f"{st['augment_gradient']:g}"]
        if st.get("augment_texture"):
            argv += ["--augment-texture", f"{st['augment_texture']:g}"]
            argv += ["--texture-contrast", *(f"{c:g}" for c in st["texture_contrast"])]
        if st.get("augment_debris"):
            argv += ["--augment-debris", f"{st['augment_debris']:g}"]
        if st.get("augment_low_light"):
            argv += ["--augment-low-light", f"{st['augment_low_light']:g}"]
        if st.get("low_light_native"):
            argv.append("--low-light-native")
        if st.get("augment_saturated"):
            argv += ["--augment-saturated", f"{st['augment_saturated']:g}"]
        if st.get("augment_spots"):
            argv += ["--augment-spots", f"{st['augment_spots']:g}"]
        if not last:
            argv.append("--no-card")
        argv += ["--out", str(out_path if last else out_path.with_name(f"stage{i + 1}.pt"))]
        argvs.append(argv)
    return argvs


def reproduce_commands(stages: list[dict], out: str = "retrained/nuclei.pt") -> list[str]:
    """Shell commands that retrain the recorded stages one after the other (by step counts)."""
    return [f"python scripts/train_default_model.py {' '.join(argv)}" for argv in stage_arguments(stages, out)]


def reproduce(model_path: Path, out: Path, data: Path | None, device: str) -> int:
    """Run every stage recorded in ``model_path`` from scratch, the last one writing ``out``
    (``data``: the ``--data`` of every stage; None: the default folder of the model's data)."""
    from napari_unet.core.checkpoint import ModelFileError, read_model_file

    try:
        stages = read_model_file(model_path).metadata.get("stages")
    except ModelFileError as exc:
        raise SystemExit(f"--reproduce: {exc}") from None
    if not stages:
        raise SystemExit(f"{model_path} records no training stages: it was not written by this script.")
    argvs = stage_arguments(stages, str(out))
    for i, st in enumerate(stages, 1):
        if st.get("time_budget"):
            print(f"note: stage {i} was driven by a time budget ({st['time_budget']:g} s): it is repeated by the "
                  f"{st['steps']} steps it made, with a schedule that follows steps; its weights may differ.")
    for i, argv in enumerate(argvs, 1):
        print(f"stage {i} of {len(argvs)}: {' '.join(argv)}", flush=True)
        code = main(argv + (["--data", str(data)] if data is not None else []) + ["--device", device])
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
        if args.kinds:
            record["kinds"] = list(args.kinds)
        record["validations"] = args.validations  # which steps are validated decides the weights kept
        if getattr(args, "time_budget", None):  # repeated by its steps (see reproduce)
            record["time_budget"] = args.time_budget
        if args.within_stage:
            record["within_stage"] = True
        if args.augment_upscaled:
            record["augment_upscaled"] = args.augment_upscaled
        if args.augment_gradient:
            record["augment_gradient"] = args.augment_gradient
        if args.augment_texture:
            record["augment_texture"] = args.augment_texture
            record["texture_contrast"] = list(args.texture_contrast)
            record["texture_edge"] = training_legs.augment_config(args).texture_edge  # the fading it trained with
        if args.augment_debris:
            record["augment_debris"] = args.augment_debris
        if args.augment_low_light:
            record["augment_low_light"] = args.augment_low_light
            record["low_light_photons"] = list(training_legs.augment_config(args).low_light_photons)
            if args.low_light_native:
                record["low_light_native"] = True
        if getattr(args, "augment_spots", 0.0):
            record["augment_spots"] = args.augment_spots
            record["spots_brightness"] = list(training_legs.augment_config(args).spots_brightness)
        if args.augment_saturated:
            record["augment_saturated"] = args.augment_saturated
            record["saturated_level"] = list(training_legs.augment_config(args).saturated_level)
        record["seed"] = args.seed
        record["model"] = args.model
        record["diameter"] = args.diameter
        # what the run computed in (bf16 asked on a CPU without it trains in fp32, on a GPU without
        # it in fp16; fp32 on a GPU is fp32)
        used = (meta.get("training") or {}).get("mixed_precision")
        record["precision"] = args.precision if used is None else _PRECISION_NAMES.get(used, "bf16")
    return record


# a run's mixed precision as recorded in the model file -> the stage record's name for it
_PRECISION_NAMES = {"off": "fp32", "bfloat16": "bf16", "float16": "fp16"}


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

    from napari_unet.core.augment import AugmentConfig
    from napari_unet.core.checkpoint import save_model
    from napari_unet.core.device import describe_device
    from napari_unet.core.optimise import describe_loss
    from napari_unet.core.schedule import WarmupCosine
    from napari_unet.core.validation import describe_selection

    text = MODEL_TEXT[args.model]
    result.net.eval()
    t_eval = time.perf_counter()
    start = start_postprocessing(args)
    postprocessing, val_labels, start_labels = tune_postprocessing(result, val_rows, device, also=start)
    baseline = evaluate(val_rows, lambda r: otsu_watershed(r["image"]))
    val_auto, by_kind, from_start = None, {}, False
    if result.diameter is not None:  # what a user gets: the diameter estimated from the image
        result.metadata["postprocessing"] = postprocessing
        result.metadata.pop("postprocessing_by_kind", None)  # (the start's: tuned again below)
        if start_labels is not None and not _same_setting(start, postprocessing):
            val_auto = out_of_the_box(result, val_rows, device)
            # the setting best at the labels' own object size may not be at the estimated one (the
            # estimate's passes segment with it too): a fluorescence-only stage tuned to threshold
            # 0.9 / min. size 8 scored 0.870 at the known size, 0.827 out of the box, and 0.864 out
            # of the box with the setting it started from (training/LOG.md, 2026-12-05)
            result.metadata["postprocessing"] = start
            start_auto = out_of_the_box(result, val_rows, device)
            kept = start_auto["all"]["ap50"] > val_auto["all"]["ap50"]
            print(f"out of the box: tuned setting AP@0.5 {val_auto['all']['ap50']:.3f}, the start's "
                  f"{start_auto['all']['ap50']:.3f}: {'the start' if kept else 'tuned'} kept")
            if kept:
                postprocessing, val_labels, val_auto, from_start = start, start_labels, start_auto, True
            result.metadata["postprocessing"] = postprocessing
        # tuned again, against this general setting
        by_kind = tune_by_kind(result, train_rows, val_rows, device)
        if by_kind or val_auto is None:
            val_auto = out_of_the_box(result, val_rows, device)
    by_image = {id(r["image"]): lab for r, lab in zip(val_rows, val_labels)}
    val_scores = evaluate(val_rows, lambda r: by_image[id(r["image"])])
    shipped = shipped_scores(args, val_rows, device)
    print(f"evaluation {time.perf_counter() - t_eval:.1f} s")

    result.net.to("cpu")
    n_params = sum(p.numel() for p in result.net.parameters())
    training = train_meta["training"]
    stages = train_meta.get("stages") or [_stage_record(train_meta, None)]
    total_steps = sum(st["steps"] for st in stages)
    total_time = round(sum(st["time_s"] for st in stages), 1)
    card = {
        "data": text["data"].format(n_train=len(train_rows), train_kinds=dict(sorted(_count(train_rows).items())),
                                    n_val=len(val_rows), val_kinds=dict(sorted(_count(val_rows).items()))),
        "recipe": {
            "network": f"UNet(in_channels=1, n_classes=3, base_width={result.net.config.base_width}, "
                       f"depth={result.net.config.depth}, padding='same', norm='batch'), {n_params:,} parameters",
            "representation": "bg-interior-boundary (2 px inner boundary band), watershed from interior seeds",
            "loss": describe_loss(training.get("w0", 10.0), training.get("sigma", 5.0)),
            "augmentation": AugmentConfig().describe() + (
                f"; in the stages that say so, {AugmentConfig().describe_upscaled()} and linear illumination ramps"
                if any(st.get("augment_upscaled") or st.get("augment_gradient") for st in stages) else "")
                + "".join(f"; in stage {i + 1}, " + AugmentConfig(
                    texture=tuple(st["texture_contrast"]),
                    texture_edge=st.get("texture_edge", AugmentConfig().texture_edge)).describe_texture()
                    for i, st in enumerate(stages) if st.get("augment_texture"))
                + "".join(f"; in stage {i + 1}, {AugmentConfig().describe_debris()}"
                          for i, st in enumerate(stages) if st.get("augment_debris"))
                + "".join(f"; in stage {i + 1}, " + AugmentConfig(
                    low_light_photons=tuple(st["low_light_photons"]),
                    low_light_native=bool(st.get("low_light_native"))).describe_low_light()
                          for i, st in enumerate(stages) if st.get("augment_low_light"))
                + "".join(f"; in stage {i + 1}, " + AugmentConfig(
                    saturated_level=tuple(st["saturated_level"])).describe_saturated()
                          for i, st in enumerate(stages) if st.get("augment_saturated"))
                + "".join(f"; in stage {i + 1}, " + AugmentConfig(
                    spots_brightness=tuple(st["spots_brightness"])).describe_spots()
                          for i, st in enumerate(stages) if st.get("augment_spots")),
            "optimiser": f"AdamW lr {args.lr} ({WarmupCosine(args.lr).describe()}), "
                         f"weight decay {training.get('weight_decay', 1e-4):g}, "
                         f"batch {args.batch_size} x {training['patch_size']} px patches",
            "normalisation": "per-image percentiles 1-99.8 to 0-1",
            "post-processing": f"threshold {postprocessing['threshold']}, min. size {postprocessing['min_size']} px, "
                               f"seeds from {postprocessing['seed_fraction']} of the object area "
                               + ("(the setting of the model this stage started from: better out of the box "
                                  "on val than the best mean AP@0.5 at the labels' object size" if from_start
                                  else "(best mean AP@0.5 on val")
                               + f" over thresholds {THRESHOLDS} x sizes {MIN_SIZES} x "
                               f"seed fractions {SEED_FRACTIONS})" + describe_by_kind(by_kind),
            "seed": args.seed,
            "selection": f"{describe_selection(training)} (step {training['selected_step']} of the last stage)",
            "stages": "; ".join(
                f"{i + 1}: {st['steps']} steps, {st['time_s'] / 60:.0f} min, patch {st['patch_size']} x "
                f"{st['batch_size']}, lr {st['lr']}"
                + (f", resumed from {st['resumed_from']}" if st.get("resumed_from") else ", from scratch")
                + (f", {' '.join(st['repeat_kind'])} sampling" if st.get("repeat_kind") else "")
                + (f", {' / '.join(st['kinds'])} images only" if st.get("kinds") else "")
                + (f", enlarged look p={st['augment_upscaled']:g}" if st.get("augment_upscaled") else "")
                + (f", illumination ramps up to {st['augment_gradient']:g}" if st.get("augment_gradient") else "")
                + (f", uneven object brightness p={st['augment_texture']:g} (contrast "
                   f"{'-'.join(f'{c:g}' for c in st['texture_contrast'])})"
                   if st.get("augment_texture") else "")
                + (f", bright debris p={st['augment_debris']:g}" if st.get("augment_debris") else "")
                + (f", low light p={st['augment_low_light']:g}" if st.get("augment_low_light") else "")
                + (" at the image's own pixel size" if st.get("low_light_native") else "")
                + (f", over-exposed p={st['augment_saturated']:g}" if st.get("augment_saturated") else "")
                + (f", bright spots in the objects p={st['augment_spots']:g}" if st.get("augment_spots") else "")
                + (", its own best validation kept" if st.get("within_stage") else "")
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
        "val_auto_diameter": val_auto,
        "shipped_auto_diameter": shipped,
        "baseline_otsu_watershed": baseline,
        "limits": text["limits"],
    }
    result.metadata = {
        "name": args.model,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": text["description"],
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
        **({"postprocessing_by_kind": by_kind} if by_kind else {}),
        "training": training,
        **{k: train_meta[k] for k in ("diameter", "training_diameter", "diameter_range", "legs") if k in train_meta},
    }
    path = save_model(result, args.out)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB)")
    if not args.no_card:
        print(f"wrote {write_card(path, result.metadata)}")
    for kind, v in _ordered(val_scores):
        b = baseline[kind]
        print(f"{kind:12s} n={v['n']:3d}  U-Net AP@0.5 {v['ap50']:.3f} AP@0.75 {v['ap75']:.3f} Dice {v['dice']:.3f}"
              f"   | Otsu+ws AP@0.5 {b['ap50']:.3f} AP@0.75 {b['ap75']:.3f} Dice {b['dice']:.3f}")
    if shipped and val_auto:
        ties = args.model != "nuclei"  # issue #15: a new nuclei model beats the old on every kind
        rule = "better overall and no worse on any kind" if ties else "better on every kind"
        _print_beside_shipped(val_auto, shipped)
        print(f"the new model is {rule}: ship it by copying {path} and {path.parent / card_name(args.model)} "
              "into napari_unet/models/" if beats_shipped(val_auto, shipped, ties) else
              f"the new model is not {rule}: keep the shipped model")
    return 0


def rescore(path: Path, args: argparse.Namespace) -> int:
    """``--rescore``: the out-of-the-box figures of a finished model and of the shipped one, both
    measured with today's code, stored in the model's card (model file rewritten atomically)."""
    from napari_unet.core.checkpoint import read_model_file, save_model
    from napari_unet.core.device import select_device

    device = select_device(args.device)
    model = read_model_file(path, device=device)
    card = model.metadata.get("model_card")
    if not isinstance(card, dict) or model.diameter is None:
        print(f"error: {path} has no model card or no object diameter: train or --finalize it first", file=sys.stderr)
        return 2
    args.model = model.metadata.get("name", args.model)
    args.out = path
    val_rows = load_rows(args, "val")
    if args.tune_kinds:
        by_kind = tune_by_kind(model, load_rows(args, "train"), val_rows, device)
        recipe = card.get("recipe")
        if isinstance(recipe, dict) and isinstance(recipe.get("post-processing"), str):
            recipe["post-processing"] = recipe["post-processing"].split("; for ")[0] + describe_by_kind(by_kind)
    card["val_auto_diameter"] = out_of_the_box(model, val_rows, device)
    from napari_unet.core.engine import weights_key

    shipped = shipped_model(args, device)
    if shipped is None or weights_key(shipped.net) != weights_key(model.net):
        card["shipped_auto_diameter"] = shipped_scores(args, val_rows, device, shipped)
    # (else MODEL is the shipped model itself, e.g. re-tuned: its card keeps the model it replaced)
    model.net.to("cpu")
    save_model(model, path)
    if not args.no_card:
        write_card(path, model.metadata)
    _print_beside_shipped(card["val_auto_diameter"], card["shipped_auto_diameter"] or {})
    return 0


def out_of_the_box(model, val_rows: list[dict], device) -> dict:
    """Scores of ``model`` on ``val_rows`` as a user gets them: the diameter estimated from each image."""
    from napari_unet.core.predict import segment

    return evaluate(val_rows, lambda r: segment(model, r["image"], diameter="auto", device=device, engine="torch"))


def write_card(path: Path, meta: dict) -> Path:
    """The model card of the model file ``path`` (metadata ``meta``), written atomically beside it."""
    from napari_unet._atomic import atomic_write

    card_path = path.parent / card_name(meta.get("name", "nuclei"))
    with atomic_write(card_path, "w") as fh:
        fh.write(model_card_markdown(meta))
    return card_path


def beats_shipped(val_auto: dict, shipped: dict, ties: bool = True) -> bool:
    """Whether a new model should replace the shipped one: out of the box, AP@0.5 (to the three
    decimals the card shows) no lower on any kind of image and higher on all of them together;
    with ``ties=False``, higher on every kind (the nuclei model's rule, issue #15)."""
    def ap(scores: dict, kind: str) -> float:
        return round(scores[kind]["ap50"], 3)

    kinds = [k for k in shipped if k != "all"]
    if not ties:
        return all(ap(val_auto, k) > ap(shipped, k) for k in kinds)
    return all(ap(val_auto, k) >= ap(shipped, k) for k in kinds) and ap(val_auto, "all") > ap(shipped, "all")


def _print_beside_shipped(val_auto: dict, shipped: dict) -> None:
    for kind, v in _ordered(val_auto):
        print(f"{kind:12s} out of the box (auto diameter): new AP@0.5 {v['ap50']:.3f}, "
              f"shipped {_ap_or_dash(shipped.get(kind))}")


def _ap_or_dash(scores: dict | None) -> str:
    """AP@0.5 of a scores entry for a table cell ("-" when there is none)."""
    return f"{scores['ap50']:.3f}" if scores else "-"


def card_name(model: str) -> str:
    """The model card's file name beside a model file (the package's rule)."""
    from napari_unet.core.catalog import model_card_name

    return model_card_name(model)


def shipped_model(args: argparse.Namespace, device):
    """The shipped model of the same name (None: none shipped)."""
    from napari_unet.core.checkpoint import read_model_file

    path = ROOT / "napari_unet" / "models" / f"{args.model}.pt"
    return read_model_file(path, device=device) if path.is_file() else None


def shipped_scores(args: argparse.Namespace, val_rows: list[dict], device, shipped=None) -> dict | None:
    """The shipped model of the same name (``shipped`` when already read) on ``val_rows``, out of
    the box (None: none shipped, or it is the file being written)."""
    path = ROOT / "napari_unet" / "models" / f"{args.model}.pt"
    if not path.is_file() or Path(args.out).resolve() == path.resolve():
        return None
    return out_of_the_box(shipped or shipped_model(args, device), val_rows, device)


def _ordered(scores: dict) -> list:
    """"all" first, then the kinds by number of images."""
    return sorted(scores.items(), key=lambda kv: (kv[0] != "all", -kv[1]["n"], kv[0]))


def _count(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r["kind"]] += 1
    return out


if __name__ == "__main__":
    from napari_unet.core.device import keep_freed_memory

    keep_freed_memory()  # a process of its own: each step's buffers are reused, not mapped and zeroed again
    sys.exit(main())
