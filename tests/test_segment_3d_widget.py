"""The Segment widget's "3D objects": 3D labels in the masks layer, corrections kept and used for
fine-tuning, clear notifications for what cannot be segmented in 3D."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.widgets._corrections import CORRECTED_KEY, CorrectedSlices
from napari_unet.widgets.segment import SCOPE_SLICE, SCOPE_STACK, SegmentWidget, masks_layer_name


@pytest.fixture(scope="module")
def nuclei3d(data_dir) -> np.ndarray:
    """A crop of StarDist's synthetic 3D nuclei (BSD-3), (31, 36, 40)."""
    return tifffile.imread(data_dir / "nuclei3d_synthetic" / "image.tif")[:, :36, :40]


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(widget, SegmentWidget)
    return viewer, widget  # the built-in model: 3D objects need real ones


def _run(w, qtbot, image):
    w.reset_choices()
    w._image_combo.value = image
    w._three_d.enabled.value = True
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)


def test_3d_objects_fill_the_masks_layer_and_corrections_are_kept_and_learnt(widget, qtbot, nuclei3d,
                                                                              notifications):
    from napari_unet.core.volume import segment_volume
    from napari_unet.widgets._examples import examples_from_layers

    viewer, w = widget
    image = viewer.add_image(nuclei3d, name="nuclei", scale=(1.0, 0.5, 0.5), axis_labels=("z", "y", "x"))
    w.reset_choices()
    w._image_combo.value = image
    assert w._three_d.available and w._three_d.z_axis.value == 0
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("nuclei")]
    assert tuple(masks.scale) == tuple(image.scale)
    labels = np.asarray(masks.data)
    expected = segment_volume(w._model_cache[next(iter(w._model_cache))], nuclei3d, spacing=(1.0, 0.5, 0.5))
    np.testing.assert_array_equal(labels, expected)  # the core's 3D path, ids unique in the volume
    spans = [len(np.unique(np.nonzero(labels == k)[0])) for k in range(1, int(labels.max()) + 1)]
    assert labels.max() > 5 and np.median(spans) >= 3  # objects span planes with one id
    assert w._status.value.startswith("Done")
    assert not any("isotropic" in m for m in notifications)  # the layer's scale is the voxel size
    w._threshold.value = 0.9  # 3D objects are not re-thresholded plane by plane: it says so
    assert "not re-thresholded" in w._status.value
    np.testing.assert_array_equal(masks.data, labels)
    w._threshold.value = 0.5  # (back: the next run finds the same nuclei)

    # the user corrects plane 12 with the brush: it is marked, kept by the next 3D run, and learnt from
    masks.brush_size = 4
    masks.paint((12, 20, 20), 500)
    assert masks.metadata[CORRECTED_KEY] == [[12]]
    corrected = np.asarray(masks.data[12]).copy()
    _run(w, qtbot, image)
    np.testing.assert_array_equal(masks.data[12], corrected)
    assert any("left as they are" in m for m in notifications)
    # the nuclei crossing it go on with its ids above and below (they were cut in three there: new ids around it)
    def shared(a: np.ndarray, b: np.ndarray) -> int:
        return len((set(np.unique(a).tolist()) & set(np.unique(b).tolist())) - {0})

    for z in (11, 13):
        assert shared(masks.data[z], corrected) >= shared(labels[z], labels[12]) - 1 >= 3  # (as the first run's)
        assert 500 not in np.asarray(masks.data[z])  # (the brush's dab: none of the volume's objects)
    examples = examples_from_layers(image, masks, CorrectedSlices.for_layer(masks).planes)
    assert len(examples) == 1 and examples[0].sections  # (planes through 3D objects: see core's finetune)
    np.testing.assert_array_equal(examples[0].labels, corrected)
    np.testing.assert_array_equal(examples[0].image, nuclei3d[12])


def test_3d_without_voxel_size_says_isotropic_and_bad_inputs_are_notifications(widget, qtbot, nuclei3d,
                                                                                notifications):
    viewer, w = widget
    image = viewer.add_image(np.stack([nuclei3d[10:22, :24, :24]] * 3), name="plain")  # (t, z, y, x)
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    _run(w, qtbot, image)
    assert len([m for m in notifications if "isotropic" in m]) == 1  # said once, not once a volume
    assert viewer.layers[masks_layer_name("plain")].data.max() > 0
    w._scope.value = SCOPE_SLICE
    _run(w, qtbot, image)
    assert len([m for m in notifications if "isotropic" in m]) == 1  # nor once a run (it was, 5 times an hour)

    flat = viewer.add_image(nuclei3d[:1], name="one plane")
    _run(w, qtbot, flat)
    assert any("Z axis of more than one plane" in m for m in notifications)
    assert w._status.value.startswith("Not started: 3D objects need a Z axis")
    assert masks_layer_name("one plane") not in viewer.layers  # nothing written, no empty layer left

    plane = viewer.add_image(nuclei3d[0], name="2d")
    w.reset_choices()
    w._image_combo.value = plane
    assert not w._three_d.available and not w._three_d.active  # no Z axis: no 3D option


