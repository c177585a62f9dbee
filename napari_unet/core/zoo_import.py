"""Read BioImage.IO model packages (a zip, or a folder with ``bioimageio.yaml`` / ``rdf.yaml``).

Two kinds of package are read:

* **napari-unet's own** (made by :mod:`.zoo_export`; its ``config`` holds a ``napari-unet``
  section): the :class:`~napari_unet.core.model.UNet` is rebuilt from that section and its
  ``pytorch_state_dict`` weights (``weights_only=True``), so the model is a plain
  :class:`~napari_unet.core.checkpoint.SegmentationModel`: it segments exactly as the original
  did, runs through ONNX Runtime or torch like any other, and can be fine-tuned again.
* **Other 2D models** with one input of one channel and one output holding a foreground
  probability (1 channel: instances by a distance watershed, ``"foreground-watershed"``),
  foreground and boundaries (2: seeds away from boundaries, grown by watershed on the boundary
  probability, ``"bg-interior-boundary"``), or napari-unet's classes: the network is
  a :class:`PackagedNetwork`, which runs the package's own weights (ONNX through ONNX Runtime on
  the CPU, TorchScript, or a state dict with the package's architecture) after the package's
  own preprocessing (applied per plane by ``bioimageio.core``) and before its postprocessing (per
  tile). It has the geometry the tiling of :mod:`.tiling` needs (size step, halo), so it goes
  through the same tiles, object scale and instances (threshold + watershed) as our networks.

Anything else (3D or time axes, several inputs or outputs, several input channels, weights in
another format, files missing or only on the web) is refused with a one-line
:class:`~napari_unet.core.checkpoint.ModelFileError`. Nothing is downloaded: sources on the
web are refused, local files are read in place.

``bioimageio.spec`` / ``bioimageio.core`` (the extra ``napari-unet[bioimageio]``) are imported
only when a package is read. A package's state-dict weights run code the package names (a Python
file of its own, or any function of an installed module, as ``bioimageio.core`` calls them), and
loading TorchScript weights runs their program (which can write files): both are used only when the
user sets ``NAPARI_UNET_TRUST_PACKAGE_CODE=1``. ONNX weights, preferred, run no code of the package.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._package_names import (  # noqa: F401 (re-exported: finding packages is named there, without torch)
    CONFIG_KEY,
    PACKAGE_FILE_NAMES,
    _folder_description,
    _own_section,
    _yaml_text,
    description_name,
    is_bioimageio_package,
    is_own_package,
    package_location,
    read_package_metadata,
)
from .checkpoint import FORMAT, ModelFileError, SegmentationModel
from .device import select_device
from .engine import run_session

log = logging.getLogger(__name__)

#: Weight formats run here, in the order they are preferred.
WEIGHT_FORMATS = ("onnx", "torchscript", "pytorch_state_dict")
#: Set to 1 to let packages' own Python code run (state-dict weights whose architecture the package holds).
TRUST_CODE_ENV = "NAPARI_UNET_TRUST_PACKAGE_CODE"
#: Halo used when a package does not give one (pixels).
DEFAULT_PACKAGE_HALO = 32


#: What napari-unet's section tells of a package of its own whose state dict is gone (its other weights
#: run as any package's): how it sizes objects and makes them from its output.
_KEPT_WITHOUT_STATE = ("diameter", "data_diameter", "postprocessing", "postprocessing_by_kind", "colour")


# ---------------------------------------------------------------------- bioimageio access
def _import_bioimageio() -> Any:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec
    except ImportError as exc:
        raise ModelFileError(
            "Reading BioImage.IO packages needs bioimageio.core: pip install 'napari-unet[bioimageio]'."
        ) from exc
    return bioimageio.spec


def _one_line(exc: BaseException | str) -> str:
    from .zoo_export import first_error

    return first_error(exc) if isinstance(exc, BaseException) else (str(exc).strip().splitlines() or [""])[0]


def load_package_description(path: str | os.PathLike) -> Any:
    """The package's model description (format 0.5; older ones are converted), without any IO
    check beyond reading the description: nothing is downloaded, no file is hashed.

    Raises
    ------
    ModelFileError
        Missing, not a package, invalid, or not a model (one line).
    """
    spec = _import_bioimageio()
    from bioimageio.spec import InvalidDescr

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"Model package not found: {p}")
    _refuse_aliases(_yaml_text(p), p.name)  # (also a clear message for folders and zips that are no packages)
    try:
        descr = spec.load_description(p, perform_io_checks=False, format_version="latest")
    except Exception as exc:  # noqa: BLE001 - the YAML parser and zip reader below raise their own kinds
        raise ModelFileError(f"{p.name} could not be read as a BioImage.IO package: {_one_line(exc)}") from exc
    if isinstance(descr, InvalidDescr):
        reason = _one_line(descr.validation_summary.format() if hasattr(descr, "validation_summary") else "")
        errors = [e for d in descr.validation_summary.details for e in d.errors]
        if errors:
            where = ".".join(str(x) for x in errors[0].loc)
            reason = f"{where}: {errors[0].msg}".strip(": ").splitlines()[0]
        raise ModelFileError(f"{p.name} is not a valid BioImage.IO description ({reason}).")
    if getattr(descr, "type", None) != "model":
        raise ModelFileError(f"{p.name} describes a BioImage.IO {getattr(descr, 'type', 'resource')}, not a model.")
    return descr


#: The most values a package's description may hold once its YAML aliases are expanded.
MAX_DESCRIPTION_VALUES = 10**6


def _refuse_aliases(text: str, name: str) -> None:
    """A description whose YAML aliases (``*name``) expand to more than
    :data:`MAX_DESCRIPTION_VALUES` values is refused before bioimageio reads it: a kilobyte of nested
    aliases ("billion laughs") expanded to gigabytes (3.6 GB and 74 s, then a MemoryError). Aliases
    as PyYAML writes them (a value given twice) are read as before."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # (aliases stay shared nodes: nothing expands)
    except (yaml.YAMLError, RecursionError):
        return  # (said by bioimageio's own reading)
    sizes: dict[int, int] = {}
    opened: set[int] = set()  # nodes whose children are being sized: met again below themselves, a cycle
    stack = [(root, False)] if root is not None else []
    while stack:  # the expanded size of every node, children first, each node once
        node, ready = stack.pop()
        if id(node) in sizes:
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if ready or not children:
            opened.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes.get(id(c), 0) for c in children), 2 * MAX_DESCRIPTION_VALUES)
            continue
        if id(node) in opened:  # (an anchor used inside itself: "&loop [*loop]" never ends)
            raise ModelFileError(f"{name}: its description refers to itself through YAML aliases (*name): not a "
                                 "model's description (a crafted or damaged package).")
        opened.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    if root is not None and sizes.get(id(root), 0) > MAX_DESCRIPTION_VALUES:
        raise ModelFileError(f"{name}: its description expands to more than {MAX_DESCRIPTION_VALUES} values through "
                             "YAML aliases (*name): not a model's description (a crafted or damaged package).")


