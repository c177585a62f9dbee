"""Managing the user's models from the GUI: rename, delete, export, check the folder.

Only models in the user's folder (``core.checkpoint.user_models_dir``) can be renamed or
deleted; built-in models can be exported. Every write is atomic (temporary file in the
target folder, then ``os.replace``). torch is imported only inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from napari_unet._atomic import atomic_write


def user_model_entries() -> list:
    """``ModelEntry`` of the user's own models (not the built-in ones)."""
    from napari_unet.core.checkpoint import list_models

    return [e for e in list_models() if not e.builtin]


def find_model(name: str):
    """The ``ModelEntry`` called ``name`` (user models first), or raise ``ValueError``."""
    from napari_unet.core.checkpoint import list_models

    entries = list_models()
    for entry in sorted(entries, key=lambda e: e.builtin):
        if entry.name == name:
            return entry
    raise ValueError(f"No model named {name!r}; the model list may be out of date.")


def check_models_dir_writable(folder: str | os.PathLike | None = None) -> Path:
    """Make sure new models can be written into ``folder`` (default: the user's model folder).

    Creates the folder if needed and writes (then removes) a small temporary file.

    Raises
    ------
    OSError
        With a message that names the folder and says what to do.
    """
    from napari_unet.core.checkpoint import user_models_dir

    folder = Path(folder) if folder is not None else user_models_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        try:
            os.write(fd, b"napari-unet")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OSError(
            exc.errno,
            f"The model folder {folder} cannot be written ({reason}); free disk space, fix its "
            "permissions or point NAPARI_UNET_MODELS at a writable folder",
        ) from exc
    return folder


def rename_model(name: str, new_name: str) -> Path:
    """Rename one of the user's models (file and the name stored inside it).

    Raises
    ------
    ValueError
        If ``name`` is built-in or unknown, ``new_name`` is not usable or already taken.
    OSError
        If the folder cannot be written (the old file stays as it was).
    """
    from napari_unet.core.checkpoint import check_model_name, read_model_file, save_model, user_model_path

    entry = find_model(name)
    if entry.builtin:
        raise ValueError(f"{name!r} is a built-in model; built-in models cannot be renamed.")
    new_name = check_model_name(new_name)
    if new_name == name:
        return entry.path
    target = user_model_path(new_name)
    if target.exists():
        raise ValueError(f"A model named {new_name!r} already exists; choose another name.")
    model = read_model_file(entry.path, device="cpu")
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
    entry = find_model(name)
    if entry.builtin:
        raise ValueError(f"{name!r} is a built-in model; built-in models cannot be deleted.")
    entry.path.unlink()
    return entry.path


def export_model(name: str, destination: str | os.PathLike) -> Path:
    """Copy a model (built-in or user) to ``destination`` (a file, ``.pt`` added if missing).

    The copy is written atomically: a failure leaves any earlier file at ``destination`` intact.
    """
    from napari_unet.core.checkpoint import MODEL_SUFFIX

    entry = find_model(name)
    destination = Path(destination).expanduser()
    if destination.is_dir():
        destination = destination / f"{entry.name}{MODEL_SUFFIX}"
    if destination.suffix != MODEL_SUFFIX:
        destination = destination.with_name(destination.name + MODEL_SUFFIX)
    if destination.resolve() == entry.path.resolve():
        raise ValueError("Choose another file to export to: that is the model file itself.")
    with atomic_write(destination, "wb") as out, open(entry.path, "rb") as src:
        shutil.copyfileobj(src, out)
    return destination


def suggest_model_name(base: str) -> str:
    """A free user-model name derived from ``base``: "nuclei-tuned", "nuclei-tuned-2", ..."""
    from napari_unet.core.checkpoint import list_models

    taken = {e.name for e in list_models()}
    stem = base
    for suffix in ("-tuned",):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = stem.rsplit("-tuned-", 1)[0]
    stem = (stem or "model")[:60]
    candidate = f"{stem}-tuned"
    n = 2
    while candidate in taken:
        candidate = f"{stem}-tuned-{n}"
        n += 1
    return candidate
