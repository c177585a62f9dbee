"""The "Load stack" dock widget: pick a file or folder, check and correct its axes, load it.

Thin: metadata and pixels come from :mod:`napari_unet.io`; reading runs in a napari thread worker
so that a large in-memory load does not freeze the window.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton

from napari_unet.io import PLANE_IMAGE_SUFFIXES, TIFF_SUFFIXES, StackInfo, inspect_stack, read_layer_data
from napari_unet.io._axes import AxesError
from napari_unet.io._formats import StackReadError, is_ome_zarr, is_zarr_group
from napari_unet.io._reader import should_open_lazily
from napari_unet.io._settings import get_setting, update_settings

from ._base import (
    FixedRadioButtons,
    launch,
    notify_error,
    notify_warning,
    qt_alive,
    tab_with_plugin_docks,
    titled,
    wrap_text,
)

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

LOADING_CHOICES = {"auto": None, "lazy": True, "in memory": False}
_FILE_FILTER = "Microscopy images ({} *.zattrs *.zgroup zarr.json)".format(
    " ".join(f"*{s}" for s in dict.fromkeys((*TIFF_SUFFIXES, *PLANE_IMAGE_SUFFIXES)))
)


_ZARR_METADATA = (".zattrs", ".zgroup", ".zarray", "zarr.json")


def zarr_group_of(path: Path) -> Path | None:
    """The Zarr group a path picked in a file dialog means, or None when it is in none: the group
    itself (a labels group inside an image, ``img.ome.zarr/labels/nuclei``, is that group, not the
    image), the group of a metadata file picked (``.zattrs``, ``zarr.json``, in a folder of any
    name), or the nearest group holding a file or array picked inside it (a chunk, a level)."""
    if path.name in _ZARR_METADATA:
        path = path.parent
    outermost = None
    for folder in (path, *path.parents):
        if is_zarr_group(folder):
            # bioformats2raw's OME/ group (METADATA.ome.xml) holds no image: the images are beside it
            if folder.name == "OME" and (is_zarr_group(folder.parent) or folder.parent.suffix.lower() == ".zarr"):
                return folder.parent
            return folder
        if folder.suffix.lower() == ".zarr" and folder.is_dir():
            outermost = folder  # (a .zarr folder without group metadata: as before, the outermost)
    return outermost


class LoadWidget(Container):
    """Dock widget that opens a microscopy stack with the axes the user confirms.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer that receives the image layers.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._stack_info: StackInfo | None = None
        self._worker: Any = None
        self._missing_notified: Path | None = None
        last = get_setting("last_folder")
        # (a settings file edited by hand may hold anything there: Load stack did not open)
        start = Path(last) if isinstance(last, str) and last and Path(last).is_dir() else Path.home()

        self._source = FixedRadioButtons(
            choices=["file", "folder"], value="file", label="Open", orientation="horizontal",
            tooltip="A file (TIFF, OME-TIFF, PNG/JPEG), or a folder (OME-Zarr, or 2D images stacked in order)",
        )
        self._path = FileEdit(mode="r", label="Path", filter=_FILE_FILTER, value=start)
        self._info = Label(value="Choose a file or a folder.", label="Detected")
        self._axes = LineEdit(
            value="", label="Axes",
            tooltip="One letter per dimension, from T (time), C (channel), Z, Y, X, S (RGB, last); "
            "for example TYX for a time-lapse stored as a 3D TIFF",
        )
        self._loading = ComboBox(
            choices=list(LOADING_CHOICES), value="auto", label="Loading",
            tooltip="lazy: read only the planes on screen (large files); in memory: read everything now; "
            "auto: lazy above 1 GB or a quarter of free memory",
        )
        self._series = ComboBox(
            choices=[], label="Series", visible=False,
            tooltip="The file holds several images (positions of a multi-position acquisition): the one to open",
        )
        self._load_button = PushButton(text="Load", tooltip="Open the file or folder in Path as layers of the viewer.")
        self._load_button.enabled = False
        self._status = Label(value="", label="")
        wrap_text(self._info, self._status)
        self.extend([self._source, self._path, self._info, self._series, self._axes, self._loading,
                     self._load_button, self._status])

        self._source.changed.connect(self._on_source_changed)
        self._path.changed.connect(self._on_path_changed)
        # typed paths: say that one is missing once the typing is done (Enter, or leaving the field)
        self._path.line_edit.native.editingFinished.connect(self._notify_missing_path)
        self._axes.changed.connect(self._on_axes_changed)
        self._series.changed.connect(self._on_series_changed)
        self._load_button.changed.connect(self._on_load)
        tab_with_plugin_docks(self.native)  # (beside the plugin's other docks, not under them)

    # ------------------------------------------------------------------------------ reactions
    def _on_source_changed(self, value: str) -> None:
        self._path.mode = "d" if value == "folder" else "r"
        self._on_path_changed()  # the path chosen may now be what Open asks for

    def _selected_path(self) -> Path | None:
        # the text as typed or pasted: Windows Explorer's "Copy as path" quotes it, and the field's own value
        # made '"C:\...\cells.tif"' a name in the current folder ("No such file or folder")
        text = str(self._path.line_edit.value or "").strip().strip("\"'").strip()
        if text in ("", "."):
            return None
        p = Path(text).expanduser()  # a typed "~/data/cells.tif"
        return zarr_group_of(p) or p

    def _on_path_changed(self, *_: Any) -> None:
        self._stack_info = None
        self._load_button.enabled = False
        self._status.value = ""
        self._show_series(())  # (the last file's images: until this one is read)
        path = self._selected_path()
        if path is None:
            self._info.value = "Choose a file or a folder."
            return
        if not path.exists():
            self._info.value = f"No such file or folder: {path}"
            return
        self._missing_notified = None
        if path.is_dir() and self._source.value == "file" and not is_ome_zarr(path):
            self._info.value = "Choose a file, or switch Open to 'folder'."
            return
        update_settings(last_folder=str(path.parent if path.is_file() or path.suffix == ".zarr" else path))
        try:
            info = inspect_stack(path)
        except (StackReadError, AxesError) as e:
            self._info.value = str(e)
            self._axes.value = ""
            return
        self._show_series(info.series_names)
        self._stack_info = info
        with self._axes.changed.blocked():
            self._axes.value = info.axes
        self._show_info(info)
        self._load_button.enabled = True

    def _show_series(self, names: tuple[str, ...]) -> None:
        """The Series choice: the file's images when it holds several (the first chosen), hidden otherwise."""
        with self._series.changed.blocked():
            self._series.choices = [(name, k) for k, name in enumerate(names)]
            if names:
                self._series.value = 0
        self._series.visible = len(names) > 1

    def _chosen_series(self) -> int | None:
        return self._series.value if len(self._series.choices) > 1 and self._series.value else None

    def _on_series_changed(self, *_: Any) -> None:
        """Another of the file's images chosen: its own shape, axes and pixel size."""
        path = self._selected_path()
        if path is None or self._stack_info is None:
            return
        typed = self._axes.value.strip().upper()
        edited = typed != self._stack_info.axes  # (axes the user corrected: kept where they fit this image)
        try:
            info = inspect_stack(path, series=self._chosen_series())
        except (StackReadError, AxesError) as e:
            self._info.value = str(e)
            self._load_button.enabled = False
            return
        self._stack_info = info
        if edited and len(typed) == len(info.shape):
            try:
                info = info.with_axes(typed)
            except AxesError:
                edited = False
        with self._axes.changed.blocked():
            self._axes.value = typed if edited and len(typed) == len(info.shape) else info.axes
        self._show_info(info)
        self._load_button.enabled = True

    def _notify_missing_path(self) -> None:
        path = self._selected_path()
        if path is not None and not path.exists() and path != self._missing_notified:
            self._missing_notified = path  # once, though Enter and leaving the field both end an edit
            notify_warning(f"Load stack: no such file or folder: {path}")

    def _show_info(self, info: StackInfo) -> None:
        from napari_unet.io._axes import planes_not_channels_note

        mode = "lazy" if should_open_lazily(info.nbytes) else "in memory"
        note = planes_not_channels_note(info.shape, info.axes, info.axes_from_file)
        hint = f". {note[0].upper() + note[1:]}, type C for that axis in Axes" if note else ""
        self._info.value = f"{info.describe()}; auto: {mode}{hint}"

    def _on_axes_changed(self, value: str) -> None:
        if self._stack_info is None:
            return
        try:
            info = self._stack_info.with_axes(value)
        except AxesError as e:
            self._info.value = f"Axes: {e}"
            self._load_button.enabled = False
            return
        self._show_info(info)
        self._load_button.enabled = True

    # ------------------------------------------------------------------------------- loading
    def _on_load(self, *_: Any) -> None:
        from napari.qt.threading import create_worker

        path = self._selected_path()
        if path is None or self._stack_info is None:
            notify_error("Load stack", self._info.value or "choose a file or a folder first.")
            return
        if not path.exists():  # moved or deleted since it was chosen
            notify_error("Load stack", f"{path} no longer exists.")
            self._on_path_changed()
            return
        series = self._chosen_series()
        try:  # the file or folder may have changed since it was chosen (a file saved into the folder)
            now = inspect_stack(path, series=series)
        except (StackReadError, AxesError) as e:
            notify_error("Load stack", e)
            self._on_path_changed()
            return
        if (now.shape, now.dtype, now.left_out) != (self._stack_info.shape, self._stack_info.dtype,
                                                     self._stack_info.left_out):
            self._on_path_changed()
            notify_warning(f"Load stack: {path.name} changed since you chose it; check what it holds now "
                           "and press Load again.")
            return
        axes = self._axes.value.strip().upper() or None
        lazy = LOADING_CHOICES[self._loading.value]
        self._load_button.enabled = False
        self._status.value = f"Loading {path.name}..."
        # errors are shown by _on_error alone (without _ignore_errors superqt raises them again)
        worker = create_worker(titled(_read_layers, f"Load stack, reading {path.name}"),
                               path, lazy=lazy, axes=axes, series=series, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda layer_data: self._on_loaded(layer_data, path))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        launch(worker)

    def _on_loaded(self, layer_data: list[tuple[Any, dict[str, Any], str]], path: Path) -> None:
        from ._napari_compat import opened_from

        if not qt_alive(self._status):  # the viewer was closed while the file was read
            return
        added = []
        try:  # (a lazily read file's first plane is read here, by napari drawing it: a damaged one raises)
            with opened_from(path):
                for data, meta, layer_type in layer_data:
                    added.append(getattr(self._viewer, f"add_{layer_type}")(data, **meta))
        except Exception as exc:  # noqa: BLE001 - said as the worker's errors are, the layers added removed
            for layer in added:
                if layer in self._viewer.layers:
                    self._viewer.layers.remove(layer)
            self._on_error(exc)
            return
        from napari.layers import Labels

        from ._disk_masks import say_on_disk, watch_edits

        for layer in added:
            if isinstance(layer, Labels):
                watch_edits(layer)  # (labels on disk: the ids the brush writes, for its next free id)
                say_on_disk(layer)
        self._status.value = f"Loaded {', '.join(layer.name for layer in added)}"

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        message = str(exc) if isinstance(exc, ValueError) else f"Loading failed: {type(exc).__name__}: {exc}"
        if qt_alive(self._status):
            self._status.value = message
        show_error(message)

    def _on_finished(self) -> None:
        self._worker = None
        if qt_alive(self._load_button):
            self._load_button.enabled = self._stack_info is not None


def _read_layers(path: Any, lazy: bool | None = None, axes: str | None = None,
                 series: int | None = None) -> list[tuple[Any, dict[str, Any], str]]:
    """The layers of ``path``; masks (a labels file saved by napari-unet with its list of corrected
    slices, OME-Zarr labels, a file named like masks) open as Labels layers, as File > Open does.
    Labels of a stack that open lazily (large) with Loading "auto" are copied where they can be
    edited: into memory when they fit there, else into a file on disk (:mod:`._disk_masks`); read
    lazily, napari's brush could not edit them well, and they were locked."""
    from napari_unet.io._reader import as_labels_where_masks

    from ._disk_masks import editable_copy

    layers = as_labels_where_masks(path, read_layer_data(path, lazy=lazy, axes=axes, series=series))
    if lazy is not None:  # (Loading "lazy" or "in memory": as chosen)
        return layers
    out = []
    for data, meta, kind in layers:
        if kind == "labels" and not isinstance(data, (np.ndarray, list)) and not meta.get("multiscale") \
                and "dask" in type(data).__module__ and getattr(data, "ndim", 0) >= 3:
            data = editable_copy(data, str(meta.get("name") or Path(path).stem))
        out.append((data, meta, kind))
    return out
