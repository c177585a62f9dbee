"""Read microscopy stacks into arrays and napari layer data; the npe2 reader contribution."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._memory import available_memory

from ._corrected import (
    COLOUR_KEY,
    CORRECTED_KEY,
    DIAMETER_KEY,
    FILE_KEY,
    MADE_BY,
    MASKS_KEY,
    MODEL_KEY,
    OBJECTS_3D_KEY,
    file_state,
    load_corrected_list,
    plane_in,
    recorded_channel,
    recorded_diameter,
    recorded_model,
    sidecar_path,
    stored_layout,
    transform_identities,
)
from ._formats import StackInfo, StackReadError, detect_kind, open_any, others_text

log = logging.getLogger(__name__)

#: Stacks above this size (bytes) open lazily when ``lazy=None``.
LAZY_THRESHOLD_BYTES = 1 << 30

LayerData = tuple[Any, dict[str, Any], str]

_MAGENTA_GREEN = ["magenta", "green"]
_CMYBGR = ["cyan", "magenta", "yellow", "blue", "green", "red"]


def should_open_lazily(nbytes: int) -> bool:
    """True when an array of ``nbytes`` would not fit comfortably in memory
    (above 1 GiB, or above a quarter of the RAM available now)."""
    if nbytes > LAZY_THRESHOLD_BYTES:
        return True
    free = available_memory()
    return free is not None and nbytes > free // 4


def should_open_masks_lazily(nbytes: int) -> bool:
    """True when masks of ``nbytes`` (in memory) would not fit: above half the RAM available now
    (above 4 GiB when that is unknown). Masks are edited, and a layer read lazily cannot be (napari's
    brush wrote into a dask array, each dab a step replayed on every read: 0.2-0.8 s a dab); they
    compress well, so a small file (19 MB) is often a large stack (2 GB), which the 1 GiB rule of
    :func:`should_open_lazily` opened lazily."""
    free = available_memory()
    return nbytes > (4 * LAZY_THRESHOLD_BYTES if free is None else free // 2)


def inspect_stack(path: str | os.PathLike, axes: str | None = None, series: int | None = None) -> StackInfo:
    """Read only the metadata of a stack: shape, axes, dtype, pixel size, channel names.

    Parameters
    ----------
    path : str or PathLike
        A TIFF file, an OME-Zarr folder, a folder of 2D images, or a PNG/JPEG file.
    axes : str, optional
        Axis letters (``TCZYXS``) that override the file's, one per dimension.
    series : int, optional
        Which of a TIFF's images (positions) to describe (None: the first).

    Returns
    -------
    StackInfo

    Raises
    ------
    StackReadError
        A ``ValueError`` with a one-line message when the path cannot be read.
    """
    info = open_any(path, series).info
    return info.with_axes(axes) if axes else info  # (the file's order: what ``axes`` names; read_stack moves Y, X last)


def read_stack(
    path: str | os.PathLike, lazy: bool | None = None, axes: str | None = None, series: int | None = None
) -> tuple[Any, StackInfo]:
    """Read a microscopy stack.

    Parameters
    ----------
    path : str or PathLike
        A TIFF (plain, BigTIFF, ImageJ hyperstack, OME-TIFF) file, an OME-Zarr folder, a folder of
        2D images (tif/png/jpg, stacked in natural sort order), or a PNG/JPEG file.
    lazy : bool, optional
        True: return a dask array that reads planes only when they are used. False: read everything
        into a numpy array. None (default): lazy when the stack is larger than 1 GiB or than a
        quarter of the available memory.
    axes : str, optional
        Axis letters from ``TCZYXS`` overriding the file's (for example ``"TYX"`` for a 3D TIFF that
        is really a time-lapse).
    series : int, optional
        Which of a TIFF's images (positions of a multi-position acquisition) to read (None: the first).

    Returns
    -------
    data : numpy.ndarray or dask.array.Array
        Full-resolution pixels, shape ``info.shape`` (for example ``(T, Z, C, Y, X)`` in the order
        given by ``info.axes``).
    info : StackInfo
        Axes, physical scale per axis, channel names, format, name.

    Raises
    ------
    StackReadError
        A ``ValueError`` with a one-line message: missing, empty, corrupt, truncated or unsupported.
    """
    levels, info = _read_levels(path, lazy=lazy, axes=axes, series=series)
    return levels[0], info


def _read_levels(
    path: str | os.PathLike, lazy: bool | None = None, axes: str | None = None, series: int | None = None
) -> tuple[list[Any], StackInfo]:
    opened = open_any(path, series)
    info = opened.info.with_axes(axes) if axes else opened.info
    if lazy is None:
        lazy = should_open_lazily(info.nbytes)
    if lazy:
        levels = opened.lazy()
    else:
        levels = [opened.load()]
    if tuple(levels[0].shape) != tuple(info.shape):
        raise StackReadError(
            f"cannot read '{info.name}': the pixel data has shape {tuple(levels[0].shape)} but the "
            f"metadata says {info.shape} (the file may be truncated)"
        )
    levels, info = _yx_last(levels, info)
    if lazy and len(levels) == 1:
        levels = with_overview_levels(levels[0], info.axes)
    return levels, info


# a plane larger than this on a side, read lazily without a pyramid, gets lazy overview levels
LARGE_PLANE_SIDE = 8192
OVERVIEW_SIDE = 2048


def with_overview_levels(data: Any, axes: str) -> list[Any]:
    """``[data]``, and when its planes are larger than :data:`LARGE_PLANE_SIDE` on a side, lazy
    views of every 2nd, 4th, ... pixel down to about :data:`OVERVIEW_SIDE`: napari shows such a
    plane (a slide scan, a mosaic without a pyramid) as levels and reads only the tiles in view
    at the level it needs; as one array it read the whole plane into memory and made copies of it
    (a 2 GB plane: 6.5 GB). The full-resolution level is unchanged: segmentation reads it."""
    y, x = axes.index("Y"), axes.index("X")
    side = max(data.shape[y], data.shape[x])
    if side <= LARGE_PLANE_SIDE:
        return [data]
    levels, step = [data], 2
    while side / step >= OVERVIEW_SIDE:
        index = [slice(None)] * data.ndim
        index[y] = index[x] = slice(None, None, step)
        levels.append(_marked_overview(data[tuple(index)]))
        step *= 2
    return levels


def yx_last_order(axes: str) -> list[int] | None:
    """The order that puts Y, X last (before the colour samples S) when time or depth comes after them,
    or X before Y (``"YXT"`` from MATLAB, ``"XY"`` told by ``--axes``); None when they are already
    there. Channels may stay anywhere (``"YXC"``: they are picked by their axis)."""
    if "".join(a for a in axes if a not in "CS")[-2:] == "YX":
        return None
    return [i for i, a in enumerate(axes) if a not in "YXS"] + [axes.index("Y"), axes.index("X")] + \
        ([axes.index("S")] if "S" in axes else [])


def _yx_last(levels: list[Any], info: StackInfo) -> tuple[list[Any], StackInfo]:
    """``levels`` and ``info`` with Y, X moved last (:func:`yx_last_order`): napari shows and the
    plane loop segments the last two axes as the plane."""
    from dataclasses import replace

    order = yx_last_order(info.axes)
    if order is None:
        return levels, info
    moved = replace(info, axes="".join(info.axes[i] for i in order), shape=tuple(info.shape[i] for i in order))
    log.info("%s: axes %s read as %s (Y, X last)", info.name, info.axes, moved.axes)
    return [level.transpose(order) for level in levels], moved


# ----------------------------------------------------------------------------------- layer data
SAMPLE_WINDOW = 4096


def sample_plane_indices(shape: tuple[int, ...], axes: str, channel: int | None = None) -> tuple[Any, ...]:
    """Index of the middle plane (middle of every T, Z; given channel), Y and X subsampled to at most
    about 1024 × 1024 pixels. Used to estimate contrast limits without reading a whole stack."""
    idx: list[Any] = []
    for a, n in zip(axes, shape, strict=True):
        if a == "C":
            idx.append(channel if channel is not None else 0)
        elif a in "YX":  # (a plane larger than 4096 px: its middle 4096, not a read of every tile)
            start = max(0, (n - SAMPLE_WINDOW) // 2)
            stop = min(n, start + SAMPLE_WINDOW)
            idx.append(slice(start, stop, max(1, int(np.ceil((stop - start) / 1024)))))
        elif a == "S":
            idx.append(slice(None))
        else:
            idx.append(n // 2)
    return tuple(idx)


def _marked_overview(level: Any) -> Any:
    with contextlib.suppress(AttributeError):  # (a dask array takes the mark; a numpy one is no overview)
        level._napari_unet_overview = True
    return level


def _is_overview(levels: list[Any]) -> bool:
    """Whether ``levels`` are :func:`with_overview_levels`' views (not a file's own pyramid)."""
    return any(getattr(level, "_napari_unet_overview", False) for level in levels)


def contrast_limits_from_sample(sample: np.ndarray) -> tuple[float, float]:
    """Contrast limits (0.1 and 99.9 percentiles) of a sample of pixels, never empty."""
    s = np.asarray(sample)
    if s.dtype == bool:
        return (0.0, 1.0)
    finite = s[np.isfinite(s)] if np.issubdtype(s.dtype, np.floating) else s.ravel()
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [0.1, 99.9]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi)


def _as_levels(levels: list[Any]) -> Any:
    return levels if len(levels) > 1 else levels[0]


def stack_layer_data(levels: list[Any] | Any, info: StackInfo, split_channels: bool = True) -> list[LayerData]:
    """napari layer data for a stack: one image layer per channel, scaled and named
    (``split_channels=False``: one layer, the channel axis one of its axes, as masks saved from a
    layer with one keep it).

    Parameters
    ----------
    levels : array or list of arrays
        Full-resolution array (or all resolution levels, largest first), shape ``info.shape``.
    info : StackInfo
        Metadata from :func:`read_stack` / :func:`inspect_stack`.

    Returns
    -------
    list of (data, meta, "image")
        ``meta`` has ``name``, ``scale``, ``axis_labels``, ``units``, ``contrast_limits``, ``rgb``,
        ``multiscale``, ``colormap``, ``blending`` and ``metadata["napari_unet"]`` (path, axes, channel).
    """
    if not isinstance(levels, list):
        levels = [levels]
    axes = info.axes
    rgb = axes.endswith("S")
    layer_axes = "".join(a for a in axes if a not in ("CS" if split_channels else "S"))
    common: dict[str, Any] = {
        "scale": info.scale_for(layer_axes),
        "axis_labels": tuple(a.lower() for a in layer_axes),
        "units": tuple(_unit(a, info) for a in layer_axes),
        "rgb": rgb,
        "multiscale": len(levels) > 1,
    }
    translate = info.translate_for(layer_axes)
    if translate is not None:  # (an OME-Zarr crop or tile: where it lies, with its labels)
        common["translate"] = translate
    # contrast from the smallest level that is still reasonably large (cheap to read; an overview
    # level's every tile is not: the middle of the full plane, 4096 px at most)
    sample_level = levels[-1] if len(levels) > 1 and not _is_overview(levels) else levels[0]
    sample_shape = tuple(sample_level.shape)
    if "C" not in axes or not split_channels:
        meta = dict(common, name=info.name)
        if not rgb:
            sample = np.asarray(sample_level[sample_plane_indices(sample_shape, axes)])
            meta["contrast_limits"] = contrast_limits_from_sample(sample)
            meta["colormap"] = "gray"
        meta["metadata"] = {"napari_unet": {**_layer_metadata(info, None), "layer_axes": layer_axes}}
        return [(_as_levels(levels), meta, "image")]

    c_axis = axes.index("C")
    n = info.shape[c_axis]
    cmaps = ["gray"] if n == 1 else _MAGENTA_GREEN if n == 2 else _CMYBGR
    out: list[LayerData] = []
    for i in range(n):
        index = (slice(None),) * c_axis + (i,)
        chan_levels = [lev[index] for lev in levels]
        if _is_overview(levels):
            chan_levels[1:] = [_marked_overview(lev) for lev in chan_levels[1:]]
        suffix = channel_layer_suffix(info, i)
        meta = dict(common, name=f"{info.name} [{suffix}]" if suffix is not None else info.name)
        if not rgb:
            sample = np.asarray(sample_level[sample_plane_indices(sample_shape, axes, i)])
            meta["contrast_limits"] = contrast_limits_from_sample(sample)
        meta["colormap"] = cmaps[i % len(cmaps)]
        meta["blending"] = "translucent_no_depth" if i == 0 else "additive"
        meta["metadata"] = {"napari_unet": _layer_metadata(info, i)}
        out.append((_as_levels(chan_levels), meta, "image"))
    return out


def _unit(axis: str, info: StackInfo) -> str:
    if axis in info.scale:
        return "second" if axis == "T" else "micrometer"
    return "pixel"


def _layer_metadata(info: StackInfo, channel: int | None) -> dict[str, Any]:
    return {
        "path": info.path,
        "format": info.format,
        "axes": info.axes,
        "layer_axes": "".join(a for a in info.axes if a not in "CS"),
        "channel": channel,
        "channel_name": (info.channel_names[channel] if info.channel_names and channel is not None else None),
        "scale": dict(info.scale),
        "axes_from_file": info.axes_from_file,
        "shape": tuple(int(n) for n in info.shape),
        "other_series": info.other_series,
        "series": info.series,
        "others_at": list(info.others_at),
    }


def read_layer_data(
    path: str | os.PathLike, lazy: bool | None = None, axes: str | None = None, series: int | None = None
) -> list[LayerData]:
    """Read ``path`` and return napari layer data (see :func:`stack_layer_data`).

    Raises
    ------
    StackReadError
        With a one-line message when the path cannot be read.
    """
    try:
        levels, info = _read_levels(path, lazy=lazy, axes=axes, series=series)
        # masks saved by napari-unet (the list of corrected slices beside them) from a layer with a channel
        # axis keep it: split, each channel became a layer of its own holding the list of the whole
        return stack_layer_data(levels, info, split_channels=not sidecar_path(path).is_file())
    except MemoryError:  # (a TIFF declaring 10**6 x 10**6 pixels in one compressed strip: an empty message)
        raise StackReadError(f"cannot read '{Path(path).name}': what it holds does not fit in this computer's "
                             "memory, even read lazily (a plane, or one compressed block of it, is too large)") from None


# ------------------------------------------------------------------------------- npe2 reader
def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: a reader function for paths napari-unet understands, else None.

    TIFF files are always accepted (a broken one gets a clear notification from the reader
    function); folders when they hold 2D images, or are OME-Zarr images, stores of them, or plates.
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    kind = detect_kind(path)
    if kind not in ("tiff", "ome-zarr", "image-folder"):
        return None
    if kind == "tiff" and _named_tiff_but_another_format(path):  # napari's own reader opens it
        return None
    # OME-Zarr: images (multiscales), bioformats2raw's stores, an image's labels, and plates and wells (a
    # plate is refused with the field to open: napari's "refused the file" said nothing; where
    # napari-ome-zarr is installed too, napari asks which reader to use, and that one shows the plate)
    if kind == "ome-zarr":
        try:
            import zarr

            attrs = dict(zarr.open_group(path, mode="r").attrs)
        except Exception:  # noqa: BLE001 - not a Zarr group we can open: napari moves on
            return None
        ome = attrs.get("ome", attrs)
        if ("multiscales" not in ome and "bioformats2raw.layout" not in ome  # (images in groups 0, 1, ...)
                and "plate" not in ome and "well" not in ome  # (an HCS plate: which field to open is said)
                and _one_labels_child(path, attrs) is None):  # (an image's labels/ folder of one labels image)
            return None
    return reader_function


#: The first bytes of image formats that a file named .tif may hold instead (a PNG or JPEG renamed).
_OTHER_FORMATS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF8")


def _named_tiff_but_another_format(path: str) -> bool:
    """Whether a file named like a TIFF starts as a PNG, JPEG, BMP or GIF does (napari's own reader
    opens those; napari-unet's said it was a broken TIFF)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(_OTHER_FORMATS)


def reader_function(path: str | list[str]) -> list[LayerData]:
    """Read one path into layer data; on a broken file show a napari error notification and return
    napari's "no layers" sentinel ``[(None,)]`` so that no exception reaches the user."""
    if isinstance(path, list):
        path = path[0]
    lazy = None
    if sidecar_path(path).is_file():  # napari-unet's masks: in memory whenever they fit, to be edited
        try:
            lazy = should_open_masks_lazily(inspect_stack(path).nbytes)
        except (StackReadError, ValueError):
            lazy = None  # (read_layer_data says what is wrong)
    try:
        layers = read_layer_data(path, lazy=lazy)
    except (StackReadError, ValueError) as e:
        log.warning("%s", e)
        _notify(str(e))
        return [(None,)]  # type: ignore[list-item]
    _say_planes_not_channels(path, layers)
    return as_labels_where_masks(path, layers)


def planes_not_channels_hint(meta: dict[str, Any]) -> str:
    """For a stack read from a file that names no axes, whose short first axis was taken as planes:
    what was done and how to read it as channels ("" otherwise). ``meta``: a layer's
    ``metadata["napari_unet"]``."""
    from ._axes import planes_not_channels_note

    note = planes_not_channels_note(meta.get("shape", ()), meta.get("axes", ""), meta.get("axes_from_file", True))
    if not note:
        return ""
    return (note[0].upper() + note[1:] + ", open it with the Load stack widget and type C for that axis in "
            "Axes: each channel becomes a layer, and Segment runs on the layer you choose (the nuclei one).")


def _say_planes_not_channels(path: str | os.PathLike, layers: list[LayerData]) -> None:
    meta = layers[0][1].get("metadata", {}).get("napari_unet", {}) if layers and len(layers[0]) > 1 else {}
    hint = planes_not_channels_hint(meta)
    if hint:
        log.warning("%s: %s", Path(path).name, hint)
        _notify(f"{Path(path).name}: {hint}", warning=True)
    others = meta.get("other_series") or 0
    if others and not meta.get("series"):  # (another than the first, chosen: nothing to say)
        at = meta.get("others_at") or ()
        how = (f"open the others by their paths ({others_text(tuple(at))})" if at else
               "Load stack's Series opens another (and predict --series N segments it)")
        _notify(f"{Path(path).name} holds {others + 1} images (positions, series or fields): the first one is "
                f"opened; {how}.", warning=True)


def as_labels_where_masks(path: str | os.PathLike, layers: list[LayerData]) -> list[LayerData]:
    """The layers read from ``path`` as Labels layers when the file holds masks: a labels file
    saved by napari-unet (its list of corrected slices beside it; back in the layer's axis order
    when the file stores another), OME-Zarr labels, or integers named like a labels file. File >
    Open and the Load stack widget both go through here."""
    path = str(path)
    if sidecar_path(path).is_file():
        corrected = _stored_corrected_planes(path)  # (None: unreadable, then they are someone's own)
        stored = stored_layout(path)
        if stored.axes is not None and len(layers) == 1:  # stored in ImageJ's order: back to the layer's
            layers, corrected = _in_axes_order(layers[0], stored.axes, corrected)
        if len(layers) == 1:
            layers = [_with_stored_calibration(layers[0], stored)]
        layers = [as_labels_layer(layer, corrected) for layer in layers]
        if stored.objects_3d:  # (see OBJECTS_3D_KEY)
            for _data, meta, _kind in layers:
                meta["metadata"] = {**meta.get("metadata", {}), OBJECTS_3D_KEY: True}
        if stored.colours:  # (see COLOUR_KEY)
            for _data, meta, _kind in layers:
                meta["metadata"] = {**meta.get("metadata", {}), COLOUR_KEY: stored.colours}
        if stored.model:  # (see MODEL_KEY)
            for _data, meta, _kind in layers:
                meta["metadata"] = {**meta.get("metadata", {}), MODEL_KEY: stored.model}
        if stored.diameter:  # (see DIAMETER_KEY)
            for _data, meta, _kind in layers:
                meta["metadata"] = {**meta.get("metadata", {}), DIAMETER_KEY: stored.diameter}
        for _data, meta, _kind in layers:  # saved there again after someone changed it: asked (see FILE_KEY)
            meta["metadata"] = {**meta.get("metadata", {}), FILE_KEY: file_state(path)}
        if len(layers) == 1:  # (predict's masks, with the list that records their model)
            _named_as_masks_of_their_image(path, layers[0][1], stored.channel)
        return layers
    if _is_ome_zarr_labels(path) or _named_as_labels(path, layers):
        # masks napari-unet made (predict, segment_to_ome_zarr): a model's, none corrected yet; another
        # tool's or a hand-made file: someone's own (the widgets keep the slices holding labels)
        mark = _napari_unet_mark(path)
        layers = [as_labels_layer(layer, [] if mark is not None else None) for layer in layers]
        if mark is not None and len(layers) == 1:
            _named_as_masks_of_their_image(path, layers[0][1], recorded_channel(mark))
            # the model and diameter an OME-Zarr's mark records (predict --dask), as a TIFF's list gives them
            recorded = {k: v for k, v in ((MODEL_KEY, recorded_model(mark)), (DIAMETER_KEY, recorded_diameter(mark)),
                                          (OBJECTS_3D_KEY, mark.get("objects_3d") is True)) if v}
            if recorded:
                layers[0][1]["metadata"] = {**layers[0][1].get("metadata", {}), **recorded}
        return layers
    return layers


def channel_layer_suffix(info: StackInfo, channel: int) -> str | None:
    """What the layer of ``channel`` of a stack with a C axis (``info``) is named by, in brackets after
    the stack's name ("cells [nuclei]"; "cells [ch1]" where the file names none); None for the one
    channel of a file that names none (the layer is named as the stack)."""
    n = info.shape[info.axes.index("C")]
    names = list(info.channel_names or [])
    names += [f"ch{i}" for i in range(len(names), n)]
    return names[channel] if n > 1 or info.channel_names else None


def _named_as_masks_of_their_image(path: str | os.PathLike, meta: dict[str, Any], channel: str | None = None) -> None:
    """``napari-unet predict``'s "<image>_masks.tif" opened as the layer "<image> masks", the name by
    which the widgets pair masks with their image ("<image>_masks" paired with nothing: Segment made a
    second masks layer, Fine-tune did not find them); made from ``channel`` of a multi-channel file
    (see :data:`~napari_unet.io._corrected.CHANNEL_KEY`), "<image> [<channel>] masks", the masks of
    that channel's layer."""
    from ._formats import stack_name

    stem = stack_name(path)
    if meta.get("name") == stem and stem.endswith("_masks") and len(stem) > len("_masks"):
        meta["name"] = stem[: -len("_masks")] + (f" [{channel}]" if channel else "") + " masks"


def _napari_unet_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """napari-unet's :data:`MADE_BY` mark of the masks file ``path`` when napari-unet wrote it, else
    None: an OME-Zarr's (a dict: "masks", and the model and diameter ``predict --dask`` records under
    the layer metadata's keys), or {} for a TIFF."""
    from ._formats import is_ome_zarr

    try:
        if is_ome_zarr(path):
            import zarr

            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
            child = _one_labels_child(path, attrs)
            if MADE_BY not in attrs and child is not None:  # the labels container: its one labels image
                attrs = dict(zarr.open_group(str(child), mode="r").attrs)
            if MADE_BY not in attrs:
                return None
            return attrs[MADE_BY] if isinstance(attrs[MADE_BY], dict) else {}
        if Path(path).is_file():
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return {} if str(tif.pages.first.software or "").startswith(MADE_BY) else None
    except Exception:  # noqa: BLE001 - unreadable: not ours to replace
        return None
    return None


def _with_stored_calibration(layer: LayerData, stored: Any) -> LayerData:
    """``layer`` with what its sidecar keeps and a TIFF cannot say: the layer's own scale and units,
    and its offset (in pixels, as a translate in the scale it now has); each only when it has one
    value per axis."""
    data, meta, kind = layer
    ndim = (data[0] if isinstance(data, list) else data).ndim
    if stored.scale is not None and len(stored.scale) == ndim:
        meta = {**meta, "scale": stored.scale, "units": stored.units}
    if stored.offset is not None and len(stored.offset) == ndim:
        scale = meta.get("scale")
        scale = scale if scale is not None and len(scale) == ndim else [1.0] * ndim
        meta = {**meta, "translate": tuple(o * float(s) for o, s in zip(stored.offset, scale))}
    identities = transform_identities(ndim)
    for key, value in (stored.transform or {}).items():  # a rotated or registered image's masks
        value = np.asarray(value, dtype=float)
        if value.shape == identities[key].shape:
            meta = {**meta, key: value}
    return data, meta, kind


def _in_axes_order(layer: LayerData, target: str, corrected: list[tuple[int, ...]] | None
                   ) -> tuple[list[LayerData], list[tuple[int, ...]] | None]:
    """``layer`` (and its corrected planes) with the axes ``target``: its axes of size 1 that the
    file does not keep put back, then transposed into that order (unchanged when its axes are not
    ``target``'s, or some of them, in the order the writer stores them)."""
    from ._corrected import planes_along
    from ._writer import _IMAGEJ_ORDER

    data, meta, kind = layer
    source = ((meta.get("metadata") or {}).get("napari_unet") or {}).get("layer_axes")
    stored = "".join(a for a in _IMAGEJ_ORDER if a in target)  # the file's axes, size-1 ones included
    if (not isinstance(source, str) or source == target or sorted(stored) != sorted(target)
            or target[-2:] != "YX" or source[-2:] != "YX"  # (planes that are not Y, X: no mapping)
            or "".join(a for a in stored if a in source) != source):
        return [layer], corrected
    expand = tuple(slice(None) if a in source else None for a in stored)
    order = [stored.index(a) for a in target]
    levels = data if isinstance(data, list) else [data]
    moved = [level[expand].transpose(order) for level in levels]
    if _is_overview(levels):  # (views of views: still overview levels, which masks do not keep)
        moved[1:] = [_marked_overview(level) for level in moved[1:]]
    meta = dict(meta)
    for key in ("scale", "axis_labels", "units", "translate"):
        if meta.get(key) is not None and len(meta[key]) == len(source):
            put_back = {"scale": 1.0, "units": "pixel", "translate": 0.0}  # an axis of size 1 put back
            values = [meta[key][source.index(a)] if a in source else put_back.get(key, a.lower())
                      for a in stored]
            meta[key] = tuple(values[i] for i in order)
    meta["metadata"] = {**meta["metadata"], "napari_unet": {**meta["metadata"]["napari_unet"], "layer_axes": target}}
    planes = None if corrected is None else planes_along(corrected, stored[:-2], target[:-2])  # (None: unknown)
    return [(moved if isinstance(data, list) else moved[0], meta, kind)], planes


def _named_as_labels(path: str | os.PathLike, layers: list[LayerData]) -> bool:
    """Whether ``path`` holds masks by its name and content: one grey layer of integers whose name
    ends like a labels file's (``cells_masks.tif``, what ``napari-unet predict`` writes;
    ``_labels``, ``_seg``, ...; see :data:`~napari_unet.io.LABEL_NAME_SUFFIXES`)."""
    from ._formats import stack_name
    from ._training_files import LABEL_NAME_SUFFIXES

    if len(layers) != 1:
        return False
    data, meta, _kind = layers[0]
    first = data[0] if isinstance(data, (list, tuple)) else data  # a multiscale image: its levels
    if meta.get("rgb") or np.dtype(first.dtype).kind not in "iu":
        return False
    name = stack_name(Path(path)).lower()
    return any(end and name.endswith(end) for end in LABEL_NAME_SUFFIXES)


def _is_ome_zarr_labels(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr group whose attributes mark it as labels ("image-label")."""
    from ._formats import is_ome_zarr

    if not is_ome_zarr(path):
        return False
    try:
        import zarr

        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - not readable as a group: the image reader has its say
        return False
    child = _one_labels_child(path, attrs)
    if child is not None:
        return _is_ome_zarr_labels(child)  # the labels container: its one labels image
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # NGFF 0.5 nests it
    return "image-label" in ome


def _one_labels_child(path: str | os.PathLike, attrs: dict) -> Path | None:
    """The one labels image of an OME-Zarr labels container (``"labels": ["cells"]``, no image of
    its own), given the group's attributes; None for any other group."""
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # NGFF 0.5 nests it
    labels = ome.get("labels")
    if ("multiscales" not in ome and isinstance(labels, list) and len(labels) == 1
            and str(labels[0]).strip("./\\")  # (a child's name: never the group itself or above it)
            and not set(str(labels[0])) & set("/\\")):
        return Path(path) / str(labels[0])
    return None


def _stored_corrected_planes(path: str) -> list[tuple[int, ...]] | None:
    """The corrected slices stored beside ``path``; a broken list is reported (a warning
    notification) and the labels open without it (None): their slices are then someone's own."""
    try:
        return load_corrected_list(path)
    except (ValueError, OSError) as e:
        message = (f"Opened the labels without their list of corrected slices ({str(e).rstrip('.')}): every "
                   "slice holding labels is kept as a correction")
        log.warning("%s", message)
        _notify(message, warning=True)
        return None


_IMAGE_ONLY_KEYS = ("contrast_limits", "rgb", "colormap", "gamma", "interpolation2d", "interpolation3d")


def as_labels_layer(layer: LayerData, corrected: list[tuple[int, ...]] | None) -> LayerData:
    """An image layer tuple turned into a Labels layer tuple carrying the corrected-slices list
    (None: labels of unknown origin, without one: see :data:`~napari_unet.io._corrected.MASKS_KEY`)."""
    data, meta, _kind = layer
    meta = {k: v for k, v in dict(meta).items() if k not in _IMAGE_ONLY_KEYS}
    if corrected is not None:
        lead = tuple(int(n) for n in (data[0] if isinstance(data, list) else data).shape[:-2])
        inside = [p for p in corrected if plane_in(p, lead)]
        if len(inside) < len(corrected):  # (a list edited by hand, or beside other labels of that name)
            log.warning("%d slice(s) of the list of corrected slices are not slices of these labels (of shape %s): "
                        "left out.", len(corrected) - len(inside), lead)
        corrected = inside
        meta["metadata"] = {**meta.get("metadata", {}), CORRECTED_KEY: [list(p) for p in corrected], MASKS_KEY: True}
    if isinstance(data, list) and _is_overview(data):  # masks are painted: napari paints no levels
        data = data[0]
        meta["multiscale"] = False
    return (data, meta, "labels")


def _notify(message: str, warning: bool = False) -> None:
    try:
        from napari.utils.notifications import show_error, show_warning
    except ImportError:  # pragma: no cover - io is usable without napari
        return
    (show_warning if warning else show_error)(message)