#: The largest file of a package read (weights above it are refused before they fill the memory: a
#: zip of 4 MB unpacked to 3.4 GB, and a link to /dev/zero never ends).
MAX_PACKAGE_FILE_BYTES = 2**30


def _weights_bytes(weights: Any, what: str, name: str) -> bytes:
    """The file of one weights entry, checked against the sha256 the package gives for it (damaged or
    swapped weights would run silently: the description is read without IO checks)."""
    import hashlib

    data = _package_bytes(weights.source, what, name)
    expected = getattr(weights, "sha256", None)
    if expected is not None and hashlib.sha256(data).hexdigest() != str(expected).lower():
        raise ModelFileError(f"{name}: its {what} do not match the sha256 its description gives (damaged or "
                             "replaced file).")
    return data


def _declared_size(source: Any) -> int | None:
    """The size of a package's file before it is read: a zip member's unpacked size, a local file's
    size, -1 for what is no regular file (a link to /dev/zero), None where it cannot be told."""
    try:
        where = source.absolute() if hasattr(source, "absolute") else source
        root, member = getattr(where, "root", None), getattr(where, "at", None)
        if isinstance(root, zipfile.ZipFile) and member:
            return int(root.getinfo(member).file_size)
        local = Path(str(where))
        if local.exists():
            return int(local.stat().st_size) if local.is_file() else -1
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        pass
    return None


