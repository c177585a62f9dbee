"""Every use of napari internals (and of napari version differences) in napari-unet, in one place.

napari's public API does not yet cover everything the plugin needs: undo/redo of a Labels layer
emits no event, the canvas size became public only in 0.9, plugin widgets are handed a
``PublicOnlyProxy`` instead of the viewer. Each need is one small function here, with what it
was checked against and what it degrades to when napari changes; ``tests/test_napari_compat.py``
runs each one on a real viewer and fails with a message naming the napari attribute involved.

"Checked against" below means: run by the test suite on napari 0.9.2 (the installed version),
and the code paths read in the sources of napari 0.5.0, 0.6.0, 0.7.0 and 0.8.0.

Nothing else in the package may touch a napari attribute that starts with ``_``.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: History item handed to :func:`watch_labels_replay` callbacks when napari no longer exposes
#: the undo/redo history: the replay happens, but which pixels it changes is unknown.
UNKNOWN_ITEM = None


def unwrap_proxy(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (or ``obj`` itself when it is no proxy).

    napari hands a plugin widget a ``PublicOnlyProxy`` of the viewer, and every layer or model
    reached through it is a proxy too; two proxies of one layer are different objects, so
    whatever is keyed by object (the corrected-slices tracker, the widget registry) must use
    the object behind them.

    Checked against: napari 0.5.0 to 0.9.2, where the proxy is a ``wrapt.ObjectProxy`` that
    exposes the wrapped object as ``__wrapped__``. Degrades to: returning ``obj`` unchanged
    (proxies of one layer then count as different layers).
    """
    for _ in range(5):  # a proxy of a proxy is not made by napari, but cheap to allow
        inner = getattr(obj, "__wrapped__", None)
        if inner is None:
            break
        obj = inner
    return obj


def edited_regions(item: Iterable[Any] | None) -> list[tuple[Any, ...]]:
    """Index keys into ``layer.data`` of the pixels one Labels edit changed.

    ``item`` is one undo-history item of a napari ``Labels`` layer: the ``value`` of its public
    ``events.paint`` event, or what :func:`watch_labels_replay` hands its callback. Each key has
    one entry per data axis: slices (the bounding box of a brush, eraser, fill or polygon edit)
    or integer index arrays (``data_setitem``).

    Checked against: napari 0.5.0 to 0.9.2. Up to 0.7 every atom of the item is a tuple
    ``(indices, old_values, new_values)``; from 0.8 a mask edit is a ``_MaskedPaintAtom`` with a
    ``slice_key`` (its bounding box) and ``data_setitem`` is still the tuple. Degrades to:
    atoms of an unknown form are skipped (logged at debug level), so their planes are not
    marked corrected.
    """
    keys: list[tuple[Any, ...]] = []
    for atom in item or ():
        key = getattr(atom, "slice_key", None)
        if key is None:
            try:
                key = atom[0]
            except (TypeError, IndexError, KeyError):
                log.debug("Unknown napari Labels history atom %r ignored", type(atom))
                continue
        keys.append(key if isinstance(key, tuple) else (key,))
    return keys


def _last_history_item(layer: Any, history_name: str) -> list[Any] | None:
    history = getattr(layer, history_name, None)
    if history is None:
        log.warning(
            "napari's Labels no longer has %s: undo/redo will not mark slices as corrected.", history_name
        )
        return UNKNOWN_ITEM
    return list(history[-1]) if len(history) else []


def stroke_in_progress(layer: Any) -> list[Any]:
    """The edits of a brush or eraser stroke still going on in a Labels layer (mouse down): napari
    holds them back from the undo history, and says nothing of them, until the mouse is released.
    ``[]`` when no stroke is going on.

    Checked against: napari 0.5.0 to 0.9.2 (``Labels._block_history`` set during a drag,
    ``Labels._staged_history``, a list of atoms like a history item's).
    Degrades to: ``[]`` (a run may then write a slice under a stroke), with a warning in the log.
    """
    layer = unwrap_proxy(layer)
    if not hasattr(layer, "_block_history") or not hasattr(layer, "_staged_history"):
        log.warning("napari's Labels no longer has _block_history/_staged_history: a stroke in progress is "
                    "not protected from a run writing its slice.")
        return []
    return list(layer._staged_history) if layer._block_history else []


