"""Whole-stack and folder segmentation through dask, on local threads or a dask.distributed cluster.

The stack is chunked by 2D plane (each chunk holds whole planes: the overlap that tiles
need lives inside a plane, so chunks need no overlap with each other). Each worker loads
the model once, segments its planes with :func:`napari_unet.core.segment`, and the labels
are streamed into an OME-Zarr (NGFF 0.4, zarr format 2) as planes finish: memory stays
bounded by (threads x one plane) whatever the size of the stack.

Example::

    from napari_unet.batch import segment_to_ome_zarr
    segment_to_ome_zarr(model, dask_stack, "out/cells_masks.ome.zarr",
                        scheduler="tcp://10.0.0.5:8786")
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from napari_unet._atomic import atomic_folder
from napari_unet.core.checkpoint import SegmentationModel, read_model_file
from napari_unet.core.device import select_device
from napari_unet.core.predict import stack_layout
from napari_unet.io import guess_axes

log = logging.getLogger(__name__)

__all__ = ["ModelSpec", "segment_to_ome_zarr", "write_ome_zarr_labels_metadata"]


def _readable_model_source(path: Any) -> bool:
    """Whether workers can load the model again from ``path``: a model file, or a BioImage.IO
    package (a zip, or a folder: a package made elsewhere cannot be serialised)."""
    from napari_unet.core.zoo_import import is_bioimageio_package

    return Path(path).is_file() or is_bioimageio_package(path)


class ModelSpec:
    """A picklable reference to a model that workers load once and keep.

    Holds the model file's path when the model came from a file that workers can read
    (shared file system), else the serialised model itself (a few MB).
    """

    #: The models loaded, the last used last: at most :data:`CACHED_MODELS` (a notebook's loop over
    #: models kept each, and through it its ONNX Runtime session: ~250 MB a paper-size network).
    _cache: ClassVar[OrderedDict[str, SegmentationModel]] = OrderedDict()
    _lock: ClassVar[threading.Lock] = threading.Lock()
    CACHED_MODELS: ClassVar[int] = 2

    def __init__(self, model: SegmentationModel, device: str | None = None, use_path: bool = True) -> None:
        path = model.metadata.get("path")
        self.device = device
        if use_path and path and _readable_model_source(path):
            self.path: str | None = str(path)
            self.payload: bytes | None = None
            self.key = f"{path}:{os.path.getmtime(path)}:{device or 'auto'}"
        else:
            import torch

            buf = io.BytesIO()
            torch.save(model.to_dict(), buf)
            self.path = None
            self.payload = buf.getvalue()
            self.key = f"{hashlib.sha1(self.payload).hexdigest()}:{device or 'auto'}"

    def __dask_tokenize__(self) -> str:
        return self.key

    def get(self) -> SegmentationModel:
        """The model, loaded on first use in this process (thread-safe)."""
        with ModelSpec._lock:
            model = ModelSpec._cache.get(self.key)
            if model is None:
                if self.path is not None:
                    # (no device given: each worker's best, as without dask; the CPU was taken before
                    # whatever the machine had)
                    model = read_model_file(self.path, device=self.device)
                else:
                    import torch

                    data = torch.load(io.BytesIO(self.payload), map_location="cpu", weights_only=True)
                    model = SegmentationModel.from_dict(data).to(select_device(self.device))
                ModelSpec._cache[self.key] = model
            ModelSpec._cache.move_to_end(self.key)
            while len(ModelSpec._cache) > ModelSpec.CACHED_MODELS:
                ModelSpec._cache.popitem(last=False)
        return model


def _segment_block(block: np.ndarray, spec: ModelSpec, options: dict[str, Any], rgb: bool) -> np.ndarray:
    """Segment every plane of one chunk (..., H, W[, 3]) -> (..., H, W) int32 (core's plane loop)."""
    from napari_unet.core.predict import segment

    model = spec.get()
    # one model per process: threads take turns on it (torch uses all cores per call anyway)
    with _model_locks.setdefault(spec.key, threading.Lock()):
        return segment(model, block, rgb=rgb, **options)


_model_locks: dict[str, threading.Lock] = {}


def _stack_diameter(model: SegmentationModel, image: Any, layout: Any, diameter: float | str | None,
                    **options: Any) -> float | str | None:
    """The diameter every plane of a stack is segmented at: "auto" told here, once, as the plain
    plane loop tells it (:func:`~napari_unet.core.predict.iter_planes`: on the first plane, or the
    next ones while none holds enough objects to measure), rather than by each plane's task on its
    own plane."""
    from napari_unet.core.predict import ESTIMATE_RETRY_PLANES, PlaneResult, iter_planes
    from napari_unet.core.scale import diameter_word

    auto = diameter_word(diameter) == "auto"
    planes = layout.indices()
    if not auto or model.object_size is None or len(planes) < 2:
        return diameter  # a number, "native", one plane, or a model that works at the image's own scale
    results = iter_planes(model, image, planes=planes[: ESTIMATE_RETRY_PLANES + 1], rgb=layout.rgb,
                          diameter=diameter, labels=False, **options)
    try:
        for item in results:
            if isinstance(item, PlaneResult) and item.diameter is not None:
                return float(item.diameter)
    finally:
        results.close()
    return "native"  # no objects on the planes looked at: the plain loop keeps the image's own scale


def _stack_colour(model: SegmentationModel, image: Any, layout: Any) -> int | str:
    """The colour every plane of an RGB stack is segmented in: told here once on the first plane,
    as the plain plane loop tells it (:func:`~napari_unet.core.channels.colour_to_segment`: a
    fluorescence merge's nuclear colour, or an immunohistochemistry image without its DAB; the colour a
    model was fine-tuned on), rather than by each plane's task on its own plane; "mean" for grey stacks
    and other colour images."""
    if not layout.rgb:
        return "mean"
    from napari_unet.core.predict import auto_colour
    from napari_unet.core.stack import read_filled_plane

    # infinite values get their own message before the colours are measured
    colour = auto_colour(model, read_filled_plane(image, layout.indices()[0])[0])
    return "mean" if colour is None else colour


def write_ome_zarr_labels_metadata(group: Any, axes: str, scale: Sequence[float | None] | None,
                                   name: str, translate: Sequence[float] | None = None,
                                   made_by: dict[str, Any] | None = None) -> None:
    """OME-NGFF 0.4 ``multiscales`` metadata (one level, dataset "0") on a zarr group; an axis
    without a pixel size (``scale`` None, or None for it) gets scale 1 and no unit. ``translate``:
    where the first pixel lies (the image's own translation: its masks lie over it). ``made_by``: the
    model and diameter of the run (see :func:`segment_to_ome_zarr`), kept in napari-unet's mark."""
    kinds = {"T": ("time", "second"), "C": ("channel", None), "Z": ("space", "micrometer"),
             "Y": ("space", "micrometer"), "X": ("space", "micrometer")}
    scale = list(scale) if scale is not None else [None] * len(axes)
    axes_meta = []
    for letter, size in zip(axes, scale):
        kind, unit = kinds.get(letter, ("space", None))
        entry: dict[str, Any] = {"name": letter.lower(), "type": kind}
        if unit and size is not None:  # not calibrated: no unit (a reader takes the scale for pixels)
            entry["unit"] = unit
        axes_meta.append(entry)
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": axes_meta,
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0 if s is None else float(s) for s in scale]}
                    ] + ([{"type": "translation", "translation": [float(t) for t in translate]}]
                         if translate is not None and len(translate) == len(axes) and any(translate) else []),
                }
            ],
        }
    ]
    group.attrs["image-label"] = {"version": "0.4"}  # labels (a standalone group: no source image path)
    from napari_unet.io._corrected import MADE_BY

    # a model's masks, none corrected (the reader's mark), and which model made them at what size
    group.attrs[MADE_BY] = {"masks": "segmented", **(made_by or {})}