def _package_bytes(source: Any, what: str, name: str) -> bytes:
    """The content of one of the package's files; refuses web addresses (no downloads)."""
    from bioimageio.spec.utils import download

    text = str(source)
    if _on_the_web(source):
        raise ModelFileError(
            f"{name}: its {what} is only on the web ({text}); napari-unet does not download at run time: "
            "get the complete package (a zip with all files) first."
        )
    too_large = ModelFileError(f"{name}: its {what} ({text}) are larger than {MAX_PACKAGE_FILE_BYTES / 2**30:.0f} "
                               "GB: not the weights of a model napari-unet runs (a damaged or crafted package).")
    size = _declared_size(source)
    if size == -1:
        raise ModelFileError(f"{name}: its {what} ({text}) is not a file (a device or a folder).")
    if size is not None and size > MAX_PACKAGE_FILE_BYTES:
        raise too_large
    try:
        data = download(source).read(MAX_PACKAGE_FILE_BYTES + 1)
    except Exception as exc:  # noqa: BLE001 - bioimageio.spec raises e.g. TypeError for a file missing from a zip
        if isinstance(exc, (TypeError, KeyError, FileNotFoundError)):  # (how a file absent from a zip is said)
            raise ModelFileError(f"{name}: the package lacks its {what} ({text}).") from exc
        raise ModelFileError(f"{name}: its {what} ({text}) cannot be read ({_one_line(exc)}).") from exc
    if len(data) > MAX_PACKAGE_FILE_BYTES:  # (a size that could not be told before reading)
        raise too_large
    return data


# ---------------------------------------------------------------------- reading
def read_bioimageio_model(path: str | os.PathLike, device: torch.device | str | None = "cpu") -> SegmentationModel:
    """A :class:`SegmentationModel` from a BioImage.IO package (see the module docstring).

    Raises
    ------
    ModelFileError
        With one line saying why the package cannot be used.
    """
    p = Path(path).expanduser()
    descr = load_package_description(p)
    name = p.name
    model = _own_model(descr, name)
    if model is None:
        own = (descr.config.model_extra or {}).get(CONFIG_KEY)
        kept = own.get("metadata") if isinstance(own, dict) and isinstance(own.get("metadata"), dict) else {}
        model = SegmentationModel(*_packaged_network(descr, name), metadata={
            "name": str(descr.name), "description": str(descr.description), "bioimageio": True,
            **{key: kept[key] for key in _KEPT_WITHOUT_STATE if key in kept},
        })
        if kept:
            log.info("%s: napari-unet's package without its pytorch_state_dict weights: run as any package, "
                     "with its object diameter and post-processing", name)
    model.metadata.setdefault("name", p.stem)
    model.metadata["path"] = str(p)
    return model.to(select_device(device))


def _own_model(descr: Any, name: str) -> SegmentationModel | None:
    """napari-unet's model back from its own package (None for other packages)."""
    extra = descr.config.model_extra or {}
    own = extra.get(CONFIG_KEY)
    weights = descr.weights.pytorch_state_dict
    if not isinstance(own, dict) or "unet_config" not in own or weights is None:
        return None
    data = _weights_bytes(weights, "pytorch_state_dict weights", name)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged files
        raise ModelFileError(f"{name}: its pytorch_state_dict weights could not be read safely.") from exc
    metadata = dict(own.get("metadata") or {})
    # what the package says of itself (its description may have been edited since): exported again,
    # the model keeps its authors, licence, citations and card
    package = dict(metadata.get("package") or {}) if isinstance(metadata.get("package"), dict) else {}
    package.update(_package_facts(descr))
    metadata["package"] = package
    return SegmentationModel.from_dict({
        "format": FORMAT,
        "format_version": own.get("format_version", 1),
        "config": own["unet_config"],
        "state_dict": state,
        "representation": own.get("representation", "bg-interior-boundary"),
        "normalization": own.get("normalization"),
        "metadata": metadata,
    }, source=name)


def _package_facts(descr: Any) -> dict[str, Any]:
    """Authors, licence and citations of a package's description, as plain values."""
    facts: dict[str, Any] = {}
    authors = [str(a.name) for a in getattr(descr, "authors", None) or [] if getattr(a, "name", None)]
    if authors:
        facts["authors"] = authors
    if getattr(descr, "license", None):
        facts["license"] = str(descr.license)
    cite = []
    for entry in getattr(descr, "cite", None) or []:
        item = {"text": str(entry.text)}
        if getattr(entry, "doi", None):
            item["doi"] = str(entry.doi)
        if getattr(entry, "url", None):
            item["url"] = str(entry.url)
        cite.append(item)
    if cite:
        facts["cite"] = cite
    return facts


