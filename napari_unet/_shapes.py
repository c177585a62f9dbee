"""Shape rules shared by the readers (:mod:`napari_unet.io`, no torch) and the plane loop
(:mod:`napari_unet.core`), so that a file and the same array passed to ``core.segment`` are
split into planes alike."""

from __future__ import annotations

from collections.abc import Sequence

#: Smallest height and width of the plane before a last axis of a few entries for that axis to
#: be taken as channels.
MIN_PLANE_SIDE = 16
#: the most channels a last axis after planes of MIN_PLANE_SIDE or more is taken to hold
MAX_CHANNELS_LAST = 8


def is_rgb(shape: Sequence[int]) -> bool:
    """True when ``shape`` is one plane in colour: (H, W, 3) or (H, W, 4) (RGB, RGBA)."""
    return len(shape) == 3 and int(shape[-1]) in (3, 4)


def channels_last(shape: Sequence[int]) -> bool:
    """True when the last axis of ``shape`` holds channels of (H, W) planes (1, 2, or 5 to
    :data:`MAX_CHANNELS_LAST`), not the width of planes that narrow: ``(H, W, 2)`` (two stains,
    grey + alpha), ``(Z, H, W, 1)``, ``(H, W, 5)`` (five stains: segmented as 512 strips 5 px
    wide before).

    No microscopy plane is a few pixels wide, and (H, W, 3|4) is colour (RGB[A]) anyway.
    """
    if len(shape) < 3 or min(int(shape[-3]), int(shape[-2])) < MIN_PLANE_SIDE:
        return False
    n = int(shape[-1])
    return n in (1, 2) or 5 <= n <= MAX_CHANNELS_LAST
