"""The model catalog: where models live, what they are called, and managing the user's own.

Two folders hold models: the built-in ones shipped inside the package
(:func:`builtin_models_dir`) and the user's (:func:`user_models_dir`, overridable with
``NAPARI_UNET_MODELS``). A model's name is its file name without ``.pt``. Built-in names are
reserved: a new user model cannot take one.

This module answers every "which model?" question for the GUI, the CLI and scripts: the
list (:func:`list_models`), a name or a path to a file (:func:`resolve_model_path`), a new
name checked (:func:`check_model_name`) or suggested (:func:`suggest_model_name`), and the
user's models renamed, deleted or exported (:func:`rename_model`, :func:`delete_model`,
:func:`export_model`). Reading and writing a model file is :mod:`.checkpoint`'s job; every
file written here goes through :func:`napari_unet._atomic.atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari_unet._atomic import atomic_write, check_folder_writable, file_identity
from napari_unet._errors import ModelFileError

if TYPE_CHECKING:
    from .checkpoint import SegmentationModel

# (the model files are read and written through .checkpoint, imported where they are: the list of
# models is read as a dock opens, which must not import torch on the window's thread)

MODEL_SUFFIX = ".pt"
DEFAULT_MODEL_NAME = "nuclei"

MAX_NAME_LENGTH = 80
_SAFE_NAME = re.compile(rf"^[\w][\w .+-]{{0,{MAX_NAME_LENGTH - 1}}}$")


# ---------------------------------------------------------------------- folders
def model_card_name(name: str) -> str:
    """The file name of a model's card beside its file ("MODEL_CARD.md" for the default model)."""
    return "MODEL_CARD.md" if name == DEFAULT_MODEL_NAME else f"MODEL_CARD_{name}.md"


def builtin_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "models"


def user_models_dir() -> Path:
    """The user's model folder (platformdirs), overridable with ``NAPARI_UNET_MODELS``."""
    env = os.environ.get("NAPARI_UNET_MODELS")
    if env:
        # ("~/models" in quotes, a conda variable, a .desktop file: no shell expands it; relative, the
        # models went wherever napari was started and "disappeared" elsewhere)
        return Path(env).expanduser().absolute()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-unet", appauthor=False)) / "models"


def check_models_dir_writable(folder: str | os.PathLike | None = None) -> Path:
    """Make sure new models can be written into ``folder`` (default: the user's model folder).

    Creates the folder if needed and writes (then removes) a small temporary file.

    Raises
    ------
    OSError
        With a message that names the folder and says what to do.
    """
    folder = Path(folder) if folder is not None else user_models_dir()
    try:
        check_folder_writable(folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OSError(
            exc.errno,
            f"The model folder {folder} cannot be written ({reason}); free disk space, fix its "
            "permissions or point NAPARI_UNET_MODELS at a writable folder",
        ) from exc
    return folder


# ---------------------------------------------------------------------- the list
@dataclass(frozen=True)
class ModelEntry:
    """One model file of the catalog: its name, where it is, and whether it is built in."""

    name: str
    path: Path
    builtin: bool

    @property
    def label(self) -> str:
        """The name as model lists show it: "nuclei", "my cells (yours)"."""
        return self.name if self.builtin else f"{self.name} (yours)"


def list_models() -> list[ModelEntry]:
    """Built-in models first (default first), then the user's, by name."""
    entries = []
    for builtin, folder in ((True, builtin_models_dir()), (False, user_models_dir())):
        if folder.is_dir():
            files = _model_files(folder)
            files.sort(key=lambda p: (p.stem != DEFAULT_MODEL_NAME, p.stem))
            entries.extend(ModelEntry(p.stem, p, builtin) for p in files)
    return entries


def _model_files(folder: Path) -> list[Path]:
    """The model files of ``folder``: ``*.pt`` in any case ("cells.PT", as some systems name a copied
    file), not hidden, no folder named so; of "x.pt" and "x.PT" (two files on Linux) the first."""
    try:
        found = [p for p in folder.iterdir() if p.suffix.lower() == MODEL_SUFFIX and not p.name.startswith(".")]
    except OSError:  # (unreadable: no models there)
        return []
    found.sort(key=lambda p: (p.suffix != MODEL_SUFFIX, p.name))
    files, stems = [], set()
    for p in found:
        if p.stem not in stems and p.is_file():
            files.append(p)
            stems.add(p.stem)
    return files


def user_models() -> list[ModelEntry]:
    """The user's own models (not the built-in ones), by name."""
    return [e for e in list_models() if not e.builtin]


def find_model(name: str, *, user_only: bool = False) -> ModelEntry:
    """The model called ``name``: a built-in one first (their names are reserved), then the user's.

    Parameters
    ----------
    name : str
        A model name (file name without ``.pt``).
    user_only : bool
        Look only among the user's models.

    Raises
    ------
    ModelFileError
        (a ``ValueError``) If no such model exists; the message lists the known names.
    """
    entries = user_models() if user_only else list_models()
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries) or "none"
    raise ModelFileError(f"No model named {name!r}. Known models: {known}.")


