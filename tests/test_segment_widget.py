"""The Segment dock widget in a real napari viewer: scopes, workers, protection of corrections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.widgets._base import canvas_size, current_plane_index, visible_region
from napari_unet.widgets._corrections import CORRECTED_KEY, CorrectedSlices
from napari_unet.widgets._masks import corrected_planes
from napari_unet.widgets.segment import (
    SCOPE_SLICE,
    SCOPE_STACK,
    SCOPE_VIEW,
    SegmentWidget,
    masks_layer_name,
)


@pytest.fixture
def c2c12_stack(data_dir) -> np.ndarray:
    """Four 96x96 frames of the real C2C12 phase-contrast time-lapse (CC-BY 4.0)."""
    return tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:4, :96, :96]


@pytest.fixture
def widget(make_napari_viewer, tiny_model_path):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(widget, SegmentWidget)
    widget.add_model_file(tiny_model_path)
    return viewer, widget


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _segment(w, qtbot, image, scope=None):
    """Segment ``image`` with settings under which the tiny untrained model finds objects."""
    w.reset_choices()
    w._image_combo.value = image
    w._threshold.value = 0.05
    w._min_size.value = 0
    if scope is not None:
        w._scope.value = scope
    w._run_button.clicked.emit()
    _wait(qtbot, w)


def _segment_stack_as_set(w, qtbot, image):
    """Segment the whole stack ``image`` with the model's own settings (a real model's: unlike
    :func:`_segment`, nothing lowered for the tiny one)."""
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    _wait(qtbot, w, timeout=120_000)


def _run_stack_doing_after_first_plane(w, image, action) -> list:
    """Start a whole-stack run (settings under which the tiny model finds objects) and call
    ``action()`` once, right after the widget wrote the first plane; returns the list that then
    holds that plane's index."""
    from napari_unet.core.predict import PlaneResult

    w.reset_choices()
    w._image_combo.value = image
    w._threshold.value, w._min_size.value, w._scope.value = 0.05, 0, SCOPE_STACK
    w._run_button.clicked.emit()
    done: list = []

    def after_first_plane(item):
        if isinstance(item, PlaneResult) and not done:
            action()
            done.append(item.index)

    w._worker.yielded.connect(after_first_plane)  # connected after the widget's own: runs after the write
    return done


def test_widget_docks_and_shows_device(widget):
    viewer, w = widget
    assert w._device_label.value.startswith(("CPU", "GPU"))
    assert w._model_combo.value.endswith("tiny.pt")
    assert w._scope.value == SCOPE_SLICE


def test_a_slow_device_description_comes_from_a_thread_and_the_latest_wins(widget, qtbot):
    """With CUDA's torch, describing the GPU starts CUDA: a second or more of a frozen window as a dock
    opened (its Device line). That is asked from a thread; the line says so meanwhile, and a newer
    description (another device chosen) is not overwritten by an older one arriving late."""
    import threading

    from napari_unet.core.device import describing_is_quick
    from napari_unet.widgets._base import show_when_known

    viewer, w = widget
    assert describing_is_quick("cpu")
    release = threading.Event()
    on = []

    def slow() -> str:
        on.append(threading.current_thread() is threading.main_thread())
        release.wait(10)
        return "GPU: slow one"

    show_when_known(w._device_label, slow, quick=False)
    assert w._device_label.value == "finding the GPU…"
    qtbot.waitUntil(lambda: bool(on), timeout=5_000)
    assert on == [False]  # (asked off the main thread)
    show_when_known(w._device_label, lambda: "CPU, 1 thread", quick=True)  # chosen since: said at once
    release.set()
    qtbot.wait(200)
    assert w._device_label.value == "CPU, 1 thread"
    show_when_known(w._device_label, lambda: 1 / 0, quick=False)
    qtbot.waitUntil(lambda: w._device_label.value.startswith("unknown (division by zero"), timeout=5_000)
    from napari_unet.widgets import _base

    assert not _base._RELAYS  # (each held until its text came, then let go on the main thread)


def test_current_slice_writes_only_that_slice(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.dims.set_current_step(0, 2)
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert masks.data.shape == c2c12_stack.shape and masks.data.dtype == np.int32
    assert masks.data[[0, 1, 3]].max() == 0  # only slice 2 was segmented
    assert w._status.value.startswith("Done")
    assert w.last_run_seconds > 0
    # made apart from the layer, in later turns of the event loop: shown, and ready for the brush
    qtbot.waitUntil(lambda: masks.visible and viewer.layers.selection.active is masks, timeout=3000)
    # its editing overlays (polygon, brush outline) are built when their tool is first used
    assert not masks._overlays["brush_stroke"].visible
    masks.mode = "paint"
    assert masks._overlays["brush_stroke"].visible and not masks._overlays["polygon"].visible


def test_multiscale_image_is_segmented_at_full_resolution(widget, qtbot, c2c12_stack, notifications):
    """A pyramid (OME-Zarr / pyramidal OME-TIFF, opened lazily) is segmented from its finest level."""
    viewer, w = widget
    image = viewer.add_image([c2c12_stack, c2c12_stack[:, ::2, ::2]], multiscale=True, name="pyramid")
    viewer.dims.set_current_step(0, 1)
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("pyramid")]
    assert masks.data.shape == c2c12_stack.shape
    assert w._status.value.startswith("Done"), w._status.value
    assert masks.data[1].max() > 0 and masks.data[[0, 2, 3]].max() == 0
    _segment(w, qtbot, image, SCOPE_STACK)
    assert all(masks.data[t].max() > 0 for t in range(len(c2c12_stack)))
    assert not [m for m in notifications if "failed" in m.lower()]


def test_masks_of_a_time_lapse_keep_its_axes_and_save_as_one(widget, qtbot, c2c12_stack, tmp_path, notifications):
    """The masks layer takes its image's axis labels and units: one calibration for napari (no
    "inconsistent units" warning) and a time-lapse saved as a time-lapse, not as a z-stack."""
    import napari

    viewer, w = widget
    path = tmp_path / "tl.tif"
    tifffile.imwrite(path, c2c12_stack, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "TYX", "finterval": 300, "unit": "um"})
    (image,) = viewer.open(path, plugin="napari-unet")
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name(image.name)]
    assert tuple(masks.axis_labels) == tuple(image.axis_labels) == ("t", "y", "x")
    assert tuple(masks.units) == tuple(image.units)
    assert not [m for m in notifications if "units" in m.lower()]
    (saved,) = napari.save_layers(str(tmp_path / "tl_masks.tif"), [masks], plugin="napari-unet")
    with tifffile.TiffFile(saved) as tif:
        assert tif.series[0].axes == "TYX"
    (reopened,) = viewer.open(saved, plugin="napari-unet")
    assert tuple(reopened.axis_labels) == ("t", "y", "x")
    np.testing.assert_allclose(reopened.scale, image.scale)


def test_corrected_slice_is_never_overwritten_without_consent(widget, qtbot, c2c12_stack, notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    masks = viewer.add_labels(np.zeros(c2c12_stack.shape, np.int32), name=masks_layer_name("c2c12"))
    masks.data[1, 10:20, 10:20] = 7
    masks.metadata[CORRECTED_KEY] = [[1]]
    before = masks.data.copy()
    _segment(w, qtbot, image, SCOPE_STACK)
    assert np.array_equal(masks.data[1], before[1])  # the correction survived
    assert any("Skipped a slice you corrected (slice 1)" in m for m in notifications)
    # explicit consent: the corrected slice is replaced
    w._overwrite.value = True
    viewer.dims.set_current_step(0, 1)
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    assert not np.array_equal(masks.data[1], before[1])


def test_overwriting_the_field_of_view_of_a_corrected_slice_keeps_the_rest_of_it_corrected(
        make_napari_viewer, qtbot, tiny_model_path, c2c12_stack, notifications):
    """With Overwrite ticked, the visible field of view of a corrected slice is replaced, but the
    slice stays corrected: the user's corrections outside the field are kept from later runs (and
    stay a training example)."""
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.add_model_file(tiny_model_path)
    image = viewer.add_image(np.tile(c2c12_stack, (1, 2, 2)), name="c2c12")  # 4 x 192 x 192
    masks = viewer.add_labels(np.zeros(image.data.shape, np.int32), name=masks_layer_name("c2c12"))
    masks.data[1, 170:180, 170:180] = 500  # the user's cell, far from the field of view below
    masks.metadata[CORRECTED_KEY] = [[1]]
    viewer.dims.set_current_step(0, 1)
    viewer.camera.center = (30, 30)
    viewer.camera.zoom = 8
    w._overwrite.value = True
    before = masks.data[1].copy()
    _segment(w, qtbot, image, SCOPE_VIEW)
    assert not np.array_equal(masks.data[1], before)  # the field of view was replaced, with consent
    assert (masks.data[1, 170:180, 170:180] == 500).all()
    assert corrected_planes(masks) == {(1,)}
    assert any("the rest of it is still yours" in m for m in notifications)
    w._overwrite.value = False
    viewer.camera.zoom = 1
    _segment(w, qtbot, image, SCOPE_STACK)  # an ordinary run afterwards leaves the slice alone
    assert (masks.data[1, 170:180, 170:180] == 500).all()
    assert masks.data[2].max() > 0


def test_renaming_the_image_renames_its_masks_and_keeps_them(widget, qtbot, c2c12_stack):
    """The user names the image after segmenting and correcting it: its masks follow the name
    (Segment and Fine-tune find them by it), so the next slice lands beside the corrected one and
    that slice stays a training example, instead of a new, empty masks layer taking over."""
    viewer, w = widget
    _dock, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    image = viewer.add_image(c2c12_stack, name="img_003")
    viewer.dims.set_current_step(0, 0)
    _segment(w, qtbot, image, SCOPE_SLICE)
    masks = viewer.layers[masks_layer_name("img_003")]
    masks.paint((0, 40, 40), 321)  # the user corrects slice 0
    image.name = "control"
    assert masks.name == masks_layer_name("control")
    viewer.dims.set_current_step(0, 1)
    _segment(w, qtbot, image, SCOPE_SLICE)
    assert [layer.name for layer in viewer.layers] == ["control", masks_layer_name("control")]
    assert masks.data[1].max() > 0 and (masks.data[0] == 321).any()
    assert corrected_planes(masks) == {(0,)}
    assert ft.corrected_panel._labels_combo.value is masks
    masks.name = "my outlines"  # masks the user named themselves keep their name
    image.name = "control 2"
    assert masks.name == "my outlines"


def test_a_hyperstack_layer_segments_its_current_slice_and_one_channel_of_the_stack(widget, qtbot, c2c12_stack):
    """A (time, channel, z, y, x) layer, as napari opens an ImageJ hyperstack: the current slice
    segments, and the whole stack with a channel axis chosen segments that channel's planes only."""
    viewer, w = widget
    data = np.stack([np.stack([c2c12_stack[:2], c2c12_stack[2:]])] * 2)  # (2, 2, 2, 96, 96)
    image = viewer.add_image(data, name="hyper")
    viewer.dims.set_current_step(1, 1)  # the second channel
    _segment(w, qtbot, image, SCOPE_SLICE)
    masks = viewer.layers[masks_layer_name("hyper")]
    assert masks.data.shape == data.shape
    segmented = {tuple(i) for i in np.argwhere(masks.data.any(axis=(-2, -1)))}
    assert segmented == {tuple(viewer.dims.current_step[:3])}
    w._channel_axis.value = 1
    _segment(w, qtbot, image, SCOPE_STACK)
    segmented = {tuple(i) for i in np.argwhere(masks.data.any(axis=(-2, -1)))}
    assert segmented == {(t, 1, z) for t in range(2) for z in range(2)}
    assert w._status.value.startswith("Done")
    # a layer whose axis labels name its channels: their axis is chosen (and named in the list)
    named = viewer.add_image(data, name="named", axis_labels=("t", "c", "z", "y", "x"))
    w.reset_choices()
    w._image_combo.value = named
    assert w._channel_axis.value == 1 and "axis 1 'c' (size 2)" in [c[0] for c in w._channel_axis_choices()]
    w._image_combo.value = image
    assert w._channel_axis.value is None


def test_a_channel_axis_named_by_an_image_open_before_the_dock_is_chosen(make_napari_viewer):
    """The usual order: the file opened, then Segment docked. The image is the first value of its list,
    which never "changed": Channel axis stayed None, and a whole-stack run of a TCZYX layer segmented
    the membrane channel with the nuclei model too, unsaid."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 2, 3, 32, 32), np.uint8), name="tczyx", axis_labels=("t", "c", "z", "y", "x"))
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert w._image_combo.value.name == "tczyx" and w._channel_axis.value == 1


def test_masks_of_a_rotated_image_are_drawn_over_it_and_its_field_of_view_is_the_one_shown(
        make_napari_viewer, qtbot, tiny_model_path, c2c12_stack):
    """An image with a rotation (and shear, scale) from its reader or a script: its masks layer takes
    the same transform (brush and clicks land on the cells shown), and the field of view is the part
    of the rotated image on the canvas."""
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.add_model_file(tiny_model_path)
    image = viewer.add_image(np.tile(c2c12_stack[0], (2, 2)), name="turned", rotate=45, scale=(2, 2), shear=[0.2])
    _segment(w, qtbot, image, SCOPE_SLICE)
    masks = viewer.layers[masks_layer_name("turned")]
    np.testing.assert_allclose(masks._data_to_world.affine_matrix, image._data_to_world.affine_matrix, atol=1e-9)
    target = np.array([30.0, 150.0])  # a data point of the image, far from its centre
    viewer.camera.center = tuple(image.data_to_world(target))
    viewer.camera.zoom = 4
    rows, cols = visible_region(viewer, image, image.data.shape)
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < image.data.size / 4
    half = np.asarray(canvas_size(viewer), float) / viewer.camera.zoom / 2
    for dy, dx in ((0, 0), (-0.9, -0.9), (-0.9, 0.9), (0.9, -0.9), (0.9, 0.9)):  # the centre and the corners shown
        y, x = np.clip(image.world_to_data(np.asarray(viewer.camera.center[-2:]) + half * (dy, dx)),
                       0, np.asarray(image.data.shape) - 1)  # (the region is clipped to the plane)
        assert rows.start <= y < rows.stop and cols.start <= x < cols.stop


def test_the_field_of_view_is_the_part_shown_after_napari_transposes_the_view(make_napari_viewer):
    """The camera's centre and the canvas are in the order of the axes on screen: after napari's
    transpose button (X down, Y across) the field of view was read with Y and X swapped (masks
    written where the user did not look, or "not in view" for a wide image)."""
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((100, 400), np.float32), name="wide")
    for transposed in (False, True):
        if transposed:
            viewer.dims.transpose()
        camera = viewer.camera
        camera.zoom = 6
        camera.center = (300, 40) if transposed else (40, 300)  # data row 40, column 300 in the middle
        rows, cols = visible_region(viewer, image, image.data.shape)
        assert rows.start <= 40 < rows.stop and cols.start <= 300 < cols.stop, transposed
        half = np.asarray(canvas_size(viewer), float) / camera.zoom / 2  # (on screen: down, across)
        shown_rows, shown_cols = (half[1], half[0]) if transposed else (half[0], half[1])
        for got, centre, half_shown, size in ((rows, 40, shown_rows, 100), (cols, 300, shown_cols, 400)):
            assert abs(got.start - np.clip(centre - half_shown, 0, size)) <= 2, (transposed, got)
            assert abs(got.stop - np.clip(centre + half_shown, 0, size)) <= 2, (transposed, got)


def test_a_sheared_stack_is_segmented_and_cut_where_napari_shows_it(make_napari_viewer, qtbot):
    """napari slices a stack through the block of its data-to-world transform of the axes not shown,
    and draws the plane through the block of those shown: the current slice and the field of view
    followed the whole transform, so under a shear that mixes them (deskewed light-sheet data, an
    oblique plane) another slice was segmented (world z 10 shown, slice 1 taken) and other rows cut."""
    from napari_unet.widgets._napari_compat import viewer_camera

    viewer = make_napari_viewer(show=True)
    stack = np.zeros((31, 244, 228), np.float32)
    zy = np.eye(4)
    zy[0, 1] = 0.3  # world z = z + 0.3 y
    layer = viewer.add_image(stack, affine=zy, name="zy")
    for z in (3, 10, 20):
        viewer.dims.set_point(0, float(z))
        assert current_plane_index(viewer, layer) == (z,)
    viewer.layers.remove(layer)
    deskew = np.eye(4)
    deskew[1, 0] = 3.0  # world y = y + 3 z
    layer = viewer.add_image(stack, affine=deskew, name="deskew")
    camera = viewer_camera(viewer)
    for z in (5, 25):
        viewer.dims.set_current_step(0, z)
        camera.center = tuple(np.asarray(layer.data_to_world((z, 120, 110)))[1:])
        camera.zoom = 6
        qtbot.waitUntil(lambda: np.ptp(np.asarray(layer.corner_pixels)[:, 1]) < 200, timeout=5000)
        qtbot.wait(200)
        shown = np.asarray(layer.corner_pixels)[:, 1:]  # napari's own: the data rows and columns on the canvas
        rows, cols = visible_region(viewer, layer, stack.shape[1:])
        assert abs(rows.start - shown[0, 0]) <= 2 and abs(rows.stop - shown[1, 0]) <= 2, (z, rows, shown)
        assert abs(cols.start - shown[0, 1]) <= 2 and abs(cols.stop - shown[1, 1]) <= 2, (z, cols, shown)


def test_a_projected_view_says_that_one_slice_is_segmented(widget, qtbot, c2c12_stack, notifications):
    """napari's thick slicing shows the maximum (or mean) of several slices: Segment takes the one
    slice where the sliders stand, and now says so."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12", projection_mode="max")
    viewer.dims.thickness = (3, 1, 1)
    viewer.dims.set_current_step(0, 2)
    _segment(w, qtbot, image, SCOPE_SLICE)
    assert any("projection of several slices" in m and "slice 2 alone" in m for m in notifications)
    masks = viewer.layers[masks_layer_name("c2c12")].data
    assert masks[2].any() and not masks[[0, 1, 3]].any()


