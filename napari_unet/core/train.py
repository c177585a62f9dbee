"""Fine-tuning (and training from scratch) of a :class:`SegmentationModel` on labelled planes.

:func:`finetune` is a generator: it yields a :class:`~napari_unet.core.events.TrainStep`
after every optimisation step and a :class:`~napari_unet.core.events.Validation` after
every validation, so that a GUI (thread worker), the CLI (progress bar) and scripts
drive it the same way. Its return value (``StopIteration.value``) is the trained
model: a *copy*, the input model is never modified. :func:`run_finetune` runs it to the
end.

It composes small parts, each in its own module: the examples and the held-out part
(:mod:`~napari_unet.core.examples`), patch sampling ahead of the network
(:mod:`~napari_unet.core.patches`), the loss and the optimiser step
(:mod:`~napari_unet.core.optimise`), the run length, learning rate and validation
cadence (:mod:`~napari_unet.core.schedule`), validation and the weights kept
(:mod:`~napari_unet.core.validation`) and the metadata of the trained model
(:mod:`~napari_unet.core.train_metadata`); :class:`Trainer` is the loop over them.

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
  training crops never see; nothing is held out when that part would hold fewer than
  ``MIN_HELD_OUT_OBJECTS`` (2) labelled objects (the latest weights are returned). The
  metric is the DSB2018 AP at IoU 0.5 of whole-plane segmentation (ties broken by the
  validation loss); with fewer than ``MIN_VAL_OBJECTS_FOR_AP`` held-out objects the
  validation loss alone decides, as AP over a handful of objects is mostly noise. A
  validation at step 0 measures the input model, so the returned model is never worse on
  the validation data than the one given. When given validation images hold no object
  at all the metric cannot tell models apart: the latest weights are returned
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

import logging
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from napari_unet._memory import available_memory
from napari_unet._training_bounds import DEFAULT_STEPS, MAX_BATCH, MIN_PATCH

from .augment import NO_AUGMENT, AugmentConfig
from .checkpoint import SegmentationModel
from .device import describe_device, module_lock, select_device
from .events import HeldBackWeights, TrainNote, TrainStep, Validation, run_to_end
from .examples import MIN_PLANE_SIZE, TrainingSplit, prepare_examples, split_examples, training_split
from .instances import seed_pixels
from .optimise import Optimiser, autocast_dtype, set_train_mode
from .partial import check_labelled, mark_partial
from .patches import PatchGeometry, PatchSampler
from .schedule import RunBudget, ValidationCadence, WarmupCosine
from .targets import CLASS_WEIGHT_CAP, FINETUNE_CLASS_WEIGHT_CAP, TargetRecipe
from .train_metadata import Recipe, RunSummary, finetuned_postprocessing, trained_metadata
from .validation import (
    GATE_MIN_BLOCKS,
    MIN_VAL_OBJECTS_FOR_AP,
    BestWeights,
    BlockLayout,
    Scores,
    SelectionRule,
    ValidationStopped,
    Validator,
    count_held_out_objects,
    forward_plane,
    validation_planes,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STEPS",
    "MIN_PLANE_SIZE",
    "MIN_VAL_OBJECTS_FOR_AP",
    "StopFlag",
    "PreparedRun",
    "default_patch",
    "Trainer",
    "TrainingFailed",
    "finetune",
    "prepare_run",
    "forward_plane",
    "prepare_examples",
    "run_finetune",
    "split_examples",
]


class StopFlag(Protocol):
    """What ``stop`` of :func:`finetune` is: a ``threading.Event`` or the like. Set with an attribute
    ``urgent`` that is True (a scheduler's SIGTERM, whose kill follows in seconds), the run ends without
    validating again: the best weights validated, or, when no trained weights were validated yet, the
    latest ones, said to be unvalidated (validating them took 16-44 s on a large set: the job was
    killed before it saved)."""

    def is_set(self) -> bool: ...


class TrainingFailed(Exception):
    """Training failed (out of memory, a device lost, ...) after it had validated weights better than
    the starting model's: :attr:`model` holds them (those of step :attr:`step`), with its metadata,
    ready to save; :attr:`error` is what failed (also the ``__cause__``)."""

    def __init__(self, error: BaseException, model: SegmentationModel, step: int) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.model = model
        self.step = step


@dataclass
class Trainer:
    """The loop of one run over its parts: patches in, one optimiser step each, validations between.

    ``validator`` None: no validation. The network is put in training mode (BatchNorm
    statistics frozen if ``freeze_norm``) when :meth:`run` starts.
    """

    net: torch.nn.Module
    sampler: PatchSampler
    optimiser: Optimiser
    schedule: WarmupCosine
    budget: RunBudget
    cadence: ValidationCadence
    validator: Validator | None = None
    freeze_norm: bool = False
    #: the summary of the run going on or last run (how far one that failed got: PreparedRun.salvage)
    last_run: RunSummary | None = None

    def run(
        self, stopped: Callable[[], bool] = lambda: False, validate_start: bool = True,
        start: RunSummary | None = None, user_stop: bool = False, urgent: Callable[[], bool] = lambda: False,
    ) -> Generator[TrainStep | Validation | TrainNote, None, RunSummary]:
        """Train until the budget is spent or ``stopped()``, yielding a :class:`TrainStep` per step
        and a :class:`Validation` per validation (at step 0 if ``validate_start``, as the cadence
        says, and of the final weights unless stopped), and a :class:`TrainNote` when the batch had to
        be split to fit the device's memory (:meth:`Optimiser.step`); return a :class:`RunSummary`.

        ``user_stop``: ``stopped`` is a person's Stop (not a leg's time): a Stop pressed during the
        last step also skips the final validation, and a Stop before any trained weights were
        validated validates them once (else the starting weights were kept, "no step did better"),
        unless ``urgent()``: they are then kept unvalidated (``RunSummary.unvalidated``).

        ``start``: the summary of the run so far when it goes on from a checkpoint (see
        :mod:`napari_unet.core.resume`): steps, losses and time carry on from it, and the
        schedule, budget and cadence see one run.
        """
        run = RunSummary() if start is None else RunSummary(start.steps, False, list(start.losses),
                                                              start.training_time)
        self.last_run = run
        t0 = time.perf_counter() - run.training_time
        last_val_step, last_val_time = (-1 if start is None else run.steps), time.perf_counter()
        try:
            set_train_mode(self.net, self.freeze_norm)
            if self.validator is not None and validate_start and start is None and not stopped():
                yield self.validator(self.net, 0)
                last_val_step, last_val_time = 0, time.perf_counter()
            if self._due_unseen(run.steps) and start is not None and not stopped():
                # the last leg stopped right after a step due for validation (a stop skips it): validated
                # now, with the same weights, as one uninterrupted run validated them
                yield self.validator(self.net, run.steps)
                last_val_step, last_val_time = run.steps, time.perf_counter()
            while True:
                elapsed = time.perf_counter() - t0
                if self.budget.finished(run.steps, elapsed):
                    break
                if stopped():
                    run.stopped_early = True
                    break
                event = self._step(run, t0, elapsed)
                yield event
                if note := self.optimiser.take_note():  # (out of memory: the batch runs in parts)
                    yield TrainNote(note)
                now = t0 + event.elapsed
                if (self.validator is not None and self.cadence.due(run.steps, now, last_val_time)
                        and not self.budget.finished(run.steps, event.elapsed) and not stopped()):
                    try:  # (an urgent stop during it drops it: a scheduler's kill follows within seconds)
                        validation = self.validator(self.net, run.steps, should_stop=urgent)
                    except ValidationStopped:
                        run.stopped_early = True
                        break
                    yield validation
                    last_val_step, last_val_time = run.steps, time.perf_counter()
            # the final weights (not after a stop: the user wants the result now, unless no trained
            # weights were validated yet)
            final_unseen = run.steps > 0 and last_val_step != run.steps
            stop_pressed = run.stopped_early or (user_stop and stopped())
            if self.validator is not None and final_unseen and (
                    not stop_pressed or (user_stop and last_val_step <= 0)):
                if stop_pressed and urgent():  # (a scheduler's kill follows: the weights as they are)
                    run.unvalidated = True
                else:
                    yield self.validator(self.net, run.steps)
        finally:
            self.sampler.close()
            run.training_time = time.perf_counter() - t0
        return run

    def _due_unseen(self, step: int) -> bool:
        """Whether ``step`` is due for validation by the step cadence and was not validated."""
        every = self.cadence.every_steps
        return (self.validator is not None and step > 0 and every is not None and step % every == 0
                and not any(h.get("step") == step for h in self.validator.tracker.history)
                and not self.budget.finished(step, 0.0))

    def _step(self, run: RunSummary, t0: float, elapsed: float) -> TrainStep:
        lr = self.schedule(self.budget.fraction(run.steps, elapsed))
        started = time.perf_counter()
        batch = self.sampler.next_batch(prefetch=not self.budget.is_last_step(run.steps + 1))
        loss = self.optimiser.step(batch, lr, run.steps + 1)
        run.steps += 1
        run.losses.append(loss)
        now = time.perf_counter()
        elapsed = now - t0
        frac = self.budget.fraction(run.steps, elapsed)
        eta = elapsed * (1 - frac) / frac if frac > 0 else None
        return TrainStep(step=run.steps, total_steps=self.budget.steps, loss=loss, lr=lr,
                         step_time=now - started, elapsed=elapsed, fraction=frac, eta=eta)


def default_patch(net: torch.nn.Module) -> tuple[int, int]:
    """The patch size and batch a run takes when none is given: 128 px x 8 for a padded network
    (the built-in models are trained so; on a CPU, fine-tuning reached the AP of 256 px x 4 per
    step in half the time: benchmarks/RESULTS.md), 256 px x 4 for an unpadded one such as the
    paper's U-Net, whose 128 px patch would leave an output of a few pixels."""
    return (128, 8) if getattr(net, "margin", 0) == 0 else (256, 4)


