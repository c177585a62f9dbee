"""Readers, writers and sample data (tifffile, zarr, dask); no Qt, no torch.

Public API
----------
read_stack(path, lazy=None, axes=None) -> (array, StackInfo)
inspect_stack(path, axes=None) -> StackInfo           (metadata only, no pixels read)
read_layer_data(path, lazy=None, axes=None) -> list of napari LayerData
write_labels(path, labels, scale=None, axes=None) -> Path   (atomic, compressed TIFF)
list_samples() -> list[SampleInfo]; load_sample(key) -> (image, labels, SampleInfo)
pair_images_with_labels(images_folder, labels_folder) -> list[(image file, labels file)]
read_training_pair(image file, labels file) -> ([(image plane, labels plane, source)], left out)
check_labels_not_an_image(labels, name)       (raises ValueError for an intensity image)
stack_name(path), list_plane_files(folder), is_ome_zarr(path)
TIFF_SUFFIXES, STACK_SUFFIXES, PLANE_IMAGE_SUFFIXES, READABLE_SUFFIXES (file name endings)
"""

from ._axes import KNOWN_AXES, AxesError, check_axes, guess_axes
from ._formats import (
    PLANE_IMAGE_SUFFIXES,
    READABLE_SUFFIXES,
    STACK_SUFFIXES,
    TIFF_SUFFIXES,
    StackInfo,
    StackReadError,
    is_ome_zarr,
    list_plane_files,
    natural_key,
    stack_name,
)
from ._reader import (
    inspect_stack,
    read_layer_data,
    read_stack,
    should_open_lazily,
    stack_layer_data,
)
from ._samples import SampleInfo, get_sample, list_samples, load_sample
from ._training_files import (
    LABEL_NAME_SUFFIXES,
    PairingError,
    check_labels_not_an_image,
    pair_images_with_labels,
    read_training_pair,
)
from ._writer import LabelsWriteError, check_labels, write_labels

__all__ = [
    "KNOWN_AXES",
    "LABEL_NAME_SUFFIXES",
    "PLANE_IMAGE_SUFFIXES",
    "READABLE_SUFFIXES",
    "STACK_SUFFIXES",
    "TIFF_SUFFIXES",
    "AxesError",
    "LabelsWriteError",
    "PairingError",
    "SampleInfo",
    "StackInfo",
    "StackReadError",
    "check_axes",
    "check_labels",
    "check_labels_not_an_image",
    "get_sample",
    "guess_axes",
    "inspect_stack",
    "is_ome_zarr",
    "list_plane_files",
    "list_samples",
    "load_sample",
    "natural_key",
    "pair_images_with_labels",
    "read_training_pair",
    "read_layer_data",
    "read_stack",
    "should_open_lazily",
    "stack_layer_data",
    "stack_name",
    "write_labels",
]
