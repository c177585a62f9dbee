"""``napari-unet predict``: files, folders, stacks; errors are one line and a non-zero exit.

Uses a small untrained model saved to tmp_path (``tiny_model_path`` in conftest.py) until
the built-in default model exists.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.cli import main
from napari_unet.core import load_model, segment
from napari_unet.io._corrected import CORRECTED_KEY, DIAMETER_KEY, MODEL_KEY
from napari_unet.io._reader import napari_get_reader


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

    ((_, meta, _),) = napari_get_reader(str(out / "a_masks.tif"))(str(out / "a_masks.tif"))
    assert meta["metadata"][MODEL_KEY]["path"] == str(tiny_model_path.absolute())  # proposed again in napari
    assert DIAMETER_KEY not in meta["metadata"]  # (estimated: Auto)

    rc = main(["predict", str(images), "--out", str(out), "--model", str(tiny_model_path), "--overwrite",
               "--diameter", "14"])
    assert rc == 0
    # (beside each, the list napari-unet reads back: no slice corrected, the model and the diameter typed)
    assert sorted(p.name for p in out.iterdir()) == ["a_masks.tif", "a_masks.tif.corrected.json", "b_masks.tif",
                                                     "b_masks.tif.corrected.json"]
    assert tifffile.imread(out / "b_masks.tif").shape == (128, 70)
    ((data, meta, kind),) = napari_get_reader(str(out / "a_masks.tif"))(str(out / "a_masks.tif"))
    assert kind == "labels" and meta["metadata"][CORRECTED_KEY] == []  # masks to correct in napari
    assert meta["metadata"][MODEL_KEY]["name"] == tiny_model_path.stem and meta["metadata"][DIAMETER_KEY] == "14"
    np.testing.assert_array_equal(np.asarray(data), segment(load_model(tiny_model_path, device="cpu"),
                                                            tifffile.imread(images / "a.tif"), diameter=14))


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
    # skipped, and said so (issue #17: a rerun finishes a batch instead of failing on "exists")
    assert rc == 0 and "--overwrite" in capsys.readouterr().err
    assert (out / "a_masks.tif").read_bytes() == b"precious"


def test_overwrite_keeps_masks_corrected_by_hand_unless_asked(tmp_path, images, tiny_model_path, capsys):
    """Masks opened in napari, corrected and saved under their name ("Save masks": the list of corrected
    slices beside them) were replaced by ``--overwrite`` and their list emptied: the corrections lost."""
    from napari_unet.io import write_labels
    from napari_unet.io._corrected import load_corrected_list

    out = tmp_path / "o"
    out.mkdir()
    hand = np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) % 7
    write_labels(out / "a_masks.tif", hand, corrected=[()])
    command = ["predict", str(images / "a.tif"), "--out", str(out), "--model", str(tiny_model_path), "--overwrite"]
    assert main(command) == 0
    assert "holds labels corrected by hand (--overwrite-corrected replaces it)" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(out / "a_masks.tif"), hand)
    assert load_corrected_list(out / "a_masks.tif") == [()]
    alone = [c for c in command if c != "--overwrite"]  # (it did nothing, silently)
    assert main([*alone, "--overwrite-corrected"]) == 2
    assert "--overwrite-corrected goes with --overwrite" in capsys.readouterr().err
    assert main([*command, "--overwrite-corrected", "--no-progress"]) == 0
    assert not np.array_equal(tifffile.imread(out / "a_masks.tif"), hand)
    assert load_corrected_list(out / "a_masks.tif") == []


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
    path = str(tmp_path / "o" / "a_masks.ome.zarr")
    assert [kind for _data, _meta, kind in napari_get_reader(path)(path)] == ["labels"]
    # the model and the diameter given, kept in napari-unet's mark: opened, Segment proposes them
    assert main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
                 "--dask", "--no-progress", "--overwrite", "--diameter", "14"]) == 0
    ((_data, meta, _kind),) = napari_get_reader(path)(path)
    assert meta["metadata"][MODEL_KEY]["path"] == str(tiny_model_path.absolute())
    assert meta["metadata"][DIAMETER_KEY] == "14" and meta["name"] == "a masks"


def test_a_scheduler_is_connected_once_for_the_batch_and_refused_once(tmp_path, images, tiny_model_path, capsys,
                                                                       monkeypatch):
    """One connection serves every input; a scheduler that cannot be reached, or --3d with one,
    stops the batch before any work with one line (not a timeout or a refusal per input)."""
    import zarr
    from distributed import LocalCluster

    from napari_unet.cli import predict as predict_cli
    from napari_unet.io import _reader

    inputs = [str(images / "a.tif"), str(images / "b.tif")]
    # files read lazily (large ones: what a cluster is for) travel by their path (an open file could
    # not be sent: every such input failed); here every file is read so, and the cluster's worker is a
    # process of its own
    monkeypatch.setattr(_reader, "LAZY_THRESHOLD_BYTES", 1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        rc = main(["predict", *inputs, "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
                   "--scheduler", cluster.scheduler_address, "--no-progress"])
    assert rc == 0
    for name in ("a", "b"):
        labels = np.asarray(zarr.open_group(str(tmp_path / "o" / f"{name}_masks.ome.zarr"), mode="r")["0"][...])
        expected = segment(load_model(tiny_model_path, device="cpu"), tifffile.imread(images / f"{name}.tif"))
        np.testing.assert_array_equal(labels, expected)
    capsys.readouterr()

    monkeypatch.setattr(predict_cli, "SCHEDULER_TIMEOUT_S", 1)
    for extra in (["--scheduler", "tcp://127.0.0.1:9"], ["--scheduler", "tcp://127.0.0.1:9", "--3d"]):
        rc = main(["predict", *inputs, "--out", str(tmp_path / "p"), "--model", str(tiny_model_path), *extra])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and len(err.splitlines()) == 1, err
        assert ("--3d" in err) if "--3d" in extra else ("cannot connect" in err)
        assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_dask_masks_claim_no_pixel_size_the_input_has_not(tmp_path, images, dsb_fluo_crop, tiny_model_path):
    """An uncalibrated image's OME-Zarr masks have no units (not 1 µm); a stack with a pixel size
    but no z spacing keeps the pixel size only."""
    import zarr

    from napari_unet.io import read_stack

    image, _ = dsb_fluo_crop
    stack = np.stack([image[:64, :64], image[64:, 64:]])
    tifffile.imwrite(tmp_path / "zstack.tif", stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um"})
    rc = main(["predict", str(images / "a.tif"), str(tmp_path / "zstack.tif"), "--out", str(tmp_path / "o"),
               "--model", str(tiny_model_path), "--dask", "--no-progress"])
    assert rc == 0
    plain, zstack = tmp_path / "o" / "a_masks.ome.zarr", tmp_path / "o" / "zstack_masks.ome.zarr"
    axes = zarr.open_group(str(plain), mode="r").attrs["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == [None, None]
    assert read_stack(plain)[1].scale == {}
    axes = zarr.open_group(str(zstack), mode="r").attrs["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == [None, "micrometer", "micrometer"]
    assert read_stack(zstack)[1].scale == {"Y": 0.5, "X": 0.5}


@pytest.mark.parametrize("extra", [[], ["--3d", "--voxel-size", "1,1,1", "--orthogonal", "off"]])
def test_dask_writes_the_masks_of_a_long_file_name(tmp_path, dsb_fluo_crop, tiny_model_path, extra):
    """A 232-character name: the temporary folder of the OME-Zarr is named short enough (it was
    "File name too long"), and the masks get the user's usual folder mode."""
    import os

    import zarr

    image, _ = dsb_fluo_crop
    path = tmp_path / f"{'c' * 232}.tif"
    tifffile.imwrite(path, np.stack([image[:64, :64], image[64:, 64:], image[:64, 64:]]), photometric="minisblack")
    rc = main(["predict", str(path), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path), "--dask",
               "--no-progress", *extra])
    assert rc == 0
    masks = tmp_path / "o" / f"{'c' * 232}_masks.ome.zarr"
    assert [p.name for p in (tmp_path / "o").iterdir()] == [masks.name]  # no temporary folder left
    mask = os.umask(0)
    os.umask(mask)
    assert masks.stat().st_mode & 0o777 == 0o777 & ~mask
    assert zarr.open_group(str(masks), mode="r")["0"].shape == (3, 64, 64)


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
    # the masks written into the folder itself, then the run again: they are no plane of the stack
    # ("cannot stack folder 'planes': 'planes_masks.tif' has shape (3, 60, 50)")
    for _ in range(2):
        assert main(["predict", str(folder), "--out", str(folder), "--model", str(tiny_model_path),
                     "--folder-as-stack", "--no-progress", "--overwrite"]) == 0
    assert tifffile.imread(folder / "planes_masks.tif").shape == (3, 60, 50)
    from napari_unet.io._formats import stack_name

    assert stack_name(".") and stack_name(".") != "_"  # ("." named its masks "_masks.tif")


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