# ---------------------------------------------------------------------- other packages
@dataclass(frozen=True)
class PackageGeometry:
    """What prediction and tiling read from ``net.config`` (as for a "same" U-Net).

    ``depth`` is ``log2(size step) + 1`` (the poolings of a U-Net with that step), ``base_width``
    only sizes the memory estimate of a tile.
    """

    in_channels: int = 1
    n_classes: int = 2
    base_width: int = 32
    depth: int = 4
    padding: str = "same"
    norm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Layout:
    """Where batch, channel, y and x are in a package tensor (None: no such axis)."""

    order: tuple[str, ...]  # the package's axis order, as "batch", "channel", "y", "x"

    def to_package(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> the package's axis order (N must be 1 without a batch axis, C 1 without channels)."""
        canon = ["batch", "channel", "y", "x"]
        for axis, kind in ((1, "channel"), (0, "batch")):
            if kind not in self.order:
                x = x.squeeze(axis)
                canon.remove(kind)
        return np.transpose(x, [canon.index(k) for k in self.order])

    def from_package(self, x: np.ndarray) -> np.ndarray:
        """The package's axis order -> (N, C, H, W)."""
        present = [k for k in ("batch", "channel", "y", "x") if k in self.order]
        x = np.transpose(x, [self.order.index(k) for k in present])
        if "batch" not in self.order:
            x = x[None]
        if "channel" not in self.order:
            x = x[:, None]
        return x


def _layout(tensor: Any, name: str, what: str) -> _Layout:
    order: list[str] = []
    space = 0
    for axis in tensor.axes:
        kind = axis.type
        if kind == "space":
            space += 1
            named = str(axis.id).lower()  # (b, c, x, y) exists: the ids say which is which
            order.append(named if named in ("y", "x") and named not in order else ("y" if space == 1 else "x"))
        elif kind in ("batch", "channel"):
            order.append(kind)
        else:
            raise ModelFileError(f"{name}: its {what} has a {kind} axis; napari-unet runs 2D models only.")
    if space != 2:
        raise ModelFileError(f"{name}: its {what} has {space} space axes; napari-unet runs 2D models only.")
    return _Layout(tuple(order))


def _space_axes(tensor: Any) -> list[Any]:
    return [a for a in tensor.axes if a.type == "space"]


def _input_rule(tensor: Any, name: str) -> tuple[int, int, int | None]:
    """``(min, step, fixed)`` of the input's y and x sizes (``fixed``: the one size it takes)."""
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    rules = set()
    for axis in _space_axes(tensor):
        size = axis.size
        if isinstance(size, int):
            rules.add((size, 1, size))
        elif isinstance(size, ParameterizedSize):
            rules.add((size.min, size.step, None))
        else:
            raise ModelFileError(f"{name}: its input's {axis.id} size ({type(size).__name__}) is not a size napari-unet "
                                 "can tile (a fixed size or min + n * step).")
    if len(rules) != 1:
        raise ModelFileError(f"{name}: its input's y and x follow different size rules; napari-unet needs one rule.")
    return rules.pop()


def _output_geometry(output: Any, input_id: str, input_rule: tuple[int, int, int | None], name: str) -> tuple[int, int]:
    """``(halo, offset)`` of the output's y and x: context to crop, and output size - input size."""
    from bioimageio.spec.model.v0_5 import SizeReference

    halos, offsets = set(), set()
    for axis in _space_axes(output):
        size = axis.size
        if isinstance(size, SizeReference) and str(size.tensor_id) == input_id:
            offset = int(size.offset)
        elif isinstance(size, int) and input_rule[2] is not None:
            offset = size - input_rule[2]
        else:
            raise ModelFileError(f"{name}: its output's {axis.id} size does not follow the input's, so it cannot be "
                                 "tiled.")
        if float(getattr(axis, "scale", 1.0)) != 1.0 or offset > 0 or offset % 2:
            raise ModelFileError(f"{name}: its output is not on the input's pixel grid (scale or size offset).")
        halos.add(int(getattr(axis, "halo", 0) or 0))
        offsets.add(offset)
    if len(halos) != 1 or len(offsets) != 1:
        raise ModelFileError(f"{name}: its output's y and x have different halos or sizes.")
    return halos.pop(), offsets.pop()


def _representation(output: Any, name: str) -> tuple[str, str]:
    """``(representation, mapping)``: how the output channels become napari-unet's classes."""
    channel = next((a for a in output.axes if a.type == "channel"), None)
    names = [str(n).lower() for n in channel.channel_names] if channel is not None else ["probability"]
    data = getattr(output, "data", None)
    value_range = getattr(data, "range", None)
    if value_range is not None and ((value_range[0] is not None and value_range[0] < 0)
                                    or (value_range[1] is not None and value_range[1] > 1)):
        raise ModelFileError(f"{name}: its output ranges over {tuple(value_range)}, not probabilities in [0, 1].")
    if len(names) == 1 and any(w in names[0] for w in ("bound", "contour", "edge", "border", "membrane")):
        raise ModelFileError(f"{name}: its one output channel is {names[0]!r}, not a foreground probability; "
                             "napari-unet needs the cells' (or nuclei's) probability, with or without boundaries.")
    if len(names) == 1:
        return "foreground-watershed", "probability"
    if len(names) == 2 and names[0].startswith(("background", "bg")):
        return "foreground", "classes"
    if len(names) == 2 and "bound" in names[1]:
        return "bg-interior-boundary", "foreground+boundary"
    if len(names) == 3 and names[0].startswith(("background", "bg")) and "bound" in names[2]:
        return "bg-interior-boundary", "classes"
    raise ModelFileError(
        f"{name}: its output has channels {', '.join(names)}; napari-unet needs a foreground probability "
        "(1 channel), or foreground and boundaries (2)."
    )


def trusts_package_code() -> bool:
    """Whether the user allowed packages' own Python code to run (:data:`TRUST_CODE_ENV` set to 1)."""
    return os.environ.get(TRUST_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def _package_code(weights: Any, kind: str = "pytorch_state_dict") -> str | None:
    """What of the package's own weights of ``kind`` would run as code (None: nothing): the Python
    file or the library callable (``import_from`` + ``callable``: any function of any module, called
    with the package's arguments, ``os.system`` as well as a network) that state-dict weights build
    their network with; the TorchScript program of torchscript weights (loading it runs its
    ``__setstate__``, which can write any file the user can)."""
    if weights is None:
        return None
    if kind == "torchscript":
        source = getattr(weights, "source", None)
        name = str(getattr(source, "path", None) or source or "weights").rsplit("/", 1)[-1]
        return f"the TorchScript program {name}"
    architecture = getattr(weights, "architecture", None)
    source = getattr(architecture, "source", None)
    if source is not None:
        return str(getattr(source, "path", None) or source).rsplit("/", 1)[-1]
    library = getattr(architecture, "import_from", None)
    if library is not None:
        return f"{library}.{getattr(architecture, 'callable', '?')}"
    return "its architecture" if architecture is not None else None


def _on_the_web(source: Any) -> bool:
    """Whether a package file's ``source`` is a web address (never downloaded)."""
    return str(source).startswith(("http://", "https://"))


def _set_aside(descr: Any, formats: list[str]) -> dict[str, str]:
    """The weights of ``formats`` left aside because they run the package's code (kind: what runs),
    unless the user trusts packages' code; those only on the web are said when read."""
    if trusts_package_code():
        return {}
    code = {kind: _package_code(getattr(descr.weights, kind, None), kind) for kind in formats
            if kind != "onnx" and not _on_the_web(getattr(getattr(descr.weights, kind, None), "source", ""))}
    return {kind: what for kind, what in code.items() if what}


def _weights_formats(descr: Any, name: str) -> list[str]:
    present = [f for f, w in descr.weights if w is not None]
    usable = [f for f in WEIGHT_FORMATS if f in present]
    if not usable:
        raise ModelFileError(
            f"{name}: its weights are {', '.join(present) or 'missing'}; napari-unet runs onnx, torchscript "
            "or pytorch_state_dict weights."
        )
    code = _set_aside(descr, usable)
    if code:  # running a package's own code is running anything it holds
        usable = [kind for kind in usable if kind not in code]
        if not usable:
            raise ModelFileError(
                f"{name}: its only weights napari-unet could run are {', '.join(code)}, which run the package's own "
                f"code ({'; '.join(code.values())}); napari-unet does not run code from a package, which could do "
                f"anything on this computer. Ask its authors for onnx weights, or, if you trust where it comes "
                f"from, set {TRUST_CODE_ENV}=1.")
        log.info("%s: its %s weights are not used (they run the package's code: %s; %s=1 allows it)",
                 name, ", ".join(code), "; ".join(code.values()), TRUST_CODE_ENV)
    return usable


def _packaged_network(descr: Any, name: str) -> tuple["PackagedNetwork", str, dict[str, Any]]:
    """The network, its representation and the normalisation note for a SegmentationModel."""
    if len(descr.inputs) != 1:
        raise ModelFileError(f"{name}: the model takes {len(descr.inputs)} inputs; napari-unet gives it one image.")
    if len(descr.outputs) != 1:
        raise ModelFileError(f"{name}: the model gives {len(descr.outputs)} outputs; napari-unet reads one.")
    inp, out = descr.inputs[0], descr.outputs[0]
    in_layout, out_layout = _layout(inp, name, "input"), _layout(out, name, "output")
    channel = next((a for a in inp.axes if a.type == "channel"), None)
    n_in = len(channel.channel_names) if channel is not None else 1
    if n_in != 1:
        raise ModelFileError(f"{name}: the model takes {n_in} input channels; napari-unet gives it one (grey).")
    batch = next((a for a in inp.axes if a.type == "batch"), None)
    one_per_batch = batch is None or getattr(batch, "size", None) == 1
    rule = _input_rule(inp, name)
    halo, offset = _output_geometry(out, str(inp.id), rule, name)
    representation, mapping = _representation(out, name)
    formats = _weights_formats(descr, name)
    from bioimageio.core.proc_setup import setup_pre_and_postprocessing

    procs = setup_pre_and_postprocessing(descr, dataset_for_initial_statistics=[])
    post = [op for op in procs.post]
    if any(getattr(op, "required_measures", ()) for op in post):
        raise ModelFileError(f"{name}: its postprocessing needs statistics of the whole output, which tiled "
                             "prediction cannot give.")
    net = PackagedNetwork(
        descr, name, formats, in_layout, out_layout, rule, halo, offset, mapping,
        n_classes=3 if representation == "bg-interior-boundary" else 2, one_per_batch=one_per_batch,
        postprocessing=post,
    )
    return net, representation, {"kind": "bioimageio", "preprocessing": [p.id for p in inp.preprocessing]}


class PackagedNetwork(nn.Module):
    """The network of a BioImage.IO package, seen by prediction as a "same" U-Net.

    ``prepare_plane`` applies the package's preprocessing to a whole plane; ``run_packaged``
    runs a batch of tiles ((N, 1, h, w) float32, any h and w) through the package's weights and
    postprocessing and returns napari-unet's class probabilities (N, n_classes, h, w): tiles are
    mirror-padded to a size the package takes (and by the margin of networks whose output is
    smaller than their input), and the output cropped back.
    """

    def __init__(self, descr: Any, name: str, formats: list[str], in_layout: _Layout, out_layout: _Layout,
                 rule: tuple[int, int, int | None], halo: int, offset: int, mapping: str, *, n_classes: int,
                 one_per_batch: bool, postprocessing: list[Any]) -> None:
        super().__init__()
        self.descr, self.package_name, self.formats = descr, name, formats
        self.in_layout, self.out_layout = in_layout, out_layout
        self.min_size, self.size_step, self.fixed_size = rule
        self.margin_in = -offset // 2  # input pixels lost on each side
        self.mapping = mapping
        self.one_per_batch = one_per_batch
        self._post = postprocessing  # (the preprocessing is made anew for each plane: _preprocessing)
        self.input_id, self.output_id = str(descr.inputs[0].id), str(descr.outputs[0].id)
        self.config = PackageGeometry(1, n_classes, 32, int(math.log2(self.divisor)) + 1)
        own_halo = halo if halo > 0 else DEFAULT_PACKAGE_HALO
        self.halo = int(math.ceil(own_halo / self.divisor) * self.divisor)
        self.max_tile = self.fixed_size - 2 * self.margin_in if self.fixed_size is not None else None
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # where the model "is" (device)
        self._backends: dict[tuple[str, str], Any] = {}  # (weights kind, device) -> session or module
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ geometry (as UNet)
    @property
    def divisor(self) -> int:
        """Tile origins are multiples of this: the size step, or for a package of one fixed size the
        largest power of two (up to 32) dividing it, so tiles keep the pooling grid of the image."""
        if self.fixed_size is None:
            return max(1, self.size_step)
        return math.gcd(self.fixed_size, 32)

    @property
    def margin(self) -> int:
        return 0  # the margin of "valid" packages is mirror-padded inside run_packaged

    def valid_input_size(self, min_size: int) -> int:
        return max(self.divisor, int(math.ceil(int(min_size) / self.divisor) * self.divisor))

    def output_size(self, size: int) -> int:
        return int(size)

    def _package_size(self, size: int) -> int:
        """Smallest size >= ``size`` the package takes."""
        if self.fixed_size is not None:
            if size > self.fixed_size:
                raise ValueError(f"{self.package_name} takes tiles of {self.fixed_size} pixels only, got {size}.")
            return self.fixed_size
        if size <= self.min_size:
            return self.min_size
        return self.min_size + int(math.ceil((size - self.min_size) / self.size_step)) * self.size_step

    # ------------------------------------------------------------------ engines
    def load_weights(self, engine: str) -> None:
        """Load the weights ``engine`` runs now (they load at the first tile otherwise): a package whose
        weights cannot run says so once, before a batch reads any image (``ModelFileError``), not once
        an input."""
        self._backend(engine)

    def packaged_engine(self, choice: Any) -> Any:
        """The engine that runs this package, given what was asked (an ``EngineChoice``)."""
        if choice.name == "onnx" and "onnx" in self.formats:
            return choice
        torch_formats = [f for f in self.formats if f != "onnx"]
        if torch_formats:
            reason = choice.reason or ("the package has no ONNX weights" if choice.name == "onnx" else "")
            return choice.fall_back(reason) if choice.name == "onnx" else choice
        # ONNX weights only: ONNX Runtime, on the CPU (said when the network was meant for a GPU)
        where = self.anchor.device.type
        if where == "cpu":
            return type(choice)("onnx", choice.requested, "")
        aside = _set_aside(self.descr, [f for f, w in self.descr.weights if w is not None and f != "onnx"])
        why = (f"its {', '.join(aside)} weights run the package's code and were left aside: set {TRUST_CODE_ENV}=1 "
               f"if you trust where it comes from, to run them on {where}") if aside else "the package has only ONNX weights"
        return type(choice)("onnx", choice.requested, f"on the CPU, not {where}: {why}")

    def _backend(self, engine: str) -> tuple[str, Any]:
        with self._lock:
            kind = "onnx" if engine == "onnx" and "onnx" in self.formats else next(
                (f for f in self.formats if f != "onnx"), "onnx")
            # (a torch module is loaded onto the network's device: again after the model moved)
            where = lambda k: (k, "cpu" if k == "onnx" else str(self.anchor.device))  # noqa: E731
            if where(kind) not in self._backends:
                try:
                    self._backends[where(kind)] = self._load(kind)
                except ModelFileError as exc:
                    others = [f for f in self.formats if f != kind]
                    if kind == "onnx" and not others:  # (the weights left aside could have run: say how)
                        present = [f for f, w in self.descr.weights if w is not None and f != "onnx"]
                        aside = _set_aside(self.descr, present)
                        if aside:
                            raise ModelFileError(
                                f"{str(exc).rstrip('.')}; its {', '.join(aside)} weights ({'; '.join(aside.values())}) "
                                f"run the package's code, left aside: set {TRUST_CODE_ENV}=1 if you trust where it "
                                "comes from.") from exc
                    if kind != "onnx" or not others:
                        raise
                    log.warning("%s; its %s weights are used instead.", str(exc).rstrip("."), others[0])
                    self.formats = others  # (said once: the next batches and runs go to them directly)
                    kind = others[0]
                    if where(kind) not in self._backends:
                        self._backends[where(kind)] = self._load(kind)
            return kind, self._backends[where(kind)]

    def _load(self, kind: str) -> Any:
        weights = getattr(self.descr.weights, kind)
        if kind == "onnx":
            from .engine import _import_onnxruntime, _session_options

            ort = _import_onnxruntime()
            data = _weights_bytes(weights, "onnx weights", self.package_name)
            try:
                return ort.InferenceSession(data, _session_options(ort), providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime's own exception classes
                raise ModelFileError(f"{self.package_name}: ONNX Runtime cannot load its onnx weights "
                                     f"({_one_line(exc)}).") from exc
        device = self.anchor.device
        if kind == "torchscript":
            data = _weights_bytes(weights, "torchscript weights", self.package_name)
            try:
                module = torch.jit.load(io.BytesIO(data), map_location=device)
            except Exception as exc:
                raise ModelFileError(f"{self.package_name}: its torchscript weights cannot be loaded "
                                     f"({_one_line(exc)}).") from exc
            return module.eval()
        _weights_bytes(weights, "pytorch_state_dict weights", self.package_name)  # local, present and intact
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        try:
            module = load_torch_model(weights, load_state=True, devices=[str(device)])
        except Exception as exc:  # the package's own code may raise anything
            raise ModelFileError(f"{self.package_name}: its pytorch_state_dict weights cannot be loaded "
                                 f"({_one_line(exc)}).") from exc
        return module.eval()

    # ------------------------------------------------------------------ processing
    def _sample(self, member: str, array: np.ndarray, axes: Any) -> Any:
        from bioimageio.core import Sample, Tensor

        return Sample(members={member: Tensor.from_numpy(array, dims=[a.id for a in axes])}, stat={}, id=0)

    def prepare_plane(self, plane: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) plane -> (1, H, W) float32 after the package's preprocessing
        (colour averaged to grey first, as for napari-unet's own models)."""
        from .preprocess import ImageError, as_channels_first

        chw = as_channels_first(plane, 1)
        if not np.isfinite(chw).all():
            raise ImageError("The image holds NaN or infinite values; replace them (e.g. with 0) before segmenting.")
        sample = self._sample(self.input_id, self.in_layout.to_package(chw[None]), self.descr.inputs[0].axes)
        for op in self._preprocessing():
            op(sample)
        data = np.asarray(sample.members[self.input_id].data.values, dtype=np.float32)
        return np.ascontiguousarray(self.in_layout.from_package(data)[0])

    def _preprocessing(self) -> list[Any]:
        """The package's preprocessing, made anew for each plane: statistics it takes "per dataset" are
        gathered by operations that keep a running measure over every plane they see, so the same
        plane came out differently after others had been segmented (38 nuclei on a fresh model, 0 after
        another image). Without the package's dataset, each plane's own statistics stand for it."""
        from bioimageio.core.proc_setup import setup_pre_and_postprocessing

        return list(setup_pre_and_postprocessing(self.descr, dataset_for_initial_statistics=[]).pre)

    def _postprocess(self, out: np.ndarray) -> np.ndarray:
        if self._post:
            sample = self._sample(self.output_id, out, self.descr.outputs[0].axes)
            for op in self._post:
                op(sample)
            out = np.asarray(sample.members[self.output_id].data.values)
        return self.out_layout.from_package(out).astype(np.float32, copy=False)

    def _classes(self, out: np.ndarray) -> np.ndarray:
        """(N, k, h, w) package output (probabilities) -> (N, n_classes, h, w) napari-unet classes."""
        out = np.clip(out, 0.0, 1.0)
        if self.mapping == "probability":
            p = out[:, :1]
            return np.concatenate([1.0 - p, p], axis=1)
        if self.mapping == "foreground+boundary":
            fg, boundary = out[:, :1], out[:, 1:2]
            return np.concatenate([1.0 - fg, fg * (1.0 - boundary), fg * boundary], axis=1)
        return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-6)

    def _run_one(self, kind: str, backend: Any, x: np.ndarray) -> np.ndarray:
        x = self.in_layout.to_package(x)
        if kind == "onnx":
            name = backend.get_inputs()[0].name
            try:
                return run_session(backend, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
            except Exception as exc:  # (onnxruntime's own classes) an input of the shape the description gives
                text = str(exc)
                if "INVALID_ARGUMENT" not in text and "invalid dimensions" not in text.lower():
                    raise
                raise ModelFileError(
                    f"{self.package_name}: its onnx weights refuse an input of shape {tuple(x.shape)}, as its description "
                    f"lays out its input's axes: the description does not match its weights ({_one_line(text)})"
                ) from exc
        from .device import device_lock

        with device_lock(self.anchor.device), torch.inference_mode():  # (Apple's GPU: one thread at a time)
            y = backend(torch.from_numpy(np.ascontiguousarray(x)).to(self.anchor.device))
            if isinstance(y, (tuple, list)):
                y = y[0]
            return y.float().cpu().numpy()

    def run_packaged(self, batch: np.ndarray, engine: str) -> np.ndarray:
        """(N, 1, h, w) float32 tiles -> (N, n_classes, h, w) float32 class probabilities."""
        kind, backend = self._backend(engine)
        n, _c, h, w = batch.shape
        m = self.margin_in
        x = batch
        if m:
            x = np.pad(x, ((0, 0), (0, 0), (m, m), (m, m)), mode="reflect")
        sy, sx = self._package_size(x.shape[2]), self._package_size(x.shape[3])
        if (sy, sx) != x.shape[2:]:
            mode = "reflect" if min(x.shape[2:]) > 1 and sy - x.shape[2] < x.shape[2] and sx - x.shape[3] < x.shape[3] \
                else "symmetric"
            x = np.pad(x, ((0, 0), (0, 0), (0, sy - x.shape[2]), (0, sx - x.shape[3])), mode=mode)
        chunks = [x[i:i + 1] for i in range(n)] if self.one_per_batch else [x]
        outs = [self._postprocess(self._run_one(kind, backend, chunk)) for chunk in chunks]
        out = np.concatenate(outs, axis=0)[:, :, :h, :w]
        return np.ascontiguousarray(self._classes(out), dtype=np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a (N, 1, h, w) batch (torch in and out; see :meth:`run_packaged`)."""
        return torch.from_numpy(self.run_packaged(x.detach().cpu().numpy(), "torch")).to(x.device)
