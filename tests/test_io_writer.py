"""Labels writer: dtype, compression, axes and pixel size kept, atomic, through napari and the API."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.io import inspect_stack, read_stack, write_labels


def test_write_labels_uint16_imagej_with_pixel_size(tmp_path, dsb_fluo_crop):
    _image, labels = dsb_fluo_crop  # int32 instance ids from DSB2018
    stack = np.stack([labels, labels[::-1]])  # Z Y X
    path = write_labels(tmp_path / "masks.tif", stack, scale=(2.0, 0.5, 0.5))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        assert tif.series[0].dtype == np.uint16
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tif.asarray(), stack)
    info = inspect_stack(path)
    assert info.axes == "ZYX" and info.scale == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["masks.tif"]  # no temporary file left


def test_write_labels_uint32_ome_when_ids_exceed_uint16(tmp_path):
    labels = np.zeros((3, 10, 12), np.int64)  # T Y X
    labels[1, 2:5, 3:6] = 70_000
    labels[2, 0, 0] = 3
    path = write_labels(tmp_path / "big_ids.tiff", labels, scale=(60.0, 0.2, 0.2), axes="TYX")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.series[0].dtype == np.uint32 and tif.series[0].axes == "TYX"
    arr, info = read_stack(path, lazy=False)
    np.testing.assert_array_equal(arr, labels)
    assert info.axes == "TYX" and info.scale == pytest.approx({"T": 60.0, "Y": 0.2, "X": 0.2})


def test_axes_are_reordered_for_imagej(tmp_path):
    labels = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)  # Z T Y X
    path = write_labels(tmp_path / "zt.tif", labels, axes="ZTYX")
    arr, info = read_stack(path, lazy=False)
    assert info.axes == "TZYX"
    np.testing.assert_array_equal(arr, labels.transpose(1, 0, 2, 3))


def test_labels_of_a_z_t_layer_come_back_in_its_order_with_their_corrected_slices(tmp_path):
    import json

    from napari_unet.io._corrected import CORRECTED_KEY
    from napari_unet.io._reader import reader_function

    labels = np.zeros((4, 2, 16, 16), np.uint16)  # Z T Y X, as an OME-TIFF of order XYTZ opens
    labels[3, 1, 4:8, 4:8] = 7  # the slice the user corrected: z 3, t 1
    path = write_labels(tmp_path / "zt_masks.tif", labels, scale=(2.0, 10.0, 0.5, 0.5), axes="ZTYX",
                        corrected=[(3, 1)])
    stored = json.loads((tmp_path / "zt_masks.tif.corrected.json").read_text())
    assert stored["planes"] == [[1, 3]] and stored["layer_axes"] == "ZTYX"  # the file is T, Z
    ((data, meta, kind),) = reader_function(str(path))
    assert kind == "labels" and data.shape == (4, 2, 16, 16) and tuple(meta["axis_labels"]) == ("z", "t", "y", "x")
    assert tuple(meta["scale"]) == (2.0, 10.0, 0.5, 0.5) and meta["metadata"][CORRECTED_KEY] == [[3, 1]]
    np.testing.assert_array_equal(np.asarray(data), labels)
    assert stored["version"] == 2  # older readers must not take these planes for the layer's order

    # a list of a newer version is refused whole: neither its planes nor its axis order are used
    sidecar = tmp_path / "zt_masks.tif.corrected.json"
    sidecar.write_text(json.dumps({**stored, "planes": [[1, "two"]]}))  # a damaged list that keeps the axes
    ((data, meta, kind),) = reader_function(str(path))  # (a TypeError once)
    assert data.shape == (4, 2, 16, 16) and CORRECTED_KEY not in meta.get("metadata", {})
    sidecar.write_text(json.dumps({**stored, "version": 3}))
    ((data, meta, kind),) = reader_function(str(path))
    # (and the labels are someone's own: kept from runs unasked, rather than a model's with none corrected)
    assert data.shape == (2, 4, 16, 16) and CORRECTED_KEY not in meta.get("metadata", {})
    sidecar.write_text(json.dumps(stored))

    # without a list (napari-unet predict): the layer's order is recorded all the same
    other = write_labels(tmp_path / "cli_masks.tif", labels, axes="ZTYX")
    ((data, meta, kind),) = reader_function(str(other))
    assert kind == "labels" and data.shape == (4, 2, 16, 16) and meta["metadata"][CORRECTED_KEY] == []


def test_masks_of_a_layer_with_a_channel_axis_come_back_as_one_layer(tmp_path, make_napari_viewer, caplog):
    """Masks of a (T, C, Y, X) layer (Segment with a channel axis) reopened as two layers, one per
    channel, each with the list of the whole: Fine-tune took slice (2, 0) of a 3D layer, a row."""
    import logging

    from napari_unet.io._corrected import CORRECTED_KEY
    from napari_unet.io._reader import reader_function
    from napari_unet.widgets._masks import corrected_planes

    labels = np.zeros((4, 2, 16, 16), np.uint16)
    labels[2, 0, 4:8, 4:8] = 7
    path = write_labels(tmp_path / "tc masks.tif", labels, axes="TCYX", corrected=[(2, 0)])
    ((data, meta, kind),) = reader_function(str(path))
    assert kind == "labels" and data.shape == (4, 2, 16, 16) and tuple(meta["axis_labels"]) == ("t", "c", "y", "x")
    assert meta["metadata"][CORRECTED_KEY] == [[2, 0]]
    np.testing.assert_array_equal(np.asarray(data), labels)
    # a list that does not fit its layer (one saved with other masks) names no slice there
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels[:, 0], metadata={CORRECTED_KEY: [[2, 0], [1]]})
    with caplog.at_level(logging.WARNING):
        assert corrected_planes(layer) == {(1,)}
    assert "1 stored corrected slice(s) do not fit" in caplog.text


def test_napari_writer_saves_labels_layer_with_scale(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((4, 20, 20), np.int32)
    labels[1, 5:10, 5:10] = 1
    labels[3, 2:4, 10:15] = 2
    viewer.add_labels(labels, name="cells", scale=(3.0, 0.65, 0.65))
    out = tmp_path / "cells_labels.tif"
    written = viewer.layers.save(str(out), plugin="napari-unet")
    assert written == [str(out)]
    (layer,) = viewer.open(out, plugin="napari-unet")
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
    np.testing.assert_allclose(layer.scale, [3.0, 0.65, 0.65])


def test_crash_during_write_keeps_the_good_file(tmp_path, monkeypatch):
    good = np.ones((8, 8), np.uint16)
    path = write_labels(tmp_path / "keep.tif", good)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, np.full((8, 8), 7, np.uint16))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


@pytest.mark.parametrize("obstacle", ["name too long for the list", "folder"])
def test_labels_and_their_corrected_list_are_written_both_or_neither(tmp_path, obstacle, notifications):
    """When the corrected-slices list cannot be written beside the TIFF (its name would be too
    long, or a folder has its name), the TIFF already there is not replaced either."""
    from napari_unet.io._corrected import sidecar_path
    from napari_unet.io._writer import napari_write_labels

    # 244 characters: the TIFF's name is legal, "<name>.corrected.json" (259) is not
    name = ("x" * 240 + ".tif") if obstacle.startswith("name") else "cells masks.tif"
    path = tmp_path / name
    write_labels(path, np.ones((8, 8), np.uint16))  # the good file of an earlier save
    before = path.read_bytes()
    if obstacle == "folder":
        sidecar_path(path).mkdir()
    new = np.full((8, 8), 7, np.int32)
    written = napari_write_labels(str(path), new, {"metadata": {"napari_unet_corrected": [[0]]}})
    assert written == []
    assert path.read_bytes() == before  # the old TIFF, not the new one
    assert any("Labels not saved" in m and "nothing was changed" in m for m in notifications)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([name] + ([sidecar_path(path).name] if obstacle == "folder" else []))


def test_a_240_character_name_gets_its_labels_and_list(tmp_path):
    """"<240 characters>.corrected.json" is 255 characters, a legal name: both files are written
    (the temporary files have shorter names than their destinations)."""
    from napari_unet.io._corrected import load_corrected_list, sidecar_path
    from napari_unet.io._writer import napari_write_labels

    path = tmp_path / ("x" * 236 + ".tif")
    write_labels(path, np.ones((8, 8), np.uint16))
    new = np.full((8, 8), 7, np.int32)
    assert napari_write_labels(str(path), new, {"metadata": {"napari_unet_corrected": [[0]],
                                                             "napari_unet_masks": True}}) == [str(path)]
    np.testing.assert_array_equal(tifffile.imread(path), new)
    assert len(sidecar_path(path).name) == 255 and load_corrected_list(path) == [(0,)]


def test_uncalibrated_labels_claim_no_pixel_size_and_units_are_converted(tmp_path, make_napari_viewer):
    """Labels of an uncalibrated image are written without a pixel size (they claimed 1 um, and
    reopened beside the image napari warned of inconsistent units); a layer in nanometres is
    written in micrometres."""
    import napari
    from napari.layers import Labels

    make_napari_viewer()  # napari finds its plugins (the writer) as it does for a user (run alone: none)
    labels = np.zeros((3, 32, 32), np.int32)
    labels[:, 5:15, 5:15] = 1
    write_labels(tmp_path / "plain.tif", labels, axes="TYX")
    assert inspect_stack(tmp_path / "plain.tif").scale == {}
    layer = Labels(labels[0], scale=(65, 65), units=("nm", "nm"))
    (path,) = napari.save_layers(str(tmp_path / "nm.tif"), [layer], plugin="napari-unet")
    scale = inspect_stack(path).scale
    assert scale["X"] == pytest.approx(0.065) and scale["Y"] == pytest.approx(0.065)
    (path,) = napari.save_layers(str(tmp_path / "px.tif"), [Labels(labels[0])], plugin="napari-unet")
    assert inspect_stack(path).scale == {}


def test_labels_written_again_without_a_list_leave_no_stale_corrected_slices(tmp_path):
    from napari_unet.io._corrected import CORRECTED_KEY
    from napari_unet.io._reader import reader_function

    path = tmp_path / "t_masks.tif"
    write_labels(path, np.ones((3, 8, 8), np.uint16), axes="ZYX", corrected=[0, 2])  # the user's corrections
    write_labels(path, np.full((3, 8, 8), 2, np.uint16), axes="ZYX")  # raw predictions over them
    ((data, meta, kind),) = reader_function(str(path))
    assert kind == "labels" and meta["metadata"][CORRECTED_KEY] == []
    assert (np.asarray(data) == 2).all()


def test_integer_files_named_as_masks_open_as_labels_and_others_as_images(tmp_path):
    from napari_unet.io._reader import reader_function

    tifffile.imwrite(tmp_path / "cells_cp_masks.tif", np.ones((8, 8), np.uint16))  # e.g. Cellpose's
    tifffile.imwrite(tmp_path / "cells_labels.tif", np.ones((8, 8), np.float32))  # not integers
    tifffile.imwrite(tmp_path / "cells.tif", np.ones((8, 8), np.uint16))
    kinds = {name: reader_function(str(tmp_path / name))[0][2]
             for name in ("cells_cp_masks.tif", "cells_labels.tif", "cells.tif")}
    assert kinds == {"cells_cp_masks.tif": "labels", "cells_labels.tif": "image", "cells.tif": "image"}


def test_masks_of_unknown_origin_reopen_as_someones_own_and_napari_unets_as_a_models(tmp_path, make_napari_viewer):
    """Another tool's masks file, labels painted in plain napari and saved, masks whose list beside
    them is damaged: they reopened with an empty list (a model's masks), and the next run replaced
    them unasked, beyond Ctrl+Z. napari-unet's own masks (predict) still open as a model's."""
    from napari_unet.io._corrected import CORRECTED_KEY, MASKS_KEY, load_corrected_list, sidecar_path
    from napari_unet.io._reader import reader_function

    labels = np.zeros((3, 16, 16), np.uint16)
    labels[0, 2:6, 2:6] = 1
    labels[2, 8:12, 8:12] = 2
    tifffile.imwrite(tmp_path / "other_masks.tif", labels, imagej=True, metadata={"axes": "ZYX"})  # another tool's
    ((_, meta, kind),) = reader_function(str(tmp_path / "other_masks.tif"))
    assert kind == "labels" and CORRECTED_KEY not in meta.get("metadata", {})  # the widgets keep its slices
    write_labels(tmp_path / "ours_masks.tif", labels, axes="ZYX")  # what predict writes: no list
    ((_, meta, _),) = reader_function(str(tmp_path / "ours_masks.tif"))
    assert meta["metadata"][CORRECTED_KEY] == [] and meta["metadata"][MASKS_KEY]
    sidecar_path(tmp_path / "ours_masks.tif").write_text('{"planes": [[0')  # damaged
    ((_, meta, _),) = reader_function(str(tmp_path / "ours_masks.tif"))
    assert CORRECTED_KEY not in meta.get("metadata", {})

    viewer = make_napari_viewer()
    viewer.add_labels(labels, name="painted")  # painted in plain napari, saved with napari-unet's writer
    out = tmp_path / "painted_masks.tif"
    assert viewer.layers.save(str(out), plugin="napari-unet") == [str(out)]
    assert load_corrected_list(out) == [(0,), (2,)]  # every slice holding labels: the user's


def test_labels_with_an_axis_of_size_1_come_back_with_it_and_their_corrected_slices(tmp_path):
    """Neither ImageJ nor OME-TIFF keeps a stack axis of size 1 (T, Z=1 reads as T): the list
    beside the file says the layer's axes, and the reader puts the axis back."""
    from napari_unet.io._corrected import CORRECTED_KEY
    from napari_unet.io._reader import reader_function

    for top, name in ((7, "tz_masks.tif"), (70_000, "tz_ome_masks.tif")):  # ImageJ, then OME-TIFF
        labels = np.zeros((3, 1, 16, 16), np.uint32)  # T Z Y X
        labels[2, 0, 4:8, 4:8] = top
        path = write_labels(tmp_path / name, labels, scale=(60.0, 2.0, 0.5, 0.5), axes="TZYX", corrected=[(2, 0)])
        assert read_stack(path)[1].axes == "TYX"  # what the file itself says
        ((data, meta, kind),) = reader_function(str(path))
        assert kind == "labels" and data.shape == (3, 1, 16, 16) and tuple(meta["axis_labels"]) == tuple("tzyx")
        assert tuple(meta["scale"])[::2] == (60.0, 0.5) and meta["metadata"][CORRECTED_KEY] == [[2, 0]]
        np.testing.assert_array_equal(np.asarray(data), labels)

    labels = np.zeros((1, 3, 16, 16), np.uint16)  # Z=1 before T: put back, then in the layer's order
    labels[0, 1, 2:5, 2:5] = 1
    path = write_labels(tmp_path / "zt_masks.tif", labels, axes="ZTYX", corrected=[(0, 1)])
    ((data, meta, kind),) = reader_function(str(path))
    assert data.shape == (1, 3, 16, 16) and tuple(meta["axis_labels"]) == tuple("ztyx")
    assert meta["metadata"][CORRECTED_KEY] == [[0, 1]]
    np.testing.assert_array_equal(np.asarray(data), labels)


def test_saved_masks_come_back_with_their_layers_calibration(make_napari_viewer, tmp_path):
    """What a TIFF cannot say travels beside it: a bare scale without a unit (it reopened in
    micrometres, beside an image in pixels), and the spacing of an axis of size 1 (it reopened as
    1 pixel, beside an image in micrometres)."""
    viewer = make_napari_viewer()
    labels = np.zeros((3, 1, 20, 20), np.int32)
    labels[1, 0, 5:10, 5:10] = 1
    viewer.add_labels(labels, name="tz masks", scale=(60.0, 2.0, 0.5, 0.5),
                      units=("second", "micrometer", "micrometer", "micrometer"), axis_labels=tuple("tzyx"))
    viewer.add_labels(labels[:, 0], name="bare masks", scale=(1.0, 0.25, 0.25))  # napari's units: pixel
    for name in ("tz masks", "bare masks"):
        layer = viewer.layers[name]
        assert layer.save(str(tmp_path / f"{name}.tif"), plugin="napari-unet")
        (back,) = viewer.open(tmp_path / f"{name}.tif", plugin="napari-unet")
        np.testing.assert_allclose(back.scale, layer.scale)
        assert [str(u) for u in back.units] == [str(u) for u in layer.units]
    # a file that says its calibration as the layer had it: nothing of it in the list beside it
    viewer.add_labels(labels[:, 0], name="um masks", scale=(1.0, 0.5, 0.5), units=("pixel", "um", "um"))
    assert viewer.layers["um masks"].save(str(tmp_path / "um masks.tif"), plugin="napari-unet")
    assert "layer_scale" not in (tmp_path / "um masks.tif.corrected.json").read_text()


def test_saved_masks_come_back_where_their_image_is(make_napari_viewer, tmp_path):
    """A TIFF holds no offset: the labels' translate (here in nanometres, the file in µm) travels
    in the list beside the file, so that reopened masks lie over their image again."""
    viewer = make_napari_viewer()
    labels = np.zeros((3, 20, 20), np.int32)
    labels[1, 5:10, 5:10] = 1
    viewer.add_labels(labels, name="cells masks", scale=(1.0, 500.0, 500.0), translate=(0.0, 10_000.0, 20_000.0),
                      units=("pixel", "nm", "nm"))
    out = tmp_path / "cells masks.tif"
    assert viewer.layers.save(str(out), plugin="napari-unet") == [str(out)]
    assert inspect_stack(out).scale["X"] == pytest.approx(0.5)  # the file itself in micrometres (Fiji)
    (layer,) = viewer.open(out, plugin="napari-unet")
    np.testing.assert_allclose(layer.scale, [1.0, 500.0, 500.0])  # back in the layer's own units
    assert [str(u) for u in layer.units] == ["pixel", "nanometer", "nanometer"]
    np.testing.assert_allclose(layer.translate, [0.0, 10_000.0, 20_000.0])
    # a Z spacing the file cannot keep (Y, X uncalibrated): kept beside it, and the offset two planes
    viewer.add_labels(labels, name="z masks", scale=(3.0, 1.0, 1.0), translate=(6.0, 0.0, 0.0),
                      units=("micrometer", "pixel", "pixel"))
    assert viewer.layers["z masks"].save(str(tmp_path / "z masks.tif"), plugin="napari-unet")
    (z,) = viewer.open(tmp_path / "z masks.tif", plugin="napari-unet")
    np.testing.assert_allclose(z.scale, [3.0, 1.0, 1.0])
    np.testing.assert_allclose(z.translate, [6.0, 0.0, 0.0])
    # labels without an offset write no list for it
    plain = tmp_path / "plain.tif"
    write_labels(plain, labels[1], offset=(0.0, 0.0))
    assert not (tmp_path / "plain.tif.corrected.json").exists()


def test_saved_masks_of_a_rotated_or_registered_image_keep_their_transform(make_napari_viewer, tmp_path):
    """Masks take their image's rotation, shear and affine matrix (Segment copies them); a TIFF holds
    none of them: they travel in the list beside the file, so reopened masks lie over the image."""
    viewer = make_napari_viewer()
    labels = np.zeros((3, 40, 50), np.int32)
    labels[1, 5:10, 5:10] = 1
    affine = np.eye(4)
    affine[1, 2] = 0.2  # a registration's shear
    layer = viewer.add_labels(labels, name="cells masks", rotate=30, translate=(0.0, 5.0, 7.0), affine=affine)
    point = (1.0, 100.0, 100.0)
    before = layer.world_to_data(point)
    out = tmp_path / "cells masks.tif"
    assert layer.save(str(out), plugin="napari-unet") == [str(out)]
    (again,) = viewer.open(out, plugin="napari-unet")
    np.testing.assert_allclose(again.world_to_data(point), before, atol=1e-9)
    np.testing.assert_allclose(again.affine.affine_matrix, affine)
    plain = viewer.add_labels(labels, name="plain masks")  # no transform: none recorded
    assert plain.save(str(tmp_path / "plain.tif"), plugin="napari-unet")
    assert "layer_transform" not in (tmp_path / "plain.tif.corrected.json").read_text()


def test_corrected_planes_move_between_axis_orders_by_the_axes_names():
    """One mapping serves the writer, the reader and training from files: planes follow the axes'
    letters; an axis the target lacks must be at 0 (a plane off it is left out), one the source
    lacks is at 0; a plane with another number of indices is left out."""
    from napari_unet.io._corrected import planes_along

    assert planes_along([(1, 4), (0, 2)], "ZT", "TZ") == [(4, 1), (2, 0)]
    assert planes_along([(0, 3), (2, 3)], "TZ", "Z") == [(3,)]  # T of size 1 lost: only its plane 0
    assert planes_along([(3,)], "Z", "TZ") == [(0, 3)]
    assert planes_along([(3,), (1, 2, 3)], "TZ", "ZT") == []
    assert planes_along([(5,)], "", "") == []


def test_the_scale_given_survives_for_an_axis_of_size_one(tmp_path):
    """``write_labels(scale=...)`` of T, Z=1: neither ImageJ nor OME-TIFF keeps Z, so its spacing
    goes in the list beside the file (as the layer's calibration does) and reads back."""
    from napari_unet.io._reader import reader_function

    labels = np.zeros((3, 1, 20, 30), np.uint16)
    labels[2, 0, 5:9, 5:9] = 4
    path = write_labels(tmp_path / "tz1_masks.tif", labels, scale=[60, 2.0, 0.3, 0.3], axes="TZYX")
    (data, meta, kind), = reader_function(str(path))
    assert kind == "labels" and data.shape == (3, 1, 20, 30)
    assert tuple(meta["scale"]) == pytest.approx((60, 2.0, 0.3, 0.3))
    plain = write_labels(tmp_path / "plain_masks.tif", labels[:, 0], scale=[60, 0.3, 0.3], axes="TYX")
    assert not (tmp_path / "plain_masks.tif.corrected.json").exists()  # nothing the file cannot say
    assert tuple(reader_function(str(plain))[0][1]["scale"]) == pytest.approx((60, 0.3, 0.3))


def test_masks_of_a_flipped_image_are_saved_and_come_back_flipped(tmp_path, make_napari_viewer):
    """Segment follows a flipped image (a negative scale); its masks could not be saved ("scale
    values must be positive numbers")."""
    from napari_unet.io._reader import reader_function

    viewer = make_napari_viewer()
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:9] = 4
    viewer.add_labels(labels, name="m", scale=(0.5, -0.5), translate=(1.0, 4.0))
    out = tmp_path / "flipped_masks.tif"
    assert viewer.layers.save(str(out), plugin="napari-unet") == [str(out)]
    ((data, meta, kind),) = reader_function(str(out))
    assert kind == "labels" and tuple(meta["scale"]) == (0.5, -0.5) and tuple(meta["translate"]) == (1.0, 4.0)
    np.testing.assert_array_equal(np.asarray(data), labels)


