"""Export a model as a BioImage.IO model package (format 0.5), for the Model Zoo and its tools.

The package (a zip) is described with ``bioimageio.spec``'s model classes and holds:

* the weights three ways, all giving the same class probabilities: ``pytorch_state_dict``
  (architecture: :mod:`napari_unet.core.model` itself, shipped as ``unet.py``, which imports
  nothing but torch; callable :class:`~napari_unet.core.model.UNetProbabilities`, kwargs the
  :class:`~napari_unet.core.model.UNetConfig`), ``torchscript`` (traced) and ``onnx`` (the
  export of the ONNX Runtime engine, :func:`napari_unet.core.engine.export_onnx`);
* input ``raw`` (batch, channel, y, x) with sizes ``min + n * step`` that follow the network's
  size rule, and our normalisation as ``scale_range`` (per image and channel, our percentiles);
* output ``probabilities`` (batch, channel, y, x), one channel per class (named), with a halo
  for "same" networks (the context tiles need) or a negative size offset for "valid" ones;
* test input and output tensors from a real sample image (computed by napari-unet itself, so
  ``bioimageio.core``'s ``test_model`` checks that the package's preprocessing matches ours), a
  cover image, the model card as documentation, authors, licence, citations, and everything
  napari-unet needs to read the model back (``config: napari-unet: ...``: network, output
  representation, normalisation, object diameter, post-processing, metadata).

No network access: every file is local and nothing is downloaded. ``bioimageio.spec`` is
imported here only (not when napari-unet is imported); it is the optional extra
``napari-unet[bioimageio]``.

Differences between our normalisation and ``scale_range`` (see :func:`.preprocess.normalize`):
``scale_range`` divides by ``(high - low + 1e-6)``, and we take the percentiles of every k-th
pixel on planes of 1024 pixels or more per side (k = side // 512); neither changes the
probabilities beyond float rounding on ordinary images. In a field with few objects in camera
noise, napari-unet takes the objects' brightness for the top (see
:data:`.preprocess.SPARSE_NOISE_SIGMAS`), which ``scale_range`` cannot say: the exported model sees
such a field as plain percentiles make it (its test tensors are made that way).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet._atomic import atomic_write, check_folder_writable, temporary_folder_beside
from napari_unet._shapes import is_rgb

from .checkpoint import ModelFileError, SegmentationModel, _plain, load_model
from .model import UNet, UNetProbabilities, cpu_state

log = logging.getLogger(__name__)

#: Key of napari-unet's own section in the package's ``config``.
CONFIG_KEY = "napari-unet"
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
#: Output channel names per representation (the order of the network's classes).
CHANNEL_NAMES = {
    "bg-interior-boundary": ["background", "interior", "boundary"],
    "foreground": ["background", "foreground"],
    "foreground-watershed": ["background", "foreground"],
}
#: The sample image the test tensors and the cover are made from when a model's origin has none
#: of its own (DSB2018, CC0).
SAMPLE_IMAGE = "dsb2018_fluorescence_nuclei.tif"
DEFAULT_LICENSE = "BSD-3-Clause"
UNET_CITATION = ("Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image "
                 "Segmentation. MICCAI 2015.", "10.1007/978-3-319-24574-4_28")
_DSB2018 = ("Caicedo J.C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
            "Nature Methods 16, 2019 (training data of napari-unet's built-in nuclei models).",
            "10.1038/s41592-019-0612-7")
_USIIGACI = ("Tsai H.-F. et al. Usiigaci: Instance-aware cell tracking in stain-free phase contrast microscopy "
             "enabled by machine learning. SoftwareX 9, 2019 (phase-contrast training data of napari-unet's "
             "built-in cells model).", "10.1016/j.softx.2019.02.007")
_BBBC030 = ("Koos K. et al. DIC image reconstruction using an energy minimization framework to visualize optical "
            "path length distribution. Scientific Reports 6, 2016 (BBBC030, DIC training data of napari-unet's "
            "built-in cells model).", "10.1038/srep30420")
TAGS = ["napari-unet", "unet", "unet2d", "pytorch", "2d", "segmentation", "instance-segmentation"]


@dataclass(frozen=True)
class Origin:
    """What a package says of the data behind a built-in model and the models fine-tuned from it:
    the sample its test tensors and cover are made from (``sample_data``, with its labels beside
    it), the works to cite and the tags."""

    sample: str
    cite: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]


_NUCLEI = Origin("dsb2018_fluorescence_nuclei.tif", (UNET_CITATION, _DSB2018),
                 ("nuclei", "fluorescence-light-microscopy"))
#: Built-in models by name (a model of unknown origin: the U-Net's citation, the DSB2018 sample).
ORIGINS = {
    "nuclei": _NUCLEI,
    "nuclei-fluo": _NUCLEI,
    "cells": Origin("usiigaci_phase_cells.tif", (UNET_CITATION, _USIIGACI, _BBBC030),
                    ("cells", "whole-cell", "phase-contrast-light-microscopy", "differential-interference-contrast")),
}
_UNKNOWN_ORIGIN = Origin(SAMPLE_IMAGE, (UNET_CITATION,), ())


def model_origin(model: SegmentationModel) -> Origin:
    """The :class:`Origin` of ``model``: its own when it is a built-in model, else that of the
    built-in model it was fine-tuned from (``origin`` in its metadata, or its base's name)."""
    meta = model.metadata
    for key in ("origin", "name", "base_model"):
        value = meta.get(key)
        if isinstance(value, str) and value in ORIGINS and (key != "name" or _is_builtin(model) or "package" in meta):
            return ORIGINS[value]
    return _UNKNOWN_ORIGIN


def _import_spec() -> Any:
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise ModelFileError(
            "Exporting to BioImage.IO needs bioimageio.spec: pip install 'napari-unet[bioimageio]'."
        ) from exc
    return v0_5


def package_halo(net: UNet) -> int:
    """Output pixels on each side of a tile that lack context: the halo ("same" networks;
    0 for "valid" ones, whose outputs only cover pixels with all their context)."""
    from .tiling import default_halo

    return default_halo(net)


def input_size_rule(net: UNet) -> tuple[int, int]:
    """``(min, step)``: the input sizes ``min + n * step`` the package declares.

    Every such size goes through the network and leaves an output of at least one pixel
    ("valid" networks lose ``2 * margin``), larger than twice the halo for "same" networks
    (the spec requires it).
    """
    step = net.divisor
    if net.config.padding == "same":
        return net.valid_input_size(2 * package_halo(net) + 1), step
    return net.valid_input_size(2 * net.margin + 1), step


def model_name_for_package(name: str) -> str:
    """The model's name in the characters the spec allows (letters, digits, ``_+- ()``)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    clean = "".join(c if c in allowed else "-" for c in str(name)).strip() or "model"
    return f"napari-unet {clean}"[:64]


# ---------------------------------------------------------------------- test tensors
SAMPLE_SIDE = 384


def _sample_plane(model: SegmentationModel | None = None) -> np.ndarray:
    """The sample of the model's origin, shown at the model's object size when its labels say the
    objects' size (a whole cell of 45 px in a model of 30 px is shown at 30 px), its middle
    :data:`SAMPLE_SIDE` px at most (test tensors of a few MB, not tens)."""
    import tifffile

    name = model_origin(model).sample if model is not None else SAMPLE_IMAGE
    path = Path(__file__).resolve().parents[2] / "sample_data" / name
    if not path.is_file():  # installed: sample_data is the package napari_unet.sample_data
        path = Path(__file__).resolve().parents[1] / "sample_data" / name
    plane = np.asarray(tifffile.imread(path))
    labels_path = path.with_name(path.name.replace(".tif", "_labels.tif"))
    if model is not None and model.diameter and labels_path.is_file() and plane.ndim == 2:
        from skimage.transform import rescale

        from .calibrate import training_diameter

        measured = training_diameter([np.asarray(tifffile.imread(labels_path))])
        factor = float(model.diameter) / measured if measured and np.isfinite(measured) else 1.0
        if abs(factor - 1.0) > 0.15:
            dtype = plane.dtype
            plane = rescale(plane.astype(np.float32), factor, order=1, anti_aliasing=factor < 1,
                            preserve_range=True).astype(dtype)
    crops = tuple(slice(max(0, (n - SAMPLE_SIDE) // 2), max(0, (n - SAMPLE_SIDE) // 2) + SAMPLE_SIDE)
                  for n in plane.shape[:2])
    return plane[crops]


def _fit_to_rule(plane: np.ndarray, minimum: int, step: int) -> np.ndarray:
    """The central crop of ``plane`` whose sides are the largest valid sizes (mirror-padded
    up to ``minimum`` where the plane is smaller)."""
    out = plane
    for axis in (0, 1):
        size = out.shape[axis]
        if size < minimum:
            before = (minimum - size) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, minimum - size - before)
            out = np.pad(out, pad, mode="reflect")
            continue
        valid = minimum + (size - minimum) // step * step
        start = (size - valid) // 2
        out = np.take(out, np.arange(start, start + valid), axis=axis)
    return out


def make_test_tensors(model: SegmentationModel, plane: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(input, output)``: (1, C, H, W) float32 raw image and (1, n_classes, H, W) float32
    probabilities, made by napari-unet's own preprocessing and one whole-image pass."""
    from .preprocess import as_channels_first, normalize

    net = model.net
    plane = _sample_plane(model) if plane is None else np.asarray(plane)
    if model.colour not in (None, "mean") and is_rgb(plane.shape):
        from .channels import colour_plane

        plane = colour_plane(plane, model.colour)  # (the colour of RGB images it was fine-tuned on)
    minimum, step = input_size_rule(net)
    raw = as_channels_first(plane, net.config.in_channels)  # RGB -> grey as in napari-unet
    raw = np.moveaxis(_fit_to_rule(np.moveaxis(raw, 0, -1), minimum, step), -1, 0)
    x = normalize(raw.copy(), model.normalization, sparse_fields=False)  # the RDF's scale_range
    probs_net = UNetProbabilities.from_config(net.config)
    probs_net.load_state_dict(net.state_dict())
    probs_net.eval()
    with torch.no_grad():
        out = probs_net(torch.from_numpy(x[None]).float()).numpy()
    return raw[None].astype(np.float32), out.astype(np.float32)


def _cover(raw: np.ndarray, probs: np.ndarray, representation: str, path: Path) -> None:
    """A 2:1 PNG: the input image (normalised) beside the foreground probability in colour."""
    import imageio.v3 as iio

    grey = raw[0].mean(axis=0)
    dy, dx = (grey.shape[0] - probs.shape[2]) // 2, (grey.shape[1] - probs.shape[3]) // 2
    grey = grey[dy:dy + probs.shape[2], dx:dx + probs.shape[3]]  # "valid" networks: the output's part
    lo, hi = np.percentile(grey, [1, 99.8])
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    if representation == "bg-interior-boundary":
        interior, boundary = probs[0, 1], probs[0, 2]
        colour = np.stack([boundary, interior, 0.35 * grey + 0.3 * interior], axis=-1)
    else:
        fg = probs[0, 1]
        colour = np.stack([fg, fg, 0.35 * grey], axis=-1)
    left = np.repeat(grey[..., None], 3, axis=-1)
    image = (np.clip(np.concatenate([left, colour], axis=1), 0, 1) * 255).astype(np.uint8)
    iio.imwrite(path, image)


def _grey_of_colour(model: SegmentationModel) -> str:
    """How a 1-channel model's input is made of an RGB image (its fine-tuned colour, or the mean)."""
    from .channels import COLOUR_NAMES, WITHOUT_DAB

    if isinstance(model.colour, int):
        return f"the {COLOUR_NAMES[model.colour]} colour of RGB images, which it was fine-tuned on"
    if model.colour == WITHOUT_DAB:
        return ("RGB images without their brown DAB stain (colour deconvolution), then averaged over R, G and B, "
                "as it was fine-tuned")
    return "colour images averaged over R, G and B"


# ---------------------------------------------------------------------- documentation
def _documentation(model: SegmentationModel, halo: int, rule: tuple[int, int], card_text: str | None) -> str:
    meta = model.metadata
    lines = [f"# {model_name_for_package(model.name)}", "",
             str(meta.get("description") or "A U-Net for 2D cell or nucleus instance segmentation, "
                 "made with napari-unet."), "",
             "## How to use it", "",
             f"- Input `{INPUT_ID}`: one 2D image, {model.in_channels} channel(s)"
             + (f" (grey; napari-unet gives it {_grey_of_colour(model)})." if model.in_channels == 1 else "."),
             f"  Sizes `{rule[0]} + n * {rule[1]}` pixels per side. Preprocessing: percentiles "
             f"{model.normalization.get('low', 1.0)} and {model.normalization.get('high', 99.8)} of each "
             "image mapped to 0 and 1 (`scale_range`, not clipped).",
             f"- Output `{OUTPUT_ID}`: class probabilities ({', '.join(CHANNEL_NAMES[model.representation])})"
             + (f"; crop a halo of {halo} pixels from each side of a tile." if halo else "."),
             "- Instances: " + ("seeds where p(interior) > threshold, grown by watershed on p(boundary) within "
                                "p(interior) + p(boundary) > threshold"
                                if model.representation == "bg-interior-boundary"
                                else "p(foreground) > threshold split by a watershed on its distance to the "
                                "background" if model.representation == "foreground-watershed"
                                else "connected components of p(foreground) > threshold")
             + f"; threshold {model.postprocessing['threshold']}, objects under "
             f"{model.postprocessing['min_size']} pixels removed"
             + "".join(f"; for {kind} images threshold {v['threshold']}, objects under {v['min_size']} pixels "
                       "removed" for kind, v in sorted(model.postprocessing_by_kind.items()))
             + ".",
             ]
    if model.diameter is not None:
        lines.append(f"- Object diameter: {model.diameter:.1f} pixels. Rescale images whose objects are of "
                     "another size by model diameter / object diameter first (napari-unet does this itself).")
    for d in _lineage(model):
        authors = ", ".join(str(a) for a in d.get("authors") or []) or "authors not said"
        lines.append(f"- Fine-tuned from `{d.get('name')}`, by {authors}"
                     + (f" (licence {d['license']})" if d.get("license") else "") + ".")
    if model.data_diameter is not None and model.diameter is not None:
        lines.append(f"- Fine-tuned on objects of about {model.data_diameter:.1f} pixels (before that rescaling): "
                     f"images like those it learnt from are rescaled by {model.diameter:.1f} / "
                     f"{model.data_diameter:.1f}.")
    lines += ["", "## What napari-unet does around the network", "",
              "A tool that runs this package as described gets napari-unet's probabilities away from the "
              "image's edges, on images without the defects below. napari-unet also:", "",
              "- mirrors the image at its edges (numpy's `reflect`: the edge pixel is not repeated) to give "
              "the border tiles their context; a tool that pads otherwise (bioimageio.core: `symmetric`) "
              "gets slightly different probabilities there (on 40 DSB2018 val images, AP@0.5 0.821 "
              "against 0.823);",
              "- takes out isolated hot pixels and the offsets of striped rows or columns (camera defects), "
              "and fills the pixels without data (the black border of a mosaic or a registered image, NaN, "
              "burned-in marks such as a scale bar) with the image mirrored at their edge, before the "
              "normalisation;",
              "- in a field of few objects, where the high percentile lies in the background's noise, "
              "maps the objects' brightness to 1 instead of that percentile;",
              "- estimates the objects' size (a pyramid of passes of this network) and rescales the image so "
              "that they measure the object diameter above, then brings the labels back to the image's size;",
              "- turns the probabilities into objects as said under *Instances*.", "",
              "In napari-unet: *Segment > Add model file…* or `napari-unet predict --model THIS.zip`.",
              "The package holds the same weights as pytorch_state_dict, torchscript and onnx.", ""]
    if card_text:
        lines += ["## Model card", ("\n" + card_text).replace("\n# ", "\n### ").replace("\n## ", "\n### ")]
    else:
        lines += ["## Training", ""]
        recipe = (meta.get("model_card") or {}).get("recipe") or {}
        for key, value in recipe.items():
            lines.append(f"- {key}: {value}")
        for key in ("base_model", "date", "steps", "training_time_s", "n_examples", "device"):
            if key in meta:
                lines.append(f"- {key}: {meta[key]}")
        lines += ["", "## Validation", ""]
        metrics = {k: meta[k] for k in ("val_ap50", "val_ap75", "val_dice") if isinstance(meta.get(k), (int, float))}
        if metrics:
            lines += ["Measured on the validation part of its training data:", ""]
            lines += [f"- {k}: {v:.3f}" for k, v in metrics.items()]
        else:
            lines.append("No validation figures were recorded for this model.")
    return "\n".join(lines).rstrip() + "\n"


def _lineage(model: SegmentationModel) -> list[dict[str, Any]]:
    """The packaged models ``model`` was fine-tuned from (see ``train_metadata.DERIVED_KEY``)."""
    chain = model.metadata.get("derived_from")
    return [d for d in chain if isinstance(d, dict)] if isinstance(chain, list) else []


def _package_info(model: SegmentationModel) -> dict[str, Any]:
    """What the package a model was imported from said of it (authors, licence, citations, its
    built-in model card): {} for a model not from a package."""
    info = model.metadata.get("package")
    return info if isinstance(info, dict) else {}


def _card_text(model: SegmentationModel) -> str | None:
    from .catalog import builtin_models_dir, model_card_name

    card = builtin_models_dir() / model_card_name(str(model.metadata.get("name") or ""))
    if _is_builtin(model) and card.is_file():
        return card.read_text(encoding="utf-8")
    text = _package_info(model).get("card")
    return text if isinstance(text, str) else None


def _napari_unet_config(model: SegmentationModel, package: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in model.metadata.items() if k != "path"}
    metadata["package"] = package  # read back on import: a package exported again says the same
    return _plain({
        "format": "napari-unet-model",
        "format_version": 1,
        "unet_config": model.net.config.to_dict(),
        "representation": model.representation,
        "normalization": dict(model.normalization),
        "diameter": model.diameter,
        "postprocessing": model.postprocessing,
        **({"postprocessing_by_kind": model.postprocessing_by_kind} if model.postprocessing_by_kind else {}),
        "metadata": metadata,
    })


# ---------------------------------------------------------------------- the package
def build_description(model: SegmentationModel, folder: Path, *, authors: list[str] | None = None,
                      license: str | None = None, plane: np.ndarray | None = None) -> Any:
    """Write the package's files into ``folder`` and return its ``ModelDescr`` (validated)."""
    v0_5 = _import_spec()
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr, Author, AxisId, BatchAxis, ChannelAxis, CiteEntry, Config, Doi,
        EnsureDtypeDescr, EnsureDtypeKwargs, FileDescr, Identifier, InputTensorDescr,
        IntervalOrRatioDataDescr, LicenseId, OnnxWeightsDescr, OutputTensorDescr, ParameterizedSize,
        PytorchStateDictWeightsDescr, ScaleRangeDescr, ScaleRangeKwargs, SizeReference, SpaceInputAxis,
        SpaceOutputAxis, SpaceOutputAxisWithHalo, TensorId, TorchscriptWeightsDescr, Version, WeightsDescr,
    )

    from .engine import ONNX_OPSET, EngineUnavailable, export_onnx

    net = model.net.to("cpu").eval()
    if not isinstance(net, UNet):
        raise ModelFileError("Only napari-unet's own networks can be exported to BioImage.IO.")
    config = net.config
    halo = package_halo(net)
    minimum, step = input_size_rule(net)

    # files
    arch = folder / "unet.py"
    shutil.copyfile(Path(__file__).resolve().parent / "model.py", arch)
    state = cpu_state(net)
    _torch_save(lambda fh: torch.save(state, fh), folder / "weights.pt")
    probs_net = UNetProbabilities.from_config(config)
    probs_net.load_state_dict(state)
    probs_net.eval()
    raw, expected = make_test_tensors(model, plane)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: the size checks run once while tracing
        traced = torch.jit.trace(probs_net, torch.from_numpy(raw), check_trace=False)
        _torch_save(lambda fh: torch.jit.save(traced, fh), folder / "weights_torchscript.pt")
    try:
        (folder / "weights.onnx").write_bytes(export_onnx(net))
    except EngineUnavailable as exc:
        raise ModelFileError(f"The network could not be exported to ONNX: {exc}") from exc
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", expected)
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", raw[0], photometric="minisblack")  # (C, H, W): for viewers
    tifffile.imwrite(folder / "sample_output.tif", expected[0], photometric="minisblack")
    _cover(raw, expected, model.representation, folder / "cover.png")
    card = _card_text(model)  # (a built-in model's, or that of the package it was imported from)
    (folder / "README.md").write_text(_documentation(model, halo, (minimum, step), card), encoding="utf-8")

    # description
    in_names = ["grey"] if config.in_channels == 1 else (
        ["red", "green", "blue"] if config.in_channels == 3 else [f"channel{i}" for i in range(config.in_channels)])
    space_in = [SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=minimum, step=step)) for a in ("y", "x")]
    low, high = float(model.normalization.get("low", 1.0)), float(model.normalization.get("high", 99.8))
    inputs = [InputTensorDescr(
        id=TensorId(INPUT_ID),
        description="a 2D image" + (f" (grey: {_grey_of_colour(model)})" if config.in_channels == 1 else ""),
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(n) for n in in_names]), *space_in],
        test_tensor=FileDescr(source=folder / "test_input.npy"),
        sample_tensor=FileDescr(source=folder / "sample_input.tif"),
        data=IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32")),
            ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=[AxisId("y"), AxisId("x")], min_percentile=low,
                                                    max_percentile=high)),
        ],
    )]
    if config.padding == "same":
        space_out = [SpaceOutputAxisWithHalo(id=AxisId(a), halo=halo,
                                             size=SizeReference(tensor_id=TensorId(INPUT_ID), axis_id=AxisId(a)))
                     for a in ("y", "x")]
    else:
        space_out = [SpaceOutputAxis(id=AxisId(a), size=SizeReference(
            tensor_id=TensorId(INPUT_ID), axis_id=AxisId(a), offset=-2 * net.margin)) for a in ("y", "x")]
    outputs = [OutputTensorDescr(
        id=TensorId(OUTPUT_ID),
        description="class probabilities (softmax over the classes)",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(n) for n in CHANNEL_NAMES[model.representation]]),
              *space_out],
        test_tensor=FileDescr(source=folder / "test_output.npy"),
        sample_tensor=FileDescr(source=folder / "sample_output.tif"),
        data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )]
    torch_version = Version(torch.__version__.split("+")[0])
    weights = WeightsDescr(
        pytorch_state_dict=PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=ArchitectureFromFileDescr(source=arch, callable=Identifier("UNetProbabilities"),
                                                   kwargs=config.to_dict()),
            pytorch_version=torch_version,
        ),
        torchscript=TorchscriptWeightsDescr(source=folder / "weights_torchscript.pt", pytorch_version=torch_version,
                                            parent="pytorch_state_dict"),
        onnx=OnnxWeightsDescr(source=folder / "weights.onnx", opset_version=ONNX_OPSET, parent="pytorch_state_dict"),
    )
    known = _package_info(model)
    names = authors or [str(a) for a in known.get("authors") or []] or (
        ["napari-unet developers"] if _is_builtin(model) else ["napari-unet user"])
    lineage = _lineage(model)
    # (a model fine-tuned from a package's takes its licence unless told another: CC-BY asks for credit)
    license = license or str(known.get("license") or next((d["license"] for d in lineage if d.get("license")), None)
                             or DEFAULT_LICENSE)
    origin = model_origin(model)
    cite = [{k: str(c[k]) for k in ("text", "doi", "url") if c.get(k)} for c in known.get("cite") or []
            if isinstance(c, dict) and c.get("text") and (c.get("doi") or c.get("url"))]
    cite = cite or [{"text": text, "doi": doi} for text, doi in origin.cite]
    for entry in (c for d in lineage for c in d.get("cite") or []):  # the packages it comes from, cited
        if isinstance(entry, dict) and entry.get("text") and (entry.get("doi") or entry.get("url")) \
                and all((c.get("doi"), c.get("text")) != (entry.get("doi"), entry.get("text")) for c in cite):
            cite.append({k: str(entry[k]) for k in ("text", "doi", "url") if entry.get(k)})
    package = {"authors": names, "license": license, "cite": cite, **({"card": card} if card else {})}
    description = str(model.metadata.get("description") or
                      "U-Net for 2D cell/nucleus instance segmentation made with napari-unet").strip()
    return v0_5.ModelDescr(
        name=model_name_for_package(model.name),
        description=description[:1024],
        authors=[Author(name=n.replace("/", "-")) for n in names],
        cite=[CiteEntry(text=c["text"], doi=Doi(c["doi"]) if c.get("doi") else None, url=c.get("url"))
              for c in cite],
        license=LicenseId(license),
        documentation=FileDescr(source=folder / "README.md"),
        covers=[FileDescr(source=folder / "cover.png")],
        tags=list(dict.fromkeys([*TAGS, *origin.tags])),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        timestamp=_dt.datetime.now(_dt.timezone.utc),
        config=Config(**{CONFIG_KEY: _napari_unet_config(model, package)}),
    )


