"""Compute core: model, device, prediction, training, metrics.

Works on numpy arrays and torch; never imports Qt, napari or magicgui. Long
operations are generators that yield progress events and can be stopped between
steps (``close()`` the generator).
"""

from __future__ import annotations

import importlib
from typing import Any

# Every name loads on first use: importing one light module of the core (``core.edit`` for the
# widgets' object tools) must not import torch (2 s holding the window as a dock opened: the
# widgets import torch in a background thread instead, see widgets._base.warm_up_in_background).
_LAZY = {
    "DEFAULT_MODEL_NAME": "catalog",
    "list_models": "catalog",
    "user_models_dir": "catalog",
    "ModelFileError": "checkpoint",
    "SegmentationModel": "checkpoint",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "describe_device": "device",
    "select_device": "device",
    "UNet": "model",
    "UNetConfig": "model",
    "count_parameters": "model",
    "ImageError": "preprocess",
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


__all__ = [*_LAZY]
