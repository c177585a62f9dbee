"""Masks larger than the memory, held in a file on disk (a memory map) while napari shows them.

A whole-stack run of a lazily read stack (500 frames of 2048 x 2048: 4 GB of 16-bit masks, 8 GB of
32-bit ones) filled an in-memory masks layer plane by plane until the system killed napari; runs
whose masks would not fit were refused, and the CLI's ``--dask`` was the only way. Masks that do not
fit in the memory free are now a ``numpy.memmap`` of a file in the cache folder: an ndarray to
napari and to this plugin (the brush, fill and eraser write into it, runs write plane by plane), its
pages written back to the file and dropped by the system as it needs the memory.

What would read the whole file in the window's thread does not: the next free id for the brush is
the largest id the runs and the edits have written (kept here, :func:`top_id`), not a scan of the
stack; widening 16-bit masks copies them plane by plane into a new file. The writer saves them plane
by plane (``io._writer``). The file is removed when the masks are dropped (the layer removed, napari
closed), and files left by a napari that crashed are removed the next time masks go to disk: like
masks in memory, they are kept by saving them (Correct, Save masks).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import platform
import re
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._host import CACHE_ENV, cache_folder, process_alive

log = logging.getLogger(__name__)

#: Masks are held in memory when they take at most this share of the memory free (the rest: the
#: image's planes, the network, napari itself); on disk otherwise.
MASKS_MEMORY_SHARE = 0.8
#: Room kept free on the disk beyond the masks' file (other programs, the saved masks).
DISK_MARGIN_BYTES = 1 << 30
_SUFFIX = ".masks"

#: {the file's memory map: [largest id written]} for masks on disk (see :func:`top_id`).
_TOPS: weakref.WeakKeyDictionary[mmap.mmap, list[int]] = weakref.WeakKeyDictionary()
#: {the file's memory map: planes holding labels} of labels copied from a file (:func:`editable_copy`).
_HELD: weakref.WeakKeyDictionary[mmap.mmap, list[tuple[int, ...]]] = weakref.WeakKeyDictionary()
#: {path: bytes} of this process's masks files (sparse until written: their room is kept for them).
_LIVE: dict[str, int] = {}
#: Room a plane's write leaves free on the masks' disk, at least (a full disk under a memory map is no
#: error but a crash: SIGBUS).
WRITE_MARGIN_BYTES = 64 << 20
_WATCHED: weakref.WeakSet[Any] = weakref.WeakSet()  # (layers whose edits :func:`watch_edits` follows)


class NoRoomForMasks(ValueError):
    """Masks that fit neither in memory nor on the disk: its message says so whole, ``where`` the disk's
    part ("nor in <folder> (N GB free ...)") for a sentence of its caller's."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def masks_dir() -> Path:
    """Folder of masks held on disk: ``NAPARI_UNET_CACHE_DIR``/masks or the platform's user cache."""
    return cache_folder("masks")


def fits_in_memory(nbytes: int) -> bool:
    """Whether ``nbytes`` of masks fit in the memory free (:data:`MASKS_MEMORY_SHARE` of it; True when
    the memory free cannot be told)."""
    from napari_unet._memory import available_memory

    free = available_memory()
    return free is None or nbytes <= MASKS_MEMORY_SHARE * free


def on_disk(data: Any) -> bool:
    """Whether ``data`` are masks held in a file by this module."""
    return isinstance(data, np.memmap) and getattr(data, "_mmap", None) in _TOPS


def top_id(data: Any) -> int | None:
    """The largest id written into masks on disk (by runs and edits; ids erased since may be lower),
    read without a pass over the file; None for other arrays."""
    if not on_disk(data):
        return None
    return _TOPS[data._mmap][0]


def held_planes(data: Any) -> list[tuple[int, ...]] | None:
    """The planes holding labels of masks on disk copied from a file (:func:`editable_copy`), read
    without a pass over the file; [] for masks on disk made empty; None for other arrays."""
    if not on_disk(data):
        return None
    return list(_HELD.get(data._mmap, []))


def room_to_write(data: Any, nbytes: int) -> bool:
    """Whether ``nbytes`` can be written into ``data`` without filling its disk (True for arrays not on
    disk): writing into a memory map on a full disk kills the process (SIGBUS), the corrections lost."""
    if not on_disk(data) or not data.filename:
        return True
    try:
        return shutil.disk_usage(Path(data.filename).parent).free >= nbytes + WRITE_MARGIN_BYTES
    except OSError:
        return True


