"""Open microscopy files: TIFF (plain, BigTIFF, ImageJ, OME), OME-Zarr and folders of 2D images.

Each opener returns an :class:`_Opened`: the metadata (:class:`StackInfo`) read without touching
pixel data, and two callables that give the pixels lazily (dask) or in memory (numpy).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._shapes import is_rgb

from ._axes import AxesError, check_axes, guess_axes, normalize_file_axes

log = logging.getLogger(__name__)

#: File name endings of TIFF files (plain, BigTIFF, ImageJ, OME); one may hold a whole stack.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: Endings of stacks: TIFF files and Zarr groups (``.zarr``, ``.ome.zarr`` folders).
STACK_SUFFIXES = (*TIFF_SUFFIXES, ".zarr")
#: Endings of 2D image files: the planes of an image folder, the files of a training folder.
PLANE_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: Every ending napari-unet reads, stacks and planes.
READABLE_SUFFIXES = tuple(dict.fromkeys((*STACK_SUFFIXES, *PLANE_IMAGE_SUFFIXES)))

# length units to micrometres; time units to seconds
_LENGTH_TO_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6,
    "meter": 1e6, "metre": 1e6, "å": 1e-4, "angstrom": 1e-4,
}
_TIME_TO_S = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("ms", "msec", "millisecond", "milliseconds"), 1e-3),
    **dict.fromkeys(("us", "µs", "μs", "microsecond", "microseconds"), 1e-6),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}


class StackReadError(ValueError):
    """A file or folder looks like microscopy data but cannot be read (empty, corrupt, truncated,
    unsupported shape). The message says what is wrong, in one line."""


@dataclass
class StackInfo:
    """What a stack is, known before its pixels are read.

    Attributes
    ----------
    path : str
        The file or folder.
    name : str
        Layer name (file name without extension).
    format : str
        ``"tiff"``, ``"imagej-tiff"``, ``"ome-tiff"``, ``"ome-zarr"``, ``"image-folder"`` or ``"image"``.
    shape : tuple of int
        Shape of the full-resolution array, one entry per letter of ``axes``.
    dtype : numpy.dtype
        Pixel type.
    axes : str
        One letter per dimension from ``TCZYXS`` (``S`` = RGB samples, last).
    scale : dict
        Physical size per axis letter: micrometres for Z, Y, X, seconds for T. Axes without a
        calibration are missing (size 1 is used).
    channel_names : list of str or None
        One name per channel when the file names its channels.
    n_levels : int
        Number of resolution levels (pyramids in OME-TIFF / OME-Zarr).
    axes_from_file : bool
        False when the axes were guessed from the shape (the metadata said nothing).
    translate : dict
        Position of the first pixel per axis letter, in the units of ``scale`` (OME-Zarr's
        ``translation``: a crop of a larger image, a tile of a mosaic); axes missing are at 0.
    """

    path: str
    name: str
    format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str
    scale: dict[str, float] = field(default_factory=dict)
    channel_names: list[str] | None = None
    n_levels: int = 1
    axes_from_file: bool = True
    left_out: tuple[str, ...] = ()  # files of a folder that are not planes of the stack (masks)
    other_series: int = 0  # images of the file not read (a TIFF's other series, OME-Zarr's images 1, 2, ...)
    translate: dict[str, float] = field(default_factory=dict)
    #: where the other images are, when each can be opened by its own path (a Zarr's series or fields)
    others_at: tuple[str, ...] = ()
    #: which of the file's images this is (0: the first; see ``series`` of :func:`open_any`)
    series: int = 0
    #: the file's images, one line each ("0: Pos1, 512 x 512"), when it holds several (a TIFF's positions)
    series_names: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        """Size of the full-resolution array in memory, in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def scale_for(self, axes: str) -> tuple[float, ...]:
        """Physical size per letter of ``axes`` (1.0 where unknown)."""
        return tuple(float(self.scale.get(a, 1.0)) for a in axes)

    def translate_for(self, axes: str) -> tuple[float, ...] | None:
        """Position of the first pixel per letter of ``axes`` (0.0 where unknown); None when at the origin."""
        values = tuple(float(self.translate.get(a, 0.0)) for a in axes)
        return values if any(values) else None

    def with_axes(self, axes: str) -> StackInfo:
        """A copy whose axes are ``axes`` (checked against the shape); calibrations follow letters."""
        axes = check_axes(axes, self.shape)
        scale = {a: v for a, v in self.scale.items() if a in axes}
        translate = {a: v for a, v in self.translate.items() if a in axes}
        names = self.channel_names if "C" in axes and self.channel_names and \
            len(self.channel_names) == self.shape[axes.index("C")] else None
        return replace(self, axes=axes, scale=scale, translate=translate, channel_names=names, axes_from_file=True)

    def describe(self) -> str:
        """One-line human summary: shape, axes, dtype, pixel size, size in memory."""
        dims = " × ".join(f"{a}{n}" for a, n in zip(self.axes, self.shape, strict=True))
        parts = [f"{dims} ({self.axes}{'' if self.axes_from_file else ', guessed'})", str(np.dtype(self.dtype))]
        cal = []
        for a in "ZYX":
            if a in self.scale:
                cal.append(f"{a} {self.scale[a]:.4g} µm")
        if "T" in self.scale:
            cal.append(f"T {self.scale['T']:.4g} s")
        parts.append("pixel size " + ", ".join(cal) if cal else "pixel size unknown")
        parts.append(_human_bytes(self.nbytes))
        if self.channel_names:
            parts.append("channels " + ", ".join(self.channel_names))
        if self.left_out:
            shown = ", ".join(self.left_out[:3]) + (" …" if len(self.left_out) > 3 else "")
            parts.append(f"left out {len(self.left_out)} masks file(s): {shown}")
        if self.other_series:
            which = "the first" if self.series == 0 else f"image {self.series}"
            parts.append(f"{which} of {self.other_series + 1} images (the others: {others_text(self.others_at)})"
                         if self.others_at else
                         f"{which} of {self.other_series + 1} images in the file"
                         + (" (Series chooses another)" if self.series_names else " (the others are not read)"))
        return "; ".join(parts)