def _keeping_best(events: Generator, prepared: PreparedRun, keep_best: Callable[[SegmentationModel], None],
                  every: float) -> Generator:
    """``events`` passed on; after a validation that found new best weights, ``keep_best`` given them
    (see :func:`finetune`)."""
    last, pending, steps = -math.inf, False, 0
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as end:
                return end.value
            yield event
            if isinstance(event, TrainStep):
                steps = event.step
            if isinstance(event, Validation) and event.is_best and event.step > 0:
                pending, steps = True, max(steps, event.step)
            # (a best found within ``every`` of the last copy is given once that time has passed: it was
            # never given when no later best came)
            if pending and time.monotonic() - last >= every:
                pending = False
                try:
                    kept = prepared.best_so_far(steps)
                    if kept is not None:
                        keep_best(kept)
                        last = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - a copy for safety only: the run goes on
                    log.warning("The best weights so far could not be kept on disk: %s", exc)
    finally:
        events.close()


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
    patch_size: int | None = None,
    batch_size: int | None = None,
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
    class_weight_cap: float | None = None,
    select: str = "best",
    workers: int | None = None,
    labelled: str = "auto",
    stop: StopFlag | None = None,
    patch_processes: bool = False,
    colours: Sequence[int | str | None] | None = None,
    sections: bool = False,
    keep_best: Callable[[SegmentationModel], None] | None = None,
    keep_best_every: float = 60.0,
) -> Generator[TrainNote | TrainStep | Validation, None, SegmentationModel]:
    """Fine-tune a copy of ``model`` on labelled planes, yielding progress events.

    ``keep_best``: called, in the generator's thread, with a copy of the model holding the best weights
    validated so far each time new ones are found (a step's, not the start's), at most every
    ``keep_best_every`` seconds: what a caller writes to disk so that a process killed (out of memory, a
    force-quit: no error to catch) keeps the minutes of training it had (its failure is logged, the run
    goes on).

    Parameters
    ----------
    model : SegmentationModel
        The starting model (not modified).
    images, labels : list of ndarray
        2D planes, grey (H, W) or RGB (H, W, 3), sizes may differ; (H, W) integer instance
        labels, one per image (0 = background).
    steps, time_budget : int, float, optional
        Optimisation steps; seconds of training (validation included). With both, the
        first reached ends the run; with neither, ``DEFAULT_STEPS`` steps.
    lr, weight_decay : float
        AdamW peak learning rate (warm-up, then cosine decay) and weight decay.
    patch_size, batch_size : int, optional
        Input patch size (rounded up to a size the network takes, shrunk to the largest
        training plane when all are smaller); patches per step. None: :func:`default_patch`
        for the model's network (128 x 8 for a padded one); a batch of None with a patch size
        given: 8 for patches up to 128 px, 4 for larger ones.
    augment : bool or AugmentConfig
        Augmentation on (default recipe), off, or a custom configuration.
    val_fraction : float
        Part held out for validation (whole planes or a band, see the module docs); 0
        turns validation off (the latest weights are returned).
    val_images, val_labels : list of ndarray, optional
        An explicit validation set (then nothing is held out of ``images``).
    validate_every : int or float, optional
        Steps (int) or seconds (float) between validations; default: 10 over the run.
    validate_start : bool
        Validate the input model before the first step (step 0).
    device : str or torch.device, optional
        None/"auto" picks cuda, mps, then cpu.
    seed : int
        Seeds patch sampling, augmentation and the split.
    mixed_precision, freeze_norm : bool, optional
        None: mixed precision on CUDA only; BatchNorm statistics frozen unless ``from_scratch``.
    from_scratch : bool
        The model is untrained (training the default model): BatchNorm statistics learn.
    boundary_width, w0, sigma :
        Target parameters, see :func:`napari_unet.core.targets.labels_to_targets`.
    class_weight_cap : float, optional
        The largest class weight of the loss (:func:`napari_unet.core.targets.class_balance`). None:
        :data:`~napari_unet.core.targets.FINETUNE_CLASS_WEIGHT_CAP` (3) when fine-tuning,
        :data:`~napari_unet.core.targets.CLASS_WEIGHT_CAP` (10) ``from_scratch`` (the built-in models'
        recipe, as they were trained).
    select : {"best", "latest"}
        Return the best weights on the validation part (rules in the module docs; the
        metadata's ``training`` entry records the choice) or the latest ones.
    workers : int, optional
        Threads preparing patches ahead of the network; None: 0 on the CPU, up to 8 on a GPU.
    patch_processes : bool
        Processes instead of threads (``workers`` of them): patches scale with the cores, for
        a GPU that trains faster than threads make patches (``scripts/train_default_model.py``
        on CUDA); each process is spawned and given the training planes once.
    labelled : {"auto", "all", "some"}
        Whether every cell of a training plane is labelled ("all": what is not labelled is
        background), only some ("some": only the labelled cells and the background around
        them are learnt from), or either, told per plane by the starting model ("auto"); see
        :mod:`napari_unet.core.partial`.
    stop : object with ``is_set()``, or a callable returning bool, optional
        Checked before every step; when set, training ends and the model is returned.
    colours : list, optional
        Of each RGB image of ``images``, what is learnt from: as ``colour`` of
        :func:`~napari_unet.core.predict.iter_planes` ("auto", "mean", 0, 1, 2 or "without DAB"),
        the choice the image is segmented with, so that training sees what prediction does. None:
        "auto" for every image.
    sections : bool
        The labels are planes through 3D objects (a z-stack's masks): their objects' diameter is that
        of cross-sections, smaller than the objects', so the model keeps its base's start for the
        automatic diameter (``data_diameter``; measured on the sections, 3D AP fell by 0.03-0.11).

    Yields
    ------
    TrainNote, TrainStep, Validation, HeldBackWeights
        A note first for each example found labelled in part ("auto", see ``labelled``);
        last, when the gate kept the starting weights (:mod:`napari_unet.core.validation`),
        the model with the best weights it held back (to save instead, if wanted).

    Returns
    -------
    SegmentationModel
        The trained copy, on ``device`` and in eval mode, with training metadata.

    Raises
    ------
    ValueError
        Bad inputs (the message says what to fix), e.g. nothing to learn from.
    TrainingFailed
        An error during training after weights better than the start were validated: it holds
        them (the minutes of training that found them are not lost). Without such weights, the
        error itself is raised.
    """
    prepared = prepare_run(
        model, images, labels, steps=steps, time_budget=time_budget, lr=lr, weight_decay=weight_decay,
        patch_size=patch_size, batch_size=batch_size, augment=augment, val_fraction=val_fraction,
        val_images=val_images, val_labels=val_labels, validate_every=validate_every, device=device, seed=seed,
        mixed_precision=mixed_precision, freeze_norm=freeze_norm, from_scratch=from_scratch,
        boundary_width=boundary_width, w0=w0, sigma=sigma, class_weight_cap=class_weight_cap, select=select,
        workers=workers, labelled=labelled,
        patch_processes=patch_processes, colours=colours, sections=sections,
    )
    for note in prepared.split.notes:
        log.warning("Fine-tuning: %s", note)
        yield TrainNote(note)
    try:
        events = prepared.trainer.run(_stop_check(stop), validate_start, user_stop=True,
                                      urgent=lambda: bool(getattr(stop, "urgent", False)))
        run = yield from (events if keep_best is None else _keeping_best(events, prepared, keep_best, keep_best_every))
    except Exception as exc:
        error = _out_of_memory(exc, prepared.recipe, prepared.device) or exc
        if error is not exc:
            error.__cause__ = exc  # (torch's whole message)
        kept = prepared.salvage()
        if kept is None:
            if error is exc:
                raise
            raise error from exc
        step = prepared.tracker.best.step  # (salvage returns None without one)
        log.warning("Fine-tuning failed (%s); the best weights validated before, at step %d, are kept.", error, step)
        raise TrainingFailed(error, kept, step) from error
    tracker = prepared.tracker
    latest = None  # (no step scored better than the start, the gate aside: the run's last weights, offered)
    if (run.steps > 0 and tracker.rule.select == "best" and tracker.best is not None and tracker.best.step == 0
            and not tracker.gate_kept_start and not run.unvalidated):
        from .model import cpu_state

        latest = cpu_state(prepared.trainer.net)  # (before result() loads the starting weights back)
    model = prepared.result(run)
    try:
        held = prepared.held_back_result(run, latest)
    except Exception as exc:  # noqa: BLE001 - an offer only: the run's model is what matters
        log.warning("The weights the gate held back cannot be offered: %s", exc)
        held = None
    if held is not None:
        yield HeldBackWeights(held)
    return model


