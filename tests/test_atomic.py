"""Atomic writes: all or nothing, and files readable like any other file of the user."""

from __future__ import annotations

import os

import pytest

from napari_unet._atomic import atomic_write


def test_replaces_whole_file_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    old = os.umask(0o022)
    try:
        with atomic_write(target, "wb") as fh:
            fh.write(b"new content")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new content"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "labels.json"
    target.write_text("good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, "w") as fh:
            fh.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json"]


def test_several_files_are_all_replaced_or_none(tmp_path):
    from napari_unet._atomic import atomic_write_all

    old, new_file, blocked = tmp_path / "labels.tif", tmp_path / "new.json", tmp_path / "side.json"
    old.write_bytes(b"old labels")
    blocked.mkdir()  # a folder where the last file goes: its rename fails after the others
    with pytest.raises(OSError):
        with atomic_write_all() as files:
            with files.open(old, "wb") as fh:
                fh.write(b"new labels")
            with files.open(new_file, "w") as fh:
                fh.write("a file that did not exist")
            with files.open(blocked, "w") as fh:
                fh.write("cannot go there")
    assert old.read_bytes() == b"old labels"  # put back
    assert not new_file.exists()  # removed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "side.json"]  # no temporary left

    with atomic_write_all() as files:
        with files.open(old, "wb") as fh:
            fh.write(b"new labels")
        with files.open(new_file, "w") as fh:
            fh.write("both")
    assert old.read_bytes() == b"new labels" and new_file.read_text() == "both"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "new.json", "side.json"]


def test_long_names_get_short_temporary_names(tmp_path):
    target = tmp_path / ("y" * 250 + ".tif")  # a legal name; ".<name>.<random>.tmp" would not be
    with atomic_write(target, "wb") as fh:
        fh.write(b"ok")
    assert target.read_bytes() == b"ok"
    wide = tmp_path / ("細胞" * 40 + ".pt")  # 80 characters, 243 bytes: the name limit counts bytes
    with atomic_write(wide, "wb") as fh:
        fh.write(b"ok")
    assert wide.read_bytes() == b"ok"


def test_a_folder_is_replaced_by_renames_the_old_one_back_when_it_fails(tmp_path):
    """An OME-Zarr written beside its destination takes the old one's place by renames (the old
    one was deleted first: a Ctrl+C while a large one was deleted lost the old masks and the new);
    a failure puts the old one back; nothing is left aside."""
    from napari_unet._atomic import replace_folder

    dest, new = tmp_path / "m.ome.zarr", tmp_path / ".m.tmp"
    (dest / "0").mkdir(parents=True)
    (dest / "0" / "old").write_text("old")
    (new / "0").mkdir(parents=True)
    (new / "0" / "new").write_text("new")
    replace_folder(new, dest)
    assert (dest / "0" / "new").is_file() and not (dest / "0" / "old").exists() and not new.exists()
    with pytest.raises(OSError):
        replace_folder(tmp_path / "gone", dest)  # (what the rename of the new one fails with)
    assert (dest / "0" / "new").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.zarr"]
