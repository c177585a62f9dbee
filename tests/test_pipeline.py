"""The one plane loop (core.predict.iter_planes): every path that segments gives the same labels.

The GUI's "current slice", ``napari-unet predict`` and the OME-Zarr batch path all run
core's plane loop; for the same image and model they must write identical labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core import load_model
from napari_unet.core.predict import (
    PlaneResult,
    iter_planes,
    iter_rethreshold,
    plane_window,
    predict_probabilities,
    probabilities_to_labels,
    segment,
)
from napari_unet.core.preprocess import ImageError
from napari_unet.core.stack import read_plane, stack_layout

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    """A real DSB2018 fluorescence field (CC0, packaged sample), 256 x 256."""
    return tifffile.imread(SAMPLES / "dsb2018_fluorescence_nuclei.tif")


@pytest.fixture(scope="module")
def fields() -> np.ndarray:
    """Four real DSB2018 fluorescence fields as a stack (CC0, packaged sample)."""
    return tifffile.imread(SAMPLES / "dsb2018_fluorescence_fields.tif")


def test_gui_cli_and_batch_give_identical_labels(make_napari_viewer, qtbot, tmp_path, nuclei):
    import zarr

    from napari_unet.widgets.segment import SCOPE_SLICE, masks_layer_name

    model = load_model("nuclei-fluo", device="cpu")  # proposed for fluorescence: real nuclei, real objects
    expected = segment(model, nuclei)
    assert expected.max() > 10  # the comparison is between real segmentations

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    image = viewer.add_image(nuclei, name="nuclei")
    widget.reset_choices()
    widget._image_combo.value = image
    widget._scope.value = SCOPE_SLICE
    widget._run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    gui = np.asarray(viewer.layers[masks_layer_name("nuclei")].data)

    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei)
    assert main(["predict", str(tmp_path / "nuclei.tif"), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    cli = tifffile.imread(tmp_path / "cli" / "nuclei_masks.tif")
    assert main(["predict", str(tmp_path / "nuclei.tif"), "--out", str(tmp_path / "zarr"), "--dask",
                 "--no-progress"]) == 0
    batch = np.asarray(zarr.open_group(str(tmp_path / "zarr" / "nuclei_masks.ome.zarr"), mode="r")["0"][...])

    np.testing.assert_array_equal(gui, expected)
    np.testing.assert_array_equal(cli, expected)
    np.testing.assert_array_equal(batch, expected)


def test_plane_window_grows_by_real_context_only():
    region, window, inner = plane_window((slice(10, 50), slice(None, 30)), (100, 40), 16)
    assert region == (slice(10, 50), slice(0, 30))
    assert window == (slice(0, 66), slice(0, 40))  # clipped to the plane
    assert inner == (slice(10, 50), slice(0, 30))
    with pytest.raises(ImageError, match="empty"):
        plane_window((slice(5, 5), slice(None)), (100, 40), 0)


def test_iter_planes_runs_the_chosen_planes_and_region(tiny_model_path, fields):
    model = load_model(tiny_model_path, device="cpu")
    region = (slice(40, 140), slice(60, 200))
    items = list(iter_planes(model, fields, planes=[(2,), (0,)], region=region, context=24,
                             threshold=0.3, min_size=0))
    results = [i for i in items if isinstance(i, PlaneResult)]
    assert [r.index for r in results] == [(2,), (0,)]
    progress = [i for i in items if not isinstance(i, PlaneResult)]
    assert progress[-1].done == progress[-1].total and "plane 2/2" in progress[-1].message
    for r in results:
        assert r.labels.shape == (100, 140) and r.labels.dtype == np.int32
        assert r.probabilities.shape == (3, 148, 188)  # region + 24 px of context each side
        # the labels are the post-processed probabilities, cropped to the region
        full = probabilities_to_labels(r.probabilities, 0.3, 0, model.representation)
        np.testing.assert_array_equal(r.labels, full[r.inner])
    # the probabilities of the window are those of predicting the window alone
    window = read_plane(fields, (2,), (slice(16, 164), slice(36, 224)))
    np.testing.assert_allclose(results[0].probabilities, predict_probabilities(model, window), atol=1e-5)


def test_iter_planes_refuses_a_plane_outside_the_stack(tiny_model_path, fields):
    model = load_model(tiny_model_path, device="cpu")
    with pytest.raises(ImageError, match=r"Plane \(4,\) is not in a stack"):
        list(iter_planes(model, fields, planes=[(4,)]))


def test_rethreshold_matches_a_fresh_run(tiny_model_path, nuclei):
    model = load_model(tiny_model_path, device="cpu")
    first = [i for i in iter_planes(model, nuclei, threshold=0.5, min_size=0) if isinstance(i, PlaneResult)]
    again = [i for i in iter_rethreshold(first, 0.3, 4) if isinstance(i, PlaneResult)]
    np.testing.assert_array_equal(again[0].labels, segment(model, nuclei, threshold=0.3, min_size=4))


def test_read_plane_reads_a_window_of_a_lazy_stack(fields):
    import dask.array as da

    lazy = da.from_array(fields, chunks=(1, 256, 256))
    window = (slice(3, 9), slice(100, 104))
    np.testing.assert_array_equal(read_plane(lazy, (1,), window), fields[1, 3:9, 100:104])
    assert stack_layout(lazy.shape).indices() == [(0,), (1,), (2,), (3,)]


def test_float64_images_beyond_float32s_range_segment_as_the_same_image(dsb_fluo_crop):
    """A float64 image of values near 1e40 or 1e-100 (a detector in physical units, a computed map)
    segments as the same image scaled to ordinary values (it became inf or 0 in float32: "camera noise
    alone", nothing found)."""
    from napari_unet.core import load_model, segment
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.stack import in_float32_range

    image = dsb_fluo_crop[0].astype(np.float64)
    model = load_model("nuclei")
    plain = segment(model, image, diameter="native")
    assert plain.max() > 3
    for factor in (1e40, 1e-100):
        assert np.isfinite(in_float32_range(image * factor).astype(np.float32)).all()
        assert average_precision(plain, segment(model, image * factor, diameter="native")) > 0.95
    # 64-bit values far from 0 (an offset of 1e12 over 0-255): one value in float32, "camera noise alone"
    for offset in (image.astype(np.int64) + 10**12, image - 1e12, image.astype(np.uint64) + 2**50,
                   image.astype(np.int64) + 2**60, image.astype(np.uint64) + (2**64 - 512)):  # (past float64's 53 bits)
        assert average_precision(plain, segment(model, offset, diameter="native")) > 0.95