@pytest.mark.parametrize("dask", [False, True])
def test_the_masks_of_one_channel_open_as_the_masks_of_that_channels_layer(tmp_path, dsb_fluo_crop, tiny_model_path,
                                                                           capsys, dask):
    """A multi-channel file opens as one layer a channel ("two [nuclei]", "two [membrane]"); predict's masks
    of one of them opened as "two masks", the masks of no layer (Segment made a second masks layer, and did
    not propose their model). They record their channel and open as "two [nuclei] masks"; another channel
    segmented into the same folder is skipped with why."""
    from napari_unet.io._reader import reader_function

    image, _ = dsb_fluo_crop
    stack = np.stack([image[:64, :64], 255 - image[:64, :64]])
    tifffile.imwrite(tmp_path / "two.ome.tif", stack, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["nuclei", "membrane"]}})
    names = [meta["name"] for _data, meta, _kind in reader_function(str(tmp_path / "two.ome.tif"))]
    assert names == ["two [nuclei]", "two [membrane]"]
    out = tmp_path / "o"
    extra = ["--dask"] if dask else []
    rc = main(["predict", str(tmp_path / "two.ome.tif"), "--out", str(out), "--model", str(tiny_model_path),
               "--channel", "0", "--no-progress", *extra])
    assert rc == 0, capsys.readouterr().err
    (written,) = [p for p in out.iterdir() if p.name.startswith("two_masks") and not p.name.endswith(".json")]
    (_data, meta, kind), = reader_function(str(written))
    assert kind == "labels" and meta["name"] == "two [nuclei] masks"
    rc = main(["predict", str(tmp_path / "two.ome.tif"), "--out", str(out), "--model", str(tiny_model_path),
               "--channel", "1", "--no-progress", *extra])
    assert rc == 0 and "exists (the masks of channel 'nuclei': segment another channel into another --out" \
        in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "two.ome.tif"), "--out", str(out), "--model", str(tiny_model_path),
               "--channel", "0", "--no-progress", *extra])  # (the same channel again: no other folder to go to)
    err = capsys.readouterr().err
    assert rc == 0 and "exists (--overwrite replaces it)" in err and "another --out" not in err