def test_the_z_axis_chosen_stays_and_time_is_never_z(widget, qtbot, nuclei3d):
    viewer, w = widget
    stack = np.stack([nuclei3d[8:14, :32, :32]] * 2, axis=1)  # (6, 2, 32, 32): no axis labels
    image = viewer.add_image(stack, name="zt")
    w.reset_choices()
    w._image_combo.value = image
    w._three_d.enabled.value = True
    # nothing names Z: the last stack axis of more than 4 entries is proposed (2 may be channels)
    assert w._three_d.z_axis.value == 0
    w._three_d.z_axis.value = 1  # the user says axis 1 is depth
    viewer.add_points(name="other")  # any layer added refreshes the choices: the user's stays
    assert w._three_d.z_axis.value == 1 and w._three_d.enabled.value
    w._three_d.z_axis.value = 0
    w._run_button.clicked.emit()  # the masks layer made at the start must not reset it either
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w._three_d.z_axis.value == 0
    written = np.asarray(viewer.layers[masks_layer_name("zt")].data).reshape(6, 2, -1).any(-1)
    t = viewer.dims.current_step[1]
    assert written[:, t].sum() >= 3 and not written[:, 1 - t].any()  # one volume along axis 0

    lapse = viewer.add_image(stack[:, 0], name="lapse", axis_labels=("t", "y", "x"))
    w.reset_choices()
    w._image_combo.value = lapse
    assert not w._three_d.available and not w._three_d.active  # time is no depth: no 3D option
    tzyx = viewer.add_image(stack.transpose(1, 0, 2, 3), name="tzyx", axis_labels=("t", "z", "y", "x"))
    w._image_combo.value = tzyx
    assert [value for _label, value in w._three_d._choices()] == [1] and w._three_d.z_axis.value == 1
    assert not w._three_d.enabled.value  # another image: 3D is asked for again
    w._three_d.enabled.value = True
    w._image_combo.value = image
    assert not w._three_d.enabled.value and w._three_d.z_axis.value == 0


def test_segmenting_again_after_fine_tuning_in_3d_runs_the_volume_without_moving(widget, qtbot, nuclei3d,
                                                                                  notifications):
    from napari_unet.core.catalog import resolve_model_path

    viewer, w = widget
    image = viewer.add_image(nuclei3d, name="nuclei", axis_labels=("z", "y", "x"))
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("nuclei")]
    viewer.dims.set_current_step(0, 15)
    masks.brush_size = 4
    masks.paint((15, 20, 20), 500)
    corrected = np.asarray(masks.data[15]).copy()
    w.use_new_model(resolve_model_path("nuclei"), image)  # what Fine-tune does when it has saved a model
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert viewer.dims.current_step[0] == 15  # no "segmenting slice 16 instead": the volume is one piece
    assert not any("instead" in m for m in notifications)
    np.testing.assert_array_equal(masks.data[15], corrected)
    kept = [m for m in notifications if "left as they are" in m]
    assert kept and "tick" not in kept[-1]  # Overwrite does not apply to this run: not offered


def test_a_stack_calibrated_in_x_and_y_only_has_no_voxel_size_as_in_the_cli(nuclei3d):
    """ImageJ writes no z step of 1: the reader gives the scale (1, 0.5, 0.5) in (pixel, um, um), which
    was taken as a 1 um step beside 0.5 um pixels; the CLI assumes isotropic voxels and says so."""
    from napari.layers import Image

    from napari_unet.widgets._segment3d import voxel_size

    stack = nuclei3d[:8, :32, :32]
    assert voxel_size(Image(stack, scale=(1, 0.5, 0.5), units=("pixel", "um", "um")), 0) is None
    assert voxel_size(Image(stack, scale=(2, 0.5, 0.5), units=("um", "um", "um")), 0) == (2.0, 0.5, 0.5)
    assert voxel_size(Image(stack, scale=(3, 1, 1)), 0) == (3.0, 1.0, 1.0)  # no units: the scale as it is


