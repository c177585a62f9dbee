"""Shared fixtures: every test gets its own (empty) user model, settings and cache folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NAPARI_UNET_DEVICE", "cpu")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # CI: a fresh clone with shared/ beside it
    DATA = Path(os.environ.get("NAPARI_UNET_DATA", "../shared/data")).resolve()


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path_factory, monkeypatch):
    """Point the user's model, settings and cache folders at fresh temporary folders."""
    root = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(root / "models"))
    monkeypatch.setenv("NAPARI_UNET_CONFIG_DIR", str(root / "config"))
    monkeypatch.setenv("NAPARI_UNET_CACHE_DIR", str(root / "cache"))
    # (a developer's shell choosing the engine or trusting package code must not change what tests see)
    monkeypatch.delenv("NAPARI_UNET_ENGINE", raising=False)
    monkeypatch.delenv("NAPARI_UNET_TRUST_PACKAGE_CODE", raising=False)
    yield


@pytest.fixture(autouse=True)
def _no_heap_freeze(request, monkeypatch):
    """No garbage-collector freeze (``widgets/_heap.py``) outside tests/test_heap.py: one test's
    widget warm-up would freeze the heap in the middle of whichever test runs then."""
    import gc

    try:
        from napari_unet.widgets import _heap
    except ImportError:  # napari absent (the core's tests on a GPU machine: tests/test_gpu.py)
        yield
        return
    if request.node.path.name != "test_heap.py":
        monkeypatch.setattr(_heap, "enabled", False)
    yield
    gc.unfreeze()


@pytest.fixture
def notifications():
    """The messages of the napari notifications shown during the test, in order."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def _record(event):
        notification = getattr(event, "notification", event)  # an event or the Notification itself
        seen.append(str(getattr(notification, "message", notification)))

    notification_manager.notification_ready.connect(_record)
    yield seen
    notification_manager.notification_ready.disconnect(_record)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared microscopy data (../shared/data), skipped where it is absent."""
    if not DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return DATA


@pytest.fixture(scope="session")
def dsb_fluo_crop(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """A real DSB2018 fluorescence image crop (CC0) and its instance labels."""
    import csv

    from skimage.io import imread

    with open(data_dir / "dsb2018" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["kind"] == "grey_dark"]
    row = rows[0]
    image = imread(data_dir / "dsb2018" / "images" / f"{row['id']}.png")
    labels = imread(data_dir / "dsb2018" / "labels" / f"{row['id']}.png")
    if image.ndim == 3:
        image = image[..., :3].mean(-1).astype(np.uint8)
    return image[:128, :128], labels[:128, :128].astype(np.int32)


@pytest.fixture
def tiny_model_path(tmp_path) -> Path:
    """A small untrained 3-class model saved as a real model file."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel, save_model
    from napari_unet.core.model import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch").eval()
    model = SegmentationModel(net, "bg-interior-boundary", metadata={"name": "tiny"})
    return save_model(model, tmp_path / "tiny.pt")


class CanvasMouse:
    """Real Qt mouse and key events on a shown viewer's canvas, at data pixels of the plane shown
    (layers at scale 1, no rotation): what a user's hand does, through vispy and napari."""

    def __init__(self, viewer, qtbot) -> None:
        self.viewer, self.qtbot = viewer, qtbot
        self.canvas = viewer.window._qt_viewer.canvas.native

    def _pos(self, yx):
        from qtpy.QtCore import QPoint

        from napari_unet.widgets._base import viewer_camera

        camera = viewer_camera(self.viewer)
        y, x = (np.asarray(yx, dtype=float) - np.asarray(camera.center[-2:])) * camera.zoom + np.array(
            [self.canvas.height(), self.canvas.width()]) / 2
        return QPoint(int(round(x)), int(round(y)))

    @staticmethod
    def inside(labels: np.ndarray, label: int) -> tuple[int, int]:
        """Where a user clicks on an object: its pixel farthest from its edge."""
        from scipy import ndimage as ndi

        distance = ndi.distance_transform_edt(labels == label)
        return tuple(int(v) for v in np.unravel_index(np.argmax(distance), labels.shape))

    def click(self, yx) -> None:
        self.drag([yx])

    def drag(self, path) -> None:
        """Press at the first point, move through the others, release at the last."""
        from qtpy.QtCore import Qt

        self.qtbot.mousePress(self.canvas, Qt.MouseButton.LeftButton, pos=self._pos(path[0]))
        for yx in path[1:]:
            self.qtbot.mouseMove(self.canvas, self._pos(yx))
            self.qtbot.wait(5)
        self.qtbot.mouseRelease(self.canvas, Qt.MouseButton.LeftButton, pos=self._pos(path[-1]))
        self.qtbot.wait(10)

    def key(self, key, modifier=None) -> None:
        from qtpy.QtCore import Qt

        self.canvas.setFocus()
        self.qtbot.keyClick(self.canvas, key, modifier or Qt.KeyboardModifier.NoModifier)
        self.qtbot.wait(10)


@pytest.fixture
def canvas_mouse(qtbot):
    """``canvas_mouse(viewer)``: a :class:`CanvasMouse` on a viewer made with ``show=True``."""
    return lambda viewer: CanvasMouse(viewer, qtbot)