def test_ids_beyond_the_type_chosen_at_the_start_are_refused_not_wrapped():
    """Save masks writes in a worker while the masks may be edited: an id painted after the file's
    type was chosen (uint16 for ids up to 65535) wrapped onto another object's id, silently."""
    import numpy as np

    from napari_unet.io._writer import LabelsWriteError, _fitting

    plane = np.array([[7, 65023], [0, 70000]], np.int32)
    with pytest.raises(LabelsWriteError, match="changed while they were saved"):
        _fitting(plane, np.dtype(np.uint16))
    np.testing.assert_array_equal(_fitting(plane, np.dtype(np.uint32)), plane)


def test_a_labels_pyramid_is_saved_at_its_full_resolution(make_napari_viewer, tmp_path):
    """napari hands a multiscale layer's data as MultiScaleData, which as an array is the coarsest
    level: Save masks (and napari's File > Save) wrote the 4 x 4 level of an 8 x 8 pyramid."""
    import numpy as np
    import tifffile

    from napari_unet.io._writer import write_layer_labels

    viewer = make_napari_viewer()
    finest = np.arange(64, dtype=np.int32).reshape(8, 8)
    layer = viewer.add_labels([finest, finest[::2, ::2].copy()], name="pyramid")
    data, state, _kind = layer.as_layer_data_tuple()
    written = write_layer_labels(tmp_path / "pyramid.tif", data, state)
    np.testing.assert_array_equal(tifffile.imread(written), finest)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16])