def test_a_3d_run_cancelled_before_writing_leaves_the_2d_masks_re_thresholdable(widget, qtbot, nuclei3d):
    viewer, w = widget
    image = viewer.add_image(nuclei3d[8:20], name="s")
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_STACK
    w._run_button.clicked.emit()  # 2D, every plane
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    masks = viewer.layers[masks_layer_name("s")]
    two_d = np.asarray(masks.data).copy()
    w._three_d.enabled.value = True
    w._run_button.clicked.emit()
    w.cancel()  # at once: no volume written
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert np.array_equal(masks.data, two_d)
    assert "no volume was finished: the masks are as they were" in w._status.value  # (not "finished slices kept")
    w._three_d.enabled.value = False
    w._threshold.value = 0.95
    # the 2D masks take the new threshold (they were said to be 3D objects, and kept as they were)
    qtbot.waitUntil(lambda: w._worker is None and not np.array_equal(masks.data, two_d), timeout=60_000)
    assert "not re-thresholded" not in w._status.value

    # a time-lapse of volumes cancelled after the first: said in volumes
    from napari_unet.widgets._segment3d import VolumeResult

    lapse = viewer.add_image(np.stack([nuclei3d] * 3), name="t")  # (t, z, y, x)
    w.reset_choices()
    w._image_combo.value = lapse
    w._three_d.enabled.value = True
    w._run_button.clicked.emit()
    w._worker.yielded.connect(lambda item: isinstance(item, VolumeResult) and w.cancel())
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "Cancelled" in w._status.value and "1 finished volume kept" in w._status.value


def test_3d_with_the_field_of_view_says_it_runs_the_volume_and_its_own_diameter(widget, qtbot, nuclei3d,
                                                                                notifications):
    from napari_unet.widgets.segment import SCOPE_SLICE, SCOPE_VIEW

    viewer, w = widget
    image = viewer.add_image(nuclei3d[8:20], name="s")
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()  # a 2D run: the diameter line says what it used
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w._diameter_used.value
    w._diameter_used.value = "the 2D run's"
    w._scope.value = SCOPE_VIEW
    _run(w, qtbot, image)
    assert any("the field of view does not apply" in m for m in notifications)
    # not the 2D run's any more: the size the volume was segmented at (it said nothing)
    assert w._diameter_used.value not in ("", "the 2D run's")
    assert viewer.layers[masks_layer_name("s")].data.max() > 0


def test_the_bar_of_a_time_lapse_of_volumes_covers_the_whole_run(nuclei3d):
    """Each volume's progress was passed on as it was: the bar went 0 -> 100% once per time point,
    and the time left counted the current volume only."""
    from napari_unet.core.catalog import builtin_models_dir
    from napari_unet.core.events import Progress
    from napari_unet.widgets._segment3d import VolumeResult, segment_volumes

    stack = np.stack([nuclei3d[8:16, :32, :32]] * 3)  # (T 3, Z 8, 32, 32)
    volumes = [(t, slice(None)) for t in range(3)]
    events = list(segment_volumes(str(builtin_models_dir() / "nuclei-fluo.pt"), stack, volumes, spacing=(1.0, 1.0, 1.0),
                                  threshold=None, min_size=None, diameter=None, device="cpu"))
    bars = [e for e in events if isinstance(e, Progress)][1:]  # (after "Loading the model")
    assert [e.index[0] for e in events if isinstance(e, VolumeResult)] == [0, 1, 2]
    fractions = [e.fraction for e in bars]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {e.total for e in bars} == {bars[0].total}
    first_of_second = next(e for e in bars if e.message.startswith("volume 2/3"))
    assert first_of_second.fraction >= 1 / 3 - 1e-6  # the first volume's third stays done
    elapsed = [e.elapsed for e in bars]
    assert elapsed == sorted(elapsed)


def test_a_cancelled_run_cleans_up_when_its_thread_ends(qtbot, make_napari_viewer):
    """quit() stopped iterating a worker's generator without closing it: a 3D run's temporary file
    of probabilities (400 MB for 100 x 1024 x 1024) and its arrays stayed until napari exited."""
    import threading

    from napari_unet.widgets._base import start_worker

    make_napari_viewer()  # (a Qt application, as in napari)
    cleaned, going = threading.Event(), threading.Event()

    def work():
        try:
            while True:
                going.set()
                yield 1
        finally:
            cleaned.set()

    done = []
    worker = start_worker(work(), finished=lambda: done.append(True))
    qtbot.waitUntil(going.is_set, timeout=10_000)
    worker.quit()
    qtbot.waitUntil(lambda: bool(done) and cleaned.is_set(), timeout=10_000)