def resolve_model_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """Path of a model given by name (built-in or user) or file path; None = the default."""
    if name_or_path is None or str(name_or_path) == "":
        name_or_path = DEFAULT_MODEL_NAME
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix.lower() == MODEL_SUFFIX or os.sep in text or candidate.is_file():
        if not candidate.exists():
            raise ModelFileError(f"Model file not found: {candidate}")
        return candidate  # a folder is refused when read, in one place
    if candidate.is_dir() and not any(e.name == text for e in list_models()):
        return candidate
    return find_model(text).path


# ---------------------------------------------------------------------- names
def check_model_name(name: str) -> str:
    """Return ``name`` stripped, or raise ``ValueError`` saying what is wrong with it."""
    name = (name or "").strip()
    if not _SAFE_NAME.match(name) or name.lower().endswith(MODEL_SUFFIX):
        raise ValueError(
            f"Model name {name!r} is not usable: use letters, digits, spaces, '.', '+', '-' or '_' "
            "(at most 80 characters), without a file extension."
        )
    if len(f"{name}-99{MODEL_SUFFIX}".encode()) > 255:  # file names are bytes (80 letters of 4 bytes each)
        raise ValueError(f"Model name {name[:20]!r}... is too long for a file name; choose a shorter one.")
    # (case aside: "NUCLEI.pt" and "nuclei.pt" are one file on macOS and Windows)
    if any(e.builtin and e.name.lower() == name.lower() for e in list_models()):
        raise ValueError(f"{name!r} is the name of a built-in model; choose another name.")
    return name


def user_model_path(name: str) -> Path:
    """Where the user's model ``name`` is (or would be) stored; the name is checked first. An existing
    ``NAME.PT`` (listed as the user's model NAME) is that file: a new ``NAME.pt`` beside it hid it."""
    path = user_models_dir() / f"{check_model_name(name)}{MODEL_SUFFIX}"
    return _model_file_named(path) or path


def _model_file_named(path: Path) -> Path | None:
    """The model file of ``path``'s name in its folder, whatever the case of its ``.pt`` ("mine.PT"),
    or None (other files: ``path`` itself when it exists)."""
    if path.exists() or path.suffix.lower() != MODEL_SUFFIX:
        return path if path.exists() else None
    try:
        return next((p for p in path.parent.iterdir() if p.stem == path.stem
                     and p.suffix.lower() == MODEL_SUFFIX and not p.name.startswith(".")), None)
    except OSError:
        return None


def free_model_path(path: str | os.PathLike) -> Path:
    """``path`` when no file is there, else the first free ``NAME-2.pt``, ``NAME-3.pt``, ... beside it:
    where a trained model goes when its name was taken while it trained (nothing replaced unasked)."""
    path = Path(path)
    candidate, k = path, 2
    while _model_file_named(candidate) is not None:
        # within a model name's 80 characters (check_model_name), so that the name still works
        stem = path.stem[: max(1, MAX_NAME_LENGTH - len(f"-{k}"))]
        suffix = MODEL_SUFFIX if path.suffix.lower() == MODEL_SUFFIX else path.suffix  # (a new file: ".pt")
        candidate = path.with_name(f"{stem}-{k}{suffix}")
        k += 1
    return candidate


def save_without_replacing(model: SegmentationModel, path: str | os.PathLike,
                           replace: bool | tuple[int, ...] | None = False) -> Path:
    """Save a newly trained ``model`` to ``path`` (atomically), or, when a model is there and the
    user did not agree to ``replace`` it (another run, the CLI or another napari saved it while
    this one trained), to :func:`free_model_path` beside it; the model's name follows the file.
    ``replace``: True, or the :func:`file_identity` of the file the user agreed to replace, replaced
    only while it is still that file (one deleted and saved anew meanwhile, by another napari, is
    kept). Returns the file written."""
    path = Path(path)
    if not (replace is True or (replace and file_identity(path) == tuple(replace))):
        path = free_model_path(path)
    from .checkpoint import save_model

    model.metadata["name"] = path.stem
    return save_model(model, path)


