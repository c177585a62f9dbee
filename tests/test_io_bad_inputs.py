"""Bad inputs give one clear message (a notification in napari), no exception, nothing overwritten."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.io import LabelsWriteError, StackReadError, read_stack, write_labels

PLUGIN = "napari-unet"


@pytest.fixture
def errors():
    """Error notifications shown by napari during the test."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    def messages() -> list[str]:
        return [str(n.message) for n in notification_manager.records[start:]]

    return messages


def _open_in_napari(viewer, path):
    layers = viewer.open(path, plugin=PLUGIN)  # must not raise
    assert layers == [] and len(viewer.layers) == 0
    return layers


def _truncated_tiff(path):
    data = np.random.default_rng(0).integers(0, 60000, (6, 64, 64), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _bad_files(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.tif"
    _truncated_tiff(truncated)
    text = tmp_path / "notes.tif"
    text.write_text("these are my notes, not an image\n" * 10)
    six_d = tmp_path / "six_d.tif"
    tifffile.imwrite(six_d, np.zeros((2, 2, 2, 2, 8, 8), np.uint8))
    return {
        empty: "empty",
        truncated: "truncated",
        text: "not a TIFF",
        six_d: "6-dimensional",
    }


def test_bad_files_raise_a_clear_value_error(tmp_path):
    for path, words in _bad_files(tmp_path).items():
        with pytest.raises(StackReadError, match=words) as exc:
            read_stack(path, lazy=False)
        assert isinstance(exc.value, ValueError) and path.name in str(exc.value)
        assert "\n" not in str(exc.value)


def test_a_damaged_tiff_in_the_command_line_is_one_line(tmp_path):
    """tifffile's own log records (object reprs and all) came before the CLI's one line."""
    import subprocess
    import sys

    truncated = tmp_path / "truncated.tif"
    _truncated_tiff(truncated)
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict", str(truncated), "--out",
                             str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, lines  # the file's line, then the batch's
    assert "truncated" in lines[0] and "tifffile" not in result.stderr


def test_bad_files_in_napari_notify_and_open_nothing(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    for path, words in _bad_files(tmp_path).items():
        _open_in_napari(viewer, path)
        assert any(words in m and path.name in m for m in errors()), (path.name, errors())


def test_zero_sized_axis(make_napari_viewer, tmp_path, errors):
    import zarr

    path = tmp_path / "empty_axis.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(0, 16, 16), dtype="u2", chunks=(1, 16, 16))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "zyx"],
                                  "datasets": [{"path": "0"}]}]
    with pytest.raises(StackReadError, match="empty axis"):
        read_stack(path)
    viewer = make_napari_viewer()
    _open_in_napari(viewer, path)
    assert any("empty axis" in m for m in errors())


def test_folder_with_mismatched_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "a1.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(folder / "a2.png")
    with pytest.raises(StackReadError, match="same size"):
        read_stack(folder)


def test_wrong_axes_override_is_a_clear_error(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="3 dimensions"):
        read_stack(path, axes="TZYX")
    with pytest.raises(ValueError, match="more than once"):
        read_stack(path, axes="YYX")


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.array([[0, 1], [-1, 2]], np.int32), "negative"),
        (np.array([[0.0, 1.5], [2.0, 3.0]], np.float32), "integers"),
        (np.zeros((0, 4, 4), np.uint16), "empty axis"),
        (np.zeros((2, 2, 2, 2, 4, 4), np.uint16), "6 dimensions"),
        (np.zeros(5, np.uint16), "at least 2"),
    ],
)
def test_writer_rejects_bad_labels_and_keeps_existing_file(tmp_path, labels, words):
    path = write_labels(tmp_path / "masks.tif", np.ones((4, 4), np.uint16))
    before = path.read_bytes()
    with pytest.raises(LabelsWriteError, match=words):
        write_labels(path, labels)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["masks.tif"]


def test_a_folder_that_is_a_file_is_said_so(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LabelsWriteError, match="is a file, not a folder"):  # (it said "does not exist")
        write_labels(tmp_path / "afile" / "x.tif", np.ones((4, 4), np.uint16))
    with pytest.raises(LabelsWriteError, match="does not exist"):
        write_labels(tmp_path / "none" / "x.tif", np.ones((4, 4), np.uint16))


def test_napari_writer_notifies_and_keeps_existing_file(make_napari_viewer, tmp_path, errors):
    path = write_labels(tmp_path / "masks.tif", np.ones((4, 4), np.uint16))
    before = path.read_bytes()
    viewer = make_napari_viewer()
    viewer.add_labels(np.array([[0, 1], [-3, 2]], np.int32), name="bad")
    with pytest.warns(UserWarning, match="did not return any written paths"):
        written = viewer.layers.save(str(path), plugin=PLUGIN)
    assert written == []
    assert any("negative" in m and "masks.tif" in m for m in errors())
    assert path.read_bytes() == before


def test_a_file_of_complex_numbers_is_refused_when_opened(tmp_path):
    """A complex TIFF passed the readers and ended ``train`` and ``gui`` with a traceback."""
    import tifffile

    from napari_unet.io import inspect_stack
    from napari_unet.io._formats import StackReadError

    path = tmp_path / "fft.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.complex64))
    with pytest.raises(StackReadError, match="complex64 values"):
        inspect_stack(path)
