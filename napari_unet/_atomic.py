"""Atomic file writes: the one way napari-unet writes models, labels and settings.

The content goes to a temporary file in the destination folder, is flushed to disk, and then
renamed over the destination. A crash, a full disk or a read-only folder therefore never leaves
a half-written file in place of a good one: either the old file or the complete new one is there.
:func:`atomic_write_all` does the same for several files that belong together (a labels TIFF and
its corrected-slices list): all of them are replaced, or none.
Plain Python only, so that every layer (core, io, widgets) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Characters of the destination's name kept in a temporary file's name (names are limited
#: to 255 bytes on most file systems, and the temporary name adds a prefix and a suffix).
_NAME_KEPT = 100


def file_identity(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The identity of the file (or folder) at ``path`` now (None: nothing there): what a user agrees
    to replace, told from one written there later by something else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


#: Windows: how long a rename onto a file that another program holds open is tried again (OneDrive or
#: an antivirus scanner opens a new file for a moment), in seconds.
BUSY_RETRY_SECONDS = 2.0
_WINDOWS = sys.platform == "win32"


def _busy(exc: OSError) -> bool:
    """Whether ``exc`` is Windows refusing a file another program has open (ERROR_ACCESS_DENIED,
    ERROR_SHARING_VIOLATION)."""
    return isinstance(exc, PermissionError) and getattr(exc, "winerror", None) in (5, 32)


def _rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)``; on Windows, a destination another program holds open is tried again for
    :data:`BUSY_RETRY_SECONDS`, then said plainly (it was "[WinError 32] … being used by another process",
    naming no program, when napari itself held a file it had read lazily)."""
    import time

    waited, delay = 0.0, 0.05
    while True:
        try:
            os.replace(src, dst)
            return
        except OSError as exc:
            if not (_WINDOWS and _busy(exc)):
                raise
            if waited >= BUSY_RETRY_SECONDS:
                raise PermissionError(
                    exc.errno, f"{Path(dst).name} is open in another program (or in napari, as a layer read from "
                    "the file as it is needed): close it there, or save under another name", str(dst)) from exc
            time.sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 0.5)


class ChangedMeanwhile(FileExistsError):
    """A file a run was to replace was written by something else while it ran (see :func:`check_unchanged`)."""


def check_unchanged(before: dict[str, tuple[int, ...] | None] | None) -> None:
    """Raise :class:`ChangedMeanwhile` when a file of ``before`` ({path: its :func:`file_identity` when a
    run decided to write it}) is not as it was: masks corrected and saved there while a batch ran,
    which the batch's output would have replaced."""
    for path, identity in (before or {}).items():
        if file_identity(path) != identity:
            raise ChangedMeanwhile(f"{Path(path).name} was written by something else while this ran: it is kept, "
                                   "and these masks were not written (run again to replace it)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _kept_name(path: Path) -> str:
    """The start of ``path``'s name that a temporary name beside it keeps (hidden, short enough)."""
    # (in bytes: file names are limited in bytes; surrogateescape: a name of bytes that are no UTF-8,
    # as unzipped from a Windows archive, failed to encode, and nothing could be written under it)
    return path.name.encode("utf-8", "surrogateescape")[:_NAME_KEPT].decode("utf-8", errors="ignore")


def check_folder_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and write (then remove) a small hidden file in it: whether the
    files of a long job can be written there, asked before the job rather than after it.

    Raises
    ------
    OSError
        The folder cannot be made or written (its ``strerror`` says why).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # ("File exists" said of a folder to make)
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder") from None
    fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    try:
        os.write(fd, b"napari-unet")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)
    return folder


def reserve_space(fh: Any, nbytes: int, folder: str | os.PathLike) -> None:
    """Take ``nbytes`` of disk for the open file ``fh`` (a memory map's) before anything is written to
    it. A memory map onto a full disk ends the process with a bus error (SIGBUS) at the first page that
    cannot be stored: no message, no cleanup. Raises ``OSError(ENOSPC)`` with a one-line message
    instead (``folder``: where the file is, named in the message and asked for its free space where
    the blocks cannot be taken ahead: macOS, Windows, file systems without fallocate)."""

    def short() -> OSError:
        return OSError(errno.ENOSPC, f"not enough free space in {folder} for {nbytes / 2**30:.2f} GiB of "
                                     "temporary results; free some space or write elsewhere")

    try:
        os.posix_fallocate(fh.fileno(), 0, nbytes)  # Linux: the blocks are taken now
        return
    except AttributeError:  # no posix_fallocate
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise short() from None
    if shutil.disk_usage(folder).free < nbytes:
        raise short()


