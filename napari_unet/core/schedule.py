"""When things happen in a training run: its length, the learning rate, the validations.

* :class:`RunBudget`: a run is bounded by a number of steps, a time budget, or both (the
  first reached ends it); :meth:`RunBudget.fraction` is how much of it is done.
* :class:`WarmupCosine`: the learning rate as a function of that fraction.
* :class:`ValidationCadence`: validations every so many steps, or every so many seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

#: Validations over a run when the caller does not say how often.
DEFAULT_VALIDATIONS = 10


@dataclass(frozen=True)
class RunBudget:
    """How long a run lasts: ``steps`` optimisation steps and/or ``time_budget`` seconds.

    With both, the first one reached ends the run; with neither it never ends (callers
    give at least one).
    """

    steps: int | None = None
    time_budget: float | None = None

    def fraction(self, step: int, elapsed: float) -> float:
        """Part of the run done after ``step`` steps and ``elapsed`` seconds, in [0, 1]."""
        by_steps = step / self.steps if self.steps else 0.0
        by_time = elapsed / self.time_budget if self.time_budget else 0.0
        return min(max(by_steps, by_time), 1.0)

    def finished(self, step: int, elapsed: float) -> bool:
        """True once ``step`` reaches ``steps`` or ``elapsed`` reaches the time budget."""
        return (self.steps is not None and step >= self.steps) or (
            self.time_budget is not None and elapsed >= self.time_budget
        )

    def is_last_step(self, step: int) -> bool:
        """True when step number ``step`` (1-based) is the last one the step count allows."""
        return self.steps is not None and step >= self.steps


@dataclass(frozen=True)
class WarmupCosine:
    """Learning rate: linear warm-up over the first ``warmup`` of the run, then cosine decay.

    ``lr(fraction)`` rises from ``start * lr`` to ``lr`` over ``[0, warmup)`` and falls
    along half a cosine to ``floor * lr`` at the end of the run (and stays there).
    """

    lr: float
    warmup: float = 0.05
    floor: float = 0.05
    start: float = 0.02

    def __call__(self, fraction: float) -> float:
        if fraction < self.warmup:
            return self.lr * max(fraction / self.warmup, self.start)
        f = (fraction - self.warmup) / (1 - self.warmup)
        return self.lr * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))

    def describe(self) -> str:
        """The schedule in words, for model cards: "warm-up 5%, cosine to 5%"."""
        return f"warm-up {self.warmup:.0%}, cosine to {self.floor:.0%}"


def validation_interval(n_validations: int, steps: int | None, time_budget: float | None) -> int | float | None:
    """Steps (int) or, for a run bounded by time alone, seconds (float) between validations.

    ``n_validations`` spread over the run; None when the run has neither steps nor a budget.
    """
    if steps:
        return max(1, steps // n_validations)
    if time_budget:
        return float(time_budget) / n_validations
    return None


@dataclass(frozen=True)
class ValidationCadence:
    """Validate every ``every_steps`` steps or every ``every_seconds`` seconds (one of them)."""

    every_steps: int | None = None
    every_seconds: float | None = None

    @classmethod
    def from_setting(
        cls, validate_every: int | float | None, steps: int | None, time_budget: float | None
    ) -> ValidationCadence:
        """``validate_every`` as :func:`~napari_unet.core.train.finetune` takes it.

        An int is a number of steps, a float a number of seconds, None spreads
        ``DEFAULT_VALIDATIONS`` validations over the run.
        """
        if validate_every is not None and (isinstance(validate_every, bool) or not isinstance(validate_every, Real)
                                           or not math.isfinite(validate_every) or validate_every <= 0):
            raise ValueError(f"validate_every must be a number of steps (int) or seconds (float) above 0, or None "
                             f"for {DEFAULT_VALIDATIONS} validations over the run; got {validate_every!r}.")
        if validate_every is None:
            validate_every = validation_interval(DEFAULT_VALIDATIONS, steps, time_budget)
        if validate_every is None:
            return cls()
        if isinstance(validate_every, float):
            return cls(every_seconds=float(validate_every))
        return cls(every_steps=max(1, int(validate_every)))

    def due(self, step: int, now: float, last_time: float) -> bool:
        """Whether to validate after step ``step`` (1-based) at time ``now``, the last one at ``last_time``."""
        return (self.every_steps is not None and step % self.every_steps == 0) or (
            self.every_seconds is not None and now - last_time >= self.every_seconds
        )
