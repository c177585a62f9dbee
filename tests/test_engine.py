"""The ONNX Runtime engine: same probabilities as torch, the export cache, the fallback to torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from napari_unet.core import SegmentationModel, UNet, load_model
from napari_unet.core import engine as eng
from napari_unet.core.device import give_freed_memory_back
from napari_unet.core.events import run_to_end
from napari_unet.core.predict import PredictionStopped, iter_predict_probabilities, predict_probabilities

ROOT = Path(__file__).resolve().parents[1]


def _model(in_channels: int = 1, padding: str = "same", n_classes: int = 3, seed: int = 0,
           net_class: type[UNet] = UNet, norm: str | None = "batch") -> SegmentationModel:
    torch.manual_seed(seed)
    net = net_class(in_channels=in_channels, n_classes=n_classes, base_width=4, depth=3, padding=padding,
                    norm=norm)
    for m in net.modules():  # non-trivial running statistics, as in a trained model
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    return SegmentationModel(net, "bg-interior-boundary" if n_classes == 3 else "foreground")


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth blobs on noise (uint8): structure at several scales, like cells."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    sigma = (3, 3, 0)[: len(shape)]
    blobs = ndi.gaussian_filter(rng.random(shape), sigma)
    blobs = (blobs - blobs.min()) / (np.ptp(blobs) + 1e-9)
    return (200 * blobs + 40 * rng.random(shape)).astype(np.uint8)


def _cache_files() -> list[Path]:
    return sorted(eng.onnx_cache_dir().glob("*.onnx"))


@pytest.fixture(autouse=True)
def _fresh_sessions():
    """Each test starts without sessions in memory (its cache folder is new: conftest)."""
    eng.clear_sessions()
    yield
    eng.clear_sessions()


@pytest.mark.parametrize(
    ("in_channels", "padding", "norm", "shape", "tile"),
    [
        (1, "same", "batch", (117, 101), None),  # one tile, odd size
        (1, "same", "batch", (203, 157), 96),  # tiled, odd size
        (3, "same", "batch", (99, 131, 3), None),  # RGB
        (3, "same", "batch", (150, 97, 3), 80),  # RGB, tiled
        (1, "valid", "batch", (121, 99), None),  # the paper's unpadded convolutions (crop in the graph)
        (1, "valid", None, (190, 173), 120),  # and without normalisation (convolutions with bias)
    ],
)
def test_onnx_and_torch_give_the_same_probabilities(in_channels, padding, norm, shape, tile):
    model = _model(in_channels, padding, norm=norm)
    image = _image(shape)
    onnx = predict_probabilities(model, image, tile_size=tile, engine="onnx")
    files = _cache_files()
    assert len(files) == 1 and eng.weights_key(model.net) in files[0].name  # it did run ONNX Runtime
    reference = predict_probabilities(model, image, tile_size=tile, engine="torch")
    assert onnx.shape == reference.shape == (3, *shape[:2])
    np.testing.assert_allclose(onnx, reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx.sum(0), 1.0, atol=1e-5)


def test_shipped_model_is_the_same_through_onnx_runtime_and_auto_picks_it_on_the_cpu():
    model = load_model(device="cpu")
    image = _image((173, 259), seed=3)
    auto = predict_probabilities(model, image)  # "auto" on the CPU: ONNX Runtime
    assert len(_cache_files()) == 1
    reference = predict_probabilities(model, image, engine="torch")
    np.testing.assert_allclose(auto, reference, atol=1e-4, rtol=0)
    assert eng.resolve_engine(None, "cpu").name == "onnx"
    assert eng.describe_engine("cpu") == "ONNX Runtime"


def test_exported_once_then_read_from_the_cache_and_sessions_kept_per_weights(caplog):
    model = _model()
    with caplog.at_level(logging.INFO, logger="napari_unet.core.engine"):
        first = eng.onnx_network(model.net)
    assert "Exported" in caplog.text
    assert first.path is not None and first.path.parent == eng.onnx_cache_dir()
    assert f"ort{onnxruntime.__version__}" in first.path.name and first.key in first.path.name
    assert eng.onnx_network(model.net) is first  # the same session while the weights stay
    assert eng.onnx_network(model.copy().net) is first  # same weights, another copy: same key

    eng.clear_sessions()  # as a new process: the file is used, nothing is exported
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="napari_unet.core.engine"):
        again = eng.onnx_network(model.net)
    assert "Exported" not in caplog.text and again.path == first.path

    tuned = model.copy()  # fine-tuned weights: a new key, a new file, a new session
    with torch.no_grad():
        tuned.net.head.bias += 0.5
    changed = eng.onnx_network(tuned.net)
    assert changed.key != first.key and changed.path != first.path and len(_cache_files()) == 2
    image = _image((90, 70))
    np.testing.assert_allclose(predict_probabilities(tuned, image),
                               predict_probabilities(tuned, image, engine="torch"), atol=1e-4)
    # in-place steps (what fine-tuning does) are seen too
    with torch.no_grad():
        tuned.net.head.bias -= 0.5
    assert eng.onnx_network(tuned.net).key == first.key


def test_a_cache_folder_that_cannot_be_written_runs_the_network_from_memory_and_says_how_to_keep_it(
        tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NAPARI_UNET_CACHE_DIR", str(blocker / "cache"))  # (a read-only one, for root too)
    model = _model()
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.engine"):
        network = eng.onnx_network(model.net)
    assert network.path is None
    assert "it runs from memory" in caplog.text and "set NAPARI_UNET_CACHE_DIR to a folder" in caplog.text
    image = _image((90, 70))
    np.testing.assert_allclose(predict_probabilities(model, image),
                               predict_probabilities(model, image, engine="torch"), atol=1e-4)


def test_onnx_runtime_takes_the_threads_torch_is_given():
    """OMP_NUM_THREADS / torch.set_num_threads (one a dask worker) left ONNX Runtime on every core,
    while the device line said torch's count."""
    before = torch.get_num_threads()
    eng.clear_sessions()
    try:
        torch.set_num_threads(1)
        network = eng.onnx_network(_model(seed=5).net)
        assert network.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)
        eng.clear_sessions()