def test_channel_of_an_rgb_image_is_that_colour(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, _ = dsb_fluo_crop
    grey = image[:64, :64] if image.ndim == 2 else image[:64, :64, 0]
    rgb = np.dstack([np.zeros_like(grey), np.zeros_like(grey), grey])  # nuclei in blue
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    rc = main(["predict", str(tmp_path / "rgb.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
               "--channel", "2", "--no-progress"])
    assert rc == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o" / "rgb_masks.tif"),
                                  segment(load_model(tiny_model_path, device="cpu"), grey))
    rc = main(["predict", str(tmp_path / "rgb.tif"), "--out", str(tmp_path / "o2"), "--model", str(tiny_model_path),
               "--channel", "3", "--no-progress"])
    assert rc == 2 and "--channel must be 0, 1 or 2 (red, green, blue)" in capsys.readouterr().err
    rgba = np.dstack([rgb, np.full_like(grey, 255)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    rc = main(["predict", str(tmp_path / "rgba.tif"), "--out", str(tmp_path / "o3"), "--model", str(tiny_model_path),
               "--channel", "3", "--no-progress"])
    assert rc == 2 and "3 is its alpha" in capsys.readouterr().err
    # a grey image has one channel: another one asked for is said, and the image segmented
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    rc = main(["predict", str(tmp_path / "grey.tif"), "--out", str(tmp_path / "o4"), "--model", str(tiny_model_path),
               "--channel", "1", "--no-progress"])
    assert rc == 0 and "grey.tif: one channel only: --channel 1 left aside" in capsys.readouterr().err
    assert (tmp_path / "o4" / "grey_masks.tif").is_file()


# ---------------------------------------------------------------------- issue #17
def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, images, tiny_model_path,
                                                                     capsys, monkeypatch):
    other = tmp_path / "in2"
    other.mkdir()
    (other / "a.tif").write_bytes((images / "b.tif").read_bytes())
    out = tmp_path / "o"
    rc = main(["predict", str(images / "a.tif"), str(other / "a.tif"), "--out", str(out),
               "--model", str(tiny_model_path), "--overwrite", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(images / "a.tif") in err and str(other / "a.tif") in err and "a_masks.tif" in err
    assert not out.exists()
    # x.tif and x.png in one folder: the same
    Image.fromarray(tifffile.imread(images / "b.tif")).save(images / "a.png")
    rc = main(["predict", str(images), "--out", str(out), "--model", str(tiny_model_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "a.png" in err and "a.tif" in err and not out.exists()
    # Cell.tif and cell.tif of two folders: one file on macOS's and Windows' disks (the second replaced the
    # first), two on Linux's (asked of the disk: they were refused there too)
    from napari_unet.cli import predict as cli_predict

    (images / "a.png").unlink()
    (other / "A.tif").write_bytes((images / "b.tif").read_bytes())
    command = ["predict", str(images / "a.tif"), str(other / "A.tif"), "--out", str(out),
               "--model", str(tiny_model_path), "--overwrite", "--no-progress"]
    monkeypatch.setattr(cli_predict, "_names_fold_case", lambda _folder: True)  # (a Mac's disk)
    rc = main(command)
    err = capsys.readouterr().err
    assert rc == 2 and "differ only in capitals" in err and not out.exists()
    monkeypatch.undo()
    assert cli_predict._names_fold_case(out) is False  # (this Linux disk)
    assert main(command) == 0 and sorted(p.name for p in out.glob("*.tif")) == ["A_masks.tif", "a_masks.tif"]


def test_an_input_that_is_another_inputs_output_is_refused_before_any_work(tmp_path, images, tiny_model_path,
                                                                          capsys, monkeypatch):
    """a.tif and a_masks.tif (masks of an earlier run, named to be segmented) into their own folder:
    a.tif's masks would overwrite an input, which would then be segmented."""
    masks = images / "a_masks.tif"
    tifffile.imwrite(masks, np.arange(100 * 90, dtype=np.uint16).reshape(100, 90) % 7)
    before = masks.read_bytes()
    monkeypatch.chdir(images)  # --out "." is the inputs' folder too
    rc = main(["predict", str(images / "a.tif"), str(masks), "--out", ".", "--model", str(tiny_model_path),
               "--overwrite", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "also an input" in err and str(masks) in err
    assert masks.read_bytes() == before and not (images / "a_masks_masks.tif").exists()


def test_batch_goes_on_after_a_bad_file_and_a_rerun_skips_what_exists(tmp_path, images, tiny_model_path,
                                                                      capsys):
    (images / "a2.tif").write_text("not an image")
    out = tmp_path / "o"
    args = ["predict", str(images), "--out", str(out), "--model", str(tiny_model_path), "--no-progress"]
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 2
    assert sorted(p.name for p in out.glob("*.tif")) == ["a_masks.tif", "b_masks.tif"]
    assert "not a TIFF" in captured.err and captured.err.strip().splitlines()[-1].endswith(
        "1 of 3 inputs failed (see above): a2.tif")
    assert "b_masks.tif" in captured.out
    done = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (images / "a2.tif").unlink()
    tifffile.imwrite(images / "a2.tif", tifffile.imread(images / "a.tif")[:40])
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err.count("skipped") == 2 and "a2_masks.tif" in captured.out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in done} == done
    assert (out / "a2_masks.tif").exists()


def test_tile_below_the_model_minimum_is_refused_and_zero_means_auto(tmp_path, images, tiny_model_path,
                                                                     capsys):
    out = tmp_path / "o"
    base = [str(images / "a.tif"), "--out", str(out), "--model", str(tiny_model_path), "--no-progress"]
    for tile in ("1", "100", "-5"):
        rc = main(["predict", *base, "--tile", tile])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "at least 128 pixels" in err, err
    assert not out.exists()
    rc = main(["predict", *base, "--tile", "0"])
    assert rc == 0
    np.testing.assert_array_equal(
        tifffile.imread(out / "a_masks.tif"),
        segment(load_model(tiny_model_path, device="cpu"), tifffile.imread(images / "a.tif")))
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "0 or not given: automatic" in " ".join(capsys.readouterr().out.split())


def test_model_folder_is_a_one_line_error(tmp_path, images, capsys):
    for model in (str(images), str(images) + "/"):
        rc = main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--model", model])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "is a folder, not a model file" in err, err


def test_no_torch_warning_before_the_error_of_a_foreign_pickle(tmp_path, images):
    foreign = tmp_path / "foreign.pt"
    with open(foreign, "wb") as fh:
        pickle.dump({"weights": [1, 2, 3]}, fh, protocol=5)
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "predict", str(images / "a.tif"),
         "--out", str(tmp_path / "o"), "--model", str(foreign)], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "napari-unet: error: foreign.pt is not a napari-unet model file " \
        "(it could not be read as one)."


def test_rerun_into_the_input_folder_does_not_segment_the_masks(tmp_path, images, tiny_model_path, capsys):
    """--out the input folder, twice: the second run skips what exists and does not take the
    masks of the first for images (no a_masks_masks.tif)."""
    for _ in range(2):
        rc = main(["predict", str(images), "--out", str(images), "--model", str(tiny_model_path), "--no-progress"])
        assert rc == 0
    assert sorted(p.name for p in images.glob("*.tif")) == ["a.tif", "a_masks.tif", "b.tif", "b_masks.tif"]
    assert "left out 2 file(s) of masks or labels" in capsys.readouterr().err
    # nor masks saved from napari ("<image> masks.tif", the list of corrected slices beside it), nor labels
    # named after an image there: they were segmented as images
    import shutil

    from napari_unet.io import write_labels

    (images / "a_masks.tif").unlink()
    (images / "b_masks.tif").unlink()
    write_labels(images / "a masks.tif", np.ones((8, 8), np.uint16), corrected=[()])
    shutil.copy(images / "a.tif", images / "b_labels.tif")
    rc = main(["predict", str(images), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path), "--no-progress"])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "o").glob("*.tif")) == ["a_masks.tif", "b_masks.tif"]
    assert "left out 2 file(s) of masks or labels" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["result.tif", "a_masks_file"])
def test_out_that_is_a_file_is_a_one_line_error(tmp_path, images, tiny_model_path, capsys, out):
    target = tmp_path / out
    if out == "a_masks_file":
        target.write_text("not a folder")
    rc = main(["predict", str(images / "a.tif"), "--out", str(target), "--model", str(tiny_model_path),
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "give the folder the masks go to" in err
    assert not (tmp_path / "result.tif").exists() or out != "result.tif"


def test_masks_of_a_2d_time_lapse_open_with_the_axes_of_its_image(tmp_path, dsb_fluo_crop, tiny_model_path):
    """An OME-Zarr time-lapse of single planes (T, C, Z = 3, 1, 1): its masks keep the Z of size 1,
    which the TIFF does not store, so napari shows each time point's own labels."""
    import zarr

    image, _ = dsb_fluo_crop
    movie = np.stack([np.roll(image[:64, :64], 9 * t, axis=1) for t in range(3)])[:, None, None]
    path = tmp_path / "movie.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=movie.shape, dtype=movie.dtype, chunks=(1, 1, 1, 64, 64))[...] = movie
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [60, 1, 1, 0.5, 0.5]}]}]}]
    rc = main(["predict", str(path), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path), "--no-progress"])
    assert rc == 0
    ((image_data, image_meta, _),) = napari_get_reader(str(path))(str(path))
    masks = str(tmp_path / "o" / "movie_masks.tif")
    ((data, meta, kind),) = napari_get_reader(masks)(masks)
    assert kind == "labels" and data.shape == image_data.shape == (3, 1, 64, 64)
    assert tuple(meta["axis_labels"]) == tuple(image_meta["axis_labels"]) == ("t", "z", "y", "x")
    assert tuple(meta["scale"])[0] == 60.0 and tuple(meta["scale"])[2:] == (0.5, 0.5)
    model = load_model(tiny_model_path, device="cpu")
    np.testing.assert_array_equal(np.asarray(data)[2, 0], segment(model, movie[2, 0, 0]))