def note_ids(data: Any, top: int) -> None:
    """Record that ids up to ``top`` were written into ``data`` (masks on disk; nothing otherwise)."""
    if on_disk(data):
        entry = _TOPS[data._mmap]
        entry[0] = max(entry[0], int(top))


def watch_edits(layer: Any) -> None:
    """Keep :func:`top_id` of a Labels layer's masks on disk up with its brush, fill and undo (napari's
    paint events), whatever array the layer holds later."""
    from ._napari_compat import unwrap_proxy

    layer = unwrap_proxy(layer)  # (a plugin's viewer hands out proxies, made anew at each access)
    if layer in _WATCHED:
        return
    ref = weakref.ref(layer)

    def painted(event: Any) -> None:
        watched = ref()
        data = watched.data if watched is not None else None
        if not on_disk(data):
            return
        for atom in getattr(event, "value", None) or ():
            if hasattr(atom, "new_value"):  # (napari's brush, fill, polygon: a masked atom)
                values = (atom.new_value, atom.old_values)
            elif isinstance(atom, tuple) and len(atom) == 3:  # (data_setitem: indices, before, after)
                values = (atom[2], atom[1])
            else:
                continue
            for v in values:  # (the values before too: an undo writes them back)
                if v is not None and np.size(v):
                    note_ids(data, int(np.max(v)))

    layer.events.paint.connect(painted)
    _WATCHED.add(layer)


def new_masks(shape: tuple[int, ...], dtype: Any, name: str) -> np.ndarray:
    """Zeros of ``shape`` and ``dtype`` for masks named ``name``: in memory when they fit there, else
    in a file (said).

    Raises
    ------
    NoRoomForMasks
        They fit neither in memory nor on the disk (the message says both sizes).
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if fits_in_memory(nbytes):
        return np.zeros(shape, dtype=dtype)
    data = _disk_array(shape, dtype, name)
    _say_on_disk(name, shape, nbytes, data)
    return data


def editable_copy(data: Any, name: str) -> np.ndarray:
    """Labels read lazily from their file (dask) copied, plane by plane, where they can be edited: into
    memory when they fit there, else into a file on disk (not said here: called in a worker thread;
    :func:`say_on_disk` says it). napari's brush wrote into the dask array, each dab replayed at every
    read, so lazily read masks were locked, and opening them in memory was the only remedy.

    Raises
    ------
    NoRoomForMasks
        They fit neither in memory nor on the disk."""
    shape, dtype = tuple(data.shape), np.dtype(data.dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    copy = np.zeros(shape, dtype=dtype) if fits_in_memory(nbytes) else _disk_array(shape, dtype, name)
    top, held = _copy_planes(data, copy)
    note_ids(copy, top)
    if on_disk(copy):
        _HELD[copy._mmap] = held  # (the planes holding someone's labels: no pass over the file to find them)
    return copy


def say_on_disk(layer: Any) -> None:
    """Say that a layer's labels are held on disk (when they are)."""
    data = layer.data
    if on_disk(data):
        _say_on_disk(layer.name, data.shape, data.nbytes, data)


def move_to_disk(layer: Any) -> bool:
    """Hold a masks layer's labels in a file when a run is to fill more of them than the memory free
    takes (said; what it held is copied plane by plane); whether they moved."""
    from ._napari_compat import labels_history_top

    data = layer.data
    if on_disk(data) or not isinstance(data, np.ndarray) or data.ndim < 3:
        return False
    moved = _disk_array(data.shape, data.dtype, layer.name)
    top, _held = _copy_planes(data, moved)
    # (napari keeps the layer's history: an undo brings its ids back)
    note_ids(moved, max(top, labels_history_top(layer)))
    layer.data = moved
    _say_on_disk(layer.name, data.shape, data.nbytes, moved)
    return True


def widened(data: np.ndarray, dtype: Any) -> np.ndarray:
    """``data`` as ``dtype`` (values kept): masks on disk are copied plane by plane into a new file
    (a whole copy in memory is what they are on disk for); others with ``astype``."""
    if not on_disk(data):
        return data.astype(dtype)
    wide = _disk_array(data.shape, dtype, Path(data.filename).stem if data.filename else "masks")
    _copy_planes(data, wide)
    note_ids(wide, top_id(data) or 0)
    return wide


