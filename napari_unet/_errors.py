"""One line of an error for a person: the CLI's messages and the widgets' notifications (no torch, no Qt)."""

from __future__ import annotations


def one_line(exc: BaseException | str) -> str:
    """The first line of an error's message, never empty (its type name when it has none); an
    OSError's without its "[Errno N]": its file (a rename's destination), then its reason."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename2 if exc.filename2 is not None else exc.filename  # (a rename's: its destination)
        text = exc.strerror if name is None else f"{name}: {exc.strerror}"
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
    return text.splitlines()[0]


class ModelFileError(ValueError):
    """A file that is not a usable napari-unet model (message says why). Defined here, without torch:
    the model list (``core.catalog``) raises it, and the widgets read that list as a dock opens."""