def test_masks_of_a_translated_ome_zarr_lie_over_it(tmp_path, dsb_fluo_crop, tiny_model_path):
    """An OME-Zarr crop of a larger image (a translation): its masks, TIFF or OME-Zarr, open where it lies."""
    import zarr

    image, _ = dsb_fluo_crop
    path = tmp_path / "crop.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=np.ascontiguousarray(image[:64, :64]), chunks=(64, 64))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.5, 0.5]}, {"type": "translation", "translation": [100.0, 250.0]}]}]}]
    ((_data, image_meta, _),) = napari_get_reader(str(path))(str(path))
    np.testing.assert_allclose(image_meta["translate"], [100.0, 250.0])
    for extra, name in (([], "crop_masks.tif"), (["--dask"], "crop_masks.ome.zarr")):
        rc = main(["predict", str(path), "--out", str(tmp_path / "o"), "--model", str(tiny_model_path),
                   "--no-progress", *extra])
        assert rc == 0
        masks = str(tmp_path / "o" / name)
        ((_data, meta, kind),) = napari_get_reader(masks)(masks)
        assert kind == "labels", name
        np.testing.assert_allclose(meta["scale"], [0.5, 0.5])
        np.testing.assert_allclose(meta["translate"], [100.0, 250.0], err_msg=name)


