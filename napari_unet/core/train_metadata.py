"""What a trained model records about its training: the ``metadata`` of the model file.

:func:`trained_metadata` writes it at the end of :func:`napari_unet.core.train.finetune`;
:func:`run_record` reads one run back (for the stages of a model trained in several runs).
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .checkpoint import SegmentationModel
from .examples import INHERITED, TrainingSplit
from .validation import BestWeights, Scores


@dataclass(frozen=True)
class Recipe:
    """The settings of a run that the model records (``patch_size``: the input patch the network took)."""

    patch_size: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool
    freeze_norm: bool
    mixed_precision: str  # "off", "bfloat16" or "float16"
    seed: int
    boundary_width: int
    w0: float
    sigma: float
    labelled: str = "all"  # "auto", "all" or "some": see napari_unet.core.partial
    sections: bool = False  # the labels were planes through 3D objects (see napari_unet.core.train.finetune)
    class_weight_cap: float = 10.0  # the largest class weight of the loss (see napari_unet.core.targets)


@dataclass
class RunSummary:
    """How a run went: steps done, whether it was stopped, the training losses and its duration (s)."""

    steps: int = 0
    stopped_early: bool = False
    losses: list[float] = field(default_factory=list)
    training_time: float = 0.0
    #: stopped in a hurry (``urgent``: a scheduler's SIGTERM) before any trained weights were validated:
    #: the latest weights are kept unvalidated
    unvalidated: bool = False

    @property
    def final_train_loss(self) -> float | None:
        """Mean training loss of the last 10 steps (None before the first)."""
        return float(np.mean(self.losses[-10:])) if self.losses else None


#: Key, in a fine-tuned model's metadata, of the models it comes from that a package described
#: ([{"name", "authors", "license", "cite"}], the nearest first): a colleague's CC-BY model fine-tuned
#: again was exported as 'napari-unet user', BSD-3-Clause, its authors named nowhere.
DERIVED_KEY = "derived_from"


def finetuned_postprocessing(base: SegmentationModel) -> dict[str, float]:
    """The post-processing of a model fine-tuned from ``base``: the base's minimum size and seed
    fraction, and the threshold 0.5.

    The base's threshold was tuned for its own training, whose class weights were capped at 10;
    fine-tuning caps them at 3 (:data:`~napari_unet.core.targets.FINETUNE_CLASS_WEIGHT_CAP`), and its
    models call fewer pixels cells at a given probability. Measured over 2 seeds each (180 steps on one
    frame, the other frames scored out of the box; benchmarks/RESULTS.md, "A fine-tuned model's
    post-processing"): AP@0.5 0.526 against 0.485 (C2C12 from `cells`, 0.6), 0.537 against 0.470
    (ISBI 2012 EM from `cells`), 0.961 against 0.959 (SIM+ from `nuclei`, 0.7); the minimum size and
    the seed fraction carry over (0.5 / 16 px / no seed fraction: 0.495, 0.410, 0.953).
    """
    from .instances import DEFAULT_THRESHOLD

    return {**base.postprocessing_for(None), "threshold": DEFAULT_THRESHOLD}


def derived_from(base: SegmentationModel) -> list[dict[str, Any]]:
    """The lineage a model fine-tuned from ``base`` records (see :data:`DERIVED_KEY`)."""
    chain = [dict(d) for d in base.metadata.get(DERIVED_KEY) or [] if isinstance(d, dict)]
    info = base.metadata.get("package")
    if isinstance(info, dict) and (info.get("authors") or info.get("license")):
        chain.insert(0, {"name": base.name, **{k: copy.deepcopy(info[k]) for k in ("authors", "license", "cite")
                                               if info.get(k)}})
    return chain


#: Keys of a base model's metadata that describe its own training and evaluation.
_NOT_INHERITED = ("path", "val_ap75", "stages", "legs", "model_card", "description", "package")


def trained_metadata(
    base: SegmentationModel,
    *,
    from_scratch: bool,
    split: TrainingSplit,
    n_val_planes: int,
    n_val_objects: int,
    tracker: BestWeights,
    chosen: Scores,
    run: RunSummary,
    recipe: Recipe,
    device: str,
) -> dict[str, Any]:
    """The metadata of a model trained from ``base``: its own (less its path and its post-processing
    per kind of image) updated with this run's.

    Top level: name, base model, date, examples, steps, the kept weights' validation scores,
    time and device. ``training``: how the kept weights were chosen (``selected``,
    ``selection_metric``, ``selection_note``, ``selected_step``), the split, the recipe,
    the final training loss and every validation (``history``).
    """
    # what describes the base's own training and evaluation is not carried over: the new model has
    # its own scores, and its export must not print the base's recipe and card as its own
    meta = {k: v for k, v in copy.deepcopy(base.metadata).items() if k not in _NOT_INHERITED}
    meta.pop(DERIVED_KEY, None)
    lineage = [] if from_scratch else derived_from(base)
    if lineage:  # (its export credits them, and takes their licence unless told another)
        meta[DERIVED_KEY] = lineage
    if not from_scratch and base.metadata.get("description"):
        meta["description"] = f"Fine-tuned from {base.name!r} ({str(base.metadata['description']).strip()})"
    meta.update(
        name=base.name if from_scratch else f"{base.name}-finetuned",
        base_model=None if from_scratch else base.name,
        # the built-in model at the root of its line (what an exported package cites)
        origin=None if from_scratch else (base.metadata.get("origin") or base.name),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        n_examples=len(split.examples),
        steps=run.steps,
        val_ap50=chosen.ap50,
        val_dice=chosen.dice,
        val_loss=chosen.loss,
        training_time_s=round(run.training_time, 2),
        device=device,
    )
    # the starting weights kept (step 0): the model segments as its base did, its settings per kind
    # of image and its start for the automatic diameter unchanged (a new data_diameter moved the
    # search: 0.766 -> 0.757 on the other Usiigaci fields with the very same weights)
    unchanged = chosen.step == 0 and not from_scratch
    # settings per kind of image were tuned for the base's weights on the base's data, and are not
    # measured for the new ones: the trained model uses its general setting on every image
    if not unchanged:
        meta.pop("postprocessing_by_kind", None)
    if not unchanged and not from_scratch:
        meta["postprocessing"] = finetuned_postprocessing(base)
    if base.diameter is None and not unchanged:  # its object size: that of the objects it learnt from
        # (as they were: a base of no object size trains on the images at their own scale)
        meta["training_diameter"] = round(split.labels_diameter, 2)
    if not unchanged and split.colour != INHERITED:  # what of RGB images it learnt from (its "auto")
        if split.colour is None:
            meta.pop("colour", None)
        else:
            meta["colour"] = split.colour
    if from_scratch:
        meta.pop("data_diameter", None)
    elif not unchanged and not recipe.sections:  # where the automatic diameter starts on this user's other images
        # (sections of 3D objects measure smaller than the objects: the base's start is kept)
        data = data_diameter(split.examples)
        if data is not None:
            meta["data_diameter"] = round(data, 2)
    rule, latest = tracker.rule, tracker.latest
    meta["training"] = {
        "selected": rule.select,
        "selection_note": "; ".join(n for n in (rule.note, tracker.gate_note(base.name)) if n) or None,
        # (a gate without the starting weights' scores, validate_start=False, compared nothing)
        "selection_gate": rule.gate and tracker.start is not None,
        "gate_kept_start": tracker.gate_kept_start,
        "selection_metric": rule.recorded_metric,
        "n_val_objects": n_val_objects,
        "selected_step": chosen.step,
        "latest_val_ap50": latest.ap50 if latest else None,
        "latest_val_step": latest.step if latest else None,
        "stopped_early": run.stopped_early,
        "n_train_planes": len(split.train),
        "n_val_planes": n_val_planes,
        "val_split": split.kind,
        "partial_examples": [i + 1 for i in split.partial],  # learnt from the labelled cells only
        **asdict(recipe),
        "final_train_loss": run.final_train_loss,
        "history": tracker.history,
    }
    if run.unvalidated:  # (see RunSummary.unvalidated)
        meta["training"].update(selected="latest", gate_kept_start=False, unvalidated=True, selection_note=(
            "stopped in a hurry (a scheduler's SIGTERM) before any trained weights were validated: the latest "
            "weights, not validated"))
    return meta


def data_diameter(examples) -> float | None:
    """Median equivalent diameter of the objects of training examples in their images' own pixels
    (each example's labels were rescaled by ``example.scale``); None when they hold no object."""
    from .calibrate import training_diameter

    try:
        return training_diameter([e.labels for e in examples], [e.scale for e in examples])
    except ValueError:  # no object
        return None


def run_record(meta: dict[str, Any]) -> dict[str, Any]:
    """One training run as a model's metadata records it: steps, time, device and the options that matter."""
    training = meta.get("training", {})
    return {
        "steps": int(meta.get("steps") or 0),
        "time_s": float(meta.get("training_time_s") or 0.0),
        "device": meta.get("device"),
        "patch_size": training.get("patch_size"),
        "batch_size": training.get("batch_size"),
        "lr": training.get("lr"),
        "selected_step": training.get("selected_step"),
    }
