"""How an image array splits into 2D planes, and how one plane (or a window of it) is read.

Every path that segments (the Segment widget, the CLI, the OME-Zarr batch path, training
example gathering) reads planes through :func:`read_plane`, so lazy arrays (memory maps,
zarr, dask) are read one plane at a time everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet._shapes import channels_last

from .preprocess import ImageError, fill_missing

#: Extra axes (beyond the 2D plane and the RGB axis) that a stack may have: time, channels, z and
#: one more (positions of a plate, views); the plane loop indexes them alike.
MAX_STACK_AXES = 4

#: A window of a plane: (rows, columns).
Window = tuple[slice, slice]

__all__ = ["MAX_STACK_AXES", "StackLayout", "Window", "check_finite", "read_filled_plane", "read_plane",
           "stack_layout"]


@dataclass(frozen=True)
class StackLayout:
    """How an image array splits into 2D planes.

    Attributes
    ----------
    lead_shape : tuple of int
        Shape of the extra (stack) axes; () for one plane.
    plane_shape : tuple of int
        (H, W).
    rgb : bool
        True when the last axis holds colour.
    """

    lead_shape: tuple[int, ...]
    plane_shape: tuple[int, int]
    rgb: bool

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.lead_shape)) if self.lead_shape else 1

    def indices(self) -> list[tuple[int, ...]]:
        """Every plane index, in order."""
        return list(np.ndindex(*self.lead_shape)) if self.lead_shape else [()]

    def check_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """``index`` as a tuple of ints, or a clear error when it is not a plane of this stack."""
        index = tuple(int(i) for i in index)
        if len(index) != len(self.lead_shape) or any(
            not 0 <= i < n for i, n in zip(index, self.lead_shape)
        ):
            raise ImageError(
                f"Plane {index} is not in a stack of {self.lead_shape or 'one'} plane(s)."
            )
        return index


def stack_layout(shape: tuple[int, ...], rgb: bool | None = None) -> StackLayout:
    """Split an image shape into stack axes, plane and colour; raise a clear error if it cannot.

    Parameters
    ----------
    shape : tuple of int
        Shape of the image: (H, W), (H, W, 3), (..., H, W) or (..., H, W, 3).
    rgb : bool, optional
        Whether the last axis is colour. Default: yes if it has 3 or 4 entries (as napari).

    A last axis of 1, 2 or 5-8 entries after a plane of at least 16 x 16 pixels holds channels (as
    :func:`napari_unet.io.guess_axes` reads such files): several channels are refused with a
    message that says how to pick one (a single channel is taken as the plane by the plane loop).
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if rgb is None:
        rgb = ndim >= 3 and shape[-1] in (3, 4)
    if rgb and (ndim < 3 or shape[-1] not in (3, 4)):
        raise ImageError(
            f"rgb=True needs a last axis of 3 (or 4) colours, but the image has shape {shape}."
        )
    if not rgb and channels_last(shape):
        # as the readers take such files (io.guess_axes): channels, not planes 1 or 2 pixels wide
        n = shape[-1]
        stack = f"image[..., {n - 1}]" if n == 2 else "image[..., 0]"
        raise ImageError(
            f"The image has shape {shape}: its last axis looks like {n} channel(s) of {shape[-3]} x {shape[-2]} "
            f"planes, not {int(np.prod(shape[:-2]))} plane(s) {n} pixel(s) wide. Segment one channel (e.g. the "
            f"nuclei stain): in napari, open the file with napari-unet's reader (File > Open, or Load stack), which "
            f"puts each channel in a layer of its own; in Python, {stack}."
        )
    n_spatial = 3 if rgb else 2
    if ndim < n_spatial:
        raise ImageError(
            f"Expected a 2D image (height, width){' with colour last' if rgb else ''}, got shape {shape}."
        )
    lead = shape[:-n_spatial]
    plane = shape[ndim - n_spatial : ndim - n_spatial + 2]
    if len(lead) > MAX_STACK_AXES:
        axes = ", ".join(f"axis {i} (size {s})" for i, s in enumerate(lead))
        raise ImageError(
            f"The image has {ndim} axes (shape {shape}): {axes} come before the 2D plane, but at most "
            f"{MAX_STACK_AXES} stack axes (e.g. time, channels and z) can be segmented. Choose one index along "
            f"{len(lead) - MAX_STACK_AXES} of them (e.g. a position: image[0] for axis 0), or say which axis "
            "holds the colour/channels."
        )
    if min(plane) < 1 or any(s < 1 for s in lead):
        raise ImageError(f"The image is empty (shape {shape}).")
    return StackLayout(lead, (int(plane[0]), int(plane[1])), bool(rgb))