def labels_edit_history(layer: Any) -> list[list[Any]]:
    """The edits a Labels layer can undo now (its undo history items, oldest first): those made
    before napari-unet started to watch the layer.

    Checked against: napari 0.5.0 to 0.9.2 (``Labels._undo_history``, a deque of history items).
    Degrades to: ``[]`` (those earlier edits are not known), with a warning in the log.
    """
    history = getattr(unwrap_proxy(layer), "_undo_history", None)
    if history is None:
        log.warning("napari's Labels no longer has _undo_history: edits made before napari-unet watched a "
                    "layer do not mark slices as corrected.")
        return []
    return [list(item) for item in history]


def labels_history_top(layer: Any) -> int:
    """The largest id in a Labels layer's undo and redo histories (painted, or there before an edit:
    an undo or redo writes it back), 0 when none.

    Checked against: napari 0.9.2 (``Labels._undo_history`` and ``_redo_history``, deques of history
    items, each a list of atoms: a ``_MaskedPaintAtom`` (``new_value``, ``old_values``) or an
    ``(indices, old values, new values)`` tuple). Degrades to: 0 (the histories' ids not known).
    """
    layer = unwrap_proxy(layer)
    top = 0
    for name in ("_undo_history", "_redo_history"):
        for item in getattr(layer, name, None) or ():
            for atom in item:
                if hasattr(atom, "new_value"):
                    values: tuple[Any, ...] = (atom.new_value, getattr(atom, "old_values", None))
                elif isinstance(atom, tuple) and len(atom) == 3:
                    values = (atom[1], atom[2])
                else:
                    continue
                for v in values:
                    if v is not None and np.size(v):
                        top = max(top, int(np.max(v)))
    return top


def watch_labels_replay(layer: Any, before_replay: Callable[[list[Any] | None, bool], None],
                        after_replay: Callable[[bool], None] | None = None) -> Callable[[], None]:
    """Call ``before_replay(item, undo)`` each time ``layer.undo()`` or ``layer.redo()`` replays an
    edit, and ``after_replay(undo)`` once it is replayed (``undo``: True for an undo).

    napari's ``Labels.undo``/``redo`` emit no event of their own (``events.paint`` fires only
    for new edits), so the layer's ``undo`` and ``redo`` are wrapped on the instance; the
    wrapper reads the history item about to be replayed (``_undo_history[-1]`` or
    ``_redo_history[-1]``), hands it to ``before_replay`` (``[]`` when there is nothing to
    replay) and then replays it. napari's Ctrl+Z / Ctrl+Shift+Z key bindings call
    ``layer.undo()`` / ``layer.redo()``, so they reach the wrapper.

    Returns a function that removes the wrapper again.

    Checked against: napari 0.5.0 to 0.9.2 (``Labels._undo_history`` and ``_redo_history`` are
    deques of history items, the last one replayed next). Degrades to: when napari no longer
    has these attributes, undo and redo still work and ``before_replay`` gets ``None``
    (:data:`UNKNOWN_ITEM`), with a warning in the log.
    """
    layer = unwrap_proxy(layer)
    original_undo, original_redo = layer.undo, layer.redo

    def undo() -> None:
        before_replay(_last_history_item(layer, "_undo_history"), True)
        original_undo()
        if after_replay is not None:
            after_replay(True)

    def redo() -> None:
        before_replay(_last_history_item(layer, "_redo_history"), False)
        original_redo()
        if after_replay is not None:
            after_replay(False)

    token = object()  # names our wrappers; ``unwatch`` holds no reference to them or to the layer
    undo.napari_unet_watch = redo.napari_unet_watch = token  # type: ignore[attr-defined]
    layer.undo = undo
    layer.redo = redo
    layer_ref = weakref.ref(layer)

    def unwatch() -> None:
        target = layer_ref()
        if target is None:
            return
        for name in ("undo", "redo"):
            if getattr(vars(target).get(name), "napari_unet_watch", None) is token:  # only our own
                delattr(target, name)

    return unwatch