@dataclass
class PreparedRun:
    """A run ready to go: its :class:`Trainer`, the weights tracker and what the metadata records.

    :func:`finetune` is ``prepare_run`` + ``trainer.run`` + :meth:`result`; a run trained
    in legs (:mod:`napari_unet.core.resume`) restores a checkpoint into it between the
    first and the second.
    """

    base: SegmentationModel
    work: SegmentationModel
    trainer: Trainer
    tracker: BestWeights
    split: TrainingSplit
    n_val_planes: int
    n_val_objects: int
    recipe: Recipe
    device: torch.device
    from_scratch: bool

    def best_so_far(self, steps: int) -> SegmentationModel | None:
        """A copy of the model with the best weights validated so far, as :meth:`result` would give them
        had the run stopped after ``steps`` (None where none beat the start); the run is left as it is."""
        best, state = self.tracker.best, self.tracker.best_state
        if self.tracker.rule.select != "best" or best is None or best.step <= 0 or state is None:
            return None
        return self._model_of(self._cpu_network(state), best, RunSummary(steps=steps, stopped_early=True))

    def _cpu_network(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A network of the run's kind on the CPU holding ``state``, in eval mode (the run's is left as it is)."""
        import copy

        from .model import UNet

        config = getattr(self.trainer.net, "config", None)
        net = UNet.from_config(config) if config is not None else copy.deepcopy(self.trainer.net).cpu()
        net.load_state_dict(state)
        return net.eval()

    def _metadata(self, chosen: Scores, run: RunSummary) -> dict[str, Any]:
        """What a model of this run's weights scored ``chosen`` records (:func:`trained_metadata`)."""
        return trained_metadata(
            self.base, from_scratch=self.from_scratch, split=self.split, n_val_planes=self.n_val_planes,
            n_val_objects=self.n_val_objects, tracker=self.tracker, chosen=chosen, run=run, recipe=self.recipe,
            device=describe_device(self.device),
        )

    def _model_of(self, net: torch.nn.Module, chosen: Scores, run: RunSummary) -> SegmentationModel:
        """A model of its own (not :attr:`work`) of ``net``, its metadata those of ``chosen``."""
        return SegmentationModel(net, self.work.representation, dict(self.work.normalization),
                                 self._metadata(chosen, run))

    def salvage(self) -> SegmentationModel | None:
        """After a failed run: the model with the best weights validated (:meth:`result` as if the run
        had stopped at their step), or None when none beat the start (or the network cannot be read
        back: its device failed)."""
        best = self.tracker.best
        if self.tracker.rule.select != "best" or best is None or best.step <= 0:
            return None
        run = replace(self.trainer.last_run or RunSummary(steps=best.step), stopped_early=True)
        try:
            return self.result(run)
        except Exception as exc:  # noqa: BLE001 - the failure itself is what is raised
            log.info("The best weights could not be read into the trained network (%s): into a new one.", exc)
        # a device that failed for good (a CUDA launch failure, an illegal memory access) fails every later call
        # as well, but the best weights are kept on the CPU (BestWeights): a new network there takes them
        from .model import UNet

        try:
            net = UNet.from_config(self.trainer.net.config)
            self.trainer.net = self.work.net = net
            return self.result(run)
        except Exception as exc:  # noqa: BLE001
            log.warning("The best weights could not be kept after the failure: %s", exc)
            return None

    def held_back_result(self, run: RunSummary, latest: dict[str, torch.Tensor] | None = None,
                         ) -> SegmentationModel | None:
        """After :meth:`result` kept the starting weights because the gate held later ones back: a
        model of its own with the best of those (None otherwise), its metadata saying so. ``latest``:
        the run's last weights, when no step scored better than the start on the held-out part
        (offered too: where that part is mostly the model's own masks, left as they were by a user who
        corrected a few cells, it favours the start; a review measured the last weights 0.864 and
        0.861 on other SIM+ frames, two seeds, against the start's 0.815)."""
        state, held = self.tracker.held_back_state(), self.tracker.held
        note = None
        if state is None and latest is not None:
            last = self.tracker.latest
            state, held = latest, last if last is not None and last.step == run.steps else Scores(run.steps)
            note = (f"the last weights of the run (step {held.step}), kept at the user's request although no step "
                    f"scored better than {self.base.name!r} on the part held out of the training images")
        if state is None or held is None:
            return None
        net = self._cpu_network(state)  # (kept until the user chooses: not on the GPU)
        if not _finite_network(net):
            return None
        model = self._model_of(net, held, run)
        model.metadata["training"].update(gate_kept_start=False, kept_against_gate=note is None, selection_note=note or (
            f"the weights of step {held.step}, kept at the user's request although the gate held them back: they "
            f"were not clearly better than {self.base.name!r} on the part held out of the training images"))
        return model

    def result(self, run: RunSummary) -> SegmentationModel:
        """The trained model: the kept weights (see :class:`BestWeights`), eval mode, with its metadata."""
        net = self.trainer.net
        # (stopped in a hurry before any trained weights were validated: the latest, not the start's again)
        chosen = Scores(run.steps) if run.unvalidated else self.tracker.keep(net, run.steps)
        net.eval()
        if not _finite_network(net):
            # the last update (whose loss no later step saw) diverged, and nothing validated kept earlier
            # weights: never a model to save
            raise FloatingPointError("The training diverged: the network now outputs NaN or infinite values; "
                                     "try a lower learning rate.")
        self.work.metadata = self._metadata(chosen, run)
        return self.work