def test_a_run_that_cannot_start_leaves_no_empty_masks_layer(widget, qtbot, c2c12_stack, notifications):
    """The field of view is off the image, or the viewer shows a slice a shorter stack lacks: the
    run is refused with a notification, and the masks layer it had made is removed again."""
    viewer, w = widget
    viewer.add_image(np.zeros((8, 96, 96), np.float32), name="long")
    short = viewer.add_image(c2c12_stack, name="short")  # 4 slices
    viewer.dims.set_current_step(0, 6)
    _segment(w, qtbot, short, SCOPE_SLICE)
    assert w._status.value.startswith("Not started") and masks_layer_name("short") not in viewer.layers
    assert "(its axis 0 = 6; it has 4 along that axis)" in w._status.value  # not napari's label "-3"
    viewer.dims.set_current_step(0, 1)
    viewer.camera.center = (0, 5000, 5000)
    _segment(w, qtbot, short, SCOPE_VIEW)
    assert any("not in view" in m for m in notifications)
    assert masks_layer_name("short") not in viewer.layers


def test_in_the_3d_view_the_slice_at_the_sliders_is_segmented_whole_and_said(widget, qtbot, c2c12_stack,
                                                                              notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.dims.set_current_step(0, 2)
    viewer.dims.ndisplay = 3
    _segment(w, qtbot, image, SCOPE_VIEW)
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert [t for t in range(len(c2c12_stack)) if masks.data[t].any()] == [2]
    assert w.kept_result(masks, (2,)).region == (slice(0, 96), slice(0, 96))  # the whole plane
    assert any("The viewer shows 3D: slice 2" in m and "whole" in m for m in notifications)


def test_renaming_the_masks_layer_mid_run_keeps_writing_into_it(widget, qtbot, c2c12_stack, notifications):
    """The user renames "<image> masks" while the whole stack runs: the rest of the stack still
    lands in that layer (under its new name), and re-thresholding follows it."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    renamed = _run_stack_doing_after_first_plane(
        w, image, lambda: setattr(viewer.layers[masks_layer_name("c2c12")], "name", "my masks"))
    _wait(qtbot, w)
    assert renamed == [(0,)]
    masks = viewer.layers["my masks"]
    assert all(masks.data[t].max() > 0 for t in range(len(c2c12_stack)))
    assert w._status.value.startswith("Done")
    w._min_size.value = 10_000  # re-applied to the kept probabilities of the renamed layer
    _wait(qtbot, w)
    assert masks.data.max() == 0  # no object of 96 x 96 planes is that large


def test_a_label_picked_during_a_run_stays_the_brushs_when_it_ends(widget, qtbot, c2c12_stack):
    """The user picks a cell of a finished slice to grow it while the stack runs: the run's end chose
    the next free id for the brush, and the next stroke drew a second cell beside the first. An id
    picked that the run writes elsewhere later is replaced as before (one cell of two)."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    masks = viewer.add_labels(np.zeros(c2c12_stack.shape, np.int32), name=masks_layer_name("c2c12"))
    masks.selected_label = 999  # (the brush's label before the run: anything but the cell picked)
    picked = []

    def pick_a_cell_of_the_slice_shown():
        masks = viewer.layers[masks_layer_name("c2c12")]
        viewer.dims.set_current_step(0, 0)
        picked.append(int(masks.data[0].max()))
        masks.selected_label = picked[0]

    done = _run_stack_doing_after_first_plane(w, image, pick_a_cell_of_the_slice_shown)
    _wait(qtbot, w)
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert done and picked[0] > 0 and masks.selected_label == picked[0]
    # untouched: the next free id, as before; picked, but an id of another slice only: the next free id too
    masks.data[2, :3, :3] = 500
    w._scope.value = SCOPE_SLICE  # (slice 0, shown)
    for chosen in (None, 500):
        w._run_button.clicked.emit()
        if chosen is not None:
            masks.selected_label = chosen
        _wait(qtbot, w)
        assert masks.selected_label == masks.data.max() + 1 == 501


def test_a_cell_half_painted_on_a_corrected_slice_keeps_its_id_through_a_run_of_the_others(widget, qtbot,
                                                                                             c2c12_stack):
    """New object, half a cell painted on slice 0, then Whole stack (slice 0 kept as corrected): the
    brush's id was replaced at the run's end, and the cell was finished with another (one cell, two ids).
    Slices number their objects from 1: the run's ids elsewhere are other slices' cells."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.dims.set_current_step(0, 0)
    _segment(w, qtbot, image, SCOPE_SLICE)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.data[:] = 0  # (the tiny model's one object a slice, gone: the new cell is id 1)
    new = int(masks.data.max()) + 1
    masks.selected_label = new
    masks.paint((0, 5, 5), new)  # half a cell: slice 0 corrected
    _segment(w, qtbot, image, SCOPE_STACK)
    assert masks.data[1:].max() >= new  # (the run's ids of other slices reach it)
    assert masks.selected_label == new and (masks.data[0] == new).any()


def test_min_size_moved_during_a_run_is_applied_when_it_ends(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    # no object of these 96 x 96 planes is 10,000 pixels large
    moved = _run_stack_doing_after_first_plane(w, image, lambda: setattr(w._min_size, "value", 10_000))
    _wait(qtbot, w)
    assert moved
    masks = viewer.layers[masks_layer_name("c2c12")]
    qtbot.waitUntil(lambda: w._worker is None and masks.data.max() == 0, timeout=30_000)


def test_cancel_after_moving_min_size_says_cancelled_and_what_was_applied(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")

    def move_then_cancel():
        w._min_size.value = 10_000
        w.cancel()

    assert _run_stack_doing_after_first_plane(w, image, move_then_cancel) is not None
    masks = viewer.layers[masks_layer_name("c2c12")]
    qtbot.waitUntil(lambda: w._worker is None and "applied" in w._status.value, timeout=30_000)
    assert w._status.value.startswith("Cancelled after") and masks.data.max() == 0
    w._min_size.value = 0  # a later move is a re-threshold of its own: "Done"
    qtbot.waitUntil(lambda: w._worker is None and w._status.value.startswith("Done"), timeout=30_000)


def test_masks_made_before_another_model_was_chosen_still_re_threshold(widget, qtbot, c2c12_stack, tmp_path):
    import shutil

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert masks.data.max() > 0
    first = w._model_combo.value
    w.add_model_file(shutil.copy(first, tmp_path / "other.pt"))  # another model chosen (the proposal does so)
    w.select_model(first)  # and back
    w._min_size.value = 10_000
    qtbot.waitUntil(lambda: w._worker is None and masks.data.max() == 0, timeout=30_000)


def test_an_edited_slice_unmarked_as_corrected_keeps_its_edits_on_rethreshold(widget, qtbot, c2c12_stack,
                                                                               notifications):
    """Unmarking a corrected slice says its masks stay as they are: a later threshold change does
    not put the model's objects back over the user's edits (only with Overwrite ticked)."""
    from napari_unet.widgets._corrections import CorrectedSlices

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.brush_size = 5
    masks.paint((2, 40, 40), 99)  # an edit: slice 2 is corrected
    CorrectedSlices.for_layer(masks).unmark((2,))  # then taken off the list
    edited = masks.data[2].copy()
    w._min_size.value = 10_000  # no model object of these planes is that large
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: masks.data[0].max() == 0, timeout=30_000)
    np.testing.assert_array_equal(masks.data[2], edited)
    assert any("Left 1 slice you edited as they are (slice 2)" in m for m in notifications)


def test_rethreshold_says_which_slices_it_cannot_reach(widget, qtbot, c2c12_stack, notifications):
    """Probabilities are kept up to a memory cap: slices segmented before the cap keep their masks
    when the threshold moves, and a notification says so."""
    viewer, w = widget
    w._kept.cap_bytes = 3 * 96 * 96 * 2  # one plane's float16 probabilities: only the last plane is kept
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    w._min_size.value = 10_000
    _wait(qtbot, w)
    assert any("segmented before (slice 0, slice 1, slice 2) keep their masks" in m for m in notifications)


def test_brush_edit_in_segmented_layer_protects_the_slice(widget, qtbot, c2c12_stack, notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.dims.set_current_step(0, 3)
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.brush_size = 5
    masks.paint((3, 40, 40), 99)  # what the brush does
    assert masks.metadata[CORRECTED_KEY] == [[3]]
    edited = masks.data[3].copy()
    w._run_button.clicked.emit()  # same slice again
    _wait(qtbot, w)
    assert np.array_equal(masks.data[3], edited)
    assert any("Skipped a slice you corrected (slice 3)" in m for m in notifications)


@pytest.mark.timing
def test_whole_stack_keeps_event_loop_running_and_can_cancel(widget, qtbot, data_dir, notifications):
    import time

    from qtpy.QtCore import QTimer

    viewer, w = widget
    stack = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")  # 10 x 234 x 234
    image = viewer.add_image(np.tile(stack, (4, 2, 2)), name="long")  # 40 planes of 468 x 468
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    # the network's one-time ONNX export (torch.onnx holds the GIL ~0.6 s: RESULTS.md, "the first use of a
    # model") done first, as an earlier run of the model in the session does: this is about the plane loop
    from napari_unet.core import engine
    from napari_unet.core.checkpoint import read_model_file

    engine.onnx_network(read_model_file(w._model_combo.value).net)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    w._run_button.clicked.emit()
    masks = viewer.layers[masks_layer_name("long")]
    # the user waits until the progress bar moves, then cancels (a fixed wait let a fast machine finish)
    started = time.perf_counter()
    qtbot.waitUntil(lambda: (w._progress.value >= 5 and time.perf_counter() - started > 0.6) or w._worker is None,
                    timeout=120_000)
    assert w._worker is not None and w._cancel_button.enabled
    w._cancel_button.clicked.emit()
    _wait(qtbot, w)
    timer.stop()
    assert len(ticks) > 30  # the Qt event loop ran while the network worked
    assert max(np.diff(ticks)) < 1.0  # and never froze for a second
    assert w._status.value.startswith("Cancelled")
    assert not masks.data[-1].any()  # stopped before the end of the stack
    assert w._run_button.enabled and not w._cancel_button.enabled
    assert not [m for m in notifications if "tile" in m or "plane" in m]  # no stray progress lines


def test_cancel_ends_the_tile_the_network_is_running(widget, qtbot, tmp_path, data_dir, notifications):
    """Cancel does not wait for the tile in progress (a tile of the paper's network runs ~35 s on a
    laptop's CPU): ONNX Runtime's run is ended, and nothing more comes from the worker."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel, save_model
    from napari_unet.core.model import UNet

    viewer, w = widget
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same", norm="batch").eval()
    w.add_model_file(save_model(SegmentationModel(net, "bg-interior-boundary", metadata={"name": "wide"}),
                                tmp_path / "wide.pt"))
    frame = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[0]
    plane = np.tile(frame, (9, 9))[:2048, :2048]  # real cells, a second or more a tile
    image = viewer.add_image(plane, name="large")
    w.reset_choices()
    w._image_combo.value = image
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None or bool(w._worker.interrupt._runs), timeout=120_000)
    assert w._worker is not None, f"the run ended before a tile was running: {w._status.value}"
    after_cancel: list = []
    w._worker.yielded.connect(after_cancel.append)
    w._cancel_button.clicked.emit()
    _wait(qtbot, w)
    assert after_cancel == []  # the tile did not end (its progress would have come)
    assert w._status.value.startswith("Cancelled") and w._run_button.enabled
    assert not [m for m in notifications if "failed" in m.lower()]
    assert masks_layer_name("large") not in viewer.layers  # nothing was written: no empty layer left


def test_field_of_view_writes_inside_the_view(widget, qtbot, c2c12_stack):
    viewer, w = widget
    plane = c2c12_stack[0]
    image = viewer.add_image(plane, name="plane")
    masks = viewer.add_labels(np.zeros(plane.shape, np.int32), name=masks_layer_name("plane"))
    masks.data[:5, :5] = 3  # outside the view: must stay
    w._overwrite.value = True  # (labels napari-unet did not make are kept as the user's, unless ticked)
    # zoom in on the centre, as a user would, and let napari draw
    from napari_unet.widgets._base import viewer_camera

    camera = viewer_camera(viewer)
    camera.center = (48, 48)
    camera.zoom = 8 * camera.zoom
    from napari_unet.widgets._base import canvas_size, visible_region

    rows, cols = visible_region(viewer, image, plane.shape)
    assert 0 < rows.stop - rows.start < plane.shape[0] and 0 < cols.stop - cols.start < plane.shape[1]
    y0, y1, x0, x1 = rows.start, rows.stop - 1, cols.start, cols.stop - 1
    _segment(w, qtbot, image, SCOPE_VIEW)
    inside = np.zeros(plane.shape, bool)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert masks.data[:5, :5].tolist() == np.full((5, 5), 3).tolist()
    assert masks.data[~inside & (masks.data != 3)].max() == 0  # nothing written outside the view
    assert (masks.data[inside] > 0).any()  # the view itself was segmented (threshold 0.05)


@pytest.mark.parametrize("dtype", [np.int64, np.uint32])
def test_field_of_view_into_masks_with_ids_beyond_32_bits(widget, qtbot, c2c12_stack, dtype, notifications):
    """Masks from another tool numbering past 2^31: the run's ids are moved above them in the masks'
    own type (the run's int32 plus such an offset overflowed: a traceback, nothing written, "Done")."""
    from napari_unet.widgets._base import viewer_camera

    viewer, w = widget
    plane = c2c12_stack[0]
    image = viewer.add_image(plane, name="plane")
    masks = viewer.add_labels(np.zeros(plane.shape, dtype), name=masks_layer_name("plane"))
    masks.data[:5, :5] = 2**31 + 3  # outside the view
    w._overwrite.value = True
    camera = viewer_camera(viewer)
    camera.center = (48, 48)
    camera.zoom = 8 * camera.zoom
    _segment(w, qtbot, image, SCOPE_VIEW)
    assert w._status.value.startswith("Done") and masks.data.dtype == dtype
    written = masks.data[masks.data != 2**31 + 3]
    assert written.max() > 2**31 + 3 and (written[written > 0] > 2**31 + 3).all()
    assert not [m for m in notifications if "failed" in m.lower()]


def test_threshold_change_reapplies_without_the_network(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack[0], name="one")
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("one")]
    low = (masks.data > 0).sum()
    w._model_cache.clear()  # no model loaded: only the kept probabilities can serve
    w._threshold.value = 0.95
    _wait(qtbot, w)
    assert (masks.data > 0).sum() <= low
    assert w._status.value.startswith("Done")