def test_the_voxel_size_is_typed_in_the_widget_and_the_masks_follow_the_images_scale(widget, qtbot, nuclei3d,
                                                                                      notifications):
    """The 3D notes ask for a voxel size, which napari has no control for; set on the image after a
    first run, the masks kept their old scale (another plane shown, corrections into it)."""
    viewer, w = widget
    image = viewer.add_image(nuclei3d[::3], name="steps", axis_labels=("z", "y", "x"))  # planes 3 px apart
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("steps")]
    assert any("isotropic" in m for m in notifications) and not w._three_d.voxel.native.isHidden()
    assert w._three_d.voxel.value == ""  # uncalibrated
    notifications.clear()
    w._three_d.voxel.value = "3, 1, 1"
    w._three_d.voxel.native.editingFinished.emit()
    assert tuple(image.scale) == (3.0, 1.0, 1.0) and w._three_d.voxel.value == "3, 1, 1"
    assert tuple(masks.scale) == (3.0, 1.0, 1.0)  # at once: corrections land in the plane shown
    w._three_d.voxel.value = "two"
    w._three_d.voxel.native.editingFinished.emit()
    assert tuple(image.scale) == (3.0, 1.0, 1.0) and any("Voxel size: give three numbers" in m for m in notifications)
    _run(w, qtbot, image)
    assert tuple(masks.scale) == tuple(image.scale)  # the masks show the plane the image shows
    assert any("now has the pixel size, position and orientation" in m for m in notifications)
    assert not any("isotropic" in m for m in notifications)
    w._three_d.voxel.value = "4"  # the z step alone, in pixels
    w._three_d.voxel.native.editingFinished.emit()
    assert tuple(image.scale) == (4.0, 1.0, 1.0)

    # a file calibrated in y, x only (z in pixels): the z step typed is in their unit, and used
    from napari_unet.widgets._segment3d import voxel_size

    calibrated = viewer.add_image(nuclei3d[::3], name="xy only", axis_labels=("z", "y", "x"),
                                  scale=(1.0, 0.1234567, 0.1234567), units=("pixel", "micrometer", "micrometer"))
    w.reset_choices()
    w._image_combo.value = calibrated
    w._three_d.enabled.value = True
    assert w._three_d.voxel.value == "1, 0.1234567, 0.1234567" and voxel_size(calibrated, 0) is None
    w._three_d.voxel.native.editingFinished.emit()  # focus in and out, nothing typed: nothing rounded
    assert tuple(calibrated.scale) == (1.0, 0.1234567, 0.1234567)
    w._three_d.voxel.value = "0.5, 0.1234567, 0.1234567"
    w._three_d.voxel.native.editingFinished.emit()
    assert voxel_size(calibrated, 0) == pytest.approx((0.5, 0.1234567, 0.1234567))

    # an isotropic stack said so ("1, 1, 1" typed): kept, not taken for an uncalibrated one (the field
    # emptied, and every run asked for the voxel size again)
    iso = viewer.add_image(nuclei3d, name="iso", axis_labels=("z", "y", "x"))
    w.reset_choices()
    w._image_combo.value = iso
    w._three_d.enabled.value = True
    assert w._three_d.voxel.value == "" and voxel_size(iso, 0) is None
    w._three_d.voxel.value = "1, 1, 1"
    w._three_d.voxel.native.editingFinished.emit()
    assert w._three_d.voxel.value == "1, 1, 1" and voxel_size(iso, 0) == (1.0, 1.0, 1.0)
    notifications.clear()
    _run(w, qtbot, iso)
    assert not any("isotropic" in m for m in notifications)
    w._three_d.voxel.value = ""  # emptied: unknown again
    w._three_d.voxel.native.editingFinished.emit()
    assert voxel_size(iso, 0) is None and w._three_d.voxel.value == ""


def _segment_slice_in_2d_with_ids_of_its_own(viewer, w, qtbot, masks, z: int) -> None:
    """Segment slice ``z`` in 2D, 3D objects around it: none of its ids is one of the other slices'."""
    others = np.delete(np.asarray(masks.data), z, axis=0)
    viewer.dims.set_point(0, z)
    w._three_d.enabled.value = False
    w._run_button.clicked.emit()  # the slice shown, in 2D
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    plane = np.asarray(masks.data[z])
    assert plane.max() > 0 and not np.isin(np.unique(plane[plane > 0]), np.unique(others[others > 0])).any()


