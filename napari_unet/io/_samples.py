"""Sample images with ground-truth labels, shipped in the data package ``napari_unet.sample_data``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import as_file, files
from typing import Any

import numpy as np

SAMPLE_PACKAGE = "napari_unet.sample_data"


@dataclass(frozen=True)
class SampleInfo:
    """One sample: an image file and its ground-truth labels file in ``napari_unet.sample_data``.

    Attributes
    ----------
    key : str
        Identifier used by napari (``viewer.open_sample("napari-unet", key)``).
    display_name : str
        Name in File > Open Sample.
    image_file, labels_file : str
        File names inside the data package.
    axes : str
        Axes of the image (``YX``, ``YXS`` for RGB, ``TYX``, ``ZYX``).
    description, source, licence : str
        What it shows, where it comes from, its licence.
    """

    key: str
    display_name: str
    image_file: str
    labels_file: str
    axes: str
    description: str
    source: str
    licence: str


SAMPLES: tuple[SampleInfo, ...] = (
    SampleInfo(
        key="nuclei_fluorescence_2d",
        display_name="Nuclei, fluorescence 2D (DSB2018)",
        image_file="dsb2018_fluorescence_nuclei.tif",
        labels_file="dsb2018_fluorescence_nuclei_labels.tif",
        axes="YX",
        description="Fluorescent nuclei, 256 x 256, uint8, 62 nuclei",
        source="2018 Data Science Bowl (BBBC038, Caicedo et al. 2019), fixed masks",
        licence="CC0 1.0",
    ),
    SampleInfo(
        key="nuclei_fluorescence_fields",
        display_name="Nuclei, fluorescence, 4 fields of view (DSB2018)",
        image_file="dsb2018_fluorescence_fields.tif",
        labels_file="dsb2018_fluorescence_fields_labels.tif",
        axes="TYX",
        description="Four fluorescent-nuclei fields of similar look as a stack, 4 x 256 x 256, uint8",
        source="2018 Data Science Bowl (BBBC038, Caicedo et al. 2019), fixed masks",
        licence="CC0 1.0",
    ),
    SampleInfo(
        key="nuclei_stained_2d",
        display_name="Nuclei, stained tissue RGB 2D (DSB2018)",
        image_file="dsb2018_stained_nuclei.tif",
        labels_file="dsb2018_stained_nuclei_labels.tif",
        axes="YXS",
        description="Stained (purple) nuclei in brightfield, 256 x 320 RGB, 70 nuclei",
        source="2018 Data Science Bowl (BBBC038, Caicedo et al. 2019), fixed masks",
        licence="CC0 1.0",
    ),
    SampleInfo(
        key="c2c12_timelapse",
        display_name="C2C12 myoblasts, phase contrast time-lapse",
        image_file="c2c12_phase_timelapse.tif",
        labels_file="c2c12_phase_timelapse_labels.tif",
        axes="TYX",
        description="Phase-contrast time-lapse, 10 frames of 234 x 234, labels tracked over time",
        source="Ker et al. 2018, Sci. Data 5:180237 (crop distributed with laptrack)",
        licence="CC-BY 4.0",
    ),
    SampleInfo(
        key="cells_phase_2d",
        display_name="Whole cells, phase contrast 2D (Usiigaci)",
        image_file="usiigaci_phase_cells.tif",
        labels_file="usiigaci_phase_cells_labels.tif",
        axes="YX",
        description="Migrating cells, 10x phase contrast, 1022 x 1024 uint16, 57 hand-outlined cells",
        source="Usiigaci (Tsai et al. 2019, SoftwareX 9:230), field set6, OIST",
        licence="MIT",
    ),
    SampleInfo(
        key="nuclei_3d",
        display_name="Nuclei 3D, synthetic (StarDist)",
        image_file="nuclei3d_synthetic.tif",
        labels_file="nuclei3d_synthetic_labels.tif",
        axes="ZYX",
        description="Synthetic 3D nuclei stack, 31 x 61 x 57, uint16",
        source="StarDist synthetic 3D nuclei (stardist 0.9.1)",
        licence="BSD-3-Clause",
    ),
)


def list_samples() -> list[SampleInfo]:
    """All shipped samples (image + ground-truth labels), in menu order."""
    return list(SAMPLES)


def get_sample(key: str) -> SampleInfo:
    """The sample named ``key``; ``ValueError`` listing the keys when there is none."""
    for s in SAMPLES:
        if s.key == key:
            return s
    raise ValueError(f"no sample '{key}'; samples are: {', '.join(s.key for s in SAMPLES)}")


def _read_resource(name: str) -> np.ndarray:
    import tifffile

    with as_file(files(SAMPLE_PACKAGE).joinpath(name)) as p:
        return tifffile.imread(p)


def load_sample(key: str) -> tuple[np.ndarray, np.ndarray, SampleInfo]:
    """Read a sample's image and labels.

    Returns
    -------
    image : numpy.ndarray
        Shape per ``info.axes`` (for example ``(T, Y, X)``; RGB ``(Y, X, 3)``).
    labels : numpy.ndarray of uint16
        Instance ids, 0 = background, shape of the image without the RGB axis.
    info : SampleInfo
    """
    info = get_sample(key)
    return _read_resource(info.image_file), _read_resource(info.labels_file), info


def sample_layer_data(key: str) -> list[tuple[Any, dict[str, Any], str]]:
    """napari layer data for a sample: the image and its ground-truth labels (hidden)."""
    from ._reader import contrast_limits_from_sample

    image, labels, info = load_sample(key)
    rgb = info.axes.endswith("S")
    layer_axes = info.axes.replace("S", "")
    common = {"axis_labels": tuple(a.lower() for a in layer_axes)}
    md = {"napari_unet": {"sample": info.key, "axes": info.axes, "layer_axes": layer_axes,
                          "source": info.source, "licence": info.licence}}
    img_meta: dict[str, Any] = dict(common, name=info.key, rgb=rgb, metadata=md)
    if not rgb:
        img_meta["contrast_limits"] = contrast_limits_from_sample(image)
    # the ground truth hidden, there to compare with (shown, the image looked segmented before anything
    # was done); above the image, so that ticking its eye shows it over the image
    lab_meta = dict(common, name=f"{info.key} ground truth", metadata=md, opacity=0.5, visible=False)
    return [(image, img_meta, "image"), (labels, lab_meta, "labels")]


def nuclei_fluorescence_2d() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample: 2D fluorescent nuclei (DSB2018, CC0) with ground truth."""
    return sample_layer_data("nuclei_fluorescence_2d")


def nuclei_fluorescence_fields() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample: four 2D fluorescent-nuclei fields as a stack (DSB2018, CC0) with ground truth."""
    return sample_layer_data("nuclei_fluorescence_fields")


def nuclei_stained_2d() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample: 2D stained nuclei, RGB (DSB2018, CC0) with ground truth."""
    return sample_layer_data("nuclei_stained_2d")


def c2c12_timelapse() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample: C2C12 phase-contrast time-lapse (Ker et al. 2018, CC-BY 4.0) with ground truth."""
    return sample_layer_data("c2c12_timelapse")


def cells_phase_2d() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample: whole cells in phase contrast (Usiigaci, MIT) with ground truth."""
    return sample_layer_data("cells_phase_2d")


def nuclei_3d() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample: synthetic 3D nuclei (StarDist, BSD-3) with ground truth."""
    return sample_layer_data("nuclei_3d")
