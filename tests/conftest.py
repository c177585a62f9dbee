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
    yield


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