def viewer_camera(viewer: "napari.Viewer") -> Any:
    """The viewer's camera model.

    Checked against: napari 0.9.2 (public ``viewer.scene.camera``; ``viewer.camera`` is
    deprecated there) and 0.5.0 to 0.8.0 (public ``viewer.camera``, no ``scene``). Degrades to:
    nothing, both are public.
    """
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer: "napari.Viewer") -> tuple[int, int] | None:
    """(height, width) of the viewer's canvas in screen pixels, or None where napari does not tell.

    Checked against: napari 0.9.2 (public ``viewer.canvas.size``) and 0.5.0 to 0.8.0 (private
    ``ViewerModel._canvas_size``, read on the viewer behind a plugin's proxy). Degrades to:
    None, and callers use the whole plane instead of the visible part.
    """
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None:
        size = getattr(unwrap_proxy(viewer), "_canvas_size", None)
    return None if size is None else (int(size[-2]), int(size[-1]))


def view_size(viewer: "napari.Viewer") -> tuple[int, int] | None:
    """(height, width) in screen pixels of the view that shows a layer: the canvas, or one tile of it
    in grid mode (napari 0.9 shows each tile as a view box of its own with the same camera: the field
    of view there is a tile's, and the canvas's was twice as wide with two layers side by side).

    Checked against: napari 0.9.2 (public ``viewer.canvas.grid``, ``enabled``, ``actual_shape``;
    private ``_compute_canvas_spacing``, degrading to no spacing). Before 0.9 (a grid made by moving
    the layers under one camera): the canvas, as :func:`canvas_size`.
    """
    size = canvas_size(viewer)
    viewer = unwrap_proxy(viewer)  # (napari warns of a private attribute read through a plugin's proxy)
    grid = getattr(getattr(viewer, "canvas", None), "grid", None)
    if size is None or grid is None or not getattr(grid, "enabled", False):
        return size
    layers = viewer.layers
    try:
        rows, cols = (int(n) for n in grid.actual_shape(layers))
    except (AttributeError, TypeError, ValueError):
        return size
    try:
        spacing = float(grid._compute_canvas_spacing((size[1], size[0]), layers))
    except (AttributeError, TypeError, ValueError):
        spacing = 0.0
    height, width = (size[0] - (rows - 1) * spacing) / max(rows, 1), (size[1] - (cols - 1) * spacing) / max(cols, 1)
    return max(int(height), 1), max(int(width), 1)


def raise_plugin_dock(viewer: "napari.Viewer", plugin: str, widget_name: str) -> Any:
    """Show the dock of a plugin widget and bring it to the front of its tab group.

    Uses only public API: ``viewer.window.add_plugin_dock_widget`` docks the widget, or returns
    the dock it already has (a ``QDockWidget``), and Qt's ``QDockWidget.raise_()`` makes a
    tabified dock the current tab. Returns that dock.

    Checked against: napari 0.5.0 to 0.9.2 (``add_plugin_dock_widget`` returns
    ``(dock, widget)`` and the existing pair for a widget already docked). Degrades to: a
    second dock of the widget if napari stopped returning the existing one.
    """
    dock, _widget = viewer.window.add_plugin_dock_widget(plugin, widget_name)
    dock.show()
    dock.raise_()
    return dock


