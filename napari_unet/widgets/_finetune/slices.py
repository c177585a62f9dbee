"""The corrected-slices panel: which image and masks layer to learn from, and which slices.

The user corrects masks in "<image> masks" (brush, eraser, fill, polygon, undo); each changed
plane is recorded by :class:`~napari_unet.widgets._corrections.CorrectedSlices` and listed
here. A plane can be marked correct without editing, unmarked, or jumped to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, Select
from napari.layers import Image, Labels

from .._base import (
    current_plane_index,
    hides_current_slice,
    notify_error,
    notify_warning,
    show_plane,
    shows_yx_planes,
    wrap_text,
)
from .._corrections import CorrectedSlices, format_plane, planes_text
from .._examples import examples_from_layers
from .._masks import check_masks_of, image_name_of_masks
from .ui import layer_choices

if TYPE_CHECKING:
    import napari


class CorrectedSlicesPanel(Container):
    """Image, Masks, the corrected slices and Mark / Unmark / Go to."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._tracker: CorrectedSlices | None = None
        self._tracked: Any = None  # the masks layer whose tracker that is
        self._image_combo = ComboBox(label="Image", choices=lambda _w=None: layer_choices(viewer, Image))
        self._labels_combo = ComboBox(label="Masks", choices=lambda _w=None: layer_choices(viewer, Labels),
                                      tooltip="The Labels layer you correct; its changed slices are the examples.")
        self._corrected_info = Label(label="Corrected", value="")
        wrap_text(self._corrected_info)
        self._corrected_list = Select(
            label="Slices", choices=self._corrected_choices,  # ("Corrected slices" was cut to "Corrected slice:")
            tooltip="The slices you corrected or marked as correct: what the model learns from. Select some to "
                    "unmark them or go to them.")
        self._corrected_list.native.setMaximumHeight(110)
        self._mark_button = PushButton(text="Mark current slice as correct",
                                       tooltip="A slice whose masks need no edit: it is learnt from too.")
        self._unmark_button = PushButton(text="Unmark selected",
                                         tooltip="Leave the slices selected in the list out of training.")
        self._jump_button = PushButton(text="Go to selected", tooltip="Move the sliders to the slice selected in the list.")
        self.extend([
            self._image_combo, self._labels_combo, self._corrected_info, self._corrected_list,
            self._mark_button, self._unmark_button, self._jump_button,
        ])

        self._image_combo.changed.connect(self._on_image_changed)
        self._labels_combo.changed.connect(self._on_labels_changed)
        self._mark_button.changed.connect(self.mark_current_slice)
        self._unmark_button.changed.connect(self.unmark_selected)
        self._jump_button.changed.connect(self.jump_to_selected)
        self._corrected_list.changed.connect(self._update_buttons)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved,
                      viewer.layers.events.renamed):
            event.connect(self._on_layers_changed)
        self._on_image_changed()
        self._on_labels_changed()

    # ------------------------------------------------------------------ layers
    @property
    def corrections(self) -> CorrectedSlices | None:
        """The tracker of the chosen masks layer."""
        return self._tracker

    @property
    def corrected_image(self) -> Any:
        """The chosen image when slices of its masks are corrected (the examples come from it), else None."""
        return self._image_combo.value if self._tracker is not None and self._tracker.planes else None

    def _corrected_choices(self, _widget=None) -> list[tuple[str, Any]]:
        if self._tracker is None:
            return []
        return [(format_plane(p), p) for p in self._tracker.planes]

    def _on_layers_changed(self, event: Any = None) -> None:
        # masks first: a new image choice selects its masks layer, which must be a choice by then
        self._labels_combo.reset_choices()
        self._image_combo.reset_choices()
        if self._tracker is not None and self._labels_combo.value is not self._tracked:
            # the tracked masks layer went (the combo emits no change when its last choice goes)
            self._on_labels_changed()
        # a new "<image> masks" layer (e.g. made by the Segment widget) is the one to correct, with its image
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if added is not None and isinstance(added, Labels):
            image = self._image_of(added)
            # (not away from masks with corrections to masks with none: a second image segmented to
            # look at it left Start saying "No corrected slice yet")
            holding = self._tracker is not None and bool(self._tracker.planes) and self._tracked is not added
            theirs = CorrectedSlices.existing(added)
            keep = holding and not (theirs is not None and theirs.planes)
            if image is not None and keep:
                CorrectedSlices.for_layer(added)  # its corrections are recorded all the same (and said at Start)
            elif image is not None:
                if self._image_combo.value is image:
                    self._on_image_changed()
                else:
                    self._image_combo.value = image  # (which selects its masks)

    def _image_of(self, masks: Any) -> Any:
        """The image layer "<name>" of a masks layer "<name> masks", if it is one of the choices."""
        base = image_name_of_masks(getattr(masks, "name", ""))
        if base is None:
            return None
        return next((layer for layer in self._image_combo.choices if getattr(layer, "name", None) == base), None)

    def _on_image_changed(self, *_args) -> None:
        """Select "<image> masks" when it exists."""
        image = self._image_combo.value
        if image is None:
            return
        wanted = f"{image.name} masks"
        for name, layer in layer_choices(self._viewer, Labels):
            if name == wanted:
                if layer not in self._labels_combo.choices:
                    self._labels_combo.reset_choices()
                if layer in self._labels_combo.choices:
                    self._labels_combo.value = layer
                break

    def _on_labels_changed(self, *_args) -> None:
        layer = self._labels_combo.value
        image = self._image_of(layer) if layer is not None else None
        if image is not None and self._image_combo.value is not image:
            self._image_combo.value = image  # the masks of "chan [GFP]" are not examples of "chan [DAPI]"
        if self._tracker is not None:
            try:
                self._tracker.changed.disconnect(self._update_corrected)
            except (ValueError, RuntimeError):
                pass
        self._tracker = CorrectedSlices.for_layer(layer) if layer is not None else None
        self._tracked = layer
        if self._tracker is not None:
            self._tracker.changed.connect(self._update_corrected)
        self._update_corrected()

    def _update_corrected(self, *_args) -> None:
        planes = self._tracker.planes if self._tracker is not None else []
        if not planes:
            self._corrected_info.value = "none yet: correct masks or mark a slice"
        else:
            shown = planes_text(planes, most=6)
            self._corrected_info.value = f"{len(planes)}: {shown}"
        selected = [p for p in (self._corrected_list.value or []) if p in planes]
        self._corrected_list.native.clear()  # rebuild so that the list stays sorted
        self._corrected_list.reset_choices()
        if selected:
            self._corrected_list.value = selected
        self._update_buttons()

    def _update_buttons(self, *_args) -> None:
        """Unmark and Go to act on the slices selected in the list: enabled when some are (they did
        nothing, and said nothing, with none)."""
        chosen = bool(self._corrected_list.value)
        self._unmark_button.enabled = chosen
        self._jump_button.enabled = chosen

    # ------------------------------------------------------------------ actions
    def mark_current_slice(self, *_args) -> None:
        """Mark the slice shown now as correct (a training example) without editing it."""
        layer = self._labels_combo.value
        if layer is None or self._tracker is None:
            notify_error("Mark slice", "choose a masks (Labels) layer first.")
            return
        if not shows_yx_planes(self._viewer, layer):
            notify_error("Mark slice", "the view shows another cut through the stack than its Y-X slices (axes "
                         "transposed or rolled): go back to the Y-X view to mark the slice shown there.")
            return
        if hides_current_slice(self._viewer, layer):
            notify_error("Mark slice", "switch to the 2D view (Ctrl+Y) to mark the slice you have checked.")
            return
        try:
            plane = current_plane_index(self._viewer, layer, strict=True)
        except ValueError as exc:
            notify_error("Mark slice", exc)
            return
        self._tracker.mark(plane)
        data = np.asarray(layer.data[plane] if plane else layer.data)
        if not data.any():
            notify_warning(f"{format_plane(plane).capitalize()} holds no object: marked as correct, it teaches the "
                           "model that there are no cells there. Unmark it if cells were missed.")

    def unmark_selected(self, *_args) -> None:
        """Take the selected slices off the list (their masks stay as they are)."""
        if self._tracker is None:
            return
        for plane in list(self._corrected_list.value or []):
            self._tracker.unmark(plane)

    def jump_to_selected(self, *_args) -> None:
        """Show the first selected slice."""
        selected = list(self._corrected_list.value or [])
        if selected:
            self.jump_to(selected[0])

    def jump_to(self, plane: tuple[int, ...]) -> None:
        """Show ``plane`` of the masks layer in the viewer (sets the dims sliders)."""
        layer = self._labels_combo.value
        if layer is not None:
            show_plane(self._viewer, layer, plane)

    # ------------------------------------------------------------------ examples
    def examples(self, read: bool = True) -> list[Any]:
        """The corrected planes of the chosen image as training examples (unchecked); ``read=False``:
        still to be read (:class:`~.._examples.ExampleToRead`).

        Raises
        ------
        ValueError
            Slices are corrected but no image is chosen, or the layers do not match.
        """
        planes = self._tracker.planes if self._tracker is not None else []
        if not planes:
            return []
        image = self._image_combo.value
        if image is None:
            raise ValueError("choose the image whose masks you corrected.")
        masks = self._labels_combo.value
        if masks is None:
            raise ValueError("choose the masks layer you corrected.")
        check_masks_of(self._viewer, masks, image)
        owner = self._image_of(masks)
        if owner is not None and owner is not image:  # the masks of one image are not examples of another
            raise ValueError(f"{masks.name!r} holds the masks of {owner.name!r}, not of {image.name!r}: choose "
                             f"{owner.name!r} as the image, or the masks of {image.name!r} (segment it first).")
        return examples_from_layers(image, masks, planes, read=read)