def test_masks_read_lazily_are_saved_plane_by_plane(tmp_path, dtype):
    """A large masks file opens lazily (dask) the next day; saving it again made the whole stack in
    memory, twice while dask joined its chunks (a review: 4.5 GB to write a 19 MB file of 2 GB of
    masks). It is written plane by plane now, negative ids still refused."""
    import tracemalloc

    import dask.array as da

    from napari_unet.io._corrected import CORRECTED_KEY, MASKS_KEY
    from napari_unet.io._writer import LabelsWriteError, write_layer_labels

    planes = np.zeros((40, 256, 256), dtype)
    for k in range(0, 40, 3):
        planes[k, 20 + k:60 + k, 30:90] = k + 1
    lazy = da.from_array(planes, chunks=(1, 256, 256))
    meta = {"name": "cells masks", "scale": [1.0, 0.5, 0.5], "metadata": {MASKS_KEY: True, CORRECTED_KEY: [[3]]}}
    write_layer_labels(tmp_path / "first.tif", lazy[:2], meta)  # (what the writer imports, imported)
    tracemalloc.start()
    try:
        written = write_layer_labels(tmp_path / "cells masks.tif", lazy, meta)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < planes.nbytes / 4, f"{peak / 1e6:.1f} MB for a stack of {planes.nbytes / 1e6:.1f} MB"
    np.testing.assert_array_equal(tifffile.imread(written), planes)
    negative = planes.astype(np.int32)
    negative[5, 0, 0] = -1
    with pytest.raises(LabelsWriteError, match="negative"):
        write_layer_labels(tmp_path / "bad masks.tif", da.from_array(negative, chunks=(1, 256, 256)), meta)


