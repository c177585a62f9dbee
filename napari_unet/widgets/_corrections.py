"""Which 2D planes of a masks Labels layer the user corrected.

A correction of slice 17 of a time-lapse makes slice 17 a training example for fine-tuning,
and the Segment widget must never overwrite it. :class:`CorrectedSlices` attaches to a napari
``Labels`` layer and listens to the layer's own edit events:

- brush, eraser, fill, polygon and ``data_setitem`` all end in one undo-history item, which the
  layer announces with ``layer.events.paint(value=[atoms])``; each atom carries the changed
  region (``slice_key`` of a mask edit, or the index arrays of ``data_setitem``);
- undo and redo emit no event of their own, so the attached layer's ``undo``/``redo`` are
  wrapped (:func:`~._napari_compat.watch_labels_replay`): the history item about to be
  replayed tells which planes change.

One edit changes one plane when it is made on the Y-X slices. An edit that spans several (made
in a view that shows another cut through the stack, axes transposed, or with a 3D brush) marks
them all, so that no run overwrites the user's edit; as each of them becomes a training example
whole, a notification says so once per layer (and how to unmark the ones not checked).

Reading napari's history items and wrapping undo/redo touch napari internals: both live in
:mod:`._napari_compat`, with the other napari-version-sensitive pieces.

A plane is named by its indices along the leading (non-plane) axes: ``(17,)`` in a (T, Y, X)
stack, ``(3, 2)`` in (T, Z, Y, X), ``()`` for a single 2D image. The last two axes are the plane.

The set lives in ``layer.metadata["napari_unet_corrected"]`` as a sorted list of lists of ints
(plain JSON), so it travels with the layer; :func:`save_corrected_list` /
:func:`load_corrected_list` keep it beside a saved labels file as ``<labels>.corrected.json``.

This module has no Qt code; it needs napari only for the layer it is given.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

log = logging.getLogger(__name__)

from napari_unet.io._corrected import (  # noqa: F401  (re-exported for the widgets and tests)
    CORRECTED_KEY,
    EDITS_KEY,
    SIDECAR_SUFFIX,
    Plane,
    as_plane,
    load_corrected_list,
    plane_in,
    planes_in_metadata,
    save_corrected_list,
    sidecar_path,
)

from ._napari_compat import edited_regions, labels_edit_history, unwrap_proxy, watch_labels_replay

#: Planes touched by one edit above this number are not listed one by one (a 3D brush
#: through a huge stack); the edit still marks every plane it touched.
_MAX_PLANES_PER_EDIT = 1_000_000


# ---------------------------------------------------------------------- plain helpers
def planes_of_region(key: Sequence[Any], n_lead: int, shape: Sequence[int]) -> set[Plane]:
    """Planes touched by an edit of ``data[key]``.

    Parameters
    ----------
    key : sequence
        One entry per axis of the data: slices (a mask edit's bounding box) or integer index
        arrays (``data_setitem``'s fancy index).
    n_lead : int
        Number of leading (non-plane) axes: ``data.ndim - 2``.
    shape : sequence of int
        Shape of the data (to resolve open slices).
    """
    if n_lead <= 0:
        return {()}
    lead = list(key[:n_lead])
    if all(isinstance(k, slice) for k in lead):
        ranges = [range(*k.indices(int(s))) for k, s in zip(lead, shape)]
        count = int(np.prod([len(r) for r in ranges]))
        if count > _MAX_PLANES_PER_EDIT:
            log.warning("One edit touched %d planes; listing the first %d.", count, _MAX_PLANES_PER_EDIT)
        return {tuple(p) for p in itertools.islice(itertools.product(*ranges), _MAX_PLANES_PER_EDIT)}
    arrays = []
    for k, s in zip(lead, shape):
        if isinstance(k, slice):  # a mix of slices and arrays: expand the slice
            return _planes_of_mixed(lead, shape)
        arrays.append(np.asarray(k, dtype=np.int64).ravel())
    if not arrays or arrays[0].size == 0:
        return set()
    lead_shape = tuple(int(s) for s in shape[:n_lead])
    try:  # one number per plane: a 1-D unique (25x faster than unique rows on whole-plane edits)
        flat = np.unique(np.ravel_multi_index(tuple(arrays), lead_shape))
    except ValueError:  # an index outside the shape (an edit of data since replaced): as it says
        stacked = np.unique(np.stack(arrays, axis=1), axis=0)
        return {tuple(int(v) for v in row) for row in stacked}
    return {tuple(int(v) for v in index) for index in zip(*np.unravel_index(flat, lead_shape))}


def _planes_of_mixed(lead: list[Any], shape: Sequence[int]) -> set[Plane]:
    options = []
    for k, s in zip(lead, shape):
        if isinstance(k, slice):
            options.append(list(range(*k.indices(int(s)))))
        else:
            options.append(sorted({int(v) for v in np.asarray(k).ravel()}))
    return {tuple(p) for p in itertools.product(*options)}


def planes_of_history_item(item: Iterable[Any], ndim: int, shape: Sequence[int]) -> set[Plane]:
    """Planes changed by one napari Labels undo-history item (a list of atoms).

    The atoms are read by :func:`~._napari_compat.edited_regions` (their form is napari's own).
    """
    n_lead = ndim - 2
    planes: set[Plane] = set()
    for key in edited_regions(item):
        if len(key) != ndim:  # an edit made before the data changed its number of axes
            continue
        planes |= planes_of_region(key, n_lead, shape)
    return planes


def yx_box(key: Sequence[Any], shape: Sequence[int]) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): the rows and columns an edit of ``data[key]`` spans in its planes (None: none)."""
    box: list[int] = []
    for k, s in zip(key[-2:], shape[-2:], strict=True):
        if isinstance(k, slice):
            start, stop, _step = k.indices(int(s))
        else:
            a = np.asarray(k).ravel()
            if not a.size:
                return None
            start, stop = int(a.min()), int(a.max()) + 1
        box += [start, stop]
    return (box[0], box[1], box[2], box[3]) if box[0] < box[1] and box[2] < box[3] else None


# ---------------------------------------------------------------------- sidecar file
# ---------------------------------------------------------------------- the tracker
_TRACKERS: "weakref.WeakKeyDictionary[Any, CorrectedSlices]" = weakref.WeakKeyDictionary()


class CorrectedSlices:
    """The set of corrected planes of one Labels layer, kept up to date from its edits.

    Use :meth:`for_layer` to get the one tracker of a layer (widgets share it). The set is
    stored in ``layer.metadata[CORRECTED_KEY]`` (the source of truth: a reader that fills
    the metadata, or the Segment widget reading it, see the same list).

    Attributes
    ----------
    changed : psygnal.Signal
        Emitted (no arguments) whenever the set changes.
    """

    changed = Signal()

    def __init__(self, layer: Any) -> None:
        if getattr(layer, "ndim", 0) < 2:
            raise ValueError("Corrected slices need a Labels layer with at least 2 dimensions.")
        self._layer_ref = weakref.ref(layer)
        self._said_spanning = False
        self._attached = False
        self._unwatch_replay: Callable[[], None] | None = None
        #: slices corrected only by edits the layer can still undo (not before them, nor marked by hand):
        #: when the last of those edits is undone, the slice is the model's again (see _before_replay)
        self._by_edit: set[Plane] = set()
        #: edits made and not undone, by slice (never lowered by napari dropping old steps, or a run dropping
        #: steps that touched a slice it replaced: their effect is still in the slice)
        self._live: dict[Plane, int] = {}
        #: the rows and columns the user's edits of this session span, by slice (see edited_box)
        self._boxes: dict[Plane, tuple[int, int, int, int]] = {}
        #: slices holding someone's own labels (see keep_as_theirs)
        self._theirs: set[Plane] = set()
        #: edits, undos and redos of each slice in this session, never lowered (see touches_of)
        self._touches: dict[Plane, int] = {}
        #: during an undo or redo: (slices to unmark once replayed, the brush held a new id, slices replayed)
        self._replaying: tuple[set[Plane], bool, set[Plane]] | None = None
        #: the layer came with a list of corrected slices (made or saved by napari-unet): its other labels
        #: are the model's; without one, labels in it are someone's own (see _masks.masks_layer_for)
        self.came_with_list = CORRECTED_KEY in (layer.metadata or {})
        # normalise whatever is stored (lists from a reader, tuples, ...); slices the layer does not have
        # (a list of another shape of the masks) are dropped: they would name a row as a slice
        stored = planes_in_metadata(layer.metadata)
        kept = [p for p in stored if self._exists(p)]
        if len(kept) != len(stored):
            log.warning("%s: %d stored corrected slice(s) do not fit its shape %s and were dropped.",
                        layer.name, len(stored) - len(kept), tuple(layer.data.shape))
        self._write(kept)
        self._mark_earlier_edits(layer)
        self.attach()

    def _mark_earlier_edits(self, layer: Any) -> None:
        """The slices the user edited before any widget watched the layer (brush strokes in a layer
        painted by hand, in plain napari, before the plugin's docks were opened): the edits napari
        can still undo tell them."""
        for item in labels_edit_history(layer):
            planes = {p for p in planes_of_history_item(item, layer.ndim, layer.data.shape) if self._exists(p)}
            if planes:
                self._grow_boxes(item)
                self._edited()  # (unsaved: closing napari asks, as for edits made with a dock open)
                self._by_edit |= planes - set(self.planes)
                self._count(planes, 1)
                self._record(planes)  # (an edit across several slices is said, as when it is made)

    # ---------------------------------------------------------------- creation
    @classmethod
    def for_layer(cls, layer: Any) -> "CorrectedSlices":
        """The tracker of ``layer``, created and attached on first use."""
        layer = unwrap_proxy(layer)  # napari hands plugins PublicOnlyProxy objects: track the layer itself
        tracker = _TRACKERS.get(layer)
        if tracker is None:
            tracker = cls(layer)
            _TRACKERS[layer] = tracker
        elif not tracker._attached:
            tracker.attach()
        return tracker

    @classmethod
    def existing(cls, layer: Any) -> "CorrectedSlices | None":
        """The tracker of ``layer`` when it has one (none is made)."""
        return _TRACKERS.get(unwrap_proxy(layer))

    @property
    def layer(self) -> Any:
        layer = self._layer_ref()
        if layer is None:
            raise RuntimeError("The Labels layer of these corrected slices no longer exists.")
        return layer

    @property
    def n_lead(self) -> int:
        """Number of leading (non-plane) axes of the layer."""
        return self.layer.ndim - 2

    # ---------------------------------------------------------------- listening
    def attach(self) -> None:
        """Listen to the layer's edits (paint event; undo/redo wrapped)."""
        if self._attached:
            return
        layer = self.layer
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data_replaced)
        tracker_ref = weakref.ref(self)  # the layer's undo/redo wrappers must not keep the tracker alive

        def before_replay(item: list[Any] | None, undo: bool) -> None:
            tracker = tracker_ref()
            if tracker is not None:
                tracker._before_replay(item, undo)

        def after_replay(undo: bool) -> None:
            tracker = tracker_ref()
            if tracker is not None:
                tracker._after_replay(undo)

        self._unwatch_replay = watch_labels_replay(layer, before_replay, after_replay)
        self._attached = True

    def detach(self) -> None:
        """Stop listening (the stored list stays in the layer's metadata)."""
        if not self._attached:
            return
        layer = self._layer_ref()
        if layer is not None:
            layer.events.paint.disconnect(self._on_paint)
            layer.events.data.disconnect(self._on_data_replaced)
        if self._unwatch_replay is not None:
            self._unwatch_replay()
            self._unwatch_replay = None
        self._attached = False

    def _edited(self) -> None:
        """One more edit by the user, not saved yet (see :data:`EDITS_KEY`)."""
        metadata = self.layer.metadata
        metadata[EDITS_KEY] = int(metadata.get(EDITS_KEY, 0) or 0) + 1

    def _on_paint(self, event: Any) -> None:
        layer = self.layer
        self._edited()
        planes = planes_of_history_item(getattr(event, "value", None), layer.ndim, layer.data.shape)
        self._grow_boxes(getattr(event, "value", None))
        self._touch(planes)
        self._by_edit |= planes - set(self.planes)
        self._count(planes, 1)
        self._record(planes)

    def _grow_boxes(self, item: Iterable[Any] | None) -> None:
        layer = self.layer
        shape = layer.data.shape
        for key in edited_regions(item):
            if len(key) != layer.ndim or (box := yx_box(key, shape)) is None:
                continue
            for plane in planes_of_region(key, layer.ndim - 2, shape):
                old = self._boxes.get(plane)
                self._boxes[plane] = box if old is None else (
                    min(old[0], box[0]), max(old[1], box[1]), min(old[2], box[2]), max(old[3], box[3]))

    def edited_box(self, plane: Any) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) spanned by the user's edits of ``plane`` in this session, when the rest of it
        is a model's masks (corrected only by those edits); None otherwise: labels of the user's own,
        marked right by hand, corrected in an earlier session."""
        plane = as_plane(plane)
        return self._boxes.get(plane) if plane in self._by_edit else None

    def _touch(self, planes: Iterable[Plane]) -> None:
        for p in planes:
            self._touches[p] = self._touches.get(p, 0) + 1

    def _count(self, planes: set[Plane], step: int) -> None:
        for p in planes:
            self._live[p] = max(0, self._live.get(p, 0) + step)

    def _before_replay(self, item: list[Any] | None, undo: bool) -> None:
        """An undo or redo is about to replay ``item``: a redo edits its slices again (marked); an undo
        marks those that keep edits not undone (counted here: napari drops old steps, and a run the steps
        of a slice it replaced, while their edits stay), and unmarks, once replayed, those corrected only by
        edits of which this was the last (a stroke then Ctrl+Z left the slice the model's, listed as
        corrected: "Nothing to segment", and the model's output learnt as the truth); slices corrected
        before their edits (marked by hand, a list from a file) stay as they are."""
        layer = self.layer
        self._replaying = (set(), self._brush_holds_new_id(layer), set())
        if not item:
            return
        self._edited()
        planes = planes_of_history_item(item, layer.ndim, layer.data.shape)
        self._touch(planes)
        self._replaying[2].update(planes)
        if undo:
            self._count(planes, -1)
            self._replaying[0].update(p for p in planes if p in self._by_edit and not self._live.get(p))
            planes = {p for p in planes if self._live.get(p)}  # (still edited)
        else:  # a redo: an edit again
            self._by_edit |= planes - set(self.planes)
            self._count(planes, 1)
        self._record(planes)

    def _after_replay(self, undo: bool) -> None:
        """Once an undo or redo is replayed: the slices it left the model's are unmarked; the brush's new id,
        when the replay brought back an object of that id (a deleted object, New object, then Ctrl+Z: one
        id, two cells), becomes the next free one."""
        unmark, fresh, replayed = self._replaying or (set(), False, set())
        self._replaying = None
        _show_replayed_plane(self.layer, replayed, undo)
        if undo:  # (someone's slices an undo left with no labels: theirs were all painted in this session)
            data = self.layer.data
            emptied = {p for p in replayed & self._theirs if not np.any(data[p] if p else data)}
            self._theirs -= emptied
            unmark = unmark | emptied
        if undo and unmark:
            self._by_edit -= unmark
            current = set(self.planes)
            if current & unmark:
                self._write(current - unmark)
                self.changed.emit()
        layer = self.layer
        if fresh and not self._brush_holds_new_id(layer):
            from ._object_tools import select_next_free_label

            select_next_free_label(layer)

    @staticmethod
    def _brush_holds_new_id(layer: Any) -> bool:
        """Whether the layer's brush label is an id no object of the layer has (labels in memory)."""
        label = int(getattr(layer, "selected_label", 0) or 0)
        if label <= 0 or not isinstance(layer.data, np.ndarray) or not layer.data.size:
            return False
        from ._disk_masks import top_id

        top = top_id(layer.data)  # (masks on disk: no pass over their file)
        return label > (int(layer.data.max()) if top is None else top)

    def _record(self, planes: set[Plane]) -> None:
        """Mark the planes one edit changed; one across several planes is said once (see the module)."""
        self.update(planes)
        if len(planes) > 1 and not self._said_spanning:
            self._said_spanning = True
            from ._base import notify_warning

            notify_warning(f"An edit across {len(planes)} slices (a view of another cut through the stack, or a "
                           "3D brush) marked them all as corrected: they are kept from re-segmentation, and "
                           "fine-tuning learns each whole Y-X slice as correct. Unmark those you did not check "
                           "(Fine-tune, corrected slices).")

    def _on_data_replaced(self, event: Any = None) -> None:
        """``layer.data = new`` of another shape: drop planes that no longer exist."""
        layer = self.layer
        if layer.ndim < 2:
            return
        kept = [p for p in self.planes if self._exists(p)]
        if kept != self.planes:
            self._write(kept)
            self.changed.emit()

    # ---------------------------------------------------------------- the set
    @property
    def planes(self) -> list[Plane]:
        """Corrected planes, sorted."""
        return planes_in_metadata(self.layer.metadata)

    def _write(self, planes: Iterable[Plane]) -> None:
        self.layer.metadata[CORRECTED_KEY] = [list(p) for p in sorted(set(planes))]

    def _exists(self, plane: Plane) -> bool:
        """Whether the layer has the plane ``plane`` (indices along its leading axes)."""
        return plane_in(plane, tuple(self.layer.data.shape[: self.n_lead]))

    def _check(self, plane: Any) -> Plane:
        plane = as_plane(plane)
        layer = self.layer
        shape = layer.data.shape[: self.n_lead]
        if not self._exists(plane):
            raise ValueError(
                f"Slice {plane} does not exist in {layer.name!r} (leading axes of size {tuple(shape)})."
            )
        return plane

    def update(self, planes: Iterable[Any]) -> bool:
        """Mark several planes; returns True if the set changed."""
        new = {self._check(p) for p in planes}
        current = set(self.planes)
        if new <= current:
            return False
        self._write(current | new)
        self.changed.emit()
        return True

    def mark(self, plane: Any) -> bool:
        """Mark one plane as corrected (e.g. "this slice is right as it is")."""
        self._by_edit.discard(as_plane(plane))  # (the user's word: an undo leaves it corrected)
        changed = self.update([plane])
        if changed:
            self._edited()
        return changed

    def unmark(self, plane: Any, by_user: bool = True) -> bool:
        """Remove one plane from the set; returns True if it was there (``by_user``: the user's choice,
        an edit to save; not a run replacing the slice)."""
        plane = as_plane(plane)
        self._by_edit.discard(plane)
        current = set(self.planes)
        if plane not in current:
            return False
        if by_user:
            self._edited()
        current.discard(plane)
        self._write(current)
        self.changed.emit()
        return True

    def replaced(self, planes: Iterable[Any]) -> None:
        """``planes`` were written whole by a run (their undo steps dropped): no edit of the user is left
        in them, so an edit made later and undone leaves them the model's again (it stayed listed as
        corrected: "Nothing to segment", and the model's output learnt as the truth)."""
        for plane in planes:
            plane = as_plane(plane)
            self._live.pop(plane, None)
            self._by_edit.discard(plane)
            self._boxes.pop(plane, None)

    def keep_as_theirs(self, planes: Iterable[Any]) -> None:
        """``planes`` hold someone's own labels: undoing edits on them leaves them corrected (one stroke,
        then Ctrl+Z, unmarked a slice of hand-made labels, and a Whole-stack run replaced it), unless the
        undo leaves one with no labels at all (all of them were painted in this session: empty, it was
        listed as corrected, learnt as holding no cells; see :meth:`_after_replay`)."""
        planes = {as_plane(p) for p in planes}
        self._by_edit -= planes
        self._theirs |= planes

    def clear(self) -> None:
        if self.planes:
            self._write([])
            self.changed.emit()

    def __contains__(self, plane: Any) -> bool:
        try:
            return as_plane(plane) in set(self.planes)
        except ValueError:
            return False

    def __iter__(self) -> Iterator[Plane]:
        return iter(self.planes)

    def __len__(self) -> int:
        return len(self.planes)

    def __repr__(self) -> str:
        layer = self._layer_ref()
        name = getattr(layer, "name", "?")
        return f"CorrectedSlices({name!r}, {self.planes})"

    # ---------------------------------------------------------------- files
    def save(self, labels_path: str | os.PathLike) -> Path:
        """Write the list beside a saved labels file (see :func:`save_corrected_list`)."""
        return save_corrected_list(labels_path, self.planes)

    def load(self, labels_path: str | os.PathLike) -> list[Plane]:
        """Add the planes stored beside ``labels_path`` (planes outside the layer are ignored)."""
        shape = self.layer.data.shape[: self.n_lead]
        found = [
            p for p in load_corrected_list(labels_path)
            if len(p) == len(shape) and all(0 <= i < s for i, s in zip(p, shape))
        ]
        self.update(found)
        return found


def touches_of(layer: Any, planes: Iterable[Any]) -> int:
    """How many edits, undos and redos of ``planes`` of a labels layer the plugin watched in this session
    (0 where it watches none)."""
    tracker = CorrectedSlices.existing(layer)
    if tracker is None:
        return 0
    return sum(tracker._touches.get(as_plane(p), 0) for p in planes)


def edits_of(layer: Any) -> int:
    """How many edits (strokes, fills, undos, redos) the user made in a labels layer napari-unet watches
    (:data:`~napari_unet.io._corrected.EDITS_KEY`: napari's undo and redo emit no event)."""
    metadata = getattr(layer, "metadata", None)
    return int((metadata or {}).get(EDITS_KEY, 0) or 0)


def _show_replayed_plane(layer: Any, planes: set[Plane], undo: bool) -> None:
    """An undo or redo replayed an edit of one slice while a viewer showed another (napari keeps one
    history for the whole stack): the viewer moves to that slice and says so (Ctrl+Z on slice 3 had
    silently erased a stroke on slice 9)."""
    if len(planes) != 1:
        return
    (plane,) = planes
    from ._base import current_plane_index, notify_info, show_plane
    from ._napari_compat import open_viewers

    for viewer in open_viewers():
        if layer not in [unwrap_proxy(other) for other in viewer.layers] or viewer.dims.ndisplay != 2:
            continue
        try:
            if current_plane_index(viewer, layer) == plane:
                continue
            show_plane(viewer, layer, plane)
        except (ValueError, IndexError):
            continue
        # (Ctrl+Z right after a run: the user meant the run, which Ctrl+Z does not undo)
        notify_info(f"{'Undid' if undo else 'Redid'} an edit in {format_plane(plane)} of {layer.name!r}, not the "
                    "slice shown: it is shown now" + (" (Ctrl+Shift+Z brings it back; Segment's runs are not undone "
                                                      "by Ctrl+Z)." if undo else "."))


def format_plane(plane: Plane) -> str:
    """Human-readable name of a plane: "slice 17", "slice (3, 2)", "the image"."""
    if not plane:
        return "the image"
    if len(plane) == 1:
        return f"slice {plane[0]}"
    return f"slice {tuple(plane)}"


def planes_text(planes: Sequence[Plane], most: int = 5) -> str:
    """"slice 2, slice 5", at most ``most`` named (then " …")."""
    return ", ".join(format_plane(p) for p in planes[:most]) + (" …" if len(planes) > most else "")
