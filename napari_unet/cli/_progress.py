"""A terminal progress bar for training runs (``napari-unet train`` and the recipe script)."""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm

from napari_unet.core.events import TrainStep, Validation

log = logging.getLogger(__name__)


class TrainingBar:
    """tqdm bar over steps (or seconds of a time budget) fed with the fine-tune events."""

    def __init__(self, steps: int | None, time_budget: float | None, enabled: bool = True) -> None:
        self.by_steps = bool(steps)
        total = steps if self.by_steps else int(time_budget or 0)
        self.bar = tqdm(total=total, unit="step" if self.by_steps else "s", desc="training",
                        disable=not enabled)

    def __call__(self, event: Any) -> None:
        if isinstance(event, TrainStep):
            if self.by_steps:
                self.bar.update(1)
            else:
                self.bar.n = min(int(event.elapsed), self.bar.total)
                self.bar.refresh()
            self.bar.set_postfix(loss=f"{event.loss:.3f}", lr=f"{event.lr:.1e}")
        elif isinstance(event, Validation):
            self.bar.write(f"step {event.step}: val AP@0.5 {event.ap50:.3f}  Dice {event.dice:.3f}  "
                           f"loss {event.loss:.4f}{'  (best)' if event.is_best else ''}")

    def close(self) -> None:
        self.bar.close()