def test_errors_are_notifications(widget, qtbot, tmp_path, notifications):
    viewer, w = widget
    w._run_button.clicked.emit()  # no image yet
    assert any("open an image first" in m for m in notifications)
    assert w._status.value == "Not started: no image open."  # (it kept saying the last run's "Done")
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a model")
    image = viewer.add_image(np.random.default_rng(0).random((32, 32)), name="noise")
    w.reset_choices()
    w._image_combo.value = image
    w.add_model_file(bogus)
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    assert any("not a napari-unet model file" in m for m in notifications)
    assert w._status.value.startswith("Failed")


def test_infinite_values_are_a_clear_notification(widget, qtbot, notifications):
    viewer, w = widget
    data = np.ones((40, 40), np.float32)
    data[3, 3] = np.inf
    image = viewer.add_image(data, name="nan")
    w.reset_choices()
    w._image_combo.value = image
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    assert any("infinite values" in m for m in notifications)
    assert masks_layer_name("nan") not in viewer.layers  # the run made it and wrote nothing: not left behind
    # a masks layer that was there before the failed run stays
    kept = viewer.add_labels(np.zeros((40, 40), np.int32), name=masks_layer_name("nan"))
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    assert kept in viewer.layers


def test_model_choice_brings_its_own_threshold_and_min_size(widget, tmp_path):
    from napari_unet.core.checkpoint import read_model_file, save_model

    viewer, w = widget
    model = read_model_file(w._model_combo.value)
    model.metadata["postprocessing"] = {"threshold": 0.65, "min_size": 40}
    tuned = save_model(model, tmp_path / "tuned.pt")
    w.add_model_file(tuned)
    assert w._threshold.value == pytest.approx(0.65)
    assert w._min_size.value == 40


# ---------------------------------------------------------------------- nothing silent (issue #17)
def test_constant_slice_is_a_notification(widget, qtbot, c2c12_stack, notifications):
    viewer, w = widget
    stack = c2c12_stack.copy()
    stack[1] = 37  # a blank frame
    image = viewer.add_image(stack, name="blank")
    viewer.dims.set_current_step(0, 1)
    _segment(w, qtbot, image)
    assert not viewer.layers[masks_layer_name("blank")].data[1].any()
    assert any(m.startswith("Slice 1 has a single value everywhere") for m in notifications)

    plain = viewer.add_image(np.full((40, 40), 5, np.uint8), name="flat")
    _segment(w, qtbot, plain)
    assert any(m.startswith("The image has a single value everywhere") for m in notifications)

    dark = c2c12_stack.copy()
    dark[2] = np.random.default_rng(0).integers(0, 5, dark[2].shape)  # a dark frame: camera noise alone
    noisy = viewer.add_image(dark, name="dark")
    viewer.dims.set_current_step(0, 2)
    _segment(w, qtbot, noisy)
    assert not viewer.layers[masks_layer_name("dark")].data[2].any()
    assert any(m.startswith("Slice 2 holds camera noise alone") for m in notifications)

    registered = c2c12_stack.astype(np.float32)
    registered[3] = np.nan  # a frame that a registration moved out of the field: no data
    moved = viewer.add_image(registered, name="moved")
    viewer.dims.set_current_step(0, 3)
    _segment(w, qtbot, moved)
    assert not viewer.layers[masks_layer_name("moved")].data[3].any()
    assert any(m.startswith("Slice 3 holds no data") for m in notifications)


def test_removing_the_image_mid_run_abandons_it(widget, qtbot, data_dir, notifications):
    viewer, w = widget
    stack = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    image = viewer.add_image(np.tile(stack, (2, 2, 2)), name="going")  # 20 planes of 468 x 468
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._progress.value > 0, timeout=60_000)
    viewer.layers.remove(image)
    _wait(qtbot, w)
    expected = "Segmentation abandoned: the image layer 'going' was removed; finished slices kept."
    assert w._status.value == expected  # not "Done"
    assert expected in notifications
    assert w._run_button.enabled


def test_segment_none_model_is_a_type_error():
    from napari_unet.core import segment

    with pytest.raises(TypeError, match="model must be a SegmentationModel"):
        segment(None, np.zeros((32, 32), np.uint8))


def test_corrected_2d_image_says_so_in_plain_words(widget, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack[0], name="one")
    masks = viewer.add_labels(np.zeros((96, 96), np.int32), name=masks_layer_name("one"))
    masks.metadata[CORRECTED_KEY] = [[]]
    w.reset_choices()
    w._image_combo.value = image
    w._run_button.clicked.emit()
    assert w._worker is None
    assert w._status.value == "Nothing to segment: the image is one you corrected."


def test_long_status_lines_wrap_in_a_narrow_dock(make_napari_viewer, qtbot):
    """Status lines are shown whole, on several lines, never cut off at the dock's edge."""
    viewer = make_napari_viewer(show=True)
    _d1, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    _d3, load = viewer.window.add_plugin_dock_widget("napari-unet", "Load stack", tabify=True)
    text = ("Saved 'my-model' after 300 steps (2 min 05 s). Kept the weights of step 250 (best "
            "validation AP@0.5); the next uncorrected slice is being segmented with it now.")
    status_lines = {
        _d1: [seg._status, seg._diameter_used],
        _d2: [tune.run_panel._status, tune.run_panel._best_label],
        _d3: [load._status, load._info],
    }
    for dock, labels in status_lines.items():
        for label in labels:
            label.value = text
        dock.raise_()
        qtbot.wait(200)
        for label in labels:
            native = label.native
            assert native.isVisible(), label.label
            assert native.wordWrap(), label.label
            assert native.minimumSizeHint().width() < 300, label.label  # never forces the dock wider
            assert native.height() >= native.heightForWidth(native.width()), label.label  # all lines shown
    # a larger font (napari's preferences): measured again, not the height kept for the text and width
    native = seg._status.native
    _d1.raise_()
    qtbot.wait(100)
    font = native.font()
    font.setPointSizeF(font.pointSizeF() * 1.6)
    native.setFont(font)
    qtbot.wait(200)
    assert native.height() >= native.heightForWidth(native.width())


