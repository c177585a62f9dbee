"""Fine-tuning (and training from scratch) of a :class:`SegmentationModel` on labelled planes.

:func:`finetune` is a generator: it yields a :class:`~napari_unet.core.events.TrainStep`
after every optimisation step and a :class:`~napari_unet.core.events.Validation` after
every validation, so that a GUI (thread worker), the CLI (progress bar) and scripts
drive it the same way. Its return value (``StopIteration.value``) is the trained
model: a *copy*, the input model is never modified. :func:`run_finetune` runs it to the
end.

Stopping
--------
Pass ``stop=`` any object with ``is_set()`` (e.g. ``threading.Event``): it is checked
before every step and the generator then returns the best model so far (the unchanged
copy if no step was done). ``generator.close()`` also stops between steps but, as with
any generator, discards the result.

Recipe
------
* Targets: :func:`napari_unet.core.targets.labels_to_targets` computed on every
  augmented patch (boundary bands stay 2 px wide whatever the zoom), weighted
  cross-entropy with the paper's border weights.
* Augmentation: :func:`napari_unet.core.augment.sample_patch` (crop, flip, any rotation,
  scale 0.8-1.25, the paper's elastic deformation on half of the patches) and intensity
  jitter.
* AdamW (weight decay 1e-4), learning rate warm-up over the first 5% then cosine decay
  to 5% of ``lr``, driven by the fraction of steps or of the time budget done.
* Validation split: held-out whole planes when there are enough examples
  (``floor(n * val_fraction) >= 1``), otherwise a band (``val_fraction`` of one side,
  along the edge that holds about that share of the objects) of every plane that
  training crops never see. The metric is the DSB2018 AP at IoU 0.5 of whole-plane
  segmentation (ties broken by the validation loss); with fewer than
  ``MIN_VAL_OBJECTS_FOR_AP`` held-out objects the validation loss alone decides, as AP
  over a handful of objects is mostly noise. A validation at step 0 measures
  the input model, so the returned model is never worse on the validation data than
  the one given. When the held-out part holds no object at all (a single labelled
  object, say) the metric cannot tell models apart: the latest weights are returned
  and the metadata says why.
* Batch normalisation: when fine-tuning (``freeze_norm=None`` with a trained input
  model, i.e. anything but ``from_scratch=True``), BatchNorm layers stay in eval mode:
  their running statistics are kept and only their affine parameters learn. Statistics
  re-estimated from a few patches of one or two images are noisy and biased, and a
  network whose statistics drift during a short run behaves differently at inference
  (eval mode) than it did in training; frozen statistics make training and inference
  see the same network, for any batch size. Training from scratch updates them.
* Mixed precision on CUDA: bf16 autocast where supported, else fp16 with a GradScaler.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import os
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .augment import NO_AUGMENT, AugmentConfig, sample_patch
from .checkpoint import SegmentationModel
from .device import describe_device, select_device
from .events import TrainStep, Validation
from .metrics import matching
from .preprocess import prepare_plane
from .targets import check_labels, labels_to_targets

log = logging.getLogger(__name__)

DEFAULT_STEPS = 200
MIN_PLANE_SIZE = 8
#: With fewer held-out objects than this, the best weights are chosen by the validation
#: loss rather than by AP@0.5 (with 2 objects AP only takes the values 0, 1/3, 1/2, 2/3, 1).
MIN_VAL_OBJECTS_FOR_AP = 10


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class _Example:
    image: np.ndarray  # (C, H, W) float32 normalised
    labels: np.ndarray  # (H, W) int32
    source: int  # index of the input plane


@dataclass
class _ValPlane:
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    weights: np.ndarray
    source: int


# ---------------------------------------------------------------------- inputs
def _as_list(images: Any, labels: Any) -> tuple[list, list]:
    if isinstance(images, np.ndarray) and isinstance(labels, np.ndarray):
        lab = np.asarray(labels)
        if lab.ndim == 2:
            return [images], [labels]
        if lab.ndim == 3:
            return list(images), list(labels)
    if images is None or labels is None:
        raise ValueError("Give images and labels to train on (lists of 2D planes).")
    return list(images), list(labels)


def prepare_examples(
    model: SegmentationModel, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], what: str = "training"
) -> list[_Example]:
    """Check image/label pairs and normalise the images the way prediction does.

    Raises
    ------
    ValueError
        No examples, different counts, mismatched shapes, non-integer or negative labels.
    """
    images, labels = _as_list(images, labels)
    if len(images) == 0:
        raise ValueError(
            f"No {what} examples: give at least one image with its labels (draw or correct some objects first)."
        )
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label images; give one label image per image.")
    out = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        img = np.asarray(img)
        lab = check_labels(lab, name=f"labels of example {i + 1}")
        if img.shape[:2] != lab.shape:
            raise ValueError(
                f"Example {i + 1}: the image is {img.shape[:2]} but its labels are {lab.shape}; "
                "they must cover the same pixels."
            )
        if min(lab.shape) < MIN_PLANE_SIZE:
            raise ValueError(
                f"Example {i + 1} is only {lab.shape} pixels; training needs planes of at least "
                f"{MIN_PLANE_SIZE} x {MIN_PLANE_SIZE}."
            )
        chw = prepare_plane(img, model.in_channels, model.normalization)
        out.append(_Example(chw, lab.astype(np.int32, copy=False), i))
    return out


def _has_objects(examples: Sequence[_Example]) -> bool:
    return any(bool(e.labels.max() > 0) for e in examples)


def split_examples(
    examples: list[_Example], val_fraction: float, rng: np.random.Generator
) -> tuple[list[_Example], list[_Example]]:
    """Training and validation parts: whole planes if there are enough, else a band of each.

    With ``n`` planes and ``k = floor(n * val_fraction)``: if ``k >= 1`` and the remaining
    planes hold objects, ``k`` random planes are held out; otherwise a band of every plane
    (``val_fraction`` of one side, along one of its four edges) is held out and training
    crops never see it. The band is the edge strip whose objects come closest to
    ``val_fraction`` of the plane's objects while leaving some to train on (see
    :func:`_choose_band`): a band of pure background would measure nothing but false
    positives, and would keep the base model whenever it predicts nothing there.
    """
    if val_fraction <= 0:
        return examples, []
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    n = len(examples)
    k = int(math.floor(n * val_fraction + 1e-9))
    if 1 <= k < n:
        order = rng.permutation(n)
        val = [examples[i] for i in sorted(order[:k])]
        train = [examples[i] for i in sorted(order[k:])]
        if _has_objects(train):
            return train, val
    train, val = [], []
    for e in examples:
        band = _choose_band(e.labels, val_fraction)
        if band is None:
            train.append(e)
            continue
        axis, start, stop = band
        keep = (slice(0, start) if start > 0 else slice(stop, None))
        take = slice(start, stop)
        if axis == 0:
            train.append(_Example(e.image[:, keep], e.labels[keep], e.source))
            val.append(_Example(e.image[:, take], e.labels[take], e.source))
        else:
            train.append(_Example(e.image[:, :, keep], e.labels[:, keep], e.source))
            val.append(_Example(e.image[:, :, take], e.labels[:, take], e.source))
    return train, val


def _choose_band(labels: np.ndarray, val_fraction: float) -> tuple[int, int, int] | None:
    """The validation band of one plane as ``(axis, start, stop)``, or None if too small.

    Candidates are the four edge strips, ``val_fraction`` of the side they cut (the
    longer side's strips first, the far end before the near one: the order used when
    objects do not decide). An object counts for a strip when most of its pixels lie in
    it. The chosen strip holds at least one object and leaves at least one to train on
    if any strip can; among those, the one whose count is closest to ``val_fraction``
    of all objects.
    """
    h, w = labels.shape
    axes = (0, 1) if h >= w else (1, 0)
    candidates = []
    for axis in axes:
        length = labels.shape[axis]
        if length < 2 * MIN_PLANE_SIZE:
            continue
        size = int(round(length * val_fraction))
        size = min(max(size, MIN_PLANE_SIZE), length - MIN_PLANE_SIZE)
        candidates += [(axis, length - size, length), (axis, 0, size)]
    if not candidates:
        return None
    sizes = np.bincount(labels.ravel())
    n_objects = int(np.count_nonzero(sizes[1:]))
    if n_objects == 0:
        return candidates[0]
    target = max(1.0, val_fraction * n_objects)

    def rank(band: tuple[int, int, int]) -> tuple[int, float]:
        axis, start, stop = band
        part = labels[start:stop] if axis == 0 else labels[:, start:stop]
        inside = np.bincount(part.ravel(), minlength=sizes.size)
        held = int(np.count_nonzero(2 * inside[1:] > sizes[1:]))
        usable = held >= 1 and n_objects - held >= 1
        # unusable strips: prefer the one taking fewest objects away from training
        return (0, abs(held - target)) if usable else (1, float(held))

    return min(candidates, key=rank)  # min() keeps the first of equals: the default order


# ---------------------------------------------------------------------- network helpers
def _set_train_mode(net: torch.nn.Module, freeze_norm: bool) -> None:
    net.train()
    if freeze_norm:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _autocast_dtype(device: torch.device, mixed_precision: bool | None) -> torch.dtype | None:
    if device.type != "cuda":
        if mixed_precision:
            log.info("Mixed precision is only used on CUDA; training in float32 on %s.", device)
        return None
    if mixed_precision is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def forward_plane(
    net: torch.nn.Module, chw: np.ndarray, device: torch.device, amp_dtype: torch.dtype | None = None
) -> np.ndarray:
    """Class probabilities of one whole (C, H, W) plane (mirror-padded to a valid size).

    Returns
    -------
    ndarray
        (n_classes, H, W) float32 softmax probabilities.
    """
    c, h, w = chw.shape
    margin = net.margin
    th = net.output_size(net.valid_input_size(h + 2 * margin)) if margin else net.valid_input_size(h)
    tw = net.output_size(net.valid_input_size(w + 2 * margin)) if margin else net.valid_input_size(w)
    # output covers [0, th) x [0, tw) >= image; input needs margin more on each side
    in_h, in_w = th + 2 * margin, tw + 2 * margin
    padded = np.pad(chw, ((0, 0), (margin, in_h - h - margin), (margin, in_w - w - margin)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(padded))[None].to(device)
    with torch.no_grad():
        if amp_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                logits = net(x)
        else:
            logits = net(x)
        probs = torch.softmax(logits.float(), dim=1)[0, :, :h, :w]
    return probs.cpu().numpy()


def _labels_from_probs(probs: np.ndarray, representation: str) -> np.ndarray:
    try:  # the prediction side's post-processing, so that validation matches inference
        from .instances import probabilities_to_labels
    except ImportError:  # pragma: no cover - fallback while the module is absent
        probabilities_to_labels = None
    if probabilities_to_labels is not None:
        return probabilities_to_labels(probs, representation=representation)
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    if representation == "foreground":
        return ndi.label(probs[1] > 0.5)[0]
    fg = probs[1] + probs[2] > 0.5
    seeds = ndi.label(probs[1] > 0.5)[0]
    return watershed(probs[2], seeds, mask=fg)


def _weighted_ce(logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), classes, reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1e-6)


# ---------------------------------------------------------------------- the generator
def finetune(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    steps: int | None = None,
    time_budget: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    patch_size: int = 256,
    batch_size: int = 4,
    augment: bool | AugmentConfig = True,
    val_fraction: float = 0.2,
    val_images: Sequence[np.ndarray] | None = None,
    val_labels: Sequence[np.ndarray] | None = None,
    validate_every: int | float | None = None,
    validate_start: bool = True,
    device: str | torch.device | None = None,
    seed: int = 0,
    mixed_precision: bool | None = None,
    freeze_norm: bool | None = None,
    from_scratch: bool = False,
    boundary_width: int = 2,
    w0: float = 10.0,
    sigma: float = 5.0,
    select: str = "best",
    workers: int | None = None,
    stop: StopFlag | None = None,
) -> Generator[TrainStep | Validation, None, SegmentationModel]:
    """Fine-tune a copy of ``model`` on labelled planes, yielding progress events.

    Parameters
    ----------
    model : SegmentationModel
        The starting model (not modified).
    images : list of ndarray
        2D planes, grey (H, W) or RGB (H, W, 3); sizes may differ.
    labels : list of ndarray
        (H, W) integer instance labels, one per image (0 = background).
    steps : int, optional
        Number of optimisation steps.
    time_budget : float, optional
        Seconds of training (validation included); with ``steps`` too, the first reached
        ends the run. Both None: ``DEFAULT_STEPS`` steps.
    lr, weight_decay : float
        AdamW peak learning rate and weight decay (warm-up, then cosine decay).
    patch_size : int
        Input patch size; rounded up to a size the network takes and shrunk to the
        largest training plane when all are smaller.
    batch_size : int
        Patches per step.
    augment : bool or AugmentConfig
        Augmentation on (default recipe), off, or a custom configuration.
    val_fraction : float
        Part held out for validation (whole planes or a band, see the module docs);
        0 turns validation off (the latest weights are returned).
    val_images, val_labels : list of ndarray, optional
        An explicit validation set (then nothing is held out of ``images``).
    validate_every : int or float, optional
        Steps between validations (int), or seconds when a time budget drives the run
        (float). Default: 10 validations over the run.
    validate_start : bool
        Validate the input model before the first step (step 0).
    device : str or torch.device, optional
        None/"auto" picks cuda, mps, then cpu.
    seed : int
        Seeds patch sampling, augmentation and the split.
    mixed_precision : bool, optional
        None: on for CUDA (bf16 where supported, else fp16 + GradScaler), off elsewhere.
    freeze_norm : bool, optional
        Keep BatchNorm statistics fixed (None: frozen unless ``from_scratch``).
    from_scratch : bool
        The model is untrained (training the default model): updates BatchNorm statistics
        and skips nothing else.
    boundary_width, w0, sigma :
        Target parameters, see :func:`napari_unet.core.targets.labels_to_targets`.
    select : {"best", "latest"}
        Return the weights with the best validation AP@0.5 (ties: lower validation loss;
        the loss alone with fewer than ``MIN_VAL_OBJECTS_FOR_AP`` held-out objects; the
        latest weights when none is held out), or the latest ones. The metadata's
        ``training`` entry records the choice (``selection_metric``, ``selection_note``).
    workers : int, optional
        Threads preparing patches (augmentation, targets) ahead of the network; None:
        0 on the CPU (the network needs the cores), up to 8 on a GPU.
    stop : object with ``is_set()``, or a callable returning bool, optional
        Checked before every step; when set, training ends and the model is returned.

    Yields
    ------
    TrainStep, Validation

    Returns
    -------
    SegmentationModel
        The trained copy, on ``device`` and in eval mode, with training metadata.

    Raises
    ------
    ValueError
        Bad inputs (the message says what to fix), e.g. nothing to learn from.
    """
    # ---- arguments
    if select not in ("best", "latest"):
        raise ValueError(f"select must be 'best' or 'latest', got {select!r}.")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 0):
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}.")
    if steps is None and time_budget is None:
        steps = DEFAULT_STEPS
        log.info("Neither steps nor time_budget given: training for %d steps.", steps)
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if model.representation not in ("bg-interior-boundary", "foreground"):
        raise ValueError(f"Cannot train representation {model.representation!r}.")

    rng = np.random.default_rng(seed)
    examples = prepare_examples(model, images, labels)
    if not _has_objects(examples):
        raise ValueError(
            "Nothing to learn from: every label image is empty (only background). "
            "Label or correct at least one object before fine-tuning."
        )
    if val_images is not None or val_labels is not None:
        train_ex = examples
        val_ex = prepare_examples(model, val_images or [], val_labels or [], what="validation")
        split_kind = "explicit"
    else:
        train_ex, val_ex = split_examples(examples, val_fraction, rng)
        split_kind = "none" if not val_ex else ("planes" if len(train_ex) < len(examples) else "band")
    if not _has_objects(train_ex):
        train_ex = examples  # every object fell in the validation part: train on all
        log.warning("All labelled objects are in the validation part; training on everything.")

    dev = select_device(device)
    amp_dtype = _autocast_dtype(dev, mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if freeze_norm is None:
        freeze_norm = not from_scratch
    aug_config = augment if isinstance(augment, AugmentConfig) else (AugmentConfig() if augment else NO_AUGMENT)

    work = model.copy()
    net = work.net.to(dev)
    net.requires_grad_(True)

    # ---- geometry
    largest = max(max(e.labels.shape) for e in train_ex)
    margin = net.margin
    want = min(int(patch_size), largest + 2 * margin) if margin else min(int(patch_size), largest)
    in_size = net.valid_input_size(max(want, 1))
    out_size = net.output_size(in_size)
    crop = (in_size - out_size) // 2

    # ---- validation targets
    val_planes = []
    for e in val_ex:
        cls, wts = labels_to_targets(e.labels, work.representation, boundary_width, w0, sigma)
        val_planes.append(_ValPlane(e.image, e.labels, cls, wts, e.source))
    selection_note = None
    n_val_objects = sum(int(np.count_nonzero(np.bincount(vp.labels.ravel())[1:])) for vp in val_planes)
    criterion = "ap50"
    if val_planes and select == "best":
        if n_val_objects == 0:
            select = "latest"
            selection_note = "the validation part holds no object, so the latest weights were kept"
            log.warning("Fine-tuning: %s.", selection_note)
        elif n_val_objects < MIN_VAL_OBJECTS_FOR_AP:
            criterion = "loss"
            selection_note = (
                f"the validation part holds only {n_val_objects} object(s), so the best weights were chosen "
                "by the validation loss (AP over so few objects moves in big, noisy steps)"
            )

    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = 0.05

    def lr_at(fraction: float) -> float:
        if fraction < warmup:
            return lr * max(fraction / warmup, 0.02)
        f = (fraction - warmup) / (1 - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))

    t0 = time.perf_counter()
    if validate_every is None:
        validate_every = (max(1, (steps or 0) // 10) if steps else None)
        validate_seconds = (time_budget / 10) if (time_budget and not steps) else None
    elif isinstance(validate_every, float):
        validate_seconds, validate_every = float(validate_every), None
    else:
        validate_seconds = None
        validate_every = max(1, int(validate_every))

    best: dict[str, Any] = {"ap50": -1.0, "loss": math.inf, "state": None, "step": 0, "dice": float("nan")}
    latest_val: dict[str, Any] = {}
    history: list[dict[str, float]] = []

    def validate(step: int) -> Validation:
        net.eval()
        aps, dices, losses = [], [], []
        for vp in val_planes:
            probs = forward_plane(net, vp.image, dev, amp_dtype)
            pred = _labels_from_probs(probs, work.representation)
            m = matching(vp.labels, pred, 0.5)
            aps.append(m.average_precision)
            fg_gt, fg_pr = vp.labels > 0, pred > 0
            tot = fg_gt.sum() + fg_pr.sum()
            dices.append(2.0 * (fg_gt & fg_pr).sum() / tot if tot else 1.0)
            p = torch.from_numpy(np.clip(probs, 1e-7, 1.0))
            nll = -torch.log(p.gather(0, torch.from_numpy(vp.classes.astype(np.int64))[None]))[0]
            w = torch.from_numpy(vp.weights)
            losses.append(float((nll * w).sum() / w.sum()))
        _set_train_mode(net, freeze_norm)
        ap, dc, loss = float(np.mean(aps)), float(np.mean(dices)), float(np.mean(losses))
        if criterion == "loss":
            improved = loss < best["loss"] - 1e-12
        else:
            improved = ap > best["ap50"] + 1e-12 or (abs(ap - best["ap50"]) <= 1e-12 and loss < best["loss"])
        if improved:
            best.update(ap50=ap, loss=loss, dice=dc, step=step,
                        state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        latest_val.update(ap50=ap, dice=dc, loss=loss, step=step)
        history.append({"step": step, "ap50": ap, "dice": dc, "loss": loss})
        return Validation(step=step, ap50=ap, dice=dc, loss=loss, is_best=improved, best_ap50=best["ap50"])

    def stopped() -> bool:
        if stop is None:
            return False
        return bool(stop.is_set() if hasattr(stop, "is_set") else stop())

    def build_patch(pick: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ex = train_ex[pick[0]]
        prng = np.random.default_rng(pick[1])
        img, lab = sample_patch(ex.image, ex.labels, in_size, prng, aug_config)
        cls, wts = labels_to_targets(lab, work.representation, boundary_width, w0, sigma)
        if crop:
            cls = cls[crop : crop + out_size, crop : crop + out_size]
            wts = wts[crop : crop + out_size, crop : crop + out_size]
        return img, cls, wts

    if workers is None:
        workers = 0 if dev.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="napari-unet-patches") if workers > 0 else None

    def submit_batch() -> list:
        # per-patch seeds drawn from the main generator: the same patches with or without threads
        picks = [(int(rng.integers(len(train_ex))), int(rng.integers(2**63 - 1))) for _ in range(batch_size)]
        if pool is None:
            return picks
        return [pool.submit(build_patch, p) for p in picks]

    pending: list | None = None
    step = 0
    last_val_step = -1
    last_val_time = t0
    losses_seen: list[float] = []
    try:
        _set_train_mode(net, freeze_norm)
        if val_planes and validate_start and not stopped():
            yield validate(0)
            last_val_step, last_val_time = 0, time.perf_counter()

        was_stopped = False
        while True:
            elapsed = time.perf_counter() - t0
            if steps is not None and step >= steps:
                break
            if time_budget is not None and elapsed >= time_budget:
                break
            if stopped():
                was_stopped = True
                break
            fraction = max(step / steps if steps else 0.0, elapsed / time_budget if time_budget else 0.0)
            current_lr = lr_at(fraction)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            ts = time.perf_counter()
            if pending is None:
                pending = submit_batch()
            patches = [f.result() for f in pending] if pool is not None else [build_patch(p) for p in pending]
            pending = None
            if pool is not None and (steps is None or step + 1 < steps):
                pending = submit_batch()  # prefetch the next batch while this one trains
            xs, cs, ws = zip(*patches)
            x = torch.from_numpy(np.stack(xs)).to(dev, non_blocking=True)
            c = torch.from_numpy(np.stack(cs).astype(np.int64)).to(dev, non_blocking=True)
            w = torch.from_numpy(np.stack(ws)).to(dev, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            if amp_dtype is not None:
                with torch.autocast(device_type=dev.type, dtype=amp_dtype):
                    logits = net(x)
            else:
                logits = net(x)
            loss = _weighted_ce(logits, c, w)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {float(loss)} at step {step + 1}; try a lower learning rate."
                )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            losses_seen.append(loss_value)
            now = time.perf_counter()
            elapsed = now - t0
            if steps is not None:
                frac = step / steps
                if time_budget:
                    frac = max(frac, elapsed / time_budget)
            else:
                frac = elapsed / time_budget
            frac = min(frac, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else None
            yield TrainStep(step=step, total_steps=steps, loss=loss_value, lr=current_lr,
                            step_time=now - ts, elapsed=elapsed, fraction=frac, eta=eta)
            if val_planes:
                due = (validate_every is not None and step % validate_every == 0) or (
                    validate_seconds is not None and now - last_val_time >= validate_seconds
                )
                finishing = (steps is not None and step >= steps) or (
                    time_budget is not None and elapsed >= time_budget
                )
                if due and not finishing and not stopped():
                    yield validate(step)
                    last_val_step, last_val_time = step, time.perf_counter()

        # final validation of the latest weights (skipped after a stop: the user wants the result now)
        if val_planes and step > 0 and last_val_step != step and not was_stopped:
            yield validate(step)

    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    if select == "best" and best["state"] is not None:
        net.load_state_dict(best["state"])
        chosen = best
    else:
        chosen = latest_val if latest_val.get("step") == step else {"ap50": None, "dice": None, "loss": None, "step": step}
    net.eval()
    training_time = time.perf_counter() - t0

    base_name = model.name
    meta = {k: v for k, v in copy.deepcopy(model.metadata).items() if k not in ("path",)}
    meta.update(
        name=f"{base_name}-finetuned" if not from_scratch else base_name,
        base_model=None if from_scratch else base_name,
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        n_examples=len(examples),
        steps=step,
        val_ap50=chosen.get("ap50"),
        val_dice=chosen.get("dice"),
        val_loss=chosen.get("loss"),
        training_time_s=round(training_time, 2),
        device=describe_device(dev),
    )
    meta["training"] = {
        "selected": select,
        "selection_note": selection_note,
        "selection_metric": criterion if select == "best" else None,
        "n_val_objects": n_val_objects,
        "selected_step": chosen.get("step"),
        "latest_val_ap50": latest_val.get("ap50"),
        "latest_val_step": latest_val.get("step"),
        "stopped_early": was_stopped,
        "n_train_planes": len(train_ex),
        "n_val_planes": len(val_planes),
        "val_split": split_kind,
        "patch_size": in_size,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "augment": bool(augment),
        "freeze_norm": bool(freeze_norm),
        "mixed_precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "seed": seed,
        "boundary_width": boundary_width,
        "w0": w0,
        "sigma": sigma,
        "final_train_loss": float(np.mean(losses_seen[-10:])) if losses_seen else None,
        "history": history,
    }
    work.metadata = meta
    return work


def run_finetune(
    model: SegmentationModel, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], **kwargs: Any
) -> SegmentationModel:
    """Run :func:`finetune` to the end and return the trained copy (for scripts)."""
    gen = finetune(model, images, labels, **kwargs)
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value
        if isinstance(event, Validation):
            log.info("step %d: val AP@0.5 %.3f, Dice %.3f, loss %.4f", event.step, event.ap50, event.dice, event.loss)
