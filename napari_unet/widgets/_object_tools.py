"""Object tools on one Labels layer: the mouse modes and keys behind the Correct widget.

:class:`ObjectTools` binds delete / merge / split clicks and lines, fill holes and "new object" to
a Labels layer; every edit is :mod:`napari_unet.core.edit`'s, written with the layer's public
``data_setitem`` (one undo step, the plane marked corrected through the layer's paint event).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_unet.core import edit as core_edit

from ._base import current_plane_index, hides_current_slice, notify_error, one_line
from ._corrections import CorrectedSlices, edits_of, format_plane
from ._disk_masks import top_id
from ._registry import _unwrap, get_widget

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

MODE_OFF = "Off"
MODE_DELETE = "Delete"
MODE_MERGE = "Merge"
MODE_SPLIT = "Split"
MODES = (MODE_OFF, MODE_DELETE, MODE_MERGE, MODE_SPLIT)

#: Key -> what it does, as shown in the widget and the README.
SHORTCUTS = (
    ("D", "delete: click an object"),
    ("G", "merge: click two objects"),
    ("S", "split: a line across, or two seeds"),
    ("H", "fill holes in this slice"),
    ("N", "new object: the next free id"),
    ("Ctrl+Z", "undo (Ctrl+Shift+Z: redo)"),
)
MODE_KEYS = {"D": MODE_DELETE, "G": MODE_MERGE, "S": MODE_SPLIT}
#: napari's keys for its pan/zoom tool on a Labels layer: they leave the object tools too.
PAN_ZOOM_KEYS = ("6", "Z")

#: A press and release closer than this (screen pixels) is a click; farther, a drag (a split line,
#: or a pan of the view with the other tools).
CLICK_TOLERANCE = 4.0

Plane = tuple[int, ...]

#: Planes of more pixels than this are filled / cleaned in a thread worker (Fill holes takes ~0.5 s
#: on 4096^2 and ~4 s on a 10000^2 slide in a 2-core laptop's window); smaller ones at once.
WORKER_PIXELS = 2048 * 2048


class EditError(ValueError):
    """A user action that cannot be done (shown as a notification; nothing changes)."""


# ---------------------------------------------------------------------- layer helpers
def select_next_free_label(layer: "napari.layers.Labels") -> int | None:
    """Make ``layer.selected_label`` the next free id of the whole layer (its max + 1).

    Only for labels held in memory (a lazily read file would be read whole); returns the id
    chosen, or None where nothing was done.
    """
    if not isinstance(layer.data, np.ndarray) or layer.data.ndim < 2:
        return None
    label = next_free_id(layer.data)
    if label <= np.iinfo(layer.data.dtype).max:
        layer.selected_label = label
        return label
    return None


def next_free_id(data: np.ndarray) -> int:
    """:func:`~napari_unet.core.edit.next_free_label` of labels in memory; above the largest id written
    into masks on disk (no pass over their file, see :mod:`._disk_masks`)."""
    top = top_id(data)
    if top is None or top + 1 > np.iinfo(data.dtype).max:  # (an id at the type's top, erased since: look)
        return core_edit.next_free_label(data)
    return top + 1


def select_next_free_label_after_run(viewer: "napari.Viewer", layer: "napari.layers.Labels", label_before: int) -> None:
    """After a run wrote into ``layer``: the next free id for the brush (a model's id must not be
    reused), unless the user chose the label while the run went on (it is no longer ``label_before``)
    and it is theirs still: a cell of the slice shown (picked to grow it: the brush then drew a
    second cell beside it), or an id no object has (New object). An id that the run has written
    elsewhere since is replaced (painting with it would make one cell of two). The label held since
    before the run stays when it is a cell of a corrected slice shown, which the run left as it was, of
    masks whose ids are a slice's own (not 3D objects): a cell half painted on slice 0 went on with
    another id after a run of the whole stack (one cell, two ids)."""
    label = int(layer.selected_label)
    if label != 0 and isinstance(layer.data, np.ndarray) and layer.data.ndim >= 2:
        chosen_meanwhile = label != label_before
        if chosen_meanwhile and label >= next_free_id(layer.data):
            return
        index = current_plane_index(viewer, layer)
        if np.any((layer.data[index] if index else layer.data) == label) and (
                chosen_meanwhile or (index and _slice_kept_by_runs(layer, index))):
            return
    select_next_free_label(layer)


def _slice_kept_by_runs(layer: "napari.layers.Labels", index: tuple[int, ...]) -> bool:
    """Whether slice ``index`` of ``layer`` is a corrected one (left as it is by runs) of masks whose ids
    are each slice's own (a 2D run numbers each slice from 1; 3D objects share ids across slices)."""
    from napari_unet.io._corrected import OBJECTS_3D_KEY

    from ._corrections import CorrectedSlices

    if (layer.metadata or {}).get(OBJECTS_3D_KEY):
        return False
    tracker = CorrectedSlices.existing(layer)
    return tracker is not None and tuple(index) in tracker