def test_closing_the_viewer_mid_run_is_quiet(widget, qtbot, data_dir):
    """viewer.close() during a whole-stack run: the worker stops and its last signals do not
    reach the deleted widgets (no "wrapped C/C++ object has been deleted" errors)."""
    from qtpy.QtCore import QThreadPool

    viewer, w = widget
    stack = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    image = viewer.add_image(np.tile(stack, (2, 2, 2)), name="long")
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._progress.value > 0, timeout=60_000)
    # napari's dialog on closing a window with running tasks names them: this one by its name, not
    # "Executing <function _interruptible at 0x7f2611fc7100>"
    tasks = viewer.window._task_status_manager.get_status()
    assert any("napari-unet: Segment of 'long'" in t for t in tasks) and not any("<function" in t for t in tasks)
    viewer.close()
    assert QThreadPool.globalInstance().waitForDone(60_000)  # the worker stopped
    qtbot.waitUntil(lambda: w._worker is None, timeout=10_000)  # and its signals were handled


def test_a_run_stopped_by_closing_another_window_says_so(widget, make_napari_viewer, qtbot, data_dir):
    """napari files a worker under the window current when it starts, and asks those to stop as that
    window closes: a run of viewer A started while viewer B was current (the run after a fine-tune, a
    timer's) stopped when B closed, and said "Done" with slices not segmented."""
    viewer, w = widget
    stack = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")
    image = viewer.add_image(np.tile(stack, (2, 2, 2)), name="long")
    other = make_napari_viewer()  # now napari's current viewer
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._progress.value > 0, timeout=60_000)
    other.close()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert w._status.value.startswith("Stopped (napari asked its tasks to stop"), w._status.value


def test_physical_diameters_and_voxel_sizes_follow_the_layers_units():
    """'3 um' on a layer of 65 nm pixels is 46 px (not 0.05 px); a stack calibrated at 1 um is
    calibrated, not "voxel size unknown"; a diameter under a pixel is refused."""
    from napari.layers import Image

    from napari_unet.core.preprocess import ImageError
    from napari_unet.widgets._diameter import DiameterControls, pixel_size_um
    from napari_unet.widgets._segment3d import voxel_size

    nm = Image(np.zeros((64, 64)), scale=(65, 65), units=("nm", "nm"))
    assert pixel_size_um(nm) == pytest.approx(0.065)
    controls = DiameterControls()
    controls.field.value = "3 um"
    assert controls.chosen(nm, (1000, 1000)) == pytest.approx(3 / 0.065)
    controls.field.value = "0.8 um"  # a small physical size is many pixels of 65 nm
    assert controls.chosen(nm, (1000, 1000)) == pytest.approx(0.8 / 0.065)
    controls.field.value = "0.5"
    with pytest.raises(ImageError, match="less than one pixel"):
        controls.chosen(nm, (1000, 1000))
    assert pixel_size_um(Image(np.zeros((8, 8)))) is None  # uncalibrated
    assert pixel_size_um(Image(np.zeros((8, 8)), scale=(0.5, 0.5))) == 0.5  # no unit: micrometres
    one_um = Image(np.zeros((4, 8, 8)), units=("um", "um", "um"))
    assert voxel_size(one_um, 0) == (1.0, 1.0, 1.0)
    mixed = Image(np.zeros((4, 8, 8)), scale=(2, 130, 130), units=("um", "nm", "nm"))
    assert voxel_size(mixed, 0) == pytest.approx((2.0, 0.13, 0.13))
    assert voxel_size(Image(np.zeros((4, 8, 8))), 0) is None
    assert voxel_size(Image(np.zeros((4, 8, 8)), scale=(3, 1, 1)), 0) == (3.0, 1.0, 1.0)


def test_renamed_layers_show_their_new_names_in_the_lists(widget, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="img")
    w.reset_choices()
    w._image_combo.value = image
    image.name = "embryo1"
    assert w._image_combo.native.currentText() == "embryo1"
    assert w._image_combo.value is image


def test_transposed_view_is_said_before_segmenting_the_yx_plane(widget, qtbot, c2c12_stack, notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image)
    assert not [m for m in notifications if "transposed" in m]
    viewer.dims.order = (1, 0, 2)  # the canvas now shows T-X cuts
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    assert any("transposed" in m for m in notifications)


