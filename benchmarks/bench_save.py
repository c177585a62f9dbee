"""Benchmark: save masks opened lazily (a large int32 labels stack read plane by plane from its file),
napari-unet's writer against tifffile writing the stack read whole.

Each writer runs in its own subprocess, so that the peak memory (``ru_maxrss``) of one does not
pollute the other. The labels are int32 (wider than 16 bits: the writer reads their lowest and
largest ids before writing; since 2026-12-07 in one pass, before in two).

Usage::

    python benchmarks/bench_save.py                  # 1 GB of int32 labels in a temp folder
    python benchmarks/bench_save.py --size-gb 2

Prints, per writer: seconds to write and the process's peak resident memory; then the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

PLANE = (2048, 2048)

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
import tifffile
src, out, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if how == "napari-unet":
    from napari_unet.io import write_labels
    from napari_unet.io._reader import read_layer_data
    ((data, _meta, _kind),) = read_layer_data(src, lazy=True)
    start = time.perf_counter()
    write_labels(out, data)
else:
    start = time.perf_counter()
    data = tifffile.imread(src)
    tifffile.imwrite(out, data.astype(np.uint16), compression="zlib")
took = time.perf_counter() - start
print(json.dumps({"s": took, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_labels(path: Path, size_gb: float) -> tuple[int, ...]:
    """Write a ZYX int32 labels TIFF of about ``size_gb`` GB plane by plane: 400 squares of 14 px a
    plane, ids from 1 in each plane (as Segment numbers them)."""
    import numpy as np
    import tifffile

    n = max(2, int(size_gb * 1e9 / (PLANE[0] * PLANE[1] * 4)))
    rng = np.random.default_rng(0)

    def planes():
        for _ in range(n):
            plane = np.zeros(PLANE, np.int32)
            for i, (y, x) in enumerate(rng.integers(20, PLANE[0] - 20, size=(400, 2)), start=1):
                plane[y - 7 : y + 7, x - 7 : x + 7] = i
            yield plane

    tifffile.imwrite(path, planes(), shape=(n, *PLANE), dtype=np.int32, compression="zlib", bigtiff=True)
    return (n, *PLANE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "labels.tif"
        shape = make_labels(src, args.size_gb)
        print(f"{platform.processor() or platform.machine()}; labels {shape} int32, {Path(src).stat().st_size / 1e6:.0f} MB on disk")
        results = {}
        for how in ("napari-unet", "tifffile whole"):
            out = Path(tmp) / f"out-{how.split()[0]}.tif"
            done = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), how], capture_output=True,
                                  text=True, check=True)
            results[how] = json.loads(done.stdout.strip().splitlines()[-1])
            out.unlink()
            print(f"{how:>15}: {results[how]['s']:.1f} s, peak {results[how]['peak_mb']:.0f} MB")
        ours, peer = results["napari-unet"], results["tifffile whole"]
        print(f"ratio napari-unet / tifffile: time {ours['s'] / peer['s']:.2f}, memory {ours['peak_mb'] / peer['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
