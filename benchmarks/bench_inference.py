"""Inference benchmark: engines, tiled prediction vs MONAI sliding windows vs one whole-image pass.

Run (CPU, the figures in RESULTS.md)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_inference.py

``--only-engines`` runs part 0 alone (a few minutes on 2 cores), ``--only-per-core`` part 0b.

and on a GPU (bf16 autocast, channels-last, several tiles per batch: part 1 and part 2 there, the
CPU parts left out)::

    python benchmarks/bench_inference.py --gpu

Parts:

0. Engines (CPU): the BN-folded network + softmax through torch eager and through ONNX
   Runtime (``core.engine``) on 1024 x 1024 and 2048 x 2048 inputs, beside the fp32 matmul
   rate measured in the same rounds (so the same machine and load), with the fraction of it
   reached; then "current slice" end to end (``core.segment`` of a 1024 x 1024 plane) with
   its breakdown (normalisation, the network on the mirror-padded tile, post-processing,
   the float16 copy the GUI keeps) and its ratio to the 1024 x 1024 forward alone.
   0b. The same forward passes on one thread, in CPU seconds: the engines' work per core,
   which other processes' load hardly changes.
1. A 2048 x 2048 plane (a 4 x 4 mosaic of ISBI 2012 EM slices, real data) through the
   default model's network: ``predict_probabilities`` (automatic tiles) and ``segment``;
   MONAI's ``sliding_window_inference`` with the same network, tile and overlap; one
   forward pass over the whole image (upper bound). Also at a fixed 512-pixel tile.
   Median time, megapixels/s, ratios and useful GFLOP/s beside a measured matmul peak.
2. Latency of "segment the current slice": a 1024 x 1024 plane, default model, CPU.
3. Peak memory of a whole-stack run streamed from a memory-mapped TIFF into a
   memory-mapped output, for two stack lengths (memory must not grow with the stack).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.core import SegmentationModel, UNet
from napari_unet.core.predict import predict_probabilities, segment
from napari_unet.core.preprocess import prepare_plane
from napari_unet.core.tiling import default_halo, plan_tiles

sys.path.insert(0, str(ROOT / "scripts"))
from builtin_data import shared_data  # noqa: E402

DATA = shared_data(ROOT)


def default_model(device: str) -> tuple[SegmentationModel, str]:
    path = ROOT / "napari_unet" / "models" / "nuclei.pt"
    if path.is_file():
        from napari_unet.core import load_model

        return load_model(path, device=device), "napari_unet/models/nuclei.pt"
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same", norm="batch").eval()
    model = SegmentationModel(net, "bg-interior-boundary", metadata={"name": "untrained-default-config"})
    return model.to(device), "untrained UNet(1, 3, base_width=16, depth=4, same, batch) (nuclei.pt absent)"


def test_image(size: int) -> np.ndarray:
    """A size x size mosaic of ISBI 2012 slices (real EM data); exits when they are not there (a timing
    of noise said "ISBI 2012")."""
    vol_path = DATA / "isbi2012" / "volume.tif"
    if not vol_path.is_file():
        raise SystemExit(f"{vol_path} is not there: set NAPARI_UNET_DATA to the data folder.")
    import tifffile

    vol = tifffile.imread(vol_path)
    n = -(-size // vol.shape[1])
    rows = [np.concatenate([vol[(r * n + c) % len(vol)] for c in range(n)], axis=1) for r in range(n)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: bool = False) -> list[float]:
    if warmup:  # first calls create oneDNN / cuDNN plans for the shapes (the median absorbs it otherwise)
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps = 20 if device.type == "cuda" else 3
    t = min(timed(lambda: [a @ b for _ in range(reps)], device, 3, warmup=True)) / reps
    return 2 * n**3 / t / 1e9


def flops_per_pixel(net: torch.nn.Module, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, net.config.in_channels, 256, 256, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / (256 * 256)


def bench_2048(model: SegmentationModel, args, device: torch.device) -> dict:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        raise SystemExit("part 1 compares with MONAI, which is not installed: pip install -e '.[benchmarks]'") from None

    image = test_image(args.size)
    net = model.net
    amp = torch.bfloat16 if (args.gpu and torch.cuda.is_bf16_supported()) else (torch.float16 if args.gpu else None)
    precision = "auto" if args.gpu else "fp32"
    channels_last = bool(args.gpu)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    fpp = flops_per_pixel(net, device)
    useful_gflop = fpp * args.size**2 / 1e9
    peak = matmul_peak_gflops(device, torch.float32)
    peak_amp = matmul_peak_gflops(device, amp) if amp is not None else None
    results: dict = {"image": f"{args.size}x{args.size} (ISBI 2012 mosaic)", "flops_per_pixel": fpp,
                     "useful_gflop": useful_gflop, "matmul_peak_gflops_fp32": peak,
                     "matmul_peak_gflops_amp": peak_amp, "runs": []}
    mp = args.size**2 / 1e6

    def whole():
        chw = prepare_plane(image, 1, model.normalization)
        x = torch.from_numpy(chw)[None].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            p = torch.softmax(net(x).float(), 1)
        return p.cpu().numpy()

    # All variants run round-robin (whole, ours, segment, MONAI, ... then again) so that the
    # load of other processes on a shared machine affects them alike; medians are reported.
    configs = []
    for tile in (None, 512):
        if tile is None:  # what the engine chooses automatically
            from napari_unet.core.predict import _Engine

            eng = _Engine(model, None, None, None, None, precision, channels_last)
            plan, batch = eng.plan((args.size, args.size)), eng.batch_size
        else:
            plan = plan_tiles((args.size, args.size), net, tile, None)
            batch = 8 if args.gpu else 1
        configs.append((tile, plan, batch))

    def make_fns(plan, batch):
        roi = plan.tile_shape
        overlap = 2 * default_halo(net) / roi[0]
        # the same work as MONAI's: one pass at the image's own scale (no diameter estimate, whose passes
        # and rescaling are another measurement: bench_scale.py), through torch as MONAI runs it
        kw = dict(tile_size=roi[0], batch_size=batch, precision=precision, channels_last=channels_last,
                  diameter="native", engine="torch")

        def ours():
            return predict_probabilities(model, image, **kw)

        def ours_segment():
            return segment(model, image, **kw)

        def monai():
            chw = prepare_plane(image, 1, model.normalization)
            x = torch.from_numpy(chw)[None].to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                p = sliding_window_inference(
                    x, roi_size=roi, sw_batch_size=batch, predictor=net, overlap=overlap,
                    mode="constant", padding_mode="reflect",
                )
                p = torch.softmax(p.float(), 1)
            return p.cpu().numpy()

        return {"predict": ours, "segment": ours_segment, "monai": monai}, overlap

    fns = {"whole": whole}
    overlaps = {}
    for i, (tile, plan, batch) in enumerate(configs):
        f, overlaps[i] = make_fns(plan, batch)
        fns.update({f"{k}@{i}": v for k, v in f.items()})
    times = {k: [] for k in fns}
    for r in range(args.repeats):
        for k, fn in fns.items():
            times[k] += timed(fn, device, 1)
            print(f"  repeat {r + 1}: {k} {times[k][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    results["all_times_s"] = times
    results["whole_image_pass_s"] = med["whole"]
    for i, (tile, plan, batch) in enumerate(configs):
        m_ours, m_seg, m_monai = med[f"predict@{i}"], med[f"segment@{i}"], med[f"monai@{i}"]
        roi = plan.tile_shape
        run = {
            "tile": f"{'auto ' if tile is None else ''}{roi[0]}x{roi[1]}", "tiles": plan.n_tiles, "batch": batch,
            "overlap_px": 2 * default_halo(net), "overlap_fraction": round(overlaps[i], 3),
            "predict_probabilities_s": m_ours, "segment_s": m_seg, "monai_s": m_monai,
            "predict_mpix_s": mp / m_ours, "monai_mpix_s": mp / m_monai, "whole_mpix_s": mp / med["whole"],
            "speedup_vs_monai": m_monai / m_ours, "fraction_of_whole_pass": med["whole"] / m_ours,
            "useful_gflops": useful_gflop / m_ours, "monai_useful_gflops": useful_gflop / m_monai,
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    results["whole_useful_gflops"] = useful_gflop / results["whole_image_pass_s"]
    return results


def bench_engines(model: SegmentationModel, repeats: int, sizes: tuple[int, ...] = (1024, 2048)) -> dict:
    """Part 0: torch eager vs ONNX Runtime forward, the matmul rate, "current slice" end to end.

    Every measurement runs once per round, round after round, so that other processes' load
    falls on all of them alike; the best (least disturbed) and the median are reported.
    """
    from napari_unet.core.engine import cpu_threads, onnx_network
    from napari_unet.core.instances import probabilities_to_labels
    from napari_unet.core.predict import _Engine, inference_net
    from napari_unet.core.tiling import mirror_pad

    cpu = torch.device("cpu")
    fpp = flops_per_pixel(model.net, cpu)
    fused = inference_net(model.net)
    t0 = time.perf_counter()
    network = onnx_network(model.net)  # exported (or read from the cache) once
    setup_s = time.perf_counter() - t0
    inputs = {n: prepare_plane(test_image(n), 1, model.normalization)[None] for n in sizes}

    def torch_forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(fused(torch.from_numpy(x)), 1).numpy()

    n_mm = 2048
    a, b = torch.randn(n_mm, n_mm), torch.randn(n_mm, n_mm)

    def matmul() -> None:
        for _ in range(3):
            a @ b

    plane = test_image(1024)
    engine = _Engine(model, "cpu", None, None, None, "fp32", None)
    plan = engine.plan(plane.shape)
    parts: dict[str, list[float]] = {k: [] for k in ("normalise", "network_tile", "labels", "float16_copy")}

    def current_slice_parts() -> None:
        t = time.perf_counter()
        chw = prepare_plane(plane, 1, model.normalization)
        parts["normalise"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tile = mirror_pad(chw, plan)[None]
        p = network(tile)[0, :, plan.y.crop : plan.y.crop + 1024, plan.x.crop : plan.x.crop + 1024]
        parts["network_tile"].append(time.perf_counter() - t)
        t = time.perf_counter()
        probabilities_to_labels(p, *model.resolve_postprocessing(None, None), model.representation)
        parts["labels"].append(time.perf_counter() - t)
        t = time.perf_counter()
        p.astype(np.float16)
        parts["float16_copy"].append(time.perf_counter() - t)

    fns = {"matmul": matmul}
    for n in sizes:
        fns[f"torch_{n}"] = lambda x=inputs[n]: torch_forward(x)
        fns[f"onnx_{n}"] = lambda x=inputs[n]: network(x)
    # the pipeline around the network at the model's own scale ("native": one pass), and what the
    # default automatic diameter adds on this image (estimation passes, maybe a rescaled final pass;
    # it depends on the image: EM membranes here, not nuclei)
    fns["segment_1024"] = lambda: segment(model, plane, device="cpu", diameter="native")
    fns["segment_1024_auto"] = lambda: segment(model, plane, device="cpu")
    fns["slice_parts"] = current_slice_parts
    for fn in fns.values():  # warm-up: oneDNN/ONNX Runtime plans for the shapes
        fn()
    for v in parts.values():
        v.clear()
    times: dict[str, list[float]] = {k: [] for k in fns}
    loads = []
    for r in range(repeats):
        for k, fn in fns.items():
            times[k] += timed(fn, cpu, 1)
        loads.append(os.getloadavg()[0])
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
              + f" (load {loads[-1]:.1f})", flush=True)

    def stats(values: list[float]) -> dict:
        return {"best_s": min(values), "median_s": statistics.median(values), "all_s": values}

    mm_flop = 3 * 2 * n_mm**3
    out: dict = {
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": cpu_threads()},
        "onnx_export_or_load_s": setup_s, "flops_per_pixel": fpp, "load_average_per_round": loads,
        "matmul_gflops": {"best": mm_flop / min(times["matmul"]) / 1e9,
                          "median": mm_flop / statistics.median(times["matmul"]) / 1e9},
        "forward": {}, "current_slice": {},
    }
    for n in sizes:
        gflop = fpp * n * n / 1e9
        row = {"gflop": gflop, "torch": stats(times[f"torch_{n}"]), "onnx": stats(times[f"onnx_{n}"])}
        for stat in ("best", "median"):
            t_onnx, t_torch = row["onnx"][f"{stat}_s"], row["torch"][f"{stat}_s"]
            mm = out["matmul_gflops"][stat]
            row[f"{stat}_onnx_speedup"] = t_torch / t_onnx
            row[f"{stat}_onnx_gflops"] = gflop / t_onnx
            row[f"{stat}_torch_gflops"] = gflop / t_torch
            row[f"{stat}_onnx_fraction_of_matmul"] = gflop / t_onnx / mm
        out["forward"][f"{n}x{n}"] = row
        print(json.dumps({k: v for k, v in row.items() if k not in ("torch", "onnx")}), flush=True)
    seg = stats(times["segment_1024"])
    auto = stats(times["segment_1024_auto"])
    fwd = out["forward"]["1024x1024"]["onnx"]
    out["current_slice"] = {
        "tile": f"{plan.tile_shape[0]}x{plan.tile_shape[1]}", "segment": seg, "segment_auto_diameter": auto,
        "median_auto_diameter_ratio_to_forward_1024": auto["median_s"] / fwd["median_s"],
        "parts_median_s": {k: statistics.median(v) for k, v in parts.items()},
        "best_ratio_to_forward_1024": seg["best_s"] / fwd["best_s"],
        "median_ratio_to_forward_1024": seg["median_s"] / fwd["median_s"],
    }
    print(json.dumps({k: v for k, v in out["current_slice"].items() if not k.startswith("segment")}), flush=True)
    return out


def bench_per_core(model: SegmentationModel, repeats: int, size: int = 1024) -> dict:
    """Part 0b: one thread each, CPU seconds (``time.process_time``) rather than wall time.

    On a shared machine the wall time of a 2-thread run mostly measures the other
    processes; the CPU time of a single thread measures the work itself (cache sharing
    still costs something). GFLOP per CPU second of torch eager and ONNX Runtime beside
    the same thread's fp32 matmul rate.
    """
    import onnxruntime as ort

    from napari_unet.core.engine import _run_options, _session_options, onnx_network
    from napari_unet.core.predict import inference_net

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fused = inference_net(model.net)
        options = _session_options(ort)
        options.intra_op_num_threads = 1
        path = onnx_network(model.net).path
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = prepare_plane(test_image(size), 1, model.normalization)[None]
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

        def torch_forward() -> None:
            with torch.inference_mode():
                torch.softmax(fused(torch.from_numpy(x)), 1).numpy()

        fns = {"matmul": lambda: [a @ b for _ in range(10)], "torch": torch_forward,
               "onnx": lambda: session.run(None, {"image": x}, _run_options(shrink=False))}
        flop = {"matmul": 10 * 2 * 1024**3, "torch": flops_per_pixel(model.net, torch.device("cpu")) * size * size}
        flop["onnx"] = flop["torch"]
        for fn in fns.values():
            fn()
        cpu_s: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                t = time.process_time()
                fn()
                cpu_s[k].append(time.process_time() - t)
    finally:
        torch.set_num_threads(threads)
    out = {k: {"best_cpu_s": min(v), "gflop_per_cpu_s": flop[k] / min(v) / 1e9} for k, v in cpu_s.items()}
    out["onnx_speedup"] = min(cpu_s["torch"]) / min(cpu_s["onnx"])
    out["onnx_fraction_of_matmul"] = out["onnx"]["gflop_per_cpu_s"] / out["matmul"]["gflop_per_cpu_s"]
    out["torch_fraction_of_matmul"] = out["torch"]["gflop_per_cpu_s"] / out["matmul"]["gflop_per_cpu_s"]
    out["input"] = f"{size}x{size}"
    print(json.dumps(out), flush=True)
    return out


def bench_slice_latency(model: SegmentationModel, repeats: int, device: torch.device | None = None) -> dict:
    device = device or torch.device("cpu")
    image = test_image(1024)
    segment(model, image[:256, :256], device=device)  # warm-up
    times = timed(lambda: segment(model, image, device=device), device, repeats, warmup=True)
    return {"plane": "1024x1024", "device": str(device), "median_s": statistics.median(times), "all_s": times}


_STACK_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from napari_unet.batch import segment_to_ome_zarr
from napari_unet.core import load_model, SegmentationModel, UNet
from napari_unet.io import read_stack
import torch
try:
    model = load_model(sys.argv[1] + "/napari_unet/models/nuclei.pt", device="cpu")
except Exception:
    torch.manual_seed(0)
    model = SegmentationModel(UNet(1, 3, 16, 4, "same", "batch").eval())
data, info = read_stack(sys.argv[2], lazy=True)  # dask array over tifffile's zarr store
t0 = time.perf_counter()
segment_to_ome_zarr(model, data, sys.argv[3], axes="ZYX")
# VmHWM: peak resident memory of this process (ru_maxrss would include the parent's before exec)
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"planes": data.shape[0], "plane": list(data.shape[1:]), "input_gb": data.nbytes / 1e9,
                  "seconds": time.perf_counter() - t0, "peak_rss_mb": hwm_kb / 1024}))
"""


