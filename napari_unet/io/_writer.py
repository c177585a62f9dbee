"""Write label images to TIFF, atomically; the npe2 writer contribution."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._atomic import atomic_write_all, check_unchanged
from napari_unet._errors import one_line

from ._axes import AxesError, check_axes, guess_axes
from ._corrected import (
    CORRECTED_KEY,
    MADE_BY,
    MASKS_KEY,
    OBJECTS_3D_KEY,
    corrected_list_text,
    mark_saved,
    recorded_channel,
    recorded_colours,
    recorded_diameter,
    recorded_model,
    sidecar_path,
    transform_identities,
)

log = logging.getLogger(__name__)

_IMAGEJ_ORDER = "TZCYX"


class LabelsWriteError(ValueError):
    """Labels cannot be written (bad values, shape, or destination); nothing was changed on disk."""


#: Labels larger than this (as written) are converted and written one plane at a time.
WRITE_BY_PLANES_BYTES = 16 * 2**20


def _is_lazy(data: Any) -> bool:
    """Whether ``data`` is an array read on demand (dask, zarr, ...; or a memory map: masks held on disk,
    larger than the memory) of a stack, not one in memory."""
    return (isinstance(data, np.memmap) or not isinstance(data, np.ndarray)) and hasattr(data, "dtype") \
        and getattr(data, "ndim", 0) > 2


def _check_lazy_labels(labels: Any) -> tuple[Any, int | None]:
    """:func:`check_labels` for a stack read on demand, one plane at a time (no copy of the stack);
    with the largest id when it was read on the way (labels wider than 16 bits: their lowest and
    largest ids of a plane read together, not the stack read once for each)."""
    dtype = np.dtype(labels.dtype)
    if not np.issubdtype(dtype, np.integer) or dtype == np.uint64:
        return check_labels(np.asarray(labels)), None  # (rare: floats or uint64 need the full conversion)
    if not 2 <= labels.ndim <= 5 or 0 in labels.shape:  # (said as for any array: a view of that shape, no memory)
        check_labels(np.broadcast_to(np.zeros((), dtype), labels.shape))
        raise LabelsWriteError(f"labels of shape {tuple(labels.shape)} cannot be written")
    if dtype.kind == "u" and dtype.itemsize <= 2:
        return labels, None  # (fits a TIFF's 16 bits whatever the ids: no pass over the stack)
    low, top = 0, 0
    for i in np.ndindex(*labels.shape[:-2]):
        plane = np.asarray(labels[i])
        low, top = min(low, int(plane.min())), max(top, int(plane.max()))
        del plane  # (not held while the next one is read)
    if low < 0:
        raise LabelsWriteError(f"The labels hold negative values (minimum {low}); labels must be 0 "
                               "(background) or positive.")
    return labels, top


def check_labels(labels: Any) -> np.ndarray:
    """Check that ``labels`` is a label image of 2 to 5 dimensions and return it as an integer array.

    The rules are :func:`napari_unet.core.labels.check_labels`'s.

    Raises
    ------
    LabelsWriteError
        For fractions or non-numeric data, negative values, an empty axis, fewer than 2 or more than 5 dimensions.
    """
    from napari_unet.core.labels import check_labels as check_label_values  # core's package imports torch

    try:
        return check_label_values(labels, "labels", ndim=(2, 5))
    except ValueError as exc:
        raise LabelsWriteError(str(exc)) from None


def _labels_dtype(arr: np.ndarray, top: int | None = None) -> np.dtype:
    """The TIFF type of labels ``arr`` (``top``: their largest id, read already for lazy labels wider
    than 16 bits by :func:`_check_lazy_labels`; else measured here, on labels in memory)."""
    if np.dtype(arr.dtype).kind in "ub" and np.dtype(arr.dtype).itemsize <= 2:
        return np.dtype(np.uint16)  # (fits whatever the ids: no pass over the stack)
    if top is None:
        top = int(arr.max()) if arr.size else 0
    if top <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if top <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise LabelsWriteError(f"label id {top} is too large for a TIFF label image (maximum {2**32 - 1})")


def _fitting(labels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``labels`` as ``dtype``, checked afterwards: labels saved while they are edited (Save masks
    writes in a worker) may get an id that the type chosen at the start cannot hold, which the
    conversion would wrap onto another object's id, silently."""
    converted = np.asarray(labels).astype(dtype, copy=False)
    if labels.size and int(labels.max()) > np.iinfo(dtype).max:
        raise LabelsWriteError("the masks changed while they were saved (ids above "
                               f"{np.iinfo(dtype).max} appeared): save them again")
    return converted