#: What to do with labels read lazily from their file (too large for the memory free when opened).
IN_MEMORY_REMEDY = ("open them with Load stack (Loading: auto), which copies them where they can be edited (into "
                    "memory, or into a file on disk when they do not fit)")


def not_editable_when_lazy(layer: "napari.layers.Labels") -> bool:
    """Lock a Labels layer read lazily from its file (masks larger than half the free memory): napari's
    brush wrote into its dask array, each dab a step replayed on every read, the window slower at each
    (0.2 s a dab after 50, 0.8 s after 200), the edits held nowhere but there. Said once; returns
    whether it was locked."""
    # (napari-unet's lazy reading gives dask arrays; a zarr array is written into as it is, and napari
    # paints it well: left editable)
    if isinstance(layer.data, np.ndarray) or "dask" not in type(layer.data).__module__ \
            or getattr(layer, "multiscale", False) or not layer.editable:
        return False
    layer.editable = False
    from ._base import notify_warning

    notify_warning(f"{layer.name!r} is too large to be edited in this computer's free memory (it is read from its "
                   f"file as it is shown): {IN_MEMORY_REMEDY}.")
    return True


def plane_of(layer: "napari.layers.Labels", plane: Plane) -> np.ndarray:
    """The (Y, X) plane ``plane`` of the layer's data: a view, not a copy."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        raise EditError(f"{layer.name!r} is a multiscale (pyramid) layer; object tools edit single-scale labels.")
    if not isinstance(data, np.ndarray):
        raise EditError(f"{layer.name!r} is read lazily from its file; object tools edit labels that can be written "
                        f"into: {IN_MEMORY_REMEDY}.")
    return data[plane] if plane else data


def apply_edit(layer: "napari.layers.Labels", plane: Plane, edit: core_edit.LabelEdit,
               changes: tuple[Any, np.ndarray] | None = None) -> int:
    """Write an edit computed on plane ``plane`` into the layer as one undo-history item.

    Goes through the layer's public ``data_setitem`` with the changed pixels only: napari records
    the old values for undo, refreshes the changed region, and emits the paint event that marks
    the plane as corrected. ``changes``: ``edit.changes`` of the plane as it is, found already (in
    a worker). Returns the number of pixels changed.
    """
    indices, values = changes if changes is not None else edit.changes(plane_of(layer, plane))
    if values.size == 0:
        return 0
    lead = tuple(np.full(values.size, i, dtype=np.intp) for i in plane)
    layer.data_setitem(lead + indices, values)
    return int(values.size)


def object_probabilities(viewer: Any, layer: "napari.layers.Labels", plane: Plane,
                         box: tuple[slice, slice]) -> np.ndarray | None:
    """The Segment widget's kept "inside an object" probability for ``plane``, as a plane-sized
    array, when its last run covered the box ``box`` of that plane; None otherwise."""
    segment = get_widget(viewer, "segment")
    kept = getattr(segment, "kept_results", None)
    shape = plane_of(layer, plane).shape
    for result in kept(layer, plane) if kept is not None else []:  # the last written region that covers it
        if result.probabilities.shape[0] < 2:
            continue
        rows, cols = (slice(*s.indices(n)[:2]) for s, n in zip(result.region, shape))
        if (rows.start <= box[0].start and box[0].stop <= rows.stop
                and cols.start <= box[1].start and box[1].stop <= cols.stop):
            break
    else:
        return None
    probabilities = np.zeros(shape, dtype=np.float32)
    probabilities[rows, cols] = result.probabilities[1][result.inner]  # channel 1: object (interior)
    return probabilities


# ---------------------------------------------------------------------- the tools
class ObjectTools:
    """Mouse and key bindings of the object tools on one Labels layer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer showing the layer (for the current slice and the Segment widget).
    layer : napari.layers.Labels
        The masks layer to edit; its edits are tracked by :class:`CorrectedSlices`.
    """

    #: Emitted with the new mode when the click tool changes.
    mode_changed = Signal(str)
    #: Emitted with a one-line message after every action (or pending step).
    status = Signal(str)

    def __init__(self, viewer: Any, layer: "napari.layers.Labels") -> None:
        self._viewer = viewer
        self.layer = _unwrap(layer)
        self._mode = MODE_OFF
        self._pending: tuple[Plane, int, tuple[float, float]] | None = None  # merge or seed: first click
        self._napari_mode = "pan_zoom"  # napari's tool in use when one of ours was turned on
        self._job: str | None = None  # what a thread worker computes on a large plane (None: nothing)
        self._detached = False
        CorrectedSlices.for_layer(self.layer)
        self.layer.mouse_drag_callbacks.append(self._on_mouse)
        self.layer.events.mode.connect(self._on_layer_mode)
        self._keys = {
            **{key: (lambda _layer, m=mode: self.toggle_mode(m)) for key, mode in MODE_KEYS.items()},
            "H": lambda _layer: self.fill_holes(),
            # napari's pan/zoom keys: the tools keep the layer in pan/zoom, so napari says no change of tool
            **{key: self._pan_zoom_key for key in PAN_ZOOM_KEYS},
            "N": lambda _layer: self.new_object(),
        }
        for key, action in self._keys.items():
            self.layer.bind_key(key, action, overwrite=True)

    def detach(self) -> None:
        """Remove the bindings from the layer (leaving napari's own tools as they were); an operation
        being computed on a large plane is not written."""
        self._detached = True
        self.mode = MODE_OFF
        if self._on_mouse in self.layer.mouse_drag_callbacks:
            self.layer.mouse_drag_callbacks.remove(self._on_mouse)
        self.layer.events.mode.disconnect(self._on_layer_mode)
        for key, action in self._keys.items():
            if self.layer.keymap.get(_keybinding(key)) is action:
                self.layer.bind_key(key, None)

    # ---------------------------------------------------------------- mode
    @property
    def mode(self) -> str:
        """The click tool: ``"Off"`` (napari's tools), ``"Delete"``, ``"Merge"`` or ``"Split"``."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"Unknown tool {mode!r}; choose one of {', '.join(MODES)}.")
        self._pending = None
        if mode == self._mode:
            return
        before, self._mode = self._mode, mode
        layer = self.layer
        if mode == MODE_OFF:  # back to the napari tool that was in use (the brush), as the hint says
            if self._napari_mode != "pan_zoom" and layer.mode == "pan_zoom":
                layer.mode = self._napari_mode
            layer.mouse_pan = layer.mode == "pan_zoom"
            layer.cursor = "standard"
        else:
            if before == MODE_OFF:
                self._napari_mode = str(layer.mode)
            layer.mode = "pan_zoom"  # napari's brush must not paint while we click
            layer.mouse_pan = mode != MODE_SPLIT  # a drag pans the view, or draws a split line
            layer.cursor = "crosshair"
        self.mode_changed.emit(mode)
        self.status.emit(_MODE_HINTS[mode])

    def toggle_mode(self, mode: str) -> None:
        """Switch to ``mode``, or back to napari's tools if it is on already (the key pressed again)."""
        self.mode = MODE_OFF if self.mode == mode else mode

    def _to_pan_zoom(self) -> None:
        """napari's pan/zoom chosen by its key: back to napari's tools, in pan/zoom."""
        self.mode = MODE_OFF
        self.layer.mode = "pan_zoom"

    def _pan_zoom_key(self, _layer: Any) -> Generator[None, None, None]:
        """napari's pan/zoom key (Z, 6): pan/zoom; held longer than napari's hold delay, the tool in use
        before comes back on release, as napari's own binding does (the layer stayed in pan/zoom)."""
        from napari.settings import get_settings

        tool, napari_mode, pressed = self._mode, str(self.layer.mode), time.perf_counter()
        self._to_pan_zoom()
        yield
        if time.perf_counter() - pressed < float(get_settings().application.hold_button_delay) or self._detached:
            return
        if tool != MODE_OFF:
            self.mode = tool
        elif self.layer.mode == "pan_zoom":
            self.layer.mode = napari_mode

    def _on_layer_mode(self, event: Any = None) -> None:
        if self._mode != MODE_OFF and self.layer.mode != "pan_zoom":  # the user picked a napari tool
            self._mode = MODE_OFF
            self._pending = None
            self.mode_changed.emit(MODE_OFF)

    # ---------------------------------------------------------------- mouse
    def _point(self, event: Any) -> tuple[Plane, np.ndarray]:
        """(plane, (y, x) in data pixels) of a mouse event."""
        layer = self.layer
        offset = len(event.position) - layer.ndim
        displayed = [d - offset for d in event.dims_displayed]
        if len(displayed) != 2:
            raise EditError("switch to the 2D view (Ctrl+Y) to edit objects.")
        if sorted(displayed) != [layer.ndim - 2, layer.ndim - 1]:  # (Y-X or, transposed, X-Y)
            raise EditError("show the Y-X plane (the last two axes) to edit objects.")
        data = np.asarray(layer.world_to_data(event.position), dtype=float)[-layer.ndim:]
        lead_shape = layer.data.shape[: layer.ndim - 2]
        plane = tuple(int(np.round(c)) for c in data[: layer.ndim - 2])
        if not all(0 <= i < s for i, s in zip(plane, lead_shape)):  # napari shows none of its planes here
            raise EditError(f"{layer.name!r} has no slice at the viewer's position: move the slider into it.")
        return plane, data[-2:]

    def _id_at(self, plane: Plane, yx: np.ndarray) -> int:
        labels = plane_of(self.layer, plane)
        y, x = (int(np.floor(c + 0.5)) for c in yx)
        if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
            raise EditError("click inside the image.")
        label = int(labels[y, x])
        if label == 0:
            raise EditError("there is no object under the cursor: click inside an object.")
        return label

    def _on_mouse(self, layer: Any, event: Any):
        if self._mode == MODE_OFF or layer.mode != "pan_zoom" or getattr(event, "button", 1) != 1:
            return
        mode = self._mode
        try:
            plane, start = self._point(event)
        except EditError as exc:
            notify_error(mode, exc)
            return
        path, screen = [start], [np.asarray(event.pos, dtype=float)]
        yield
        while True:  # moves while the button is down, then the release
            screen.append(np.asarray(event.pos, dtype=float))
            try:
                path.append(self._point(event)[1])
            except EditError:
                pass
            if event.type != "mouse_move":
                break
            yield
        dragged = max(float(np.abs(p - screen[0]).max()) for p in screen) >= CLICK_TOLERANCE
        if mode == MODE_SPLIT and dragged:
            self._run(mode, self.split_line, plane, np.array(path))
        elif not dragged:  # with the other tools a drag moved the view
            self.click(plane, start)

    def click(self, plane: Plane, yx: Any) -> None:
        """What a click at ``yx`` (data pixels) of ``plane`` does in the current mode."""
        self._run(self._mode, self._click, tuple(plane), np.asarray(yx, dtype=float))

    def _click(self, plane: Plane, yx: np.ndarray) -> str | None:
        if self._mode == MODE_OFF:
            return None
        label = self._id_at(plane, yx)
        target = self._target(plane) if self._mode in (MODE_DELETE, MODE_MERGE) else plane
        if self._mode == MODE_DELETE:
            return self._apply(target, core_edit.delete_object(plane_of(self.layer, target), label,
                                                               at=_pixel_in(target, plane, yx)))
        pending, self._pending = self._pending, None
        if pending is None or self._target(pending[0]) != target:  # (2D: the same plane; 3D: the same volume)
            self._pending = (plane, label, tuple(yx))
            if self._mode == MODE_MERGE:
                return f"Object {label} picked: click the object to merge into it."
            return f"Seed 1 on object {label}: click a second seed in it (or drag a line across it)."
        first_plane, first_label, first_yx = pending
        if self._id_at(first_plane, np.asarray(first_yx)) != first_label:  # the slice was segmented again meanwhile
            raise EditError(f"the slice changed since object {first_label} was picked (segmented again): "
                            "click the first object again.")
        if self._mode == MODE_MERGE:
            return self._apply(target, core_edit.merge_objects(
                plane_of(self.layer, target), [first_label, label],
                at=[_pixel_in(target, first_plane, np.asarray(first_yx)), _pixel_in(target, plane, yx)]))
        if label != first_label:
            raise EditError(f"the second seed is on object {label}, the first on object {first_label}: "
                            "put both seeds in the object to split.")
        return self._split(plane, label, seeds=[first_yx, tuple(yx)])

    def split_line(self, plane: Plane, path: np.ndarray) -> str:
        """Split the object that the polyline ``path`` ((N, 2) data pixels) crosses most."""
        from skimage.draw import line

        labels = plane_of(self.layer, plane)
        points = np.round(path).astype(int)
        crossed = []
        for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
            rr, cc = line(r0, c0, r1, c1)
            inside = (rr >= 0) & (rr < labels.shape[0]) & (cc >= 0) & (cc < labels.shape[1])
            crossed.append(labels[rr[inside], cc[inside]])
        values = np.concatenate(crossed) if crossed else np.zeros(0, labels.dtype)
        values = values[values != 0]
        if values.size == 0:
            raise EditError("the line crosses no object: draw it across the object to split.")
        ids, counts = np.unique(values, return_counts=True)
        return self._split(plane, int(ids[np.argmax(counts)]), line=path)

    def _split(self, plane: Plane, label: int, **how: Any) -> str:
        labels = plane_of(self.layer, plane)
        box = core_edit.bounding_box(labels == label)
        probabilities = object_probabilities(self._viewer, self.layer, plane, box) if box else None
        top = top_id(self.layer.data)  # (masks on disk: no pass over their file for the free ids)
        free = {"ids_of": self.layer.data} if top is None else {"new_label": max(top, int(labels.max())) + 1}
        edit = core_edit.split_object(labels, label, probabilities=probabilities, **free, **how)
        message = self._apply(plane, edit)
        if probabilities is None:
            return message
        return message.removesuffix(".") + " (on the kept probabilities)."

    # ---------------------------------------------------------------- actions on the slice
    def current_plane(self) -> Plane:
        """The Y-X plane of the layer that the viewer shows now.

        Raises
        ------
        EditError
            The 2D view shows another cut through the layer (axes transposed), or the viewer's
            position lies outside the layer (napari shows none of its planes there): an edit of
            "the current plane" would change a plane the user does not see.
        """
        layer, dims = self.layer, self._viewer.dims
        offset = dims.ndim - layer.ndim
        displayed = [d - offset for d in dims.displayed]
        if dims.ndisplay == 2 and sorted(displayed) != [layer.ndim - 2, layer.ndim - 1]:
            raise EditError("show the Y-X plane (the last two axes) to edit objects.")
        if hides_current_slice(self._viewer, layer):
            raise EditError("switch to the 2D view (Ctrl+Y): the edit acts on the slice shown.")
        try:
            return current_plane_index(self._viewer, layer, strict=True)
        except ValueError as exc:
            raise EditError(str(exc)) from None

    def fill_holes(self) -> None:
        """Fill the holes of every object of the current plane."""
        self._on_current("Fill holes", core_edit.fill_holes)

    def remove_small(self, min_size: int) -> None:
        """Delete the objects under ``min_size`` pixels of the current plane."""
        self._on_current("Remove small objects", lambda labels: core_edit.remove_small(labels, min_size))

    @property
    def busy(self) -> bool:
        """Whether an operation on a large plane is being computed in a thread worker."""
        return self._job is not None

    def _on_current(self, what: str, operation: Callable[[np.ndarray], core_edit.LabelEdit]) -> None:
        """``operation`` on the current plane; on a large plane (:data:`WORKER_PIXELS`) in a thread
        worker, the window free meanwhile, and written only if the plane was not edited meanwhile."""
        def at_once() -> str | None:
            if self._job is not None:
                raise EditError(f"{self._job} is still running on a slice.")
            plane = self.current_plane()
            labels = plane_of(self.layer, plane)
            if labels.size <= WORKER_PIXELS:
                return self._apply(plane, operation(labels))
            self._start_job(what, plane, labels, operation)
            return f"{what}: working on {format_plane(plane) or 'the image'}…"
        self._run(what, at_once)

    def _start_job(self, what: str, plane: Plane, labels: np.ndarray,
                   operation: Callable[[np.ndarray], core_edit.LabelEdit]) -> None:
        from ._base import start_worker

        edited: list[bool] = []  # painted (or the data replaced) between the worker's last look and now

        def mark(*_args: Any) -> None:
            edited.append(True)

        events = (self.layer.events.paint, self.layer.events.data)
        for event in events:
            event.connect(mark)
        edits = edits_of(self.layer)  # (Ctrl+Z and Ctrl+Shift+Z emit neither event: counted there)

        def compute():
            yield f"{what}…"  # (a generator: start_worker runs those)
            snapshot = np.array(labels, copy=True)  # (the brush, Ctrl+Z, a Segment run may write meanwhile)
            edit = operation(snapshot)
            changes = edit.changes(snapshot)  # (which pixels: a whole slide's comparison, here too)
            return (edit, changes) if np.array_equal(snapshot, labels) else None  # None: edited meanwhile

        def done(found: tuple[core_edit.LabelEdit, Any] | None) -> None:
            if self._detached:
                return
            if found is None or edited or edits_of(self.layer) != edits:
                self._refused(what, EditError(f"{format_plane(plane) or 'the image'} was edited while it was "
                                              "computed; nothing was changed: press again."))
                return
            self._run(what, self._apply, plane, *found)

        def failed(exc: BaseException) -> None:
            if not self._detached:
                self._refused(what, exc)

        def finished() -> None:
            self._job = None
            for event in events:
                event.disconnect(mark)

        self._job = what
        start_worker(compute(), returned=done, errored=failed, finished=finished,
                     title=f"{what} in {self.layer.name!r} (stops; the masks are left as they are)")

    def new_object(self) -> None:
        """Select the next free id and napari's brush, to paint a new object."""
        def action() -> str:
            label = select_next_free_label(self.layer)
            if label is None:
                raise EditError("no free id: the labels are not in memory or their type is full.")
            self.mode = MODE_OFF
            self.layer.mode = "paint"
            return f"New object: painting with id {label}."
        self._run("New object", action)

    # ---------------------------------------------------------------- plumbing
    def _target(self, plane: Plane) -> Plane:
        """Where a Delete or Merge acts: the plane, or the volume through it (the axis before Y, X with
        them: a z-stack's 3D objects) when napari edits the layer in 3D (its "n edit dim" set to 3, as
        napari's brush, eraser and fill then do): one click instead of one per plane."""
        layer = self.layer
        if int(getattr(layer, "n_edit_dimensions", 2)) < 3 or not plane:
            return plane
        order = list(self._viewer.dims.order)
        offset = self._viewer.dims.ndim - layer.ndim
        return plane[:-1] if len(order) >= 3 and order[-3] - offset == layer.ndim - 3 else plane

    def _apply(self, plane: Plane, edit: core_edit.LabelEdit, changes: Any = None) -> str:
        apply_edit(self.layer, plane, edit, changes)
        if edit.new_labels and self.layer.selected_label in edit.new_labels:
            select_next_free_label(self.layer)  # the brush must not paint a new cell with a split piece's id
        if len(plane) < self.layer.ndim - 2:  # a volume (see _target)
            where = " in all planes" + (f" of {format_plane(plane)}" if plane else "")
        else:
            where = f" in {format_plane(plane)}" if plane else ""
        return f"{edit.message[:1].upper()}{edit.message[1:]}{where}."

    def _run(self, what: str, action: Callable[..., str | None], *args: Any) -> None:
        """Run an action; a refusal is a one-line notification and changes nothing."""
        try:
            message = action(*args)
        except ValueError as exc:  # EditError and core_edit's checks
            self._refused(what, exc)
            return
        if message:
            self.status.emit(message)

    def _refused(self, what: str, exc: BaseException) -> None:
        self._pending = None
        notify_error(what, exc)
        self.status.emit(f"{what}: {one_line(exc)}")


def _pixel_in(target: Plane, plane: Plane, yx: np.ndarray) -> tuple[int, ...]:
    """Where a click at ``yx`` of ``plane`` is in ``target``, the plane itself or the volume through it
    (a Delete or Merge through the planes: :meth:`ObjectTools._target`), so that it acts on the object
    clicked, not on every object of its id: the other planes' cells numbered alike, or the other cells
    of a binary mask brought as labels (id 1 for all: one click deleted every cell)."""
    y, x = (int(np.floor(c + 0.5)) for c in yx)
    return (*plane[len(target):], y, x)


def _keybinding(key: str) -> Any:
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


_MODE_HINTS = {
    MODE_OFF: "napari's tools are back (brush, eraser, fill).",
    MODE_DELETE: "Delete: click an object.",
    MODE_MERGE: "Merge: click two objects; the second joins the first.",
    MODE_SPLIT: "Split: drag a line across an object, or click two seeds in it.",
}


# ---------------------------------------------------------------------- the widget
