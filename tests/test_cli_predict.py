"""``napari-unet predict``: files, folders, stacks; errors are one line and a non-zero exit.

Uses a small untrained model saved to tmp_path (``tiny_model_path`` in conftest.py) until
the built-in default model exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core import load_model, segment


@pytest.fixture
def images(tmp_path, dsb_fluo_crop):
    image, _ = dsb_fluo_crop
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image[:100, :90])
    tifffile.imwrite(folder / "b.tif", image[::-1, :70])
    return folder


def test_predict_file_and_folder(tmp_path, images, tiny_model_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(images / "a.tif"), "--out", str(out), "--model", str(tiny_model_path),
               "--device", "cpu", "--threshold", "0.4", "--min-size", "5", "--no-progress"])
    assert rc == 0
    masks = tifffile.imread(out / "a_masks.tif")
    expected = segment(load_model(tiny_model_path, device="cpu"), tifffile.imread(images / "a.tif"),
                       threshold=0.4, min_size=5)
    np.testing.assert_array_equal(masks, expected)
    assert "a_masks.tif" in capsys.readouterr().out

    rc = main(["predict", str(images), "--out", str(out), "--model", str(tiny_model_path), "--overwrite"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_masks.tif", "b_masks.tif"]
    assert tifffile.imread(out / "b_masks.tif").shape == (128, 70)


def test_predict_stack_keeps_its_shape(tmp_path, dsb_fluo_crop, tiny_model_path):
    image, _ = dsb_fluo_crop
    stack = np.stack([image[:64, :80], image[64:, :80], image[:64, 40:120]])
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    rc = main(["predict", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "o"),
               "--model", str(tiny_model_path), "--no-progress"])
    assert rc == 0
    masks = tifffile.imread(tmp_path / "o" / "stack_masks.tif")
    assert masks.shape == (3, 64, 80)
    model = load_model(tiny_model_path, device="cpu")
    np.testing.assert_array_equal(masks[1], segment(model, stack[1]))


def test_model_file_that_is_not_a_model_exits_with_one_line(tmp_path, images, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    rc = main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--model", str(junk)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "not a napari-unet model" in err
    assert not (tmp_path / "o" / "a_masks.tif").exists()


def test_bad_threshold_and_missing_input(tmp_path, images, tiny_model_path, capsys):
    rc = main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--model",
               str(tiny_model_path), "--threshold", "2"])
    assert rc == 2 and "threshold" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "o"), "--model",
               str(tiny_model_path)])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_existing_output_is_kept_without_overwrite(tmp_path, images, tiny_model_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "a_masks.tif").write_bytes(b"precious")
    rc = main(["predict", str(images / "a.tif"), "--out", str(out), "--model", str(tiny_model_path)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "a_masks.tif").read_bytes() == b"precious"


def test_predict_with_dask_writes_ome_zarr(tmp_path, images, tiny_model_path):
    import zarr

    rc = main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--model",
               str(tiny_model_path), "--dask", "--no-progress"])
    assert rc == 0
    group = zarr.open_group(str(tmp_path / "o" / "a_masks.ome.zarr"), mode="r")
    labels = np.asarray(group["0"][...])
    expected = segment(load_model(tiny_model_path, device="cpu"), tifffile.imread(images / "a.tif"))
    np.testing.assert_array_equal(labels, expected)
    assert group.attrs["multiscales"][0]["axes"][-1]["name"] == "x"


def test_folder_as_stack(tmp_path, dsb_fluo_crop, tiny_model_path):
    image, _ = dsb_fluo_crop
    folder = tmp_path / "planes"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"t{i}.tif", np.roll(image[:60, :50], 7 * i, axis=0))
    rc = main(["predict", str(folder), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
               "--folder-as-stack", "--no-progress"])
    assert rc == 0
    masks = tifffile.imread(tmp_path / "o" / "planes_masks.tif")
    assert masks.shape == (3, 60, 50)


def test_multichannel_stack_needs_a_channel(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, _ = dsb_fluo_crop
    stack = np.stack([image[:64, :64], 255 - image[:64, :64]])  # (C, Y, X)
    tifffile.imwrite(tmp_path / "two.tif", stack, imagej=True, metadata={"axes": "CYX"})
    rc = main(["predict", str(tmp_path / "two.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path)])
    assert rc == 2 and "--channel" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "two.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
               "--channel", "1", "--no-progress"])
    assert rc == 0
    masks = tifffile.imread(tmp_path / "o" / "two_masks.tif")
    np.testing.assert_array_equal(masks, segment(load_model(tiny_model_path, device="cpu"), stack[1]))