def read_plane(image: Any, index: tuple[int, ...] = (), window: Window | None = None) -> np.ndarray:
    """One plane ``image[index]`` (or a window of it) as a numpy array.

    Only that plane (window) is read from lazy arrays: memory maps, zarr, dask.

    Parameters
    ----------
    image : array-like
        (..., H, W) or (..., H, W, C).
    index : tuple of int
        Index along the stack axes; () for a single plane.
    window : (slice, slice), optional
        Rows and columns to read; default the whole plane.
    """
    key = tuple(index) + (tuple(window) if window is not None else ())
    if isinstance(image, np.ndarray):
        return np.asarray(image[key] if key else image)
    try:
        plane = image[key] if key else image
        if hasattr(plane, "compute"):  # dask
            plane = plane.compute()
        return np.asarray(plane)
    except (IndexError, TypeError, MemoryError):
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # (the decoder's words alone said nothing of the file)
        from napari_unet._errors import one_line

        where = f"The plane at index {', '.join(map(str, index))}" if index else "The image"
        raise PlaneReadError(f"{where} could not be read: its file may be damaged, or changed since it was "
                             f"opened (then open it again; {one_line(exc)})") from exc


class PlaneReadError(ValueError):
    """A plane of an image read from its file on demand (a large stack opened lazily) could not be read:
    the file was truncated, replaced or damaged after it was opened."""


def read_filled_plane(image: Any, index: tuple[int, ...] = (), window: Window | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_plane`, refused when it holds infinite values (:func:`check_finite`, the message
    naming the plane), with its pixels without data filled, and where those are
    (:func:`~napari_unet.core.preprocess.fill_missing`): every colour of it, as read before anything
    is measured on it."""
    plane = read_plane(image, index, window)
    check_finite(plane, f" (plane {index})" if index else "")
    return fill_missing(in_float32_range(plane))


#: float64 planes whose largest magnitude lies beyond this (or under its inverse) are scaled into it:
#: the pipeline works in float32 (up to 3.4e38, down to 1.2e-38), where they became inf or 0.
FLOAT32_SAFE = 1e30


#: 64-bit planes whose values all lie this far from 0 lose their detail in float32 (24 bits of
#: mantissa: 0-255 over an offset of 1e12 became one value, "camera noise alone"): their lowest value is
#: taken off first (in float64), which percentile normalisation makes no matter.
FLOAT32_EXACT = 2.0**24


def in_float32_range(plane: np.ndarray) -> np.ndarray:
    """``plane``; a 64-bit plane (int64, uint64, float64) far from 0 (:data:`FLOAT32_EXACT`) less its
    lowest value; a float64 plane scaled by its largest magnitude when that lies beyond float32's
    range (values of 1e40 or 1e-100 read as infinity or zero: "camera noise alone"). Percentile
    normalisation makes the offset and the scale no matter."""
    if plane.dtype.itemsize != 8 or plane.dtype.kind not in "iuf" or plane.size == 0:
        return plane
    # (NaN skipped, infinite values refused before; two passes, no copy of the plane)
    low, high = float(np.fmin.reduce(plane, axis=None)), float(np.fmax.reduce(plane, axis=None))
    if np.isfinite(low) and abs(low) > FLOAT32_EXACT and high - low < abs(low) / 2**8:
        if plane.dtype.kind in "iu":  # (in integers: float64 holds 53 bits, 2**60 + 0..255 became 2 values)
            lowest = plane.min()
            plane = (plane - lowest).astype(np.float64)  # (the spread is small: no overflow)
            high = float(plane.max())
        else:
            plane = np.subtract(plane, low)  # (an offset beyond the values' spread)
            high = high - low
        low = 0.0
    if plane.dtype != np.float64:
        return plane
    top = max(abs(high), abs(low))
    if not np.isfinite(top) or top == 0.0 or 1 / FLOAT32_SAFE <= top <= FLOAT32_SAFE:
        return plane
    return plane / top


def check_finite(plane: np.ndarray, where: str = "", before: str = "segmenting") -> None:
    """Raise :class:`ImageError` when a float plane holds infinite values (NaN marks pixels without
    data: :func:`~napari_unet.core.preprocess.fill_missing`)."""
    if np.issubdtype(plane.dtype, np.floating) and np.isinf(plane).any():
        raise ImageError(
            f"The image holds infinite values{where}; replace them (e.g. with NaN for pixels without data) "
            f"before {before}."
        )
