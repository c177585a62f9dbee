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


@pytest.mark.skipif(os.name == "nt", reason="names are text on Windows")
def test_a_name_of_bytes_that_are_no_utf8_is_written(tmp_path):
    """'Zelle_10\xb5M.tif' (Latin-1, as unzipped from a Windows archive): its temporary name failed to
    encode ("surrogates not allowed"), and predict, train and export could write nothing under it."""
    target = tmp_path / os.fsdecode(b"Zelle_10\xb5M.tif")
    with atomic_write(target, "wb") as fh:
        fh.write(b"ok")
    assert target.read_bytes() == b"ok" and os.listdir(os.fsencode(tmp_path)) == [b"Zelle_10\xb5M.tif"]


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


def test_what_a_killed_save_left_beside_a_file_is_removed_by_the_next_save(tmp_path):
    """A force-quit while a large stack was saved left a hidden whole copy, never removed."""
    import time

    dest = tmp_path / "masks.tif"
    dest.write_bytes(b"old")
    abandoned = tmp_path / ".masks.tif.k1ll3dxx.tmp"
    abandoned.write_bytes(b"x" * 1000)
    aside = tmp_path / ".masks.tif.s3tas1de.old"
    aside.mkdir()
    recent = tmp_path / ".masks.tif.wr1t1ngx.tmp"  # another save going on now: left alone
    recent.write_bytes(b"y")
    writing = tmp_path / ".masks.tif.z4rrw1th.tmp"  # an OME-Zarr being written: its chunks change, not it
    (writing / "0" / "0").mkdir(parents=True)
    (writing / "0" / "0" / "0").write_bytes(b"chunk")
    other = tmp_path / ".other.tif.k1ll3dxx.tmp"  # another file's
    other.write_bytes(b"z")
    hour_ago = time.time() - 3600
    for p in (abandoned, aside, other, writing, writing / "0"):
        os.utime(p, (hour_ago, hour_ago))
    with atomic_write(dest, "wb") as fh:
        fh.write(b"new")
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["masks.tif", recent.name, writing.name, other.name])
    # where the destination is missing, what lies beside it may be the only copy: kept
    gone = tmp_path / "gone.tif"
    kept = tmp_path / ".gone.tif.k1ll3dxx.old"
    kept.mkdir()
    os.utime(kept, (hour_ago, hour_ago))
    written = tmp_path / ".gone.tif.k1ll3dxy.tmp"  # a first save killed while writing: a copy never put in place
    written.write_bytes(b"x" * 1000)
    os.utime(written, (hour_ago, hour_ago))
    with atomic_write(gone, "wb") as fh:
        fh.write(b"new")
    assert kept.is_dir()
    assert not written.exists()  # (removed once the new file is in place: the rerun left it for good)

    # the same for an OME-Zarr written as a folder (predict --dask killed: its rerun left the copy)
    from napari_unet._atomic import atomic_folder

    zarr_left = tmp_path / ".new.ome.zarr.k1ll3dxz.tmp"
    (zarr_left / "0").mkdir(parents=True)
    for p in (zarr_left, zarr_left / "0"):
        os.utime(p, (hour_ago, hour_ago))
    with atomic_folder(tmp_path / "new.ome.zarr") as folder:
        (folder / ".zattrs").write_text("{}")
    assert (tmp_path / "new.ome.zarr" / ".zattrs").exists() and not zarr_left.exists()


def test_a_link_is_written_through_and_a_files_permissions_are_kept(tmp_path):
    """Saved over a symbolic link, the link became a plain file (its target unchanged); a file
    shared 0640 became 0644."""
    real = tmp_path / "real"
    real.mkdir()
    target = real / "masks.tif"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "masks.tif"
    link.symlink_to(target)
    with atomic_write(link, "wb") as fh:
        fh.write(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert (target.stat().st_mode & 0o777) == 0o640


def test_one_line_of_an_os_error_names_the_destination_without_errno():
    """The CLI's and the widgets' one line: "[Errno 21] Is a directory: '.x.tmp' -> 'x'" named the
    hidden temporary file of a rename; now its destination."""
    import errno

    from napari_unet._errors import one_line

    rename = IsADirectoryError(errno.EISDIR, "Is a directory", "/d/.x.json.abcd1234.tmp", None, "/d/x.json")
    assert one_line(rename) == "/d/x.json: Is a directory"
    assert one_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "a.tif")) == \
        "a.tif: No such file or directory"
    assert one_line(OSError(errno.ENOSPC, "not enough free space in /d")) == "not enough free space in /d"
    assert one_line(ValueError("first\nsecond")) == "first" and one_line(RuntimeError()) == "RuntimeError"


def test_a_file_held_open_on_windows_is_tried_again_then_said_plainly(tmp_path, monkeypatch):
    """Windows refuses to rename onto a file another program holds open (OneDrive or a virus scanner for
    a moment; napari itself for a layer read lazily): a few tries, then one plain line, not
    "[WinError 32] ... being used by another process"; the old file is kept either way."""
    import os

    from napari_unet import _atomic

    monkeypatch.setattr(_atomic, "_WINDOWS", True)
    monkeypatch.setattr(_atomic, "BUSY_RETRY_SECONDS", 0.3)
    real = os.replace
    refusals = []

    def held_open(src, dst):
        if len(refusals) < limit[0]:
            refusals.append(dst)
            error = PermissionError(13, "The process cannot access the file because it is being used by another process",
                                    str(dst))
            error.winerror = 32
            raise error
        real(src, dst)

    monkeypatch.setattr(os, "replace", held_open)
    dest = tmp_path / "masks.tif"
    dest.write_bytes(b"old")
    limit = [2]  # held a moment: written on the third try
    with atomic_write(dest, "wb") as fh:
        fh.write(b"new")
    assert dest.read_bytes() == b"new" and len(refusals) == 2
    limit, refusals[:] = [1000], []  # held for good
    with pytest.raises(PermissionError, match="masks.tif is open in another program"):
        with atomic_write(dest, "wb") as fh:
            fh.write(b"newer")
    assert dest.read_bytes() == b"new" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    limit, refusals[:] = [1], []  # not Windows: no second try
    monkeypatch.setattr(_atomic, "_WINDOWS", False)
    with pytest.raises(PermissionError, match="being used"):
        with atomic_write(dest, "wb") as fh:
            fh.write(b"newer")
