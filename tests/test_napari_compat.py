"""The napari internals napari-unet relies on (``widgets/_napari_compat.py``), on a real viewer.

Each test runs one compat function the way the widgets use it and fails with a message that
names the napari attribute that changed, so that a napari upgrade that breaks one of them is
caught here, not by a user whose corrections silently stop being recorded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_unet.widgets._napari_compat import (
    canvas_size,
    edited_regions,
    forget_labels_history,
    labels_edit_history,
    layers_added_unselected,
    opened_from,
    overlays_shown_when_used,
    raise_plugin_dock,
    refresh_labels_region,
    stroke_in_progress,
    unwrap_proxy,
    view_size,
    viewer_camera,
    watch_labels_replay,
)


def _covers(key: tuple, point: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """True when ``data[key]`` includes the pixel ``point``."""
    mask = np.zeros(shape, bool)
    mask[key] = True
    return bool(mask[point])


@pytest.fixture
def labels(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((4, 24, 24), dtype=np.int32), name="masks")
    layer.brush_size = 3
    return viewer, layer


def test_unwrap_proxy_reaches_the_viewer_behind_a_plugin_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((8, 8)), name="img")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Load stack")
    handed = widget._viewer  # what napari gave the widget's constructor
    assert unwrap_proxy(handed) is viewer, (
        f"napari handed the widget a {type(handed).__name__} whose object is not reachable as "
        "`__wrapped__` (napari.utils._proxies.PublicOnlyProxy changed): widgets and trackers "
        "keyed by viewer or layer would see one object per proxy"
    )
    assert unwrap_proxy(handed.layers["img"]) is layer, "a layer reached through the proxy viewer is not unwrapped"
    assert unwrap_proxy(layer) is layer and unwrap_proxy(None) is None  # not a proxy: unchanged


def test_edited_regions_of_every_labels_edit(labels):
    _viewer, layer = labels
    items = []
    layer.events.paint.connect(lambda event: items.append(event.value))
    edits = [  # (edit, a pixel it changes, its value after)
        (lambda: layer.paint((1, 10, 10), 3), (1, 10, 10), 3),  # brush
        (lambda: layer.paint((1, 10, 10), 0), (1, 10, 10), 0),  # eraser
        (lambda: layer.fill((2, 0, 0), 5), (2, 23, 23), 5),  # fill bucket
        (lambda: layer.paint_polygon([(3, 2, 2), (3, 2, 12), (3, 12, 12)], 4), (3, 3, 10), 4),
        (lambda: layer.data_setitem((np.array([0]), np.array([5]), np.array([6])), 7), (0, 5, 6), 7),
    ]
    for edit, point, value in edits:
        before = len(items)
        edit()
        assert layer.data[point] == value  # the edit itself happened
        assert len(items) == before + 1, "napari's Labels.events.paint no longer fires once per edit"
        keys = edited_regions(items[-1])
        assert keys and all(len(k) == layer.ndim for k in keys), (
            f"napari's Labels history item {items[-1]!r} has atoms that are neither a "
            "`_MaskedPaintAtom` with `slice_key` nor an `(indices, old_values, new_values)` tuple"
        )
        assert any(_covers(k, point, layer.data.shape) for k in keys), (
            f"the edited pixel {point} is outside the regions {keys} read from napari's history atoms"
        )
    assert edited_regions(None) == [] and edited_regions([object()]) == []  # unknown atoms: skipped


def test_watch_labels_replay_sees_undo_redo_and_the_key_bindings(labels):
    from app_model.types import KeyCode, KeyMod
    from napari.layers import Labels
    from napari.utils.key_bindings import coerce_keybinding

    _viewer, layer = labels
    assert hasattr(layer, "_undo_history") and hasattr(layer, "_redo_history"), (
        "napari's Labels no longer has `_undo_history` / `_redo_history`: undo and redo of a "
        "correction cannot tell which slice they change"
    )
    seen = []
    unwatch = watch_labels_replay(layer, lambda item, _undo: seen.append(item))
    layer.paint((2, 12, 12), 9)
    layer.undo()
    assert layer.data[2, 12, 12] == 0
    assert len(seen) == 1 and any(_covers(k, (2, 12, 12), layer.data.shape) for k in edited_regions(seen[0])), (
        f"the item read from napari's `Labels._undo_history[-1]` before undo ({seen}) is not the edit undone"
    )
    layer.redo()
    assert layer.data[2, 12, 12] == 9
    assert len(seen) == 2 and any(_covers(k, (2, 12, 12), layer.data.shape) for k in edited_regions(seen[1])), (
        f"the item read from napari's `Labels._redo_history[-1]` before redo ({seen[1:]}) is not the edit redone"
    )
    layer.redo()  # nothing left to redo: the callback hears an empty item
    assert seen[-1] == []

    # Ctrl+Z and Ctrl+Shift+Z, as napari binds them on Labels, go through layer.undo()/redo()
    for keys, value in ((KeyMod.CtrlCmd | KeyCode.KeyZ, 0), (KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ, 9)):
        handler = Labels.class_keymap.get(coerce_keybinding(keys))
        assert handler is not None, f"napari's Labels.class_keymap no longer binds {coerce_keybinding(keys)}"
        before = len(seen)
        handler(layer)
        assert layer.data[2, 12, 12] == value
        assert len(seen) == before + 1, (
            f"napari's {coerce_keybinding(keys)} binding on Labels ({handler.__name__}) no longer calls "
            "layer.undo()/layer.redo(): key presses would bypass the corrected-slices tracker"
        )

    unwatch()
    assert "undo" not in vars(layer) and "redo" not in vars(layer)  # napari's own methods again
    layer.undo()
    assert layer.data[2, 12, 12] == 0 and len(seen) == 5


def test_canvas_size_and_camera_follow_the_window(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Load stack")
    proxy = widget._viewer
    sizes = []
    for width in (900, 1300):
        viewer.window.resize(width, 800)
        qtbot.wait(200)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # no private access through the proxy
            warnings.simplefilter("error", DeprecationWarning)
            size = canvas_size(proxy)
            camera = viewer_camera(proxy)
        assert size is not None, (
            "napari exposes the canvas size neither as `viewer.canvas.size` (0.9) nor as "
            "`ViewerModel._canvas_size` (0.5-0.8): the field-of-view scope segments the whole plane"
        )
        assert 100 < size[0] < 800 and 100 < size[1] < width, f"canvas size {size} in a {width}x800 window"
        assert size == canvas_size(viewer)
        assert unwrap_proxy(camera) is unwrap_proxy(viewer_camera(viewer))
        sizes.append(size)
    assert sizes[1][1] > sizes[0][1], f"canvas width did not follow the window: {sizes}"
    camera = viewer_camera(viewer)
    camera.zoom = 2.5
    assert viewer_camera(viewer).zoom == pytest.approx(2.5) and len(camera.center) >= 2


def test_raise_plugin_dock_brings_a_tab_to_the_front(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1300, 800)
    docks = {}
    for name in ("Load stack", "Fine-tune"):
        docks[name], _widget = viewer.window.add_plugin_dock_widget("napari-unet", name, tabify=True)
    qtbot.wait(100)
    dock = raise_plugin_dock(viewer, "napari-unet", "Load stack")
    assert dock is docks["Load stack"], (
        "napari's Window.add_plugin_dock_widget no longer returns the existing dock of a widget already docked"
    )
    assert isinstance(dock, QDockWidget), f"add_plugin_dock_widget returned a {type(dock).__name__}, not a QDockWidget"
    qtbot.waitUntil(lambda: not dock.visibleRegion().isEmpty(), timeout=3000)
    assert docks["Fine-tune"].visibleRegion().isEmpty()  # tabified behind it
    raise_plugin_dock(viewer, "napari-unet", "Fine-tune")
    qtbot.waitUntil(lambda: not docks["Fine-tune"].visibleRegion().isEmpty(), timeout=3000)
    assert dock.visibleRegion().isEmpty()


def test_labels_edit_history_lists_the_edits_that_can_be_undone(labels):
    _viewer, labels = labels
    labels.paint((1, 5, 5), 7)
    labels.paint((2, 5, 5), 8)
    labels.undo()
    history = labels_edit_history(labels)
    assert len(history) == 1, "napari's Labels._undo_history changed"
    assert any(_covers(key, (1, 5, 5), labels.data.shape) for key in edited_regions(history[0]))


def test_stroke_in_progress_is_the_edit_held_back_while_the_mouse_is_down(labels):
    _viewer, labels = labels
    assert stroke_in_progress(labels) == []
    with labels.block_history():
        labels.paint((3, 5, 5), 9)
        stroke = stroke_in_progress(labels)
        assert stroke, "napari's Labels._block_history/_staged_history changed"
        assert any(_covers(key, (3, 5, 5), labels.data.shape) for key in edited_regions(stroke))
    assert stroke_in_progress(labels) == []


def test_layers_added_unselected_leaves_the_selection_alone(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8)), name="image")
    assert viewer.layers.selection.active is image
    with layers_added_unselected(viewer):
        masks = viewer.add_labels(np.zeros((8, 8), np.int32), name="masks")
    assert viewer.layers.selection.active is image, (
        "napari selected a layer added inside layers_added_unselected: "
        "SelectableEventedList._activate_on_insert no longer does what it did"
    )
    assert masks not in viewer.layers.selection
    later = viewer.add_labels(np.zeros((8, 8), np.int32), name="later")
    assert viewer.layers.selection.active is later  # napari's own behaviour is back after the block


def test_overlays_are_built_when_their_tool_is_first_used(make_napari_viewer, MouseEvent):  # noqa: N803
    from napari.layers import Labels
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="image")
    layer = Labels(np.zeros((32, 32), np.int32), name="masks")
    polygon, brush = (layer._overlays[key] for key in ("polygon", "brush_stroke"))
    assert overlays_shown_when_used(layer) == 2, (
        "a new Labels layer has no visible 'polygon' and 'brush_stroke' with an 'enabled' event in Layer._overlays")
    viewer.add_layer(layer)
    built = viewer.window._qt_viewer.canvas._layer_overlay_to_visual[layer]
    assert polygon not in built and brush not in built, (
        "napari built the visuals of hidden overlays with the layer (VispyCanvas._update_layer_overlays "
        "no longer waits for their visible event): adding a Labels layer is one long pause again"
    )
    layer.mode = "erase"
    assert not polygon.visible and not brush.visible  # the eraser uses neither
    layer.mode = "paint"  # napari enables the brush outline for the brush: shown, built
    assert brush.enabled and brush.visible and built[brush] is not None and not polygon.visible
    layer.selected_label, layer.brush_size = 3, 4
    for callbacks, kind, position, dragging in ((mouse_press_callbacks, "mouse_press", (4, 4), False),
                                               (mouse_move_callbacks, "mouse_move", (4, 20), True),
                                               (mouse_release_callbacks, "mouse_release", (4, 20), False)):
        callbacks(layer, ReadOnlyWrapper(MouseEvent(type=kind, is_dragging=dragging, position=position,
                                                    view_direction=None, dims_displayed=(0, 1), dims_point=(0, 0))))
    assert layer.data[4, 4] == 3 and layer.data[4, 12] == 3 and layer.data[4, 20] == 3  # the brush paints a stroke
    layer.mode = "polygon"
    assert polygon.enabled and polygon.visible and built[polygon] is not None
    layer.mode = "pan_zoom"
    assert polygon.visible and brush.visible  # shown for good (napari draws them only while enabled)


def test_opened_from_gives_layers_their_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    with opened_from(tmp_path / "img.tif"):
        layer = viewer.add_image(np.zeros((4, 4)))
    after = viewer.add_image(np.zeros((4, 4)))
    assert str(layer.source.path) == str(tmp_path / "img.tif"), "napari.layers._source.layer_source changed"
    assert after.source.path is None


def test_forget_labels_history_drops_only_the_steps_that_touch_a_region(labels):
    _viewer, layer = labels
    layer.paint((1, 12, 12), 5)
    layer.paint((3, 12, 12), 6)
    with layer.block_history():  # a brush stroke in progress (napari's staged steps) is left alone
        layer.paint((2, 12, 12), 7)
        layer.data[1] = 9  # slice 1 rewritten in place, as a segmentation is
        forget_labels_history(layer, lambda item: any(_covers(key, (1, 12, 12), layer.data.shape)
                                                      for key in edited_regions(item)))
    layer.undo()  # the stroke, committed after the block
    assert layer.data[2, 12, 12] == 0, "forget_labels_history dropped napari's staged steps of a stroke"
    layer.undo()  # slice 3's edit: kept
    assert layer.data[3, 12, 12] == 0
    layer.undo()  # nothing left: slice 1's step was dropped
    assert (layer.data[1] == 9).all(), "Labels._undo_history no longer holds the steps undo() replays"


def test_no_napari_internals_outside_the_compat_module():
    import re
    from pathlib import Path

    import napari_unet

    internal = re.compile(
        r"(viewer|window|layer|layers|camera|dims|canvas|scene)\._[a-z]|\._qt_|\bqt_viewer\b|__wrapped__"
        r"|_undo_history|_redo_history|_canvas_size|_dock_widgets"
        r"|\bnapari(\.[a-z]\w*)*\._[a-z]"  # a private napari module
    )
    package = Path(napari_unet.__file__).parent
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "_napari_compat.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if internal.search(line)
    ]
    assert len(list(package.rglob("*.py"))) > 20  # the scan did read the package
    assert not found, "napari internals used outside widgets/_napari_compat.py:\n" + "\n".join(found)


def test_adding_a_layer_does_not_remake_the_docked_widgets_radio_buttons(make_napari_viewer):
    """napari resets the choices of every docked widget when a layer is added; magicgui's radio
    buttons then delete every button and make it anew, and Qt lays the dock out again (80-190 ms
    a widget): the fixed ones of Load stack, Segment and Correct are left as they are."""
    from qtpy.QtWidgets import QRadioButton

    viewer = make_napari_viewer()
    widgets = [viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
               for name in ("Load stack", "Segment", "Correct")]
    before = [w.native.findChildren(QRadioButton) for w in widgets]
    assert all(len(buttons) >= 2 for buttons in before)
    viewer.add_image(np.zeros((16, 16)), name="image")
    viewer.add_labels(np.zeros((16, 16), np.int32), name="image masks")
    after = [w.native.findChildren(QRadioButton) for w in widgets]
    assert after == before  # the same button objects, none made anew
    segment = widgets[1]
    assert segment._image_combo.value is viewer.layers["image"]  # lists that follow the layers still do


def test_refresh_labels_region_draws_only_the_region_of_the_plane_shown(make_napari_viewer, data_dir, qtbot):
    """A field of view written into the plane shown is drawn again alone (napari's partial refresh:
    ``_slice.image.view``, ``_accumulate_updated_slice``, ``_partial_labels_refresh``; a whole
    ``refresh()`` of a slide held the window 0.8 s); another plane, or the 3D view, refreshes all."""
    import tifffile

    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[:3].astype(np.int32)
    viewer = make_napari_viewer(show=True)  # (a layer never drawn has no texture: napari refreshes it all)
    layer = viewer.add_labels(np.zeros_like(truth), name="masks")
    viewer.dims.set_current_step(0, 1)
    qtbot.wait(300)
    updates, whole = [], []
    layer.events.labels_update.connect(lambda event: updates.append(tuple(event.offset)))
    layer.events.set_data.connect(lambda _event: whole.append(True))
    rows, cols = slice(40, 120), slice(60, None)
    layer.data[1, rows, cols] = truth[1, rows, cols]
    whole.clear()  # (the slider moved: napari's own refresh)
    refresh_labels_region(layer, (1,), rows, cols)
    shown = layer._slice.image
    assert updates == [(40, 60)] and not whole, "napari's _partial_labels_refresh no longer emits labels_update"
    np.testing.assert_array_equal(shown.view[rows, cols], layer.colormap._data_to_texture(truth[1, rows, cols]))
    layer.data[2, rows, cols] = truth[2, rows, cols]  # a plane not shown
    refresh_labels_region(layer, (2,), rows, cols)
    assert whole and updates == [(40, 60)]
    viewer.dims.ndisplay = 3
    whole.clear()
    refresh_labels_region(layer, (1,), rows, cols)
    assert whole and updates == [(40, 60)]


def test_view_size_is_one_tile_in_grid_mode(make_napari_viewer, qtbot, data_dir):
    """With View > Grid on, each layer is shown in a tile of its own (napari 0.9: a view box each, one
    camera): "Visible field of view" segmented what the whole canvas would show, twice the tile."""
    import tifffile

    from napari_unet.widgets._base import visible_region

    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:2]
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    image = viewer.add_image(frames[0], name="a")
    viewer.add_image(frames[1], name="b")
    qtbot.wait(200)
    assert view_size(viewer) == canvas_size(viewer)
    viewer.canvas.grid.enabled = True
    viewer.camera.center, viewer.camera.zoom = (117, 117), 4.0
    qtbot.wait(300)
    tile = viewer.window._qt_viewer.canvas.grid_views[0].size  # (width, height) of napari's view box
    height, width = view_size(viewer)
    assert abs(width - tile[0]) <= 2 and abs(height - tile[1]) <= 2, "napari's grid no longer splits the canvas"
    rows, cols = visible_region(viewer, image, frames[0].shape)
    assert abs((cols.stop - cols.start) - tile[0] / 4) <= 3 and abs((rows.stop - rows.start) - tile[1] / 4) <= 3
