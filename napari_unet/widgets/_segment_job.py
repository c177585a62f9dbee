"""The Segment widget's worker body: load the model (cached), then core's plane loop.

Runs in a napari thread worker; everything it yields goes back to the widget on the main
thread (progress, and one :class:`~napari_unet.core.predict.PlaneResult` per plane).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

#: Pixels of real image context added around a field of view before predicting.
VIEW_CONTEXT = 32


def _load_model_cached(cache: dict, path: str, device: str | None):
    from napari_unet.core.checkpoint import read_model_file

    key = (path, Path(path).stat().st_mtime_ns, device)
    if key not in cache:
        cache.clear()
        cache[key] = read_model_file(path, device=device)
    return cache[key]


@dataclasses.dataclass(frozen=True)
class EmptyPlane:
    """Yielded by :func:`segment_planes` after a plane in which nothing was found, with why as the
    plane loop told it (``PlaneResult.blank``)."""

    index: tuple[int, ...]
    constant: bool  # the segmented part of the plane holds one value only
    noise: bool = False  # ... or camera noise alone (core.preprocess.is_camera_noise)
    no_data: bool = False  # ... or no data at all (NaN, a black border: core.preprocess.fill_missing)
    in_view: bool = False  # only the part of the plane in view was segmented (the field of view)


@dataclasses.dataclass(frozen=True)
class RunNote:
    """Yielded by :func:`segment_planes`: what the user should know of the run, said once."""

    message: str


def segment_planes(
    model_path: str,
    data,
    planes: list[tuple[int, ...]],
    region: tuple[slice, slice],
    *,
    rgb: bool,
    colour: Any = "auto",
    threshold: float | None,
    min_size: int | None,
    diameter: float | None = None,
    model_cache: dict | None = None,
    device: str | None = None,
    size_planes: list[tuple[int, ...]] | None = None,
) -> Generator[Any, None, None]:
    """Worker body: loads the model, then core's plane loop (``threshold`` / ``min_size`` None: the
    model's own for the kind of image; ``colour``: of an RGB image, what is segmented, see
    ``iter_planes``); Progress events and one :class:`~napari_unet.core.predict.PlaneResult` per plane, probabilities as float16), and
    an :class:`EmptyPlane` after a plane where nothing was found. ``size_planes``: other planes the
    automatic diameter may be measured on (see ``iter_planes``)."""
    from napari_unet.core.events import Progress
    from napari_unet.core.predict import PlaneResult, iter_planes

    yield Progress(0, len(planes), message="Loading the model")
    plane_shape = tuple(int(n) for n in data.shape[data.ndim - (3 if rgb else 2):][:2])  # (a part: a field of view)
    model = _load_model_cached(model_cache if model_cache is not None else {}, model_path, device)
    packaged = getattr(model.net, "packaged_engine", None)  # (a BioImage.IO package runs its own weights)
    if packaged is not None:
        from napari_unet.core.engine import resolve_engine

        choice = packaged(resolve_engine(None, model.device))
        if choice.name == "onnx" and choice.reason:  # (the device line says the GPU)
            yield RunNote(f"{model.name} runs through ONNX Runtime, {choice.reason}.")
    for item in iter_planes(model, data, planes=planes, region=region, context=VIEW_CONTEXT, rgb=rgb,
                            colour=colour, diameter=diameter, threshold=threshold, min_size=min_size,
                            size_planes=size_planes):
        if isinstance(item, PlaneResult):  # kept for re-thresholding: half the memory
            item = dataclasses.replace(item, probabilities=item.probabilities.astype(np.float16))
        yield item
        if isinstance(item, PlaneResult) and item.labels is not None and not item.labels.any():
            yield EmptyPlane(item.index, item.blank == "constant", item.blank == "noise", item.blank == "no data",
                             in_view=tuple(item.labels.shape) != plane_shape)