def suggest_model_name(base: str) -> str:
    """A free user-model name derived from ``base``: "nuclei-tuned", "nuclei-tuned-2", ... (never
    ``base`` itself: a colleague's "nuclei-tuned", added from a file, fine-tuned again was saved under
    its own name, two models of one name, each recording the other's as its base)."""
    taken = {e.name for e in list_models()} | {base}
    stem = base
    if stem.endswith("-tuned"):
        stem = stem[: -len("-tuned")]
    stem = stem.rsplit("-tuned-", 1)[0]
    # a file's name as it came ("cells (1).pt", "unet@v2.pt"): only the characters a name may have
    stem = " ".join(re.sub(r"[^\w .+-]+", " ", stem).split()).lstrip(" .+-")
    stem = (stem or "model")[:60]
    candidate = f"{stem}-tuned"
    n = 2
    # (a folder or other file of that name in the model folder is taken too: a model cannot be saved there)
    while candidate in taken or os.path.lexists(user_models_dir() / f"{candidate}{MODEL_SUFFIX}"):
        candidate = f"{stem}-tuned-{n}"
        n += 1
    return candidate


# ---------------------------------------------------------------------- managing the user's models
def _own_model(name: str, action: str) -> ModelEntry:
    """The user's model ``name``, or a ``ValueError`` that says why it cannot be ``action``."""
    try:
        return find_model(name, user_only=True)
    except ModelFileError:
        if any(e.builtin and e.name == name for e in list_models()):
            raise ValueError(f"{name!r} is a built-in model; built-in models cannot be {action}.") from None
        raise


def rename_model(name: str, new_name: str) -> Path:
    """Rename one of the user's models (file and the name stored inside it); returns the new path.

    Raises
    ------
    ValueError
        If ``name`` is built-in or unknown, ``new_name`` is not usable or already taken.
    OSError
        If the folder cannot be written (the old file stays as it was).
    """
    entry = _own_model(name, "renamed")
    new_name = check_model_name(new_name)
    if new_name == name:
        return entry.path
    target = user_model_path(new_name)
    if target.exists():
        raise ValueError(f"A model named {new_name!r} already exists; choose another name.")
    from .checkpoint import read_model_file, save_model

    try:
        model = read_model_file(entry.path, device="cpu")
    except ModelFileError:  # (a newer napari-unet's file, one this version cannot read: moved as it is,
        try:  # known in the folder by its file's name; never over another file)
            os.link(entry.path, target)
            entry.path.unlink()
        except OSError:  # (no hard links here)
            os.rename(entry.path, target)
        return target
    model.metadata["name"] = new_name
    save_model(model, target)
    try:
        entry.path.unlink()
    except OSError:
        with contextlib.suppress(OSError):  # keep exactly one copy
            target.unlink()
        raise
    return target


def delete_model(name: str) -> Path:
    """Delete one of the user's models; returns the path removed.

    Raises
    ------
    ValueError
        If the model is built-in or unknown.
    """
    entry = _own_model(name, "deleted")
    entry.path.unlink()
    return entry.path


def in_user_models(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file of the user's model folder (where a model is known by its file's name)."""
    path = Path(path)
    try:
        return path.parent.expanduser().resolve() == user_models_dir().expanduser().resolve()
    except OSError:
        return False


def export_model(name_or_path: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy a model (a name as :func:`resolve_model_path` takes it, or a file) to ``destination``.

    ``destination`` is a file (``.pt`` added if missing) or a folder (the model's file name is
    kept). The copy is written atomically: a failure leaves any earlier file there intact.
    A BioImage.IO package made by napari-unet (a zip or a folder) is written as the napari-unet
    model file it holds, not copied byte for byte (other packages cannot be: a
    ``ModelFileError`` says why; so does a file that is not a model, or a damaged one). Returns
    the file written.
    """
    from .zoo_import import is_bioimageio_package, package_location

    source = resolve_model_path(name_or_path)
    package = is_bioimageio_package(source)
    destination = Path(destination).expanduser()
    if destination.is_dir():
        name = package_location(source).name  # a folder's whole name: "cells v1.2" is not "cells v1"
        if package and name.lower().endswith(".zip"):
            name = name[: -len(".zip")]
        destination = destination / (name + MODEL_SUFFIX if package else name)
    if destination.suffix.lower() != MODEL_SUFFIX:
        destination = destination.with_name(destination.name + MODEL_SUFFIX)
    if destination.resolve() == source.resolve():
        raise ValueError("Choose another file to export to: that is the model file itself.")
    from .checkpoint import read_model_file, save_model

    model = read_model_file(source, device="cpu")  # a file that is no (working) model is not passed on
    if package or in_user_models(destination):
        # a zip is no model file: the model it holds is saved as one; in the model folder a model is
        # known by its file's name (save_model refuses a built-in's name, which would hide that model,
        # and stores the file's name)
        return save_model(model, destination)
    with atomic_write(destination, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
    return destination