def test_kept_results_follow_a_rename_after_the_run_and_go_with_a_removed_layer(widget, qtbot, c2c12_stack,
                                                                               notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.name = "mine"  # renamed after the run: moving Min. size still re-thresholds it
    w._min_size.value = 10_000
    _wait(qtbot, w)
    assert masks.data.max() == 0
    assert w.kept_result(masks, (0,)) is not None
    viewer.layers.remove(masks)  # removed, then segmented again: nothing of the old layer comes back
    assert w.kept_result(masks, (0,)) is None
    w._min_size.value = 0
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    w._min_size.value = 5
    _wait(qtbot, w)
    assert not [m for m in notifications if "you edited" in m]
    new = viewer.layers[masks_layer_name("c2c12")]
    assert sum(w.kept_result(new, (i,)) is not None for i in range(4)) == 1  # the slice just segmented


def test_an_8_bit_masks_layer_is_widened_before_the_model_writes(widget, qtbot, c2c12_stack, notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    narrow = np.zeros(c2c12_stack.shape, np.uint8)  # as napari's "New labels layer" makes them
    narrow[3, 10:20, 10:20] = 7
    masks = viewer.add_labels(narrow, name=masks_layer_name("c2c12"))
    viewer.dims.set_current_step(0, 0)
    _segment(w, qtbot, image)
    assert masks.data.dtype == np.int32 and masks.data[0].max() > 0  # ids past 255 cannot wrap
    assert (masks.data[3, 10:20, 10:20] == 7).all() and masks.data[3].sum() == 7 * 100
    assert any("made 32-bit" in m for m in notifications)


def test_16_bit_masks_stay_so_until_a_plane_needs_more_ids(widget, qtbot, c2c12_stack, notifications):
    """Masks saved and reopened are 16-bit: converting them all to 32 bits before every run held the
    window (1.5 s for 64 x 2048 x 2048); a plane rarely holds 65535 objects: they widen when one does."""
    from napari_unet.core.predict import PlaneResult
    from napari_unet.widgets._masks import write_plane

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    reopened = np.zeros(c2c12_stack.shape, np.uint16)
    reopened[3, 10:20, 10:20] = 7
    masks = viewer.add_labels(reopened, name=masks_layer_name("c2c12"))
    viewer.dims.set_current_step(0, 0)
    _segment(w, qtbot, image)
    assert masks.data.dtype == np.uint16 and masks.data[0].max() > 0
    assert not any("made 32-bit" in m for m in notifications)
    many = np.zeros(c2c12_stack.shape[1:], np.int32)
    many[:10, :10] = 70_000  # ids beyond 16 bits in one plane (a tiled slide of cells)
    many[20:30, 20:30] = 3
    whole = (slice(0, many.shape[0]), slice(0, many.shape[1]))
    write_plane(masks, PlaneResult((1,), whole, many, None, whole, "bg-interior-boundary"))
    assert masks.data.dtype == np.int32 and (masks.data[1] == many).all()
    assert (masks.data[3, 10:20, 10:20] == 7).all() and masks.data[0].max() > 0  # the others kept
    assert any("made 32-bit" in m for m in notifications)


def test_undo_after_segmenting_again_does_not_replay_old_edits(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.dims.set_current_step(0, 0)
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.brush_size = 6
    before_edit = np.asarray(masks.data[0, 42:55, 42:55]).copy()
    masks.paint((0, 48, 48), 999)  # an edit on the first masks
    masks.paint((2, 48, 48), 888)  # and one on another slice
    w._overwrite.value = True
    w._threshold.value, w._min_size.value = 0.95, 0
    w._run_button.clicked.emit()  # the slice segmented again over it, with other masks
    _wait(qtbot, w)
    again = np.asarray(masks.data).copy()
    assert not (again == 999).any() and not np.array_equal(again[0, 42:55, 42:55], before_edit)
    masks.undo()  # Ctrl+Z undoes the edit of the other slice; the old edit of slice 0 never comes back
    assert not (masks.data[2] == 888).any()
    masks.undo()
    np.testing.assert_array_equal(masks.data[0], again[0])


def test_a_masks_layer_read_lazily_is_refused_before_the_run(widget, qtbot, c2c12_stack, notifications):
    import dask.array as da

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.add_labels(da.zeros(c2c12_stack.shape, dtype=np.int32, chunks=(1, 96, 96)), name=masks_layer_name("c2c12"))
    _segment(w, qtbot, image)
    assert any("read lazily" in m for m in notifications) and w._status.value.startswith("Not started")
    assert w.last_run_seconds is None  # nothing ran (it wrote into copies of the file's blocks before)


def test_whole_stack_with_an_empty_first_slice_segments_it_again_at_the_size_found(widget, qtbot, data_dir,
                                                                                   notifications):
    from skimage.io import imread

    import csv

    from napari_unet.core.catalog import resolve_model_path

    viewer, w = widget
    w.select_model(resolve_model_path("nuclei"))  # the built-in model: it finds no nucleus in the empty frame
    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark")
    frame = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png")
    rng = np.random.default_rng(0)
    ramp = 10 * np.mgrid[: frame.shape[0], : frame.shape[1]][1] / frame.shape[1]  # uneven light, no cell
    empty = (np.median(frame) + rng.normal(0, 2, frame.shape) + ramp).clip(0, 255).astype(frame.dtype)
    image = viewer.add_image(np.stack([empty, frame, frame]), name="lapse")
    _segment_stack_as_set(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("lapse")]
    first, second = w.kept_result(masks, (0,)), w.kept_result(masks, (1,))
    assert second.diameter is not None and first.scale == second.scale and first.diameter == second.diameter
    assert masks.data[1].max() > 0


def test_two_fields_of_view_of_one_slice_both_re_threshold(make_napari_viewer, qtbot, tiny_model_path, c2c12_stack,
                                                              notifications):
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.add_model_file(tiny_model_path)
    frame = np.tile(c2c12_stack[0], (1, 4))  # 96 x 384: one field on the left, one on the right
    image = viewer.add_image(frame, name="wide")
    viewer.camera.zoom = 6
    for x in (40, 340):
        viewer.camera.center = (48, x)
        _segment(w, qtbot, image, SCOPE_VIEW)
    viewer.camera.center = (48, 290)  # a third field, overlapping the second one without covering it
    _segment(w, qtbot, image, SCOPE_VIEW)
    masks = viewer.layers[masks_layer_name("wide")]
    kept = w.kept_results(masks, ())
    assert len(kept) == 3
    kept = kept[1:]  # the two first fields, as above
    assert len(kept) == 2 and kept[0].region[1].start > kept[1].region[1].stop  # both fields, apart
    w._threshold.value = 0.3  # both fields are re-thresholded, not only the last one
    qtbot.waitUntil(lambda: w._worker is None and w._status.value.startswith("Done"), timeout=30_000)
    assert not [m for m in notifications if "you edited" in m]  # the overlap was the run's, not the user's
    np.testing.assert_array_equal(masks.data[kept[1].region] > 0, kept[1].relabel(0.3, 0).labels > 0)


def test_two_model_files_of_one_name_are_both_listed(widget, tiny_model_path, tmp_path):
    import shutil

    _viewer, w = widget
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(str(Path(shutil.copy(tiny_model_path, tmp_path / folder / "model.pt")).resolve()))
        w.add_model_file(paths[-1])
    w.add_model_file(paths[0])  # the same file again: listed once
    listed = [value for _label, value in w._model_choices()]
    assert all(listed.count(p) == 1 for p in paths) and w._model_combo.value == paths[0]


def test_a_slice_corrected_during_a_whole_stack_run_is_not_overwritten(widget, qtbot, c2c12_stack, notifications):
    """The user paints on slice 3 while the run is on slice 0: the run leaves slice 3 as the user
    made it (and its undo step), and says so."""
    from napari_unet.widgets._corrections import CorrectedSlices

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")

    def correct_slice_3():
        masks = viewer.layers[masks_layer_name("c2c12")]
        masks.brush_size = 5
        masks.paint((3, 48, 48), 999)

    painted = _run_stack_doing_after_first_plane(w, image, correct_slice_3)
    _wait(qtbot, w)
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert painted == [(0,)]
    assert (masks.data[3] == 999).any() and (3,) in CorrectedSlices.for_layer(masks)
    assert all(masks.data[t].max() > 0 for t in (1, 2))  # the others were written
    assert any("slice 3" in m and "while" in m for m in notifications)
    masks.undo()  # the user's stroke is still one undo step
    assert not (masks.data[3] == 999).any()


def test_a_corrected_slice_replaced_with_consent_is_no_longer_listed_as_corrected(widget, qtbot, c2c12_stack,
                                                                                   notifications):
    """Overwrite ticked: the corrected slice holds the model's masks again, so it is no longer a
    training example (Fine-tune would learn the raw prediction as if the user had checked it)."""
    from napari_unet.widgets._corrections import CorrectedSlices

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.paint((1, 50, 50), 999)
    assert (1,) in CorrectedSlices.for_layer(masks)
    w._overwrite.value = True
    viewer.dims.set_current_step(0, 1)
    _segment(w, qtbot, image, SCOPE_SLICE)
    assert not (masks.data[1] == 999).any()
    assert (1,) not in CorrectedSlices.for_layer(masks)
    assert any("slice 1" in m and "no longer" in m for m in notifications)


def test_moving_the_threshold_never_rewrites_corrected_slices_even_with_overwrite_ticked(widget, qtbot, c2c12_stack):
    """'Overwrite slices I corrected' is for the runs the user starts; a moved Threshold re-applies
    kept probabilities and leaves every corrected slice alone."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.paint((1, 50, 50), 999)
    w._overwrite.value = True
    viewer.dims.set_current_step(0, 2)
    _segment(w, qtbot, image, SCOPE_SLICE)  # a run of slice 2 only, with consent
    assert (masks.data[1] == 999).any()
    w._threshold.value = 0.3
    _wait(qtbot, w)
    assert (masks.data[1] == 999).any()


def test_segmenting_again_after_fine_tuning_ignores_overwrite(widget, qtbot, c2c12_stack, tiny_model_path):
    """The re-segmentation that follows fine-tuning is not a run the user started: the corrected
    slice shown (the training example) stays, even with 'Overwrite slices I corrected' ticked."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    viewer.dims.set_current_step(0, 1)
    masks.paint((1, 50, 50), 999)
    w._overwrite.value = True
    w.use_new_model(str(tiny_model_path), image)
    _wait(qtbot, w)
    assert (masks.data[1] == 999).any()
    assert viewer.dims.current_step[0] == 2  # the next slice not corrected was segmented instead


def test_field_of_view_in_a_transposed_view_segments_the_whole_yx_plane(widget, qtbot, c2c12_stack, notifications):
    """A T-X view's field of view is no part of a Y-X plane: the plane at the position is
    segmented whole, as the message says (not a strip cut with the wrong axes)."""
    from napari_unet.widgets._base import viewer_camera

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    viewer.dims.order = (1, 0, 2)  # the canvas shows T-X cuts at a Y
    viewer.dims.set_current_step(1, 48)
    viewer.dims.set_current_step(0, 2)
    camera = viewer_camera(viewer)
    camera.center = (1, 48)
    camera.zoom = 4 * camera.zoom
    _segment(w, qtbot, image, SCOPE_VIEW)
    masks = viewer.layers[masks_layer_name("c2c12")]
    written = [t for t in range(len(c2c12_stack)) if masks.data[t].any()]
    assert written == [2]
    rows, cols = w._kept.results(masks)[0].region
    assert rows.indices(96) == cols.indices(96) == (0, 96, 1)  # the whole plane
    assert any("transposed" in m and "whole" in m for m in notifications)


def test_current_slice_of_a_stack_shorter_than_the_viewers_position_is_refused(widget, qtbot, c2c12_stack,
                                                                                  data_dir, notifications):
    """Two time-lapses of 4 and 10 frames, the slider at frame 7: the short one has no slice
    there (napari shows nothing of it), so neither Segment nor Mark picks its last frame."""
    viewer, w = widget
    short = viewer.add_image(c2c12_stack, name="short")
    viewer.add_image(tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:, :96, :96], name="long")
    viewer.dims.set_current_step(0, 7)
    _segment(w, qtbot, short, SCOPE_SLICE)
    assert masks_layer_name("short") not in viewer.layers or not viewer.layers[masks_layer_name("short")].data.any()
    assert w._status.value.startswith("Not started") and "no slice" in w._status.value
    assert any("'short' has no slice" in m for m in notifications)


def test_a_new_model_arriving_during_a_run_is_chosen_without_moving_the_view(widget, qtbot, c2c12_stack,
                                                                            tiny_model_path, tmp_path):
    """Fine-tuning ends while the user's whole-stack run goes on: the new model is chosen, and
    neither the scope nor the slider moves (nor a false "segmenting slice 1 instead")."""
    import shutil

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    new_model = tmp_path / "tuned.pt"
    shutil.copy(tiny_model_path, new_model)
    states = []

    def model_arrives():
        w.use_new_model(str(new_model), image)
        states.append((w._scope.value, viewer.dims.current_step[0], w._status.value))

    before = viewer.dims.current_step[0]
    _run_stack_doing_after_first_plane(w, image, model_arrives)
    _wait(qtbot, w)
    (scope, step, status), = states
    assert scope == SCOPE_STACK and step == before
    assert "new model is chosen" in status and "running" in status
    assert Path(w._model_combo.value).name == "tuned.pt"
    # the run's own "Done" line says which model made these masks (it replaced the note)
    assert "is chosen for the next run" in w._status.value and "'tuned' is chosen" in w._status.value


def test_the_run_after_fine_tuning_waits_for_a_brush_stroke_to_end(widget, qtbot, c2c12_stack, tiny_model_path):
    """Fine-tuning ended while the user was painting the corrected slice shown: the view moved to
    the next slice, the rest of the stroke went there, and that slice became a "correction"."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    viewer.dims.set_current_step(0, 1)
    masks.paint((1, 50, 50), 999)  # slice 1 corrected
    with masks.block_history():  # what napari's brush does from press to release
        masks.paint((1, 60, 60), 999)
        w.use_new_model(str(tiny_model_path), image)
        assert w._worker is None and viewer.dims.current_step[0] == 1
        assert "when your brush stroke ends" in w._status.value
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] == 2, timeout=10_000)  # after the stroke
    _wait(qtbot, w)
    assert CorrectedSlices.for_layer(masks).planes == [(1,)]


def test_moving_min_size_re_applies_to_the_image_chosen_in_segment(widget, qtbot, c2c12_stack):
    """Two images segmented one after the other, then the first chosen again: a moved Min. size
    changes the first image's masks, not those of the last run."""
    viewer, w = widget
    a = viewer.add_image(c2c12_stack[0], name="a")
    b = viewer.add_image(c2c12_stack[1], name="b")
    _segment(w, qtbot, a, SCOPE_SLICE)
    _segment(w, qtbot, b, SCOPE_SLICE)
    masks_a, masks_b = viewer.layers["a masks"], viewer.layers["b masks"]
    before_b = masks_b.data.copy()
    assert masks_a.data.any()
    w._image_combo.value = a
    w._min_size.value = 10_000  # no object of a 96 x 96 plane is that large
    _wait(qtbot, w)
    assert not masks_a.data.any()
    np.testing.assert_array_equal(masks_b.data, before_b)
    c = viewer.add_image(c2c12_stack[2], name="c")  # never segmented: nothing to re-apply, and it is said
    w.reset_choices()
    w._image_combo.value = c
    w._min_size.value = 0
    _wait(qtbot, w)
    assert "apply when you segment 'c'" in w._status.value
    np.testing.assert_array_equal(masks_b.data, before_b)


def test_moving_min_size_when_every_kept_slice_is_corrected_says_so(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack[0], name="one")
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("one")]
    masks.paint((48, 48), 999)
    w._min_size.value = 10_000
    _wait(qtbot, w)
    assert (masks.data == 999).any()
    assert "every slice kept is one you corrected" in w._status.value


def test_removing_the_masks_layer_mid_run_does_not_promise_kept_slices(widget, qtbot, c2c12_stack, notifications):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _run_stack_doing_after_first_plane(w, image, lambda: viewer.layers.remove(masks_layer_name("c2c12")))
    _wait(qtbot, w)
    assert w._status.value == "Segmentation abandoned: the masks layer 'c2c12 masks' was removed."


def test_masks_of_a_closed_image_are_not_taken_for_another_file_of_the_same_name(widget, qtbot, c2c12_stack,
                                                                                  tmp_path, notifications):
    """pos1/img.tif segmented and corrected, closed; pos2/img.tif opened: its layer is also "img",
    but "img masks" holds pos1's corrections. Segment and Fine-tune refuse them for pos2; the
    same file opened again takes its masks back."""
    viewer, w = widget
    for folder, frames in (("pos1", c2c12_stack), ("pos2", c2c12_stack[:, ::-1].copy())):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "img.tif", frames, metadata={"axes": "TYX"}, imagej=True)
    (pos1,) = viewer.open(tmp_path / "pos1" / "img.tif", plugin="napari-unet")
    _segment(w, qtbot, pos1, SCOPE_STACK)
    masks = viewer.layers["img masks"]
    masks.paint((1, 40, 40), 999)
    kept = masks.data.copy()
    viewer.layers.remove(pos1)
    (pos2,) = viewer.open(tmp_path / "pos2" / "img.tif", plugin="napari-unet")
    assert pos2.name == "img"
    _segment(w, qtbot, pos2, SCOPE_STACK)
    np.testing.assert_array_equal(masks.data, kept)  # nothing of pos2 written over pos1's masks
    assert any("holds the masks of another image named 'img'" in m and "pos1" in m for m in notifications)
    _dock, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    tune.corrected_panel._image_combo.value = pos2
    tune.corrected_panel._labels_combo.value = masks
    with pytest.raises(ValueError, match="another image named 'img'"):
        tune.gather_examples()
    viewer.layers.remove(pos2)
    (again,) = viewer.open(tmp_path / "pos1" / "img.tif", plugin="napari-unet")
    _segment(w, qtbot, again, SCOPE_STACK)  # pos1 again: its masks, the corrected slice kept
    assert (masks.data[1] == 999).any() and masks.data[2].any()


def test_moving_min_size_follows_the_chosen_image_back_and_forth(widget, qtbot, c2c12_stack):
    viewer, w = widget
    a = viewer.add_image(c2c12_stack[0], name="a")
    b = viewer.add_image(c2c12_stack[1], name="b")
    _segment(w, qtbot, a, SCOPE_SLICE)
    _segment(w, qtbot, b, SCOPE_SLICE)
    w._image_combo.value = a
    w._min_size.value = 10_000
    _wait(qtbot, w)
    w._min_size.value = 0  # a's objects back
    _wait(qtbot, w)
    w._image_combo.value = b
    w._min_size.value = 9_999
    _wait(qtbot, w)
    assert not viewer.layers["b masks"].data.any() and viewer.layers["a masks"].data.any()


def test_min_size_moved_during_a_run_reaches_that_runs_masks_whatever_image_is_chosen(widget, qtbot, c2c12_stack):
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    other = viewer.add_image(c2c12_stack[0], name="other")

    def choose_other_and_move():
        w._image_combo.value = other
        w._min_size.value = 10_000

    _run_stack_doing_after_first_plane(w, image, choose_other_and_move)
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: w._worker is None and not viewer.layers[masks_layer_name("c2c12")].data.any(),
                    timeout=30_000)


