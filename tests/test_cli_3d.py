"""``napari-unet predict --3d``: 3D objects from z-stacks, TIFF and OME-Zarr; bad inputs write nothing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core import load_model, segment


@pytest.fixture(scope="module")
def nuclei3d(data_dir) -> np.ndarray:
    """A crop of StarDist's synthetic 3D nuclei (BSD-3), (31, 36, 36)."""
    return tifffile.imread(data_dir / "nuclei3d_synthetic" / "image.tif")[:, :36, :36]


def test_predict_3d_writes_3d_objects_with_the_files_voxel_size(tmp_path, nuclei3d, capsys):
    tifffile.imwrite(tmp_path / "stack.tif", nuclei3d, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"})
    rc = main(["predict", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "o"), "--3d", "--no-progress"])
    assert rc == 0
    masks = tifffile.imread(tmp_path / "o" / "stack_masks.tif")
    fluo = load_model("nuclei-fluo", device="cpu")  # what predict picks for a fluorescence stack
    expected = segment(fluo, nuclei3d, axes="ZYX", spacing=(1.0, 0.5, 0.5))
    assert expected.max() > 3
    np.testing.assert_array_equal(masks, expected)
    assert "isotropic" not in capsys.readouterr().err  # the file said its voxel size

    # OME-Zarr through the batch path: the same labels
    import zarr

    rc = main(["predict", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "z"), "--3d", "--dask",
               "--no-progress"])
    assert rc == 0
    written = zarr.open_group(str(tmp_path / "z" / "stack_masks.ome.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(written["0"][...]), expected)
    assert [a["name"] for a in written.attrs["multiscales"][0]["axes"]] == ["z", "y", "x"]
    # reopened, they are 3D objects, as the TIFF's are (a plane segmented again in 2D numbered its objects
    # from 1, over other nuclei's ids in the planes around it)
    from napari_unet.io._corrected import OBJECTS_3D_KEY
    from napari_unet.io._reader import reader_function

    for path in (tmp_path / "z" / "stack_masks.ome.zarr", tmp_path / "o" / "stack_masks.tif"):
        (_data, meta, kind), = reader_function(str(path))
        assert kind == "labels" and meta["metadata"].get(OBJECTS_3D_KEY) is True, path


def test_predict_3d_without_voxel_size_assumes_isotropic_and_says_so(tmp_path, nuclei3d, capsys):
    tifffile.imwrite(tmp_path / "plain.tif", nuclei3d[:12])
    rc = main(["predict", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "o"), "--3d", "--no-progress",
               "--orthogonal", "off", "--voxel-size", "1,1,1"])
    assert rc == 0 and "isotropic" not in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "o2"), "--3d", "--no-progress",
               "--3d-mode", "stitch"])
    assert rc == 0
    assert "isotropic voxels assumed" in capsys.readouterr().err
    assert tifffile.imread(tmp_path / "o2" / "plain_masks.tif").shape == (12, 36, 36)


@pytest.mark.parametrize(
    "image, extra, message",
    [
        (np.zeros((40, 40), np.uint8), [], "needs a z-stack"),
        (np.zeros((1, 40, 40), np.uint8), [], "needs a z-stack"),  # a Z axis of one plane is no Z axis
        (np.zeros((4, 40, 40), np.uint8), ["--voxel-size", "1,0,1"], "--voxel-size"),
    ],
)
def test_predict_3d_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, tiny_model_path, image, extra,
                                                                   message, capsys):
    tifffile.imwrite(tmp_path / "bad.tif", image, imagej=image.ndim == 3, metadata={"axes": "ZYX"}
                     if image.ndim == 3 else None)
    out = tmp_path / "o"
    rc = main(["predict", str(tmp_path / "bad.tif"), "--out", str(out), "--3d", "--model", str(tiny_model_path),
               "--no-progress", *extra])
    assert rc != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_3d_options_need_3d(tmp_path, tiny_model_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 40, 40), np.uint8))
    rc = main(["predict", str(tmp_path / "s.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
               "--voxel-size", "2,1,1"])
    assert rc != 0 and "go with --3d" in capsys.readouterr().err


def test_three_planes_saved_without_axes_name_the_axes_that_make_them_a_z_stack(tmp_path, nuclei3d, capsys):
    """tifffile stores (3, Y, X) without axes as the colours of one image: --3d asked for a channel,
    then refused the channel's plane as no z-stack; the message now names --axes ZYX, which works."""
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, nuclei3d[13:16])
    args = ["predict", str(path), "--out", str(tmp_path / "o"), "--3d", "--model", "nuclei", "--no-progress"]
    assert main(args) == 2
    assert "--axes ZYX" in capsys.readouterr().err
    assert main([*args, "--axes", "ZYX"]) == 0
    assert tifffile.imread(tmp_path / "o" / "three_masks.tif").shape == (3, 36, 36)


def test_a_voxel_size_in_two_units_is_said_so(tmp_path, capsys):
    """Three positive numbers whose sides are 1000x apart (z in nm, y and x in um) were told to be
    'three positive numbers': the reason is the spacing check's own."""
    from napari_unet.cli import main

    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((4, 32, 32), np.uint8))
    rc = main(["predict", str(tmp_path / "vol.tif"), "--out", str(tmp_path / "o"), "--3d",
               "--voxel-size", "2000,0.5,0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "three positive numbers" not in err and "--voxel-size" in err


def test_a_z_step_alone_is_no_voxel_size_and_dask_runs_say_the_3d_notes(tmp_path, nuclei3d, capsys, caplog):
    """A file calibrated in z only: its z step in um was taken over pixels in y and x (planes '3x
    apart', twice the objects); with --dask the 3D notes were dropped."""
    tifffile.imwrite(tmp_path / "zonly.ome.tif", nuclei3d, metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0})
    rc = main(["predict", str(tmp_path / "zonly.ome.tif"), "--out", str(tmp_path / "o"), "--3d", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "gives the z step but not the pixel size: isotropic voxels assumed" in err, err
    assert "3x the pixel size apart" not in err
    tifffile.imwrite(tmp_path / "apart.tif", nuclei3d[::4], imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    with caplog.at_level("WARNING"):
        rc = main(["predict", str(tmp_path / "apart.tif"), "--out", str(tmp_path / "z"), "--3d", "--dask",
                   "--no-progress"])
    assert rc == 0 and "The z planes are 4x the pixel size apart" in caplog.text + capsys.readouterr().err
