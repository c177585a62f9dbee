"""The Correct dock widget: object tools on the "<image> masks" Labels layer.

napari's brush, eraser and fill work on pixels; these work on objects, in one click:

====================  ========  =====================================================
tool                  shortcut  how
====================  ========  =====================================================
Delete                D         click an object
Merge                 G         click two objects: the second joins the first
Split                 S         drag a line across an object, or click two seeds in it
Fill holes            H         every object of the slice shown
New object            N         paint with the next free id (the brush is selected)
Undo / redo           Ctrl+Z    napari's own (Ctrl+Shift+Z to redo)
====================  ========  =====================================================

The operations are :mod:`napari_unet.core.edit`'s, run on the plane shown (a view, never a copy of
the stack). Their result is written with the layer's public ``data_setitem``, so each edit is one
item of napari's undo history, refreshes only the changed region, and — through the layer's paint
event — marks the plane as corrected (:class:`~._corrections.CorrectedSlices`).

:class:`ObjectTools` holds the mouse and key bindings of one layer (no Qt code); :class:`CorrectWidget`
is the dock widget around it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox

from napari_unet.io._corrected import changed_on_disk, mark_saved

from ._base import (
    FixedRadioButtons,
    ask_before_closing_with_unsaved_masks,
    disconnect_all,
    notify_error,
    notify_info,
    scroll_when_short,
    tab_with_plugin_docks,
    when_undocked,
    wrap_text,
)
from ._object_tools import MODE_OFF, MODES, SHORTCUTS, ObjectTools, not_editable_when_lazy, select_next_free_label
from ._object_tools import MODE_DELETE, MODE_MERGE, MODE_SPLIT  # noqa: F401  (re-exported)
from ._registry import _unwrap, register_widget

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


class CorrectWidget(Container):
    """Dock widget "Correct": object tools on a masks layer, with their shortcuts."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari.layers import Labels

        super().__init__(labels=True)
        self._viewer = viewer
        self.tools: ObjectTools | None = None
        self.saving: Any = None  # the worker writing a masks file (None: none)

        self._layer_combo = ComboBox(label="Masks", choices=self._labels_choices)
        self._mode = FixedRadioButtons(label="Click tool", choices=MODES, value=MODE_OFF,
                                  tooltip="Off: napari's brush, eraser and fill. D, G, S switch tools.")
        self._fill_button = PushButton(text="Fill holes (H)", tooltip="Fill the holes of every object of the slice shown.")
        self._new_button = PushButton(text="New object (N)",
                                      tooltip="napari's brush with the next free id: paint a cell the model missed.")
        self._min_size = SpinBox(label="Min. size (px)", min=1, max=1_000_000, value=15,
                                 tooltip="For 'Remove smaller objects': in the image's own pixels (Segment's Min. "
                                         "size counts pixels at the model's scale).")
        self._small_button = PushButton(text="Remove smaller objects",
                                        tooltip="Delete the objects of the slice shown smaller than Min. size (specks).")
        shortcuts = "\n".join(f"{key}: {what}" for key, what in SHORTCUTS)
        self._shortcuts = Label(label="Shortcuts", value=shortcuts)
        self._save_button = PushButton(
            text="Save masks…",
            tooltip="A compressed TIFF, with the list of corrected slices beside it "
                    "(<name>.tif.corrected.json): both written, or neither. File > Open restores both.")
        self._status = Label(label="Status", value="")
        wrap_text(self._status, self._shortcuts)
        self.extend([
            self._layer_combo, self._mode, self._fill_button, self._new_button,
            self._min_size, self._small_button, self._save_button, self._shortcuts, self._status,
        ])

        self._layer_combo.changed.connect(self._on_layer)
        self._mode.changed.connect(self._on_mode_choice)
        self._fill_button.changed.connect(lambda *_: self._with_tools(lambda t: t.fill_holes()))
        self._new_button.changed.connect(lambda *_: self._with_tools(lambda t: t.new_object()))
        self._small_button.changed.connect(
            lambda *_: self._with_tools(lambda t: t.remove_small(int(self._min_size.value))))
        self._save_button.changed.connect(self._on_save_clicked)
        for layer in viewer.layers:  # labels opened before the widget: new objects get fresh ids too
            if isinstance(layer, Labels):
                select_next_free_label(layer)
                not_editable_when_lazy(layer)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        viewer.layers.events.renamed.connect(self._on_renamed)
        viewer.layers.selection.events.active.connect(self._on_active)
        self._on_layer()
        register_widget(viewer, "correct", self)
        when_undocked(self.native, self._closed)
        tab_with_plugin_docks(self.native)  # (beside the plugin's other docks, not under them)
        ask_before_closing_with_unsaved_masks(viewer)  # (the user's edits are not lost unasked)
        scroll_when_short(self)  # (a dock shorter than its controls: a laptop's screen)

    def _closed(self) -> None:
        """The dock was closed (napari keeps the widget, hidden; the Plugins menu makes a new one): its
        tools are switched off and unbound (a plain click still deleted an object, and D, G, S, H, N
        stayed bound, with nothing shown), and it no longer follows the layers."""
        from ._registry import unregister_widget

        self._drop_tools()
        events = self._viewer.layers.events
        disconnect_all((events.inserted, self._on_inserted), (events.removed, self._on_removed),
                       (events.renamed, self._on_renamed), (self._layer_combo.changed, self._on_layer),
                       (self._viewer.layers.selection.events.active, self._on_active))
        unregister_widget(self._viewer, "correct", self)

    def _on_renamed(self, *_args) -> None:
        self._layer_combo.reset_choices()

    # ---------------------------------------------------------------- layers
    def _labels_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        layers = [layer for layer in self._viewer.layers if isinstance(layer, Labels) and layer.ndim >= 2]
        # masks layers first, then those shown (a sample's ground truth, hidden, is not what to edit first)
        layers.sort(key=lambda layer: (not layer.name.endswith(" masks"), not layer.visible))
        return [(layer.name, layer) for layer in layers]

    def _on_inserted(self, event: Any) -> None:
        from napari.layers import Labels

        layer = event.value
        if isinstance(layer, Labels):
            select_next_free_label(layer)  # a saved file reopened: new objects must not reuse ids
            not_editable_when_lazy(layer)
        self._layer_combo.reset_choices()
        if isinstance(layer, Labels) and layer.name.endswith(" masks"):
            self._layer_combo.value = layer
        elif isinstance(layer, Labels):
            _say_a_second_copy(self._viewer, layer)

    def _on_active(self, event: Any = None) -> None:
        """A Labels layer clicked in the layer list is the one the tools work on: they stayed bound to the
        masks added last, and on another masks layer D, G, S, H and N did nothing (a click in paint
        mode painted into the cell instead of deleting it)."""
        from napari.layers import Labels

        layer = getattr(event, "value", None)
        if not isinstance(layer, Labels) or layer.ndim < 2 or layer is self._layer_combo.value:
            return
        self._layer_combo.reset_choices()
        if any(value is layer for _name, value in self._labels_choices()):
            self._layer_combo.value = layer

    def _on_removed(self, event: Any) -> None:
        if self.tools is not None and _unwrap(event.value) is self.tools.layer:
            self._drop_tools()
        self._layer_combo.reset_choices()

    def _on_layer(self, *_args) -> None:
        layer = self._layer_combo.value
        if self.tools is not None:
            if layer is not None and _unwrap(layer) is self.tools.layer:
                return
            self._drop_tools()
        if layer is None:
            self._status.value = "Segment an image first: its masks appear here."
            return
        self.tools = ObjectTools(self._viewer, layer)
        self.tools.mode_changed.connect(self._on_tools_mode)
        self.tools.status.connect(self._show_status)
        self.tools.layer.events.visible.connect(self._on_visible)
        self.tools.layer.events.selected_label.connect(self._on_brush)
        self.tools.layer.events.mode.connect(self._on_brush)
        self._mode.value = MODE_OFF
        self._status.value = self._editing()

    def _editing(self) -> str:
        layer = self.tools.layer
        return f"Editing {layer.name!r}." + ("" if layer.visible else " It is hidden: choosing a tool shows it.")

    def _on_brush(self, *_args) -> None:
        """Another label or tool picked (the eraser, the fill, the picker): "New object: painting with id 11"
        no longer says what the brush does."""
        if self.tools is None or not self._status.value.startswith("New object: painting with id"):
            return
        layer = self.tools.layer
        if layer.mode != "paint" or self._status.value != f"New object: painting with id {layer.selected_label}.":
            self._status.value = self._editing()

    def _on_visible(self, *_args) -> None:
        """The edited layer shown or hidden (Segment shows its new masks once drawn; napari-unet gui
        hides a sample's ground truth): the "Editing" line says so, until an action says more."""
        if self.tools is not None and self._status.value.startswith("Editing "):
            self._status.value = self._editing()

    def _drop_tools(self) -> None:
        if self.tools is not None:
            disconnect_all((self.tools.layer.events.visible, self._on_visible),
                           (self.tools.layer.events.selected_label, self._on_brush),
                           (self.tools.layer.events.mode, self._on_brush))
            self.tools.detach()
            self.tools = None

    def _with_tools(self, action: Callable[[ObjectTools], None]) -> None:
        if self.tools is None:
            notify_error("Correct", "there is no labels layer: segment an image first.")
            return
        self._show_edited_layer()  # (Ctrl+Z undid another layer, the edit unseen in a hidden one)
        action(self.tools)

    def _show_edited_layer(self) -> None:
        """The layer the tools edit becomes the active one, shown: clicks and Ctrl+Z go to the
        active layer, and an edit of a layer not shown could not be seen."""
        self._viewer.layers.selection.active = self.tools.layer
        if not self.tools.layer.visible:
            self.tools.layer.visible = True

    # ---------------------------------------------------------------- saving
    def _on_save_clicked(self, *_args) -> None:
        from qtpy.QtWidgets import QFileDialog

        layer = self._layer_combo.value
        if layer is None:
            notify_error("Save masks", "there is no labels layer: segment an image first.")
            return
        dialog = QFileDialog(self.native, f"Save {layer.name!r}", str(default_masks_path(self._viewer, layer)),
                             "TIFF (*.tif *.tiff)")
        accept_save = getattr(QFileDialog, "AcceptSave", None) or QFileDialog.AcceptMode.AcceptSave  # PyQt5 / 6
        dialog.setAcceptMode(accept_save)
        dialog.setDefaultSuffix("tif")  # a name typed without it: Qt asks about replacing "name.tif" itself
        if dialog.exec() and dialog.selectedFiles():
            self.save_masks_in_background(dialog.selectedFiles()[0])

    def _to_save(self, path: str | Path) -> tuple[Path, Any, dict[str, Any], str] | None:
        """The destination, data and state of the chosen masks layer to write (None, said, without one).

        The state is taken now: the list of corrected slices as it is when Save is pressed (a stroke
        made while the file is written marks its slice in the layer, for the next save)."""
        layer = self._layer_combo.value
        if layer is None:
            notify_error("Save masks", "there is no labels layer: segment an image first.")
            return None
        path = Path(path)
        if path.suffix.lower() not in (".tif", ".tiff"):
            path = path.with_name(path.name + ".tif")
        if changed_on_disk(layer.metadata, path) and not self._replace_changed_file(layer.name, path):
            self._status.value = f"Not saved: {path.name} was changed by someone else, and is kept."
            return None
        data, state, _kind = layer.as_layer_data_tuple()
        return path, data, {**state, "metadata": _metadata_now(state.get("metadata"))}, layer.name

    def _replace_changed_file(self, name: str, path: Path) -> bool:
        """Ask whether to replace the masks file ``path``, changed on disk since ``name`` was opened
        from it or saved to it (a colleague's corrected version unzipped over it, another napari)."""
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Warning, "napari-unet",
                          f"{path.name} was changed on disk since {name!r} was opened from it or saved to it (by "
                          "another program, another napari, or a colleague's copy put there). Replace it with "
                          f"{name!r}? What it holds now would be lost: choose No, then Save masks… under another "
                          "name, to keep both.", QMessageBox.Yes | QMessageBox.No, self.native)
        box.setDefaultButton(QMessageBox.No)
        return box.exec_() == QMessageBox.Yes

    def save_masks(self, path: str | Path) -> list[str]:
        """Write the chosen masks layer with napari-unet's labels writer (a TIFF and the list of
        its corrected slices, atomically), here and now; returns the paths written ([] on failure,
        said in a notification). The button writes in the background: :meth:`save_masks_in_background`."""
        job = self._to_save(path)
        if job is None:
            return []
        path, data, state, name = job
        from napari_unet.io._writer import LabelsWriteError, write_layer_labels

        layer = self._layer_combo.value
        try:
            written = write_layer_labels(path, data, state)
        except (LabelsWriteError, OSError) as exc:
            self._not_saved(path, exc)
            return []
        mark_saved(layer.metadata, state["metadata"], path)
        self._saved(name, path)
        return [written]

    def save_masks_in_background(self, path: str | Path) -> Any:
        """:meth:`save_masks` in a thread worker (a 64 x 2048 x 2048 stack held the window 1.9 s),
        the button off meanwhile; returns the worker (None when nothing is written).

        The file holds the labels as they are while it is written: painted meanwhile, a pixel may be
        in it or not (its slice is marked corrected all the same, and the next save holds it)."""
        job = self._to_save(path)
        if job is None:
            return None
        path, data, state, name = job
        from napari_unet.io._writer import write_layer_labels

        from ._base import qt_alive, start_worker

        layer = self._layer_combo.value

        def returned(_written: Any) -> None:
            mark_saved(layer.metadata, state["metadata"], path)
            self._saved(name, path)

        def write():
            yield  # (a generator: start_worker runs those)
            return write_layer_labels(path, data, state)

        def finished() -> None:
            self.saving = None
            if qt_alive(self._save_button):
                self._save_button.enabled = True

        self._save_button.enabled = False
        self._status.value = f"Saving {name!r} to {path}…"
        self.saving = start_worker(write(), returned=returned,
                                   errored=lambda exc: self._not_saved(path, exc), finished=finished,
                                   finishes=True, title=f"Save masks of {name!r} to {path.name} (written all the same)")
        return self.saving

    def _saved(self, name: str, path: Path) -> None:
        from ._base import qt_alive

        if qt_alive(self._status):
            self._status.value = f"Saved {name!r} to {path} (with its list of corrected slices)."
        notify_info(f"Saved {name!r} to {path}.")

    def _not_saved(self, path: Path, exc: BaseException) -> None:
        from napari_unet.io._writer import LabelsWriteError, not_saved_message

        from ._base import qt_alive

        message = not_saved_message(path, exc)
        if not isinstance(exc, (LabelsWriteError, OSError)):
            log.error("Saving masks to %s failed", path, exc_info=exc)
        if qt_alive(self._status):
            self._status.value = message
        notify_error("Save masks", message)

    # ---------------------------------------------------------------- mode and status
    def _on_mode_choice(self, mode: str) -> None:
        if self.tools is None:
            if mode != MODE_OFF:
                self._mode.value = MODE_OFF
                notify_error("Correct", "there is no labels layer: segment an image first.")
            return
        if mode != MODE_OFF:
            self._show_edited_layer()
        self.tools.mode = mode

    def _on_tools_mode(self, mode: str) -> None:
        with self._mode.changed.blocked():
            self._mode.value = mode

    def _show_status(self, message: str) -> None:
        self._status.value = message


