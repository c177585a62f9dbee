"""Physical sizes from napari's pint units (a layer's ``scale`` in its ``units``)."""

from __future__ import annotations

from typing import Any


def in_unit(value: float, unit: Any, target: str = "micrometer") -> float | None:
    """``value`` of ``unit`` (a pint unit such as napari's layer units: nanometer, micrometer,
    second, ...) expressed in ``target``; None when ``unit`` is missing, "pixel" or of another
    dimension (pint raises several kinds of errors for those)."""
    try:
        return float((float(value) * unit).to(target).magnitude)
    except Exception:
        return None
