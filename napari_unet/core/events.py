"""Progress events yielded by the core's generators (prediction and training).

The GUI, the CLI and scripts consume the same events: a widget forwards them from a
thread worker's ``yielded`` signal, the CLI drives a progress bar with them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    """Work done so far in a prediction (tiles, or planes of a stack).

    Attributes
    ----------
    done, total : int
        Units of work finished and in all (tiles over all planes).
    plane : int
        Index of the plane being worked on (0 for a single 2D image).
    elapsed : float
        Seconds since the start.
    message : str
        Short human-readable text ("tile 3/12 of plane 1/5").
    """

    done: int
    total: int
    plane: int = 0
    elapsed: float = 0.0
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta(self) -> float | None:
        """Estimated seconds left, or None before the first unit is done."""
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed * (self.total - self.done) / self.done


@dataclass(frozen=True)
class TrainStep:
    """One optimisation step of fine-tuning."""

    step: int  # 1-based
    total_steps: int | None  # None when only a time budget bounds the run
    loss: float
    lr: float
    step_time: float  # seconds for this step
    elapsed: float  # seconds since the start
    fraction: float  # 0..1 of the run (steps or time budget)
    eta: float | None = None  # seconds left


@dataclass(frozen=True)
class Validation:
    """Result of one validation pass during fine-tuning."""

    step: int
    ap50: float  # mean average precision at IoU 0.5 over validation images/regions
    dice: float  # foreground Dice
    loss: float
    is_best: bool
    best_ap50: float
    #: Better than the best under the rule, but not clearly better than the starting weights
    #: (the gate of :mod:`napari_unet.core.validation`): not kept.
    held_back: bool = False


@dataclass(frozen=True)
class HeldBackWeights:
    """The last event of a fine-tuning run whose gate kept the starting weights (see
    :mod:`napari_unet.core.validation`): the model with the best weights it held back, ready to be
    saved instead if the user wants them (a SegmentationModel: its metadata gives their step and scores)."""

    model: Any


@dataclass(frozen=True)
class TrainNote:
    """Something the user should know about a fine-tuning run before it goes on (one line)."""

    message: str


def run_to_end(gen: Generator[Any, None, Any], callback: Callable[[Any], None] | None = None) -> Any:
    """Exhaust a generator (calling ``callback`` on every event) and return its return value.

    If ``callback`` raises (or the run is interrupted), the generator is closed before the
    error propagates, so that its ``finally`` blocks (worker threads, files) run at once.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(event)
    finally:
        gen.close()