def test_with_overwrite_ticked_a_slice_corrected_during_the_run_is_still_kept(widget, qtbot, c2c12_stack,
                                                                             notifications):
    """Consent given at the start covers the corrections made before it, not a stroke made while
    the run goes on."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    w._overwrite.value = True

    def correct_slice_3():
        masks = viewer.layers[masks_layer_name("c2c12")]
        masks.brush_size = 5
        masks.paint((3, 48, 48), 999)

    _run_stack_doing_after_first_plane(w, image, correct_slice_3)
    _wait(qtbot, w)
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert (masks.data[3] == 999).any()
    assert any("slice 3" in m and "while the run" in m for m in notifications)


def test_slices_painted_by_hand_before_the_plugin_was_opened_are_never_overwritten(make_napari_viewer, qtbot,
                                                                                   c2c12_stack, tiny_model_path,
                                                                                   notifications):
    """In plain napari the user paints in "<image> masks" (a layer of their own), then opens
    Segment and segments the whole stack: the painted slice is a corrected one."""
    viewer = make_napari_viewer()
    image = viewer.add_image(c2c12_stack, name="c2c12")
    masks = viewer.add_labels(np.zeros(c2c12_stack.shape, np.int32), name=masks_layer_name("c2c12"))
    masks.brush_size = 6
    masks.paint((1, 48, 48), 999)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.add_model_file(tiny_model_path)
    _segment(w, qtbot, image, SCOPE_STACK)
    assert (masks.data[1] == 999).sum() > 20
    assert masks.data[2].any()
    assert any("Skipped a slice you corrected (slice 1)" in m for m in notifications)


def test_bright_debris_is_clipped_and_said_once(widget, qtbot, data_dir, notifications):
    """A fluorescence slice with blobs 8x brighter than its nuclei: segmented again with them clipped
    (the nuclei found as in the clean slice), and the user told once why."""
    from skimage.io import imread
    from test_predict import _bright_debris, _dsb_ids

    from napari_unet.core.catalog import resolve_model_path
    from napari_unet.core.predict import OUTLIERS_NOTE

    viewer, w = widget
    w.select_model(resolve_model_path("nuclei"))
    (image_id,) = [i for i in _dsb_ids(data_dir, ("grey_dark",)) if i.startswith("9586e48a")]
    frame = imread(data_dir / "dsb2018" / "images" / f"{image_id}.png")[:128, :128]
    truth = imread(data_dir / "dsb2018" / "labels" / f"{image_id}.png")[:128, :128].astype(np.int32)
    debris, _ = _bright_debris(frame, truth)
    image = viewer.add_image(np.stack([debris, debris]), name="debris")
    _segment_stack_as_set(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("debris")]
    assert w.kept_result(masks, (0,)).clipped is not None and w.kept_result(masks, (1,)).clipped is not None
    assert notifications.count(OUTLIERS_NOTE) == 1
    from napari_unet.core.metrics import average_precision

    assert average_precision(truth, np.asarray(masks.data[0])) > 0.8


def test_labels_napari_unet_did_not_make_are_kept_as_the_users(widget, qtbot, c2c12_stack, notifications):
    """A Labels layer named as masks that napari-unet neither made nor saved (brought from another tool,
    painted in a new layer): its slices holding labels are the user's and no run replaces them unasked
    (a whole-stack run replaced them, with no word and no undo)."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    theirs = np.zeros(c2c12_stack.shape, np.int32)
    theirs[1, 10:20, 10:20] = 50
    masks = viewer.add_labels(theirs.copy(), name=masks_layer_name("c2c12"))
    _segment(w, qtbot, image, SCOPE_STACK)
    np.testing.assert_array_equal(masks.data[1], theirs[1])
    assert masks.data[0].any() and masks.data[2].any()  # the others were segmented
    assert any("holds labels napari-unet did not make (slice 1)" in m for m in notifications)


def test_flipped_read_only_replaced_or_misnamed_layers_get_clear_answers(widget, qtbot, c2c12_stack, notifications,
                                                                         tmp_path):
    """A flipped layer (negative scale) has pixels of the same size; read-only labels are refused before
    the run (a traceback in the Qt slot, then "Done"); masks whose data was replaced by a smaller array
    re-threshold what still fits (an IndexError); the diameter button on a layer that is no Labels layer
    says so (an AttributeError), and on a multiscale one reads its full resolution (half the size)."""
    from napari_unet.widgets._diameter import pixel_size_um
    from napari_unet.widgets._segment3d import voxel_size

    viewer, w = widget
    flipped = viewer.add_image(c2c12_stack, name="flipped", scale=(-2.0, 0.5, -0.5), units=("um", "um", "um"))
    assert pixel_size_um(flipped) == 0.5 and voxel_size(flipped, 0) == (2.0, 0.5, 0.5)
    viewer.layers.remove(flipped)
    viewer.dims.set_current_step(0, 0)

    image = viewer.add_image(c2c12_stack, name="ro")
    frozen = np.zeros(c2c12_stack.shape, np.int32)
    frozen.flags.writeable = False
    viewer.add_labels(frozen, name=masks_layer_name("ro"))
    _segment(w, qtbot, image)
    assert any("are read-only" in m for m in notifications) and w._status.value.startswith("Not started")

    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    masks = viewer.layers[masks_layer_name("c2c12")]
    masks.data = np.zeros((2, 96, 96), np.int32)  # replaced by the user (or a script): 2 of the 4 planes
    w._min_size.value = 5
    _wait(qtbot, w)  # (re-thresholds the planes that still fit, raising nothing)
    assert masks.data.shape == (2, 96, 96)

    viewer.layers.remove(masks)
    viewer.add_points(name=masks_layer_name("c2c12"))  # a layer of another kind under the masks' name
    w._image_combo.value = image
    viewer.layers.selection.active = image
    w.diameter_from_selected_label()
    assert "in a Labels layer" in notifications[-1]
    viewer.layers.remove(masks_layer_name("c2c12"))
    cell = np.zeros((96, 96), np.int32)
    cell[10:30, 10:30] = 7
    pyramid = viewer.add_labels([cell, cell[::2, ::2]], name=masks_layer_name("c2c12"), multiscale=True)
    pyramid.selected_label = 7
    viewer.layers.selection.active = image
    w.diameter_from_selected_label()
    assert float(w._sizing.field.value) == pytest.approx(22.6, abs=0.1)


def test_a_model_deleted_behind_segments_back_is_said_when_the_lists_are_made_again(widget, tiny_model_path,
                                                                                   notifications):
    """Any layer event makes the lists again: a chosen model whose file is gone is replaced by the one
    proposed for the image, and a notification says so (the list's first was taken silently)."""
    import shutil

    from napari_unet.core.catalog import user_model_path

    viewer, w = widget
    mine = user_model_path("mine")
    mine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_model_path, mine)
    w.reset_choices()
    w.select_model(mine)
    mine.unlink()
    viewer.add_points(name="anything")  # a layer event
    assert w._model_combo.value != str(mine)
    assert any("The model 'mine' is gone; now using" in m for m in notifications)


def test_model_files_added_by_hand_are_the_listed_ones_and_go_when_gone(widget, qtbot, tiny_model_path,
                                                                        c2c12_stack, notifications, tmp_path):
    """A user's model added by hand (through a linked folder, or as it is listed) was listed twice, the
    "(file)" copy chosen, and it stayed offered after the file was deleted: "Segmentation failed:
    [Errno 2]". A model deleted on disk before Segment was pressed ran all the same and failed."""
    import shutil

    from napari_unet.core.catalog import user_models_dir

    viewer, w = widget
    mine = user_models_dir() / "mine.pt"
    mine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_model_path, mine)
    (tmp_path / "linked").symlink_to(mine.parent, target_is_directory=True)
    w.add_model_file(tmp_path / "linked" / "mine.pt")
    assert w._model_combo.value == str(mine) and sum("mine" in str(v) for v in w._model_combo.choices) == 1
    w.select_model(tmp_path / "linked" / "mine.pt")
    assert w._model_combo.value == str(mine)
    image = viewer.add_image(c2c12_stack[0], name="one")
    w.reset_choices()
    w._image_combo.value = image
    w._model_combo.value = str(mine)
    mine.unlink()  # deleted in a file manager, then Segment pressed
    w.run()
    assert w._worker is None and w._model_combo.value != str(mine)
    assert any("'mine' is gone" in m for m in notifications)
    # an added file outside the model folders, deleted: no longer offered
    elsewhere = tmp_path / "elsewhere.pt"
    shutil.copy(tiny_model_path, elsewhere)
    w.add_model_file(elsewhere)
    elsewhere.unlink()
    viewer.add_points(name="a layer event")
    assert str(elsewhere) not in w._model_combo.choices


