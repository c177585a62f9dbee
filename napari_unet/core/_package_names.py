"""Finding BioImage.IO packages by their files' names, without importing torch or bioimageio (the
widgets ask as their docks open: Segment lists the model files added by hand in earlier sessions).
Re-exported by :mod:`napari_unet.core.zoo_import`."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_unet._errors import ModelFileError

#: The names of a package's description, as bioimageio.spec finds it: one of these, or a name ending in
#: "." and one of these ("unet.bioimageio.yaml"), at the top of the folder or zip.
PACKAGE_FILE_NAMES = ("bioimageio.yaml", "rdf.yaml", "model.yaml")
#: napari-unet's own section of a package's description (``config: napari-unet:``).
CONFIG_KEY = "napari-unet"


def description_name(names: Iterable[str]) -> str | None:
    """The package description among ``names`` (a folder's or a zip's members): the first of
    :data:`PACKAGE_FILE_NAMES` found at the top, itself or as the end of a name after a "."; None."""
    top = sorted(n for n in names if "/" not in n.rstrip("/"))
    for wanted in PACKAGE_FILE_NAMES:
        for name in top:
            if name.lower() == wanted or name.lower().endswith("." + wanted):
                return name
    return None


def _folder_description(folder: Path) -> str | None:
    try:
        return description_name(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return None


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """True for a ``.zip``, a package description file (``bioimageio.yaml``, ``rdf.yaml``,
    ``model.yaml``, ``*.bioimageio.yaml``), or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        return _folder_description(p) is not None
    return p.suffix.lower() == ".zip" or description_name([p.name]) is not None


def package_location(path: str | os.PathLike) -> Path:
    """Where a package is: the folder of its description file, else ``path``."""
    p = Path(path)
    if p.is_file() and description_name([p.name]) is not None:
        return p.parent
    return p


_NO_DESCRIPTION = ("holds no bioimageio.yaml, rdf.yaml or model.yaml (nor a file named *.bioimageio.yaml): it is "
                   "not a BioImage.IO package")


def _yaml_text(path: Path) -> str:
    """The package description's text (zip member, file in a folder, or the file itself)."""
    if path.is_dir():
        name = _folder_description(path)
        if name is None:
            raise ModelFileError(f"{path} {_NO_DESCRIPTION}.")
        return (path / name).read_text(encoding="utf-8")
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                name = description_name(names)
                if name is not None:
                    return zf.read(name).decode("utf-8")
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"{path.name} is not a readable zip file ({exc}).") from exc
        inner = sorted({n.split("/")[0] for n in names if "/" in n and description_name([n.rsplit("/", 1)[1]])})
        if inner:  # (a zip of the package's folder: bioimageio.spec reads none either)
            raise ModelFileError(f"{path.name} holds the package in its folder {inner[0]!r}, not at its top: unzip it "
                                 "and choose the description file in that folder.")
        raise ModelFileError(f"{path.name} {_NO_DESCRIPTION}.")
    return path.read_text(encoding="utf-8")


def read_package_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Name, post-processing and (for napari-unet's packages) the model's metadata, from the
    package's description only (quick; no bioimageio import, no weights read)."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"Model package not found: {p}")
    try:
        data = yaml.safe_load(_yaml_text(p))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{p.name}: its description is not valid YAML.") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{p.name}: its description is not a BioImage.IO description.")
    own = _own_section(data)
    meta = dict(own["metadata"]) if isinstance(own.get("metadata"), dict) else {}
    for key in ("postprocessing", "postprocessing_by_kind"):
        if isinstance(own.get(key), dict):
            meta.setdefault(key, own[key])
    meta.setdefault("name", str(data.get("name") or p.stem))
    return meta


def is_own_package(path: str | os.PathLike) -> bool:
    """Whether a BioImage.IO package was exported by napari-unet (it reads back as the model it was,
    which can be fine-tuned again); False for any other package or a description that cannot be read."""
    import yaml

    try:
        data = yaml.safe_load(_yaml_text(Path(path)))
    except (OSError, ModelFileError, yaml.YAMLError, UnicodeDecodeError):
        return False
    weights = data.get("weights") if isinstance(data, dict) else None
    # (one of ours converted to other weight formats, its state dict dropped, runs as any package: it
    # cannot be fine-tuned, and Fine-tune must not offer it)
    return isinstance(_own_section(data).get("metadata"), dict) and isinstance(weights, dict) \
        and bool(weights.get("pytorch_state_dict"))


def _own_section(data: Any) -> dict[str, Any]:
    """napari-unet's section (``config: napari-unet:``) of a parsed description; {} when there is none
    or the description, its config or the section is not a mapping."""
    config = data.get("config") if isinstance(data, dict) else None
    own = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    return own if isinstance(own, dict) else {}
