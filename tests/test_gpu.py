"""The CUDA paths: segmentation (bf16 autocast, channels-last), fine-tuning (bf16, and fp16 through a
GradScaler), the paper's network and 3D objects, each against the CPU's float32 result.

Skipped where no CUDA GPU is present (CI); run on a lent GPU with
``NAPARI_UNET_DATA=... python -m pytest tests/test_gpu.py`` (see benchmarks/RESULTS.md, "GPU").
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from napari_unet.core import load_model, segment
from napari_unet.core.metrics import average_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def dsb_val(data_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """Four DSB2018 val images (CC0): three fluorescence, one stained tissue, with their labels."""
    from skimage.io import imread

    root = data_dir / "dsb2018"
    with open(root / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    rows = sorted(rows, key=lambda r: r["id"])
    chosen = [r for r in rows if r["kind"] == "grey_dark"][:3] + [r for r in rows if r["kind"] == "color"][:1]
    return [(imread(root / "images" / f"{r['id']}.png"),
             imread(root / "labels" / f"{r['id']}.png").astype(np.int32)) for r in chosen]


def test_auto_picks_the_gpu_and_names_it(monkeypatch):
    from napari_unet.core.device import describe_device, select_device

    monkeypatch.delenv("NAPARI_UNET_DEVICE", raising=False)
    device = select_device()
    assert device.type == "cuda"
    assert torch.cuda.get_device_name(0) in describe_device(device)


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_segmentation_on_the_gpu_matches_the_cpu(dsb_val, precision):
    cpu = load_model(None, device="cpu")
    gpu = load_model(None, device="cuda")
    for image, truth in dsb_val:
        on_cpu = segment(cpu, image, device="cpu")
        on_gpu = segment(gpu, image, device="cuda", precision=precision)
        assert on_gpu.shape == truth.shape and on_gpu.dtype == np.int32
        assert average_precision(on_cpu, on_gpu, 0.5) >= (0.95 if precision == "auto" else 0.99)
        assert abs(average_precision(truth, on_gpu) - average_precision(truth, on_cpu)) <= 0.03


def test_the_papers_network_on_the_gpu():
    from napari_unet.core import UNet, count_parameters

    net = UNet().cuda().eval()  # the defaults are the paper's: 64-1024 channels, unpadded
    assert count_parameters(net) == 31_030_658
    x = torch.randn(2, 1, 572, 572, device="cuda")
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = net(x)
    assert full.shape == mixed.shape == (2, 2, 388, 388)
    assert torch.isfinite(mixed).all()
    assert (full.argmax(1) == mixed.argmax(1)).float().mean() > 0.95


def test_finetuning_on_the_gpu_in_bf16_learns_and_loads_on_the_cpu(dsb_val, tmp_path):
    from napari_unet.core import finetune, save_model
    from napari_unet.core.checkpoint import read_model_file
    from napari_unet.core.events import TrainStep, run_to_end

    image, truth = dsb_val[0]
    model = load_model(None, device="cuda")
    before = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    losses: list[float] = []
    run = finetune(model, [image], [truth], steps=40, device="cuda", seed=0, val_fraction=0.0,
                   validate_start=False)
    tuned = run_to_end(run, lambda e: losses.append(e.loss) if isinstance(e, TrainStep) else None)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert tuned.metadata["training"]["mixed_precision"] == "bfloat16"
    weights = tuned.net.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in weights.items() if v.is_floating_point())
    path = save_model(tuned, tmp_path / "tuned.pt")
    again = read_model_file(path, device="cpu")
    labels = segment(again, image, device="cpu")
    assert average_precision(truth, labels) > 0.5


def test_an_fp16_step_goes_through_the_grad_scaler():
    """GPUs without bf16 train in fp16 with a GradScaler (autocast_dtype's choice there)."""
    from napari_unet.core import UNet
    from napari_unet.core.optimise import Batch, Optimiser

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=8, depth=3, padding="same").cuda().train()
    opt = Optimiser(net, lr=1e-3, weight_decay=0.0, device=torch.device("cuda"), amp_dtype=torch.float16)
    assert opt.scaler is not None
    rng = np.random.default_rng(0)
    classes = (rng.random((4, 64, 64)) > 0.5).astype(np.int64)
    batch = Batch(images=(classes[:, None] + 0.3 * rng.standard_normal((4, 1, 64, 64))).astype(np.float32),
                  classes=classes, weights=np.ones((4, 64, 64), np.float32))
    losses = [opt.step(batch, 1e-3, step) for step in range(1, 31)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert opt.scaler.get_scale() > 0


def test_3d_objects_on_the_gpu_match_the_cpu(data_dir):
    from skimage.io import imread

    volume = imread(data_dir / "nuclei3d_synthetic" / "image.tif")
    truth = imread(data_dir / "nuclei3d_synthetic" / "labels.tif").astype(np.int32)
    on_cpu = segment(load_model(None, device="cpu"), volume, axes="ZYX", device="cpu")
    on_gpu = segment(load_model(None, device="cuda"), volume, axes="ZYX", device="cuda")
    assert on_gpu.shape == volume.shape
    assert average_precision(on_cpu, on_gpu, 0.5) >= 0.9
    assert abs(average_precision(truth, on_gpu) - average_precision(truth, on_cpu)) <= 0.05
