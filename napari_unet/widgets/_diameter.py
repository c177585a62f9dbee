"""The Segment widget's object-diameter controls: "auto", a typed size (px or µm), or one cell's.

Kept apart from the Segment widget: parsing and checking the field, taking the size of the
selected label, and saying which diameter a run used (and why, when something was unusual).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import Label, LineEdit, PushButton

from ._base import current_plane_index, notify_info, notify_warning

DIAMETER_AUTO = "auto"


def pixel_size_um(layer: Any) -> float | None:
    """Micrometres per pixel of ``layer``'s planes, from its scale in its unit (nm, um, mm, ...):
    the side of a square pixel of the same area when y and x differ (a diameter is the equivalent
    diameter of an object's area, as the automatic one and the selected label's are measured); a
    scale without a length unit counts as micrometres; None for an uncalibrated layer."""
    sizes = [_axis_um(layer, axis) for axis in (-2, -1)]
    if sizes[1] is None:
        return None
    return float(np.sqrt(sizes[0] * sizes[1])) if sizes[0] is not None else sizes[1]


def _axis_um(layer: Any, axis: int) -> float | None:
    from napari_unet.io._units import in_unit

    scale = abs(float(layer.scale[axis]))  # (a flipped layer's scale is negative: its pixels are as large)
    units = getattr(layer, "units", None)
    micrometres = in_unit(scale, units[axis]) if units else None
    if micrometres is not None:
        return micrometres
    return scale if scale != 1.0 else None


class DiameterControls:
    """The "Object diameter" field, its "from selected label" button and the "Diameter used" line."""

    def __init__(self) -> None:
        self.field = LineEdit(
            label="Object diameter", value=DIAMETER_AUTO,
            tooltip="Typical cell diameter: 'auto' estimates it; or pixels ('25'), or a physical size "
                    "('8 um') when the image has a pixel size. The image is rescaled to the model's own "
                    "object size before the network; the masks keep the image's shape.",
        )
        self.from_label_button = PushButton(text="Diameter from selected label",
                                            tooltip="Take the object diameter from the cell whose label is selected "
                                                    "in the masks layer (pick it with napari's color picker), or, "
                                                    "with a Shapes layer active, from its selected shapes: a circle "
                                                    "or box drawn around a cell, a line across it, its outline.")
        self.used = Label(label="Diameter used", value="")
        self._last_note = ""
        self._run_auto = True  # whether the last run was given "Auto" (set when it starts)
        self._pixel_um: float | None = None  # the run's image's pixel size (µm), when it has one
        #: the diameter the last run was given, as typed (None: Auto)
        self.run_typed: str | None = None
        self._restored: str | None = None  # the value restore() put in the field, while it is there

    @property
    def widgets(self) -> list[Any]:
        return [self.field, self.from_label_button, self.used]

    @property
    def is_auto(self) -> bool:
        from napari_unet.core.scale import diameter_word

        return diameter_word(self.field.value) == "auto"

    def chosen(self, image: Any, plane_shape: tuple[int, ...]) -> float | None:
        """The diameter in the field in pixels (None for auto); a clear ValueError otherwise."""
        from napari_unet.core.scale import check_diameter, parse_diameter

        diameter = parse_diameter(self.field.value, pixel_size_um(image))
        return None if diameter is None else check_diameter(diameter, plane_shape[:2])

    def new_run(self, image: Any = None) -> None:
        """A run of ``image`` begins (its pixel size, when it has one, says the diameter used in µm too)."""
        self._last_note = ""
        self._pixel_um = pixel_size_um(image) if image is not None else None
        self.used.value = ""  # until the run says (a plane's result, or a volume's size: not the last run's)
        self._run_auto = self.is_auto  # what the run was given, whatever the field says later
        self.run_typed = None if self._run_auto else str(self.field.value).strip()

    def restore(self, typed: str | None) -> None:
        """The image chosen has masks that record the diameter typed for them (``typed``; None: none
        recorded): the field shows it while it says Auto (a size the user typed since is theirs), and
        goes back to Auto for an image without one while it still shows the one restored."""
        said = f"{self._restored} (given when these masks were made)"
        if typed and (self.is_auto or self.field.value == self._restored):
            if self.field.value != typed:
                self.field.value = typed
            self._restored = typed
            self.used.value = f"{typed} (given when these masks were made)"
        elif not typed and self._restored is not None and self.field.value == self._restored:
            self.field.value = DIAMETER_AUTO
            self._restored = None
            if self.used.value == said:
                self.used.value = ""

    def show(self, result: Any) -> None:
        """Say which object diameter a run used (and any note about it, once per run)."""
        if result.diameter is None:
            text = "image's own scale"
        else:
            physical = f" = {result.diameter * self._pixel_um:.3g} µm" if self._pixel_um else ""
            text = f"{result.diameter:.0f} px{physical} ({'estimated' if self._run_auto else 'given'})"
            if result.scale != 1.0:
                text += f", image scaled x{result.scale:.2f}"
        self.used.value = text
        if result.note and result.note != self._last_note:
            notify_info(f"Object diameter: {result.note}.")
        self._last_note = result.note

    def from_shapes(self, shapes: Any, image: Any) -> None:
        """Fill the field with the diameter of the selected shapes of a Shapes layer (all of them
        when none is selected; their median when several), in the pixels of ``image``: an ellipse or
        rectangle around a cell gives the diameter of a circle of its area, sqrt(a b); a line across
        it its length (a path, its length along); a polygon, its outline, 2 sqrt(area / pi)."""
        chosen = sorted(shapes.selected_data) or list(range(len(shapes.data)))
        if not chosen:
            notify_warning(f"{shapes.name!r} holds no shape: draw a circle around a cell, or a line across it.")
            return
        # shape coordinates -> the image's pixels (sizes only: the translate does not matter)
        factor = np.abs(np.asarray(shapes.scale[-2:], float))
        if image is not None:
            factor = factor / np.abs(np.asarray(image.scale[-2:], float))
        sizes = []
        for i in chosen:
            points = np.asarray(shapes.data[i], float)[:, -2:] * factor
            sizes.append(_shape_diameter(str(shapes.shape_type[i]), points))
        sizes = [d for d in sizes if d is not None and np.isfinite(d) and d > 0]
        if not sizes:
            notify_warning("The shapes chosen have no size: draw a circle around a cell, or a line across it.")
            return
        self.field.value = f"{float(np.median(sizes)):.1f}"

    def from_selected_label(self, viewer: Any, masks: Any) -> None:
        """Fill the field with the equivalent diameter of ``masks``' selected label (in the slice
        shown): one well-drawn cell tells the size of the others."""
        from napari.layers import Labels

        from napari_unet.core.scale import median_diameter

        if masks is None or not isinstance(masks, Labels):  # (a layer of another kind named as the masks)
            notify_warning("Segment or draw a cell first (in a Labels layer): its label gives the diameter.")
            return
        index = current_plane_index(viewer, masks)
        data = masks.data[0] if getattr(masks, "multiscale", False) else masks.data  # full resolution, not the coarsest
        plane = np.asarray(data[index] if index else data)
        selected = int(masks.selected_label)
        if selected == 0:
            notify_warning("The label selected is the background (0): pick a cell with the color picker first.")
            return
        diameter = median_diameter((plane == selected).astype(np.int32))
        if diameter is None:
            notify_warning(f"Label {selected} is not in the slice shown: pick a cell with the picker first.")
            return
        self.field.value = f"{diameter:.1f}"


def _shape_diameter(kind: str, points: np.ndarray) -> float | None:
    """The diameter a napari shape (its vertices, in pixels) gives: see DiameterControls.from_shapes."""
    if len(points) < 2:
        return None
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    if kind in ("line", "path"):
        return float(steps.sum())
    if kind in ("ellipse", "rectangle"):  # four corners of its box (napari's ellipse data too)
        if len(points) < 3:
            return None
        return float(np.sqrt(steps[0] * steps[1]))
    y, x = points[:, 0], points[:, 1]  # polygon: its area (shoelace)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return float(2.0 * np.sqrt(area / np.pi))
