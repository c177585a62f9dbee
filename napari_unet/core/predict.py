"""Tiled U-Net inference: probabilities and instance labels for images of any size.

Public API (all also available from :mod:`napari_unet.core`):

* :func:`iter_predict_probabilities` / :func:`predict_probabilities`: class probabilities.
* :func:`iter_segment` / :func:`segment`: int32 instance labels.
* :func:`probabilities_to_labels`: labels from kept probabilities (new threshold or
  minimum size without running the network again).

The ``iter_*`` forms are generators: they yield a :class:`~napari_unet.core.events.Progress`
after every tile and *return* the result (``StopIteration.value``; ``result = yield from
gen`` in a generator, or a napari ``thread_worker``'s ``returned`` signal). They stop
between tiles when closed (``gen.close()``) or when ``should_stop()`` returns True
(:class:`PredictionStopped` is raised). The plain functions run them to the end.

Images: a 2D plane (H, W) or (H, W, 3) RGB, or a stack of them (..., H, W) /
(..., H, W, 3) with at most two extra axes (e.g. time and z), processed plane by plane.
Arrays may be lazy (memory maps, zarr, dask): only one plane is read at a time, and an
``out`` array (memory map, zarr) keeps memory bounded for stacks larger than RAM.

The overlap-tile geometry is in :mod:`napari_unet.core.tiling`; post-processing in
:mod:`napari_unet.core.instances`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet._shapes import channels_last

from .channels import colour_plane
from .checkpoint import SegmentationModel
from .device import free_memory_bytes, select_device
from .engine import NetworkRunner
from .events import Progress, run_to_end
from .instances import probabilities_to_labels
from .preprocess import (
    OUTLIER_CLIP,
    ImageError,
    bright_outliers_level,
    clipped_at,
    is_camera_noise,
    is_constant,
    without_camera_artefacts,
)
from .scale import MAX_SCALE, MIN_OBJECTS, MIN_SCALE, min_size_at, surroundings
from .stack import MAX_STACK_AXES, StackLayout, Window, read_filled_plane, stack_layout  # noqa: F401  (MAX_STACK_AXES: re-exported)
from .tiling import TilePlan, choose_tile_and_batch, mirror_pad, plan_tiles

log = logging.getLogger(__name__)

#: Memory for activations on the CPU (bytes); a quarter of the free memory if less.
CPU_MEMORY_BUDGET = 3 * 1024**3
#: Fraction of the GPU's free memory used for activations.
GPU_MEMORY_FRACTION = 0.5

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

__all__ = [
    "PlaneResult",
    "PredictionStopped",
    "iter_planes",
    "iter_rethreshold",
    "iter_predict_probabilities",
    "iter_segment",
    "predict_probabilities",
    "probabilities_to_labels",
    "run_to_end",
    "segment",
    "stack_layout",
]


class PredictionStopped(RuntimeError):
    """Raised inside a prediction generator when ``should_stop()`` returned True."""


# --------------------------------------------------------------------- engine
def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    # (cuDNN's and cuBLAS's own words for it, raised as plain RuntimeErrors on large tiles)
    return isinstance(exc, RuntimeError) and any(words in text for words in (
        "out of memory", "can't allocate memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed",
        "cudnn_status_not_enough_workspace"))


def _cpu_budget() -> int:
    from napari_unet._memory import available_memory

    free = available_memory()  # (0 is a cgroup's limit reached: no room, not "unknown")
    return int(min(CPU_MEMORY_BUDGET, (8 * 1024**3 if free is None else free) // 4))


def activation_budget(device: torch.device) -> int:
    """Bytes a forward pass's activations may take on ``device``."""
    if device.type == "cuda":
        return int((free_memory_bytes(device) or 4 * 1024**3) * GPU_MEMORY_FRACTION)
    return _cpu_budget()


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        from .device import cuda_has_fast_bf16

        return torch.bfloat16 if cuda_has_fast_bf16(device) else torch.float16
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("fp16 is not supported on the CPU; use fp32 or bf16.")
    return dtype