def _metadata_now(metadata: Any) -> dict[str, Any]:
    """A layer's metadata as it is now, for a file written meanwhile: its list of corrected slices
    and napari-unet's entries copied (the layer's own go on changing), the rest as they are."""
    import copy

    from napari_unet.io._corrected import CORRECTED_KEY

    now = dict(metadata) if isinstance(metadata, dict) else {}
    for key in (CORRECTED_KEY, "napari_unet"):
        if key in now:
            now[key] = copy.deepcopy(now[key])
    return now


def _say_a_second_copy(viewer: Any, layer: Any) -> None:
    """napari names a layer opened under a name taken "<name> [1]": a second masks file of an image
    (a colleague's version opened beside one's own) became "x masks [1]", paired with nothing
    (Segment, Fine-tune and Save go by "x masks"), unsaid."""
    import re

    match = re.fullmatch(r"(.+ masks) \[\d+\]", str(layer.name))
    if match is not None and match.group(1) in viewer.layers:
        notify_info(f"{layer.name!r} was opened beside {match.group(1)!r}, which has that name: Segment, Fine-tune "
                    f"and Save take {match.group(1)!r} for its image. Rename one of them to use the other.")


def default_masks_path(viewer: Any, layer: Any) -> Path:
    """Where Save masks proposes to write ``layer``: "<layer name>.tif" in the folder of its image's
    file ("<image> masks" -> the layer "<image>"), else in the current folder; beside a Zarr container,
    not in it (a field of a plate, ``plate.ome.zarr/A/1/0``: a TIFF in the store, which every later
    read warned of, and lost when the plate is converted again)."""
    from napari_unet.io._formats import zarr_container

    folder = Path.cwd()
    from ._masks import image_name_of_masks

    image_name = image_name_of_masks(layer.name)
    if image_name and image_name in viewer.layers:
        image = viewer.layers[image_name]
        source = getattr(getattr(image, "source", None), "path", None)
        meta = image.metadata.get("napari_unet") if isinstance(image.metadata, dict) else None
        source = source or (meta.get("path") if isinstance(meta, dict) else None)
        if source and Path(source).parent.is_dir():
            folder = (zarr_container(source) or Path(source)).parent
    else:  # (masks opened from a file, of no image open: "x masks [1]", a second copy) their own file's folder
        own = getattr(getattr(layer, "source", None), "path", None)
        if own and Path(own).parent.is_dir():
            folder = (zarr_container(own) or Path(own)).parent
    # (brackets and parentheses kept: "img [DAPI] masks" must open again as the masks of "img [DAPI]")
    safe = "".join(c if c.isalnum() or c in " ._-[]()" else "_" for c in layer.name).strip() or "masks"
    return folder / f"{safe}.tif"