def _out_of_memory(exc: BaseException, recipe: Recipe, device: torch.device) -> MemoryError | None:
    """``exc`` in a user's words when it is the device running out of memory (torch's own message runs
    to 500 characters and a web address, and says nothing of what to change); None otherwise."""
    from .predict import _is_oom

    if not _is_oom(exc):
        return None
    what = {"cuda": "The GPU ran out of memory", "mps": "The GPU (MPS) ran out of memory"}.get(
        device.type, "The computer ran out of memory")  # (torch's first words on the CPU: "[enforce fail at ...")
    elsewhere = ", or train on the CPU (Device: cpu)" if device.type != "cpu" else ""
    return MemoryError(f"{what} while training on patches of {recipe.patch_size} px, {recipe.batch_size} at a time: "
                       f"lower Patch size or Batch size (Fine-tune's Advanced; --patch-size, --batch-size){elsewhere}.")


def _finite_network(net: torch.nn.Module) -> bool:
    """Whether ``net``'s weights are finite and it gives finite outputs on a patch of normalised noise
    (weights of 1e30 are finite, and their output is not)."""
    with module_lock(net):  # (Apple's GPU: one thread at a time)
        if not all(bool(torch.isfinite(v).all()) for v in net.state_dict().values() if v.is_floating_point()):
            return False
    config = getattr(net, "config", None)
    if config is None:
        return True
    side = net.valid_input_size(64)
    param = next(net.parameters())
    probe = torch.randn((1, config.in_channels, side, side), generator=torch.Generator().manual_seed(0))
    with module_lock(net), torch.no_grad():  # (Apple's GPU: one thread at a time)
        return bool(torch.isfinite(net(probe.to(param.device, param.dtype))).all())