class _Engine:
    """Runs the network over the tiles of planes; keeps tile and batch sizes across planes."""

    def __init__(
        self,
        model: SegmentationModel,
        device: str | torch.device | None = None,
        tile_size: int | None = None,
        batch_size: int | None = None,
        halo: int | None = None,
        precision: str = "auto",
        channels_last: bool | None = None,
        engine: str | None = None,
    ) -> None:
        self.model = model
        if device is not None:
            model.to(select_device(device))
        self.device = model.device
        self.net = model.net
        self.amp_dtype = _resolve_precision(precision, self.device)
        bytes_per_value = 2 if self.amp_dtype is not None else 4
        auto_tile, auto_batch = choose_tile_and_batch(self.net, activation_budget(self.device), bytes_per_value)
        if self.device.type == "cpu":
            auto_batch = 1  # on a CPU one big tile beats several small ones
        self.max_tile = int(tile_size) if tile_size else auto_tile
        largest = getattr(self.net, "max_tile", None)  # networks of packages that take one tile size
        if largest:
            self.max_tile = min(self.max_tile, int(largest))
        self.batch_size = int(batch_size) if batch_size else auto_batch
        if self.max_tile < 1 or self.batch_size < 1:
            raise ValueError("tile_size and batch_size must be positive.")
        from .tiling import default_halo, min_tile_size, tile_context

        context = tile_context(self.net)
        if tile_size and int(tile_size) <= 2 * context:  # each tile would add a few pixels (128: 45x slower)
            raise ValueError(f"tile_size {int(tile_size)} is too small for this model: each tile re-reads {context} "
                             f"pixels on each side; give at least {min_tile_size(self.net)}, or None for automatic.")
        if halo is not None:
            if not math.isfinite(float(halo)) or not float(halo) == int(halo) or int(halo) < 0:
                raise ValueError(f"halo must be a whole number of pixels >= 0 (or None for the model's own), got {halo!r}.")
            # more context than the network sees changes nothing but the time (and memory: a halo of
            # 5000 px took 24 GB)
            halo = min(int(halo), default_halo(self.net))
        self.halo = halo
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.n_classes = self.net.config.n_classes
        self._said_constant = False
        self.run_net: torch.nn.Module | None = None  # built on first use, in eval mode
        # ONNX Runtime on the CPU unless torch is asked for (see core.engine)
        self.runner = NetworkRunner(self.net, self.device, engine, self.amp_dtype is not None)
        self._plan_cache: dict[tuple[int, int], TilePlan] = {}
        log.debug(
            "inference on %s: max tile %d, batch %d, autocast %s",
            self.device, self.max_tile, self.batch_size, self.amp_dtype,
        )

    def plan(self, shape: tuple[int, int]) -> TilePlan:
        if shape not in self._plan_cache:
            self._plan_cache[shape] = plan_tiles(shape, self.net, self.max_tile, self.halo)
        return self._plan_cache[shape]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        probs = self.runner.probabilities(batch)
        if probs is not None:
            return probs
        from .device import device_lock

        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with device_lock(self.device):  # (Apple's GPU: one thread at a time)
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # inference_mode is thread-local state: enter it around the forward pass only, never
            # across a yield, or a generator abandoned in a pooled worker thread leaks it there.
            with torch.inference_mode():
                if self.run_net is None:
                    self.run_net = inference_net(self.net, self.channels_last)
                with autocast:
                    logits = self.run_net(x)
            probs = torch.softmax(logits.float(), dim=1)
            return probs.cpu().numpy()

    def iter_plane(self, plane: np.ndarray, counter: Callable[[], None]) -> Generator[None, None, np.ndarray]:
        """Probabilities (n_classes, H, W) of one plane; yields after each tile."""
        shape = (int(plane.shape[0]), int(plane.shape[1]))
        if is_constant(plane):
            if not self._said_constant:  # once per engine: the estimation passes see the plane again
                log.warning("A plane of the image is constant: nothing to segment there (empty labels).")
                self._said_constant = True
            plan = self.plan(shape)
            for _ in range(plan.n_tiles):
                counter()
                yield
            probs = np.zeros((self.n_classes, *shape), dtype=np.float32)
            probs[0] = 1.0
            return probs
        chw = self.model.prepare_plane(plane)
        while True:
            plan = self.plan(shape)
            padded = mirror_pad(chw, plan)
            # the plane is kept as the padded copy's centre (a view): one copy of it, not two
            (yb, _), (xb, _) = plan.pad_width()
            chw = padded[:, yb : yb + shape[0], xb : xb + shape[1]]
            try:
                return (yield from self._iter_tiles(padded, shape, plan, counter))
            except _Replan:
                continue

    def _iter_tiles(self, padded: np.ndarray, shape: tuple[int, int], plan: TilePlan,
                    counter: Callable[[], None]) -> Generator[None, None, np.ndarray]:
        out = np.empty((self.n_classes, *shape), dtype=np.float32)
        ty, tx = plan.tile_shape
        placements = plan.placements()
        pos = 0
        while pos < len(placements):
            chunk = placements[pos : pos + self.batch_size]
            batch = np.stack([padded[:, y : y + ty, x : x + tx] for (y, x), _, _ in chunk])
            try:
                probs = self._forward(batch)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                self._shrink_after_oom(plan)
                continue
            for (_, window, kept), p in zip(chunk, probs, strict=True):
                out[(slice(None), *window)] = p[(slice(None), *kept)]
                counter()
                yield
            pos += len(chunk)
        if plan.n_tiles > 1:  # a plane of several tiles: its post-processing needs the arena's memory
            batch = probs = p = None  # (ONNX Runtime's output lies in its arena: kept, it keeps a part of it)
            self.runner.release_memory()
        return out

    def _shrink_after_oom(self, plan: TilePlan) -> None:
        from .device import empty_cache

        empty_cache(self.device)
        if self.batch_size > 1:
            self.batch_size //= 2
            log.warning("Out of memory: %d tiles per batch from now on.", self.batch_size)
            return
        smallest = plan_tiles((1, 1), self.net, 1, self.halo).tile_shape[0]
        if max(plan.tile_shape) <= smallest:
            raise MemoryError(
                "Out of memory even with the smallest tile; close other programs"
                + (" or use the CPU (--device cpu, or NAPARI_UNET_DEVICE=cpu for napari)."
                   if self.device.type != "cpu" else ", or segment a smaller part of the image.")
            )
        self.max_tile = max(smallest, max(plan.tile_shape) // 2)
        self._plan_cache.clear()
        log.warning("Out of memory: tiles of at most %d pixels from now on.", self.max_tile)
        raise _Replan


class _Replan(Exception):
    pass


_INFERENCE_NETS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, torch.nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def _fingerprint(net: torch.nn.Module, channels_last: bool) -> tuple[Any, ...]:
    """Changes whenever weights or statistics change in place (optimiser steps, loading)."""
    tensors = list(net.parameters()) + list(net.buffers())
    return (channels_last, str(tensors[0].device), tuple(t._version for t in tensors), tuple(id(t) for t in tensors))


def inference_net(net: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """An eval-mode copy of ``net`` with batch normalisation folded into the convolutions.

    Same results to float rounding, one pass less over every feature map. The copy is
    cached and rebuilt when ``net``'s weights change (e.g. after fine-tuning steps);
    ``net`` itself is never modified. Networks without batch normalisation are used as
    they are (unless ``channels_last`` asks for a converted copy).
    """
    from .model import DoubleConv

    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    if not has_bn and not channels_last:
        return net
    key = _fingerprint(net, channels_last)
    cached = _INFERENCE_NETS.get(net)
    if cached is not None and cached[0] == key:
        return cached[1]
    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if isinstance(module, DoubleConv):
            module.fuse_batch_norm()
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    for p in fused.parameters():
        p.requires_grad_(False)
    _INFERENCE_NETS[net] = (key, fused)
    return fused


@contextlib.contextmanager
def _eval_mode(net: torch.nn.Module):
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        if was_training:
            net.train()


def _allocate(out: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    if out is None:
        return np.zeros(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}.")
    check_out_dtype(out, dtype)
    return out


def stop_check(should_stop: Any) -> Callable[[], bool] | None:
    """``should_stop`` as a callable: a ``threading.Event`` (what ``finetune(stop=)`` takes) is
    asked ``is_set()`` (it was called, a TypeError)."""
    if should_stop is None or callable(should_stop):
        return should_stop
    if callable(getattr(should_stop, "is_set", None)):
        return should_stop.is_set
    raise TypeError(f"should_stop must be a callable returning True to stop, or a threading.Event; got "
                    f"{type(should_stop).__name__}.")


def check_out_dtype(out: Any, dtype: Any) -> None:
    """A clear ValueError when ``out`` cannot hold what is written into it: labels need integers of 32
    bits or more (uint8 or uint16 wrapped ids above 255 or 65,535 onto others: objects merged and
    erased, silently), probabilities floats."""
    have = np.dtype(getattr(out, "dtype", np.float64))
    want = np.dtype(dtype)
    if want.kind in "iu" and (have.kind not in "iu" or have.itemsize < 4):
        raise ValueError(f"out must be an integer array of 32 bits or more (int32, uint32, int64) to hold the label "
                         f"ids, got {have}: ids beyond its range would wrap onto others.")
    if want.kind == "f" and have.kind != "f":
        raise ValueError(f"out must be a float array to hold probabilities, got {have}.")


# --------------------------------------------------------------------- the plane loop
def _prepare(model: SegmentationModel, image: Any, rgb: bool | None) -> tuple[Any, StackLayout]:
    """Check the model, make ``image`` indexable and split it into planes."""
    if not isinstance(model, SegmentationModel):
        raise TypeError(
            f"model must be a SegmentationModel (see napari_unet.core.load_model), got {type(model).__name__}."
        )
    if isinstance(image, (str, os.PathLike)):
        raise ImageError(f"image must be an array, got the path {str(image)!r}: read it first (napari_unet.io or "
                         "tifffile.imread).")
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        not_one_array = ImageError("image must be one array (a plane or a stack of planes of one size); segment "
                                   "images of different sizes one at a time.")
        try:
            image = np.asarray(image)
        except ValueError:  # a list of planes of different sizes
            raise not_one_array from None
        if image.dtype == object:
            raise not_one_array
    if rgb is not True and channels_last(tuple(image.shape)) and int(image.shape[-1]) == 1:
        image = image[..., 0]  # (H, W, 1): one channel last (as the readers take it), the plane itself
    return image, stack_layout(tuple(image.shape), rgb)


@dataclass(frozen=True)
class PlaneResult:
    """What :func:`iter_planes` made of one plane (or of a window of it).

    Attributes
    ----------
    index : tuple of int
        The plane's index along the stack axes; () for a 2D image.
    region : (slice, slice)
        The part of the plane that ``labels`` covers (plane coordinates, concrete bounds).
    labels : ndarray or None
        int32 instance labels of ``region``'s shape (numbered from 1 in this region), or
        None when only probabilities were asked for.
    probabilities : ndarray
        (n_classes, h, w) float32 probabilities over the window that was predicted: the
        region plus up to ``context`` pixels of real image around it.
    inner : (slice, slice)
        Where ``region`` lies inside ``probabilities``.
    representation : str
        How the classes turn into instances (see :func:`probabilities_to_labels`).
    diameter : float or None
        Object diameter (image pixels) used: given, or estimated; None if unknown.
    scale : float
        Factor the plane was rescaled by before the network (1: its own scale).
    note : str
        What the user should know about the sizing ("" when all went as expected).
    min_seed : int
        The model's smallest seed (pixels at its scale; see ``SegmentationModel.min_seed_for``).
    kind : str or None
        The kind of image whose own post-processing the model used (see
        ``SegmentationModel.postprocessing_by_kind``); None when it used its general one.
    colour : int, str or None
        The colour of an RGB image that was segmented on its own (0 red, 1 green, 2 blue; see
        :func:`~napari_unet.core.channels.nuclear_colour`), or
        :data:`~napari_unet.core.channels.WITHOUT_DAB` (the image without its brown DAB stain); None: a
        grey plane, or the mean of the colours.
    blank : {"constant", "noise", "no data"} or None
        Why nothing was segmented, when the plane (the window that was predicted, as the network
        got it: hot pixels out, the colour chosen) had nothing to segment: one value only, camera
        noise alone (:func:`~napari_unet.core.preprocess.is_camera_noise`), or no data in the region
        segmented (NaN, a black border: :func:`~napari_unet.core.preprocess.fill_missing`); None
        otherwise.
    clipped : float or None
        The value the plane was clipped at because a few objects far brighter than the others (debris,
        dead cells) set its brightness range (:func:`~napari_unet.core.preprocess.bright_outliers_level`;
        said by :data:`OUTLIERS_NOTE`); with ``outliers="measure"`` the value it would be clipped at
        (it was not); None when it was not.
    provisional : bool
        True when the plane was segmented at its own scale while the object size was still looked for
        (nothing found to size on yet): it comes again at the size found, when one is found, and that
        later result is the one that counts.
    """

    index: tuple[int, ...]
    region: Window
    labels: np.ndarray | None
    probabilities: np.ndarray
    inner: Window
    representation: str
    diameter: float | None = None
    scale: float = 1.0
    note: str = ""
    min_seed: int = 0
    kind: str | None = None
    colour: int | str | None = None
    blank: str | None = None
    clipped: float | None = None
    provisional: bool = False

    def relabel(self, threshold: float, min_size: int) -> "PlaneResult":
        """The same plane post-processed with another threshold / minimum size (no network run)."""
        probs = self.probabilities.astype(np.float32, copy=False)
        labels = probabilities_to_labels(probs, threshold, min_size_at(min_size, self.scale), self.representation,
                                         min_seed=min_size_at(self.min_seed, self.scale))
        return dataclasses.replace(self, labels=labels[self.inner].astype(np.int32, copy=False))


def plane_window(region: Window | None, plane_shape: tuple[int, int], context: int) -> tuple[Window, Window, Window]:
    """``(region, window, inner)``: a region of a plane with concrete bounds, the region grown by
    ``context`` pixels of real image (clipped to the plane), and the region inside that window."""
    region = region or (slice(None), slice(None))
    bounds = [sl.indices(n)[:2] for sl, n in zip(region, plane_shape)]
    if any(stop <= start for start, stop in bounds):
        raise ImageError(f"The region to segment is empty ({region} of a {plane_shape} plane).")
    grown = [(max(0, a - context), min(n, b + context)) for (a, b), n in zip(bounds, plane_shape)]
    as_slices = lambda pairs: (slice(*pairs[0]), slice(*pairs[1]))  # noqa: E731
    inner = [(a - g0, b - g0) for (a, b), (g0, _g1) in zip(bounds, grown)]
    return as_slices(bounds), as_slices(grown), as_slices(inner)


def iter_planes(
    model: SegmentationModel,
    image: Any,
    *,
    planes: list[tuple[int, ...]] | None = None,
    region: Window | None = None,
    context: int = 0,
    rgb: bool | None = None,
    diameter: float | str | None = "auto",
    threshold: float | None = None,
    min_size: int | None = None,
    labels: bool = True,
    should_stop: Callable[[], bool] | None = None,
    to_model_diameter: bool = False,
    by_kind: bool = True,
    colour: int | str | None = "auto",
    outliers: str = "clip",
    plane_notes: bool = True,
    size_planes: list[tuple[int, ...]] | None = None,
    **engine_options: Any,
) -> Generator[Progress | PlaneResult, None, None]:
    """The one plane loop: read, rescale to the model's object size, predict and post-process planes.

    Every path that segments uses it: :func:`iter_segment` / :func:`iter_predict_probabilities`
    (and through them the CLI and the OME-Zarr batch path) and the Segment widget (current
    slice, field of view, whole stack).

    Parameters
    ----------
    model : SegmentationModel
        Network, representation, normalisation, object diameter and post-processing defaults.
    image : array-like
        (H, W[, 3]) or a stack (..., H, W[, 3]); lazy arrays are read one window at a time.
    planes : list of tuple of int, optional
        Indices (along the stack axes) of the planes to run, in this order; default all.
    region : (slice, slice), optional
        Part of each plane to segment (e.g. the field of view); default the whole plane.
    context : int
        Pixels of real image around ``region`` that the network also sees (clipped to the
        plane), so objects cut by the region's edge are judged with their surroundings.
    rgb : bool, optional
        Whether the last axis is colour; default: yes if it has 3 or 4 entries.
    diameter : float, "auto", None, "native" or MeasuredSize
        Object diameter in the image's pixels (a :class:`~napari_unet.core.scale.MeasuredSize`: an
        earlier run's estimate, segmented at its scale): the image is rescaled by
        ``model.diameter / diameter`` (within 15% of 1: not rescaled) and the probabilities
        come back on the image's own grid. "auto" (or None) estimates it on the first plane
        (see :class:`~napari_unet.core.scale.DiameterSearch`; on the next ones too, up to
        :data:`ESTIMATE_RETRY_PLANES`, while none held :data:`ESTIMATE_MIN_OBJECTS` objects: then
        the estimate resting on the most objects) and keeps it for the others; the planes looked
        at before are segmented again at that size (not those of a z-stack's 3D path).
        Models that do not know their diameter run at the image's own scale, as does "native".
    threshold, min_size : optional
        Post-processing (see :func:`probabilities_to_labels`); None = the model's own.
        ``min_size`` counts pixels at the model's scale (it follows the rescaling).
    labels : bool
        Post-process to instance labels (False: probabilities only).
    should_stop : callable, optional
        Checked between tiles; when it returns True, :class:`PredictionStopped` is raised.
    to_model_diameter : bool
        Rescale so that the diameter meets the model's own diameter, not just the nearest end
        of the range of sizes it segments well (the planes of a z-stack cut every object at
        all heights, so their typical cross-section is brought to the model's centre).
    by_kind : bool
        Post-process the labels with the model's own setting for the kind of image where it has
        one (told on the first plane, see :func:`postprocessing_kind`; the seed rule follows the
        kind also where ``threshold`` / ``min_size`` are given). False: its general setting (the
        3D path, whose volumes are not the 2D images the settings were tuned on).
    colour : "auto", "mean", "without DAB" or int
        RGB images for a 1-channel model: "auto" (or None) segments the most nuclei-like colour of a
        merge of fluorescence channels (told on the first plane, see
        :func:`~napari_unet.core.channels.nuclear_colour`; a warning says which), an
        immunohistochemistry image mostly stained in brown DAB without its DAB
        (:func:`~napari_unet.core.channels.leaves_out_dab`), and the mean of the colours of other
        colour images; "mean" always the mean; 0, 1, 2 that colour; "without DAB" always without DAB.
    outliers : {"clip", "measure", "off"}
        A plane where a few objects far brighter than the others set the brightness range
        (:func:`~napari_unet.core.preprocess.bright_outliers_level`, on the objects found, or on the
        foreground's connected parts without labels) is segmented again clipped ("clip"), or only
        said in :attr:`PlaneResult.clipped` ("measure": the 3D path decides for the whole volume),
        or not looked at ("off").
    plane_notes : bool
        Say a plane without data or of camera noise (False: the side views of a z-stack, whose planes
        are no planes of the user's; its xy planes said it).
    size_planes : list of tuple of int, optional
        With the automatic diameter, planes of the stack the object size may also be measured on
        when ``planes`` do not tell it (too few objects, or none the model finds at any scale:
        the first frame of a time-lapse of sparse small cells); measured only, never yielded, and
        not read once the size is known. ``planes`` are then segmented again at that size.
    **engine_options
        ``tile_size``, ``batch_size``, ``halo``, ``device``, ``precision``, ``channels_last``
        (see :func:`iter_predict_probabilities`).

    Yields
    ------
    Progress or PlaneResult
        A :class:`Progress` after every tile (tiles counted over all planes), and one
        :class:`PlaneResult` when a plane is done.
    """
    from .instances import _check_args

    if outliers not in ("clip", "measure", "off"):
        raise ValueError(f"outliers must be 'clip', 'measure' or 'off', got {outliers!r}.")
    image, layout = _prepare(model, image, rgb)
    # also without labels: measuring the object size post-processes the estimation passes, with the
    # values given or the model's general ones (the automatic diameter was tuned with those); the
    # labels get the model's own for the kind of image where it has them (told on the first plane)
    given = threshold, min_size
    threshold, min_size = _check_args(*model.resolve_postprocessing(*given))
    min_seed = model.min_seed
    search_setting = (threshold, min_size, min_seed)  # the objects the size is measured on are made so
    kind = None
    planes = layout.indices() if planes is None else [layout.check_index(p) for p in planes]
    extra = [layout.check_index(p) for p in size_planes or ()]
    extra = [p for p in dict.fromkeys(extra) if p not in planes]
    region, window, inner = plane_window(region, layout.plane_shape, context)
    runner = _PlaneRunner(_Engine(model, **engine_options), len(planes), should_stop)
    colour = _check_colour(colour, layout)

    said_noise = said_missing = not plane_notes
    if not plane_notes:
        runner.engine._said_constant = True
    said_outliers = False

    def load(idx: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """Plane ``idx`` as read (all its colours), its pixels without data filled, and where those are
        (:func:`~napari_unet.core.preprocess.fill_missing`)."""
        nonlocal said_missing
        plane, missing = read_filled_plane(image, idx, window)
        if missing is not None and not said_missing and missing.all():
            log.warning("%s holds no data at all (NaN only): nothing is segmented there.", _plane_named(idx))
            said_missing = True
        if missing is not None and not said_missing:
            log.warning("Part of the image holds no data (NaN, the black fill of a mosaic or of a rotated image, "
                        "or a scale bar or time stamp burned in): filled with the image around it, and left "
                        "without objects.")
            said_missing = True
        return plane, missing

    def read(idx: tuple[int, ...], loaded: tuple[np.ndarray, np.ndarray | None] | None = None
             ) -> tuple[np.ndarray, bool, np.ndarray | None]:
        """Plane ``idx`` as the network gets it (``loaded``: what :func:`load` gave for it), whether it
        held camera noise alone (such a plane comes as a constant one, nothing is segmented there) and
        where it holds no data."""
        nonlocal said_noise
        plane, missing = load(idx) if loaded is None else loaded
        plane = plane if colour is None else colour_plane(plane, colour)
        plane = without_camera_artefacts(plane)  # hot pixels, stripes: before any rescaling blurs them
        if is_camera_noise(plane):
            if not said_noise:
                log.warning("%s holds camera noise alone (no structure at any scale): nothing is segmented "
                            "there%s.", _plane_named(idx), " (nor in the other planes like it)" if len(planes) > 1 else "")
                said_noise = runner.engine._said_constant = True  # (the constant plane below is no news)
            return np.zeros_like(plane), True, missing
        return plane, False, missing

    def segment_again(unsized: list[tuple[int, tuple[int, ...]]]) -> Generator[Progress | PlaneResult, None, None]:
        """The planes segmented while no size was known, again at the size now known."""
        for k0, idx0 in unsized:
            plane0, _, missing0 = read(idx0)
            probs0 = _background_where((yield from runner.at_scale(plane0, sizing.scale, k0, again=True)), missing0)
            yield PlaneResult(idx0, region, labels_of(probs0) if labels else None, probs0, inner,
                              model.representation, sizing.used_diameter, sizing.scale, sizing.note, min_seed,
                              kind, colour)
        unsized.clear()

    # a typed diameter is checked against the plane: a zoomed-in field of view of big cells is fine
    sizing = _Sizing.choose(model, diameter, layout.plane_shape, to_model_diameter,
                            run_shape=tuple(sl.stop - sl.start for sl in window))
    sizing.retries = min(sizing.retries, max(len(planes) + len(extra) - 1, 0))  # only planes that follow
    unsized: list[tuple[int, tuple[int, ...]]] = []  # planes segmented while no plane had told the size
    # a part of a plane (a field of view) is told what it is and sized with its surroundings: a view of
    # a few objects is a small sample of them (the kind of a view of large bright nuclei, the colours of
    # one of a stained section's background)
    around = surroundings(window, layout.plane_shape)
    # (the planes the network gets are RGB where colour is None: grey planes, or one colour of an RGB one)
    told_on_first = colour == "auto" or (by_kind and _kinds_apply(model, 3 if layout.rgb and colour is None else 2))
    with _eval_mode(runner.engine.net):
        for k, idx in enumerate([*planes, *extra]):
            measuring = k >= len(planes)  # a plane of size_planes: its objects' size only
            if measuring and sizing.search is None:
                break
            if measuring:
                runner.n_planes = len(planes) + len(extra)  # (the progress counts the planes looked at)
            first = wider = None
            if around != window and (sizing.search is not None or (k == 0 and told_on_first)):
                try:  # (without notes: the window's say what it holds)
                    wider = read_filled_plane(image, idx, around)[0]
                except ImageError:  # (an infinite value around the view, not in it: the view alone)
                    wider = None
            if k == 0 and colour == "auto":
                first = load(idx)  # its own message for infinite values, before the colours are measured
                colour = auto_colour(model, first[0] if wider is None else wider)
            plane, noise, missing = read(idx, first)
            if wider is not None:
                wider = without_camera_artefacts(wider if colour is None else colour_plane(wider, colour))
            probs = None
            # a blank plane (one value, camera noise alone, no data) tells no size and takes none of the
            # planes the size may be looked for on (a time-lapse whose first frames are dark)
            blank = ("noise" if noise else "no data" if missing is not None and missing[inner].all()
                     else "constant" if is_constant(plane) else None)
            if blank == "no data":  # said when it was read: no news that the filled plane is constant
                runner.engine._said_constant = True
            sized_here = sizing.search is not None and blank is None
            plane_kind = _PlaneKind(plane if wider is None else wider)  # (asked by both below: told once)
            if sized_here:  # the first plane tells the object size ...
                view = None if wider is None else tuple(
                    slice(w.start - a.start, w.stop - a.start) for w, a in zip(window, around, strict=True))
                probs = yield from sizing.estimate(runner, plane if wider is None else wider, k, *search_setting,
                                                   index=idx, kind=plane_kind, view=view)
            if measuring:  # the planes looked at before, again at the size found here
                if sized_here and sizing.search is None and sizing.diameter is not None:
                    yield from segment_again(unsized)
                continue
            if k == 0 and by_kind and (kind := postprocessing_kind(model, plane, plane_kind)) is not None:  # ... and the kind
                threshold, min_size = _check_args(*model.resolve_postprocessing(*given, kind))
                min_seed = model.min_seed_for(kind)
            looked_around, wider = wider is not None, None  # (not held while the view is segmented)
            if probs is None:
                probs = yield from runner.at_scale(plane, sizing.scale, k)
            probs = _background_where(probs, missing)

            def labels_of(probs: np.ndarray, setting: tuple[float, int, int] | None = None) -> np.ndarray:
                """Instances of ``probs`` at the plane's scale: the labels' setting, or ``setting``."""
                threshold_, min_size_, min_seed_ = setting or (threshold, min_size, min_seed)
                return probabilities_to_labels(
                    probs, threshold_, min_size_at(min_size_, sizing.scale), model.representation,
                    min_seed=min_size_at(min_seed_, sizing.scale),
                )[inner]

            if labels:
                yield from runner.stage(k, "objects separated")
            plane_labels = labels_of(probs) if labels else None
            # the objects segmented at that size measure it again, made as the estimate passes made theirs
            # (a kind's own setting is for the labels only); not the planes of a z-stack, which cut every
            # object at all heights: their cross-sections measure smaller than the objects; nor a field of
            # view sized with its surroundings, whose edges leave whole its smaller objects (15 of 123 views
            # of DSB2018 images were segmented again smaller, 0.55-0.87x, AP@0.5 0.506 -> 0.442)
            if sized_here and sizing.check_pending and not to_model_diameter and not looked_around:
                if sizing.check(labels_of(probs, search_setting)):
                    probs = _background_where((yield from runner.at_scale(plane, sizing.scale, k)), missing)
                    plane_labels = labels_of(probs) if labels else None
            # a few objects far brighter than the others set the plane's brightness range: again without them
            # (told from the objects found: the labels, or without them the foreground's connected parts)
            if outliers != "off":
                yield from runner.stage(k, "brightness of the objects checked")
            clipped = None if outliers == "off" else bright_outliers_level(
                plane[inner], plane_labels if plane_labels is not None
                else _foreground_parts(probs[(slice(None), *inner)], threshold))
            if clipped is not None and outliers == "clip":
                if not said_outliers:
                    log.warning(OUTLIERS_NOTE)
                    said_outliers = True
                plane = clipped_at(plane, clipped)
                probs = _background_where((yield from runner.at_scale(plane, sizing.scale, k)), missing)
                plane_labels = labels_of(probs) if labels else None
            yield PlaneResult(idx, region, plane_labels, probs, inner, model.representation,
                              sizing.used_diameter, sizing.scale, sizing.note, min_seed, kind, colour, blank,
                              clipped, provisional=sized_here and sizing.search is not None)
            # nothing found to size on: the next plane is tried, and this one comes again at the size
            # found (the later result of a plane replaces the earlier: the 3D path's xy view too)
            if sized_here and sizing.search is not None:
                unsized.append((k, idx))
                runner.again += 1
            elif sized_here and sizing.diameter is not None:
                # the planes before, segmented at the image's own scale, again at the size now known
                yield from segment_again(unsized)
        if unsized and sizing.search is not None and sizing.best is not None:
            # the planes ran out while the size was looked for (blank planes after the last with objects,
            # or among a few): the best estimate so far is taken, and the planes looked at run again at it
            sizing.take_best()
            yield from segment_again(unsized)


def _plane_named(idx: tuple[int, ...]) -> str:
    """How messages name a plane: "The plane at index 2, 5", or "The image" for a 2D one."""
    return f"The plane at index {', '.join(map(str, idx))}" if idx else "The image"


def _foreground_parts(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The connected parts of the foreground (the classes other than background over ``threshold``)."""
    from scipy import ndimage as ndi

    return ndi.label(probs[0] < 1.0 - threshold)[0]


def _background_where(probs: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """``probs`` ((C, H, W), class 0 the background in every representation) set to background, in
    place, where the plane holds no data (``missing``: :func:`~napari_unet.core.preprocess.fill_missing`),
    so that no object reaches there, also when the labels are made again from them."""
    if missing is not None:
        probs[:, missing] = 0.0
        probs[0, missing] = 1.0
    return probs


def _check_colour(colour: int | str | None, layout: StackLayout) -> int | str | None:
    """``colour`` of :func:`iter_planes` checked: an int (a colour), "auto" (told on the first plane),
    :data:`~napari_unet.core.channels.WITHOUT_DAB` or None (grey planes, or the mean of the colours)."""
    from .channels import colour_choice

    choice = colour_choice(colour, rgb=layout.rgb)
    return None if not layout.rgb or choice == "mean" else choice


def auto_colour(model: SegmentationModel, plane: np.ndarray) -> int | str | None:
    """The colour of an RGB ``plane`` (finite values) a 1-channel ``model`` segments on its own, or
    :data:`~napari_unet.core.channels.WITHOUT_DAB` (None: the mean), said once in a warning; the plane
    loop and the dask batch tell it so (:func:`~napari_unet.core.channels.colour_to_segment`). A model
    fine-tuned on one colour of RGB images (:attr:`SegmentationModel.colour`) segments that one."""
    from .channels import colour_note, colour_to_segment, model_colour_note

    if model.colour is not None:
        log.warning("Colour: %s.", model_colour_note(model.colour))
        return None if model.colour == "mean" else model.colour
    if model.in_channels != 1:
        return None  # a 3-channel model takes the colours as they are

    colour = colour_to_segment(plane)
    if colour is not None:
        log.warning("Colour: %s.", colour_note(colour))
    return colour


def postprocessing_kind(model: SegmentationModel, plane: np.ndarray,
                        kind: _PlaneKind | None = None) -> str | None:
    """The kind of image (:func:`~napari_unet.core.modality.image_modality`) of ``plane`` when
    ``model`` has a post-processing of its own for it, else None (the general one applies).
    Only models with such settings look at the plane (tens of milliseconds), and only when it can
    be of one of their kinds (``kind``: the plane's :class:`_PlaneKind`, when one is kept)."""
    if not _kinds_apply(model, np.ndim(plane)):
        return None
    told = (kind or _PlaneKind(plane))()
    return told if told in model.postprocessing_by_kind else None


def _kinds_apply(model: SegmentationModel, ndim: int) -> bool:
    """Whether a plane of ``ndim`` dimensions can be of a kind ``model`` has a post-processing of its
    own for (a grey plane is never a colour image: no need to look)."""
    kinds = model.postprocessing_by_kind
    return bool(kinds) and not (ndim == 2 and set(kinds) <= {"colour"})


class _PlaneKind:
    """The kind of one plane (:func:`~napari_unet.core.modality.image_modality`; None where the kinds are
    not told, e.g. several channels), told on the first call only: the diameter estimate (stained tissue?)
    and the post-processing kind both ask for it, 140-170 ms each on a colour plane."""

    def __init__(self, plane: np.ndarray) -> None:
        self.plane: np.ndarray | None = plane
        self.kind: str | None = None

    def __call__(self) -> str | None:
        if self.plane is not None:
            from .modality import image_modality

            try:
                self.kind = image_modality(self.plane).kind
            except ValueError:  # not a plane the kinds are told on: the general post-processing
                self.kind = None
            self.plane = None  # (told: the plane is not held for it)
        return self.kind


def _stained_tissue(plane: np.ndarray, kind: _PlaneKind | None = None) -> bool:
    """Whether ``plane`` (as the network gets it) is a stained-tissue colour image (see
    :data:`~napari_unet.core.scale.CERTAINTY_MARGIN`; ``kind``: its :class:`_PlaneKind`, when one is kept)."""
    return np.ndim(plane) == 3 and (kind or _PlaneKind(plane))() == "colour"


class _PlaneRunner:
    """Runs planes through the engine at a scale, counting tiles over all planes for progress
    (the count changes with the scale and if running out of memory forces smaller tiles)."""

    def __init__(self, engine: _Engine, n_planes: int, should_stop: Callable[[], bool] | None) -> None:
        self.engine, self.n_planes, self.should_stop = engine, n_planes, stop_check(should_stop)
        self.done = 0
        self.total = 0
        self.start = time.perf_counter()
        #: the furthest plane begun, and how many planes before it are to run again (segmented while
        #: their object size was not known): counted in the total, so the bar does not go back
        self.position = 0
        self.again = 0

    def at_scale(self, plane: np.ndarray, scale: float, k: int, again: bool = False
                 ) -> Generator[Progress, None, np.ndarray]:
        """Probabilities (C, H, W) of ``plane`` on its own grid, the network run at ``scale``
        (``again``: a plane segmented before while its object size was not known, run again at it)."""
        from .scale import resize_image, resize_probabilities

        scaled = resize_image(plane, scale)
        probs = yield from self._run(scaled, k, again)
        if probs.shape[1:] == tuple(plane.shape[:2]):
            return probs
        yield from self.stage(k, "brought back to the image's size")
        return resize_probabilities(probs, plane.shape[:2])

    def stage(self, k: int, what: str) -> Generator[Progress, None, None]:
        """A step of plane ``k`` after its tiles (seconds on a slide of 8000 px a side): said in the
        progress, and a point where a run asked to stop stops (cancel waited for the plane's end)."""
        if self.should_stop is not None and self.should_stop():
            raise PredictionStopped("Prediction stopped.")
        yield Progress(done=self.done, total=max(self.total, self.done), plane=k,
                       elapsed=time.perf_counter() - self.start, message=f"{what} (plane {k + 1}/{self.n_planes})")

    def _units_left(self, k: int, again: bool) -> int:
        """Planes of work left, plane ``k`` (begun now) included."""
        if again:  # a plane run again: the planes ahead, this one and those still to run again
            return self.n_planes - self.position + self.again
        return self.n_planes - k + self.again

    def _run(self, plane: np.ndarray, k: int, again: bool = False, what: str = ""
             ) -> Generator[Progress, None, np.ndarray]:
        """Probabilities of ``plane`` (plane ``k`` of the run, or a part of it), a Progress after each
        tile; ``what``: what the pass is for, when not the plane's own segmentation (said before the tile)."""
        shape = (int(plane.shape[0]), int(plane.shape[1]))
        tiles_here = self.engine.plan(shape).n_tiles
        # (said by the caller: the last plane may run again too, where k is the furthest plane begun)
        if again:
            self.again = max(self.again - 1, 0)
        else:
            self.position = k
        units = self._units_left(k, again)
        self.total = max(self.total, self.done + tiles_here * units)
        which = f"plane {k + 1}/{self.n_planes}" + (" again, at the object size found" if again else "")
        in_plane = 0

        def count() -> None:
            nonlocal in_plane
            self.done += 1
            in_plane += 1

        gen = self.engine.iter_plane(plane, count)
        if self.done == 0:  # said before the run's first tile (seconds to minutes for a large
            # network, the engine prepared with it), not "Loading the model" until it ends
            many = f"{tiles_here} tiles" if tiles_here > 1 else "1 tile"
            yield Progress(done=0, total=max(self.total, 1), plane=k, elapsed=time.perf_counter() - self.start,
                           message=f"{what}: {many}" if what else f"{which}: {many}")
        while True:
            if self.should_stop is not None and self.should_stop():
                gen.close()
                raise PredictionStopped("Prediction stopped.")
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value
            tiles_now = self.engine.plan(shape).n_tiles
            if tiles_now != tiles_here:  # re-planned after running out of memory
                self.total = self.done - in_plane + tiles_now * units
                tiles_here = tiles_now
            yield Progress(
                done=self.done,
                total=max(self.total, self.done),
                plane=k,
                elapsed=time.perf_counter() - self.start,
                message=f"{what}: tile {in_plane}/{tiles_here}" if what else f"tile {in_plane}/{tiles_here} of {which}",
            )


#: Said (once a run) when a plane was segmented again with a few objects far brighter than the others
#: clipped (see :func:`~napari_unet.core.preprocess.bright_outliers_level`).
OUTLIERS_NOTE = (f"A few objects far brighter than the others (debris, dead cells) set the image's brightness "
                 f"range: segmented again with them clipped at {OUTLIER_CLIP:g} times the typical object's "
                 "brightness.")
#: With the automatic diameter, a stack whose first plane holds no object the model finds (before
#: the cells come in, a blank frame), or fewer than :data:`ESTIMATE_MIN_OBJECTS`, is sized on the
#: next planes too, up to this many more.
ESTIMATE_RETRY_PLANES = 4
#: An automatic diameter measured on fewer objects than this is only taken when no plane looked at
#: (the first and up to :data:`ESTIMATE_RETRY_PLANES` more) shows more: the median of one or two
#: objects is one blob's size, and a noise-only first frame gives one (a blank first frame of a
#: SIM+ time-lapse set 33 px for 54 px nuclei, and the stack's AP@0.5 fell from 0.80 to 0.64).
#: With three, one stray blob no longer sets the median (the same count as an estimate pass's own).
ESTIMATE_MIN_OBJECTS = MIN_OBJECTS


@dataclass(frozen=True)
class _Estimate:
    """A plane's automatic diameter: how many objects it rests on, and where it was measured."""

    count: int
    diameter: float
    scale: float
    note: str
    index: tuple[int, ...]
    k: int


@dataclass
class _Sizing:
    """The scale planes run at: fixed (a given diameter), or found on the first plane."""

    size: Any  # the model's ObjectSize, or None
    scale: float = 1.0
    diameter: float | None = None
    note: str = ""
    search: Any = None  # a DiameterSearch until a plane has been sized
    prior: float | None = None  # the search's prior (a fine-tuned model's data diameter)
    #: planes after the first that are searched too while no object has been found on any
    retries: int = 0
    #: whether the objects segmented at the estimated size are still to be measured (see check)
    check_pending: bool = False
    #: the plane the size was measured on holds no structure of a few pixels: never enlarged
    unstructured: bool = False
    #: the estimate resting on the most objects of the planes sized so far (while still searching)
    best: _Estimate | None = None
    #: the largest scale the part segmented may be enlarged by (MAX_ENLARGED_PIXELS): every scale
    #: set is capped to it, so that the results, min. sizes and re-thresholds use the scale run
    limit: float = math.inf

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scale" and value > getattr(self, "limit", math.inf):
            if not getattr(self, "_said_limit", False):  # (an estimate of tiny objects on a large plane)
                log.warning("Object diameter: the image would be enlarged x%.2f for its objects' size; it is "
                            "enlarged x%.2f only, the most that is segmented: small objects may be missed.",
                            value, self.limit)
                object.__setattr__(self, "_said_limit", True)
            value = self.limit
        object.__setattr__(self, name, value)

    @property
    def used_diameter(self) -> float | None:
        """The diameter the plane ran at (given or estimated); None when the model records no object
        size: a diameter given is then not used (the image runs at its own scale)."""
        return self.diameter if self.size is not None else None

    @classmethod
    def choose(cls, model: SegmentationModel, diameter: float | str | None, plane_shape: tuple[int, int],
               to_model_diameter: bool = False, run_shape: tuple[int, int] | None = None) -> "_Sizing":
        """``plane_shape``: the plane's (a diameter given is checked against it); ``run_shape``: the
        part of it segmented (the field of view; default: all of it), which a diameter given must not
        enlarge beyond :data:`~napari_unet.core.scale.MAX_ENLARGED_PIXELS`."""
        from .scale import (
            DiameterSearch,
            MeasuredSize,
            ObjectSize,
            check_diameter,
            diameter_word,
            enlargement_limit,
            parse_diameter,
        )

        own = model.object_size
        limit = enlargement_limit(run_shape or plane_shape)
        if isinstance(diameter, MeasuredSize):  # (an earlier run's estimate: its scale, as it ran)
            return cls(own, scale=diameter.scale, diameter=diameter.diameter, limit=limit)
        if own is not None and to_model_diameter:
            own = ObjectSize(own.diameter, own.diameter, own.diameter)
        word = diameter_word(diameter)
        if word == "native":
            return cls(own)
        if word == "auto":
            if own is None:  # an older model file: it works at the image's own scale, as it always did
                return cls(None)
            return cls(own, search=DiameterSearch(own, prior=model.data_diameter), prior=model.data_diameter,
                       retries=ESTIMATE_RETRY_PLANES, limit=limit)
        # "12 px" as the GUI and the CLI take it; "8 um" needs a pixel size, which only they know
        value = check_diameter(parse_diameter(diameter) if isinstance(diameter, str) else diameter, plane_shape)
        if own is None:
            note = ("the model does not record the object size it was trained at, so the diameter given "
                    "was not used: the image was segmented at its own scale")
            log.warning("Object diameter: %s.", note)
            return cls(None, diameter=value, note=note)
        scale = own.scale_for(value)
        h, w = run_shape or plane_shape
        if scale > limit:  # (it was run: 8x a 4096 px plane, 12 GB of probabilities)
            raise ImageError(
                f"An object diameter of {value:g} px would enlarge the image x{scale:.1f} (to {round(h * scale)} x "
                f"{round(w * scale)} px) to the model's {own.diameter:.0f} px: too large to segment. Check the "
                "diameter (in pixels: one cell's), or segment a smaller part of the image."
            )
        needed = min(max(value, own.low), own.high) / value
        if not MIN_SCALE <= needed <= MAX_SCALE:  # (capped, unsaid: 1 px cells enlarged 8x stayed 3.7x too small)
            way, left = ("enlarged", "smaller") if needed > 1 else ("shrunk", "larger")
            note = (f"an object diameter of {value:g} px needs the image {way} x{max(needed, 1 / needed):.0f} for the "
                    f"model's {own.diameter:.0f} px; it was {way} x{max(scale, 1 / scale):.0f}, the most, and its "
                    f"objects stay {max(needed / scale, scale / needed):.1f}x {left} than the model's: check the "
                    "diameter (in pixels: one cell's)")
            log.warning("Object diameter: %s.", note)
            return cls(own, scale=scale, diameter=value, note=note)
        return cls(own, scale=scale, diameter=value)

    def check(self, labels: np.ndarray) -> bool:
        """Measure the objects segmented at the estimated size (``labels``, on the image's grid).
        Objects several times smaller than the model's merge in the estimate passes (which run at
        the image's own scale and coarser), and once enlarged to the model's size they come apart:
        when they measure more than :data:`~napari_unet.core.scale.SCALE_TOLERANCE` smaller than
        the estimate and call for another scale, that is the size taken: returns True, and the
        plane is to be segmented again at the new :attr:`scale` (once). Objects that measure
        larger there are merged at the model's own size (a stained-tissue image went from 17 to
        34 px): the estimate stands. On DSB2018 val fluorescence images shrunk to 1/2, 1/3 and
        1/4, AP@0.5 rose by about 0.01; at their own size and enlarged it changed nothing
        (benchmarks/RESULTS.md, "Objects measured again at the estimated size")."""
        from .scale import SCALE_TOLERANCE, median_diameter

        self.check_pending = False
        measured = median_diameter(labels)
        if measured is None or self.diameter is None or measured * (1.0 + SCALE_TOLERANCE) >= self.diameter:
            return False  # (objects that measure larger there are merged by the model at its own size)
        scale = self.size.scale_for(measured)
        if self.unstructured:
            scale = min(scale, max(self.scale, 1.0))
        if abs(scale / self.scale - 1.0) <= SCALE_TOLERANCE:
            return False
        log.info("Object diameter: %.1f px estimated, %.1f px measured on the objects at that scale: "
                 "segmenting again at %.2f.", self.diameter, measured, scale)
        self.diameter, self.scale = measured, scale
        return True

    def take_best(self) -> None:
        """No plane is left to look at while the size is still looked for: the best estimate so far
        stands, however few objects it rests on."""
        best, self.best, self.search = self.best, None, None
        self.diameter, self.scale, self.check_pending = best.diameter, best.scale, False
        self.note = (f"estimated on the plane at index {', '.join(map(str, best.index))}, where the most objects "
                     f"were found ({best.count}; no plane with more was left)")
        log.warning("Object diameter: %s.", self.note)

    def estimate(
        self, runner: _PlaneRunner, plane: np.ndarray, k: int, threshold: float, min_size: int, min_seed: int,
        index: tuple[int, ...] = (), kind: _PlaneKind | None = None, view: Window | None = None,
    ) -> Generator[Progress, None, np.ndarray | None]:
        """Passes over ``plane`` (or parts of it) until the diameter is known; returns the
        probabilities of the final pass when it covered the whole plane, or ``view`` (else None). ``kind``: the
        plane's :class:`_PlaneKind`, when one is kept. ``view``: the part of ``plane`` to be segmented
        (``plane`` is its :func:`~napari_unet.core.scale.surroundings`): the probabilities returned
        are the view's, and the passes look around it (see
        :func:`~napari_unet.core.scale.estimate_window`)."""
        from .scale import (
            ESTIMATE_CROP,
            estimate_window,
            foreground_uncertainty,
            pixel_correlation,
            resize_image,
            structured_crop,
        )

        search, self.search = self.search, None
        search.smallest_side = min(plane.shape[:2])
        search.by_certainty = _stained_tissue(plane, kind)
        if search.prior is None:  # whether enlarged passes may look for tiny objects (not noise)
            search.correlation = lambda: pixel_correlation(structured_crop(plane, ESTIMATE_CROP))  # (rarely needed)
        kept: dict[float, tuple[np.ndarray, Window]] = {}
        model = runner.engine.model
        part, view = view, view or _whole(plane)
        passes = 0
        while (scale := search.next_scale()) is not None:
            # the part of the plane (its centre, unless its objects are elsewhere) that is at most
            # ESTIMATE_CROP a side once rescaled: a shrunk pass
            # sees a larger part (a crop taken first left the coarse passes, which measure large
            # objects, a few objects mostly cut by the crop's edge: SIM+ nuclei enlarged 3x were
            # measured at 11 px for 144), an enlarged one a smaller part (a 4x pass is no 4096 px)
            where = estimate_window(plane, scale, part)
            crop = plane[where]
            passes += 1
            probs = yield from runner._run(resize_image(crop, scale), k, what=(
                f"measuring the object size, pass {passes} (plane {k + 1}/{runner.n_planes})"))
            # the passes' objects are made as the final ones are (at the model's scale here), with the
            # general post-processing or the values given: a kind's own setting is for the labels only
            found = probabilities_to_labels(probs, threshold, min_size, model.representation, min_seed=min_seed)
            search.found(found, scale, specks=lambda probs=probs: probabilities_to_labels(
                probs, threshold, 0, model.representation, min_seed=0), uncertainty=foreground_uncertainty(probs))
            if all(w.start <= v.start and v.stop <= w.stop for w, v in zip(where, view, strict=True)):
                kept[scale] = probs, where
        first_found = self.best is None
        if search.diameter is not None and (self.best is None or search.count > self.best.count):
            self.best = _Estimate(search.count, search.diameter, search.final_scale, search.note, index, k)
        best = self.best
        if (best is None or best.count < ESTIMATE_MIN_OBJECTS) and self.retries > 0:
            # nothing (or too little) to size on: the next plane is looked at; this one runs at the best
            # size so far (its result carries no diameter) and, in 2D, again once the size is known
            from .scale import DiameterSearch

            self.retries -= 1
            self.search = DiameterSearch(self.size, prior=self.prior)
            self.diameter, self.scale = None, best.scale if best is not None else 1.0
            self.note = (search.note if best is None else
                         f"only {best.count} object{'s' if best.count != 1 else ''} found to measure the size on")
            self.note += "; the next plane is looked at"
            self.check_pending = False
        else:
            if best is None:
                self.diameter, self.scale, self.note = None, search.final_scale, search.note
            else:
                self.diameter, self.scale, self.note = best.diameter, best.scale, best.note
                self.unstructured = best.k == k and search.unstructured  # (the check runs on this plane only)
                if self.unstructured and best.scale < search.size.scale_for(best.diameter):
                    self.note = ((self.note + "; ") if self.note else "") + (
                        "the image holds no structure of a few pixels (noise): not enlarged to that size")
                if best.k > 0 or k > 0:
                    self.note = (f"estimated on the plane at index {', '.join(map(str, best.index))}, "
                                 + ("the first of the run where objects were found" if first_found and best.k == k
                                    else f"where the most objects were found ({best.count})"))
            # the model's own search (a fine-tuned model's recorded size decides in its own way), on the
            # plane the size was measured on
            self.check_pending = best is not None and best.k == k and self.prior is None
            self.best = None
        if self.note:
            log.warning("Object diameter: %s.", self.note)
        if self.scale in kept:  # the final pass covered the view: its probabilities there
            from .scale import resize_probabilities

            probs, where = kept[self.scale]
            probs = resize_probabilities(probs, plane[where].shape[:2])
            return probs[(slice(None), *(slice(v.start - w.start, v.stop - w.start)
                                         for v, w in zip(view, where, strict=True)))]
        return None


def _whole(plane: np.ndarray) -> Window:
    return slice(0, plane.shape[0]), slice(0, plane.shape[1])


def iter_rethreshold(
    results: list[PlaneResult], threshold: float, min_size: int
) -> Generator[Progress | PlaneResult, None, None]:
    """New labels for kept :class:`PlaneResult` s (no network run): one result and one
    :class:`Progress` per plane."""
    from .instances import _check_args

    threshold, min_size = _check_args(threshold, min_size)
    start = time.perf_counter()
    for n, result in enumerate(results):
        yield result.relabel(threshold, min_size)
        yield Progress(n + 1, len(results), plane=n, elapsed=time.perf_counter() - start,
                       message=f"plane {n + 1}/{len(results)}")


def _collect(
    plane_results: Generator[Progress | PlaneResult, None, None],
    result: Any,
    field: str,
) -> Generator[Progress, None, Any]:
    """Forward the progress of :func:`iter_planes`, storing each plane's ``field`` into ``result``."""
    try:
        for item in plane_results:
            if isinstance(item, PlaneResult):
                result[item.index] = getattr(item, field)
            else:
                yield item
    finally:
        plane_results.close()
    return result


# --------------------------------------------------------------------- public
def iter_predict_probabilities(
    model: SegmentationModel,
    image: Any,
    *,
    rgb: bool | None = None,
    diameter: float | str | None = "auto",
    tile_size: int | None = None,
    batch_size: int | None = None,
    halo: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    engine: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    out: Any = None,
    colour: int | str | None = "auto",
) -> Generator[Progress, None, Any]:
    """Class probabilities of an image or stack, tile by tile (generator).

    Parameters
    ----------
    model : SegmentationModel
        Network, representation and normalisation (e.g. from :func:`~napari_unet.core.load_model`).
    image : array-like
        (H, W) grey, (H, W, 3) RGB, or a stack (..., H, W) / (..., H, W, 3) with at most
        four stack axes (time, channels, z, ...). Lazy arrays (memory map, zarr, dask) are read
        one plane at a time.
    rgb : bool, optional
        Whether the last axis is colour; default: yes if it has 3 or 4 entries.
    colour : "auto", "mean", "without DAB" or int
        Which colour of an RGB image a 1-channel model segments: "auto" the most nuclei-like one of a
        merge of fluorescence channels, an immunohistochemistry image without its brown DAB, else the
        mean (see :func:`iter_planes`).
    diameter : float, "auto" or None
        Object diameter in pixels; "auto"/None estimates it (see :func:`iter_planes`).
    tile_size : int, optional
        Largest network input side; default: chosen from the device's free memory.
        The tiles are balanced (and aligned) so they may be smaller.
    batch_size : int, optional
        Tiles per forward pass; default: from free memory on a GPU, 1 on the CPU.
    halo : int, optional
        "same" networks: context around each tile; default the receptive radius (exact
        results). A smaller halo is faster but no longer exact.
    device : str or torch.device, optional
        Moves the model there first ("cpu", "cuda", "mps"); default: where the model is.
    precision : {"auto", "fp32", "bf16", "fp16"}
        "auto" uses bf16 (or fp16) autocast on CUDA and float32 elsewhere.
    channels_last : bool, optional
        Channels-last memory format (default: on CUDA only).
    engine : {"auto", "torch", "onnx"}, optional
        What runs the network: default ("auto", or ``NAPARI_UNET_ENGINE``) ONNX Runtime
        on the CPU and torch on CUDA/MPS; torch also where ONNX Runtime cannot run
        (see :mod:`napari_unet.core.engine`). Same probabilities either way.
    should_stop : callable, optional
        Checked between tiles; when it returns True, :class:`PredictionStopped` is raised.
    out : array-like, optional
        Where to write the result (e.g. a memory map or zarr array) of the shape below.

    Yields
    ------
    Progress
        After each tile (``done``/``total`` count tiles over all planes).

    Returns
    -------
    ndarray
        (n_classes, H, W) float32 probabilities (summing to 1 per pixel) for a 2D image,
        (*stack, n_classes, H, W) for a stack; ``out`` if given.

    Raises
    ------
    ImageError
        Image of a shape that cannot be segmented, NaN or infinite values, or an RGB
        image for a model of other than 1 or 3 channels.
    """
    image, layout = _prepare(model, image, rgb)
    result = _allocate(out, layout.lead_shape + (model.net.config.n_classes,) + layout.plane_shape, np.float32)
    planes = iter_planes(
        model, image, rgb=rgb, colour=colour, diameter=diameter, labels=False, should_stop=should_stop,
        device=device,
        tile_size=tile_size,
        batch_size=batch_size, halo=halo, precision=precision, channels_last=channels_last, engine=engine,
    )
    return (yield from _collect(planes, result, "probabilities"))


def iter_segment(
    model: SegmentationModel,
    image: Any,
    *,
    threshold: float | None = None,
    min_size: int | None = None,
    rgb: bool | None = None,
    diameter: float | str | None = "auto",
    tile_size: int | None = None,
    batch_size: int | None = None,
    halo: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    engine: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    out: Any = None,
    colour: int | str | None = "auto",
) -> Generator[Progress, None, Any]:
    """Instance labels of an image or stack, tile by tile (generator).

    Same arguments as :func:`iter_predict_probabilities`, plus ``threshold`` and
    ``min_size`` (see :func:`probabilities_to_labels`; None = the model's own, for the kind of
    image of the first plane where it has one: ``model.postprocessing_for``). Planes are post-processed as
    soon as they are predicted: only one plane of probabilities is held at a time.

    Returns
    -------
    ndarray
        (H, W) int32 labels for a 2D image, (*stack, H, W) for a stack (labels are
        numbered per plane); ``out`` if given (written plane by plane).
    """
    image, layout = _prepare(model, image, rgb)
    result = _allocate(out, layout.lead_shape + layout.plane_shape, np.int32)
    planes = iter_planes(
        model, image, rgb=rgb, colour=colour, diameter=diameter, threshold=threshold, min_size=min_size,
        should_stop=should_stop,
        device=device, tile_size=tile_size, batch_size=batch_size, halo=halo, precision=precision,
        channels_last=channels_last, engine=engine,
    )
    return (yield from _collect(planes, result, "labels"))


def predict_probabilities(model: SegmentationModel, image: Any, **kwargs: Any) -> Any:
    """Class probabilities; see :func:`iter_predict_probabilities` for the arguments.

    Returns
    -------
    ndarray
        (n_classes, H, W) float32, or (*stack, n_classes, H, W) for a stack.
    """
    return run_to_end(iter_predict_probabilities(model, image, **kwargs))


def segment(model: SegmentationModel, image: Any, *, axes: str | None = None, **kwargs: Any) -> Any:
    """Instance labels; see :func:`iter_segment` for the arguments.

    With ``axes`` naming a Z axis (``"ZYX"``, ``"TZYX"``), the objects are 3D: see
    :func:`napari_unet.core.volume.iter_segment_volume` for the extra arguments (``spacing=(dz,
    dy, dx)``, ``mode``, ``orthogonal``), e.g. ``segment(model, volume, axes="ZYX",
    spacing=(2.0, 0.5, 0.5))``. Other ``axes`` (e.g. ``"TYX"``) segment plane by plane.

    Returns
    -------
    ndarray
        int32 labels of the image's spatial shape: (H, W) or (*stack, H, W); 3D: ids unique
        per volume.
    """
    if axes is not None and "Z" in str(axes).upper():
        from .volume import iter_segment_stack_3d

        if not hasattr(image, "shape"):
            image = np.asarray(image)
        return run_to_end(iter_segment_stack_3d(model, image, axes, **kwargs))
    if axes is not None:
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        letters = str(axes).upper()
        if len(letters) != len(image.shape) or len(set(letters)) != len(letters):
            raise ImageError(f"axes {axes!r} must name each of the {len(image.shape)} axes of the image once.")
        if set(letters) - set("TYXS") or not letters.rstrip("S").endswith("YX") or letters.count("S") > 1 \
                or ("S" in letters and not letters.endswith("S")):
            raise ImageError(
                f"axes {axes!r}: planes are segmented along T (time) with Y and X last, or YXS for RGB; "
                "choose one channel (C) first, or name Z for 3D objects."
            )
        if letters.endswith("S"):
            kwargs.setdefault("rgb", True)
    return run_to_end(iter_segment(model, image, **kwargs))
