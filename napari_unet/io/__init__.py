"""Readers, writers and sample data (tifffile, zarr, dask); no Qt, no torch.

Public API
----------
read_stack(path, lazy=None, axes=None) -> (array, StackInfo)
inspect_stack(path, axes=None) -> StackInfo           (metadata only, no pixels read)
read_layer_data(path, lazy=None, axes=None) -> list of napari LayerData
write_labels(path, labels, scale=None, axes=None) -> Path   (atomic, compressed TIFF)
list_samples() -> list[SampleInfo]; load_sample(key) -> (image, labels, SampleInfo)
"""

from ._axes import KNOWN_AXES, AxesError, check_axes, guess_axes
from ._formats import StackInfo, StackReadError, natural_key
from ._reader import (
    inspect_stack,
    read_layer_data,
    read_stack,
    should_open_lazily,
    stack_layer_data,
)
from ._samples import SampleInfo, get_sample, list_samples, load_sample
from ._writer import LabelsWriteError, check_labels, write_labels

__all__ = [
    "KNOWN_AXES",
    "AxesError",
    "LabelsWriteError",
    "SampleInfo",
    "StackInfo",
    "StackReadError",
    "check_axes",
    "check_labels",
    "get_sample",
    "guess_axes",
    "inspect_stack",
    "list_samples",
    "load_sample",
    "natural_key",
    "read_layer_data",
    "read_stack",
    "should_open_lazily",
    "stack_layer_data",
    "write_labels",
]
