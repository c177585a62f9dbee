"""``napari-unet predict INPUT... --out DIR``: segment images, stacks and folders.

Writes ``DIR/<stem>_masks.tif`` (int labels, the input's stack axes and pixel size) for
each input; with ``--dask`` (or ``--scheduler ADDRESS``) ``DIR/<stem>_masks.ome.zarr``,
computed plane by plane on dask's local threads or a dask.distributed cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from . import CLIError

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images, stacks or folders of images",
        description="Segment cells in images, stacks or folders; writes DIR/<stem>_masks.tif per input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or stack files (TIFF, OME-Zarr, PNG, JPEG) or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created if missing)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="model name (see 'napari-unet models') or .pt file; default: the built-in model")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"),
                   help="what runs the network (default: ONNX Runtime on the CPU, torch on a GPU; "
                        "or NAPARI_UNET_ENGINE)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold in (0, 1) (default: the model's own, usually about 0.5)")
    p.add_argument("--min-size", type=int, default=None,
                   help="remove objects smaller than this many pixels (default: the model's own)")
    p.add_argument("--tile", type=int, default=None, metavar="PIXELS",
                   help="largest tile side (default: from free memory)")
    p.add_argument("--channel", type=int, default=None,
                   help="channel to segment in a multi-channel (non-RGB) stack")
    p.add_argument("--folder-as-stack", action="store_true",
                   help="read each folder of 2D images as one stack (one masks file) instead of image by image")
    p.add_argument("--dask", action="store_true", help="compute through dask, writing OME-Zarr")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (implies --dask)")
    p.add_argument("--overwrite", action="store_true", help="replace existing masks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _expand_inputs(inputs: list[str], folder_as_stack: bool = False) -> list[Path]:
    """Files as given; folders of images are expanded (one input per image), except OME-Zarr
    folders and, with ``folder_as_stack``, every folder (read as one stack)."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text).expanduser()
        if not path.exists():
            raise CLIError(f"input not found: {path}")
        if path.is_dir() and not (folder_as_stack or _is_stack_folder(path)):
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
                           and not p.name.startswith("."))
            if not found:
                raise CLIError(f"folder {path} holds no images ({', '.join(_IMAGE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _is_stack_folder(path: Path) -> bool:
    """An OME-Zarr folder is one stack (a folder of plain images is a list of inputs)."""
    return path.suffix.lower() == ".zarr" or (path / ".zattrs").exists() or (path / "zarr.json").exists()


def _read(path: Path) -> tuple[Any, str, dict[str, float]]:
    """(array, axes, scale per axis letter) of an input."""
    try:
        from napari_unet.io import read_stack
    except ImportError:  # io/__init__ does not export it (yet)
        from napari_unet.io._reader import read_stack
    data, info = read_stack(path)
    return data, info.axes, dict(info.scale)


def _write_tif(path: Path, labels: Any, axes: str, scale: dict[str, float]) -> None:
    try:
        from napari_unet.io import write_labels
    except ImportError:
        from napari_unet.io._writer import write_labels
    write_labels(path, labels, scale=[scale.get(a, 1.0) for a in axes], axes=axes)


def _select_channel(data: Any, axes: str, channel: int | None, name: str) -> tuple[Any, str]:
    if "C" not in axes:
        return data, axes
    c_axis = axes.index("C")
    n = data.shape[c_axis]
    if channel is None:
        if n != 1:
            raise CLIError(f"{name} has {n} channels (axes {axes}); choose one with --channel 0..{n - 1}")
        channel = 0
    if not 0 <= channel < n:
        raise CLIError(f"{name} has {n} channels; --channel must be in 0..{n - 1}")
    index = (slice(None),) * c_axis + (channel,)
    return data[index], axes.replace("C", "")


def run(args: argparse.Namespace) -> int:
    from napari_unet.core import load_model
    from napari_unet.core.instances import _check_args

    use_dask = args.dask or args.scheduler is not None
    inputs = _expand_inputs(args.inputs, args.folder_as_stack)
    out_dir = Path(args.out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = None if args.device == "auto" else args.device
    model = load_model(args.model, device=device)
    from napari_unet.core.engine import resolve_engine

    engine = resolve_engine(args.engine, model.device)
    log.info("model %s on %s, engine %s", model.name, model.device, engine.describe())
    if engine.reason:
        print(f"napari-unet: the network runs with {engine.describe()}", file=sys.stderr)
    # the model's own post-processing unless given
    args.threshold, args.min_size = model.resolve_postprocessing(args.threshold, args.min_size)
    _check_args(args.threshold, args.min_size)
    for path in inputs:
        name = path.name
        stem = name.split(".")[0] if name.lower().endswith((".ome.tif", ".ome.tiff", ".ome.zarr")) else path.stem
        data, axes, scale = _read(path)
        data, axes = _select_channel(data, axes, args.channel, name)
        rgb = axes.endswith("S")
        label_axes = axes[:-1] if rgb else axes
        if use_dask:
            from napari_unet.batch import segment_to_ome_zarr

            target = out_dir / f"{stem}_masks.ome.zarr"
            segment_to_ome_zarr(
                model, data, target, threshold=args.threshold, min_size=args.min_size, rgb=rgb,
                scheduler=args.scheduler, tile_size=args.tile, axes=label_axes,
                scale=[scale.get(a, 1.0) for a in label_axes], overwrite=args.overwrite,
                show_progress=not args.no_progress, engine=args.engine,
            )
        else:
            target = out_dir / f"{stem}_masks.tif"
            if target.exists() and not args.overwrite:
                raise CLIError(f"{target} exists; pass --overwrite to replace it")
            labels = _segment_with_bar(model, data, rgb, args, name)
            _write_tif(target, labels, label_axes, scale)
        print(f"{path} -> {target}")
    return 0


def _segment_with_bar(model: Any, data: Any, rgb: bool, args: argparse.Namespace, name: str) -> Any:
    from tqdm import tqdm

    from napari_unet.core.predict import iter_segment

    gen = iter_segment(model, data, threshold=args.threshold, min_size=args.min_size, rgb=rgb,
                       tile_size=args.tile, engine=args.engine)
    bar = tqdm(total=None, desc=name, unit="tile", disable=args.no_progress, file=sys.stderr, leave=False)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if bar.total != event.total:
                bar.total = event.total
            bar.update(event.done - bar.n)
    finally:
        gen.close()
        bar.close()