#: A temporary file or folder beside a destination untouched this long was left by a writer that was
#: killed (a force-quit while a large stack was saved): removed when that destination is written again.
ABANDONED_SECONDS = 15 * 60
#: The random part ``tempfile`` puts in the names of this module's temporary files and folders.
_TEMP_TAG = r"[a-z0-9_]{8}"


def _touched_since(entry: os.DirEntry, since: float) -> bool:
    """Whether ``entry`` (a folder: anything in it, an OME-Zarr's chunks too) was modified after ``since``."""
    if entry.stat(follow_symlinks=False).st_mtime >= since:
        return True
    if entry.is_dir(follow_symlinks=False):
        for root, dirs, files in os.walk(entry.path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    if os.lstat(os.path.join(root, name)).st_mtime >= since:
                        return True
    return False


def _remove_abandoned(path: Path, kinds: tuple[str, ...] = ("tmp", "bak", "old")) -> None:
    """Remove what writers killed while writing ``path`` left beside it: hidden ``.NAME.XXXXXXXX.tmp``,
    ``.bak`` and ``.old`` files and folders (the names this module makes) in which nothing was
    modified for :data:`ABANDONED_SECONDS` (each is a whole copy of the data: they filled the data
    folder unseen). Only while ``path`` itself exists (a writer killed between its renames may have
    left the only copy in them: an OME-Zarr set aside), and only for a name kept whole in those
    names (a long name's cut start is shared with other files'). ``kinds``: which of the three."""
    import re
    import time

    if not path.exists() or _kept_name(path) != path.name:
        return
    pattern = re.compile(re.escape(f".{path.name}.") + _TEMP_TAG + r"\.(" + "|".join(kinds) + ")")
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return
    since = time.time() - ABANDONED_SECONDS
    for entry in entries:
        try:
            if _touched_since(entry, since):  # (a save going on now, in this process or another)
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            logging.getLogger(__name__).info("Removed %s, left by a save that was interrupted.", entry.path)
        except OSError:
            continue


def remove_abandoned_in(folder: str | os.PathLike) -> None:
    """:func:`_remove_abandoned` for every file of ``folder`` that has such leftovers beside it (napari-unet's
    own folders: the models folder, where a killed save left a whole model's copy hidden until a model of
    the same name was saved again). Leftovers whose file is not there are left: they may be its only copy."""
    import re

    pattern = re.compile(r"\.(.+)\." + _TEMP_TAG + r"\.(tmp|bak|old)")
    try:
        names = {m.group(1) for e in os.scandir(folder) if (m := pattern.fullmatch(e.name))}
    except OSError:
        return
    for name in names:
        _remove_abandoned(Path(folder) / name)


def _temporary_beside(path: Path, suffix: str) -> Path:
    """A new empty file in ``path``'s folder, named after ``path`` (hidden, short enough)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{_kept_name(path)}.", suffix=suffix, dir=path.parent)
    os.close(fd)  # reopened by name, so that the handle's ``name`` is a path (tifffile uses it)
    return Path(tmp)


def temporary_folder_beside(path: str | os.PathLike) -> Path:
    """A new empty folder in ``path``'s folder, named after ``path`` (hidden, short enough even
    for a long name): where a folder (an OME-Zarr) is written before it is renamed to ``path``."""
    path = Path(path)
    _remove_abandoned(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_kept_name(path)}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; use the user's usual mode
    return tmp


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, unchanged: dict[str, Any] | None = None) -> Iterator[Path]:
    """A new folder beside ``path`` to write a folder (an OME-Zarr) into: it takes ``path``'s place
    when the block ends (:func:`replace_folder`), and is removed when the block raises or when a file
    of ``unchanged`` changed meanwhile (:func:`check_unchanged`)."""
    tmp = temporary_folder_beside(path)
    try:
        yield tmp
        check_unchanged(unchanged)
        first = not Path(path).exists()
        replace_folder(tmp, path)  # (the old folder or the new one, whatever interrupts it)
        if first:  # (what a writer killed before left beside it was not looked at while there was no folder;
            _remove_abandoned(Path(path), ("tmp",))  # an old folder set aside may be the only copy: kept)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the folder ``tmp`` in place of ``dest`` (an OME-Zarr written beside it): the old folder is
    renamed aside first, then ``tmp`` to ``dest``, then the old one removed, so that an interruption
    (Ctrl+C while a large old folder was being deleted) leaves the old folder or the new one, never
    neither. An old folder left aside by an interruption is hidden (``.NAME.*.old``)."""
    tmp, dest = Path(tmp), Path(dest)
    aside = None
    if dest.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{_kept_name(dest)}.", suffix=".old", dir=dest.parent))
        _rename(dest, aside / dest.name)
    try:
        _rename(tmp, dest)
    except BaseException:
        if aside is not None:
            os.replace(aside / dest.name, dest)  # (the old one back)
            shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        try:
            shutil.rmtree(aside, ignore_errors=True)
        except BaseException:  # (Ctrl+C while a large old folder is removed: finished, then said)
            shutil.rmtree(aside, ignore_errors=True)
            raise