def _memory_cgroup(limit_gb: float) -> Path:
    """A cgroup-v1 memory cgroup capped at ``limit_gb`` (Linux, root): RAM smaller than the stack."""
    group = Path("/sys/fs/cgroup/memory/napari_unet_bench")
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
    return group


def bench_stack_memory(lengths: list[int], plane: int, content_planes: int = 2,
                       memory_limit_gb: float | None = None) -> list[dict]:
    """Peak memory of ``read_stack(lazy=True)`` + ``batch.segment_to_ome_zarr`` over stacks of
    uint16 planes on disk. ``content_planes`` planes (spread over the stack) hold EM images and
    go through the network; the others are constant (read, found empty, written as zeros): the
    point is that memory does not grow with the stack, and the network time stays affordable."""
    import tifffile

    out = []
    base = test_image(plane).astype(np.uint16) * 200
    empty = np.full((plane, plane), 100, dtype=np.uint16)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in lengths:
            src = Path(tmp) / f"stack{n}.tif"
            content = set(np.linspace(0, n - 1, content_planes).astype(int).tolist())
            with tifffile.TiffWriter(src, bigtiff=True) as tw:  # plane by plane: never in memory
                for i in range(n):
                    tw.write(np.roll(base, 37 * i, axis=1) if i in content else empty, contiguous=True,
                             photometric="minisblack", metadata={"axes": "ZYX"} if i == 0 else None)
            preexec = None
            if memory_limit_gb:
                procs = _memory_cgroup(memory_limit_gb) / "cgroup.procs"

                def preexec() -> None:  # runs in the child before exec: join the capped cgroup
                    procs.write_text(str(os.getpid()))

            res = subprocess.run(
                [sys.executable, "-c", _STACK_CHILD, str(ROOT), str(src), str(Path(tmp) / f"out{n}.ome.zarr")],
                capture_output=True, text=True, preexec_fn=preexec,
            )
            if res.returncode:
                print(res.stderr[-2000:])
                raise SystemExit("stack benchmark failed")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["content_planes"] = len(content)
            row["memory_limit_gb"] = memory_limit_gb
            print(json.dumps(row), flush=True)
            out.append(row)
            src.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA with bf16/fp16 autocast and channels-last")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stack", default="64,256", help="stack lengths for the memory test ('' to skip)")
    parser.add_argument("--stack-plane", type=int, default=2048)
    parser.add_argument("--only-stack", action="store_true", help="run only the stack memory test")
    parser.add_argument("--only-engines", action="store_true",
                        help="run only part 0: torch vs ONNX Runtime, matmul rate, current slice")
    parser.add_argument("--only-per-core", action="store_true",
                        help="run only part 0b: one thread each, CPU time (for shared machines)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="run the stack test in a memory cgroup capped at this size (Linux, root), "
                             "so that the stack is larger than the RAM the process may use")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    args = parser.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA GPU")
    if args.only_stack:
        print(json.dumps(bench_stack_memory([int(v) for v in args.stack.split(",")], args.stack_plane,
                                            memory_limit_gb=args.memory_limit_gb)))
        return
    model, model_desc = default_model(str(device))
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": model_desc,
    }
    print(json.dumps(info), flush=True)
    if args.gpu:  # the GPU's own figures: part 1 and the current slice there (CPU parts: without --gpu)
        info["bench"] = bench_2048(model, args, device)
        info["slice_latency"] = bench_slice_latency(model, args.repeats, device)
        if args.json:
            Path(args.json).write_text(json.dumps(info, indent=1))
        print(json.dumps(info, indent=1))
        return
    cpu_model, _ = default_model("cpu")
    if not args.only_per_core:
        info["engines"] = bench_engines(cpu_model, args.repeats)
    info["per_core"] = bench_per_core(cpu_model, args.repeats)
    if args.only_engines or args.only_per_core:
        if args.json:
            Path(args.json).write_text(json.dumps(info, indent=1))
        return
    info["bench"] = bench_2048(model, args, device)
    info["slice_latency"] = bench_slice_latency(cpu_model, args.repeats)
    print(json.dumps(info["slice_latency"]), flush=True)
    if args.stack:
        info["stack_memory"] = bench_stack_memory([int(s) for s in args.stack.split(",")], args.stack_plane,
                                                    memory_limit_gb=args.memory_limit_gb)
    info["max_rss_mb_parent"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, out = platform.processor(), ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
    simd = " ".join(f for f in flags if f.startswith(("avx", "fma", "amx", "f16c")))
    return f"{name}, {os.cpu_count()} cores, flags: {simd or 'unknown'}"


if __name__ == "__main__":
    main()
