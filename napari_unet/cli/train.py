"""``napari-unet train``: fine-tune a model on images and their instance labels.

::

    napari-unet train --images img.tif --labels masks.tif --out my-cells \\
        [--from nuclei] [--steps 300 | --time-budget 120] [--device auto]

``--images`` / ``--labels`` take files (2D images, or stacks: every plane is one
example) or folders of 2D files, paired by name with
:func:`napari_unet.io.pair_images_with_labels` (the rule the Fine-tune widget uses).
``--out`` is a model name (saved in the user's model folder, listed by
``napari-unet models``) or a file path (``.pt`` is added when missing).
``--new unet|paper`` trains a new network from scratch instead (:func:`napari_unet.core.checkpoint.untrained_model`;
``paper`` is the U-Net of Ronneberger et al. 2015).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._shapes import is_rgb
from napari_unet._training_bounds import MAX_BATCH, MIN_PATCH

from . import DEVICE_HELP, CLIError
from .predict import RGB_CHANNEL_WORDS, _channel_arg

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on images and their instance labels",
        description="Fine-tune a model (a copy; the original is kept) on images and instance labels.",
    )
    p.add_argument("--images", nargs="+", required=True, metavar="PATH",
                   help="image files (2D or stacks: each plane is one example) or folders of 2D images")
    p.add_argument("--labels", nargs="+", required=True, metavar="PATH",
                   help="instance label files or folders, in the same order as --images; in a folder "
                        "the labels of NAME.tif are NAME.tif, NAME_masks.tif, NAME_labels.png, ...")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="name of the new model (saved in the user model folder) or a file path "
                        "(with a folder in it; .pt is added when missing)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="base", default=None, metavar="NAME|PATH",
                       help="model to start from (default: the built-in model that fits the images, as predict "
                            "and Segment choose it: 'nuclei-fluo' for fluorescence, 'nuclei' for stained and "
                            "bright-field nuclei, 'cells' for phase contrast and DIC; said on stdout)")
    start.add_argument("--new", choices=("unet", "paper"), default=None,  # (core.checkpoint.NEW_NETWORKS)
                       help="train a new network from scratch instead: 'unet', the built-in models' network "
                            "(482,483 parameters), or 'paper', the U-Net of Ronneberger et al. 2015 (31 million "
                            "parameters, seconds a step on a CPU). From scratch needs many labelled images and "
                            "thousands of steps; fine-tuning (--from) learns from a few")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="optimisation steps")
    budget.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="train for this many seconds (default if neither is given: 300 steps, as in napari)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="training patch side in pixels (default: 128 for a padded network such as the "
                        "built-in models, 256 for an unpadded one)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="patches per step (default: 8 with patches of up to 128 px, 4 with larger ones)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="part held out for validation (whole images, or a band of each; default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labelled", choices=("auto", "all", "some"), default="auto",
                   help="are all cells of a label image labelled? all: what is not labelled is background; some: "
                        "learn from the labelled cells, and as background from what lies around them and wherever "
                        "the starting model finds no cell (cells it finds that are not labelled are left out); "
                        "auto (default): told per image by what the starting model finds where nothing is labelled")
    p.add_argument("--channel", type=_channel_arg, default=None, metavar="N|mean|without-dab",
                   help="of training files with channels, the channel to learn from (as predict --channel); of RGB "
                        "training images, the colour: 0, 1, 2 (red, green, blue), mean, or "
                        "without-dab (the model records it and segments it by default). Default: the one masks saved "
                        "from napari record (Segment's Colour), else the model's own, else as predict tells it: the "
                        "most nuclei-like colour of merged fluorescence channels, the mean of stained tissue, an "
                        "immunohistochemistry image without its DAB")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation (flips, rotations, scale, elastic deformation, brightness)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name/path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


# ---------------------------------------------------------------------- reading
def _pair_files(image_paths: list[str], label_paths: list[str]) -> list[tuple[Path, Path]]:
    """(image file, labels file) pairs from the command line arguments."""
    from napari_unet.io import is_ome_zarr, pair_images_with_labels

    if len(image_paths) != len(label_paths):
        raise CLIError(
            f"got {len(image_paths)} --images but {len(label_paths)} --labels; give one labels path per image path"
        )
    pairs: list[tuple[Path, Path]] = []
    for img_text, lab_text in zip(image_paths, label_paths):
        img, lab = Path(img_text).expanduser(), Path(lab_text).expanduser()
        for p in (img, lab):
            if not p.exists():
                raise CLIError(f"not found: {p}")
        # an OME-Zarr folder is one stack, as a file is; other folders hold files to pair
        img_folder, lab_folder = (p.is_dir() and not is_ome_zarr(p) for p in (img, lab))
        if img_folder != lab_folder:
            raise CLIError(f"{img} and {lab}: give two files (or OME-Zarr stacks) or two folders")
        if img_folder:
            pairs.extend(pair_images_with_labels(img, lab))
        else:
            pairs.append((img, lab))
    seen: set[Path] = set()
    for img, _lab in pairs:  # (a file given again, or given and in a folder given)
        if img.resolve() in seen:
            raise CLIError(f"{img} is given twice; give each image once (its copies would be held out to "
                           "validate the model on what it trained on)")
        seen.add(img.resolve())
    return pairs


def read_examples(image_paths: list[str], label_paths: list[str], channel: int | None = None,
                  channel_taken: list[str] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[int | str]]:
    """Lists of 2D image planes and label planes read from files and folders
    (:func:`napari_unet.io.read_training_pair`: slices of masks saved by napari-unet that are not
    marked corrected are left out, with a warning), and the colour of each plane's RGB image its
    masks were segmented by (saved from napari after Segment's Colour; "auto" otherwise). ``channel``:
    of images with channels, the one to train on (the names of the files it was taken from are added
    to ``channel_taken``)."""
    from napari_unet.io import read_training_pair

    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    colours: list[int | str] = []
    for img_path, lab_path in _pair_files(image_paths, label_paths):
        try:
            examples, _left_out = read_training_pair(img_path, lab_path, channel, with_colours=True,
                                                     channel_taken=channel_taken)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        images.extend(image for image, _labels, _source, _colour in examples)
        labels.extend(plane for _image, plane, _source, _colour in examples)
        colours.extend(colour for _image, _labels, _source, colour in examples)
    return images, labels, colours


def _saved_elsewhere(model: Any, out: Path) -> Path | None:
    """Save ``model`` where it can be, ``out`` having failed (a full disk): the user's model folder,
    else the system's temporary folder, under ``out``'s name (nothing replaced); None when neither works."""
    import tempfile

    from napari_unet.core.catalog import save_without_replacing, user_models_dir

    for folder in (user_models_dir(), Path(tempfile.gettempdir())):
        if folder.resolve() == out.parent.resolve():
            continue
        try:
            return save_without_replacing(model, folder / out.name, False)
        except OSError:
            continue
    return None


def _sections_of_3d_objects(image_paths: list[str], label_paths: list[str]) -> bool:
    """Whether every labels file holds 3D objects (masks saved from napari after a 3D run, as the list
    beside them says): their planes are cross-sections (``sections`` of core's ``finetune``)."""
    from napari_unet.io._corrected import stored_layout

    pairs = list(_pair_files(image_paths, label_paths))
    return bool(pairs) and all(stored_layout(lab).objects_3d for _img, lab in pairs)


def _out_path(text: str, overwrite: bool) -> Path:
    """Where ``--out`` saves: a model name goes to the user model folder, a path gets ``.pt``."""
    from napari_unet.core.catalog import MODEL_SUFFIX, user_model_path

    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if text.lower().endswith(MODEL_SUFFIX) or any(sep in text for sep in separators):
        path = Path(text).expanduser()
        if text[-1] in separators or path.is_dir() or path.name in ("", ".", ".."):
            raise CLIError(
                f"--out {text} is a folder; give a model file path such as "
                f"{path / ('my-model' + MODEL_SUFFIX)} or a model name"
            )
        if path.suffix.lower() != MODEL_SUFFIX:
            path = path.with_name(path.name + MODEL_SUFFIX)
        _check_out_folder(path)
    else:
        path = user_model_path(text)
    if path.exists() and not overwrite:
        raise CLIError(f"{path} exists; choose another name or pass --overwrite")
    return path


def _check_out_folder(path: Path) -> None:
    """A path into the user model folder names a user model (a built-in model's name there was listed
    beside the built-in one and never used); a path into the built-in models is refused."""
    from napari_unet.core.catalog import builtin_models_dir, check_model_name, in_user_models

    if path.parent.resolve() == builtin_models_dir().resolve():
        raise CLIError(f"{path} is among the built-in models, which are not replaced: give another --out")
    if in_user_models(path):
        check_model_name(path.stem)


#: Examples whose kind of image is looked at to choose the base model when none is given.
BASE_CHOICE_EXAMPLES = 8


def _fitting_builtin(images: list[np.ndarray], device: str) -> tuple[Any, str]:
    """The built-in model that fits most of the first :data:`BASE_CHOICE_EXAMPLES` examples (their
    kind of image, :mod:`napari_unet.core.modality`, as ``predict`` and *Segment* choose), with the
    words that say why; the default model when no kind can be told or that model is not installed.
    A phase-contrast run started from ``nuclei`` (the default before) fine-tuned C2C12 to AP@0.5 0.33,
    from ``cells`` 0.56 (benchmarks/RESULTS.md)."""
    from collections import Counter

    from napari_unet.core.checkpoint import ModelFileError, load_model
    from napari_unet.core.modality import KIND_WORDS, MODEL_FOR, image_modality
    from napari_unet.core.preprocess import fill_missing, is_camera_noise, is_constant

    kinds = []
    for plane in images[:BASE_CHOICE_EXAMPLES]:
        step = max(1, int(np.ceil(max(plane.shape[:2]) / 1024)))  # a few tens of ms, as in the GUI
        plane = fill_missing(plane[::step, ::step])[0]
        try:
            if not (is_constant(plane) or is_camera_noise(plane)):
                kinds.append(image_modality(plane).kind)
        except (ValueError, IndexError, TypeError):  # no plane kinds are told on
            continue
    if kinds:
        kind = Counter(kinds).most_common(1)[0][0]
        try:
            model = load_model(MODEL_FOR[kind], device=device)
            return model, f" (the built-in model for this {KIND_WORDS[kind]})"
        except ModelFileError:
            pass
    return load_model(None, device=device), ""


# ---------------------------------------------------------------------- run
@contextlib.contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl+C (SIGINT) or SIGTERM while training: the run stops after its current step and the best
    model so far is saved, as Stop does in the GUI (an interrupted run lost everything it had
    learnt); a second Ctrl+C quits at once, without saving."""
    if threading.current_thread() is not threading.main_thread():
        yield  # (signal handlers can only be set from the main thread: main() called from elsewhere)
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if signum == signal.SIGTERM:  # a scheduler's: its kill follows in seconds, no validation first
            stop.urgent = True  # type: ignore[attr-defined]  (see core.train.StopFlag)
        stop.set()
        print(f"\nnapari-unet: stopping after this step ({signal.Signals(signum).name}); the best model so far "
              "will be saved (Ctrl+C again quits without saving)", file=sys.stderr)

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def run(args: argparse.Namespace) -> int:
    from napari_unet._atomic import check_folder_writable
    from napari_unet.cli._progress import TrainingBar
    from napari_unet.core.catalog import (
        check_models_dir_writable,
        file_identity,
        in_user_models,
        save_without_replacing,
    )
    from napari_unet.core.checkpoint import load_model, untrained_model
    from napari_unet.core.device import select_device
    from napari_unet.core.events import run_to_end
    from napari_unet.core.train import DEFAULT_STEPS, TrainingFailed, finetune

    if args.seed < 0:
        raise CLIError(f"--seed must be 0 or more, got {args.seed}")
    if args.steps is not None and args.steps < 1:
        raise CLIError("--steps must be at least 1")
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise CLIError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    if not (math.isfinite(args.lr) and 0 < args.lr < 1e38):  # (1e308: the optimiser's float32 overflow traceback)
        raise CLIError(f"--lr must be a positive number below 1e38 (e.g. 0.0003), got {args.lr}")
    if not (math.isfinite(args.val_fraction) and 0 <= args.val_fraction < 1):
        raise CLIError(f"--val-fraction must be at least 0 and below 1 (0: no validation), got {args.val_fraction}")
    if args.patch_size is not None and args.patch_size < MIN_PATCH:
        raise CLIError(f"--patch-size must be at least {MIN_PATCH} pixels, got {args.patch_size}")
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH:  # (100000: killed for memory)
        raise CLIError(f"--batch-size must be from 1 to {MAX_BATCH} (as Fine-tune's), got {args.batch_size}")
    select_device(args.device)  # an unknown or missing device is refused before any reading
    out = _out_path(args.out, args.overwrite)
    # --overwrite replaces the model there now, not one saved there anew while this run trains
    replace = file_identity(out) if args.overwrite else False
    in_model_folder = in_user_models(out)
    try:  # before any reading or training: a run whose model cannot be saved is lost
        if in_model_folder:
            check_models_dir_writable(out.parent)
        else:  # a path of the user's own: the model folder's advice (NAPARI_UNET_MODELS) does not apply
            check_folder_writable(out.parent)
    except OSError as exc:
        if in_model_folder:
            raise CLIError(str(exc.strerror or exc)) from None
        raise CLIError(f"--out {out}: its folder cannot be written ({exc.strerror or exc}); give another") from None
    if isinstance(args.channel, int) and args.channel < 0:
        raise CLIError(f"--channel must be 0 or more (for RGB images 0, 1 or 2), mean or without-dab, got {args.channel}")
    taken: list[str] = []  # image files whose channel --channel N picked
    images, labels, stored = read_examples(args.images, args.labels,
                                           args.channel if isinstance(args.channel, int) else None, taken)
    rgb = [is_rgb(np.shape(image)) for image in images]
    if isinstance(args.channel, int) and args.channel >= 3 and any(rgb):
        raise CLIError(f"--channel must be 0, 1 or 2 (red, green, blue) for RGB images, got {args.channel}")
    if args.channel is not None:  # (over what saved masks record)
        stored = [RGB_CHANNEL_WORDS.get(args.channel, args.channel)] * len(images)
        # (a number: the colour of RGB images, the channel of files with channels; a word: RGB images only)
        if not any(rgb) and not taken:
            what = "no RGB training image" + ("" if isinstance(args.channel, str) else " nor one with channels")
            print(f"napari-unet: {what}: --channel {args.channel} left aside", file=sys.stderr)
        elif any(rgb) and not all(rgb):
            others = f"channel {args.channel} of {len(taken)} file(s) with channels" if taken else "nothing of the others"
            print(f"napari-unet: --channel {args.channel} took colour {args.channel} of the RGB training images "
                  f"({sum(rgb)} of {len(rgb)}) and {others}", file=sys.stderr)
    colours = [c if is_rgb else "auto" for c, is_rgb in zip(stored, rgb, strict=True)]
    if args.new is not None:
        base = untrained_model(args.new, name=out.stem, seed=args.seed)
        print(f"training a new {args.new!r} network from scratch on {len(images)} example(s), device "
              f"{select_device(args.device)}")
        if args.steps is None and args.time_budget is None:
            print(f"napari-unet: note: {DEFAULT_STEPS} steps (the default); a new network learns in thousands: give "
                  "--steps or --time-budget", file=sys.stderr)
    else:
        base, why = (load_model(args.base, device=args.device), "") if args.base is not None \
            else _fitting_builtin(images, args.device)
        print(f"fine-tuning {base.name!r}{why} on {len(images)} example(s), device {base.device}")

    steps = args.steps
    if steps is None and args.time_budget is None:
        steps = DEFAULT_STEPS
    stop = threading.Event()
    gen = finetune(
        base, images, labels, steps=steps, time_budget=args.time_budget, lr=args.lr,
        patch_size=args.patch_size, batch_size=args.batch_size, augment=not args.no_augment,
        val_fraction=args.val_fraction, device=args.device, seed=args.seed, labelled=args.labelled, stop=stop,
        colours=colours, sections=_sections_of_3d_objects(args.images, args.labels), from_scratch=args.new is not None,
        validate_start=args.new is None,  # (random weights: nothing to keep)
    )
    bar = TrainingBar(steps, args.time_budget, enabled=not args.no_progress)
    failed = None
    try:
        with _stopped_by_signals(stop):
            result = run_to_end(gen, bar)
    except TrainingFailed as exc:  # (its best weights before the failure: saved, then the failure said)
        result, failed = exc.model, exc
    finally:
        bar.close()
        gen.close()
    if stop.is_set() and not result.metadata.get("steps"):  # (Ctrl+C before the first step)
        print("napari-unet: interrupted before the first training step: nothing was learnt, no model saved",
              file=sys.stderr)
        return 130
    if stop.is_set() and (result.metadata.get("training") or {}).get("unvalidated"):
        print("napari-unet: training stopped (SIGTERM) before any validation of the trained weights: the latest "
              "weights are saved, not validated", file=sys.stderr)
    elif stop.is_set():
        print("napari-unet: training stopped: the best model so far is saved", file=sys.stderr)
    if not result.metadata.get("steps"):  # an unchanged copy of the base must not be saved as trained
        raise CLIError("the time budget ended before the first training step: nothing was learnt and no model "
                       "was saved; give a longer --time-budget (or --steps)")
    # a model saved there while this run trained (Fine-tune in the GUI, another run) is kept
    try:
        saved = save_without_replacing(result, out, replace)
    except OSError as exc:
        kept = _saved_elsewhere(result, out)  # (the run's minutes or hours not thrown away for a full disk)
        if kept is None:
            raise CLIError(f"the trained model could not be saved to {out} ({exc.strerror or exc}); free some space "
                           "or give another --out, and train again") from exc
        print(f"napari-unet: error: the trained model could not be saved to {out} ({exc.strerror or exc}); it was "
              f"saved to {kept} instead", file=sys.stderr)
        return 1
    if saved != out:
        print(f"{out} was saved by something else during training and is kept; this model goes to {saved.name}",
              file=sys.stderr)
    if failed is not None:
        from napari_unet._errors import one_line

        print(f"napari-unet: training failed ({one_line(failed.error)}); the best model so far (step {failed.step}) "
              f"is saved to {saved}", file=sys.stderr)
        return 1
    for line in summary_lines(result.metadata, args.val_fraction):
        print(line)
    print(f"saved {saved} ({result.metadata['steps']} steps, {result.metadata['training_time_s']:.0f} s)")
    # stopped (Ctrl+C, a scheduler's SIGTERM): saved, but not the run asked for, as predict's 130 says (a job's
    # `train && predict` went on with a model of a few steps, and its log read as a full run)
    return 130 if stop.is_set() else 0


def summary_lines(meta: dict, val_fraction: float) -> list[str]:
    """What ``train`` says of a trained model's validation, from its metadata."""
    training = meta["training"]
    if meta.get("val_ap50") is not None:
        history = training["history"]
        lines = [f"validation AP@0.5 {meta['val_ap50']:.3f} (Dice {meta['val_dice']:.3f}) at step "
                 f"{training['selected_step']} of {meta['steps']}"
                 + (f"; before training {history[0]['ap50']:.3f}" if history and history[0]["step"] == 0 else "")]
    elif not val_fraction:
        lines = ["no validation (val fraction 0)"]
    elif training.get("n_val_objects") or training.get("history"):  # (objects held out: stopped before)
        lines = ["the trained weights were not validated (stopped before a validation of them): check them on "
                 "images it did not learn"]
    else:
        lines = ["no validation: too few labelled objects to hold some out (all were trained on)"]
    if training.get("selection_note"):
        lines.append(f"note: {training['selection_note']}")
        if training.get("selection_gate") and training.get("selected_step") == 0:
            # (the gate of core.validation kept the base's weights: the way to the trained ones)
            lines.append("note: to keep trained weights anyway, train again with --val-fraction 0 (the last "
                         "weights are kept, not validated: check them on images you did not train on)")
    return lines