def test_lazy_labels_of_a_shape_not_written_are_refused_as_any(tmp_path):
    """A lazy stack of 6 dimensions was written as its first plane (15 of 16 planes lost, silently),
    and one with an empty axis raised an IndexError (a review of the day's changes)."""
    import dask.array as da

    from napari_unet.io._writer import LabelsWriteError, write_layer_labels

    meta = {"name": "x masks", "metadata": {}}
    with pytest.raises(LabelsWriteError, match="at most 5"):
        write_layer_labels(tmp_path / "six.tif", da.zeros((2, 2, 2, 2, 16, 16), dtype=np.int32), meta)
    with pytest.raises(LabelsWriteError, match="empty axis"):
        write_layer_labels(tmp_path / "empty.tif", da.zeros((0, 16, 16), dtype=np.int32), meta)
    assert not list(tmp_path.iterdir())


def test_uint32_masks_keep_their_z_spacing(tmp_path):
    from napari_unet.io._reader import napari_get_reader
    from napari_unet.io._writer import write_labels

    lab = np.zeros((3, 16, 16), np.uint32)
    lab[1, 2:6, 2:6] = 70_000  # above 16 bits: the OME-TIFF path
    path = write_labels(tmp_path / "big_masks.tif", lab, scale=(2.0, 0.5, 0.5))
    ((_data, meta, kind),) = napari_get_reader(str(path))(str(path))
    assert kind == "labels" and tuple(meta["scale"]) == pytest.approx((2.0, 0.5, 0.5))
