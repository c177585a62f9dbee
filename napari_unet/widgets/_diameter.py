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
    """Micrometres per pixel along x of ``layer``, from its scale in its unit (nm, um, mm, ...);
    a scale without a length unit counts as micrometres; None for an uncalibrated layer."""
    from napari_unet.io._units import in_unit

    scale = abs(float(layer.scale[-1]))  # (a flipped layer's scale is negative: its pixels are as large)
    units = getattr(layer, "units", None)
    micrometres = in_unit(scale, units[-1]) if units else None
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
                                                    "in the masks layer (pick it with napari's color picker).")
        self.used = Label(label="Diameter used", value="")
        self._last_note = ""
        self._run_auto = True  # whether the last run was given "Auto" (set when it starts)

    @property
    def widgets(self) -> list[Any]:
        return [self.field, self.from_label_button, self.used]

    @property
    def is_auto(self) -> bool:
        return self.field.value.strip().lower() in ("", DIAMETER_AUTO)

    def chosen(self, image: Any, plane_shape: tuple[int, ...]) -> float | None:
        """The diameter in the field in pixels (None for auto); a clear ValueError otherwise."""
        from napari_unet.core.scale import check_diameter, parse_diameter

        diameter = parse_diameter(self.field.value, pixel_size_um(image))
        return None if diameter is None else check_diameter(diameter, plane_shape[:2])

    def new_run(self) -> None:
        self._last_note = ""
        self.used.value = ""  # until the run says (a 3D run does not: the last 2D run's value would stay)
        self._run_auto = self.is_auto  # what the run was given, whatever the field says later

    def show(self, result: Any) -> None:
        """Say which object diameter a run used (and any note about it, once per run)."""
        if result.diameter is None:
            text = "image's own scale"
        else:
            text = f"{result.diameter:.0f} px ({'estimated' if self._run_auto else 'given'})"
            if result.scale != 1.0:
                text += f", image scaled x{result.scale:.2f}"
        self.used.value = text
        if result.note and result.note != self._last_note:
            notify_info(f"Object diameter: {result.note}.")
        self._last_note = result.note

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