@contextlib.contextmanager
def layers_added_unselected(viewer: "napari.Viewer") -> Iterator[None]:
    """Layers added to ``viewer`` inside this block are not made the selected (active) layer.

    napari selects every new layer at once, which builds and lays out its layer controls in
    the same turn of the event loop as the layer itself; for a Labels layer the two together
    kept the window from answering for more than 100 ms on a 2-core machine. Adding it
    unselected and selecting it in a later turn splits that in two shorter pauses.

    Checked against: napari 0.5.0 to 0.9.2 (``SelectableEventedList._activate_on_insert``,
    read by ``insert``). Degrades to: napari's own behaviour (the new layer selected at once)
    when the attribute is gone.
    """
    layers = unwrap_proxy(viewer.layers)
    known = hasattr(layers, "_activate_on_insert")
    before = layers._activate_on_insert if known else None
    if known:
        layers._activate_on_insert = False
    try:
        yield
    finally:
        if known:
            layers._activate_on_insert = before


def overlays_shown_when_used(layer: Any) -> int:
    """Hide the editing overlays of a Labels layer not yet added to a viewer (the polygon and the
    brush stroke outlines) until its tool first needs them; returns how many were hidden.

    napari builds the vispy visuals of a layer's visible overlays in the same turn of the event
    loop as the layer's own (about 50 of the 80 ms of adding a Labels layer on a fast 2-core
    machine, 100-150 ms on a slow one), and those of a hidden overlay only when it is shown. The
    overlays draw only while their tool is on (napari sets ``enabled`` from the layer's mode:
    polygon for the polygon tool, brush stroke for the brush), so each is shown when it is first
    enabled: the cost comes with the user's first click on that tool, or never, not in the middle
    of a segmentation.

    Checked against: napari 0.9.2 (``Layer._overlays``, an evented dict of overlay models with
    ``visible`` and ``enabled`` fields, and ``VispyCanvas._update_layer_overlays``, which skips
    hidden overlays until their ``visible`` event). Degrades to: nothing hidden (the overlays
    built with the layer, as napari does).
    """
    overlays = getattr(unwrap_proxy(layer), "_overlays", None)
    if overlays is None or not hasattr(overlays, "get"):
        log.debug("napari's Labels has no _overlays: overlays built with the layer")
        return 0
    hidden = 0
    for key in ("polygon", "brush_stroke"):
        overlay = overlays.get(key)
        enabled = getattr(getattr(overlay, "events", None), "enabled", None)
        if overlay is None or enabled is None or getattr(overlay, "visible", False) is not True:
            continue
        if getattr(overlay, "enabled", False):
            continue  # its tool is on already

        def show(*_args: Any, overlay: Any = overlay) -> None:
            if overlay.enabled and not overlay.visible:
                overlay.visible = True

        overlay.visible = False
        enabled.connect(show)
        hidden += 1
    return hidden


def forget_labels_history(layer: Any, touches: Callable[[list[Any]], bool]) -> None:
    """Drop the undo/redo steps of a Labels layer for which ``touches(item)`` is true: those that
    edited a region napari-unet has just rewritten in place (a segmentation written over a slice).
    Ctrl+Z would otherwise replay such a step into the new masks (stale ids among the new objects);
    the steps of other slices stay, and so does a brush stroke in progress (napari's staged steps).

    Checked against: napari 0.9.2 (``Labels._undo_history`` and ``_redo_history``, deques of
    history items, as read by :func:`watch_labels_replay`). Degrades to: the history kept, as
    before.
    """
    layer = unwrap_proxy(layer)
    for name in ("_undo_history", "_redo_history"):
        history = getattr(layer, name, None)
        if history is None or not hasattr(history, "clear"):
            log.debug("napari's Labels has no %s: undo history kept after a segmentation", name)
            continue
        kept = [item for item in history if not touches(list(item))]
        if len(kept) != len(history):
            history.clear()
            history.extend(kept)