def test_a_slice_segmented_again_in_2d_among_3d_objects_gets_ids_of_its_own(widget, qtbot, nuclei3d, notifications):
    """Its ids 1..n named other nuclei of the volume (one id, two objects); a 3D run that finds
    nothing says so, as 2D runs do (it ended "Done" with empty masks)."""
    viewer, w = widget
    image = viewer.add_image(nuclei3d, name="vol", axis_labels=("z", "y", "x"))
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("vol")]
    assert np.asarray(masks.data).max() > 5
    _segment_slice_in_2d_with_ids_of_its_own(viewer, w, qtbot, masks, 15)
    _segment_slice_in_2d_with_ids_of_its_own(viewer, w, qtbot, masks, 16)  # (the last run was no 3D one now)
    notifications.clear()
    blank = viewer.add_image(np.full((6, 40, 40), 7, np.uint16), name="blank", axis_labels=("z", "y", "x"))
    viewer.dims.set_point(0, 2)
    _run(w, qtbot, blank)
    assert any("No 3D objects found" in m for m in notifications)


def test_3d_objects_saved_and_reopened_still_get_a_2d_slices_ids_above_theirs(widget, qtbot, nuclei3d, tmp_path):
    """Only the Segment widget of the 3D run knew the masks held 3D objects: saved and reopened (or
    with the dock opened again), a slice segmented in 2D numbered its cells 1, 2, ... (one id, two
    nuclei); the layer's metadata and the list beside the file say it now."""
    from napari_unet.io._corrected import OBJECTS_3D_KEY, stored_layout

    viewer, w = widget
    image = viewer.add_image(nuclei3d, name="vol", axis_labels=("z", "y", "x"))
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("vol")]
    path = tmp_path / f"{masks.name}.tif"
    assert masks.metadata[OBJECTS_3D_KEY] and masks.save(str(path), plugin="napari-unet")
    assert stored_layout(path).objects_3d
    viewer.layers.remove(masks)
    reopened = viewer.open(path, plugin="napari-unet")[0]
    assert reopened.name == masks_layer_name("vol") and reopened.metadata[OBJECTS_3D_KEY]
    _segment_slice_in_2d_with_ids_of_its_own(viewer, w, qtbot, reopened, 15)


@pytest.mark.parametrize(("dtype", "top"), [(np.int64, 2**31 + 5), (np.int32, 2**31 - 3)])
def test_a_volume_written_around_a_corrected_plane_with_large_ids(make_napari_viewer, dtype, top):
    """The volume's ids go above the corrected plane's in the masks' own type (int64 ids past 2^31
    overflowed the int32 sum: a traceback, the volume not written); int32 masks whose ids would pass
    2^31 are made 64-bit (they wrapped to negative ids)."""
    from napari_unet.widgets._segment3d import VolumeResult, write_volume

    viewer = make_napari_viewer()
    masks = viewer.add_labels(np.zeros((4, 16, 16), dtype), name="vol masks")
    masks.data[1, :4, :4] = top  # the user's corrected plane
    volume = np.zeros((4, 16, 16), np.int32)
    volume[:, 8:12, 8:12] = 1
    volume[:, 2:5, 10:14] = 2
    kept = write_volume(masks, VolumeResult((slice(None),), volume), {(1,)})
    assert kept == 1 and masks.data[1, 0, 0] == top and not masks.data[1, 8:, 8:].any()
    for z in (0, 2, 3):
        assert set(np.unique(masks.data[z]).tolist()) == {0, top + 1, top + 2}
    assert masks.data.min() >= 0


