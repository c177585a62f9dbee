"""The live training curves: loss and validation AP@0.5 against the step (matplotlib in Qt)."""

from __future__ import annotations

import time

#: The plot is redrawn at most this often (seconds).
PLOT_INTERVAL = 0.3


class LiveCurves:
    """Training loss (left axis) and validation AP50 (right axis, 0 to 1) of one run.

    Attributes
    ----------
    history : dict of list
        "step"/"loss" of every training step, "val_step"/"ap50" of every validation.
    canvas, figure
        The Qt canvas to put in a layout, and its matplotlib figure.
    """

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.history: dict[str, list[float]] = {}
        self._last_draw = 0.0
        self.figure = Figure(figsize=(3.6, 2.2), dpi=90, tight_layout=True)
        ax = self.figure.add_subplot(111)
        self._ax_loss = ax
        self._ax_val = ax.twinx()
        (self._loss_line,) = ax.plot([], [], color="tab:blue", lw=1, label="training loss")
        (self._val_line,) = self._ax_val.plot([], [], "o-", color="tab:orange", ms=3, lw=1, label="validation AP50")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8, color="tab:blue")
        self._ax_val.set_ylabel("AP50", fontsize=8, color="tab:orange")
        self._ax_val.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        self._ax_val.tick_params(labelsize=7)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.clear()

    def clear(self) -> None:
        """Forget the curves (a new run) and redraw now."""
        self.history = {"step": [], "loss": [], "val_step": [], "ap50": []}
        self.redraw(force=True)

    def add_step(self, step: int, loss: float) -> None:
        self.history["step"].append(step)
        self.history["loss"].append(float(loss))

    def add_validation(self, step: int, ap50: float) -> None:
        self.history["val_step"].append(step)
        self.history["ap50"].append(float(ap50))

    def redraw(self, force: bool = False) -> None:
        """Draw the curves, at most every :data:`PLOT_INTERVAL` seconds unless ``force``."""
        now = time.perf_counter()
        if not force and now - self._last_draw < PLOT_INTERVAL:
            return
        self._last_draw = now
        h = self.history
        self._loss_line.set_data(h["step"], h["loss"])
        self._val_line.set_data(h["val_step"], h["ap50"])
        self._ax_loss.relim()
        self._ax_loss.autoscale_view()
        if h["step"]:
            self._ax_loss.set_xlim(0, max(h["step"]) + 1)
        self.canvas.draw_idle()
