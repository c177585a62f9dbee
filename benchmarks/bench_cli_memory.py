"""Memory of `napari-unet predict` on a stack read lazily: plain TIFF output against --dask.

A stack over 1 GiB is read lazily (dask); its labels must not be held whole in memory. This script
makes 8-bit TYX stacks of a few sizes (mostly blank planes, so the network runs little and the
figures are the labels' handling), forces the lazy read whatever their size, and prints the peak of
Python-traced memory (numpy reports its buffers to tracemalloc) of each way to segment them, each in
a fresh process. Growth with the stack is what matters: the fixed part is the model and the imports.

    python benchmarks/bench_cli_memory.py [--planes 300 900] [--model nuclei]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, tracemalloc
import napari_unet.io._reader as reader
reader.LAZY_THRESHOLD_BYTES = 0  # what a stack over 1 GiB gets
from napari_unet.cli import main
args = json.loads(sys.argv[1])
main(["predict", args["path"], "--out", args["out"], "--no-progress", "--diameter", "17", "--overwrite",
      "--model", args["model"]] + (["--dask"] if args["dask"] else []))  # a first run: imports made
tracemalloc.start()
rc = main(["predict", args["path"], "--out", args["out"], "--no-progress", "--diameter", "17", "--overwrite",
           "--model", args["model"]] + (["--dask"] if args["dask"] else []))
print(json.dumps({"rc": rc, "peak": tracemalloc.get_traced_memory()[1]}))
"""


def make_stack(path: Path, planes: int) -> int:
    import numpy as np
    import tifffile

    stack = np.full((planes, 256, 256), 7, np.uint8)
    stack[0, 64:96, 64:96] = 200  # one object on the first plane: the rest is blank
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX"})
    return stack.nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[300, 900])
    parser.add_argument("--model", default="nuclei")
    args = parser.parse_args()
    print("| planes (256 x 256, 8-bit) | input MB | labels as int32 MB | plain TIFF: peak traced MB | --dask: peak traced MB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for planes in args.planes:
            path = Path(tmp) / f"stack{planes}.tif"
            nbytes = make_stack(path, planes)
            peaks = []
            for dask in (False, True):
                spec = {"path": str(path), "out": str(Path(tmp) / "out"), "model": args.model, "dask": dask}
                done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                                      check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                peaks.append(result["peak"] / 1e6)
            print(f"| {planes} | {nbytes / 1e6:.1f} | {4 * nbytes / 1e6:.0f} | {peaks[0]:.0f} | {peaks[1]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