def others_text(paths: tuple[str, ...]) -> str:
    """The paths of a Zarr's other images, to open each by its own ("scan.ome.zarr/1, scan.ome.zarr/2")."""
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def xarray_imported() -> None:
    """Let another thread's import of xarray end before dask arrays are made: dask's ``from_array``
    looks xarray up in ``sys.modules`` without importing it, and while another thread imports it (the
    Segment dock's warm-up thread makes a napari layer, which imports xarray) it found a module half
    made ("partially initialized module 'xarray' has no attribute 'DataArray'": a large stack opened
    then failed). An import here waits for that one; xarray not imported at all is left so (the CLI:
    70 MB and 0.4 s saved)."""
    if "xarray" in sys.modules:
        import xarray  # noqa: F401


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


@dataclass
class _Opened:
    info: StackInfo
    load: Callable[[], np.ndarray]  # full-resolution array in memory
    lazy: Callable[[], list[Any]]  # dask arrays, one per resolution level


def natural_key(name: str) -> list[Any]:
    """Sort key for "natural" order: ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def zarr_container(path: str | os.PathLike) -> Path | None:
    """The outermost Zarr store that ``path`` lies inside (an HCS plate's field ``plate.ome.zarr/A/1/0``,
    a bioformats2raw series ``scan.ome.zarr/1``): a ``.zarr`` folder that is a Zarr group; None when it
    lies in none (a project folder named ``x.zarr`` holding TIFFs is no store)."""
    outer = None
    for parent in Path(path).absolute().parents:
        if parent.suffix.lower() == ".zarr" and parent.name.lower() != ".zarr" and is_zarr_group(parent):
            outer = parent
    return outer


def is_zarr_group(folder: Path) -> bool:
    """Whether ``folder`` is a Zarr group (v2's ``.zgroup``, or v3's ``zarr.json`` of a group)."""
    try:
        if (folder / ".zgroup").is_file():
            return True
        meta = folder / "zarr.json"
        return meta.is_file() and '"group"' in meta.read_text(errors="replace")[:4096]
    except OSError:
        return False


def stack_name(path: str | os.PathLike) -> str:
    """Layer name for a file or folder: its name without (double) extension. A Zarr image inside a Zarr
    store is named by the store and its place in it ("plate_A_1_0" for ``plate.ome.zarr/A/1/0``): every
    field of a plate was "0", and predict wrote them all to one "0_masks.tif" (the labels images of an
    OME-Zarr image, ``.../labels/nuclei``, and files in a store keep their own name)."""
    p = Path(path)
    if is_ome_zarr(p):  # (a folder)
        container = zarr_container(p)
        if container is not None:
            parts = p.absolute().relative_to(container).parts
            if parts and "labels" not in parts and ".." not in parts:
                return "_".join((stack_name(container), *parts))
    name = p.name or p.resolve().name  # ("." or "..": the folder's own name, not "")
    for ext in (".ome.tiff", ".ome.tif", ".ome.btf", ".ome.tf8", ".ome.tf2", ".ome.zarr", *READABLE_SUFFIXES):
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


# --------------------------------------------------------------------------------------- detection
def is_ome_zarr(path: str | os.PathLike) -> bool:
    """True for a folder that is a Zarr group (``.zarr`` name or Zarr metadata inside): one stack,
    where a folder of plain images is many."""
    path = Path(path)
    return path.is_dir() and (
        path.suffix.lower() == ".zarr" or (path / ".zattrs").exists() or (path / "zarr.json").exists()
    )


def list_plane_files(folder: Path) -> list[Path]:
    """2D image files (:data:`PLANE_IMAGE_SUFFIXES`) of a folder in natural sort order (hidden
    files skipped)."""
    files = [
        f for f in Path(folder).iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in PLANE_IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda f: natural_key(f.name))


def detect_kind(path: str | os.PathLike) -> str | None:
    """``"tiff"``, ``"ome-zarr"``, ``"image-folder"``, ``"image"`` or None (not something we read)."""
    p = Path(path)
    if p.is_dir():
        if is_ome_zarr(p):
            return "ome-zarr"
        try:
            return "image-folder" if list_plane_files(p) else None
        except OSError:
            return None
    low = p.name.lower()
    if low.endswith(TIFF_SUFFIXES):
        return "tiff"
    if low.endswith(PLANE_IMAGE_SUFFIXES):
        return "image"
    return None


def open_any(path: str | os.PathLike, series: int | None = None) -> _Opened:
    """Open ``path`` (metadata only) with the opener its kind calls for; ``series``: which of a TIFF's
    images (positions) to open (None: the first).

    Raises
    ------
    StackReadError
        When the path is missing, of an unknown kind, empty, corrupt or of unsupported shape, or holds
        no image ``series``.
    """
    p = Path(path)
    if not p.exists():
        raise StackReadError(f"'{p}' does not exist")
    kind = detect_kind(p)
    if kind is None:
        if p.is_dir():
            endings = ", ".join(PLANE_IMAGE_SUFFIXES)
            raise StackReadError(f"folder '{p.name}' holds no images ({endings}) and is not a Zarr group")
        raise StackReadError(
            f"'{p.name}' is not a file type napari-unet reads (TIFF, OME-Zarr, PNG, JPEG, BMP)"
        )
    opener = {"tiff": _open_tiff, "ome-zarr": _open_zarr, "image-folder": _open_folder, "image": _open_image}
    if series and kind != "tiff":
        if kind == "ome-zarr":
            raise StackReadError(f"'{p.name}': a series is chosen in TIFF files of several images; a Zarr's images "
                                 f"open by their paths ({p.name}/1, ...)")
        raise StackReadError(f"'{p.name}' holds one image: a series is chosen in TIFF files of several")
    try:
        opened = _open_tiff(p, series) if kind == "tiff" else opener[kind](p)
    except StackReadError:
        raise
    except AxesError as e:
        raise StackReadError(f"cannot read '{p.name}': {e}") from e
    except MemoryError as e:
        raise StackReadError(f"cannot read '{p.name}': not enough memory for its metadata") from e
    except Exception as e:  # corrupt files raise anything from struct.error to KeyError
        raise StackReadError(f"cannot read '{p.name}': {type(e).__name__}: {e}") from e
    _check_shape(opened.info)
    return opened


def _check_shape(info: StackInfo) -> None:
    if np.dtype(info.dtype).kind not in "biuf":  # (complex numbers: a traceback from train and gui)
        raise StackReadError(f"cannot read '{Path(info.path).name}': it holds {np.dtype(info.dtype)} values; "
                             "napari-unet reads images of real numbers (integers or floats)")
    if any(s == 0 for s in info.shape):
        raise StackReadError(
            f"cannot read '{info.name}': it has an empty axis (shape {info.shape}, axes {info.axes}); "
            "there are no pixels to show"
        )


# -------------------------------------------------------------------------------------------- TIFF
def _open_tiff(p: Path, choice: int | None = None) -> _Opened:
    import tifffile

    size = p.stat().st_size
    if size == 0:
        raise StackReadError(f"cannot read '{p.name}': the file is empty (0 bytes)")
    with open(p, "rb") as f:
        head = f.read(4)
    if head[:2] not in (b"II", b"MM") or len(head) < 4:
        raise StackReadError(
            f"cannot read '{p.name}': it is not a TIFF file (no TIFF header), although its name ends in "
            f"'{p.suffix}'"
        )
    options: dict[str, Any] = {}
    with _TiffWarnings() as warned:
        try:
            tif = tifffile.TiffFile(p)
            if _planes_written_one_by_one(tif):  # read as the stack it is, as ImageJ does
                tif.close()
                options = {"is_shaped": False}
                tif = tifffile.TiffFile(p, **options)
        except Exception as e:
            raise StackReadError(f"cannot read '{p.name}': corrupt or truncated TIFF ({e})") from e
        try:
            index, in_file = _image_series(tif, p)
            if choice:  # (another of the file's images: a position of a multi-position acquisition)
                if not 0 <= choice < max(len(in_file), 1):
                    raise StackReadError(f"'{p.name}' holds {max(len(in_file), 1)} image(s): series {choice} is "
                                         f"not one (0 to {max(len(in_file), 1) - 1})")
                index = in_file[choice]
            series = tif.series[index] if tif.series else None
            others = len(in_file) - 1 if in_file else 0
            series_names = tuple(f"{k}: {_series_label(tif.series[i], k)}" for k, i in enumerate(in_file)) \
                if others else ()
            if others:  # (said by File > Open, Load stack and predict: StackInfo.other_series)
                log.info("'%s' holds %d image series (positions, or planes written one by one); image %d, %s, is "
                         "read.", p.name, others + 1, choice or 0, "x".join(map(str, series.shape)))
        except Exception:
            tif.close()
            raise
    try:
        if series is None:
            raise StackReadError(f"cannot read '{p.name}': the TIFF holds no images")
        broken = [m for m in warned if "invalid page offset" in m or "corrupt" in m or "truncat" in m]
        if broken:
            raise StackReadError(f"cannot read '{p.name}': the file is truncated or corrupt ({broken[0]})")
        missing = sorted({m.group(1) for m in map(re.compile(r"failed to read '([^']+)'").search, warned) if m})
        if missing and any(page is None for page in series.pages):  # in files not found (read as zeros)
            raise StackReadError(
                f"cannot read '{p.name}': it is one file of a multi-file OME-TIFF, and some of its planes are in "
                f"files that are not beside it ({', '.join(missing[:3])}"
                f"{' …' if len(missing) > 3 else ''}); put them back in its folder, under their own names")
        ij = tif.imagej_metadata if tif.is_imagej else None
        if ij and series.kind.lower() != "imagej" and int(ij.get("images", 1)) > len(tif.pages):
            raise StackReadError(
                f"cannot read '{p.name}': the file is truncated (ImageJ metadata lists {ij['images']} "
                f"images, the file holds {len(tif.pages)})"
            )
        shape = tuple(int(s) for s in series.shape)
        file_axes = series.axes
        planar = None if tif.is_shaped else _planar_colour_order(file_axes, shape, series)
        if planar is not None:  # colour planes stored one after the other: read with the samples last
            shape, file_axes = tuple(shape[i] for i in planar), "".join(file_axes[i] for i in planar)
        if (file_axes.upper().endswith("S") and "C" not in file_axes.upper()
                and _grey_samples(series)):  # channels stored side by side, not colour
            file_axes = file_axes[:-1] + "C"
        _check_tiff_complete(p, series, size)
        fmt = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
        known = bool(set(file_axes.upper()) - set("QIYXS")) or len(shape) <= 2 or (
            len(shape) == 3 and file_axes.upper() == "YXS"
        )
        axes = normalize_file_axes(file_axes, shape)
        scale: dict[str, float] = {}
        names: list[str] | None = None
        if tif.is_ome:
            scale, names = _ome_tiff_calibration(tif.ome_metadata or "", index, series.name)
        elif tif.is_imagej:
            scale = _imagej_calibration(tif)
        else:
            scale = _resolution_calibration(tif.pages.first)
        scale = {a: v for a, v in scale.items() if a in axes and np.isfinite(v) and v > 0}
        if names is not None and ("C" not in axes or len(names) != shape[axes.index("C")]):
            names = None
        n_levels = len(series.levels)
        info = StackInfo(
            path=str(p), name=stack_name(p) + (f"_s{choice}" if choice else ""), format=fmt, shape=shape,
            dtype=np.dtype(series.dtype), axes=axes, scale=scale, channel_names=names, n_levels=n_levels,
            axes_from_file=known, other_series=others, series=int(choice or 0), series_names=series_names,
        )
    finally:
        tif.close()  # metadata is all we need now; pixels are read by load() / lazy()

    def load() -> np.ndarray:
        try:
            with _TiffWarnings(), tifffile.TiffFile(p, **options) as t:  # (said when it was opened)
                pixels = t.series[index].asarray()
            return pixels if planar is None else pixels.transpose(planar)
        except MemoryError as e:
            raise StackReadError(f"'{p.name}' ({_human_bytes(info.nbytes)}) does not fit in memory; "
                                 "open it lazily instead") from e
        except Exception as e:
            raise StackReadError(f"cannot read the pixels of '{p.name}': {e} (is the file truncated?)") from e

    def lazy() -> list[Any]:
        import dask.array as da
        from dask.base import tokenize

        xarray_imported()
        # the levels keep this TiffFile open for as long as the dask arrays live
        with _TiffWarnings():  # (said when it was opened)
            lazy_tif = tifffile.TiffFile(p, **options)
        stamp = p.stat()
        levels = []
        for level in range(n_levels):
            source = TiffLevel(p, level, options, lazy_tif, series=index)
            name = "tiff-" + tokenize(str(p.resolve()), stamp.st_mtime_ns, stamp.st_size, level, options, index)
            level = da.from_array(source, chunks=source.chunks, name=name, asarray=True)
            levels.append(level if planar is None else level.transpose(planar))
        return levels

    return _Opened(info, load, lazy)


class TiffLevel:
    """One resolution level of a TIFF's series (its image: :func:`_image_series`) as an array that
    dask reads block by block (through tifffile's zarr store of it). It travels as its path: a
    dask.distributed worker opens the file itself (a graph holding the open file could not be sent:
    ``predict --scheduler`` failed on every input read lazily)."""

    def __init__(self, path: str | os.PathLike, level: int, options: dict[str, Any], tif: Any = None,
                 series: int = 0) -> None:
        self.path, self.level, self.options, self.series = str(path), int(level), dict(options), int(series)
        self._tif, self._array = tif, None
        array = self._open()
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)
        self.chunks = tuple(array.chunks)

    def _open(self) -> Any:
        if self._array is None:
            import tifffile
            import zarr

            with _TiffWarnings():  # (said when it was opened; tifffile finds its series here, on first use)
                if self._tif is None:
                    self._tif = tifffile.TiffFile(self.path, **self.options)
                self._array = zarr.open_array(self._tif.series[self.series].aszarr(level=self.level), mode="r")
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._open()[key])

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_tif", "_array")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tif, self._array = None, None


def _grey_samples(series: Any) -> bool:
    """Whether a TIFF's samples per pixel are grey channels (photometric MINISBLACK or MINISWHITE:
    a Y, X, C image of 2-4 channels written contiguous), not RGB(A) colour."""
    try:
        photometric = series.pages[0].photometric
    except Exception:  # noqa: BLE001 - (no page to tell: colour, as the axes say)
        return False
    import tifffile

    return photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)


def _planar_colour_order(axes: str, shape: tuple[int, ...], series: Any) -> list[int] | None:
    """The order putting the colour samples last, for a TIFF of RGB(A) colour stored as planes one
    after the other (PlanarConfiguration separate: tifffile's ``S`` before Y, X, as Bio-Formats and
    scanners write it); None for any other (interleaved colour; grey samples, which are channels).
    (Not asked of tifffile's own "shaped" files: it stores every (3, Y, X) array so, a stack of three
    planes written without a word of colour as much as an RGB image.)"""
    axes = axes.upper()
    if "S" not in axes or axes.endswith("S") or shape[axes.index("S")] not in (3, 4) or _grey_samples(series):
        return None
    try:
        import tifffile

        if series.pages[0].photometric != tifffile.PHOTOMETRIC.RGB:
            return None
    except Exception:  # noqa: BLE001 - (no page to tell: channels, as before)
        return None
    s = axes.index("S")
    return [i for i in range(len(axes)) if i != s] + [s]


def _planes_written_one_by_one(tif: Any) -> bool:
    """Whether a TIFF is a stack whose planes tifffile wrote one call each (a script's loop over
    ``TiffWriter.write``): each page a "shaped" series of its own, all of one shape and type, no OME
    or ImageJ description; read as one series of pages it is the stack (not the first plane and
    "positions or series")."""
    try:
        if not tif.is_shaped or tif.is_ome or tif.is_imagej or len(tif.series) < 2:
            return False
        first = tif.series[0]
        return all(len(s.pages) == 1 and len(s.levels) == 1 and s.shape == first.shape and s.dtype == first.dtype
                   for s in tif.series)
    except Exception:  # noqa: BLE001 - (a damaged file: read as it is, and said there)
        return False


class _TiffWarnings(logging.Handler):
    """Collect what tifffile logs while a file is opened (it logs, rather than raises, on many
    kinds of corruption): the reader says what matters in its own words; the rest is logged at the
    debug level (passed on, tifffile's lines came before the CLI's one line about a damaged file)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = re.sub(r"<tifffile\.[^>]*>\s*", "", record.getMessage())
        self.messages.append(" ".join(message.split()))

    _lock = threading.Lock()
    _open = 0  # files being opened, in all threads
    _propagate = True  # tifffile's logger's before the first of them

    def __enter__(self) -> list[str]:
        logger = logging.getLogger("tifffile")
        with _TiffWarnings._lock:
            if _TiffWarnings._open == 0:
                _TiffWarnings._propagate, logger.propagate = logger.propagate, False
            _TiffWarnings._open += 1
        logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("tifffile")
        logger.removeHandler(self)
        with _TiffWarnings._lock:
            _TiffWarnings._open -= 1
            if _TiffWarnings._open == 0:
                logger.propagate = _TiffWarnings._propagate
        for message in self.messages:
            log.debug("tifffile: %s", message)


