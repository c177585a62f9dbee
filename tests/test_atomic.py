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
