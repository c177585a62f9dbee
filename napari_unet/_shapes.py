"""Shape rules shared by the readers (:mod:`napari_unet.io`, no torch) and the plane loop
(:mod:`napari_unet.core`), so that a file and the same array passed to ``core.segment`` are
split into planes alike."""

from __future__ import annotations

from collections.abc import Sequence

#: Smallest height and width of the plane before a last axis of 1 or 2 entries for that axis to
#: be taken as channels.
MIN_PLANE_SIDE = 16


def channels_last(shape: Sequence[int]) -> bool:
    """True when the last axis of ``shape`` holds 1 or 2 channels of (H, W) planes, not the
    width of planes 1 or 2 pixels wide: ``(H, W, 2)`` (two stains, grey + alpha), ``(Z, H, W, 1)``.

    No microscopy plane is 1 or 2 pixels wide, and (H, W, 3|4) is colour (RGB[A]) anyway.
    """
    return len(shape) >= 3 and int(shape[-1]) in (1, 2) and min(int(shape[-3]), int(shape[-2])) >= MIN_PLANE_SIDE
