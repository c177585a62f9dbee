"""Model files: the one place that loads and saves them.

A model file is ``torch.save`` of a plain dict (loaded with ``weights_only=True``, so
nothing is unpickled beyond tensors and plain Python values)::

    {
        "format": "napari-unet-model",
        "format_version": 1,
        "config": {...},            # UNetConfig.to_dict()
        "state_dict": {...},        # tensors
        "representation": "bg-interior-boundary" | "foreground",
        "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "metadata": {...},          # name, base model, date, data, metrics, ...
    }

Which models exist and what they are called (folders, names, list, rename, delete, export)
is :mod:`.catalog`'s job; its older names are still importable from here.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_unet._atomic import atomic_write
from napari_unet._errors import ModelFileError

from .device import select_device
from .instances import DEFAULT_MIN_SIZE, DEFAULT_SEED_FRACTION, DEFAULT_THRESHOLD, seed_pixels
from .model import UNet, UNetConfig, cpu_state
from .preprocess import DEFAULT_NORMALIZATION  # (defined there, torch-free; still importable from here)

log = logging.getLogger(__name__)

FORMAT = "napari-unet-model"
FORMAT_VERSION = 1

#: Output representations understood by predict/train.
#: "bg-interior-boundary": 3 classes, instances from interior seeds + watershed.
#: "foreground": 2 classes (the paper's), instances from connected components.
#: "foreground-watershed": 2 classes, split by a distance watershed (BioImage.IO packages that
#: give a foreground probability only; never trained here).
REPRESENTATIONS = {"bg-interior-boundary": 3, "foreground": 2, "foreground-watershed": 2}

#: The networks :func:`untrained_model` makes (``napari-unet train --new``), and what each is.
NEW_NETWORKS = {
    "unet": "the built-in models' network: 4 levels of 16 to 128 channels, padded 3x3 convolutions with batch "
            "normalisation, classes background / interior / boundary; 482,483 parameters",
    "paper": "Ronneberger et al. 2015's U-Net: 5 levels of 64 to 1024 channels, unpadded 3x3 convolutions, "
             "classes background / cell with the paper's border weights; 31,030,658 parameters",
}


@dataclass
class SegmentationModel:
    """A network together with what is needed to use it on images.

    Attributes
    ----------
    net : UNet
        The network (in eval mode after loading).
    representation : str
        How outputs map to instances, a key of ``REPRESENTATIONS``.
    normalization : dict
        How to normalise an image before the network (percentiles per image).
    metadata : dict
        Name, provenance and metrics; plain Python values only.
    """

    net: UNet
    representation: str = "bg-interior-boundary"
    normalization: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.representation not in REPRESENTATIONS:
            raise ModelFileError(
                f"Unknown output representation {self.representation!r}; "
                f"known: {', '.join(REPRESENTATIONS)}."
            )
        expected = REPRESENTATIONS[self.representation]
        if self.net.config.n_classes != expected:
            raise ModelFileError(
                f"Representation {self.representation!r} needs {expected} output classes, "
                f"the network has {self.net.config.n_classes}."
            )

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "unnamed"))

    @property
    def postprocessing(self) -> dict[str, float]:
        """Threshold, minimum object size and smallest seed (a fraction of the object area, see
        :attr:`min_seed`) this model works best with (tuned on its validation data when it was
        made; 0.5, 16 px and 0.05 otherwise)."""
        return postprocessing_settings(self.metadata)

    @property
    def postprocessing_by_kind(self) -> dict[str, dict[str, float]]:
        """Post-processing of its own for some kinds of image (see :func:`postprocessing_by_kind`);
        ``{}`` for most models."""
        return postprocessing_by_kind(self.metadata)

    def postprocessing_for(self, kind: str | None) -> dict[str, float]:
        """:attr:`postprocessing` for an image of ``kind`` (its own setting, if the model has one)."""
        return postprocessing_settings(self.metadata, kind)

    @property
    def min_seed(self) -> int:
        """Smallest interior part (pixels at the model's scale) that seeds an object of its own:
        ``postprocessing["seed_fraction"]`` of the area of an object of the model's
        :attr:`diameter`; 0 when the model does not know its diameter."""
        return self.min_seed_for(None)

    def min_seed_for(self, kind: str | None) -> int:
        """:attr:`min_seed` for an image of ``kind`` (see :meth:`postprocessing_for`)."""
        diameter = self.diameter
        if diameter is None:
            return 0
        return seed_pixels(self.postprocessing_for(kind)["seed_fraction"], diameter)

    @property
    def diameter(self) -> float | None:
        """Object diameter (pixels) this model segments best at: calibrated on its validation
        images when it was made (``metadata["diameter"]``), else the median diameter of its
        training objects (``metadata["training_diameter"]``), else None (images are used at
        their own scale)."""
        for key in ("diameter", "training_diameter"):
            value = _number(self.metadata.get(key), float)
            if value is not None and value > 0:
                return value
        return None

    @property
    def data_diameter(self) -> float | None:
        """Median object diameter (pixels of the user's images) of the data this model was last
        fine-tuned on (``metadata["data_diameter"]``): where the automatic diameter starts on
        images of the same kind. None for a model that was not fine-tuned."""
        value = _number(self.metadata.get("data_diameter"), float)
        return value if value is not None and value > 0 else None

    @property
    def colour(self) -> int | str | None:
        """What of an RGB image this model was fine-tuned on, where every RGB image it learnt from was
        given one (``metadata["colour"]``: 0, 1, 2, "mean" or "without DAB"; Segment's Colour, ``train
        --channel``): what it segments of RGB images when told "auto". None: told on each image."""
        from .channels import chosen_colour

        return chosen_colour(self.metadata.get("colour"))

    @property
    def object_size(self):
        """The object sizes this model segments well (:class:`~napari_unet.core.scale.ObjectSize`):
        around :attr:`diameter`, or the range ``metadata["diameter_range"]`` measured when it was
        made; None when the model does not know its diameter."""
        from .scale import ObjectSize

        diameter = self.diameter
        if diameter is None:
            return None
        span = self.metadata.get("diameter_range")
        low, high = (_number(v, float) for v in span) if isinstance(span, (list, tuple)) and len(span) == 2 else (None, None)
        if low is not None and high is not None and 0 < low <= diameter <= high:
            return ObjectSize(diameter, low, high)
        return ObjectSize.around(diameter)

    def resolve_postprocessing(
        self, threshold: float | None, min_size: int | None, kind: str | None = None
    ) -> tuple[float, int]:
        """``(threshold, min_size)`` as given, the model's own where None (for an image of ``kind``:
        see :meth:`postprocessing_for`)."""
        own = self.postprocessing_for(kind)
        return (own["threshold"] if threshold is None else threshold,
                own["min_size"] if min_size is None else min_size)

    @property
    def in_channels(self) -> int:
        return self.net.config.in_channels

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str | None) -> "SegmentationModel":
        from .device import device_lock

        where = select_device(device) if not isinstance(device, torch.device) else device
        with device_lock(where), device_lock(self.device):  # (Apple's GPU: one thread at a time, see device_lock)
            self.net.to(where)
        return self

    def copy(self) -> "SegmentationModel":
        """A deep copy (weights included), e.g. to fine-tune without touching the original."""
        return SegmentationModel(
            copy.deepcopy(self.net),
            self.representation,
            dict(self.normalization),
            copy.deepcopy(self.metadata),
        )

    def prepare_plane(self, plane: Any) -> Any:
        """A (H, W) or (H, W, 3) plane as the network's normalised (C, H, W) float32 input:
        :func:`~napari_unet.core.preprocess.prepare_plane` with this model's normalisation, or the
        network's own preprocessing (networks of BioImage.IO packages bring theirs)."""
        own = getattr(self.net, "prepare_plane", None)
        if own is not None:
            return own(plane)
        from .preprocess import prepare_plane

        return prepare_plane(plane, self.in_channels, self.normalization)

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self.net, UNet):
            raise ModelFileError(
                f"{self.name} runs the network of a BioImage.IO package: it cannot be saved or fine-tuned as a "
                "napari-unet model (only napari-unet's own networks can)."
            )
        state = cpu_state(self.net)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.net.config.to_dict(),
            "state_dict": state,
            "representation": self.representation,
            "normalization": dict(self.normalization),
            # "path" is where this copy was read from: a fact about this machine, not the model
            "metadata": _plain({k: v for k, v in self.metadata.items() if k != "path"}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "model") -> "SegmentationModel":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{source} is not a napari-unet model file.")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ModelFileError(
                f"{source} has model format version {version!r}; this napari-unet reads versions up to "
                f"{FORMAT_VERSION}. Update napari-unet to use it."
            )
        try:
            config = UNetConfig.from_dict(data["config"])
            _check_shapes(config, data["state_dict"])  # (a config of 10**5 channels built first took 36 GB)
            net = UNet.from_config(config)
            net.load_state_dict(data["state_dict"])
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{source} is damaged or incomplete: {_first_reason(exc)}") from exc
        broken = [name for name, t in net.state_dict().items()
                  if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if broken:  # a run that diverged, saved by another program: it would segment nothing, silently
            raise ModelFileError(f"{source} is damaged: its weights {', '.join(broken[:3])}"
                                 f"{' ...' if len(broken) > 3 else ''} hold values that are not numbers (NaN or "
                                 "infinite); train it again, with a lower learning rate if its loss diverged.")
        net.eval()
        if _too_deep(data.get("metadata"), MAX_METADATA_DEPTH):  # (copying or saving it: RecursionError)
            raise ModelFileError(f"{source} is damaged: its metadata is nested more than {MAX_METADATA_DEPTH} "
                                 "levels deep.")
        return cls(
            net,
            data.get("representation", "bg-interior-boundary"),
            dict(_dict_entry(data, "normalization", source) or DEFAULT_NORMALIZATION),
            dict(_dict_entry(data, "metadata", source) or {}),
        )


#: How deep a model's metadata may nest (napari-unet writes 3 levels; a crafted file of thousands
#: loaded, then fine-tuning it ended in a RecursionError of 3000 lines).
MAX_METADATA_DEPTH = 32


def _too_deep(value: Any, limit: int) -> bool:
    """Whether dicts and lists in ``value`` nest more than ``limit`` levels (no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_shapes(config: "UNetConfig", state: Any) -> None:
    """Raise ``ValueError`` unless the weights ``state`` are those of the network ``config`` describes,
    name by name and shape by shape, with the network built on torch's "meta" device (no memory): a
    file of a few kilobytes whose config asked for a network of gigabytes made napari-unet build it
    before finding that the weights were not there."""
    if not isinstance(state, dict):
        raise TypeError("its weights are not a state dict")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNet.from_config(config).state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(given))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    if missing:
        raise ValueError(f"weights missing for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if wrong:
        k = wrong[0]
        raise ValueError(f"the weights of {k} have shape {given[k]}, the network described takes {expected[k]}")


def _first_reason(exc: BaseException) -> str:
    """The first line of ``exc`` that says what is wrong: torch's state-dict errors start with a line
    that names no tensor ("Error(s) in loading state_dict for UNet:"), the reasons follow."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else type(exc).__name__


def _dict_entry(data: dict[str, Any], key: str, source: str) -> dict[str, Any] | None:
    """``data[key]`` when it is a dict (None when absent), else a one-line ModelFileError."""
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise ModelFileError(f"{source} is damaged or incomplete: its {key} is a {type(value).__name__}, not a dict.")
    return value


def postprocessing_settings(metadata: dict[str, Any], kind: str | None = None) -> dict[str, float]:
    """Threshold, minimum size and seed fraction recorded in a model's ``metadata``: its own for
    images of ``kind`` when it has them (:func:`postprocessing_by_kind`), else its general ones
    (``metadata["postprocessing"]``; 0.5, 16 px and 0.05 where it records none)."""
    if kind is not None:
        own = postprocessing_by_kind(metadata).get(kind)
        if own is not None:
            return own
    stored = metadata.get("postprocessing")
    stored = stored if isinstance(stored, dict) else {}
    defaults = {"threshold": DEFAULT_THRESHOLD, "min_size": DEFAULT_MIN_SIZE, "seed_fraction": DEFAULT_SEED_FRACTION}
    out: dict[str, float] = {}
    for name, kind_of, fits in _PER_KIND_VALUES:  # a value that is no number, or out of range: the default
        value = _number(stored.get(name), kind_of)
        if value is None or not fits(value):
            if name in stored and (name, repr(stored[name])) not in _SAID:
                _SAID.add((name, repr(stored[name])))
                log.warning("model metadata: post-processing %s %r is not usable; %s taken", name, stored[name],
                            defaults[name])
            value = kind_of(defaults[name])
        out[name] = value
    return out


_SAID: set[tuple[str, str]] = set()  # (unusable post-processing values said once per process)


def _number(value: Any, kind_of: type) -> float | int | None:
    """``value`` as a finite number of ``kind_of`` (a whole one for int), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if kind_of is int and float(value) != int(value):
        return None
    return kind_of(value)


#: The values a setting per kind of image may give: name, type, and the range a model file's value must be in.
_PER_KIND_VALUES = (
    ("threshold", float, lambda v: 0.0 < v < 1.0),
    ("min_size", int, lambda v: v >= 0),
    ("seed_fraction", float, lambda v: 0.0 <= v < 1.0),
)


def postprocessing_by_kind(metadata: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Post-processing of its own for some kinds of image (keys of
    :data:`~napari_unet.core.modality.MODALITIES`, told from the image itself by
    :func:`~napari_unet.core.modality.image_modality`), recorded in a model's ``metadata``
    (``"postprocessing_by_kind"``): tuned on the model's training images of that kind when it was
    made, kept only where it beat the general setting there. Values a kind does not give are the
    general ones; unknown kinds, values that are not numbers and values out of range (a threshold
    not strictly between 0 and 1, a negative size, a seed fraction not in [0, 1)) are ignored."""
    stored = metadata.get("postprocessing_by_kind")
    if not isinstance(stored, dict):
        return {}
    from .modality import MODALITIES

    general = postprocessing_settings(metadata)
    out = {}
    for kind, values in stored.items():
        if kind not in MODALITIES or not isinstance(values, dict):
            continue
        merged = dict(general)
        for key, cast, valid in _PER_KIND_VALUES:
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and valid(value):
                merged[key] = cast(value)
        out[kind] = merged
    return out


def _plain(value: Any) -> Any:
    """Metadata reduced to types that ``weights_only=True`` loads."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # plain str: subclasses (e.g. torch.__version__) do not load with weights_only
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ---------------------------------------------------------------------- files
def save_model(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, fsync, rename).

    A crash or a full disk never leaves a half-written file in place of a good one:
    either the old file or the complete new one is there.

    Raises
    ------
    OSError
        If the folder cannot be written (read-only, disk full); the previous file is intact.
    """
    import inspect

    if not isinstance(model, SegmentationModel):  # (e.g. the generator finetune returns: run_finetune runs it)
        raise TypeError(f"model must be a SegmentationModel, got {type(model).__name__}"
                        + (" (finetune is a generator of events: run_finetune returns the model)"
                           if inspect.isgenerator(model) else "") + ".")
    path = Path(path)
    data = model.to_dict()
    from .catalog import MODEL_SUFFIX, check_model_name, in_user_models

    if path.suffix.lower() == MODEL_SUFFIX and in_user_models(path):
        # in the model folder a model is known by its file's name: a built-in model's name would hide
        # it (listed twice, never found by name), and the name stored is the file's (it was the
        # training's "nuclei-finetuned" whatever the file was called)
        check_model_name(path.stem)
        data["metadata"] = {**dict(data.get("metadata") or {}), "name": path.stem}
    return torch_save_atomic(data, path)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, serialised in memory first: torch's zip writer
    turns a full disk into a RuntimeError ("enforce fail at inline_container.cc"), which no caller
    takes for the OSError it is; a plain write raises that."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getbuffer())
    return Path(path)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with the ``code/`` of a scripted module)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _refuse_inflating(path: Path) -> None:
    """Raise ``ModelFileError`` for a torch file (a zip) whose members unpack to more than the file
    holds: torch stores them as they are; a few megabytes compressed to gigabytes (a zip bomb) took
    4 GB of memory and 8 s, in the Segment widget's window."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile):
        return  # (a legacy torch file, or junk: torch.load says)
    unpacked = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) and unpacked > 4 * path.stat().st_size + 2**20:
        raise ModelFileError(f"{path.name} is not a napari-unet model file: it unpacks to {unpacked / 2**30:.1f} GB "
                             "from a file of " f"{path.stat().st_size / 2**20:.1f} MB (torch stores its files as "
                             "they are).")


def _load_dict(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ModelFileError(
            f"{path} is a folder, not a model file: give a .pt file or a model name."
        )
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    if _is_torchscript(path):  # (torch.load would hand it to torch.jit.load, warnings and all)
        raise ModelFileError(
            f"{path.name} is a TorchScript file, not a napari-unet model file: give the BioImage.IO package "
            "it came with (its folder or .zip), or a napari-unet model."
        )
    _refuse_inflating(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickles of another protocol before failing on them: the
            # one-line error below says what matters
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for junk files
        raise ModelFileError(
            f"{path.name} is not a napari-unet model file (it could not be read as one)."
        ) from exc


def read_model_file(path: str | os.PathLike, device: torch.device | str | None = "cpu") -> SegmentationModel:
    """Load a model file safely (``weights_only=True``) and check its format version.

    A BioImage.IO package (a ``.zip``, or a folder with ``bioimageio.yaml``) is read by
    :func:`napari_unet.core.zoo_import.read_bioimageio_model`.
    """
    path = Path(path)
    from .zoo_import import is_bioimageio_package

    if is_bioimageio_package(path):
        from .zoo_import import read_bioimageio_model

        return read_bioimageio_model(path, device=device)
    model = SegmentationModel.from_dict(_load_dict(path), source=path.name)
    model.metadata.setdefault("name", path.stem)
    model.metadata["path"] = str(path)
    from .catalog import MODEL_SUFFIX, in_user_models

    if Path(path).suffix.lower() == MODEL_SUFFIX and in_user_models(path):  # (a file copied in by hand)
        model.metadata["name"] = Path(path).stem  # known there by its file's name, as the lists show it
    return model.to(select_device(device))


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a model file (name, metrics, post-processing), without building the network."""
    path = Path(path)
    from .zoo_import import is_bioimageio_package

    if is_bioimageio_package(path):
        from .zoo_import import read_package_metadata

        return read_package_metadata(path)
    data = _load_dict(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path.name} is not a napari-unet model file.")
    return dict(_dict_entry(data, "metadata", path.name) or {})