def prepare_run(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    steps: int | None = None,
    time_budget: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    patch_size: int | None = None,
    batch_size: int | None = None,
    augment: bool | AugmentConfig = True,
    val_fraction: float = 0.2,
    val_images: Sequence[np.ndarray] | None = None,
    val_labels: Sequence[np.ndarray] | None = None,
    validate_every: int | float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    mixed_precision: bool | None = None,
    freeze_norm: bool | None = None,
    from_scratch: bool = False,
    boundary_width: int = 2,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weight_cap: float | None = None,
    select: str = "best",
    workers: int | None = None,
    labelled: str = "auto",
    patch_processes: bool = False,
    colours: Sequence[int | str | None] | None = None,
    sections: bool = False,
) -> PreparedRun:
    """Check the arguments and build the parts of a run (arguments as :func:`finetune` takes them).

    Raises
    ------
    ValueError
        Bad inputs (the message says what to fix).
    """
    if not isinstance(model, SegmentationModel):  # (a name, or the generator of another finetune)
        raise TypeError(f"model must be a SegmentationModel (see napari_unet.core.load_model), got "
                        f"{type(model).__name__}.")
    auto_patch, auto_batch = default_patch(model.net)
    if batch_size is None:  # follows a patch size given: as many pixels per step as the defaults
        batch_size = auto_batch if patch_size is None else (8 if patch_size <= 128 else 4)
    patch_size = auto_patch if patch_size is None else patch_size
    steps = _check_arguments(model, steps, time_budget, lr, batch_size, patch_size, select, workers)
    check_labelled(labelled)
    if not isinstance(augment, (bool, AugmentConfig)):  # ("strong" was taken as True)
        raise ValueError(f"augment must be True, False or an AugmentConfig, got {augment!r}.")
    rng = np.random.default_rng(seed)
    dev = select_device(device)
    work = model.copy()
    net = work.net.to(dev).requires_grad_(True)

    def mark(examples: list) -> list[str]:  # planes labelled in part learn only where they are known
        return mark_partial(work, examples, labelled, untrained=from_scratch)

    split = training_split(model, images, labels, val_images, val_labels, val_fraction, rng, mark, colours)
    amp_dtype = autocast_dtype(dev, mixed_precision)
    freeze_norm = (not from_scratch) if freeze_norm is None else bool(freeze_norm)
    if class_weight_cap is None:  # (the built-in models' recipe trains from scratch: as it always did)
        class_weight_cap = CLASS_WEIGHT_CAP if from_scratch else FINETUNE_CLASS_WEIGHT_CAP
    if not (isinstance(class_weight_cap, (int, float)) and math.isfinite(class_weight_cap) and class_weight_cap >= 1):
        raise ValueError(f"class_weight_cap must be a number of 1 or more, got {class_weight_cap!r}.")
    targets = TargetRecipe(model.representation, boundary_width, w0, sigma, float(class_weight_cap))
    geometry = PatchGeometry.for_network(net, patch_size, max(max(e.labels.shape) for e in split.train))
    planes = validation_planes(split.val, targets)
    n_val_objects = count_held_out_objects(planes)
    # (the gate: only where the validation part was cut from the corrected images themselves, a run
    # given its own validation images, as the built-in models' training, being chosen as before; and
    # only where it holds blocks enough to measure a gain's noise, a band of 20 x 100 px holding 3)
    layout = BlockLayout.of(planes) if split.kind in ("planes", "band") else None
    gated = layout is not None and layout.n_blocks >= GATE_MIN_BLOCKS
    rule = SelectionRule.for_validation(select, len(planes), n_val_objects, held_out_of_training=gated,
                                      from_scratch=from_scratch)
    tracker = BestWeights(rule, layout if gated else None)
    aug_config = augment if isinstance(augment, AugmentConfig) else (AugmentConfig() if augment else NO_AUGMENT)
    n_workers = _patch_workers(workers, dev)
    optimiser = Optimiser(net, lr, weight_decay, dev, amp_dtype)
    if dev.type == "cpu":  # (a GPU's running out of memory raises, and the batch is split then)
        optimiser.fit_memory(geometry.in_size, batch_size, available_memory())
    trainer = Trainer(
        net=net,
        sampler=PatchSampler(split.train, geometry, targets, aug_config, batch_size, rng, n_workers,
                             patch_processes and n_workers > 0),
        optimiser=optimiser,
        schedule=WarmupCosine(lr),
        budget=RunBudget(steps, time_budget),
        cadence=ValidationCadence.from_setting(validate_every, steps, time_budget),
        validator=Validator(planes, tracker, dev, amp_dtype, model.representation,
                            *((None, None) if from_scratch else (_finetuned_setting(model, split), _own_setting(model))),
                            ) if planes else None,
        freeze_norm=freeze_norm,
    )
    precision = str(amp_dtype).replace("torch.", "") if amp_dtype else "off"
    # (an AugmentConfig is always truthy: NO_AUGMENT was recorded as "augment: True")
    recipe = Recipe(geometry.in_size, batch_size, lr, weight_decay, aug_config != NO_AUGMENT, freeze_norm, precision, seed,
                    boundary_width, w0, sigma,
                    "all" if from_scratch and labelled == "auto" else labelled, sections, float(class_weight_cap))  # (what "auto" did from scratch)
    return PreparedRun(model, work, trainer, tracker, split, len(planes), n_val_objects, recipe, dev, from_scratch)