def test_a_settings_file_edited_by_hand_does_not_stop_load_stack(make_napari_viewer, tmp_path):
    import json
    import os

    from napari_unet.io._settings import SETTINGS_FILE, get_setting
    from napari_unet.widgets.load import LoadWidget

    config = Path(os.environ["NAPARI_UNET_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    viewer = make_napari_viewer()
    for value in (5, ["/tmp"], {"a": 1}):
        (config / SETTINGS_FILE).write_text(json.dumps({"last_folder": value}))
        assert get_setting("last_folder") == value
        LoadWidget(viewer)  # (it raised TypeError and did not open)


def test_closing_the_dock_cancels_its_run_and_the_new_one_is_found(widget, qtbot, c2c12_stack, notifications):
    """napari's close button of a dock keeps the widget (hidden): its whole-stack run went on writing,
    and the Segment the Plugins menu makes anew could start a second run into the same masks."""
    from napari_unet.widgets._registry import get_widget

    viewer, w = widget
    image = viewer.add_image(np.concatenate([c2c12_stack] * 4), name="c2c12")
    done = _run_stack_doing_after_first_plane(w, image, lambda: viewer.window.remove_dock_widget(w.native))
    _wait(qtbot, w)
    assert done and w._status.value.startswith("Cancelled")
    masks = viewer.layers[masks_layer_name("c2c12")]
    assert sum(bool(plane.any()) for plane in masks.data) < len(masks.data)  # stopped: not every plane
    assert get_widget(viewer, "segment") is None
    _dock, again = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert again is not w and get_widget(viewer, "segment") is again
    viewer.add_image(c2c12_stack, name="other")  # the closed one follows the layers no more
    assert "other" in [layer.name for layer in again._image_combo.choices]
    assert "other" not in [layer.name for layer in w._image_combo.choices]
    # and lets go of the viewer's data (napari keeps the widget: its kept probabilities, last masks, model)
    assert not w._kept and w._last_masks is None and not w._model_cache


def test_a_closed_dock_does_not_apply_a_threshold_moved_during_its_run(widget, qtbot, c2c12_stack):
    """A Threshold moved during the run is applied after it; not by a dock closed meanwhile (its
    re-threshold job wrote into the masks, beside the new Segment dock's runs)."""
    viewer, w = widget
    image = viewer.add_image(np.concatenate([c2c12_stack] * 4), name="c2c12")

    def move_then_close():
        w._threshold.value = 0.9  # (pending: the run goes on)
        viewer.window.remove_dock_widget(w.native)

    done = _run_stack_doing_after_first_plane(w, image, move_then_close)
    _wait(qtbot, w)
    assert done
    qtbot.wait(300)  # (the pending re-threshold was started by a timer after the run's end)
    assert w._worker is None and w._status.value.startswith("Cancelled") and "applied" not in w._status.value


def test_a_whole_stack_whose_masks_fit_neither_in_memory_nor_on_disk_is_refused_before_it_starts(
        widget, notifications, monkeypatch):
    """A lazily opened stack far larger than memory: its whole-stack masks filled the memory plane by
    plane until the system killed napari (the corrections lost). They go to disk now (next test); where
    the disk has no room either, the run is refused before it starts, with the ways that work (a slice,
    a field of view, the CLI's block-by-block OME-Zarr)."""
    import dask.array as da

    from napari_unet._memory import available_memory
    from napari_unet.widgets import _disk_masks

    viewer, w = widget
    monkeypatch.setattr(_disk_masks, "DISK_MARGIN_BYTES", 1 << 62)  # (no disk has that much room)
    free = available_memory()
    plane = 4096 * 4096 * 2  # bytes of a masks plane (uint16: the masks of a stack read lazily)
    n = int(free / plane) + 8  # (the masks of every plane: more than the memory free)
    image = viewer.add_image(da.zeros((n, 4096, 4096), dtype=np.uint8, chunks=(1, 4096, 4096)),
                             name="huge", contrast_limits=(0, 255))
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    assert w._worker is None and w._status.value.startswith("Not started: the masks of")
    assert any("do not fit in memory, nor in" in m and "NAPARI_UNET_CACHE_DIR" in m and "--dask" in m
               for m in notifications)
    assert masks_layer_name("huge") not in viewer.layers  # (made for the run, removed again)
    assert not list(_disk_masks.masks_dir().glob("*.masks"))


def test_masks_larger_than_the_memory_free_are_held_on_disk_edited_saved_and_removed_with_the_layer(
        widget, qtbot, c2c12_stack, tmp_path, notifications, monkeypatch):
    """Masks that do not fit in the memory free live in a file (a memory map) instead of being refused:
    the run writes them plane by plane as into memory, the brush paints into them, the brush's next free
    id comes without a pass over the file, they save as any masks, and the file goes with the layer.
    A layer made in memory by a run of one slice moves to disk, its slice kept, before a whole-stack
    run that would not fit. (The memory free made small by the share of it masks may take.)"""
    import dask.array as da

    from napari_unet.io._writer import write_labels
    from napari_unet.widgets import _disk_masks
    from napari_unet.widgets._object_tools import select_next_free_label

    viewer, w = widget
    stack = np.concatenate([c2c12_stack] * 2)  # (8 frames)
    in_memory = viewer.add_image(stack, name="in memory")
    _segment(w, qtbot, in_memory, SCOPE_STACK)
    expected = np.asarray(viewer.layers[masks_layer_name("in memory")].data).copy()
    assert expected[0].max() > 0 and not _disk_masks.on_disk(viewer.layers[masks_layer_name("in memory")].data)

    # a slice first (its masks made in memory: one plane fits), then the whole stack: moved to disk
    image = viewer.add_image(stack, name="stack")
    _segment(w, qtbot, image, SCOPE_SLICE)
    masks = viewer.layers[masks_layer_name("stack")]
    assert not _disk_masks.on_disk(masks.data)
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    w._overwrite.value = True
    _segment(w, qtbot, image, SCOPE_STACK)
    data = masks.data
    assert _disk_masks.on_disk(data) and Path(data.filename).parent == _disk_masks.masks_dir()
    assert any("does not fit in the memory free: held in a file on disk" in m for m in notifications)
    np.testing.assert_array_equal(np.asarray(data), expected)  # (the same masks as in memory)
    assert _disk_masks.top_id(data) == int(expected.max())

    # from now on nothing reads the whole file in the window's thread (a 4 GB file: seconds each time)
    whole = data.size

    def guarded(name):
        def check(self, *args, **kwargs):
            assert self.size != whole, f"a pass over the whole masks file ({name})"
            return getattr(np.ndarray, name)(self, *args, **kwargs)
        return check

    for name in ("max", "any", "min", "astype"):
        monkeypatch.setattr(np.memmap, name, guarded(name), raising=False)
    _segment(w, qtbot, image, SCOPE_SLICE)  # (a run into masks on disk: its start, its plane, its end)
    assert w._status.value.startswith("Done")

    # the brush: its next free id above every id written (runs and edits), no pass over the file
    label = select_next_free_label(masks)
    assert label == int(expected.max()) + 1
    masks.paint((3, 10, 10), label + 40, refresh=True)
    assert data[3, 10, 10] == label + 40 and _disk_masks.top_id(data) == label + 40
    assert select_next_free_label(masks) == label + 41

    # saved plane by plane as any masks, read back the same
    path = write_labels(tmp_path / "stack_masks.tif", data, corrected=masks.metadata)
    np.testing.assert_array_equal(tifffile.imread(path), np.asarray(data))

    # a new layer of a lazily read stack whose masks do not fit: made on disk at once
    lazy = viewer.add_image(da.from_array(stack, chunks=(1, 96, 96)), name="lazy", contrast_limits=(0, 255))
    _segment(w, qtbot, lazy, SCOPE_STACK)
    lazy_masks = viewer.layers[masks_layer_name("lazy")]
    assert _disk_masks.on_disk(lazy_masks.data) and lazy_masks.data.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(lazy_masks.data), expected)

    # the files go with their layers
    files = {Path(data.filename), Path(lazy_masks.data.filename)}
    assert all(f.exists() for f in files)
    del data
    viewer.layers.remove(masks)
    viewer.layers.remove(lazy_masks)
    del masks, lazy_masks
    import gc

    for _ in range(20):
        gc.collect()
        qtbot.wait(50)
        if not any(f.exists() for f in files):
            break
    assert not any(f.exists() for f in files)


def test_masks_files_left_by_a_napari_that_ended_are_removed_and_16_bit_masks_on_disk_widen_on_disk(
        tmp_path, monkeypatch):
    """A masks file of a process that is gone (napari crashed) is removed when masks next go to disk; one
    of a process still running is left. 16-bit masks on disk widen into a new file, plane by plane, values
    and the largest id kept."""
    import subprocess
    import sys

    from napari_unet.widgets import _disk_masks

    folder = _disk_masks.masks_dir()
    folder.mkdir(parents=True, exist_ok=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = _disk_masks._OWNER.split("@", 1)[1]
    gone = folder / f"{int(ended.stdout)}@{host}~0000~old{_disk_masks._SUFFIX}"
    running = folder / f"1@{host}~0000~init{_disk_masks._SUFFIX}"  # (pid 1 is always running)
    elsewhere = folder / f"{int(ended.stdout)}@another-computer~0000~theirs{_disk_masks._SUFFIX}"  # (a shared cache)
    for path in (gone, running, elsewhere):
        path.write_bytes(b"x")
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    data = _disk_masks.new_masks((3, 16, 16), np.uint16, "some masks")
    assert _disk_masks.on_disk(data) and not gone.exists() and running.exists() and elsewhere.exists()
    data[1, 2:4, 2:4] = 65535
    _disk_masks.note_ids(data, 65535)
    wide = _disk_masks.widened(data, np.int32)
    assert _disk_masks.on_disk(wide) and wide.dtype == np.int32 and wide.filename != data.filename
    np.testing.assert_array_equal(np.asarray(wide), np.asarray(data))
    assert _disk_masks.top_id(wide) == 65535 and _disk_masks.top_id(np.zeros((2, 2))) is None
    running.unlink()
    elsewhere.unlink()


def test_files_left_by_a_napari_that_was_killed_are_removed_as_segment_docks(
        make_napari_viewer, tmp_path, monkeypatch, qtbot):
    """Removed only by the next 3D run large enough to need a file, they stayed (gigabytes, often in a
    /tmp held in memory); those of a process still running stay."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"napari-unet-3d-{int(ended.stdout)}-abc"
    running = tmp_path / "napari-unet-3d-1-abc"  # (pid 1 is always running)
    for folder in (gone, running):
        folder.mkdir()
        (folder / "probabilities.npy").write_bytes(b"x")
    # and a model's hidden copy that a save killed before its rename left beside the model (a whole
    # model, kept until a model of that name was saved again); one whose model is not there is kept
    import os
    import time

    from napari_unet.core.catalog import user_models_dir

    models = user_models_dir()
    models.mkdir(parents=True, exist_ok=True)
    (models / "mine.pt").write_bytes(b"model")
    left = models / ".mine.pt.ab12cd34.tmp"
    only_copy = models / ".other.pt.ab12cd34.tmp"
    for path in (left, only_copy):
        path.write_bytes(b"half a model")
        os.utime(path, (time.time() - 3600,) * 2)
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    qtbot.waitUntil(lambda: not gone.exists() and not left.exists(), timeout=30_000)
    assert running.exists() and only_copy.exists() and (models / "mine.pt").exists()


def test_masks_moved_to_disk_keep_the_ids_of_their_undo_history(make_napari_viewer, monkeypatch):
    """napari keeps a layer's undo history when its data is replaced: an object painted then erased
    before the masks moved to disk came back with Ctrl+Z after, and the brush's next free id (from the
    ids written since) was its id: one id, two cells."""
    from napari_unet.widgets import _disk_masks
    from napari_unet.widgets._object_tools import select_next_free_label

    viewer = make_napari_viewer()
    data = np.zeros((3, 64, 64), np.int32)
    data[1, :10, :10] = 5
    layer = viewer.add_labels(data, name="m")
    _disk_masks.watch_edits(layer)
    layer.brush_size = 6
    layer.paint((1, 30, 30), 6)
    layer.paint((1, 30, 30), 0)  # (erased: 6 is only in the history now)
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    assert _disk_masks.move_to_disk(layer) and _disk_masks.on_disk(layer.data)
    layer.undo()
    assert layer.data[1, 30, 30] == 6 and select_next_free_label(layer) == 7


def test_a_run_into_masks_on_a_full_disk_stops_before_writing(widget, qtbot, c2c12_stack, notifications, monkeypatch):
    """Written into a memory map on a full disk, napari dies (SIGBUS) and the corrections with it: the run
    stops before a plane that would not fit, and says why."""
    from napari_unet.widgets import _disk_masks

    viewer, w = widget
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    monkeypatch.setattr(_disk_masks, "WRITE_MARGIN_BYTES", 1 << 62)
    image = viewer.add_image(c2c12_stack, name="full")
    _segment(w, qtbot, image, SCOPE_STACK)
    assert any("is full: the run stops" in m for m in notifications) and w._status.value.startswith("Cancelled")
    assert masks_layer_name("full") not in viewer.layers  # (made for the run, nothing written: removed again)


def test_the_masks_follow_a_rotation_or_affine_set_on_the_image_after_a_first_run(widget, qtbot, c2c12_stack,
                                                                                   notifications):
    """Rotated (the console, another plugin) or moved in napari's Transform mode after a first run: the
    next run's masks were drawn elsewhere than the cells, and clicks and the brush landed on others."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack[0], name="one")
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("one")]
    w._overwrite.value = True
    for change in ({"rotate": 90}, {"affine": np.array([[0.8, 0.3, 5.0], [-0.3, 0.8, 10.0], [0.0, 0.0, 1.0]])}):
        for key, value in change.items():
            setattr(image, key, value)
        _segment(w, qtbot, image)
        np.testing.assert_allclose(masks._data_to_world.affine_matrix, image._data_to_world.affine_matrix)
    assert any("now has the pixel size, position and orientation of 'one'" in m for m in notifications)


def test_weights_kept_during_the_run_after_fine_tuning_segment_the_view_again(widget, qtbot, c2c12_stack,
                                                                              tiny_model_path, tmp_path):
    """"Keep the trained weights instead" pressed while Segment re-segmented the view after the fine-tuning
    (with the weights the gate had kept): the view stayed segmented by those, a note said to segment
    again. That run was no run of the user's: it stops and the view is segmented with the new weights.
    Cancel pressed meanwhile stops it all; a run of the user's is never stopped (see the test above)."""
    import shutil

    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    kept = tmp_path / "kept.pt"
    shutil.copy(tiny_model_path, kept)
    w.use_new_model(str(tiny_model_path), image)  # the run after the fine-tuning: the gate's weights
    assert w._worker is not None and w._run_automatic
    w.use_new_model(str(kept), image)  # Keep pressed: the trained weights saved
    assert "once the run with the one before stops" in w._status.value
    qtbot.waitUntil(lambda: w._worker is None and w._new_model_after_run is None and w._run_model == str(kept),
                    timeout=60_000)
    _wait(qtbot, w)
    assert w._status.value.startswith("Done") and Path(w._model_combo.value).name == "kept.pt"
    assert viewer.layers[masks_layer_name("c2c12")].data[viewer.dims.current_step[0]].any()

    w.use_new_model(str(tiny_model_path), image)
    w.use_new_model(str(kept), image)
    w.cancel()  # the user's Cancel: nothing follows
    _wait(qtbot, w)
    qtbot.wait(100)
    assert w._worker is None and w._run_model == str(tiny_model_path) and w._new_model_after_run is None


def test_a_keyboard_user_who_starts_a_run_with_space_can_cancel_it_with_space(make_napari_viewer, qtbot,
                                                                               tiny_model_path, c2c12_stack):
    """Segment disabled at its start passed the keyboard focus on to the dock's title bar, where a
    second Space hid the dock while the run went on: the focus goes to Cancel, and back at the end."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.add_model_file(tiny_model_path)
    w.reset_choices()
    w._image_combo.value = viewer.add_image(c2c12_stack, name="c2c12")
    w._scope.value = SCOPE_STACK
    window = viewer.window._qt_window
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    w._run_button.native.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.waitUntil(w._run_button.native.hasFocus, timeout=5000)
    qtbot.keyClick(w._run_button.native, Qt.Key.Key_Space)
    assert w._cancel_button.native.hasFocus() and w._cancel_button.enabled
    _wait(qtbot, w)
    assert w._run_button.native.hasFocus() and not w._cancel_button.enabled


def test_long_status_notes_wrap_in_the_dock_instead_of_widening_it(make_napari_viewer, qtbot, tiny_model_path):
    """magicgui makes its labels as wide as their text: a long note widened the dock for good (412 ->
    641 px on a 1366 px screen) and cut its last line off; the status lines now take the row's width."""
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    qtbot.wait(100)
    before = w.native.minimumSizeHint().width()
    w._status.value = " ".join(["A long note about the run that a user should read whole."] * 6)
    w._diameter_used.value = "17 px (estimated), image scaled x1.41 " * 3
    qtbot.wait(100)
    assert w.native.minimumSizeHint().width() <= before + 5
    label = w._status.native
    assert label.height() >= label.heightForWidth(label.width()) - 1  # every line of it shown


def test_a_field_of_view_without_objects_is_named_so(make_napari_viewer, notifications):
    """Nothing found in the part of a plane in view was reported as nothing found in the plane."""
    from napari_unet.widgets._masks import report_empty_planes
    from napari_unet.widgets._segment_job import EmptyPlane

    make_napari_viewer()  # (notifications go through a viewer's window)
    report_empty_planes([EmptyPlane((1,), False, in_view=True)])
    report_empty_planes([EmptyPlane((2,), False), EmptyPlane((3,), False, in_view=True)])
    hint = ("try a lower threshold or another object diameter; if the model does not know images like these, label "
            "a few cells by hand (Correct) and Fine-tune it.")
    assert notifications[-2:] == [f"No objects found in the part in view of slice 1: {hint}",
                                  f"No objects found in slice 2, slice 3: {hint}"]


