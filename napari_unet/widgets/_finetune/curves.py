"""The live training curves: loss and validation AP@0.5 against the step, painted by Qt.

Drawing must not freeze napari while training runs. A matplotlib figure took 80-120 ms of the
main thread for each whole-figure draw (ticks and labels laid out) on a laptop-class CPU, so the
chart is a plain Qt widget instead: two axes, a few ticks and two polylines painted with
``QPainter`` in a millisecond or two, in the colours of napari's theme (the widget's palette).
Long runs are drawn at most two points per pixel column (the loss's low and high in it).

The axes change rarely, so the curves do not jump: the step axis spans the whole run when its
number of steps is known (else it doubles when full), the loss axis grows by half when a loss
leaves it, AP@0.5 is 0 to 1. Paints are asked for at most every :data:`PLOT_INTERVAL` seconds;
Qt merges requests and paints nothing once the widget is deleted (the Fine-tune widget closed
with its viewer).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np

#: The curves are redrawn at most this often (seconds).
PLOT_INTERVAL = 0.3
#: Colours of the two curves (and their axes' labels).
LOSS_COLOUR = "#4c9be8"
AP_COLOUR = "#f28e2b"


def nice_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from ``low`` to ``high``, at most ``most``."""
    span = high - low
    if not math.isfinite(span) or span <= 0:
        return [low]
    for factor in (1.0, 2.0, 5.0, 10.0, 20.0, 50.0):
        step = factor * 10.0 ** math.floor(math.log10(span / most))
        first = math.ceil(low / step - 1e-9) * step
        ticks = [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
        if len(ticks) <= most:
            return ticks
    return [low, high]


def tick_text(value: float, step: float) -> str:
    """A tick's label with as many decimals as the ticks' spacing needs (1000 and more as 1k)."""
    if abs(value) >= 1000 and step >= 1000 and value % 1000 == 0:
        return f"{value / 1000:g}k"
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def column_envelope(x: np.ndarray, y: np.ndarray, x0: float, x1: float, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Points of a curve to draw in ``columns`` pixel columns spanning [x0, x1]: all of them when
    there are few, else the lowest and the highest of each column, in order."""
    if x.size <= 2 * columns or columns < 1:
        return x, y
    col = np.clip(((x - x0) / max(x1 - x0, 1e-12) * columns).astype(np.int64), 0, columns - 1)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    lows = np.minimum.reduceat(y, starts)
    highs = np.maximum.reduceat(y, starts)
    centres = np.add.reduceat(x, starts) / np.diff(np.r_[starts, x.size])
    return np.repeat(centres, 2), np.column_stack([lows, highs]).ravel()


@functools.cache  # one class for every chart (Qt is imported on first use)
def _chart_class():
    from qtpy.QtCore import QPointF, QRectF, QSize, Qt
    from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPen, QPolygonF
    from qtpy.QtWidgets import QSizePolicy, QWidget

    class CurvesChart(QWidget):
        """The widget that paints a :class:`LiveCurves`."""

        def __init__(self, curves: LiveCurves) -> None:
            super().__init__()
            self._curves = curves
            self.setMinimumHeight(170)
            self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            self.setToolTip("Training loss (blue, left axis) and validation AP@0.5 (orange, right axis, 0 to 1) "
                            "against the training step")

        def sizeHint(self) -> Any:  # noqa: N802 (Qt's name)
            # a size (a QWidget without a layout has none: in a scroll area the layout's height for the
            # dock's width left the chart out, and squeezed the status lines above it to one line)
            return QSize(240, self.minimumHeight())

        def paintEvent(self, _event: Any) -> None:  # noqa: N802 (Qt's name)
            painter = QPainter(self)
            try:
                painter.setRenderHint(QPainter.RenderHint.Antialiasing)
                self._paint(painter)
            finally:
                painter.end()
            self._curves.paints += 1

        def _paint(self, painter: Any) -> None:
            curves = self._curves
            palette = self.palette()
            text = palette.color(palette.ColorRole.WindowText)
            grid = QColor(text)
            grid.setAlpha(50)
            font = painter.font()
            font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
            painter.setFont(font)
            metrics = QFontMetrics(font)
            line = metrics.height()
            (x0, x1), (l0, l1) = curves.xlim, curves.loss_lim
            x_ticks, loss_ticks, ap_ticks = nice_ticks(x0, x1), nice_ticks(l0, l1, 4), [0.0, 0.5, 1.0]
            x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
            l_step = loss_ticks[1] - loss_ticks[0] if len(loss_ticks) > 1 else 1.0
            loss_labels = [tick_text(v, l_step) for v in loss_ticks]
            left = max(metrics.horizontalAdvance(s) for s in loss_labels) + line + 8
            right = metrics.horizontalAdvance("0.5") + line + 8
            plot = QRectF(left, line * 0.6, max(10.0, self.width() - left - right),
                          max(10.0, self.height() - 2.4 * line - 8))

            def px(x: float) -> float:
                return plot.left() + (x - x0) / max(x1 - x0, 1e-12) * plot.width()

            def py(y: float, low: float, high: float) -> float:
                return plot.bottom() - (y - low) / max(high - low, 1e-12) * plot.height()

            # grid, frame and ticks
            painter.setPen(QPen(grid, 1))
            for v in x_ticks:
                painter.drawLine(QPointF(px(v), plot.top()), QPointF(px(v), plot.bottom()))
            for v in loss_ticks:
                painter.drawLine(QPointF(plot.left(), py(v, l0, l1)), QPointF(plot.right(), py(v, l0, l1)))
            painter.setPen(QPen(text, 1))
            painter.drawRect(plot)
            centre = Qt.AlignmentFlag.AlignCenter
            for v in x_ticks:
                painter.drawText(QRectF(px(v) - 40, plot.bottom() + 2, 80, line), centre, tick_text(v, x_step))
            painter.drawText(QRectF(plot.left(), plot.bottom() + line + 2, plot.width(), line), centre, "step")
            loss_colour, ap_colour = QColor(LOSS_COLOUR), QColor(AP_COLOUR)
            painter.setPen(QPen(loss_colour, 1))
            right_align = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
            left_align = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
            for v, s in zip(loss_ticks, loss_labels):
                painter.drawText(QRectF(0, py(v, l0, l1) - line / 2, left - 4, line), right_align, s)
            painter.setPen(QPen(ap_colour, 1))
            for v in ap_ticks:
                painter.drawText(QRectF(plot.right() + 4, py(v, 0, 1) - line / 2, right, line), left_align,
                                 tick_text(v, 0.5))
            # the axes' names along the outer edges, read upwards on the left and downwards on the right
            for label, colour, x, angle in (("loss", loss_colour, 0.0, -90), ("AP@0.5", ap_colour, self.width(), 90)):
                painter.save()
                painter.setPen(QPen(colour, 1))
                painter.translate(x, plot.center().y())
                painter.rotate(angle)
                painter.drawText(QRectF(-plot.height() / 2, 0, plot.height(), line), centre, label)
                painter.restore()

            # the curves, clipped to the plot
            painter.setClipRect(plot)
            h = curves.history
            steps, losses = np.asarray(h["step"], float), np.asarray(h["loss"], float)
            finite = np.isfinite(losses)
            if finite.any():
                xs, ys = column_envelope(steps[finite], losses[finite], x0, x1, int(plot.width()))
                painter.setPen(QPen(loss_colour, 1.2))
                painter.drawPolyline(QPolygonF([QPointF(px(x), py(y, l0, l1)) for x, y in zip(xs, ys)]))
            if h["val_step"]:
                points = [QPointF(px(x), py(y, 0, 1)) for x, y in zip(h["val_step"], h["ap50"])]
                painter.setPen(QPen(ap_colour, 1.2))
                painter.drawPolyline(QPolygonF(points))
                dots = QPainterPath()
                for p in points:
                    dots.addEllipse(p, 2.5, 2.5)
                painter.fillPath(dots, ap_colour)

    return CurvesChart


class LiveCurves:
    """Training loss (left axis) and validation AP@0.5 (right axis, 0 to 1) of one run.

    Attributes
    ----------
    history : dict of list
        "step"/"loss" of every training step, "val_step"/"ap50" of every validation.
    canvas : QWidget
        The chart to put in a layout.
    total_steps : int or None
        Length of the step axis when the run's number of steps is known.
    xlim, loss_lim : (float, float)
        The step axis and the loss axis as drawn.
    paints : int
        How many times the chart was painted (for tests and benchmarks).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.total_steps: int | None = None
        self.xlim: tuple[float, float] = (0.0, 100.0)
        self.loss_lim: tuple[float, float] = (0.0, 1.0)
        self.paints = 0
        self._last_draw = 0.0
        self._alive = True
        self.canvas = _chart_class()(self)
        self.canvas.destroyed.connect(self._on_destroyed)
        self.clear()

    def _on_destroyed(self, *_args) -> None:
        self._alive = False

    def clear(self, total_steps: int | None = None) -> None:
        """Forget the curves (a new run of ``total_steps`` steps, if known) and redraw now."""
        self.history = {"step": [], "loss": [], "val_step": [], "ap50": []}
        self.total_steps = total_steps
        self.xlim = (0.0, float(total_steps or 100))
        self.loss_lim = (0.0, 1.0)
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
        self._fit_axes()
        try:  # (a late signal can come after Qt deleted the widget, before its "destroyed")
            self.canvas.update()
        except RuntimeError:
            self._alive = False

    def _fit_axes(self) -> None:
        """Widen the axes where the data left them."""
        h = self.history
        last = max(h["step"][-1:] + h["val_step"][-1:], default=0)
        x0, x1 = self.xlim
        if last > x1:
            self.xlim = (0.0, max(2 * x1, last * 1.1))
        finite = [v for v in h["loss"] if math.isfinite(v)]
        if finite:
            top = max(finite)
            high = self.loss_lim[1]
            if top > high or (len(finite) <= 3 and 0 < top < high / 4):  # the first losses set the scale
                self.loss_lim = (0.0, top * 1.5)