# ---------------------------------------------------------------------- names (moved to .catalog)
#: Names that lived here before the catalog had its own module; still importable from here.
_CATALOG_NAMES = frozenset({
    "MODEL_SUFFIX", "DEFAULT_MODEL_NAME", "ModelEntry", "builtin_models_dir", "user_models_dir",
    "list_models", "check_model_name", "resolve_model_path", "user_model_path",
})


def __getattr__(name: str) -> Any:
    if name in _CATALOG_NAMES:
        from . import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def untrained_model(network: str, name: str | None = None, seed: int | None = None) -> SegmentationModel:
    """A new model with random weights, to train from scratch (``finetune(..., from_scratch=True)``).

    ``network`` is a key of :data:`NEW_NETWORKS`: "unet", the network of the built-in models (a
    padded U-Net with batch normalisation, three classes: instances from interior seeds); "paper",
    :meth:`UNet.paper` (two classes, instances from connected components, as in the paper; trained
    with its border weights, w0 = 10 and sigma = 5). It records no object size: training records that
    of the objects it learns from. ``seed``: its random weights drawn from that seed (torch's global
    generator left as it was), else from torch's global generator.
    """
    if network not in NEW_NETWORKS:
        raise ValueError(f"unknown network {network!r}: one of {', '.join(NEW_NETWORKS)}.")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if network == "unet":
            net, representation = UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same",
                                       norm="batch"), "bg-interior-boundary"
        else:
            net, representation = UNet.paper(), "foreground"
    return SegmentationModel(net, representation, metadata={"name": name or network})


def load_model(
    name_or_path: str | os.PathLike | None = None, device: torch.device | str | None = None
) -> SegmentationModel:
    """Load a model by name or path (None = the default built-in model) onto ``device``.

    Parameters
    ----------
    name_or_path : str, path or None
        A built-in or user model name, or a ``.pt`` file.
    device : str, torch.device or None
        None/"auto" picks cuda, then mps, then cpu.
    """
    from .catalog import resolve_model_path

    return read_model_file(resolve_model_path(name_or_path), device=select_device(device))


def stamp_metadata(model: SegmentationModel, **fields: Any) -> None:
    """Add fields (and the current UTC date) to the model's metadata."""
    model.metadata.update(fields)
    model.metadata.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