def test_a_volume_s_object_that_is_one_of_a_corrected_plane_s_takes_its_id(make_napari_viewer):
    """An object of the volume found on a corrected plane as one of the user's (IoU above 0.5) goes on
    with the user's id above and below: with new ids all round, every nucleus crossing a corrected
    plane was cut in three (3D AP 0.78 -> 0.58 after one brush dab). Each user's id is taken once."""
    from napari_unet.widgets._segment3d import VolumeResult, write_volume

    viewer = make_napari_viewer()
    masks = viewer.add_labels(np.zeros((4, 16, 16), np.int32), name="vol masks")
    masks.data[1, 8:12, 8:12] = 7  # the user's cell, a little bigger than the volume's there
    masks.data[1, 8:12, 12] = 7
    masks.data[1, 0:3, 0:3] = 9  # a cell the volume does not find
    volume = np.zeros((4, 16, 16), np.int32)
    volume[:, 8:12, 8:12] = 1
    volume[:, 2:5, 10:14] = 2
    volume[0, 8:12, 8:12] = 3  # (its own object in plane 0: not the user's cell twice)
    write_volume(masks, VolumeResult((slice(None),), volume), {(1,)})
    assert masks.data[1, 8:12, 12].tolist() == [7] * 4 and masks.data[1, 0, 0] == 9  # (kept as corrected)
    for z in (2, 3):
        assert set(np.unique(masks.data[z]).tolist()) == {0, 7, 11}
    assert set(np.unique(masks.data[0]).tolist()) == {0, 11, 12}
    # uint64 masks with ids of 2^63 or more (another tool's): adopted as well (they overflowed the pairing)
    huge = viewer.add_labels(np.zeros((4, 16, 16), np.uint64), name="huge masks")
    top = 2**63 + 5
    huge.data[1, 8:12, 8:12] = top
    write_volume(huge, VolumeResult((slice(None),), volume), {(1,)})
    assert int(huge.data[2, 9, 9]) == top and int(huge.data[2, 3, 11]) == top + 2


def test_a_3d_run_takes_the_volume_wherever_the_z_slider_is(widget, qtbot, nuclei3d, notifications):
    """A stack placed at z = 10 beside another layer, the slider at z = 0: its 3D run was refused ("no
    slice at the viewer's position: move the slider into it") though it takes the whole volume."""
    viewer, w = widget
    viewer.add_image(np.zeros((4, 36, 40), np.uint8), name="other")
    image = viewer.add_image(nuclei3d, name="placed", translate=(10, 0, 0))
    viewer.dims.set_point(0, 0)
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("placed")]
    assert w._status.value.startswith("Done") and np.asarray(masks.data).max() > 5
    assert not any("no slice" in m for m in notifications)


def test_a_3d_run_records_its_model_and_diameter_and_makes_wide_masks_of_a_lazy_stack(widget, qtbot, nuclei3d):
    """A review of the day's changes: a 3D run recorded its model without its date or kind and left a
    2D run's typed diameter in the masks (reopened, restored for masks made at another size); the
    uint16 masks made for a lazy stack were widened at once by it (both held a moment, and said)."""
    import dask.array as da

    from napari_unet.io._corrected import DIAMETER_KEY, MODEL_KEY

    viewer, w = widget
    image = viewer.add_image(da.from_array(nuclei3d, chunks=(1, 36, 40)), name="lazy", axis_labels=("z", "y", "x"))
    w._diameter.value = "9"
    _run(w, qtbot, image)
    masks = viewer.layers[masks_layer_name("lazy")]
    assert masks.data.dtype == np.int32
    assert masks.metadata[DIAMETER_KEY] == "9" and "date" in masks.metadata[MODEL_KEY]
    w._diameter.value = "auto"
    _run(w, qtbot, image)
    assert DIAMETER_KEY not in masks.metadata


def test_a_whole_stack_of_volumes_whose_masks_do_not_fit_in_memory_moves_them_to_disk(widget, qtbot, nuclei3d,
                                                                                     monkeypatch):
    """A 3D run of every volume fills the whole masks layer: made in memory by a 2D run of one slice, the
    layer went on filling memory unchecked (only runs of planes were). It moves to disk first, as theirs do,
    the slice corrected by hand kept. (The memory free made small by the share of it masks may take.)"""
    from napari_unet.widgets import _disk_masks

    viewer, w = widget
    stack = np.stack([nuclei3d[8:20], nuclei3d[10:22]])  # (T, Z, Y, X)
    image = viewer.add_image(stack, name="tl", axis_labels=("t", "z", "y", "x"))
    w.reset_choices()
    w._image_combo.value = image
    w._scope.value = SCOPE_SLICE
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    masks = viewer.layers[masks_layer_name("tl")]
    assert not _disk_masks.on_disk(masks.data)
    masks.paint((0, 0, 2, 2), 77)  # (a slice corrected by hand)
    monkeypatch.setattr(_disk_masks, "MASKS_MEMORY_SHARE", 1e-9)
    w._scope.value = SCOPE_STACK
    _run(w, qtbot, image)
    assert _disk_masks.on_disk(masks.data) and w._status.value.startswith("Done")
    assert masks.data[0, 0, 2, 2] == 77 and np.asarray(masks.data[1]).max() > 0