def test_dask_segments_a_stack_at_the_diameter_the_plain_run_finds_on_its_first_plane(tmp_path, data_dir):
    """--diameter auto: the size is told on the first plane and kept for the stack, with or
    without --dask (each plane's task estimated its own: other labels)."""
    import csv

    import zarr
    from skimage.io import imread

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"][:4]
    planes = [imread(data_dir / "dsb2018" / "images" / f"{r['id']}.png") for r in rows]
    stack = np.stack([(p[..., :3].mean(-1) if p.ndim == 3 else p)[:128, :128].astype(np.uint8) for p in planes])
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "TYX"})
    for extra in ([], ["--dask"]):
        rc = main(["predict", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "o"), "--no-progress", *extra])
        assert rc == 0
    plain = tifffile.imread(tmp_path / "o" / "stack_masks.tif")
    with_dask = np.asarray(zarr.open_group(str(tmp_path / "o" / "stack_masks.ome.zarr"), mode="r")["0"][...])
    assert plain.shape == (4, 128, 128) and plain.max() > 3
    np.testing.assert_array_equal(with_dask, plain)


def test_a_stack_read_lazily_is_segmented_without_its_labels_in_memory(tmp_path, dsb_fluo_crop, tiny_model_path,
                                                                       monkeypatch):
    """A stack too large to read whole (read lazily) gets its labels in a temporary file and its
    TIFF written plane by plane: memory does not grow with the stack (the int32 labels and a
    16-bit copy of them were held whole: 6 bytes per pixel of an 8-bit stack)."""
    import tracemalloc

    from napari_unet.io import _reader, _writer

    image, _ = dsb_fluo_crop
    monkeypatch.setattr(_reader, "LAZY_THRESHOLD_BYTES", 0)  # what a stack over 1 GiB gets
    monkeypatch.setattr(_writer, "WRITE_BY_PLANES_BYTES", 0, raising=False)
    stack = np.zeros((300, 256, 256), np.uint8)  # 19.7 MB; blank planes but two (no network there)
    stack[7, :64, :80] = stack[200, :64, :80] = image[:64, :80]
    tifffile.imwrite(tmp_path / "big.tif", stack, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "small.tif", stack[195:205], imagej=True, metadata={"axes": "TYX"})
    args = ["--out", str(tmp_path / "o"), "--model", str(tiny_model_path), "--no-progress"]
    assert main(["predict", str(tmp_path / "small.tif"), *args]) == 0  # the same path once: its imports made
    for done in (tmp_path / "o").iterdir():
        done.unlink()
    tracemalloc.start()
    try:
        rc = main(["predict", str(tmp_path / "big.tif"), *args])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 0
    masks = tifffile.imread(tmp_path / "o" / "big_masks.tif")
    model = load_model(tiny_model_path, device="cpu")
    np.testing.assert_array_equal(masks[200], segment(model, stack[200]))
    assert masks.shape == stack.shape and not masks[8].any()
    assert peak < 25e6, f"{peak / 1e6:.0f} MB traced (the labels alone are 79 MB as int32)"
    # no temporary file left; the list beside the masks says the model
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["big_masks.tif", "big_masks.tif.corrected.json"]