def test_a_short_status_after_a_long_one_is_drawn_in_its_row(make_napari_viewer, qtbot):
    """The status line's height followed the longest text it had shown (QLabel's height for a width
    counts the minimum height set from it): "Done in 25 s" after three lines of progress was drawn
    in the middle of 50 px, below the row it stood in, and read as an empty status."""
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    label = w._status.native
    w._status.value = "brightness of the objects checked (plane 11/11) — 0.0 s left; " * 3
    qtbot.waitUntil(lambda: label.minimumHeight() > 2 * label.fontMetrics().height(), timeout=5000)
    w._status.value = "Done in 25 s"
    qtbot.waitUntil(lambda: label.minimumHeight() < 2 * label.fontMetrics().height(), timeout=5000)
    qtbot.waitUntil(lambda: label.height() < 2 * label.fontMetrics().height(), timeout=5000)
    assert label.parentWidget().rect().contains(label.geometry())  # drawn inside its row


def test_a_gpu_failure_says_how_to_run_on_the_cpu(make_napari_viewer, notifications):
    """A card the installed PyTorch was not built for fails every run with a CUDA error, and Segment
    has no device choice: its message says how to run on the CPU; other errors say nothing of it."""
    from napari_unet.widgets._base import gpu_hint

    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w._on_error(RuntimeError("CUDA error: no kernel image is available for execution on the device"))
    assert notifications[-1].endswith("start napari with the environment variable NAPARI_UNET_DEVICE=cpu.")
    assert w._status.value.startswith("Failed: CUDA error: no kernel image")
    assert gpu_hint(ValueError("The image holds no data"), "") == ""
    assert gpu_hint(OSError("Metal_alloy_03.tif: no MPS images here"), "") == ""  # (words of a GPU's errors only)
    assert gpu_hint(MemoryError("The GPU ran out of memory ... or train on the CPU (Device: cpu)."), "x") == ""
    assert gpu_hint(RuntimeError("MPS backend out of memory"), "choose Device: cpu under Advanced") == \
        " To run on the CPU instead, choose Device: cpu under Advanced."


def test_an_empty_field_of_view_is_told_from_an_empty_plane(tiny_model_path, c2c12_stack):
    """The worker says whether nothing was found in a part of the plane (a field of view) or in all
    of it: a field of view that holds the whole plane is the plane."""
    from napari_unet.widgets._segment_job import EmptyPlane, segment_planes

    plane = c2c12_stack[0]
    h, w = plane.shape
    for region, part in (((slice(0, h), slice(0, w)), False), ((slice(None), slice(None)), False),
                         ((slice(10, 60), slice(0, w)), True)):
        empty = [item for item in segment_planes(str(tiny_model_path), plane, [()], region, rgb=False,
                                                 threshold=0.999, min_size=10**6) if isinstance(item, EmptyPlane)]
        assert [e.in_view for e in empty] == [part], region


def test_a_projection_is_told_in_the_layers_slices_not_in_world_units(make_napari_viewer):
    """napari's slice thickness is in world units: over slices 0.25 apart a thickness of 1 projects 4
    of them, over slices 5 apart a thickness of 2 none."""
    from napari_unet.widgets.segment import _projects

    viewer = make_napari_viewer()
    close = viewer.add_image(np.zeros((8, 16, 16), np.float32), scale=(0.25, 1, 1), projection_mode="max")
    apart = viewer.add_image(np.zeros((8, 16, 16), np.float32), scale=(5, 1, 1), projection_mode="max")
    viewer.dims.thickness = (1, 1, 1)
    assert _projects(viewer, close) and not _projects(viewer, apart)
    viewer.dims.thickness = (2, 1, 1)
    assert not _projects(viewer, apart)
    apart.projection_mode = "none"
    viewer.dims.thickness = (20, 1, 1)
    assert not _projects(viewer, apart)


def test_progress_is_shown_at_most_every_interval_and_the_latest_is_not_lost(widget, qtbot):
    """Each progress update repaints the window (in the 3D view, the volume): at most every 0.2 s. An
    update that comes sooner (a plane's steps after its last tile, a few ms later) is shown when the
    interval is over, not dropped: the status kept the tile's words through those steps."""
    from napari_unet.core.events import Progress
    from napari_unet.widgets.segment import PROGRESS_INTERVAL

    _viewer, w = widget
    w._worker = object()  # (as while a run goes on: the updates come from its worker)
    try:
        w._on_yielded(Progress(1, 4, message="tile 1/1 of plane 1/4"))
        assert w._status.value.startswith("tile 1/1 of plane 1/4") and w._progress.value == 25
        w._on_yielded(Progress(1, 4, message="objects separated (plane 1/4)"))
        w._on_yielded(Progress(1, 4, message="brightness of the objects checked (plane 1/4)"))
        assert w._status.value.startswith("tile 1/1")  # (not yet)
        qtbot.waitUntil(lambda: w._status.value.startswith("brightness of the objects checked"),
                        timeout=int(5000 * PROGRESS_INTERVAL))
    finally:
        w._worker = None


def test_a_cancelled_whole_stack_run_is_gone_on_from(widget, qtbot, c2c12_stack, notifications):
    """Cancelled at frame 300 of 500, the next whole-stack run redid the 300 (a review). Given the same
    (model, Threshold, Min. size, diameter, slices), it segments only the slices left; a slice
    segmented meanwhile to look does not lose that; other settings segment them all."""
    from napari_unet.core.predict import PlaneResult

    viewer, w = widget
    image = viewer.add_image(np.tile(c2c12_stack, (3, 1, 1)), name="c2c12")  # 12 slices
    done = _run_stack_doing_after_first_plane(w, image, w.cancel)
    finished: list = []  # (a slice or two may finish before the cancel is taken)
    w._worker.yielded.connect(lambda item: isinstance(item, PlaneResult) and finished.append(tuple(item.index)))
    _wait(qtbot, w)
    assert done and "goes on from there" in w._status.value
    finished = {*finished, tuple(done[0])}
    w._scope.value = SCOPE_SLICE  # a look at one slice, then the whole stack again
    w._run_button.clicked.emit()
    _wait(qtbot, w)
    w._scope.value = SCOPE_STACK
    written: list = []
    w._run_button.clicked.emit()
    w._worker.yielded.connect(lambda item: isinstance(item, PlaneResult) and written.append(tuple(item.index)))
    _wait(qtbot, w)
    assert sorted(written) == sorted({(i,) for i in range(12)} - finished)
    assert any(m.startswith(f"Going on from the run cancelled before, given the same: {len(finished)} of these 12 "
                            "slices") for m in notifications)
    written.clear()  # finished: the next run segments them all
    w._run_button.clicked.emit()
    w._worker.yielded.connect(lambda item: isinstance(item, PlaneResult) and written.append(tuple(item.index)))
    _wait(qtbot, w)
    assert len(written) == 12


def test_a_cancelled_re_threshold_after_a_whole_stack_run_leaves_the_dock_usable(widget, qtbot, c2c12_stack):
    """A review: Threshold moved after a whole-stack run, that re-threshold cancelled: the dock took it
    for the stack run (TypeError in the slot), stayed at "Cancelling…" and refused every later run."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")
    _segment(w, qtbot, image, SCOPE_STACK)
    w._min_size.value = 10_000  # a re-threshold starts at once
    assert w._worker is not None and w._rethresholding
    w.cancel()
    _wait(qtbot, w)
    assert w._status.value.startswith("Cancelled") and w._resumable is None
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()  # the next run starts
    assert w._worker is not None
    _wait(qtbot, w)
    assert w._status.value.startswith("Done")


def test_slices_segmented_before_the_size_was_found_are_not_gone_on_from(widget, qtbot, data_dir):
    """A review: with the automatic diameter, a whole-stack run yields the slices that tell no size at
    the image's own scale first, then again at the size found; cancelled in between, the next run
    took them for finished and left them so (C2C12 frame 0 empty). Only results at the size found
    count, and the run goes on at that size."""
    import tifffile

    from napari_unet.core.catalog import resolve_model_path
    from napari_unet.core.predict import PlaneResult

    viewer, w = widget
    frames = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:4, :120, :120]
    image = viewer.add_image(frames, name="c2c12")
    w.reset_choices()
    w._image_combo.value = image
    w.select_model(resolve_model_path("cells"))
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()
    seen: list = []

    def cancel_at_the_first_result_at_its_size(item):
        if isinstance(item, PlaneResult):
            seen.append(item)
            if not item.provisional:
                w.cancel()

    w._worker.yielded.connect(cancel_at_the_first_result_at_its_size)
    _wait(qtbot, w)
    assert seen[0].provisional  # (frame 0 tells no size)
    sized = {tuple(r.index) for r in seen if not r.provisional}
    assert w._resumable is not None and set(w._resumable.done) == sized
    first = next(r for r in seen if not r.provisional)
    measured = first.diameter
    assert (w._resumable.size.diameter, w._resumable.size.scale) == (measured, first.scale)
    written: list = []
    w._run_button.clicked.emit()
    w._worker.yielded.connect(lambda item: isinstance(item, PlaneResult) and written.append(item))
    _wait(qtbot, w)
    assert {tuple(r.index) for r in written} == {(i,) for i in range(4)} - sized
    # (the size that run measured, at its scale)
    assert all(not r.provisional and r.diameter == measured and r.scale == first.scale for r in written)


def test_masks_of_a_lazily_read_stack_are_16_bit(widget, qtbot, c2c12_stack):
    """The masks of a stack read lazily are held whole in memory: 2 GB of planes made 4 GB of int32
    masks (a review of large stacks). They are uint16 (a plane's ids start from 1; widened if a run's
    ids do not fit)."""
    import dask.array as da

    viewer, w = widget
    image = viewer.add_image(da.from_array(c2c12_stack, chunks=(1, 96, 96)), name="lazy")
    done = _run_stack_doing_after_first_plane(w, image, lambda: None)
    _wait(qtbot, w)
    masks = viewer.layers[masks_layer_name("lazy")]
    assert done and masks.data.dtype == np.uint16 and masks.data.max() > 0


def test_a_slice_run_may_measure_the_size_on_the_slices_after_it(widget, c2c12_stack):
    """With the automatic diameter, a slice (or a field of view) of a stack gives the core the slices
    after it, in the stack's order, to measure the object size on when it does not tell it (see
    core's size_planes); none for a whole-stack run or a 2D image."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="c2c12")  # 4 frames
    assert w._size_planes(image, SCOPE_SLICE, [(2,)]) == [(3,), (0,), (1,)]
    assert w._size_planes(image, SCOPE_STACK, [(0,), (1,), (2,), (3,)]) is None
    plane = viewer.add_image(c2c12_stack[0], name="one")
    assert w._size_planes(plane, SCOPE_SLICE, [()]) is None


def test_masks_do_not_follow_their_image_into_a_name_another_layer_holds(widget, qtbot, c2c12_stack, notifications):
    """Image A renamed B while a Labels layer "B masks" was there: A's masks became "B masks [1]",
    unsaid, paired with nothing, and the next run wrote into the other "B masks" (a review of a long
    session). They keep their name, and it is said."""
    viewer, w = widget
    image = viewer.add_image(c2c12_stack, name="A")
    _segment(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("A")]
    viewer.add_labels(np.zeros(c2c12_stack.shape, np.int32), name="B masks")
    image.name = "B"
    assert masks.name == "A masks"
    assert any("'A masks' keep their name: another layer is named 'B masks'" in m for m in notifications)
    image.name = "C"  # a free name: followed again
    assert masks.name == "C masks"


def test_a_lazily_read_file_damaged_since_it_was_opened_is_said_so(widget, qtbot, tmp_path, c2c12_stack):
    """A stack opened lazily, its file replaced by a truncated copy meanwhile (another program exporting
    it): the run failed with the decoder's words alone ("libdeflate_zlib_decompress returned
    LIBDEFLATE_BAD_DATA"; a review). It says the file changed or is damaged, and to open it again;
    the slices finished stay. (Opened right after the dock, it also met the warm-up thread importing
    xarray: dask's from_array found it half made, "partially initialized module 'xarray'".)"""
    import os

    from napari_unet.io._reader import read_layer_data

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.tile(c2c12_stack, (2, 1, 1)), compression="zlib")  # 8 frames
    ((data, meta, _kind),) = read_layer_data(path, lazy=True)
    viewer, w = widget
    image = viewer.add_image(data, name="stack")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    _run_stack_doing_after_first_plane(w, image, lambda: None)
    _wait(qtbot, w)
    assert w._status.value.startswith("Failed: The plane at index ") and "could not be read: its file may be " \
        "damaged, or changed since it was opened (then open it again" in w._status.value
    assert viewer.layers[masks_layer_name("stack")].data[0].any()  # (the slices finished stay)