def _copy_planes(source: Any, target: np.ndarray) -> tuple[int, list[tuple[int, ...]]]:
    """Copy the planes of ``source`` (an array, or one read lazily) that hold labels into ``target``
    (zeros of its shape), one at a time; their largest id and the planes holding labels."""
    top, held = 0, []
    for i in np.ndindex(*source.shape[:-2]):
        plane = np.asarray(source[i])
        if plane.any():
            target[i] = plane
            top = max(top, int(plane.max()))
            held.append(tuple(int(k) for k in i))
    return top, held


def _disk_array(shape: tuple[int, ...], dtype: Any, name: str) -> np.memmap:
    folder = masks_dir()
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_left_behind(folder)
        free = shutil.disk_usage(folder).free - _unwritten(folder)  # (this process's other files fill too)
    except OSError as exc:
        where = f"nor in the folder for masks on disk, {folder}, which cannot be used ({exc})"
        raise NoRoomForMasks(f"the masks ({_gb(nbytes)}) fit neither in memory {where}", where) from None
    if nbytes + DISK_MARGIN_BYTES > free:
        where = (f"nor in {folder} ({_gb(max(free, 0))} free; set the environment variable {CACHE_ENV} to a "
                 "folder on a disk with room)")
        raise NoRoomForMasks(f"the masks ({_gb(nbytes)}) fit neither in memory {where}", where)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "masks"
    path = folder / f"{_OWNER}~{uuid.uuid4().hex[:8]}~{safe}{_SUFFIX}"
    # the file made at its size by truncate, not by numpy's "w+" (a byte written at its end: NTFS then
    # writes zeros over the whole file first, in the window's thread); sparse on Linux's and macOS's disks
    with open(path, "xb") as fh:
        fh.truncate(nbytes)
    data = np.memmap(path, dtype=dtype, mode="r+", shape=tuple(shape))
    _TOPS[data._mmap] = [0]
    _LIVE[str(path)] = nbytes
    weakref.finalize(data._mmap, _remove, str(path))  # (the masks dropped, or napari closed)
    log.info("masks %s of %s held on disk in %s", tuple(shape), np.dtype(dtype), path)
    return data


def _say_on_disk(name: str, shape: tuple[int, ...], nbytes: int, data: np.memmap) -> None:
    from ._base import notify_info

    notify_info(f"{name!r} ({' x '.join(str(n) for n in shape)} pixels, {_gb(nbytes)}) does not fit in the memory "
                f"free: held in a file on disk instead ({data.filename}), removed with the layer or when napari "
                "closes. Save the masks (Correct, Save masks) to keep them.")


def _remove(path: str) -> None:
    _LIVE.pop(path, None)
    with contextlib.suppress(OSError):  # (Windows: still mapped somewhere; removed with the next ones)
        os.remove(path)


def _unwritten(folder: Path) -> int:
    """Bytes of this process's masks files in ``folder`` not yet taken on its disk (sparse files)."""
    total = 0
    for path, nbytes in list(_LIVE.items()):
        if Path(path).parent != folder:
            continue
        try:
            total += max(0, nbytes - os.stat(path).st_blocks * 512)
        except AttributeError:  # (Windows: no st_blocks; counted whole)
            total += nbytes
        except OSError:  # (gone)
            pass
    return total


#: Who made a masks file, in its name: the process and the computer ("1234@host"), so that a cache shared
#: between computers (a home folder on a network disk) removes only its own computer's files left behind.
_OWNER = f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9_.-]+', '_', platform.node())[:40] or 'host'}"


def remove_left_behind(folder: Path | None = None) -> None:
    """Remove masks files that napari processes of this computer left behind when they ended (a crash;
    on Windows, files still mapped when napari closed). Called when masks go to disk and as Segment docks."""
    folder = masks_dir() if folder is None else folder
    host = _OWNER.split("@", 1)[1]
    try:
        paths = list(folder.glob(f"*{_SUFFIX}"))
    except OSError:
        return
    for path in paths:
        pid, _, made_on = path.name.split("~", 1)[0].partition("@")
        if made_on == host and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            _remove(str(path))


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB"