def test_messages_about_one_input_of_a_batch_name_it(tmp_path, images, tiny_model_path, caplog):
    import io
    import logging

    tifffile.imwrite(tmp_path / "blank.tif", np.full((64, 64), 9, np.uint8))
    extra = io.StringIO()
    handler = logging.StreamHandler(extra)  # a program calling main() may have handlers of its own
    logging.getLogger().addHandler(handler)
    try:
        rc = main(["predict", str(images / "a.tif"), str(tmp_path / "blank.tif"), "--out", str(tmp_path / "o"),
                   "--model", str(tiny_model_path), "--no-progress"])
    finally:
        logging.getLogger().removeHandler(handler)
    assert rc == 0
    said = [r.getMessage() for r in caplog.records if "constant" in r.getMessage()]
    named = f"napari-unet: {tmp_path / 'blank.tif'}: "
    assert said and all(m.startswith(named) and m.count("napari-unet:") == 1 for m in said)
    assert extra.getvalue().count(named) == 1


def test_without_model_each_input_gets_the_built_in_model_that_fits_it(tmp_path, data_dir, images, capsys):
    """No --model: a phase-contrast field (Usiigaci, MIT) is segmented with 'cells' and fluorescent
    nuclei with 'nuclei-fluo', as Segment proposes them in the GUI; stderr says which, once per change."""
    from napari_unet.core import load_model
    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import segment

    phase = tifffile.imread(data_dir / "usiigaci_phase" / "images.tif", key=0)[:384, :384]
    truth = tifffile.imread(data_dir / "usiigaci_phase" / "labels.tif", key=0)[:384, :384]
    tifffile.imwrite(tmp_path / "phase.tif", phase)
    rc = main(["predict", str(tmp_path / "phase.tif"), str(images / "a.tif"), "--out", str(tmp_path / "o"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "phase.tif: model 'cells' for this phase-contrast / DIC image" in err
    assert "a.tif: model 'nuclei-fluo' for this fluorescence image" in err
    got = tifffile.imread(tmp_path / "o" / "phase_masks.tif")
    np.testing.assert_array_equal(got, segment(load_model("cells"), phase))
    assert average_precision(truth, got) > 0.5  # the nuclei model finds almost none of these cells

    rc = main(["predict", str(tmp_path / "phase.tif"), "--out", str(tmp_path / "o2"), "--no-progress",
               "--model", "nuclei"])
    assert rc == 0 and "model '" not in capsys.readouterr().err  # a model given is used as given


def test_the_model_is_chosen_on_the_first_plane_with_structure(tmp_path, data_dir, capsys, caplog):
    """A phase-contrast time-lapse whose first frames are dark (camera noise alone, or one value):
    the model is chosen on the first frame that shows something ('nuclei' was chosen on the noise),
    and the dark frames come out empty."""
    stack = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[:5].copy()
    stack[:2] = np.random.default_rng(0).integers(0, 5, stack[:2].shape)
    stack[2] = 0
    tifffile.imwrite(tmp_path / "late.tif", stack, imagej=True, metadata={"axes": "TYX"})
    with caplog.at_level(logging.WARNING):
        rc = main(["predict", str(tmp_path / "late.tif"), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "late.tif: model 'cells' for this phase-contrast / DIC image" in err
    assert "The plane at index 0 holds camera noise alone" in caplog.text
    got = tifffile.imread(tmp_path / "o" / "late_masks.tif")
    assert got.shape == stack.shape and not got[:3].any() and all(got[t].max() >= 3 for t in (3, 4))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, images, tiny_model_path,
                                                                         capsys, monkeypatch):
    """Checked before the batch is segmented (it failed at the end, naming a hidden temporary file)."""
    import napari_unet.cli.predict as predict

    segmented = []
    monkeypatch.setattr(predict, "_segment_one", lambda *a, **k: segmented.append(a))
    rc = main(["predict", str(images), "--out", "/proc/1", "--model", str(tiny_model_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--out /proc/1 cannot be written" in err
    assert ".tmp" not in err and not segmented


def test_a_link_to_nowhere_is_kept_and_a_name_too_long_stops_only_its_input(tmp_path, images, tiny_model_path,
                                                                            capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "a_masks.tif").symlink_to(tmp_path / "nowhere.tif")  # the user's link: kept without --overwrite
    long_name = "a" + "x" * 247 + ".tif"  # between a.tif and b.tif; its masks' name is too long for a file
    tifffile.imwrite(images / long_name, tifffile.imread(images / "a.tif"))
    rc = main(["predict", str(images), "--out", str(out), "--model", str(tiny_model_path), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.err.strip().splitlines()[-1].endswith(f"1 of 3 inputs failed (see above): {long_name}")
    assert (out / "a_masks.tif").is_symlink() and "skipped" in captured.err
    assert (out / "b_masks.tif").exists()  # the input after the long name was segmented


def test_a_min_size_that_removes_every_object_says_so(tmp_path, images, capsys, caplog, tiny_model_path):
    rc = main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--model", "nuclei",
               "--min-size", "100000", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "no object is left with --min-size 100000" in err and "no object found" not in err
    assert not tifffile.imread(tmp_path / "o" / "a_masks.tif").any()
    # nothing found by a model of no object size (no size search, which says its own): said, not in silence
    rc = main(["predict", str(images / "a.tif"), "--out", str(tmp_path / "t"), "--model", str(tiny_model_path),
               "--threshold", "0.99", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "a.tif: no object found, the masks written are empty" in err
    assert not tifffile.imread(tmp_path / "t" / "a_masks.tif").any()
    # a blank plane is said as such, without advice on the diameter
    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.full((64, 64), 7, np.uint8))
    rc = main(["predict", str(blank), "--out", str(tmp_path / "o"), "--model", "nuclei", "--diameter", "17",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "no object found" not in err and any("constant" in r.getMessage() for r in caplog.records)


def test_labels_of_a_large_stack_that_the_disk_cannot_hold_are_a_one_line_error(tmp_path, monkeypatch):
    """The temporary labels of a stack read lazily take their disk space first: a full disk is a
    message for that input (the others go on), where the memory map ended the process with a bus error."""
    import shutil

    import dask.array as da

    from napari_unet._atomic import reserve_space
    from napari_unet.cli import CLIError
    from napari_unet.cli.predict import _labels_buffer

    side = 1 << 16
    planes = shutil.disk_usage(tmp_path).free // (4 * side * side) + 2  # more than the disk holds
    stack = da.zeros((planes, side, side), dtype=np.uint8)
    with pytest.raises(CLIError, match=r"not enough free space in .* GiB"):
        with _labels_buffer(stack, False, tmp_path / "big_masks.tif"):
            pass
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    # a stack read whole whose labels (4 bytes a pixel) do not fit in the memory free goes to the file too
    # (a 280 MB uint8 stack made 1.1 GB of labels in memory, and a 1.5 GiB job was killed)
    import napari_unet.cli.predict as predict_cli

    whole = np.zeros((4, 64, 64), np.uint8)
    with _labels_buffer(whole, False, tmp_path / "whole_masks.tif") as buffer:
        assert buffer is None  # (they fit)
    monkeypatch.setattr(predict_cli, "LABELS_MEMORY_SHARE", 1e-9)
    with _labels_buffer(whole, False, tmp_path / "whole_masks.tif") as buffer:
        assert isinstance(buffer, np.memmap) and buffer.shape == whole.shape
    assert list(tmp_path.iterdir()) == []
    with open(tmp_path / "small", "wb") as fh:  # what fits is taken
        reserve_space(fh, 1 << 20, tmp_path)
    assert (tmp_path / "small").stat().st_size == 1 << 20


def test_a_damaged_plane_read_lazily_fails_that_input_only(tmp_path, tiny_model_path, monkeypatch, capsys):
    """A large file is read lazily, so a damaged compressed plane fails only when its pixels are decoded:
    the DeflateError ended the whole batch with a traceback, and the inputs after it were never done."""
    from napari_unet.io import _reader

    monkeypatch.setattr(_reader, "LAZY_THRESHOLD_BYTES", 0)  # (as for a file of several gigabytes)
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (3, 64, 64)).astype(np.uint8)
    tifffile.imwrite(folder / "b.tif", stack, compression="zlib", imagej=True, metadata={"axes": "TYX"})
    with tifffile.TiffFile(folder / "b.tif") as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    raw = bytearray((folder / "b.tif").read_bytes())
    raw[offset + 2 : offset + count] = b"\x00" * (count - 2)  # the last plane's compressed data destroyed
    (folder / "b.tif").write_bytes(bytes(raw))
    tifffile.imwrite(folder / "c.tif", stack[0])
    rc = main(["predict", str(folder / "b.tif"), str(folder / "c.tif"), "--out", str(tmp_path / "out"),
               "--model", str(tiny_model_path), "--diameter", "10", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if "b.tif" in line]
    assert rc == 2 and (tmp_path / "out" / "c_masks.tif").is_file()
    assert err and all("Traceback" not in line for line in err)
    assert not list((tmp_path / "out").glob("*b_masks*")) and not list((tmp_path / "out").glob(".*"))


def test_sigterm_stops_a_batch_as_ctrl_c_does(tmp_path, tiny_model_path):
    """SIGTERM (a cluster job's time limit) ended the process at once, leaving hidden temporary files."""
    import signal
    import threading
    import time

    from napari_unet.cli import terminate_as_interrupt

    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        threading.Timer(0.1, lambda: signal.raise_signal(signal.SIGTERM)).start()
        for _ in range(100):
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is not None  # (the handler before is back)


def test_ctrl_c_ends_the_network_run_in_progress():
    """Python runs its Ctrl+C handler only once the main thread is back from ONNX Runtime: the CLI
    waited for the tile's end (~35 s for the paper's network on a laptop) before it stopped."""
    import os
    import signal
    import threading
    import time

    import torch

    from napari_unet.cli import terminate_as_interrupt
    from napari_unet.core import engine as eng
    from napari_unet.core.model import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same", norm="batch").eval()
    network = eng.onnx_network(net)
    batch = np.random.default_rng(0).random((2, 1, 1024, 1024), dtype=np.float32)  # seconds of work
    outcome = []
    with pytest.raises(KeyboardInterrupt) as stopped, terminate_as_interrupt() as runs:
        def press_ctrl_c() -> None:
            while not runs._runs:  # the run has begun
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=press_ctrl_c, daemon=True).start()
        outcome.append(network(batch))
    chain, error = [], stopped.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert not outcome and any(isinstance(e, eng.RunInterrupted) or "terminate" in str(e) for e in chain), \
        "the run went on to its end"
    assert signal.set_wakeup_fd(-1) == -1  # (the wake-up of the signals is put back)
    assert not [t for t in threading.enumerate() if t.name == "napari-unet signals"]


def test_a_closed_output_pipe_does_not_stop_the_batch(tmp_path, tiny_model_path):
    # `predict a b c d e --out o | head -c1` stopped after 2 of 5 files, with exit 0 and no message
    folder = tmp_path / "in"
    folder.mkdir()
    image = (np.random.default_rng(0).random((48, 48)) * 200).astype(np.uint8)
    for name in "abcd":
        tifffile.imwrite(folder / f"{name}.tif", image)
    command = (f"{sys.executable} -m napari_unet.cli predict {folder} --out {tmp_path / 'out'} --model "
               f"{tiny_model_path} --diameter 10 --no-progress | head -c1")
    subprocess.run(["bash", "-c", command], capture_output=True, timeout=300, check=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("*_masks.tif")) == [f"{n}_masks.tif" for n in "abcd"]


@pytest.mark.parametrize("dask", [False, True])
def test_masks_corrected_and_saved_while_the_batch_runs_are_kept(tmp_path, images, tiny_model_path, capsys,
                                                                  monkeypatch, dask):
    """Masks corrected in napari and saved over a batch's target while it segmented that image: the
    batch's output replaced them when it finished (1 corrected object -> 59, the list emptied, exit 0).
    What was there when the batch decided to write is compared again before the output is put in place."""
    from napari_unet import batch
    from napari_unet.cli import predict as cli_predict
    from napari_unet.io import write_labels

    folder = images
    out = tmp_path / "masks"
    target = out / ("a_masks.ome.zarr" if dask else "a_masks.tif")
    corrected = np.zeros((32, 48), np.int32)
    corrected[4:10, 4:10] = 1

    def save_meanwhile() -> None:  # (the user's Save masks, in another program, during the run)
        if dask:
            import shutil

            target.mkdir(parents=True)
            (target / ".zattrs").write_text("{}")
            shutil.copy(tiny_model_path, target / "theirs")
        else:
            write_labels(target, corrected, corrected=[()])

    if dask:
        run = batch._compute

        def computing(*args, **kwargs):
            save_meanwhile()
            return run(*args, **kwargs)

        monkeypatch.setattr(batch, "_compute", computing)
    else:
        run = cli_predict._segment_with_bar

        def segmenting(*args, **kwargs):
            save_meanwhile()
            return run(*args, **kwargs)

        monkeypatch.setattr(cli_predict, "_segment_with_bar", segmenting)
    rc = main(["predict", str(folder / "a.tif"), "--out", str(out), "--model", str(tiny_model_path), "--no-progress",
               *(["--dask"] if dask else [])])
    err = capsys.readouterr().err
    assert rc != 0 and "was written by something else while this ran: it is kept" in err
    if dask:
        assert (target / "theirs").read_bytes() == tiny_model_path.read_bytes()
    else:
        assert np.array_equal(tifffile.imread(target), corrected)
        assert '"planes": [\n  []\n ]' in (out / "a_masks.tif.corrected.json").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # (no temporary file left)


def test_a_file_name_that_is_no_utf8_is_printed_and_the_batch_goes_on(tmp_path, dsb_fluo_crop, tiny_model_path,
                                                                       capsys):
    """A Latin-1 name ("café" from an old share) printed in a UTF-8 locale raised UnicodeEncodeError:
    'napari-unet: error: 'utf-8' codec can't encode…', exit 2, the rest of the batch never run."""
    import os

    image, _ = dsb_fluo_crop
    folder = tmp_path / "in"
    folder.mkdir()
    odd = folder / os.fsdecode(b"a_caf\xe9.tif")
    tifffile.imwrite(odd, image[:64, :64])
    tifffile.imwrite(folder / "b.tif", image[:64, :64])
    rc = main(["predict", str(folder), "--out", str(tmp_path / "out"), "--model", str(tiny_model_path),
               "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == [
        b"a_caf\xe9_masks.tif", b"a_caf\xe9_masks.tif.corrected.json", b"b_masks.tif", b"b_masks.tif.corrected.json"]
    assert "b_masks.tif" in captured.out and "a_caf\\udce9_masks.tif" in captured.out


def test_predict_records_the_built_in_model_chosen_and_its_kind(tmp_path, images):
    from napari_unet.core.modality import MODEL_FOR

    out = tmp_path / "out"
    assert main(["predict", str(images / "a.tif"), "--out", str(out), "--no-progress"]) == 0
    ((_, meta, _),) = napari_get_reader(str(out / "a_masks.tif"))(str(out / "a_masks.tif"))
    made = meta["metadata"][MODEL_KEY]
    # (the kind told on the image, and the model proposed for it, as Segment records them)
    assert made["kind"] in MODEL_FOR and made["name"] == MODEL_FOR[made["kind"]] and made["date"]