def write_labels(
    path: str | os.PathLike,
    labels: Any,
    scale: Sequence[float] | None = None,
    axes: str | None = None,
    corrected: Any = None,
    offset: Sequence[float] | None = None,
    calibration: tuple[Sequence[float], Sequence[Any]] | None = None,
    transform: dict[str, Any] | None = None,
    objects_3d: bool = False,
    colours: Any = None,
    model: Any = None,
    unchanged: dict[str, Any] | None = None,
) -> Path:
    """Write a label image to a compressed TIFF, atomically (with its corrected-slices list).

    The file is written to a temporary file in the destination folder and then renamed over
    ``path``, so a crash never leaves a half-written file in place of a good one. With
    ``corrected``, the list of corrected slices is written beside it
    (``<name>.corrected.json``) in the same way, and both files are replaced or neither.

    Parameters
    ----------
    path : str or PathLike
        Destination, ending in ``.tif`` or ``.tiff``.
    labels : array-like of int, shape (..., Y, X)
        Label ids, 0 = background; 2 to 5 dimensions.
    scale : sequence of float, optional
        Physical size per axis of ``labels`` (micrometres for Z, Y, X; seconds for T).
    axes : str, optional
        Axis letters of ``labels`` from ``TZCYX`` (default guessed: ``YX``, ``ZYX``, ``TZYX``, ...).
    corrected : iterable of plane indices, or a layer metadata dict, optional
        The corrected slices to store beside the file (see
        :func:`napari_unet.io._corrected.save_corrected_list`); None: no list is written, and a
        list left beside an earlier file of that name is emptied with the same commit (the new
        labels' slices were not corrected by anyone).
    offset : sequence of float, optional
        The labels' offset per axis in pixels (napari's translate over its scale), which a TIFF
        does not hold: kept in the list beside the file when not all zero, for the reader to
        put back (as a translate in the units of the pixel size it reads).
    calibration : (scale, units), optional
        The layer's own scale and units per axis (napari's; units as pint units or names). When
        the file cannot say them as they were (a unit other than micrometres and seconds, a
        bare scale without a unit, a Z spacing while Y and X have none, an axis of size 1),
        they are kept in the list beside the file, and the reader gives the layer them back.
    transform : dict, optional
        The layer's rotation, shear and affine matrix (napari's ``rotate``, ``shear``, ``affine``;
        only those that are not the identity), which a TIFF does not hold: kept in the list beside
        the file, so that masks of a rotated or registered image open over it again.
    objects_3d : bool
        The labels are 3D objects, whose ids the planes share: said in the list beside the file, so
        that a plane segmented again in 2D after the file is reopened numbers its objects above them.
    colours : dict, optional
        The colours of the RGB image the slices were segmented by, where chosen (Segment's Colour; a
        layer's metadata, see :data:`~napari_unet.io._corrected.COLOUR_KEY`): said in the list beside
        the file, so that fine-tuning on the reopened masks learns from them.
    model : dict, optional
        A layer's metadata recording the model that segmented into it last and the object diameter
        typed for that run (see :data:`~napari_unet.io._corrected.MODEL_KEY` and ``DIAMETER_KEY``):
        said in the list beside the file, so that Segment proposes that model and diameter when the
        masks are reopened.
    unchanged : dict, optional
        {path: :func:`~napari_unet._atomic.file_identity`} of the files as they were when the caller
        decided to write (the labels file and its list, before a batch segmented the image): when one
        changed since (masks corrected and saved there meanwhile), nothing is written
        (:class:`~napari_unet._atomic.ChangedMeanwhile`).

    Returns
    -------
    pathlib.Path
        The written file.

    Notes
    -----
    Labels that fit in uint16 are saved as an ImageJ hyperstack (opens in Fiji/ImageJ with its
    calibration); larger ids as uint32 OME-TIFF. Both are zlib-compressed and store the pixel size
    (resolution tags, plus ImageJ ``spacing``/``finterval`` or OME ``PhysicalSize*``).

    Raises
    ------
    LabelsWriteError
        A ``ValueError`` when labels or arguments are invalid; the destination is left untouched.
    OSError
        When a file cannot be written or put in place (disk full, a folder in the way, a name
        too long); the labels file and its list are then both left as they were.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise LabelsWriteError(f"label files are TIFF: '{path.name}' should end in .tif or .tiff")
    if path.is_dir():
        raise LabelsWriteError(f"'{path}' is a folder; give a file name ending in .tif")
    if not path.parent.is_dir():
        raise LabelsWriteError(f"'{path.parent}' is a file, not a folder" if path.parent.exists()
                               else f"folder '{path.parent}' does not exist")
    arr, top = _check_lazy_labels(labels) if _is_lazy(labels) else (check_labels(labels), None)
    try:
        axes = check_axes(axes, arr.shape) if axes else guess_axes(arr.shape)
    except AxesError as e:
        raise LabelsWriteError(str(e)) from e
    if "S" in axes:
        raise LabelsWriteError("labels cannot have an RGB (S) axis")
    if scale is None:
        scale = [None] * arr.ndim
    # None: that axis is not calibrated (no pixel size is claimed for it in the file)
    scale = [None if s is None else float(s) for s in scale]
    if len(scale) != arr.ndim:
        raise LabelsWriteError(f"scale has {len(scale)} values but the labels have {arr.ndim} dimensions")
    if not all(s is None or (np.isfinite(s) and s > 0) for s in scale):
        raise LabelsWriteError(f"scale values must be positive numbers, got {scale}")
    if calibration is None and any(s is not None for s in scale):  # the scale given, in the units it is in
        calibration = ([1.0 if s is None else s for s in scale],
                       ["pixel" if s is None or a == "C" else "second" if a == "T" else "micrometer"
                        for a, s in zip(axes, scale, strict=True)])
    if offset is not None:
        offset = [float(t) for t in offset]
        if len(offset) != arr.ndim or not all(np.isfinite(offset)):
            raise LabelsWriteError(f"offset must be {arr.ndim} finite numbers, got {offset}")
        if not any(offset):
            offset = None
    dtype = _labels_dtype(arr, top)

    # reorder to ImageJ/OME order (T, Z, C, Y, X subset) so that both can read the axes
    order = [axes.index(a) for a in _IMAGEJ_ORDER if a in axes]
    data = np.transpose(arr, order)  # a view: large stacks are converted and written plane by plane
    nbytes = data.size * dtype.itemsize
    out_axes = "".join(axes[i] for i in order)
    sizes = {a: scale[axes.index(a)] for a in axes if scale[axes.index(a)] is not None}
    if ("X" in sizes) != ("Y" in sizes):  # a pixel size is one for both or for neither
        sizes.setdefault("X", sizes.get("Y"))
        sizes.setdefault("Y", sizes.get("X"))
    # what the file says: a Z spacing only beside an X, Y pixel size (the reader's calibration rule)
    said = {a: v for a, v in sizes.items() if "X" in sizes or a == "T"}
    kwargs: dict[str, Any] = {"compression": "zlib", "software": MADE_BY}  # (masks of a model's, without a list)
    if dtype == np.uint16:
        meta: dict[str, Any] = {"axes": out_axes}
        if "X" in said:
            # ImageJ reads XResolution as pixels per metadata 'unit' (here micrometre)
            meta["unit"] = "um"
            kwargs["resolution"] = (1.0 / said["X"], 1.0 / said["Y"])
        if "Z" in said:
            meta["spacing"] = said["Z"]
        if "T" in said:
            meta["finterval"] = said["T"]
        kwargs.update(imagej=True, metadata=meta)
    else:
        meta = {"axes": out_axes}
        if "X" in said:
            meta.update(PhysicalSizeX=said["X"], PhysicalSizeXUnit="µm", PhysicalSizeY=said["Y"],
                        PhysicalSizeYUnit="µm")
            kwargs.update(resolutionunit="CENTIMETER", resolution=(1e4 / said["X"], 1e4 / said["Y"]))
        if "Z" in said:
            meta.update(PhysicalSizeZ=said["Z"], PhysicalSizeZUnit="µm")
        if "T" in said:
            meta.update(TimeIncrement=said["T"], TimeIncrementUnit="s")
        kwargs.update(ome=True, metadata=meta, bigtiff=nbytes > 2**31)

    layer_axes = None
    # what the file reads back as: ImageJ's order, without the stack axes of size 1 (neither ImageJ nor
    # OME-TIFF readers keep those: a T, Z=1 stack reads as T alone)
    read_axes = "".join(a for a, n in zip(out_axes, data.shape) if n > 1 or a in "YX")
    if read_axes != axes:  # the list follows the file (all its axes) and says the layer's axes
        layer_axes = axes
        if corrected is not None:
            corrected = _planes_in_file_order(corrected, axes, out_axes)
    kept = _calibration_to_keep(calibration, axes, said, read_axes)
    with atomic_write_all() as files:
        with files.open(path, "wb") as fh:
            if (nbytes > WRITE_BY_PLANES_BYTES or _is_lazy(data)) and data.ndim > 2:  # no whole copy in memory
                planes = (np.ascontiguousarray(_fitting(np.asarray(data[i]), dtype))
                          for i in np.ndindex(*data.shape[:-2]))
                tifffile.imwrite(fh, planes, shape=data.shape, dtype=dtype, **kwargs)
            else:
                tifffile.imwrite(fh, np.ascontiguousarray(_fitting(data, dtype)), **kwargs)
        if corrected is None and (_exists(sidecar_path(path)) or layer_axes is not None or offset is not None
                                  or transform or objects_3d or recorded_colours(colours)
                                  or recorded_model(model) or recorded_diameter(model) or recorded_channel(model)
                                  or kept is not None):
            corrected = []  # a stale list emptied; or the layer's axes, offset or calibration recorded for the reader
        if corrected is not None:
            with files.open(sidecar_path(path), "w") as fh:
                fh.write(corrected_list_text(path, corrected, layer_axes, offset, kept, transform or None, objects_3d,
                                             colours, model))
        check_unchanged(unchanged)  # (last: the files are put in place right after)
    log.info("wrote labels %s %s to %s", data.shape, dtype, path)
    return path


def _calibration_to_keep(calibration: tuple[Sequence[float], Sequence[Any]] | None, axes: str,
                         sizes: dict[str, float], read_axes: str) -> tuple[list[float], list[str]] | None:
    """The layer's scale and unit names (``calibration``, in ``axes`` order) when the file will not
    read back as them: each axis reads back as its pixel size in micrometres (seconds for T) when
    the file has one (``sizes``), else as 1 pixel (also an axis of size 1, not in ``read_axes``)."""
    if calibration is None:
        return None
    scale, units = calibration
    if scale is None or units is None or len(scale) != len(axes) or len(units) != len(axes):
        return None
    names = [str(u) for u in units]
    for a, value, name in zip(axes, scale, names):
        if a in read_axes and a in sizes:
            expected = "second" if a == "T" else "micrometer"
            same = name == expected and np.isclose(float(value), sizes[a], rtol=1e-6)
        else:
            same = name in ("pixel", "None") and float(value) == 1.0
        if not same:
            return [float(v) for v in scale], names
    return None


def _planes_in_file_order(corrected: Any, axes: str, out_axes: str) -> list[tuple[int, ...]]:
    """Corrected plane indices along the stack axes of ``axes`` (all but Y, X) re-indexed along
    those of ``out_axes``, the order the file stores."""
    from ._corrected import planes_along, planes_given

    lead, out_lead = axes[:-2], out_axes[:-2]
    if sorted(lead) != sorted(out_lead):  # the layer's planes are not its Y, X: they map to none of the file's
        log.warning("the corrected slices of a layer with axes %s cannot be kept in a file of axes %s", axes, out_axes)
        return []
    return planes_along(planes_given(corrected), lead, out_lead)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system: no such file
        return False


def _axes_from_layer_meta(meta: dict[str, Any], ndim: int) -> str | None:
    """Axis letters for a labels layer: napari-unet metadata, else single-letter axis labels."""
    md = meta.get("metadata") or {}
    nu = md.get("napari_unet") if isinstance(md, dict) else None
    if isinstance(nu, dict):
        la = nu.get("layer_axes") or nu.get("axes")
        if isinstance(la, str) and len(la) == ndim:
            return la
    labels = meta.get("axis_labels")
    if labels and len(labels) == ndim:
        letters = "".join(str(a).upper() for a in labels)
        if len(letters) == ndim and set(letters) <= set("TZCYX"):
            return letters
    return None


def _physical_scale(meta: dict[str, Any], ndim: int) -> list[float | None] | None:
    """The layer's pixel size per axis in micrometres (seconds for time) from its scale and units;
    None for an axis without calibration (scale 1 in pixels), so that the file claims none."""
    scale = meta.get("scale")
    if scale is None or len(scale) != ndim:
        return None
    from ._units import in_unit

    units = meta.get("units")
    out: list[float | None] = []
    for k, value in enumerate(scale):
        unit = units[k] if units is not None and len(units) == ndim else None
        value = abs(float(value))  # a flipped axis (negative scale): its pixel size; the sign stays in the list
        physical = in_unit(value, unit, "micrometer")
        if physical is None:
            physical = in_unit(value, unit, "second")
        if physical is None:  # no unit, or "pixel": a bare scale counts as micrometres
            physical = None if float(value) == 1.0 else float(value)
        out.append(physical)
    return out


def _offset_pixels(meta: dict[str, Any], ndim: int) -> list[float] | None:
    """The layer's offset per axis in pixels (its translate over its scale: whatever the file
    keeps of the pixel size, the offset comes back on the same pixel)."""
    translate, scale = meta.get("translate"), meta.get("scale")
    if translate is None or len(translate) != ndim:
        return None
    scale = scale if scale is not None and len(scale) == ndim else [1.0] * ndim
    return [float(t) / float(s) if s else 0.0 for t, s in zip(translate, scale)]


def _transform_of(meta: dict[str, Any], ndim: int) -> dict[str, Any] | None:
    """The layer's ``rotate``, ``shear`` and ``affine`` (as lists) that are not the identity, or None."""
    out: dict[str, Any] = {}
    for key, identity in transform_identities(ndim).items():
        value = meta.get(key)
        if value is None:
            continue
        value = np.asarray(getattr(value, "affine_matrix", value), dtype=float)
        if value.shape == identity.shape and np.isfinite(value).all() and not np.allclose(value, identity):
            out[key] = value.tolist()
    return out or None