def segment_to_ome_zarr(
    model: SegmentationModel,
    image: Any,
    out_path: str | os.PathLike,
    *,
    threshold: float | None = None,
    min_size: int | None = None,
    rgb: bool | None = None,
    diameter: float | str | None = "auto",
    scheduler: str | Any | None = None,
    tile_size: int | None = None,
    device: str | None = None,
    axes: str | None = None,
    scale: Sequence[float | None] | None = None,
    translate: Sequence[float] | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
    engine: str | None = None,
    objects_3d: dict[str, Any] | None = None,
    colour: int | str = "auto",
    unchanged: dict[str, Any] | None = None,
    made_by: dict[str, Any] | None = None,
) -> Path:
    """Segment a stack plane by plane with dask and write the labels to an OME-Zarr.

    Parameters
    ----------
    model : SegmentationModel
        The model (sent to workers once: by path when it came from a file, else serialised).
    image : array-like
        (..., H, W) or (..., H, W, 3); numpy, memory map, zarr or dask array. Only whole
        planes are read by each task.
    out_path : str or PathLike
        Destination folder (``.ome.zarr``); written under a temporary name and renamed
        when complete.
    threshold, min_size : float, int, optional
        Post-processing (see :func:`napari_unet.core.probabilities_to_labels`); None = the
        model's own (``model.postprocessing_for`` the kind of each plane).
    rgb : bool, optional
        Whether the last axis is colour (default: if it has 3 or 4 entries).
    colour : "auto", "mean", "without DAB" or int
        What of an RGB stack a 1-channel model segments (see :func:`napari_unet.core.predict.iter_planes`);
        "auto" is told once, on the first plane.
    diameter : float or "auto"
        Object diameter in pixels (see :func:`napari_unet.core.predict.iter_planes`); "auto"
        estimates it here on the first plane (the next ones while none holds enough objects to
        measure) and every plane's task segments at that size, as the plain plane loop does.
    scheduler : str or distributed.Client, optional
        None: dask's local threads. An address ("tcp://host:8786") or a ``Client``: that
        dask.distributed cluster (workers must be able to import napari_unet; the model
        path, if used, must be readable by them).
    tile_size, device, engine : optional
        Passed to :func:`napari_unet.core.segment` on the workers.
    axes : str, optional
        Axis letters of the labels (e.g. "TZYX"); default guessed from the number of axes.
    scale : sequence of float, optional
        Physical pixel size per labels axis (None for an axis without one: no unit is written).
    translate : sequence of float, optional
        Position of the first pixel per labels axis, in the units of ``scale`` (an OME-Zarr image's
        translation: its masks lie over it).
    overwrite : bool
        Replace an existing ``out_path``.
    show_progress : bool
        Print a progress bar (local: dask's ProgressBar; distributed: its progress bar).
    objects_3d : dict, optional
        3D objects instead of planes: keyword arguments of
        :func:`napari_unet.core.volume.iter_segment_volume` (``spacing``, ``mode``,
        ``orthogonal``; ``{}`` for the defaults). ``axes`` (or the guess) must hold Z; each
        (Z, Y, X) volume is segmented in this process, in blocks, and written to the OME-Zarr
        block by block (memory stays bounded); ``scheduler`` is refused.
    unchanged : dict, optional
        {path: :func:`~napari_unet._atomic.file_identity`} of what was at ``out_path`` when the caller
        decided to write it: when it changed since (masks corrected there while this ran), nothing is
        put in its place (:class:`~napari_unet._atomic.ChangedMeanwhile`).
    made_by : dict, optional
        The model that segments and the diameter typed, under a masks layer's metadata keys
        (:data:`~napari_unet.io._corrected.MODEL_KEY`, ``DIAMETER_KEY``; see ``record_model``): recorded
        with the masks (napari opens them proposing that model and diameter, as for ``predict``'s TIFFs).

    Returns
    -------
    Path
        ``out_path``; labels (..., H, W) int32 in its dataset "0".
    """
    import dask
    import dask.array as da
    import zarr

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; remove it or pass overwrite=True (--overwrite).")
    layout = stack_layout(tuple(image.shape), rgb)
    n_lead = len(layout.lead_shape)
    if objects_3d is not None:
        return _volumes_to_ome_zarr(model, image, out_path, layout, axes, (scale, translate), objects_3d, scheduler,
                                    dict(threshold=threshold, min_size=min_size, diameter=diameter,
                                         tile_size=tile_size, device=device, engine=engine), show_progress, unchanged,
                                    made_by)
    if not isinstance(image, da.Array):
        image = da.from_array(image, chunks=(1,) * n_lead + tuple(image.shape[n_lead:]), asarray=True)
    else:
        image = image.rechunk((1,) * n_lead + tuple(image.shape[n_lead:]))
    spec = ModelSpec(model, device=device)
    from napari_unet.core.instances import _check_args

    _check_args(*model.resolve_postprocessing(threshold, min_size))  # values given: before any task runs
    from napari_unet.core.channels import colour_choice

    colour = _stack_colour(model, image, layout) if colour_choice(colour) == "auto" else colour
    diameter = _stack_diameter(model, image, layout, diameter, threshold=threshold, min_size=min_size,
                               tile_size=tile_size, device=device, engine=engine, colour=colour)
    options = {"threshold": threshold, "min_size": min_size, "tile_size": tile_size, "diameter": diameter,
               "engine": engine, "colour": colour}
    drop = (image.ndim - 1,) if layout.rgb else ()
    labels = image.map_blocks(
        _segment_block, spec, options, layout.rgb,
        dtype=np.int32, drop_axis=drop, chunks=image.chunks[: n_lead + 2],
        name="napari-unet-segment-" + uuid.uuid4().hex[:8],
    )
    axes = axes or guess_axes(labels.shape)
    if len(axes) != labels.ndim:
        raise ValueError(f"axes {axes!r} has {len(axes)} letters but the labels have {labels.ndim} axes.")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out_path, unchanged) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        chunk_plane = tuple(min(s, 2048) for s in layout.plane_shape)
        target = group.create_array(
            "0", shape=labels.shape, chunks=(1,) * n_lead + chunk_plane, dtype=np.int32, fill_value=0,
        )
        write_ome_zarr_labels_metadata(group, axes, scale, out_path.name.split(".")[0], translate, made_by)
        store = da.store(labels, target, lock=False, compute=False)
        _compute(store, scheduler, show_progress, dask)
    return out_path