def _image_series(tif: Any, p: Path) -> tuple[int, list[int]]:
    """Which of a TIFF's series is its image, and the series of images held in this file.

    Its image is the first series that is no preview and whose pixels are in this file: a file of a
    multi-position acquisition split per position (Bio-Formats' bfconvert) carries the OME-XML of
    every position, and its own is not the first (the first position was read, from another file);
    a thumbnail page first is a preview, not the image. (0, []) for a TIFF without series."""
    series = list(tif.series)
    images = [i for i, s in enumerate(series) if not _reduced(s)] or list(range(len(series)))[:1]

    def here(s: Any) -> bool:
        try:
            return os.path.samefile(s.pages[0].parent.filehandle.path, p)
        except (AttributeError, IndexError, TypeError, OSError):
            return True  # (nothing says it is elsewhere)

    in_file = [i for i in images if here(series[i])]
    return (in_file or images or [0])[0], in_file


def _series_label(series: Any, k: int) -> str:
    """One line for a TIFF series in a list to choose from: its name (an OME position's) and shape."""
    name = str(getattr(series, "name", "") or "").strip()
    shape = " x ".join(str(int(s)) for s in series.shape)
    return f"{name}, {shape}" if name and name.lower() not in ("", "series", f"series {k}") else shape


def _reduced(series: Any) -> bool:
    """Whether a TIFF series is a reduced-resolution copy of another (a thumbnail or preview page:
    its first page's NewSubfileType says so), not an image of its own."""
    try:
        return bool(series.pages[0].is_reduced)
    except (AttributeError, IndexError, TypeError):
        return False