def _setting(post: dict[str, float], diameter: float | None) -> tuple[float, int, int]:
    """Threshold, minimum size and smallest seed (pixels at the model's scale, where the held-out planes
    are) of post-processing ``post`` for objects of ``diameter`` (None: every part seeds an object)."""
    return (float(post["threshold"]), int(post["min_size"]),
            seed_pixels(post["seed_fraction"], diameter) if diameter is not None else 0)


def _own_setting(model: SegmentationModel) -> tuple[float, int, int]:
    """The setting with which ``model`` makes its objects (its general one: the starting weights of a
    fine-tuning, scored as the model they stay if kept)."""
    return _setting(model.postprocessing_for(None), model.diameter)


def _finetuned_setting(base: SegmentationModel, split: TrainingSplit) -> tuple[float, int, int]:
    """The setting with which a model fine-tuned from ``base`` on ``split`` makes its objects: its
    validation scores them so (it scored 0.5 / 16 px / every seed, neither the base's setting nor the
    new one)."""
    diameter = base.diameter if base.diameter is not None else split.labels_diameter
    return _setting(finetuned_postprocessing(base), diameter)


def _check_arguments(
    model: SegmentationModel, steps: int | None, time_budget: float | None, lr: float, batch_size: int,
    patch_size: int, select: str, workers: int | None,
) -> int | None:
    """Raise ValueError for a bad argument; return the number of steps (the default when no bound is given)."""
    if select not in ("best", "latest"):
        raise ValueError(f"select must be 'best' or 'latest', got {select!r}.")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 0):
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}.")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}.")
    if not 1 <= batch_size <= MAX_BATCH:  # (100,000 was killed for memory)
        raise ValueError(f"batch_size must be from 1 to {MAX_BATCH}, got {batch_size}.")
    if patch_size < MIN_PATCH:
        raise ValueError(f"patch_size must be at least {MIN_PATCH} pixels (or None for the network's own), "
                         f"got {patch_size}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    from .model import UNet

    if not isinstance(model.net, UNet):
        raise ValueError(f"{model.name} runs the network of a BioImage.IO package made elsewhere: only napari-unet's "
                         "own networks can be fine-tuned (start from a napari-unet model).")
    if model.representation not in ("bg-interior-boundary", "foreground"):
        raise ValueError(f"Cannot train representation {model.representation!r}.")
    if steps is None and time_budget is None:
        log.info("Neither steps nor time_budget given: training for %d steps.", DEFAULT_STEPS)
        return DEFAULT_STEPS
    return steps


def _patch_workers(workers: int | None, device: torch.device) -> int:
    """Threads preparing patches: as asked, else none on the CPU (the network needs the cores), up to 8 on a GPU."""
    if workers is not None:
        return workers
    return 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))


def _stop_check(stop: StopFlag | Callable[[], bool] | None) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):
        return lambda: bool(stop.is_set())
    return lambda: bool(stop())


def _log_validation(event: TrainStep | Validation) -> None:
    if isinstance(event, Validation):
        log.info("step %d: val AP@0.5 %.3f, Dice %.3f, loss %.4f", event.step, event.ap50, event.dice, event.loss)


def run_finetune(
    model: SegmentationModel, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], **kwargs: Any
) -> SegmentationModel:
    """Run :func:`finetune` to the end and return the trained copy (for scripts)."""
    return run_to_end(finetune(model, images, labels, **kwargs), _log_validation)