def _volumes_to_ome_zarr(model: SegmentationModel, image: Any, out_path: Path, layout: Any, axes: str | None,
                         calibration: tuple[Any, Any], objects_3d: dict[str, Any], scheduler: Any,
                         options: dict[str, Any], show_progress: bool, unchanged: dict[str, Any] | None = None,
                         made_by: dict[str, Any] | None = None) -> Path:
    """3D objects of every (Z, Y, X) volume of ``image``, written block by block to an OME-Zarr
    (``calibration``: its scale and translate, as :func:`segment_to_ome_zarr` takes them)."""
    import zarr

    from napari_unet.core.events import Progress, run_to_end
    from napari_unet.core.volume import iter_segment_stack_3d

    if scheduler is not None:
        raise ValueError("3D objects are computed in this process (whole volumes, in blocks): drop the scheduler.")
    if layout.rgb:
        raise ValueError("3D objects need a grey z-stack, not an RGB one.")
    axes = (axes or guess_axes(image.shape)).upper()
    if len(axes) != len(image.shape):
        raise ValueError(f"axes {axes!r} has {len(axes)} letters but the image has {len(image.shape)} axes.")
    if "Z" not in axes:
        raise ValueError(f"3D objects need a Z axis, but the axes are {axes!r}.")
    shape = tuple(int(s) for s in image.shape)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out_path, unchanged) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        chunks = tuple(1 if a not in "ZYX" else (min(s, 64) if a == "Z" else min(s, 512)) for a, s in zip(axes, shape))
        target = group.create_array("0", shape=shape, chunks=chunks, dtype=np.int32, fill_value=0)
        # (3D objects, whose ids the planes share, said as a TIFF's list says it: a plane segmented again in
        # 2D after they are reopened numbers its objects above theirs, not from 1 over other nuclei's ids)
        write_ome_zarr_labels_metadata(group, axes, calibration[0], out_path.name.split(".")[0], calibration[1],
                                       {**(made_by or {}), "objects_3d": True})
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=None, desc=out_path.name, unit="step", leave=False)

        said: set[str] = set()

        def show(event: Any) -> None:
            if not isinstance(event, Progress):  # a note of the 3D path (a voxel size assumed...): once
                message = getattr(event, "message", None)  # (None: no note, a volume's size for Segment's dock)
                if message is not None and message not in said:
                    said.add(message)
                    log.warning("%s", message)
                return
            if bar is not None:
                bar.total = event.total
                bar.update(event.done - bar.n)

        try:
            run_to_end(iter_segment_stack_3d(model, image, axes, out=target, **objects_3d, **options), show)
        finally:
            if bar is not None:
                bar.close()
    return out_path


def _compute(task: Any, scheduler: str | Any | None, show_progress: bool, dask: Any) -> None:
    if scheduler is None:
        if show_progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr):  # (on stdout it was glued to the "input -> output" lines)
                dask.compute(task, scheduler="threads")
        else:
            dask.compute(task, scheduler="threads")
        return
    from distributed import Client

    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        future = client.compute(task)
        if show_progress:
            import contextlib

            from distributed import progress

            with contextlib.redirect_stdout(sys.stderr):  # (stdout lists the masks written)
                progress(future)
        future.result()
    finally:
        if own:
            client.close()