def _corrected_of(metadata: dict[str, Any], labels: np.ndarray) -> Any:
    """The corrected slices to save with a layer: its list where napari-unet keeps one (its other
    labels are a model's); for labels napari-unet did not make (painted in plain napari, brought
    from another tool) also every slice that holds labels: saved with an empty list, they reopened
    as a model's masks, which the next run replaced unasked."""
    if metadata.get(MASKS_KEY) and CORRECTED_KEY in metadata:
        return metadata
    from ._corrected import planes_given, planes_holding_labels

    return sorted(set(planes_given(metadata)) | set(planes_holding_labels(labels)))


def write_layer_labels(path: str | os.PathLike, data: Any, meta: dict[str, Any]) -> str:
    """Write a Labels layer's ``data`` with its napari ``meta`` (``layer.as_layer_data_tuple()``'s
    state): the TIFF and, beside it, the list of corrected slices (both written, or neither), with
    the layer's axes, calibration, offset and transform; returns the file written.

    Raises
    ------
    LabelsWriteError
        Bad labels (negative or float values, empty axis, ...) or destination; nothing was changed on disk.
    OSError
        A file could not be written or put in place; both files were left as they were.
    """
    if isinstance(data, list) or meta.get("multiscale"):  # labels pyramid: the full resolution (as an array,
        data = data[0]  # napari's MultiScaleData is its coarsest level)
    # labels read lazily (dask, zarr: a large masks file opened again) stay so: written plane by plane
    # below; np.asarray made the whole stack, twice over while dask joined its chunks (4 GB for 2 GB)
    arr = data if _is_lazy(data) else np.asarray(data)
    axes = _axes_from_layer_meta(meta, arr.ndim)
    # the corrected-slices list travels beside the file (and marks it as labels)
    written = write_labels(path, arr, scale=_physical_scale(meta, arr.ndim), axes=axes,
                           corrected=_corrected_of(meta.get("metadata") or {}, arr),
                           offset=_offset_pixels(meta, arr.ndim),
                           calibration=(meta.get("scale"), meta.get("units")),
                           transform=_transform_of(meta, arr.ndim),
                           objects_3d=bool((meta.get("metadata") or {}).get(OBJECTS_3D_KEY)),
                           colours=meta.get("metadata") or {}, model=meta.get("metadata") or {})
    if isinstance(meta.get("metadata"), dict):  # (napari's writer hands the layer's own)
        mark_saved(meta["metadata"], path=written)
    return str(written)


def not_saved_message(path: str | os.PathLike, exc: BaseException) -> str:
    """The one line said when labels could not be saved to ``path``."""
    return f"Labels not saved to '{Path(path).name}' (nothing was changed on disk): {one_line(exc)}"


def napari_write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers: a compressed, atomic TIFF and, beside it, the
    list of corrected slices (both written, or neither).

    Bad labels (negative or float values, empty axis, ...) show a napari error notification with
    the reason and return no written paths; the destination is left untouched. (A ``ValueError``
    raised here would be swallowed by napari's ``layers.save`` into a misleading warning.)
    """
    try:
        return [write_layer_labels(path, data, meta)]
    except (LabelsWriteError, OSError) as e:
        message = not_saved_message(path, e)
        log.warning("%s", message)
        try:
            from napari.utils.notifications import show_error

            show_error(message)
        except ImportError:  # pragma: no cover
            pass
        return []
