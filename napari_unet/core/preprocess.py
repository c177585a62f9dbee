"""Turning a 2D plane (grey or colour) into the network's normalised input.

Shared by prediction and training so that both see images the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .checkpoint import DEFAULT_NORMALIZATION


class ImageError(ValueError):
    """An image the network cannot take (the message says why and what to do)."""


def as_channels_first(plane: np.ndarray, in_channels: int) -> np.ndarray:
    """A 2D plane as (C, H, W) float32 with ``in_channels`` channels.

    Parameters
    ----------
    plane : ndarray
        (H, W) grey, or (H, W, 3|4) RGB(A) with colour last.
    in_channels : int
        Channels the model takes. Colour is averaged to grey for 1-channel models;
        grey is repeated for 3-channel models; an alpha channel is dropped.
    """
    arr = np.asarray(plane)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.number)) or np.iscomplexobj(arr):
        raise ImageError(f"Images must hold real numbers, got dtype {arr.dtype}.")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        arr = arr[..., :3]
        if in_channels == 1:
            return arr.astype(np.float32).mean(axis=-1, keepdims=False)[None]
        if in_channels == 3:
            return np.moveaxis(arr.astype(np.float32), -1, 0)
        raise ImageError(
            f"This model takes {in_channels} channels; an RGB image has 3. Pick a 1- or 3-channel model."
        )
    if arr.ndim == 2:
        arr = arr.astype(np.float32)[None]
        if in_channels == 1:
            return arr
        return np.repeat(arr, in_channels, axis=0)
    raise ImageError(
        f"Expected one 2D plane (height, width) or an RGB plane (height, width, 3), got shape {arr.shape}. "
        "Choose a single slice or channel of the stack."
    )


def normalize(chw: np.ndarray, normalization: dict[str, Any] | None = None) -> np.ndarray:
    """Per-channel percentile normalisation of a (C, H, W) array, in place when float32.

    Maps the ``low`` percentile to 0 and the ``high`` percentile to 1 (values outside are
    kept, not clipped). A constant channel becomes all zeros.

    Raises
    ------
    ImageError
        If the image holds NaN or infinite values.
    """
    norm = normalization or DEFAULT_NORMALIZATION
    if norm.get("kind", "percentile") != "percentile":
        raise ImageError(f"Unknown normalisation {norm.get('kind')!r}.")
    chw = np.asarray(chw, dtype=np.float32)
    if not np.isfinite(chw).all():
        raise ImageError(
            "The image holds NaN or infinite values; replace them (e.g. with 0) before segmenting."
        )
    low, high = float(norm.get("low", 1.0)), float(norm.get("high", 99.8))
    out = np.empty_like(chw)
    for c in range(chw.shape[0]):
        channel = chw[c]
        sample = channel[:: max(1, channel.shape[0] // 512), :: max(1, channel.shape[1] // 512)]
        lo, hi = np.percentile(sample, [low, high])
        if hi - lo < 1e-6 * max(1.0, abs(hi)):
            lo, hi = float(sample.min()), float(sample.max())
        if hi - lo <= 0:
            out[c] = 0.0
        else:
            np.subtract(channel, lo, out=out[c])
            out[c] *= 1.0 / (hi - lo)
    return out


def prepare_plane(
    plane: np.ndarray, in_channels: int, normalization: dict[str, Any] | None = None
) -> np.ndarray:
    """(H, W) or (H, W, 3) plane -> normalised (C, H, W) float32 network input."""
    arr = np.asarray(plane)
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise ImageError(f"The image is empty (shape {arr.shape}).")
    return normalize(as_channels_first(arr, in_channels), normalization)


def is_constant(plane: np.ndarray) -> bool:
    """True when every pixel has the same value (nothing to segment)."""
    arr = np.asarray(plane)
    return arr.size == 0 or bool(np.all(arr == arr.flat[0]))
