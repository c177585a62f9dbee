"""The live training curves: loss and validation AP@0.5 against the step (matplotlib in Qt).

Drawing must not freeze napari while training runs, so a whole figure (axes, ticks, labels:
tens of milliseconds, far more on a busy CPU) is drawn only when the axes change; a new point
only redraws the two curves over a saved copy of the background (matplotlib "blitting"). The
axes change rarely: the step axis spans the whole run when its number of steps is known (else
it doubles when full), the loss axis grows by half when a loss leaves it, AP@0.5 is 0 to 1.

Every draw goes through a timer owned by the canvas, so nothing is drawn after the canvas is
deleted (the Fine-tune widget closed with its viewer).
"""

from __future__ import annotations

import time
from typing import Any

#: The curves are redrawn at most this often (seconds).
PLOT_INTERVAL = 0.3
#: Margins of the axes in the figure (fractions), fixed so that no draw has to lay text out twice.
MARGINS = {"left": 0.14, "right": 0.86, "bottom": 0.24, "top": 0.95}


def _curves_canvas_class():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from qtpy.QtCore import QTimer

    class CurvesCanvas(FigureCanvasQTAgg):
        """A matplotlib canvas whose idle draws run on a timer it owns (deleted with it)."""

        def __init__(self, figure: Any, on_timer: Any) -> None:
            super().__init__(figure)
            self.timer = QTimer(self)
            self.timer.setSingleShot(True)
            self.timer.timeout.connect(on_timer)

        def draw_idle(self) -> None:  # matplotlib's own idle draws (resizes) come here too
            self.timer.start(0)

    return CurvesCanvas


class LiveCurves:
    """Training loss (left axis) and validation AP50 (right axis, 0 to 1) of one run.

    Attributes
    ----------
    history : dict of list
        "step"/"loss" of every training step, "val_step"/"ap50" of every validation.
    canvas, figure
        The Qt canvas to put in a layout, and its matplotlib figure.
    total_steps : int or None
        Length of the step axis when the run's number of steps is known.
    full_draws, quick_draws : int
        How many whole-figure draws and curve-only draws were made (for tests and benchmarks).
    """

    def __init__(self) -> None:
        from matplotlib.figure import Figure

        self.history: dict[str, list[float]] = {}
        self.total_steps: int | None = None
        self.full_draws = self.quick_draws = 0
        self._last_draw = 0.0
        self._background: Any = None
        self._full_needed = True
        self._alive = True
        self.figure = Figure(figsize=(3.6, 2.2), dpi=90)
        self.figure.subplots_adjust(**MARGINS)
        ax = self.figure.add_subplot(111)
        self._ax_loss = ax
        self._ax_val = ax.twinx()
        (self._loss_line,) = ax.plot([], [], color="tab:blue", lw=1, label="training loss", animated=True)
        (self._val_line,) = self._ax_val.plot([], [], "o-", color="tab:orange", ms=3, lw=1, label="validation AP50",
                                              animated=True)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8, color="tab:blue")
        self._ax_val.set_ylabel("AP50", fontsize=8, color="tab:orange")
        self._ax_val.set_ylim(0, 1)
        for axis in (ax, self._ax_val):
            axis.tick_params(labelsize=7)
            axis.locator_params(nbins=4)
        self.canvas = _curves_canvas_class()(self.figure, self._draw_now)
        self.canvas.setMinimumHeight(170)
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self.canvas.mpl_connect("resize_event", self._on_resize)
        self.canvas.destroyed.connect(self._on_destroyed)
        self.clear()

    def _on_destroyed(self, *_args) -> None:
        self._alive = False

    def _on_resize(self, _event: Any = None) -> None:
        self._full_needed = True  # the saved background has the old size

    def clear(self, total_steps: int | None = None) -> None:
        """Forget the curves (a new run of ``total_steps`` steps, if known) and redraw now."""
        self.history = {"step": [], "loss": [], "val_step": [], "ap50": []}
        self.total_steps = total_steps
        self._ax_loss.set_xlim(0, total_steps or 100)
        self._ax_loss.set_ylim(0, 1)
        self._full_needed = True
        self.redraw(force=True)

    def add_step(self, step: int, loss: float) -> None:
        self.history["step"].append(step)
        self.history["loss"].append(float(loss))

    def add_validation(self, step: int, ap50: float) -> None:
        self.history["val_step"].append(step)
        self.history["ap50"].append(float(ap50))

    def redraw(self, force: bool = False) -> None:
        """Draw the new points soon, at most every :data:`PLOT_INTERVAL` seconds unless ``force``."""
        if not self._alive:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < PLOT_INTERVAL:
            return
        self._last_draw = now
        self.canvas.timer.start(0)

    # ------------------------------------------------------------------ drawing
    def _fit_axes(self) -> bool:
        """Widen the axes where the data left them; True if they changed."""
        h = self.history
        changed = False
        last = max(h["step"][-1:] + h["val_step"][-1:], default=0)
        x0, x1 = self._ax_loss.get_xlim()
        if last > x1:
            self._ax_loss.set_xlim(0, max(2 * x1, last * 1.1))
            changed = True
        if h["loss"]:
            top = max(h["loss"])
            low, high = self._ax_loss.get_ylim()
            if top > high or (len(h["loss"]) <= 3 and top < high / 4):  # the first losses set the scale
                self._ax_loss.set_ylim(0, top * 1.5)
                changed = True
        return changed

    def _draw_now(self) -> None:
        try:  # (a draw already queued can come after Qt deleted the canvas, before its "destroyed")
            self.canvas.objectName()
        except RuntimeError:
            self._alive = False
        if not self._alive:
            return
        h = self.history
        self._loss_line.set_data(h["step"], h["loss"])
        self._val_line.set_data(h["val_step"], h["ap50"])
        try:  # (and the canvas can be deleted while a whole figure is drawn, the viewer closing)
            if self._fit_axes() or self._full_needed or self._background is None:
                self.canvas.draw()  # the whole figure; _on_full_draw adds the curves
                return
            self.canvas.restore_region(self._background)
            self._draw_curves()
            self.canvas.blit(self.figure.bbox)
        except RuntimeError as exc:
            if "deleted" not in str(exc):
                raise
            self._alive = False
            return
        self.quick_draws += 1

    def _on_full_draw(self, _event: Any = None) -> None:
        """After a whole-figure draw: keep it as the background and draw the curves on it."""
        self._full_needed = False
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_curves()
        self.full_draws += 1

    def _draw_curves(self) -> None:
        self._ax_loss.draw_artist(self._loss_line)
        self._ax_val.draw_artist(self._val_line)
