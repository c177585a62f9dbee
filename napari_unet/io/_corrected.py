"""The corrected-slices list of a labels file, kept beside it as ``<labels>.corrected.json``.

Plain JSON, no napari: the labels writer saves it, the reader restores it into the layer's
metadata (key :data:`CORRECTED_KEY`), and the widgets track edits into it
(``napari_unet.widgets._corrections``). A layer saved by the labels writer has this sidecar
(possibly with an empty list); masks written without one (``napari-unet predict``) carry the
:data:`MADE_BY` mark instead. Either tells the reader to open the file as a model's masks with
those slices corrected; masks with neither are someone's own (see :data:`MASKS_KEY`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._atomic import atomic_write

log = logging.getLogger(__name__)

#: Key of the corrected-plane list in a Labels layer's metadata.
CORRECTED_KEY = "napari_unet_corrected"
#: Key, in a Labels layer's metadata, that napari-unet keeps the layer's list of corrected slices:
#: its other labels are a model's (napari-unet made the layer, segmented into it, or read it with
#: its list). Labels without it are someone's own: saved, every slice holding labels is listed.
MASKS_KEY = "napari_unet_masks"
#: Key, in a Labels layer's metadata, saying that it holds 3D objects (ids shared by planes): a plane
#: segmented again in 2D numbers its objects above them (kept in the list beside a saved file: the
#: plane's ids reopened as 1, 2, ... joined nuclei of the planes around it).
OBJECTS_3D_KEY = "napari_unet_objects_3d"
#: Key, in a masks layer's metadata, saying which colour of its RGB image Segment segmented each slice
#: by, where the user chose one (Segment's Colour; a slice not listed: "auto"): a list of [slice index
#: (a list of ints, the layer's stack axes), colour], in the order they were written. Fine-tuning on a
#: slice learns from its colour; kept in the list beside a saved file.
COLOUR_KEY = "napari_unet_colour"
#: Keys, in a masks layer's metadata, of the count of the user's edits of it (brush, eraser, fill,
#: undo, slices marked or unmarked by hand) and of that count when it was last saved: closing the
#: window with edits not saved asks first (see :func:`unsaved_edits`).
EDITS_KEY = "napari_unet_edits"
SAVED_EDITS_KEY = "napari_unet_saved_edits"


def unsaved_edits(metadata: Any) -> bool:
    """Whether a masks layer's metadata says it was edited by the user since it was last saved (or
    opened: a layer read from a file holds no count)."""
    if not isinstance(metadata, dict):
        return False
    return int(metadata.get(EDITS_KEY, 0) or 0) != int(metadata.get(SAVED_EDITS_KEY, 0) or 0)


def mark_saved(metadata: dict, written: dict | None = None, path: Any = None) -> None:
    """Say in a masks layer's ``metadata`` that a file holds its edits up to the count in ``written`` (the
    metadata as it was written: a copy taken when Save was pressed, an edit made since still to save;
    by default ``metadata`` itself); ``path``: that file, as it is now (see :data:`FILE_KEY`)."""
    source = metadata if written is None else written
    if EDITS_KEY in source:
        metadata[SAVED_EDITS_KEY] = source[EDITS_KEY]
    if path is not None:
        metadata[FILE_KEY] = file_state(path)


#: Key, in a masks layer's metadata, of the file it was opened from or saved to last, and how that file
#: and its list were then ({"path", "identity"}): saved there again after another person or program
#: changed it (a colleague's corrected masks unzipped over it), Save masks asks first; they were
#: replaced, saying only "Saved".
FILE_KEY = "napari_unet_file"


def file_state(path: Any) -> dict[str, Any]:
    """What :data:`FILE_KEY` records of the labels file ``path`` and its list now."""
    from napari_unet._atomic import file_identity

    where = Path(str(path)).absolute()
    return {"path": str(where), "identity": [list(file_identity(p) or ()) for p in (where, sidecar_path(where))]}


def changed_on_disk(metadata: Any, path: Any) -> bool:
    """Whether the labels file ``path`` is the one ``metadata`` records (:data:`FILE_KEY`) and it, or its
    list, changed since (a file gone since holds nothing to lose)."""
    stored = metadata.get(FILE_KEY) if isinstance(metadata, dict) else None
    if not isinstance(stored, dict) or stored.get("path") != str(Path(str(path)).absolute()):
        return False
    now = file_state(path)
    return bool(now["identity"][0]) and now["identity"] != stored.get("identity")


#: Key, in a masks layer's metadata, of the model that last segmented into it: {"name": its file's stem,
#: "path": its file, "date": when it was trained, where known (tells it from another computer's model
#: of the same name), "kind": the kind of image it segmented (napari_unet.core.modality: a stack of
#: phase contrast and a DAPI channel is two kinds, each proposed its own model), where told}. Kept in the list beside a saved file: reopened the next day, Segment proposes that
#: model (the user's fine-tuned one) for the image, not the built-in model of its kind.
MODEL_KEY = "napari_unet_model"

#: Key, in a masks layer's metadata, of the object diameter typed in Segment for the run that
#: segmented into it last, as typed ("14", "8 um"); absent when that run estimated it (Auto). Kept in
#: the list beside a saved file: reopened, Segment's field shows it again (a size found by hand on day
#: one is not to be found again on day two).
DIAMETER_KEY = "napari_unet_diameter"

#: Key, in the metadata of masks made from one channel of a multi-channel file (``predict --channel``),
#: of that channel's name as the reader names its layer ("<image> [nuclei]"): reopened, the masks are
#: named "<image> [nuclei] masks", the masks of that layer (they paired with no layer, and Segment made
#: a second masks layer beside them).
CHANNEL_KEY = "napari_unet_channel"


def recorded_colours(metadata: Any) -> list[tuple[tuple[int, ...], int | str]]:
    """The (slice, colour) pairs :data:`COLOUR_KEY` holds in ``metadata`` (a dict; malformed entries
    left out, said in the log), the last written last."""
    stored = metadata.get(COLOUR_KEY) if isinstance(metadata, dict) else None
    if stored is None:
        return []
    pairs: list[tuple[tuple[int, ...], int | str]] = []
    for entry in stored if isinstance(stored, (list, tuple)) else [stored]:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], (list, tuple)) \
            and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in entry[0])
        from napari_unet.core.channels import chosen_colour

        colour = chosen_colour(entry[1]) if ok else None
        if colour is None:
            log.warning("Ignoring a malformed %r entry in layer metadata: %r", COLOUR_KEY, entry)
            continue
        pairs.append((tuple(int(i) for i in entry[0]), colour))
    return pairs


def record_model(metadata: dict, path: Any, date: Any = None, kind: Any = None) -> None:
    """Say in ``metadata`` (a masks layer's) that the model file ``path`` segmented into it last
    (``date``: the model's own, its metadata's "date", when it has one; ``kind``: the kind of image
    it segmented, when told)."""
    if path:
        made = {"name": Path(str(path)).stem, "path": str(Path(str(path)).absolute())}
        for key, value in (("date", date), ("kind", kind)):
            if isinstance(value, str) and value:
                made[key] = value
        metadata[MODEL_KEY] = made


def recorded_model(metadata: Any) -> dict[str, str] | None:
    """The model :data:`MODEL_KEY` records in ``metadata`` ({"name", "path"}, "date" and "kind"
    where recorded), None when none is (or what is there is malformed)."""
    stored = metadata.get(MODEL_KEY) if isinstance(metadata, dict) else None
    if not isinstance(stored, dict) or not all(isinstance(stored.get(k), str) and stored[k] for k in ("name", "path")):
        return None
    return {k: stored[k] for k in ("name", "path", "date", "kind") if isinstance(stored.get(k), str) and stored[k]}


def record_diameter(metadata: dict, typed: str | None) -> None:
    """Say in ``metadata`` (a masks layer's) the object diameter typed for the run that segmented into
    it last (None: that run estimated it, and an earlier run's typed size is forgotten)."""
    if typed:
        metadata[DIAMETER_KEY] = str(typed)
    else:
        metadata.pop(DIAMETER_KEY, None)


def recorded_diameter(metadata: Any) -> str | None:
    """The object diameter :data:`DIAMETER_KEY` records in ``metadata``, as typed; None when none is
    (or what is there is no size: checked again, against the image, when a run is given it)."""
    from napari_unet.core.scale import diameter_word

    stored = metadata.get(DIAMETER_KEY) if isinstance(metadata, dict) else None
    if not isinstance(stored, str) or not 0 < len(stored.strip()) <= 40 or diameter_word(stored) is not None \
            or not any(c.isdigit() for c in stored):
        return None
    return stored.strip()


def recorded_channel(metadata: Any) -> str | None:
    """The channel name :data:`CHANNEL_KEY` records in ``metadata``; None when none is (or it is no name)."""
    stored = metadata.get(CHANNEL_KEY) if isinstance(metadata, dict) else None
    if not isinstance(stored, str) or not 0 < len(stored.strip()) <= 200 or any(c in stored for c in "\n\r"):
        return None
    return stored.strip()


def colours_by_slice(metadata: Any) -> dict[tuple[int, ...], int | str]:
    """The colour each slice was segmented by, where recorded (see :data:`COLOUR_KEY`), read once."""
    return dict(recorded_colours(metadata))


def record_colour(metadata: dict, plane: tuple[int, ...], colour: Any) -> None:
    """Say in ``metadata`` (a layer's) that slice ``plane`` was segmented by ``colour`` (Auto: forgotten).
    Called for every plane a run writes: the entries of other slices are kept as they are (read and
    checked when used), a new list each time (a worker may hold the old)."""
    from napari_unet.core.channels import chosen_colour

    stored = metadata.get(COLOUR_KEY)
    entries = stored if isinstance(stored, list) else []
    key = [int(i) for i in plane]
    kept = [e for e in entries if not (isinstance(e, (list, tuple)) and len(e) == 2 and e[0] == key)]
    if chosen_colour(colour) is not None:
        kept.append([key, chosen_colour(colour)])
    if kept:
        metadata[COLOUR_KEY] = kept
    else:
        metadata.pop(COLOUR_KEY, None)
#: What napari-unet writes into masks files it makes (the TIFF's Software tag, an OME-Zarr
#: attribute): such a file without its list holds a model's masks, none corrected; another tool's
#: masks without a list are someone's own, kept from runs unasked.
MADE_BY = "napari-unet"
#: Suffix of the sidecar file written beside a labels file.
SIDECAR_SUFFIX = ".corrected.json"
SIDECAR_FORMAT = "napari-unet-corrected-slices"
#: The newest version of the sidecar this code reads (2 adds the layer's axis order).
SIDECAR_VERSION = 2

Plane = tuple[int, ...]


#: The most planes a list of corrected slices holds (a 100 000-frame time-lapse fits; a crafted list
#: of millions took a minute and a gigabyte to open).
MAX_LISTED_PLANES = 10**6


def _index(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"A plane index must be a whole number, got {value!r}.")
    if not 0 <= int(value) < 2**62:
        raise ValueError(f"A plane index must be 0 or more, got {int(value)}.")
    return int(value)


def as_plane(plane: Any) -> Plane:
    """A plane index as a tuple of Python ints (accepts ints, lists, tuples, numpy ints; refuses
    fractions, text, booleans and negative numbers with ``ValueError``)."""
    if isinstance(plane, (int, np.integer)) and not isinstance(plane, (bool, np.bool_)):
        return (_index(plane),)
    if isinstance(plane, (str, bytes, dict)):
        raise ValueError(f"A plane index must be a sequence of integers, got {plane!r}.")
    try:
        return tuple(_index(i) for i in plane)
    except TypeError as exc:
        raise ValueError(f"A plane index must be a sequence of integers, got {plane!r}.") from exc


def plane_in(plane: Plane, lead_shape: tuple[int, ...]) -> bool:
    """Whether ``plane`` (indices along the leading axes) is a plane of labels whose leading axes
    are ``lead_shape``."""
    return len(plane) == len(lead_shape) and all(0 <= i < n for i, n in zip(plane, lead_shape, strict=True))


def planes_in_metadata(metadata: dict | None) -> list[Plane]:
    """Sorted, unique planes stored in a layer's metadata (empty when none)."""
    stored = (metadata or {}).get(CORRECTED_KEY) or []
    try:
        return sorted({as_plane(p) for p in stored})
    except ValueError:
        log.warning("Ignoring a malformed %r entry in layer metadata: %r", CORRECTED_KEY, stored)
        return []


def sidecar_path(labels_path: str | os.PathLike) -> Path:
    """``<labels file>.corrected.json`` beside the labels file."""
    path = Path(labels_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def has_sidecar(labels_path: str | os.PathLike) -> bool:
    """Whether a list of corrected slices lies beside ``labels_path`` (False also where its name
    cannot be one: past the file system's length limit, which raised)."""
    try:
        return sidecar_path(labels_path).is_file()
    except OSError:
        return False


def planes_holding_labels(labels: Any, stop: Any = None) -> list[Plane]:
    """The planes (indices along the axes before Y, X) of a labels array that hold any label: the
    slices of labels napari-unet did not make, which are someone's own work. ``stop`` (an Event) set
    meanwhile: the planes found so far (a lazy stack on a slow drive takes seconds to scan)."""
    kept = []
    for idx in np.ndindex(*labels.shape[: labels.ndim - 2]):
        if stop is not None and stop.is_set():
            break
        if np.asarray(labels[idx]).any():
            kept.append(idx)
    return kept


def planes_given(planes: Iterable[Any] | dict | Any) -> list[Plane]:
    """Sorted, unique planes from an iterable of plane indices, a layer metadata dict or a layer."""
    if hasattr(planes, "metadata") and not isinstance(planes, dict):
        planes = planes.metadata
    if isinstance(planes, dict):
        return planes_in_metadata(planes)
    return sorted({as_plane(p) for p in planes})


def planes_along(planes: Iterable[Plane], source: str, target: str) -> list[Plane]:
    """Plane indices along the stack axes ``source`` (one letter each) re-indexed along ``target``:
    an axis of ``source`` that ``target`` lacks must be at 0 (an axis of size 1 a file does not
    keep; a plane elsewhere on it is left out), an axis of ``target`` that ``source`` lacks is at 0.
    Planes with another number of indices than ``source`` has axes are left out. The one mapping
    of the corrected slices between a layer's axis order and the order a file stores (writer,
    reader, training from files)."""
    moved = []
    for plane in planes:
        if len(plane) != len(source):
            continue
        index = dict(zip(source, plane, strict=True))
        if any(index[a] != 0 for a in source if a not in target):
            continue
        moved.append(tuple(int(index.get(a, 0)) for a in target))
    return moved


def _version_known(data: Any) -> bool:
    """Whether a parsed sidecar is of a version this code reads (a plain list is version 1)."""
    version = data.get("version", 1) if isinstance(data, dict) else 1
    return isinstance(version, int) and version <= SIDECAR_VERSION


def corrected_list_text(labels_path: str | os.PathLike, planes: Iterable[Any] | dict | Any,
                        layer_axes: str | None = None, offset: Sequence[float] | None = None,
                        calibration: tuple[Sequence[float], Sequence[str]] | None = None,
                        transform: dict[str, Any] | None = None, objects_3d: bool = False,
                        colours: Any = None, model: Any = None) -> str:
    """The JSON text of the corrected-slices list of ``labels_path`` (see :func:`save_corrected_list`).

    The planes index the file's own stack axes (size-1 ones included). ``layer_axes``: the axes
    of the layer the labels came from, when the file stores them in another order (ImageJ's T, Z)
    or reads back without some (of size 1): the reader puts them back. ``offset``: the layer's
    offset per axis in pixels (its axis order), which a TIFF does not hold, when it has one.
    ``calibration``: the layer's scale and unit names per axis (its axis order), when the file
    cannot say them as they were (a Z spacing with Y, X uncalibrated, an axis of size 1, a bare
    scale without a unit): the reader gives them back. ``transform``: the layer's rotation, shear and
    affine matrix that are not the identity (see :func:`napari_unet.io.write_labels`). ``objects_3d``:
    the labels are 3D objects (see :data:`OBJECTS_3D_KEY`); ``colours``: the colours of the RGB image
    the slices were segmented by, where chosen (a layer's metadata, see :data:`COLOUR_KEY`; its slices
    in the layer's axis order, which the reader gives back); ``model``: the model that segmented into the
    layer last and the object diameter typed for that run (a layer's metadata, see :data:`MODEL_KEY`
    and :data:`DIAMETER_KEY`)."""
    plane_list = planes_given(planes)
    payload = {
        "format": SIDECAR_FORMAT,
        "version": 2 if layer_axes else 1,  # 2: the planes follow the file's axis order, given beside
        "labels_file": Path(labels_path).name,
        "planes": [list(p) for p in plane_list],
    }
    if layer_axes:
        payload["layer_axes"] = layer_axes
    if offset is not None:
        payload["offset_pixels"] = [float(t) for t in offset]
    if calibration is not None:
        payload["layer_scale"] = [float(v) for v in calibration[0]]
        payload["layer_units"] = [str(u) for u in calibration[1]]
    if transform:
        payload["layer_transform"] = transform
    if objects_3d:
        payload["objects_3d"] = True
    pairs = recorded_colours(colours)
    if pairs:
        payload["colours"] = [[list(p), c] for p, c in pairs]
    made_by = recorded_model(model)
    if made_by:
        payload["model"] = made_by
    typed = recorded_diameter(model)
    if typed:
        payload["diameter"] = typed
    channel = recorded_channel(model)
    if channel:
        payload["channel"] = channel
    return json.dumps(payload, indent=1) + "\n"


def save_corrected_list(labels_path: str | os.PathLike, planes: Iterable[Any] | dict | Any) -> Path:
    """Write the corrected planes beside a saved labels file, atomically.

    (The labels writer writes the labels file and this list together, both or neither: see
    :func:`napari_unet.io.write_labels`'s ``corrected``.)

    Parameters
    ----------
    labels_path : path
        The labels file (e.g. ``cells masks.tif``); the list goes to
        ``cells masks.tif.corrected.json``.
    planes : iterable of plane indices, a layer metadata dict, or a Labels layer
        What to store. A dict or a layer is read through ``CORRECTED_KEY``.

    Returns
    -------
    Path
        The sidecar file written.

    Raises
    ------
    OSError
        If the folder cannot be written; an earlier sidecar stays intact.
    """
    target = sidecar_path(labels_path)
    with atomic_write(target, "w") as fh:
        fh.write(corrected_list_text(labels_path, planes))
    return target


@dataclass(frozen=True)
class StoredLayout:
    """What the sidecar of a labels file records of the layer the labels came from (see
    :func:`corrected_list_text`); None for what it does not record (or records unreadably)."""

    axes: str | None = None  # the layer's axes, when they differ from the file's
    offset: tuple[float, ...] | None = None  # per axis in pixels, the layer's axis order
    scale: tuple[float, ...] | None = None  # the layer's own scale and units, when the file
    units: tuple[str, ...] | None = None  # cannot say them as they were
    transform: dict[str, Any] | None = None  # rotate, shear, affine (nested lists) that are not the identity
    objects_3d: bool = False  # 3D objects (see OBJECTS_3D_KEY)
    #: the colours of the RGB image chosen to segment slices by (see COLOUR_KEY): [[slice, colour], ...]
    colours: list | None = None
    #: the model that segmented into the layer last (see MODEL_KEY): {"name", "path"}
    model: dict | None = None
    #: the object diameter typed for that run (see DIAMETER_KEY), as typed
    diameter: str | None = None
    #: the channel of a multi-channel file the masks were made from (see CHANNEL_KEY)
    channel: str | None = None


def _numbers(values: Any, nonzero: bool = False) -> tuple[float, ...] | None:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v != 0 or not nonzero)
            for v in values):
        return None
    return tuple(float(v) for v in values)


def stored_layout(labels_path: str | os.PathLike) -> StoredLayout:
    """What the sidecar of ``labels_path`` records of the layer the labels came from, read once."""
    try:
        data = json.loads(sidecar_path(labels_path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return StoredLayout()
    if not isinstance(data, dict) or not _version_known(data):
        return StoredLayout()  # a newer sidecar is refused whole (see load_corrected_list), not read in part
    axes = data.get("layer_axes")
    if not isinstance(axes, str) or not axes.isalpha():
        axes = None
    scale, units = _numbers(data.get("layer_scale"), nonzero=True), data.get("layer_units")  # (< 0: flipped)
    if (scale is None or not isinstance(units, list) or len(units) != len(scale)
            or not all(isinstance(u, str) and u for u in units)):
        scale, units = None, None
    transform = data.get("layer_transform")
    if not isinstance(transform, dict) or not transform or not all(
            key in transform_identities(2) and _finite_array(value) for key, value in transform.items()):
        transform = None
    colours = [[list(p), c] for p, c in recorded_colours({COLOUR_KEY: data.get("colours")})]
    return StoredLayout(axes, _numbers(data.get("offset_pixels")), scale, tuple(units) if units else None, transform,
                        data.get("objects_3d") is True, colours or None, recorded_model({MODEL_KEY: data.get("model")}),
                        recorded_diameter({DIAMETER_KEY: data.get("diameter")}),
                        recorded_channel({CHANNEL_KEY: data.get("channel")}))


def transform_identities(ndim: int) -> dict[str, np.ndarray]:
    """napari's ``rotate``, ``shear`` and ``affine`` of an untransformed layer of ``ndim`` axes: the
    transforms the list beside a labels file keeps when a layer's differ (their shapes, when read back)."""
    return {"rotate": np.eye(ndim), "shear": np.zeros(ndim * (ndim - 1) // 2), "affine": np.eye(ndim + 1)}


def _finite_array(value: Any) -> bool:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return False
    return array.size > 0 and bool(np.isfinite(array).all())


def load_corrected_list(labels_path: str | os.PathLike) -> list[Plane]:
    """Corrected planes stored beside ``labels_path`` (empty list when there is no sidecar).

    Raises
    ------
    ValueError
        If the sidecar exists but is not a corrected-slices list.
    """
    if not has_sidecar(labels_path):
        return []
    target = sidecar_path(labels_path)
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
        if not _version_known(data):
            raise ValueError(f"it is of version {data.get('version')!r}, written by a newer napari-unet: "
                             "update napari-unet")
        planes = data["planes"] if isinstance(data, dict) else data
        if len(planes) > MAX_LISTED_PLANES:
            raise ValueError(f"it lists {len(planes)} slices, more than {MAX_LISTED_PLANES}")
        return sorted({as_plane(p) for p in planes})
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise ValueError(
            f"{target.name} is not a list of corrected slices ({exc}); delete or fix it."
        ) from exc