def test_damaged_or_foreign_cache_file_is_rebuilt(caplog):
    model = _model()
    image = _image((80, 96))
    path = eng.onnx_network(model.net).path
    good = path.read_bytes()
    reference = predict_probabilities(model, image, engine="torch")

    path.write_bytes(good[: len(good) // 3])  # a truncated file (a crash of an old version, a full disk)
    eng.clear_sessions()
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.engine"):
        probs = predict_probabilities(model, image, engine="onnx")
    assert "could not be used" in caplog.text and "exporting it again" in caplog.text
    np.testing.assert_allclose(probs, reference, atol=1e-4)
    assert path.stat().st_size == len(good)

    other = _model(n_classes=2, seed=1)  # a valid ONNX file of another network under this key
    path.write_bytes(eng.export_onnx(other.net))
    eng.clear_sessions()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.engine"):
        probs = predict_probabilities(model, image, engine="onnx")
    assert "does not fit" in caplog.text
    np.testing.assert_allclose(probs, reference, atol=1e-4)


def test_sessions_are_safe_from_threads_and_stop_between_tiles():
    model = _model()
    images = [_image((150, 140), seed=s) for s in range(2)]
    expected = [predict_probabilities(model, im, tile_size=80, engine="torch") for im in images]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = predict_probabilities(model, images[i], tile_size=80, engine="onnx")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-4)

    seen = []
    gen = iter_predict_probabilities(model, images[0], tile_size=80, engine="onnx",
                                     should_stop=lambda: len(seen) >= 2)
    with pytest.raises(PredictionStopped):
        run_to_end(gen, seen.append)
    assert len(seen) == 2 and seen[-1].done < seen[-1].total


def test_two_exports_at_once_both_work():
    """A package exported (Manage models) while Segment's first run exported its network: torch's
    exporter keeps its state in globals, both failed, and torch ran that network from then on."""
    torch.manual_seed(0)
    nets = [UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch").eval()
            for _ in range(2)]
    results: list[object] = []

    def export(net: UNet) -> None:
        try:
            results.append(eng.export_onnx(net))
        except eng.EngineUnavailable as exc:
            results.append(exc)

    threads = [threading.Thread(target=export, args=(net,)) for net in nets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, bytes) and r for r in results) and len(results) == 2, results
    # and each runs its network right (the race left torch running one: compared with torch)
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    outputs = [onnxruntime.InferenceSession(r, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
               for r in results]
    with torch.no_grad():
        expected = [torch.softmax(net(torch.from_numpy(x)), dim=1).numpy() for net in nets]
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # (two networks told apart)
    # each network is one of the exports (which thread finished first: either order)
    assert all(any(np.abs(o - e).max() < 1e-4 for o in outputs) for e in expected)


def test_a_run_in_progress_ends_when_its_interrupt_is_set_and_the_session_runs_on():
    """Cancel ends the ONNX Runtime run of a tile at once (a paper-net tile runs ~35 s on a laptop)."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same", norm="batch").eval()
    network = eng.onnx_network(net)
    batch = np.random.default_rng(0).random((2, 1, 1024, 1024), dtype=np.float32)  # seconds of work
    interrupt = eng.RunInterrupt()
    outcome: list[object] = []

    def work() -> None:
        with interrupt.around():
            try:
                outcome.append(network(batch))
            except eng.RunInterrupted as exc:
                outcome.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    while not interrupt._runs and thread.is_alive():  # the run has begun
        time.sleep(0.001)
    interrupt.set()
    thread.join()
    assert isinstance(outcome[0], eng.RunInterrupted), "the run went on to its end"
    assert not interrupt._runs

    # a run that would begin after the interrupt is set does not begin; others are not touched
    with interrupt.around(), pytest.raises(eng.RunInterrupted, match="before"):
        network(batch[:1, :, :64, :64])
    small = batch[:1, :, :96, :96]
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(small)), 1).numpy()
    np.testing.assert_allclose(network(small), expected, atol=1e-4)
    with eng.RunInterrupt().around():
        np.testing.assert_allclose(network(small), expected, atol=1e-4)


class _NotExportable(UNet):
    """A real UNet plus an operation that torch runs but cannot export to ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits + 0.0 * torch.special.i0(logits)


def test_export_failure_falls_back_to_torch_and_says_why(caplog):
    broken = _model(net_class=_NotExportable)
    plain = _model()
    image = _image((70, 90))
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.engine"):
        probs = predict_probabilities(broken, image)
    assert "ONNX Runtime not used: the network could not be exported" in caplog.text
    np.testing.assert_allclose(probs, predict_probabilities(plain, image, engine="torch"), atol=1e-5)
    assert _cache_files() == []
    line = eng.describe_engine("cpu")
    assert line.startswith("torch (ONNX Runtime not used: the network could not be exported")
    predict_probabilities(plain, image)  # a network that exports: the device line says so again
    assert eng.describe_engine("cpu") == "ONNX Runtime"


def test_choice_follows_the_request_the_environment_and_the_device(monkeypatch):
    assert eng.resolve_engine("torch", "cpu") == eng.EngineChoice("torch", "torch", "")
    gpu = eng.resolve_engine("auto", "cuda")  # a torch.device can name a GPU this machine lacks
    assert gpu.name == "torch" and gpu.reason == ""  # torch is the choice on a GPU: nothing to explain
    forced = eng.resolve_engine("onnx", "mps")
    assert forced.name == "torch" and "CPU only" in forced.reason and "mps" in forced.reason
    assert eng.resolve_engine("onnx", "cpu", mixed_precision=True).reason.endswith("bf16 was asked for")
    monkeypatch.setenv("NAPARI_UNET_ENGINE", "torch")
    assert eng.resolve_engine(None, "cpu").name == "torch"
    assert eng.resolve_engine("onnx", "cpu").name == "onnx"  # an explicit choice beats the environment
    monkeypatch.setenv("NAPARI_UNET_ENGINE", "fast")
    with pytest.raises(ValueError, match="NAPARI_UNET_ENGINE='fast' is not an inference engine"):
        eng.resolve_engine("auto", "cpu")
    with pytest.raises(ValueError, match="Unknown inference engine 'tensorrt'"):
        eng.resolve_engine("tensorrt", "cpu")
    assert eng.cpu_threads() == len(os.sched_getaffinity(0))


_WITHOUT_ORT = r"""
import json, sys
sys.modules["onnxruntime"] = None  # hides the installed package: "import onnxruntime" fails
import numpy as np
from napari_unet.core import engine
from napari_unet.core.predict import predict_probabilities
from napari_unet.core.checkpoint import read_model_file
model = read_model_file(sys.argv[1])
probs = predict_probabilities(model, np.load(sys.argv[2]))
np.save(sys.argv[3], probs)
choice = engine.resolve_engine("auto", "cpu")
print(json.dumps({"name": choice.name, "reason": choice.reason, "line": engine.describe_engine("cpu")}))
"""


def test_without_onnxruntime_torch_runs_and_the_reason_is_shown(tmp_path, tiny_model_path):
    image = _image((64, 72))
    np.save(tmp_path / "image.npy", image)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ORT, str(tiny_model_path), str(tmp_path / "image.npy"),
         str(tmp_path / "probs.npy")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info == {"name": "torch", "reason": "onnxruntime is not installed (pip install onnxruntime)",
                    "line": "torch (ONNX Runtime not used: onnxruntime is not installed (pip install onnxruntime))"}
    model = load_model(tiny_model_path, device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"),
                               predict_probabilities(model, image, engine="torch"), atol=1e-6)
    assert _cache_files() == []  # the subprocess exported nothing (same cache folder)


_CLI_WITHOUT_ORT = r"""
import sys
sys.modules["onnxruntime"] = None
from napari_unet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_engine_flag_and_the_fallback_message(tmp_path, tiny_model_path, capsys):
    import tifffile

    from napari_unet.cli import main

    image = _image((60, 50))
    tifffile.imwrite(tmp_path / "a.tif", image)
    for engine in ("torch", "onnx"):
        rc = main(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / engine), "--engine", engine,
                   "--model", str(tiny_model_path), "--no-progress"])
        assert rc == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "torch" / "a_masks.tif"),
                                  tifffile.imread(tmp_path / "onnx" / "a_masks.tif"))
    assert len(_cache_files()) == 1

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _CLI_WITHOUT_ORT, "predict", str(tmp_path / "a.tif"), "--out",
         str(tmp_path / "fallback"), "--model", str(tiny_model_path), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "runs with torch (ONNX Runtime not used: onnxruntime is not installed" in done.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "fallback" / "a_masks.tif"),
                                  tifffile.imread(tmp_path / "torch" / "a_masks.tif"))


def _resident_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.timing
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory read from /proc (Linux)")
def test_runs_reuse_their_memory_and_give_it_back_when_idle(monkeypatch):
    """ONNX Runtime's arena (reused between the operators of a run, a large speed-up on the CPU)
    is kept for the next run (the tiles and passes of one segmentation) and given back to the OS
    once the network has been idle for ``ARENA_KEEP_S``: an idle GUI does not hold the peak of a
    big tile."""
    monkeypatch.setattr(eng, "ARENA_KEEP_S", 1.0)
    model = load_model(device="cpu")
    network = eng.onnx_network(model.net)
    network.release_memory()
    batch = np.random.default_rng(0).standard_normal((1, 1, 1024, 1024)).astype(np.float32)
    give_freed_memory_back()  # else the arena may grow into memory earlier tests freed: no change in RSS
    before = _resident_mb()
    for _ in range(2):
        probs = network(batch)
        assert probs.shape == (1, 3, 1024, 1024)
        del probs
        # the run's peak is ~0.5 kB per pixel (~500 MB here): most of it is kept for the next run
        assert _resident_mb() - before > 150
    deadline = time.monotonic() + 30
    while _resident_mb() - before > 150 and time.monotonic() < deadline:
        time.sleep(0.2)
    kept = _resident_mb() - before
    assert kept < 150, f"{kept:.0f} MB still kept {eng.ARENA_KEEP_S} s after the last run"
    pending = set(eng._RELEASE_TIMERS)
    small = batch[:, :, :64, :64]
    for _ in range(3):
        network(small)
    assert len(eng._RELEASE_TIMERS - pending) == 1  # one release pending per network, not one per run
    probs = network(batch)  # and the network still runs after giving its memory back
    np.testing.assert_allclose(probs, network(batch), atol=1e-6)
    network.release_memory()
    assert _resident_mb() - before < 150
