"""Whole-stack prediction through dask: local threads and a local dask.distributed cluster."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core import load_model, segment


@pytest.fixture
def stack(dsb_fluo_crop) -> np.ndarray:
    image, _ = dsb_fluo_crop
    return np.stack([image[:64, :72], image[64:, :72], image[:64, 56:], image[64:, 56:]]).reshape(2, 2, 64, 72)


def _expected(model, stack):
    return np.stack([[segment(model, p) for p in row] for row in stack])


def test_local_threads_match_core(tmp_path, stack, tiny_model_path):
    import dask.array as da
    import zarr

    from napari_unet.batch import segment_to_ome_zarr
    from napari_unet.io._reader import read_stack

    model = load_model(tiny_model_path, device="cpu")
    lazy = da.from_array(stack, chunks=(1, 2, 32, 72))  # deliberately not chunked by plane
    out = segment_to_ome_zarr(model, lazy, tmp_path / "s_masks.ome.zarr", axes="TZYX", scale=[1, 2, 0.5, 0.5])
    labels = np.asarray(zarr.open_group(str(out), mode="r")["0"][...])
    np.testing.assert_array_equal(labels, _expected(model, stack))
    # the project's reader opens it back with its axes and pixel size
    _, info = read_stack(out)
    assert info.axes == "TZYX" and info.scale.get("Z") == 2
    with pytest.raises(FileExistsError):
        segment_to_ome_zarr(model, stack, out)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folder left behind


def test_distributed_cluster_matches_core(tmp_path, stack, tiny_model_path):
    import zarr
    from distributed import Client, LocalCluster

    from napari_unet.batch import segment_to_ome_zarr

    model = load_model(tiny_model_path, device="cpu")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = segment_to_ome_zarr(model, stack[0], tmp_path / "d.ome.zarr", scheduler=cluster.scheduler_address,
                                  min_size=0)
        # a model without a file travels serialised
        model.metadata.pop("path")
        with Client(cluster) as client:
            out2 = segment_to_ome_zarr(model, stack[1], tmp_path / "e.ome.zarr", scheduler=client, min_size=0)
    labels = np.asarray(zarr.open_group(str(out), mode="r")["0"][...])
    np.testing.assert_array_equal(labels, np.stack([segment(model, p, min_size=0) for p in stack[0]]))
    labels2 = np.asarray(zarr.open_group(str(out2), mode="r")["0"][...])
    np.testing.assert_array_equal(labels2, np.stack([segment(model, p, min_size=0) for p in stack[1]]))


def test_a_worker_model_is_on_the_device_asked_or_the_best_one(tiny_model_path, monkeypatch):
    """No device given: each worker's best (as without dask; the CPU was taken whatever the machine
    had); models cached per device (a call asking for another device got the cached one)."""
    from napari_unet.batch import ModelSpec
    from napari_unet.core.device import select_device

    model = load_model(tiny_model_path, device="cpu")
    auto, cpu = ModelSpec(model), ModelSpec(model, device="cpu")
    assert auto.key != cpu.key
    assert auto.get().device == select_device(None) and cpu.get().device.type == "cpu"
    assert ModelSpec(model, device="mps").key != cpu.key


def test_the_models_of_the_workers_are_kept_two_at_a_time(tiny_model_path):
    """A notebook's loop over models kept each for the process (and its ONNX Runtime session)."""
    import torch

    from napari_unet.batch import ModelSpec
    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.model import UNet

    specs = []
    for seed in range(4):
        torch.manual_seed(seed)
        net = UNet(in_channels=1, n_classes=3, base_width=4, depth=2, padding="same", norm="batch").eval()
        specs.append(ModelSpec(SegmentationModel(net), device="cpu", use_path=False))
    loaded = [spec.get() for spec in specs]
    assert list(ModelSpec._cache) == [specs[2].key, specs[3].key]
    assert specs[3].get() is loaded[3] and specs[0].get() is not loaded[0]  # (loaded again when asked again)
