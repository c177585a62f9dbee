"""Training in legs: the whole state of a run in one checkpoint file, and a run that goes on from it.

A long training (the built-in models, trained on a CPU across working sessions) runs in
legs. :func:`capture` takes everything the rest of the run depends on from a
:class:`~napari_unet.core.train.PreparedRun` and the run so far:

* the model (network configuration, current weights and BatchNorm statistics, metadata),
* the optimiser's state (AdamW moments; the GradScaler's for fp16),
* the random state of patch sampling and augmentation (each patch's seed is drawn from
  one generator) and torch's CPU generator,
* the run so far (steps, training losses, seconds trained) and the validations (history,
  the best weights and their scores),
* ``extra``: what the caller needs to build the same run again (its recipe options).

:func:`save_checkpoint` writes it atomically, :func:`load_checkpoint` reads it back with
``torch.load(weights_only=True)`` (plain dicts, lists, numbers, strings and tensors only),
and :func:`restore` puts it into a run prepared with the same options, which then
continues with ``trainer.run(start=...)``; :func:`iter_leg` runs one leg of a run that
way and writes the checkpoint as it goes. On the CPU without patch threads, a run cut
into legs takes the same steps as one run (tests check it bit for bit; for examples labelled
in part, when each leg is prepared from the same model: see :func:`restore`); with patch
threads (GPU) the batch being prepared when the checkpoint was taken is drawn anew.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .checkpoint import SegmentationModel, torch_save_atomic
from .events import TrainStep, Validation
from .train import PreparedRun
from .train_metadata import RunSummary
from .validation import Scores

#: Format of the checkpoint dict; a file of another version is refused with a clear message.
CHECKPOINT_VERSION = 1

__all__ = [
    "CHECKPOINT_VERSION", "CheckpointError", "capture", "iter_leg", "load_checkpoint", "restore", "save_checkpoint",
]


class CheckpointError(ValueError):
    """A training checkpoint that cannot be used (missing, not one, another version or recipe)."""


def _scores(value: dict | None) -> Scores | None:
    return None if value is None else Scores(**value)


def capture(prepared: PreparedRun, run: RunSummary, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The state of ``prepared`` after ``run`` (see the module docs), as a dict ``torch.save`` can write."""
    trainer, tracker = prepared.trainer, prepared.tracker
    work = prepared.work
    model = SegmentationModel(trainer.net, work.representation, work.normalization, dict(work.metadata))
    scaler = trainer.optimiser.scaler
    return {
        "version": CHECKPOINT_VERSION,
        "model": model.to_dict(),
        "optimizer": trainer.optimiser.optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "sampler_rng": trainer.sampler.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "run": {
            "steps": run.steps,
            "training_time": float(run.training_time),
            "losses": torch.tensor(run.losses, dtype=torch.float32),
        },
        "tracker": {
            "best": asdict(tracker.best) if tracker.best is not None else None,
            "latest": asdict(tracker.latest) if tracker.latest is not None else None,
            "history": list(tracker.history),
            "weights": tracker._state,
            "start": asdict(tracker.start) if tracker.start is not None else None,
        },
        "extra": dict(extra or {}),
    }


def restore(prepared: PreparedRun, state: dict[str, Any]) -> RunSummary:
    """Put a captured ``state`` into ``prepared`` (a run built with the same options); the run so far.

    The network's weights are loaded from ``state["model"]``, so the run may be prepared from
    the model the first leg was prepared from or from the checkpoint's. Where examples are
    labelled in part (``labelled="auto"`` or ``"some"`` when fine-tuning), prepare it from the
    first leg's model: the pixels whose class is known are told from what that model finds, and
    the checkpoint's half-trained weights find other cells (the resumed run then differs from one
    uninterrupted run).
    """
    trainer, tracker = prepared.trainer, prepared.tracker
    trainer.net.load_state_dict(SegmentationModel.from_dict(state["model"]).net.state_dict())
    trainer.optimiser.optimizer.load_state_dict(state["optimizer"])
    if trainer.optimiser.scaler is not None and state.get("scaler"):
        trainer.optimiser.scaler.load_state_dict(state["scaler"])
    trainer.sampler.close()  # nothing prepared ahead with the old random state
    trainer.sampler.rng.bit_generator.state = state["sampler_rng"]
    torch.set_rng_state(state["torch_rng"])
    saved = state["tracker"]
    tracker.best = _scores(saved["best"])
    tracker.latest = _scores(saved["latest"])
    tracker.history = list(saved["history"])
    tracker._state = saved["weights"]
    tracker.start = _scores(saved.get("start"))
    r = state["run"]
    return RunSummary(steps=int(r["steps"]), losses=[float(x) for x in r["losses"].tolist()],
                      training_time=float(r["training_time"]))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (the previous checkpoint stays until the new one is whole;
    a full disk is an OSError)."""
    return torch_save_atomic(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises
    ------
    CheckpointError
        No such file, not a checkpoint, or a checkpoint of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No training checkpoint at {path}: start a run first (without --resume).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for junk files
        raise CheckpointError(f"{path} is not a training checkpoint (it could not be read as one).") from exc
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint.")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format {state['version']}; this version reads format {CHECKPOINT_VERSION}."
        )
    return state



def iter_leg(
    prepared: PreparedRun,
    checkpoint_path: str | os.PathLike,
    *,
    start: RunSummary | None = None,
    leg_seconds: float | None = None,
    checkpoint_every: float = 600.0,
    extra: dict[str, Any] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Generator[TrainStep | Validation, None, tuple[RunSummary, bool]]:
    """One leg of a run: train from ``start`` (None: the beginning) for ``leg_seconds`` at most.

    Yields the trainer's events. The state is written to ``checkpoint_path`` after a
    validation once ``checkpoint_every`` seconds have passed since the last write (a
    validation ends a step cleanly: nothing is left half-recorded), and at the end of
    the leg. Returns the run so far and whether the whole run is finished (its budget
    spent), so that the caller knows to write the model.
    """
    t_leg = time.monotonic()

    def stopped() -> bool:
        out_of_time = leg_seconds is not None and time.monotonic() - t_leg >= leg_seconds
        return out_of_time or (stop is not None and bool(stop()))

    so_far = start or RunSummary()
    steps, losses, elapsed = so_far.steps, list(so_far.losses), so_far.training_time
    last_save = time.monotonic()
    gen = prepared.trainer.run(stopped, validate_start=start is None, start=start)
    while True:
        try:
            event = next(gen)
        except StopIteration as end:
            run = end.value
            break
        if isinstance(event, TrainStep):
            steps, elapsed = event.step, event.elapsed
            losses.append(event.loss)
        yield event
        if isinstance(event, Validation) and time.monotonic() - last_save >= checkpoint_every:
            save_checkpoint(capture(prepared, RunSummary(steps, False, losses, elapsed), extra), checkpoint_path)
            last_save = time.monotonic()
    save_checkpoint(capture(prepared, run, extra), checkpoint_path)
    return run, prepared.trainer.budget.finished(run.steps, run.training_time)