#: The format version of the descriptions written: bioimageio.spec 0.5.12 writes its own (0.5.12), whose
#: file entries ({source, sha256} for the covers and documentation) every spec before 0.5.11 refuses,
#: and with them the tools built on it (ilastik, bioimageio.core before 0.9, ...). The description
#: needs nothing newer than 0.5.4, which writes those entries as plain file names: bioimageio.spec
#: 0.5.3 on reads it (a review measured 0.5.3.5, 0.5.4.3, 0.5.5.7, 0.5.7.4, 0.5.9.1, 0.5.10.2), and the
#: current one still tests it. (So no input ``pad``, new in 0.5.5: tools pad by their own default.)
WRITTEN_FORMAT = "0.5.4"


def _readable_by_older_tools(zipped: Path) -> Path:
    """The package ``zipped`` with its description in :data:`WRITTEN_FORMAT` (rewritten in place)."""
    import zipfile

    import yaml

    from ._package_names import description_name

    with zipfile.ZipFile(zipped) as src:
        names = src.namelist()
        described = description_name(names)  # (bioimageio.spec's name for it: rdf.yaml)
        description = yaml.safe_load(src.read(described))
        description["format_version"] = WRITTEN_FORMAT
        description["covers"] = [_plain_file(c) for c in description.get("covers") or []]
        if description.get("documentation") is not None:
            description["documentation"] = _plain_file(description["documentation"])
        rewritten = zipped.with_name(zipped.stem + ".older.zip")
        with zipfile.ZipFile(rewritten, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for name in names:
                if name != described:
                    out.writestr(src.getinfo(name), src.read(name))
            out.writestr(described, yaml.safe_dump(description, sort_keys=False, allow_unicode=True))
    return rewritten


def _plain_file(entry: Any) -> Any:
    """A file entry of a description as a plain name (format 0.5.4): ``{"source": name, ...}`` -> name."""
    return entry.get("source", entry) if isinstance(entry, dict) else entry


def check_license(license: str) -> str:
    """``license`` when it is an SPDX licence id the model zoo takes, else a one-line ModelFileError."""
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        return str(LicenseId(str(license).strip()))
    except (ValueError, TypeError):
        raise ModelFileError(f"unknown SPDX license id {license!r}: give one such as MIT, BSD-3-Clause, "
                             "Apache-2.0 or CC-BY-4.0 (https://spdx.org/licenses/).") from None


def first_error(exc: BaseException) -> str:
    """One line from an exception: the first pydantic error (where and what), or the first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return f"{where}: {first.get('msg', '')}".strip(": ").splitlines()[0]
        except Exception:  # not a pydantic error after all
            pass
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_builtin(model: SegmentationModel) -> bool:
    from .catalog import builtin_models_dir

    path = model.metadata.get("path")
    return bool(path) and Path(path).resolve().parent == builtin_models_dir().resolve()


def _torch_save(save: Callable[[io.BytesIO], None], path: Path) -> None:
    """``save`` into memory, then to ``path``: torch's zip writer turns a full disk into a RuntimeError
    ("enforce fail at inline_container.cc"), a plain write into the OSError it is."""
    buffer = io.BytesIO()
    save(buffer)
    path.write_bytes(buffer.getbuffer())


def export_bioimageio(model: SegmentationModel | str | os.PathLike, destination: str | os.PathLike, *,
                      authors: list[str] | None = None, license: str | None = None,
                      plane: np.ndarray | None = None) -> Path:
    """Write ``model`` (a model, a name or a ``.pt`` file) as a BioImage.IO package (zip).

    Parameters
    ----------
    model : SegmentationModel, str or path
        The model, or a name / file as :func:`~napari_unet.core.load_model` takes it.
    destination : path
        The zip to write (``.zip`` added when missing); written atomically.
    authors : list of str, optional
        Author names (default: those of the package the model was imported from, else
        "napari-unet developers" for built-in models, else "napari-unet user").
    license : str, optional
        SPDX licence id of the package (default: that of the package the model was imported
        from, else BSD-3-Clause, napari-unet's).
    plane : ndarray, optional
        (H, W) image for the test tensors and cover (default: the sample of the data the model, or
        the built-in model it was fine-tuned from, was trained on: DSB2018 nuclei, CC0, or a
        Usiigaci phase-contrast field, MIT; shown at the model's object size).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ModelFileError
        bioimageio.spec missing, a network that cannot be exported, or an invalid package
        (the message says why).
    OSError
        The destination cannot be written (an earlier file there stays intact).
    """
    _import_spec()
    if license is not None:
        license = check_license(license)  # before any work: a typo must not cost the whole packaging
    if not isinstance(model, SegmentationModel):
        model = load_model(model, device="cpu")
    destination = Path(destination).expanduser().absolute()  # (a relative building folder lost its files)
    if destination.suffix.lower() != ".zip":
        destination = destination.with_name(destination.name + ".zip")
    try:  # before any work: a folder that cannot be written must not cost the whole packaging
        check_folder_writable(destination.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"{destination.parent} cannot be written ({exc.strerror or exc})") from None
    _import_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec._internal.validation_context import ValidationContext

    device = model.device
    # built beside the destination, not in the system's temporary folder: a small or full /tmp
    # (a cluster node's) must not stop a package the destination has room for
    tmp = temporary_folder_beside(destination)
    try:
        folder = tmp / "package"
        folder.mkdir()
        with ValidationContext(root=folder, perform_io_checks=True, log_warnings=False), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # bioimageio.spec's notes while packaging
            descr = build_description(model, folder, authors=authors, license=license, plane=plane)
            zipped = _readable_by_older_tools(save_bioimageio_package(descr, output_path=tmp / "package.zip"))
        with atomic_write(destination, "wb") as out, open(zipped, "rb") as src:
            shutil.copyfileobj(src, out)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"The BioImage.IO package could not be made: {first_error(exc)}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        model.to(device)
    log.info("Wrote the BioImage.IO package %s", destination)
    return destination

