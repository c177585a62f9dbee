"""Compute core: model, device, prediction, training, metrics.

Works on numpy arrays and torch; never imports Qt, napari or magicgui. Long
operations are generators that yield progress events and can be stopped between
steps (``close()`` the generator).
"""

from __future__ import annotations

import importlib
from typing import Any

from .catalog import DEFAULT_MODEL_NAME, list_models, user_models_dir
from .checkpoint import ModelFileError, SegmentationModel, load_model, save_model
from .device import describe_device, select_device
from .model import UNet, UNetConfig, count_parameters
from .preprocess import ImageError

# Heavier parts load on first use.
_LAZY = {
    "predict_probabilities": "predict",
    "segment": "predict",
    "probabilities_to_labels": "predict",
    "iter_predict_probabilities": "predict",
    "iter_segment": "predict",
    "iter_segment_volume": "volume",
    "segment_volume": "volume",
    "PredictionStopped": "predict",
    "finetune": "train",
    "run_finetune": "train",
    "average_precision": "metrics",
    "matching": "metrics",
    "dice": "metrics",
    "labels_to_targets": "targets",
    "border_weights": "targets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # (the names loaded on first use too: a notebook's tab completion lists them)
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DEFAULT_MODEL_NAME",
    "ImageError",
    "ModelFileError",
    "SegmentationModel",
    "UNet",
    "UNetConfig",
    "count_parameters",
    "describe_device",
    "list_models",
    "load_model",
    "save_model",
    "select_device",
    "user_models_dir",
    *_LAZY,
]