class AtomicFiles:
    """Files written to temporary files first and put in place together by :meth:`commit`.

    Use it through :func:`atomic_write_all`.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, destination)

    @contextlib.contextmanager
    def open(self, path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
        """Open a temporary file beside ``path`` (created with its folder); it replaces ``path``
        at :meth:`commit`. A symbolic link is written through: the file it names is replaced (the
        temporary file lies beside that one), keeping its permissions."""
        if mode not in ("wb", "w"):
            raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
        path = Path(path)
        if path.is_symlink():  # the file it names is written (renamed over, the link became a copy)
            path = Path(os.path.realpath(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(path)  # (once per file written: its backup at commit needs no second look)
        tmp = _temporary_beside(path, ".tmp")
        self._staged.append((tmp, path))
        with open(tmp, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        try:  # an existing file's permissions (a file shared 0640 stays so), else the user's usual mode
            mode_bits = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode_bits = 0o666 & ~_umask()  # (mkstemp makes 0600 files)
        os.chmod(tmp, mode_bits)

    def commit(self) -> None:
        """Rename every temporary file over its destination; when one rename fails, the
        destinations already replaced get their old content back (or are removed when they
        did not exist) and the error is raised."""
        replaced: list[tuple[Path, Path | None]] = []  # (destination, backup of its old content)
        backup: Path | None = None
        try:
            for tmp, dest in self._staged:
                backup = self._backup(dest)
                _rename(tmp, dest)
                replaced.append((dest, backup))
                backup = None
        except BaseException:
            if backup is not None:  # the file that failed kept its content: drop its backup
                with contextlib.suppress(OSError):
                    os.unlink(backup)
            for dest, old in reversed(replaced):
                with contextlib.suppress(OSError):
                    if old is None:
                        os.unlink(dest)
                    else:
                        os.replace(old, dest)
            self.discard()
            raise
        for dest, old in replaced:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.unlink(old)
            if old is None:  # (a first write: what a killed earlier one left was not looked at, dest not there;
                _remove_abandoned(dest, ("tmp",))  # its old content set aside may be the only copy: kept)
        self._staged = []

    def discard(self) -> None:
        """Remove the temporary files not yet in place."""
        for tmp, _dest in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged = []

    def _backup(self, dest: Path) -> Path | None:
        """A second name for ``dest``'s current content (None if there is no such file), so
        that it can be restored; only needed when more than one file is committed."""
        if len(self._staged) < 2 or not dest.is_file():
            return None
        backup = _temporary_beside(dest, ".bak")
        try:
            os.unlink(backup)
            os.link(dest, backup)  # the old content under a second name, no copy
        except OSError:  # no hard links on this file system
            try:
                shutil.copy2(dest, backup)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
                raise
        return backup


@contextlib.contextmanager
def atomic_write_all() -> Iterator[AtomicFiles]:
    """Write several files so that all of them are replaced, or none.

    Each ``files.open(path, mode)`` inside the block writes a temporary file beside ``path``;
    when the block ends without an error, all of them are renamed over their destinations. If
    the block raises, or a rename fails (a folder in the way, a name too long), every
    destination keeps its old content and the temporary files are removed.

    Examples
    --------
    >>> with atomic_write_all() as files:                       # doctest: +SKIP
    ...     with files.open("cells.tif", "wb") as fh: fh.write(tiff_bytes)
    ...     with files.open("cells.tif.corrected.json", "w") as fh: fh.write(text)
    """
    files = AtomicFiles()
    try:
        yield files
    except BaseException:
        files.discard()
        raise
    files.commit()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    Parameters
    ----------
    path : path
        The destination; its folder is created if missing.
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        For text mode (default UTF-8).

    Raises
    ------
    OSError
        If the folder cannot be written (read-only, disk full); ``path`` is left untouched and
        the temporary file removed.
    """
    with atomic_write_all() as files, files.open(path, mode, encoding) as fh:
        yield fh
