"""``napari-unet train`` and ``napari-unet models`` end to end on a real DSB2018 crop."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.checkpoint import read_model_file


def _write_pair(folder, image, labels, stem="crop"):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "images" / f"{stem}.tif", image)
    tifffile.imwrite(folder / "labels" / f"{stem}.tif", labels.astype(np.uint16))
    return folder / "images" / f"{stem}.tif", folder / "labels" / f"{stem}.tif"


def test_train_files_to_path_and_models_lists_it(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    out = tmp_path / "out" / "mine.pt"
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(out),
               "--from", str(tiny_model_path), "--steps", "3", "--patch-size", "32", "--batch-size", "2",
               "--device", "cpu", "--no-progress", "--labelled", "some"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "validation AP@0.5" in captured.out and "saved" in captured.out
    model = read_model_file(out)
    assert model.metadata["steps"] == 3 and model.metadata["base_model"] == "tiny"
    # "some": learnt from the labelled cells and their surroundings only, and recorded
    assert model.metadata["training"]["labelled"] == "some" and model.metadata["training"]["partial_examples"] == [1]
    assert model.metadata["name"] == "mine"
    # how the weights were chosen is said, not hidden (few nuclei in the held-out band of this crop)
    note = model.metadata["training"]["selection_note"]
    assert (f"note: {note}" in captured.out) if note else ("note:" not in captured.out)


def test_train_stack_and_folders_to_user_model(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    # a 2-plane stack: each plane is one example
    stack_img, stack_lab = tmp_path / "stack.tif", tmp_path / "stack_labels.tif"
    tifffile.imwrite(stack_img, np.stack([image, image[::-1]]))
    tifffile.imwrite(stack_lab, np.stack([labels, labels[::-1]]).astype(np.uint16))
    # folders with matching stems
    _write_pair(tmp_path / "f", image[:96], labels[:96], stem="a")
    _write_pair(tmp_path / "f", image[:, :100], labels[:, :100], stem="b")
    rc = main(["train", "--images", str(stack_img), str(tmp_path / "f" / "images"),
               "--labels", str(stack_lab), str(tmp_path / "f" / "labels"), "--out", "my cells",
               "--from", str(tiny_model_path), "--steps", "2", "--patch-size", "32", "--batch-size", "1",
               "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "on 4 example(s)" in out.out
    rc = main(["models"])
    listing = capsys.readouterr().out
    assert rc == 0 and "my cells" in listing and "user" in listing
    # its AP is of a few cells held out of the images it learnt: said, beside the built-in models' own
    mine = next(line for line in listing.splitlines() if line.startswith("my cells"))
    nuclei = next(line for line in listing.splitlines() if line.startswith("nuclei "))
    assert "of its training images" in mine and "of its training images" not in nuclei and " objects " in nuclei
    # the model it was fine-tuned from and the day it was trained (two "my cells" told apart)
    import datetime

    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert " tiny " in mine and f" {today} " in mine and " - " in nuclei


def test_train_user_errors_are_one_line(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    base = ["--from", str(tiny_model_path), "--steps", "1", "--no-progress"]
    rc = main(["train", "--images", str(img), str(img), "--labels", str(lab), "--out", str(tmp_path / "x.pt"), *base])
    err = capsys.readouterr().err
    assert rc == 2 and "one labels path per image path" in err and "Traceback" not in err
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros_like(labels, dtype=np.uint16))
    rc = main(["train", "--images", str(img), "--labels", str(empty), "--out", str(tmp_path / "x.pt"), *base])
    err = capsys.readouterr().err
    assert rc == 2 and "Nothing to learn from" in err
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, labels[:50].astype(np.uint16))
    rc = main(["train", "--images", str(img), "--labels", str(small), "--out", str(tmp_path / "x.pt"), *base])
    assert rc == 2 and "labels" in capsys.readouterr().err
    rc = main(["train", "--images", str(tmp_path / "nope.tif"), "--labels", str(lab), "--out", "x", *base])
    assert rc == 2 and "not found" in capsys.readouterr().err
    # the same image twice (here once by a path of its own, once in its folder): copies would be held
    # out to validate the model on what it trained on
    rc = main(["train", "--images", str(img), str(img.parent), "--labels", str(lab), str(lab.parent),
               "--out", str(tmp_path / "x.pt"), *base])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "given twice" in err and len(err.splitlines()) == 1, err
    infinite = tmp_path / "inf.tif"
    tifffile.imwrite(infinite, np.where(labels == labels.max(), np.inf, image).astype(np.float32))
    rc = main(["train", "--images", str(infinite), "--labels", str(lab), "--out", str(tmp_path / "x.pt"), *base])
    err = capsys.readouterr().err.strip()  # (numpy's warnings came first, then "before segmenting")
    assert rc == 2 and err == ("napari-unet: error: The image holds infinite values in inf.tif; replace them "
                               "(e.g. with NaN for pixels without data) before training."), err
    (tmp_path / "afile").write_bytes(b"")  # a file in the way of the folder of --out ("File exists")
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(tmp_path / "afile" / "x.pt"), *base])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in err and "Errno" not in err, err
    for option, value in (("--val-fraction", "-0.5"), ("--val-fraction", "1"), ("--patch-size", "3"),
                          ("--batch-size", "0")):
        rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(tmp_path / "x.pt"), *base,
                   option, value])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and option in err and len(err.splitlines()) == 1, (option, value, err)
    assert not (tmp_path / "x.pt").exists()


def test_two_labels_files_for_one_image_in_a_folder_stop_train_with_one_line(tmp_path, dsb_fluo_crop,
                                                                                tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    folder = tmp_path / "both"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    for name in ("a_masks.tif", "a_labels.tif"):
        tifffile.imwrite(folder / name, labels.astype(np.uint16))
    out = tmp_path / "x.pt"
    rc = main(["train", "--images", str(folder), "--labels", str(folder), "--out", str(out),
               "--from", str(tiny_model_path), "--steps", "1", "--patch-size", "32", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "a.tif has 2 labels files" in err, err
    assert not out.exists()


# ---------------------------------------------------------------------- issue #17
def test_an_image_given_as_labels_is_refused(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    img, _lab = _write_pair(tmp_path, image, labels)
    out = tmp_path / "x.pt"
    rc = main(["train", "--images", str(img), "--labels", str(img), "--out", str(out),
               "--from", str(tiny_model_path), "--steps", "1", "--patch-size", "32", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "crop.tif looks like an intensity image" in err, err
    assert not out.exists()


def test_out_paths_get_pt_and_folders_are_refused(tmp_path, dsb_fluo_crop, tiny_model_path, capsys,
                                                   monkeypatch):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    base = ["train", "--images", str(img), "--labels", str(lab), "--from", str(tiny_model_path),
            "--steps", "1", "--patch-size", "32", "--batch-size", "1", "--no-progress"]
    (tmp_path / "foo").mkdir()
    for out in ("foo/", str(tmp_path / "foo"), "new/"):
        monkeypatch.chdir(tmp_path)
        rc = main([*base, "--out", out])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "is a folder" in err and ".pt" in err, err
    assert list((tmp_path / "foo").iterdir()) == [] and not (tmp_path / "new").exists()
    monkeypatch.chdir(tmp_path / "foo")
    rc = main([*base, "--out", "../x"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (tmp_path / "x.pt").is_file() and not (tmp_path / "x").exists()
    assert read_model_file(tmp_path / "x.pt").metadata["name"] == "x"
    rc = main([*base, "--out", "../Y.PT"])  # an upper-case suffix is a model file all the same
    assert rc == 0 and (tmp_path / "Y.PT").is_file() and not (tmp_path / "Y.PT.pt").exists()


def test_a_model_folder_that_cannot_be_written_is_refused_before_training(tmp_path, dsb_fluo_crop,
                                                                          tiny_model_path, capsys, monkeypatch):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path / "a-file" / "models"))
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--from", str(tiny_model_path),
               "--steps", "1", "--patch-size", "32", "--batch-size", "1", "--no-progress", "--out", "mine"])
    captured = capsys.readouterr()
    assert rc == 2 and "cannot be written" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "fine-tuning" not in captured.out  # refused before reading the examples or training
    # a path of the user's own: said so, without the model folder's advice; and a negative seed
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--from", str(tiny_model_path), "--steps", "1",
               "--no-progress", "--out", str(tmp_path / "a-file" / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "its folder cannot be written" in err and "NAPARI_UNET_MODELS" not in err
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--seed", "-1", "--out", "x", "--no-progress"])
    assert rc == 2 and "--seed must be 0 or more, got -1" in capsys.readouterr().err


def test_time_budget_must_be_a_finite_positive_number(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    for budget, shown in (("nan", "nan"), ("inf", "inf"), ("-1", "-1.0")):
        rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(tmp_path / "x.pt"),
                   "--from", str(tiny_model_path), "--time-budget", budget, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert err == f"napari-unet: error: --time-budget must be a positive number of seconds, got {shown}"
    assert not (tmp_path / "x.pt").exists()


def test_train_takes_ome_zarr_stacks(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    """An OME-Zarr folder is one stack (images and labels), not a folder of files to pair."""
    import zarr

    image, labels = dsb_fluo_crop
    grey = image if image.ndim == 2 else image[..., 0]
    for name, data in (("img.ome.zarr", grey[None]), ("lab.ome.zarr", labels[None].astype(np.uint16))):
        root = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2)
        root.create_array("0", data=data)
        root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "z", "type": "space"},
                                                                  {"name": "y", "type": "space"},
                                                                  {"name": "x", "type": "space"}],
                                      "datasets": [{"path": "0", "coordinateTransformations": [
                                          {"type": "scale", "scale": [1, 1, 1]}]}]}]
    rc = main(["train", "--images", str(tmp_path / "img.ome.zarr"), "--labels", str(tmp_path / "lab.ome.zarr"),
               "--out", str(tmp_path / "z.pt"), "--from", str(tiny_model_path), "--steps", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "z.pt").is_file()


def test_a_time_budget_too_short_for_one_step_saves_nothing(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--from", str(tiny_model_path),
               "--time-budget", "1e-9", "--patch-size", "32", "--batch-size", "1", "--no-progress",
               "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and "nothing was learnt" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()


def test_a_stack_of_three_planes_without_axes_trains_as_three_examples(tmp_path, dsb_fluo_crop, tiny_model_path,
                                                                       capsys):
    image, labels = dsb_fluo_crop
    tifffile.imwrite(tmp_path / "st3.tif", np.stack([image] * 3))  # no axes: 3 planes look like channels
    tifffile.imwrite(tmp_path / "st3_lab.tif", np.stack([labels.astype(np.uint16)] * 3))
    rc = main(["train", "--images", str(tmp_path / "st3.tif"), "--labels", str(tmp_path / "st3_lab.tif"),
               "--from", str(tiny_model_path), "--steps", "1", "--patch-size", "32", "--batch-size", "1",
               "--no-progress", "--out", str(tmp_path / "m.pt")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "on 3 example(s)" in captured.out


def test_a_model_saved_under_that_name_during_training_is_kept(tmp_path, dsb_fluo_crop, tiny_model_path):
    """--out was free when the run started; something else (Fine-tune in the GUI, another run)
    saved a model there meanwhile: neither model is lost."""
    import os
    import subprocess
    import sys

    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    out = tmp_path / "mine.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", "train", "--images", str(img), "--labels", str(lab),
         "--out", str(out), "--from", str(tiny_model_path), "--steps", "40", "--patch-size", "32",
         "--batch-size", "2", "--device", "cpu", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # training has begun: the name was checked and found free
        if line.startswith("fine-tuning"):
            break
    out.write_bytes(tiny_model_path.read_bytes())  # the other model, saved meanwhile
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.read_bytes() == tiny_model_path.read_bytes()  # the other model is intact
    assert "mine.pt was saved by something else during training" in err and "mine-2.pt" in err
    assert read_model_file(tmp_path / "mine-2.pt").metadata["name"] == "mine-2"


def test_a_run_whose_loss_diverges_stops_with_one_line_and_saves_nothing(tmp_path, dsb_fluo_crop, tiny_model_path,
                                                                         capsys):
    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    out = tmp_path / "out" / "diverged.pt"
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(out), "--from",
               str(tiny_model_path), "--steps", "10", "--lr", "1e12", "--patch-size", "32", "--batch-size", "2",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("napari-unet: error: ") and "lower learning rate" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_without_from_the_built_in_model_that_fits_the_images_is_the_base(tmp_path, data_dir, dsb_fluo_crop,
                                                                           capsys):
    """No --from: phase contrast (C2C12, CC-BY 4.0) starts from 'cells', fluorescence from
    'nuclei-fluo', as predict and Segment choose them (from 'nuclei', phase contrast fine-tuned to
    AP@0.5 0.33 against 0.56 from 'cells')."""
    frame = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif", key=0)
    truth = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif", key=0)
    cases = {"phase": ((frame, truth), "cells", "phase-contrast / DIC image"),
             "fluo": (dsb_fluo_crop, "nuclei-fluo", "fluorescence image")}
    for stem, ((image, labels), base, words) in cases.items():
        img, lab = _write_pair(tmp_path / stem, image, labels, stem)
        out = tmp_path / "out" / f"{stem}.pt"
        rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(out), "--steps", "1",
                   "--batch-size", "2", "--device", "cpu", "--no-progress", "--val-fraction", "0"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert f"fine-tuning '{base}' (the built-in model for this {words})" in captured.out
        assert read_model_file(out).metadata["base_model"] == base


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_training_saves_the_best_model_so_far(tmp_path, dsb_fluo_crop, tiny_model_path, capsys,
                                                             monkeypatch, signum):
    """Ctrl+C (or a SIGTERM from a job scheduler) in the middle of a run: it stops after its step and
    the best model so far is saved, as Stop does in the GUI (it exited 130 with nothing saved); it exits
    130 still, as predict does (it exited 0: a job's `train && predict` went on as after a full run)."""
    import os
    import signal

    from napari_unet.cli import _progress

    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    sent = []
    shown = _progress.TrainingBar.__call__

    def interrupt_at_step_3(self, event):
        shown(self, event)
        if getattr(event, "step", 0) >= 3 and not sent:
            sent.append(True)
            os.kill(os.getpid(), getattr(signal, signum))  # as the terminal does on Ctrl+C

    monkeypatch.setattr(_progress.TrainingBar, "__call__", interrupt_at_step_3)
    out = tmp_path / "stopped.pt"
    rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(out), "--from", str(tiny_model_path),
               "--steps", "500", "--patch-size", "32", "--batch-size", "2", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 130 and sent, captured.err
    saved = read_model_file(out).metadata
    assert 3 <= saved["steps"] < 500
    if signum == "SIGINT":  # (no trained weights validated yet: validated once, then the best kept)
        assert "the best model so far is saved" in captured.err
        assert not saved["training"].get("unvalidated")
    else:  # a scheduler's SIGTERM, whose kill follows in seconds: that validation took 16-44 s on a large set,
        # and the job was killed before it saved; the latest weights are saved as they are, said unvalidated
        assert "the latest weights are saved, not validated" in captured.err
        assert saved["training"]["unvalidated"] and saved["training"]["selected_step"] == saved["steps"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_ctrl_c_while_torch_is_imported_is_one_line(tmp_path, monkeypatch, capsys):
    """``train``'s first second (torch imported for its memory setting, before the command's own
    handling): a Ctrl+C printed a traceback and the process died by the signal."""
    import sys

    from napari_unet.core import device

    def pressed() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(device, "keep_freed_memory", pressed)
    monkeypatch.setattr(sys, "argv", ["napari-unet", "train", "--images", str(tmp_path), "--labels", str(tmp_path),
                                      "--out", str(tmp_path / "m.pt")])
    assert main() == 130 and capsys.readouterr().err.strip() == "napari-unet: interrupted"


def test_a_full_disk_at_saving_is_one_line_and_leaves_no_file(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    """torch's zip writer turned the full disk into a RuntimeError: a traceback (the model is
    serialised in memory now, and the disk's own OSError says what happened)."""
    import subprocess

    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root, or no privilege)")
    try:
        image, labels = dsb_fluo_crop
        img, lab = _write_pair(tmp_path, image, labels)
        rc = main(["train", "--images", str(img), "--labels", str(lab), "--out", str(full / "x.pt"),
                   "--from", str(tiny_model_path), "--steps", "1", "--patch-size", "32", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and len(err.splitlines()) == 1 and "could not be saved" in err and "No space" in err
        assert list(full.iterdir()) == []
        # the trained model is not thrown away: saved in the user's model folder, and said where
        from napari_unet.core.catalog import user_models_dir

        assert f"it was saved to {user_models_dir() / 'x.pt'} instead" in err
        assert read_model_file(user_models_dir() / "x.pt").metadata["steps"] == 1
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_built_in_models_name_cannot_be_taken_by_a_path_or_in_capitals(tmp_path, dsb_fluo_crop, tiny_model_path,
                                                                         capsys):
    from napari_unet.core.catalog import builtin_models_dir, user_models_dir

    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    base = ["train", "--images", str(img), "--labels", str(lab), "--from", str(tiny_model_path), "--steps", "1",
            "--patch-size", "32", "--no-progress", "--overwrite"]
    for out in (str(user_models_dir() / "cells.pt"), "NUCLEI", str(builtin_models_dir() / "mine.pt")):
        assert main([*base, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("built-in model" in err), err
    assert not (user_models_dir() / "cells.pt").exists() and not (builtin_models_dir() / "mine.pt").exists()


def test_masks_of_3d_objects_train_as_sections(tmp_path, dsb_fluo_crop, tiny_model_path, capsys):
    """Masks of 3D objects saved from napari (the list beside them says so): their planes cut the objects
    above and below their widest, and the model keeps its base's start for the automatic diameter."""
    from napari_unet.io import write_labels

    image, labels = dsb_fluo_crop
    img = tmp_path / "stack.tif"
    tifffile.imwrite(img, np.stack([image, image]))
    write_labels(tmp_path / "stack_masks.tif", np.stack([labels, labels]), corrected=[(0,), (1,)], objects_3d=True)
    rc = main(["train", "--images", str(img), "--labels", str(tmp_path / "stack_masks.tif"), "--out",
               str(tmp_path / "cut.pt"), "--from", str(tiny_model_path), "--steps", "2", "--patch-size", "32",
               "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert read_model_file(tmp_path / "cut.pt").metadata["training"]["sections"] is True


def test_masks_of_an_ome_tiff_with_z_before_t_pair_plane_by_plane(tmp_path):
    """An OME-TIFF of axes ZTYX (time varying fastest) and its masks as Save masks and predict write
    them (ImageJ's order, TZYX): each image plane is paired with its own labels, not another's."""
    from napari_unet.cli.train import read_examples
    from napari_unet.io import write_labels

    image = np.zeros((2, 3, 64, 64), np.uint8)
    labels = np.zeros(image.shape, np.uint16)
    for k, (z, t) in enumerate(np.ndindex(2, 3)):
        image[z, t, 7 * k : 7 * k + 6, 10:20] = 200
        labels[z, t, 7 * k : 7 * k + 6, 10:20] = 1
    tifffile.imwrite(tmp_path / "img.ome.tif", image, metadata={"axes": "ZTYX"})
    write_labels(tmp_path / "img_masks.tif", labels, axes="ZTYX", corrected=[])
    images, masks, _colours = read_examples([str(tmp_path / "img.ome.tif")], [str(tmp_path / "img_masks.tif")])
    assert len(images) == 6 and all(np.array_equal(a > 0, b > 0) for a, b in zip(images, masks, strict=True))


def test_output_to_a_reader_that_stopped_does_not_stop_the_command():
    """``napari-unet train ... | head -1``: once the reader stops, what the command prints goes
    nowhere and it goes on (training was aborted with exit 0 and no model saved)."""
    import os

    from napari_unet.cli import _StopTolerantStream

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has stopped
    with os.fdopen(write_end, "w") as pipe:
        out = _StopTolerantStream(pipe)
        for _ in range(3):
            out.write("saved model.pt (30 steps)\n" * 1000)
            out.flush()
        assert out.writable()


@pytest.mark.parametrize("option, value, message", [("--lr", "1e308", "--lr must be a positive number below 1e38"),
                                                    ("--batch-size", "100000", "--batch-size must be from 1 to 64")])
def test_values_beyond_reason_are_refused_before_any_work(tmp_path, capsys, option, value, message):
    """--lr 1e308 ended with the optimiser's traceback; --batch-size 100000 was killed for memory."""
    from napari_unet.cli import main

    rc = main(["train", "--images", str(tmp_path), "--labels", str(tmp_path), "--out", str(tmp_path / "m.pt"),
               option, value])
    assert rc == 2 and message in capsys.readouterr().err


def test_gui_screenshot_into_a_missing_folder_is_one_line(tmp_path, capsys):
    """``gui --screenshot nodir/shot.png`` printed a long traceback from inside napari's event loop,
    and napari never quit."""
    from napari_unet.cli import main

    rc = main(["gui", "--sample", "none", "--screenshot", str(tmp_path / "nodir" / "shot.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "folder does not exist" in err and len(err.strip().splitlines()) == 1


def test_the_summary_says_how_to_keep_trained_weights_the_gate_held_back():
    """The gate (core.validation) kept the base's weights: the CLI user has no Fine-tune status, only
    these lines; they say why, and which option keeps the trained weights."""
    from napari_unet.cli.train import summary_lines

    history = [{"step": 0, "ap50": 0.82, "loss": 0.366}, {"step": 30, "ap50": 0.88, "loss": 0.358}]
    note = ("no clear gain over cells on the held-out part: no step lowered its validation loss by more than the "
            "noise (2 standard errors over 51 blocks; closest: step 30, +0.0080 +/- 0.0053), so the starting "
            "weights were kept")
    meta = {"val_ap50": 0.82, "val_dice": 0.9, "steps": 300,
            "training": {"selected_step": 0, "history": history, "selection_note": note, "selection_gate": True}}
    lines = summary_lines(meta, 0.2)
    assert lines[0] == "validation AP@0.5 0.820 (Dice 0.900) at step 0 of 300; before training 0.820"
    assert lines[1] == f"note: {note}" and lines[2].startswith("note: to keep trained weights anyway, train again with --val-fraction 0")
    meta["training"].update(selected_step=30, selection_note=None)  # the gate passed a step: nothing to add
    assert summary_lines(meta, 0.2) == [lines[0].replace("at step 0", "at step 30")]
    # stopped (a scheduler's SIGTERM) before the trained weights were validated: not "too few objects"
    stopped = {"val_ap50": None, "steps": 40, "training": {"history": history[:1], "n_val_objects": 9}}
    assert summary_lines(stopped, 0.2)[0].startswith("the trained weights were not validated (stopped")
    few = {"val_ap50": None, "steps": 40, "training": {"history": [], "n_val_objects": 0}}
    assert summary_lines(few, 0.2)[0].startswith("no validation: too few labelled objects")


def test_new_networks_train_from_scratch_and_record_their_object_size(tmp_path, dsb_fluo_crop, capsys):
    """``--new paper`` trains the paper's network (a user's way to it), ``--new unet`` the built-in models' one:
    from scratch (class weights capped at 10, all labelled), and each records the object size it learnt at,
    so that a typed or automatic diameter then applies (it did not: "records no object size")."""
    from napari_unet.core.calibrate import training_diameter
    from napari_unet.core.checkpoint import NEW_NETWORKS
    from napari_unet.core.model import UNet, count_parameters

    image, labels = dsb_fluo_crop
    img, lab = _write_pair(tmp_path, image, labels)
    for network, patch in (("paper", "188"), ("unet", "32")):
        out = tmp_path / f"{network}.pt"
        rc = main(["train", "--new", network, "--images", str(img), "--labels", str(lab), "--out", str(out),
                   "--steps", "1", "--patch-size", patch, "--batch-size", "1", "--val-fraction", "0",
                   "--device", "cpu", "--no-progress"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert f"training a new {network!r} network from scratch on 1 example(s)" in captured.out
        model = read_model_file(out)
        assert model.metadata["name"] == network and model.metadata.get("base_model") is None
        assert model.metadata["training"]["class_weight_cap"] == 10 and model.metadata["training"]["labelled"] == "all"
        assert model.diameter == pytest.approx(training_diameter([labels]), abs=0.01)
        if network == "paper":
            assert model.net.config == UNet.paper().config and model.representation == "foreground"
            assert count_parameters(model.net) == 31_030_658
        else:
            assert model.net.config.padding == "same" and count_parameters(model.net) == 482_483
        rc = main(["predict", str(img), "--model", str(out), "--out", str(tmp_path / network), "--diameter", "14"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert "not used" not in captured.out + captured.err and (tmp_path / network / "crop_masks.tif").exists()
    assert set(NEW_NETWORKS) == {"unet", "paper"}  # (the CLI's choices)
    # the same seed, the same starting weights (torch's own generator left as it was)
    import torch

    from napari_unet.core.checkpoint import untrained_model

    state = torch.random.get_rng_state()
    a, b = untrained_model("unet", seed=3).net.state_dict(), untrained_model("unet", seed=3).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(state, torch.random.get_rng_state())
    assert not torch.equal(untrained_model("unet", seed=4).net.state_dict()["head.weight"], a["head.weight"])
    with pytest.raises(SystemExit):
        main(["train", "--new", "paper", "--from", "nuclei", "--images", str(img), "--labels", str(lab),
              "--out", str(tmp_path / "x.pt")])
    assert "not allowed with argument" in capsys.readouterr().err