@contextlib.contextmanager
def opened_from(path: Any) -> Iterator[None]:
    """Layers made inside get ``path`` as their source, as File > Open gives its layers (napari
    shows it in the layer's info; it tells apart two images of one name). napari's
    ``layers._source.layer_source`` context (0.4.x to 0.9.2); nothing when it is gone."""
    try:
        from napari.layers._source import layer_source
    except ImportError:
        log.debug("napari.layers._source.layer_source is gone: layers from Load stack get no source")
        yield
        return
    with layer_source(path=str(path), reader_plugin="napari-unet"):
        yield


def open_viewers() -> list[Any]:
    """Every napari viewer of this process that is open.

    Checked against: napari 0.5.0 to 0.9.2 (``Viewer._instances``, a class-level ``WeakSet`` that
    ``Viewer.close`` leaves). Degrades to: the current viewer only (``napari.current_viewer``).
    """
    import napari

    instances = getattr(napari.Viewer, "_instances", None)
    if instances is not None:
        return list(instances)
    log.debug("napari.Viewer has no _instances: only the current viewer is known")
    current = napari.current_viewer()
    return [] if current is None else [unwrap_proxy(current)]


def main_window(viewer: Any) -> Any:
    """The viewer's Qt main window (a ``QMainWindow``), or None.

    Checked against: napari 0.5.0 to 0.9.2 (``viewer.window._qt_window``). Degrades to: None (what
    needs it is then not done: the question before closing with edits not saved).
    """
    window = getattr(getattr(unwrap_proxy(viewer), "window", None), "_qt_window", None)
    if window is None:
        log.debug("napari's window has no _qt_window")
    return window


def window_destroyed_signal(viewer: Any) -> Any:
    """The Qt ``destroyed`` signal of the viewer's main window, sent as the viewer closes (within
    ``Viewer.close``), or None.

    Checked against: napari 0.5.0 to 0.9.2 (``viewer.window._qt_window``, the ``QMainWindow``).
    Degrades to: None (callers then learn of the close from the layers leaving only).
    """
    signal = getattr(main_window(viewer), "destroyed", None)
    if signal is None:
        log.debug("napari's window has no _qt_window: its closing is not watched")
    return signal


def refresh_labels_region(layer: Any, index: tuple[int, ...], rows: slice, cols: slice) -> None:
    """Show the labels just written into ``rows, cols`` of the plane ``index`` of ``layer``.

    Where the layer shows that very plane, in 2D, from an array in memory, only the region is drawn
    again, as napari's own ``data_setitem`` does (the texture of the region, ``_slice.image.view``,
    then ``_accumulate_updated_slice`` and ``_partial_labels_refresh``): a ``layer.refresh()`` maps
    every pixel of the plane to colours again, and a field of view segmented on a 10000 x 10000
    slide held the window 0.8 s for it (the region: 2 ms). Anywhere else, or when napari changes,
    ``layer.refresh()``. Checked against napari 0.9.2 (read in 0.5.0 to 0.8.0: the same three).
    """
    import numpy as np

    try:
        data = layer.data
        shown = layer._slice.image
        plane = data[index] if index else data
        rows, cols = slice(*rows.indices(plane.shape[0])[:2]), slice(*cols.indices(plane.shape[1])[:2])
        if (isinstance(data, np.ndarray) and not getattr(layer, "multiscale", False)
                and layer._slice_input.ndisplay == 2
                and tuple(layer._slice_input.displayed) == (layer.ndim - 2, layer.ndim - 1)
                and shown.raw.shape == plane.shape and np.may_share_memory(shown.raw, plane)
                and shown.view.shape[:2] == plane.shape):
            if layer.contour == 0:
                shown.view[rows, cols] = layer.colormap._data_to_texture(plane[rows, cols])
            layer._accumulate_updated_slice(tuple(slice(i, i + 1) for i in index) + (rows, cols))
            layer._partial_labels_refresh()
            return
    except (AttributeError, TypeError, ValueError, IndexError) as exc:  # napari changed: all of it, as before
        log.debug("partial refresh of %r failed (%s); refreshing the layer", getattr(layer, "name", layer), exc)
    layer.refresh()