def _check_tiff_complete(p: Path, series: Any, size: int) -> None:
    """Raise when the pixel data the TIFF points to lies beyond the end of the file (truncated)."""
    itemsize = np.dtype(series.dtype).itemsize
    offset = getattr(series, "dataoffset", None)
    if offset is not None:
        end = int(offset) + int(np.prod(series.shape, dtype=np.int64)) * itemsize
        if end > size:
            raise StackReadError(
                f"cannot read '{p.name}': the file is truncated ({_human_bytes(size)} on disk, "
                f"the image needs {_human_bytes(end)})"
            )
        return
    pages = [pg for pg in (series.pages[0], series.pages[-1]) if pg is not None]
    for page in pages:
        ends = [int(o) + int(b) for o, b in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if ends and max(ends) > size:
            raise StackReadError(
                f"cannot read '{p.name}': the file is truncated (image data runs past the end of the file)"
            )
    expected = int(np.prod(series.shape, dtype=np.int64))
    if expected == 0:
        raise StackReadError(f"cannot read '{p.name}': it has an empty axis (shape {tuple(series.shape)})")


def _unit_factor(unit: str | None, table: dict[str, float]) -> float | None:
    if unit is None:
        return None
    return table.get(str(unit).strip().lower().replace("\\u00b5", "µ"))


def _set_calibration(scale: dict[str, float], axis: str, value: str, factor: float, what: str) -> None:
    """``scale[axis] = value * factor``; a value that is no number (e.g. "0,5") is skipped with a
    warning: the image still opens, uncalibrated along that axis."""
    try:
        scale[axis] = float(value) * factor
    except ValueError:
        log.warning("The OME-XML %s %r is not a number: the %s axis is left uncalibrated.", what, value, axis)


def _ome_tiff_calibration(xml: str, index: int = 0, name: str | None = None) -> tuple[dict[str, float], list[str] | None]:
    """Pixel sizes and channel names of the OME-XML's image ``index`` (tifffile's series, in the
    order of the Image elements; by its ``name`` where that is one image's alone)."""
    scale: dict[str, float] = {}
    names: list[str] | None = None
    if not xml:
        return scale, names
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        log.warning("OME-XML metadata is not valid XML; ignoring calibration")
        return scale, names
    images = [el for el in root if el.tag.endswith("}Image") or el.tag == "Image"]
    named = [el for el in images if name and el.get("Name") == name]
    image = named[0] if len(named) == 1 else images[index] if index < len(images) else root
    pixels = next((el for el in image.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return scale, names
    for a in "XYZ":
        v = pixels.get(f"PhysicalSize{a}")
        if v is not None:
            f = _unit_factor(pixels.get(f"PhysicalSize{a}Unit", "µm"), _LENGTH_TO_UM)
            if f is not None:
                _set_calibration(scale, a, v, f, f"PhysicalSize{a}")
    t = pixels.get("TimeIncrement")
    if t is not None:
        f = _unit_factor(pixels.get("TimeIncrementUnit", "s"), _TIME_TO_S)
        if f is not None:
            _set_calibration(scale, "T", t, f, "TimeIncrement")
    for a, b in (("X", "Y"), ("Y", "X")):  # one of the two given: square pixels (as the writer keeps them)
        if a in scale and pixels.get(f"PhysicalSize{b}") is None:
            scale[b] = scale[a]
    chans = [el for el in pixels if el.tag.endswith("Channel")]
    if chans and all(c.get("Name") for c in chans):
        names = [str(c.get("Name")) for c in chans]
    return scale, names


def _imagej_calibration(tif: Any) -> dict[str, float]:
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit", None)
    f = _unit_factor(unit, _LENGTH_TO_UM) if unit else None
    scale: dict[str, float] = {}
    if f is not None:
        page = tif.pages.first
        for a, tag in (("X", "XResolution"), ("Y", "YResolution")):
            v = _pixel_size_from_tag(page, tag)
            if v is not None:
                scale[a] = v * f
        if "spacing" in meta:
            scale["Z"] = float(meta["spacing"]) * f
    if meta.get("finterval"):
        tf = _unit_factor(meta.get("tunit", "s"), _TIME_TO_S)
        if tf is None:  # (not taken for seconds: 2 hours read as 2 s)
            log.warning("The ImageJ time unit %r is not known: the T axis is left uncalibrated.", meta.get("tunit"))
        else:
            scale["T"] = float(meta["finterval"]) * tf
    return scale


def _pixel_size_from_tag(page: Any, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value
    if num == 0:
        return None
    return den / num


def _resolution_calibration(page: Any) -> dict[str, float]:
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    # 3 = centimetre, 4 = millimetre, 5 = micrometre; inches (2) are nearly always screen DPI
    factor = {3: 1e4, 4: 1e3, 5: 1.0}.get(unit)
    scale: dict[str, float] = {}
    if factor is not None:
        for a, tag in (("X", "XResolution"), ("Y", "YResolution")):
            v = _pixel_size_from_tag(page, tag)
            if v is not None:
                scale[a] = v * factor
    return scale


# ---------------------------------------------------------------------------------------- OME-Zarr
def _zarr_axis_letters(raw_axes: list[Any]) -> str:
    """Axis letters of OME-Zarr ``axes``: by each axis' ``type`` first (NGFF 0.4 lets names be
    anything: "channel", "time", "depth"), then its name (t, c, z, y, x); the last two space axes
    not named so are Y and X, one before them Z. Unknown axes are "Q" (guessed from the shape)."""
    names = [str(a.get("name", "") if isinstance(a, dict) else a).lower() for a in raw_axes]
    types = [str(a.get("type", "")).lower() if isinstance(a, dict) else "" for a in raw_axes]
    letters = []
    for name, kind in zip(names, types):
        if name in ("t", "c", "z", "y", "x"):
            letters.append(name.upper())
        elif kind == "time" or name == "time":
            letters.append("T")
        elif kind == "channel" or name in ("channel", "channels", "ch"):
            letters.append("C")
        else:
            letters.append("S" if kind == "space" else "Q")  # a space axis of another name: placed below
    spare = [i for i, letter in enumerate(letters) if letter == "S"]
    free = [letter for letter in "ZYX" if letter not in letters]
    for i, letter in zip(reversed(spare), reversed(free)):  # the last spare space axes are Y, X, then Z
        letters[i] = letter
    return "".join("Q" if letter == "S" else letter for letter in letters)


def shown_path(p: Path) -> str:
    """``p`` as a user finds it: from its Zarr container on ("plate.ome.zarr/A/1"), or its name."""
    container = zarr_container(p)
    return p.relative_to(container.parent).as_posix() if container is not None else p.name


def _well_fields(group: Any) -> list[str]:
    """The paths of the fields (images) an OME-Zarr well group lists (NGFF ``well.images``)."""
    attrs = dict(group.attrs)
    well = attrs.get("ome", attrs).get("well")
    images = well.get("images") if isinstance(well, dict) else None
    # (a field's path is one name: "../x" or "/x" would open outside the well)
    return [i["path"] for i in images or [] if isinstance(i, dict) and isinstance(i.get("path"), str)
            and re.fullmatch(r"[A-Za-z0-9_.-]+", i["path"]) and i["path"] not in (".", "..")]


def _open_zarr(p: Path) -> _Opened:
    import zarr

    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as e:
        raise StackReadError(f"cannot read '{p.name}': not a readable Zarr group ({e})") from e
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    others = 0
    others_at: tuple[str, ...] = ()
    named = p  # (what the image is named by: the store, or series 0 of several, as when opened by its path)
    if not multiscales and isinstance(ome.get("plate"), dict):  # an HCS plate: its wells hold the images
        wells = [w["path"] for w in ome["plate"].get("wells") or [] if isinstance(w, dict) and isinstance(w.get("path"), str)]
        first_field = _well_fields(group[wells[0]])[:1] if wells and wells[0] in group else []
        example = f"{shown_path(p)}/{wells[0]}/{(first_field or ['0'])[0]}" if wells else None
        raise StackReadError(f"'{p.name}' is a plate of {len(wells)} well(s)"
                             f"{' (' + ', '.join(wells[:4]) + (' …' if len(wells) > 4 else '') + ')' if wells else ''}: "
                             f"open one field of a well{f', e.g. {example}' if example else ''}")
    if not multiscales and isinstance(ome.get("well"), dict):  # a well of a plate: its fields are the images
        fields = _well_fields(group)
        if not fields:
            raise StackReadError(f"cannot read '{p.name}': a well of a plate that lists no field (image)")
        opened = _open_zarr(p / fields[0])
        if len(fields) > 1:  # (said by File > Open, Load stack and predict: StackInfo.other_series)
            log.info("'%s' holds %d fields; the first one (%s) is opened.", p.name, len(fields), fields[0])
        return replace(opened, info=replace(opened.info, other_series=len(fields) - 1,
                                            others_at=tuple(f"{shown_path(p)}/{f}" for f in fields[1:])))
    if not multiscales and "0" in group and not hasattr(group["0"], "shape"):
        # bioformats2raw layout (the usual converter output): the images are groups 0, 1, ...
        series = sorted((k for k in group.group_keys() if k.isdigit()), key=int)
        if len(series) > 1:  # (said by File > Open, Load stack and predict: StackInfo.other_series)
            log.info("'%s' holds %d images (series); the first one (0) is opened.", p.name, len(series))
        others = max(0, len(series) - 1)
        others_at = tuple(f"{shown_path(p)}/{k}" for k in series if k != "0")
        if others:  # ("scan_0", as scan.ome.zarr/0 opened by its path is: its masks pair with either)
            named = p / "0"
        group = group["0"]
        attrs = dict(group.attrs)
        ome = attrs.get("ome", attrs)
        multiscales = ome.get("multiscales")
    if not multiscales and isinstance(ome.get("labels"), list) and ome["labels"]:
        # the labels container of an OME-Zarr image: its one labels image, else which to choose
        names = [str(n) for n in ome["labels"]]
        if len(names) > 1 or names[0] in (".", "..") or set(names[0]) & set("/\\") or names[0] not in group:
            raise StackReadError(f"'{p.name}' holds the labels images {', '.join(names)} of an OME-Zarr image: "
                                 f"open one of them ({p.name}/{names[0]}, ...)")
        opened = _open_zarr(p / names[0])
        return replace(opened, info=replace(opened.info, name=names[0]))  # (its own name, as a labels image's)
    if not multiscales:
        raise StackReadError(f"cannot read '{p.name}': the Zarr group has no OME 'multiscales' metadata")
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise StackReadError(f"cannot read '{p.name}': OME-Zarr 'multiscales' lists no datasets")
    arrays = []
    for d in datasets:  # levels, largest first; a missing lower level ends the pyramid there
        where = d.get("path") if isinstance(d, dict) else None
        try:
            level = group[str(where)]
            level.shape  # noqa: B018 - a group where an array should be has none
        except (KeyError, AttributeError):
            if not arrays:
                raise StackReadError(f"cannot read '{p.name}': its full-resolution array '{where}', listed in "
                                     "its OME 'multiscales' metadata, is missing") from None
            log.warning("'%s': the resolution level '%s' is missing; %d level(s) used.", p.name, where, len(arrays))
            break
        arrays.append(level)
    shape = tuple(int(s) for s in arrays[0].shape)
    raw_axes = ms.get("axes")
    scale: dict[str, float] = {}
    translate: dict[str, float] = {}
    if raw_axes and len(raw_axes) != len(shape):
        raise StackReadError(f"cannot read '{p.name}': its OME metadata names {len(raw_axes)} axes but the array "
                             f"has {len(shape)} dimensions (shape {shape})")
    if raw_axes:
        axes = normalize_file_axes(_zarr_axis_letters(raw_axes), shape)
        known = True
        level_scale, level_shift = _zarr_transform(datasets[0].get("coordinateTransformations"), len(shape))
        global_scale, global_shift = _zarr_transform(ms.get("coordinateTransformations"), len(shape))
        for i, a in enumerate(axes):
            unit = raw_axes[i].get("unit") if isinstance(raw_axes[i], dict) else None
            v = level_scale[i] * global_scale[i]
            # the dataset's transformations first, then the multiscales' own: x * s + t, then * S + T
            shift = level_shift[i] * global_scale[i] + global_shift[i]
            # as for TIFF: a scale of 0, negative or not a number is no calibration (the axis is uncalibrated,
            # and a translation in its units means nothing)
            if a in "ZYXT" and np.isfinite(v) and v > 0:
                f = _unit_factor(unit, _LENGTH_TO_UM if a != "T" else _TIME_TO_S) if unit else None
                if f is not None or v != 1.0:
                    scale[a] = v * (f or 1.0)
                if shift and np.isfinite(shift):
                    translate[a] = shift * (f or 1.0)
    else:  # OME-Zarr 0.1/0.2 have no axes: always TCZYX
        axes = "TCZYX"[-len(shape):] if len(shape) <= 5 else normalize_file_axes("Q" * len(shape), shape)
        known = len(shape) == 5
    chan_names = None
    omero = ome.get("omero") or attrs.get("omero")
    if omero and "C" in axes:
        chans = omero.get("channels") or []
        labels = [c.get("label") for c in chans]
        if len(labels) == shape[axes.index("C")] and all(labels):
            chan_names = [str(x) for x in labels]
    info = StackInfo(
        path=str(p), name=stack_name(named), format="ome-zarr", shape=shape, dtype=np.dtype(arrays[0].dtype),
        axes=axes, scale=scale, channel_names=chan_names, n_levels=len(arrays), axes_from_file=known,
        other_series=others, translate=translate, others_at=others_at,
    )

    def load() -> np.ndarray:
        try:
            return np.asarray(arrays[0][...])
        except Exception as e:
            raise StackReadError(f"cannot read the pixels of '{p.name}': {e}") from e

    def lazy() -> list[Any]:
        import dask.array as da

        xarray_imported()
        return [da.from_zarr(a) for a in arrays]

    return _Opened(info, load, lazy)


def _zarr_transform(transforms: Any, ndim: int) -> tuple[list[float], list[float]]:
    """The scale and translation per axis of a list of OME-Zarr coordinate transformations, applied
    in their order (a scale after a translation scales it too); others, or of the wrong length, are
    left out."""
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for t in transforms if isinstance(transforms, list) else []:
        kind = t.get("type") if isinstance(t, dict) else None
        values = t.get(kind) if kind in ("scale", "translation") else None
        if not isinstance(values, list) or len(values) != ndim:
            continue
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            continue
        if kind == "scale":
            scale = [a * b for a, b in zip(scale, values, strict=True)]
            shift = [a * b for a, b in zip(shift, values, strict=True)]
        else:
            shift = [a + b for a, b in zip(shift, values, strict=True)]
    return scale, shift


# ------------------------------------------------------------------------------- folders and images
def _read_plane(f: Path) -> np.ndarray:
    if f.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with _TiffWarnings(), tifffile.TiffFile(f) as t:  # (a position's own file: its image, not the first)
            return t.series[_image_series(t, f)[0]].asarray()
    from PIL import Image

    with Image.open(f) as im:
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im).astype(np.uint16)
        if im.mode == "LA":  # grey with transparency: the grey values are the image
            return np.asarray(im.convert("L"))
        return np.asarray(im)


def _read_plane_as(f: Path, dtype: Any) -> np.ndarray:
    return _read_plane(f).astype(dtype, copy=False)


def _plane_header(f: Path) -> tuple[tuple[int, ...], np.dtype]:
    if f.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with _TiffWarnings(), tifffile.TiffFile(f) as t:
            s = t.series[_image_series(t, f)[0]]
            return tuple(s.shape), np.dtype(s.dtype)
    from PIL import Image

    with Image.open(f) as im:
        w, h = im.size
        mode_info = {
            "L": ((), np.uint8), "1": ((), np.bool_), "P": ((), np.uint8), "RGB": ((3,), np.uint8),
            "RGBA": ((4,), np.uint8), "I;16": ((), np.uint16), "I;16B": ((), np.uint16),
            "I;16L": ((), np.uint16), "I": ((), np.int32), "F": ((), np.float32), "LA": ((), np.uint8),
        }
        if im.mode not in mode_info:
            arr = np.asarray(im)
            return tuple(arr.shape), arr.dtype
        extra, dt = mode_info[im.mode]
        return (h, w, *extra), np.dtype(dt)


def _open_image(p: Path) -> _Opened:
    if p.stat().st_size == 0:
        raise StackReadError(f"cannot read '{p.name}': the file is empty (0 bytes)")
    shape, dtype = _plane_header(p)
    axes = guess_axes(shape, rgb=is_rgb(shape))
    info = StackInfo(path=str(p), name=stack_name(p), format="image", shape=shape, dtype=dtype, axes=axes,
                     axes_from_file=True)

    def load() -> np.ndarray:
        return _read_plane(p)

    def lazy() -> list[Any]:
        import dask
        import dask.array as da

        return [da.from_delayed(dask.delayed(_read_plane)(p), shape=shape, dtype=dtype)]

    return _Opened(info, load, lazy)


def masks_files_among(files: list[Path], folder_name: str | None = None) -> list[Path]:
    """The files of a folder's listing that hold masks of another image rather than an image: a
    file with a napari-unet list of corrected slices beside it, or one named like the labels of
    another file there ("p0_masks.tif" beside "p0.png", the names the CLI writes), or of the folder
    itself, ``folder_name`` ("planes_masks.tif": the masks ``predict --folder-as-stack`` wrote there)."""
    from ._corrected import has_sidecar
    from ._training_files import LABEL_NAME_SUFFIXES

    stems = {_stem(f).lower() for f in files} | ({folder_name.lower()} if folder_name else set())
    out = []
    for f in files:
        stem = _stem(f).lower()
        named = any(stem.endswith(end) and stem[: -len(end)] in stems for end in LABEL_NAME_SUFFIXES if end)
        if named or has_sidecar(f):
            out.append(f)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for end in sorted(PLANE_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(end):
            return name[: -len(end)]
    return path.stem


def _folder_axes_and_scale(first: Path, shape: tuple[int, ...], guessed: str) -> tuple[str, dict[str, float]]:
    """Axes and pixel size of a folder of files stacked along a new first axis: what its first file
    says of its own axes (a TIFF's calibration, as ImageJ's Image Sequence writes it; the axes of
    stacks saved one a time point) under the stacking axis, which stays guessed (Z, or T over
    files that hold Z)."""
    if first.suffix.lower() not in TIFF_SUFFIXES:
        return guessed, {}
    try:
        own = _open_tiff(first).info
    except Exception:  # noqa: BLE001 - (read again, and said, when the planes are read)
        return guessed, {}
    if tuple(own.shape) != tuple(shape[1:]):
        return guessed, {}
    axes = guessed
    if own.axes_from_file and guessed[1:] != own.axes:
        lead = next((a for a in (guessed[0], "T", "Z") if a not in own.axes), None)
        axes = lead + own.axes if lead else guessed
    return axes, {a: v for a, v in own.scale.items() if a in axes[1:] and axes[1:] == own.axes}


def _open_folder(p: Path) -> _Opened:
    files = list_plane_files(p)
    masks = masks_files_among(files, p.resolve().name)
    if masks and len(masks) < len(files):
        log.warning("Folder '%s': %d masks file(s) left out of the stack (%s).", p.name, len(masks),
                    ", ".join(f.name for f in masks[:3]) + (" …" if len(masks) > 3 else ""))
        files = [f for f in files if f not in masks]
    empty = [f.name for f in files if f.stat().st_size == 0]
    if empty:
        raise StackReadError(f"cannot read folder '{p.name}': file '{empty[0]}' is empty (0 bytes)")
    try:
        headers = [_plane_header(f) for f in files]
    except Exception as e:
        raise StackReadError(f"cannot read folder '{p.name}': one of its images is unreadable ({e})") from e
    plane_shape, dtype = headers[0]
    for f, (s, d) in zip(files, headers, strict=True):
        if s != plane_shape:
            raise StackReadError(
                f"cannot stack folder '{p.name}': '{f.name}' has shape {s} but '{files[0].name}' has "
                f"{plane_shape}; all images must have the same size"
            )
        if d != dtype:
            dtype = np.promote_types(dtype, d)
    shape = (len(files), *plane_shape)
    rgb = is_rgb(plane_shape)
    axes, scale = _folder_axes_and_scale(files[0], shape, guess_axes(shape, rgb=rgb))
    info = StackInfo(
        path=str(p), name=stack_name(p), format="image-folder", shape=shape, dtype=np.dtype(dtype),
        axes=axes, scale=scale, axes_from_file=False, left_out=tuple(f.name for f in masks if f not in files),
    )

    def load() -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        for i, f in enumerate(files):
            try:
                out[i] = _read_plane(f)
            except Exception as e:
                raise StackReadError(f"cannot read '{f.name}' in folder '{p.name}': {e}") from e
        return out

    def lazy() -> list[Any]:
        import dask
        import dask.array as da

        planes = [  # each plane in the stack's type (an 8-bit plane beside 16-bit ones is no byte view of them)
            da.from_delayed(dask.delayed(_read_plane_as)(f, dtype), shape=plane_shape, dtype=dtype) for f in files
        ]
        return [da.stack(planes)]

    return _Opened(info, load, lazy)
