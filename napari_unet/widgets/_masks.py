"""The "<image> masks" Labels layer of the Segment widget: its name, creation and corrected slices."""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer

from napari_unet.io._corrected import MASKS_KEY, planes_holding_labels

from ._corrections import CorrectedSlices, format_plane, planes_of_history_item, planes_text
from ._disk_masks import held_planes, new_masks, note_ids, watch_edits, widened
from ._napari_compat import (
    forget_labels_history,
    layers_added_unselected,
    overlays_shown_when_used,
    refresh_labels_region,
    stroke_in_progress,
    unwrap_proxy,
)

if TYPE_CHECKING:
    import napari


MASKS_SUFFIX = " masks"


def masks_layer_name(image_name: str) -> str:
    return f"{image_name}{MASKS_SUFFIX}"


def masks_of(viewer: Any, image: Any) -> Any:
    """The layer named as ``image``'s masks ("<image> masks") in ``viewer``, or None (no image, no
    such layer; a layer of another kind so named is returned: callers that need Labels check)."""
    if image is None:
        return None
    name = masks_layer_name(image.name)
    return viewer.layers[name] if name in viewer.layers else None


def image_name_of_masks(masks_name: str) -> str | None:
    """"cells" for a masks layer named "cells masks"; None for a name that is no such name."""
    return masks_name[: -len(MASKS_SUFFIX)] if masks_name.endswith(MASKS_SUFFIX) else None


def corrected_planes(layer) -> set[tuple[int, ...]]:
    """Plane indices the user corrected in ``layer``; starts tracking the layer's edits."""
    return set(CorrectedSlices.for_layer(layer).planes)


def labels_shape(image: Any) -> tuple[int, ...]:
    """The shape of labels for ``image`` (an RGB image's without its colour axis)."""
    return tuple(image.data.shape[:-1] if image.rgb else image.data.shape)


#: masks layer -> (weak reference to the image layer it was made for, that image's file or None)
_OWNERS: "weakref.WeakKeyDictionary[Any, tuple[Any, str | None]]" = weakref.WeakKeyDictionary()


def _file_of(image: Any) -> str | None:
    path = getattr(getattr(image, "source", None), "path", None)
    return str(Path(path).resolve()) if path else None


def _record_owner(masks: Any, image: Any, viewer: Any = None) -> None:
    """``masks`` hold ``image``'s masks from now on (see :func:`check_masks_of`), and follow its
    renames in ``viewer`` (see :func:`_follow_renames`)."""
    image, masks = unwrap_proxy(image), unwrap_proxy(masks)
    _OWNERS[masks] = (weakref.ref(image), _file_of(image))
    _follow_renames(masks, image, viewer)


#: the masks layer that follows each image's renames (one a image: the last one recorded)
_FOLLOWERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _follow_renames(masks: Any, image: Any, viewer: Any = None) -> None:
    """When ``image`` is renamed, its masks layer "<old name> masks" becomes "<new name> masks": the
    masks are found by their name (Segment writes into them, Fine-tune pairs them with the image),
    and a renamed image otherwise lost them (a new empty masks layer, the corrected slices no
    training examples any more). Masks the user renamed themselves are left as they are; so are masks
    whose new name another layer of ``viewer`` holds (napari named them "B masks [1]", paired with
    nothing, and the next run wrote into the other "B masks"): said."""
    viewer_ref = weakref.ref(unwrap_proxy(viewer)) if viewer is not None else lambda: None
    following = image in _FOLLOWERS
    _FOLLOWERS[image] = weakref.ref(masks)
    if following:
        return
    image_ref = weakref.ref(image)
    last = {"name": image.name}

    def renamed(_event: Any = None) -> None:
        image = image_ref()
        if image is None:
            return
        old, last["name"] = last["name"], image.name
        follower = _FOLLOWERS.get(image)
        masks = follower() if follower is not None else None
        if masks is not None and old != image.name and masks.name == masks_layer_name(old):
            held = viewer_ref()
            if held is not None and masks_layer_name(image.name) in held.layers:
                from ._base import notify_warning

                new = masks_layer_name(image.name)
                notify_warning(f"{masks.name!r} keep their name: another layer is named {new!r} (Segment and "
                               f"Fine-tune take that one for {image.name!r}). Rename or remove it, then rename "
                               f"{masks.name!r} to {new!r}.")
                last["name"] = old  # (their name still follows the image's next name)
                return
            masks.name = masks_layer_name(image.name)

    image.events.name.connect(renamed)


def check_masks_of(viewer: Any, masks: Any, image: Any) -> None:
    """Make sure ``masks`` ("<name> masks", found by name) are ``image``'s: refused when they were
    made for another image of that name that is gone (closed, then another file of the same name
    opened: pos1/img.tif, then pos2/img.tif) or still open under another name. Masks opened from
    a file or made by hand, and an image of the same file opened again, are taken as its own; masks
    of another name are paired with the image by the user's choice, not checked.

    Raises
    ------
    ValueError
        The masks belong to another image.
    """
    masks, image = unwrap_proxy(masks), unwrap_proxy(image)
    if masks.name != masks_layer_name(image.name):
        return
    owner = _OWNERS.get(masks)
    if owner is not None:
        made_for, made_from = owner[0](), owner[1]
        if made_for is image:
            return
        if made_for is not None and any(unwrap_proxy(layer) is made_for for layer in viewer.layers):
            raise ValueError(f"{masks.name!r} holds the masks of the image {made_for.name!r} (renamed since): rename "
                             f"or remove that masks layer to segment or train with {image.name!r}.")
        now_from = _file_of(image)
        if made_from is not None and now_from is not None and made_from != now_from:
            raise ValueError(f"{masks.name!r} holds the masks of another image named {image.name!r} ({made_from}), "
                             f"which was closed: rename or remove that masks layer to use this one ({now_from}).")
    _record_owner(masks, image, viewer)


def masks_layer_for(viewer: Any, image: Any, wide: bool = False) -> "napari.layers.Labels":
    """The "<image> masks" layer, created (zeros, same plane shape) if missing: int32, or uint16 for
    an image read lazily from its file (a large stack: its masks are held whole in memory, and 2 GB of
    planes made 4 GB of int32 masks; a plane's ids start from 1, and a run widens the layer when they
    do not fit) unless ``wide`` (3D objects: a volume's ids pass 65535, and the 16-bit masks made for
    the run were widened at once, both held a moment, and said)."""
    from napari.layers import Labels

    name = masks_layer_name(image.name)
    shape = labels_shape(image)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if not isinstance(layer, Labels) or tuple(layer.data.shape) != tuple(shape):
            raise ValueError(
                f"A layer named {name!r} exists but is not a Labels layer of shape {tuple(shape)}; "
                "rename or remove it."
            )
        taken_before = unwrap_proxy(layer) in _OWNERS
        check_masks_of(viewer, layer, image)
        if not taken_before:
            _keep_labels_of_someone(layer)
        follow_the_images_geometry(layer, image, len(shape))
    else:
        n = len(shape)
        # napari creates the layer, lays out its controls and draws it (compiling shaders) in
        # three later turns of the event loop, not all in this one, and its editing overlays when
        # their tool is first used: shorter pauses of the window instead of one long one (bench_gui.py)
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        layer = Labels(
            new_masks(shape, np.int32 if wide or isinstance(data, np.ndarray) else np.uint16, name),
            name=name,
            scale=image.scale[:n],
            translate=image.translate[:n],
            visible=False,
            **_axes_of(image, n),
            **_transform_of(image, n),
        )
        overlays_shown_when_used(layer)
        with layers_added_unselected(viewer):
            viewer.add_layer(layer)
        _record_owner(layer, image, viewer)
        QTimer.singleShot(30, lambda: _select_then_show(viewer, layer))
    CorrectedSlices.for_layer(layer)  # from now on, brush/fill/erase edits mark slices corrected
    watch_edits(layer)  # (masks on disk: the ids the brush writes, for its next free id)
    layer.metadata[MASKS_KEY] = True  # its list is kept from now on: its other labels are the model's
    return layer


def _keep_labels_of_someone(layer: Any) -> None:
    """A Labels layer named as masks that napari-unet neither made nor saved (labels painted in a new
    layer, brought from another tool, the console): the slices holding labels are someone's own work,
    marked corrected so that no run replaces them unasked (one did, whole). A layer that came with
    its list of corrected slices (made or saved by napari-unet) is left as it says."""
    from ._base import notify_info

    tracker = CorrectedSlices.for_layer(layer)
    data = layer.data
    if tracker.came_with_list or not isinstance(data, np.ndarray):
        return
    known = set(tracker.planes)
    on_file = held_planes(data)  # (labels copied to disk from their file: found then, no pass over it now)
    holding = planes_holding_labels(data) if on_file is None else on_file
    tracker.keep_as_theirs(holding)  # (an undo of a stroke on one leaves it theirs, unless it empties it)
    held = [idx for idx in holding if idx not in known]
    if held:
        tracker.update(held)
        notify_info(f"{layer.name!r} holds labels napari-unet did not make ({planes_text(held)}): kept as your "
                    "corrections (tick 'Overwrite slices I corrected' to segment them anyway; if they are a model's "
                    "masks (napari-unet predict's written before 2026-12-06), unmark them in Fine-tune).")


def ready_for_writing(layer: Any, widen_16_bit: bool = True) -> None:
    """Make sure a run can write into the masks layer, just before it starts: its labels must be in
    memory (a layer read lazily from its file would take nothing, silently), and 8- or 16-bit labels
    (napari's "New labels layer" makes 8-bit ones) become 32-bit, values kept: a model's ids go past
    255 and would wrap around there (objects merged into others or into the background).

    ``widen_16_bit=False`` (runs plane by plane): 16-bit labels stay so until a plane's ids do not fit
    (:func:`write_plane` widens them then): a plane rarely holds 65535 objects, and converting a
    reopened 16-bit stack held the window (1.5 s for 64 x 2048 x 2048).

    Raises
    ------
    ValueError
        The labels are not in memory, or not integers.
    """
    if getattr(layer, "multiscale", False):
        raise ValueError(f"The layer {layer.name!r} holds several resolutions (a pyramid), which cannot be written "
                         "plane by plane: rename or remove it, and segment again into a new masks layer.")
    if not isinstance(layer.data, np.ndarray):  # dask (read lazily), zarr, ...: a plane read is a copy
        raise ValueError(f"The layer {layer.name!r} is read lazily from its file, so nothing can be written into it: "
                         "open it with Load stack (Loading: auto), which copies it where it can be written into, or "
                         "rename or remove it.")
    if not layer.data.flags.writeable:  # (a read-only memory map: writing raised inside the Qt slot, then "Done")
        raise ValueError(f"The labels of {layer.name!r} are read-only (a file mapped read-only), so nothing can be "
                         "written into them: rename or remove the layer, and segment again into a new masks layer.")
    dtype = np.dtype(layer.data.dtype)
    if dtype.kind in "iu" and np.iinfo(dtype).max >= np.iinfo(np.int32).max:
        return
    if dtype.kind not in "iub":
        raise ValueError(f"The layer {layer.name!r} holds {dtype} values, which cannot take the model's ids: "
                         "rename or remove it.")
    if not widen_16_bit and dtype.kind in "iu" and dtype.itemsize == 2:
        return
    _widen(layer)


def _widen(layer: Any, top: int = 0) -> None:
    """The layer's labels made 32-bit (64-bit when ids up to ``top`` do not fit in 32), values kept (said)."""
    from ._base import notify_info

    dtype = np.dtype(layer.data.dtype)
    wide = np.int32 if top <= np.iinfo(np.int32).max else np.int64
    layer.data = widened(layer.data, wide)
    notify_info(f"{layer.name!r} held {dtype} labels: made {np.dtype(wide).itemsize * 8}-bit (values kept), so "
                "that the model's ids fit.")


def make_room_for(layer: Any, top: int) -> bool:
    """Widen the layer's labels (:func:`_widen`) when ids up to ``top`` do not fit their type; whether
    it did (its data is a new array then)."""
    dtype = np.dtype(layer.data.dtype)
    if dtype.kind not in "iu" or top <= np.iinfo(dtype).max:
        return False
    _widen(layer, top)
    return True


def ids_above(labels: np.ndarray, offset: int, dtype: Any) -> np.ndarray:
    """``labels`` (a run's ids from 1) moved above ``offset``, in ``dtype`` (the masks layer's: ids of
    another tool above 2^31 overflowed the run's int32)."""
    dtype = np.dtype(dtype)
    return np.where(labels > 0, labels.astype(dtype) + dtype.type(offset), 0).astype(dtype, copy=False)


def _select_then_show(viewer: Any, layer: Any) -> None:
    """Make the new masks layer the selected one (ready for the brush), as napari does with every
    new layer, unless it was removed meanwhile; show it 50 ms later.

    The second step is timed from the first, not from the layer's creation: when adding the
    layer took longer than the delays, timers started together would both be overdue and run in
    one turn of the event loop, one long pause again."""
    if layer in viewer.layers:
        viewer.layers.selection.active = layer
    QTimer.singleShot(50, lambda: setattr(layer, "visible", True))


def follow_the_images_geometry(layer: Any, image: Any, n: int) -> None:
    """Give the masks layer its image's pixel size, position and units where they changed since it
    was made (a voxel size set after a first run: the masks showed and took corrections in another
    plane than the image shown), and say so."""
    wanted = {"scale": tuple(image.scale[:n]), "translate": tuple(image.translate[:n])}
    units = _axes_of(image, n).get("units")
    if units is not None:
        wanted["units"] = tuple(units)
    changed = [key for key, value in wanted.items() if tuple(getattr(layer, key, value)) != value]
    # a rotation, shear or affine set (or napari's Transform mode used) since: the masks were drawn
    # elsewhere than the cells, and clicks and the brush landed on other cells
    for key, value in _transform_of(image, n).items():
        current = getattr(layer, key, None)
        current = getattr(current, "affine_matrix", current)
        if current is None or np.shape(current) != np.shape(value) or not np.allclose(current, value):
            wanted[key] = value
            changed.append(key)
    if not changed:
        return
    for key in changed:
        setattr(layer, key, wanted[key])
    from ._base import notify_info

    notify_info(f"{layer.name!r} now has the pixel size, position and orientation of {image.name!r} "
                f"({', '.join(changed)} changed), so that they show the same plane.")


def _transform_of(image: Any, n: int) -> dict[str, Any]:
    """The image's rotation, shear and affine, so that the masks are drawn over it (brush and
    clicks land on the cells they show); none when the layers differ in dimensions."""
    if getattr(image, "ndim", None) != n:
        return {}
    return {"rotate": image.rotate, "shear": image.shear, "affine": image.affine.affine_matrix}


def _axes_of(image: Any, n: int) -> dict[str, Any]:
    """What the masks layer takes over from its image's axes: their labels and units (so that
    napari draws both with one calibration, and the labels writer knows a time axis from a z
    axis) and napari-unet's axis letters of the layer, read from the file."""
    out: dict[str, Any] = {}
    for key in ("axis_labels", "units"):
        values = getattr(image, key, None)
        if values is not None and len(values) >= n:
            out[key] = tuple(values)[-n:] if n else ()
    source = (image.metadata or {}).get("napari_unet") if isinstance(image.metadata, dict) else None
    axes = source.get("layer_axes") if isinstance(source, dict) else None
    if isinstance(axes, str) and len(axes) == n:
        out["metadata"] = {"napari_unet": {"layer_axes": axes}}
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def shown_plane_corrected(viewer: Any, image: Any) -> bool:
    """Whether the slice of ``image`` shown now is one the user corrected in "<image> masks"."""
    from ._base import current_plane_index

    masks = masks_of(viewer, image)
    return masks is not None and current_plane_index(viewer, image) in corrected_planes(masks)


def move_past_corrected_slice(viewer: Any, image: Any, planes: list[tuple[int, ...]]) -> str:
    """When the slice shown of ``image`` is one the user corrected, show the next one (in
    ``planes``' order, wrapping) that is not; returns what was done ("" when nothing moved)."""
    from ._base import current_plane_index, show_plane

    if not shown_plane_corrected(viewer, image):
        return ""
    protected = corrected_planes(masks_of(viewer, image))
    current = current_plane_index(viewer, image)
    at = planes.index(current) if current in planes else -1
    following = planes[at + 1:] + planes[:max(at, 0)]
    target = next((p for p in following if p not in protected), None)
    if target is None:
        return ""
    show_plane(viewer, image, target)
    return f"{_sentence(format_plane(current))} is one you corrected: segmenting {format_plane(target)} instead."


def covers_plane(shape: tuple[int, ...], region: tuple[slice, slice]) -> bool:
    """Whether ``region`` (rows, cols) covers a whole plane of ``shape`` (its last two axes)."""
    rows, cols = region
    return (rows.start in (0, None) and cols.start in (0, None)
            and (rows.stop is None or rows.stop >= shape[-2])
            and (cols.stop is None or cols.stop >= shape[-1]))


def _max_outside(plane: np.ndarray, rows: slice, cols: slice) -> int:
    """The highest id of ``plane`` outside the region ``rows, cols``, from the four strips around it
    (no copy of the plane: a whole slide's is a gigabyte)."""
    (top, bottom, _), (left, right, _) = rows.indices(plane.shape[0]), cols.indices(plane.shape[1])
    strips = (plane[:top], plane[bottom:], plane[top:bottom, :left], plane[top:bottom, right:])
    return max((int(strip.max()) for strip in strips if strip.size), default=0)


def write_plane(layer: Any, result: Any, above: int = 0) -> None:
    """Write a :class:`~napari_unet.core.predict.PlaneResult`'s labels into its plane of ``layer``
    (a region's new ids start above the ids outside it; all start above ``above``: the ids of 3D
    objects in the other planes)."""
    plane = layer.data[result.index] if result.index else layer.data
    rows, cols = result.region
    labels = result.labels
    offset = above
    if not covers_plane(plane.shape, result.region):
        offset = max(offset, _max_outside(plane, rows, cols))
    top = (int(labels.max()) if labels.size else 0) + offset
    if make_room_for(layer, top):  # (16-bit masks kept so until now)
        plane = layer.data[result.index] if result.index else layer.data
    if offset:
        labels = ids_above(labels, offset, plane.dtype)
    plane[rows, cols] = labels
    note_ids(layer.data, top)  # (masks on disk: the brush's next free id, see _disk_masks)
    forget_history_of_planes(layer, [result.index])  # Ctrl+Z must not replay edits of the masks replaced
    if covers_plane(plane.shape, result.region):
        CorrectedSlices.for_layer(layer).replaced([tuple(result.index or ())])  # (no edit of the user left in it)
        layer.refresh()
    else:  # (a field of view of a slide: its region only)
        refresh_labels_region(layer, tuple(result.index or ()), rows, cols)


@dataclasses.dataclass
class RunCorrections:
    """What one run of Segment does with the corrected slices of its masks layer. It may replace
    only the slices corrected when it started, and only with the user's consent ('Overwrite
    slices I corrected': ``replaceable``); those it replaces are unmarked (they will hold the
    model's masks, no training example any more: ``replaced``). Slices corrected while it goes on
    are always kept (``meanwhile``)."""

    at_start: set[tuple[int, ...]] = dataclasses.field(default_factory=set)
    replaceable: set[tuple[int, ...]] = dataclasses.field(default_factory=set)
    #: a run the user did not start (the one after fine-tuning): Overwrite is no remedy to offer
    automatic: bool = False
    meanwhile: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    replaced: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    #: corrected slices of which only a part was replaced (the field of view): they stay corrected
    partly: list[tuple[int, ...]] = dataclasses.field(default_factory=list)

    @classmethod
    def start(cls, masks: Any, overwrite: bool, automatic: bool = False) -> "RunCorrections":
        """A run into ``masks`` (None: none yet) starts now, with or without the user's consent."""
        at_start = corrected_planes(masks) if masks is not None else set()
        return cls(at_start, at_start if overwrite else set(), automatic)

    def planes_to_keep(self, layer: Any, planes: list[tuple[int, ...]], whole: bool = True) -> set[tuple[int, ...]]:
        """Before the run writes ``planes`` into the masks ``layer``: those it must leave as they
        are; the corrected ones it may replace are unmarked here, unless it writes only a part of
        them (``whole`` False: the field of view): the rest of such a slice is still the user's
        correction, so it stays corrected (a training example, and kept from later runs)."""
        corrected = corrected_planes(layer)
        keep: set[tuple[int, ...]] = set()
        slices = CorrectedSlices.for_layer(layer)
        # a stroke going on (mouse down) is a correction napari has not said yet: its slice is kept
        stroke = planes_of_history_item(stroke_in_progress(layer), layer.ndim, layer.data.shape)
        for plane in (tuple(p) for p in planes):
            if plane in stroke and plane not in corrected:
                keep.add(plane)
                if plane not in self.meanwhile:
                    self.meanwhile.append(plane)
                continue
            if plane not in corrected:
                continue
            if plane in self.replaceable and not whole:
                if plane not in self.partly:
                    self.partly.append(plane)
                continue
            if plane in self.replaceable:
                slices.unmark(plane, by_user=False)
                if plane not in self.replaced:
                    self.replaced.append(plane)
                continue
            keep.add(plane)
            if plane not in self.at_start and plane not in self.meanwhile:
                self.meanwhile.append(plane)
        return keep

    def report(self) -> None:
        """The run's notes on corrected slices: those it left because the user corrected them
        while it was going, those it replaced with the user's consent (no longer corrected)."""
        from ._base import notify_info, notify_warning

        if self.meanwhile:
            verb = "it" if len(self.meanwhile) == 1 else "them"
            notify_warning(f"Left {planes_text(self.meanwhile)} as you corrected {verb} while the run was going.")
        if self.partly:
            one = len(self.partly) == 1
            notify_info(f"Replaced the part in view of {planes_text(self.partly)}, which you had corrected: "
                        f"the rest of {'it' if one else 'them'} is still yours, so "
                        f"{'it stays' if one else 'they stay'} listed as corrected (the new masks in that "
                        f"part included: check them before fine-tuning).")
        if self.replaced:
            one = len(self.replaced) == 1
            notify_info(f"Replaced {planes_text(self.replaced)}, which you had corrected: "
                        f"{'it is' if one else 'they are'} no longer listed as corrected (not "
                        f"{'a training example' if one else 'training examples'}); correct or mark "
                        f"{'it' if one else 'them'} again to make {'it one' if one else 'them examples'}.")


def forget_history_of_planes(layer: Any, planes: list[tuple[int, ...]]) -> None:
    """Drop the layer's undo/redo steps that edited any of ``planes`` (just rewritten)."""
    from ._corrections import planes_of_history_item

    written = {tuple(p) for p in planes}
    if written:
        forget_labels_history(layer, lambda item: bool(
            written & planes_of_history_item(item, layer.ndim, layer.data.shape)))


def report_empty_planes(empty_planes: list[Any]) -> None:
    """One warning for the planes of a run where nothing was found (constant ones first, then those
    without data, then those of camera noise alone)."""
    from ._base import notify_warning

    constant = [e.index for e in empty_planes if e.constant]
    no_data = [e.index for e in empty_planes if e.no_data and not e.constant]
    noise = [e.index for e in empty_planes if e.noise and not (e.constant or e.no_data)]
    rest = [e for e in empty_planes if not (e.constant or e.noise or e.no_data)]
    others = [e.index for e in rest]
    if constant:
        verb = "has" if len(constant) == 1 else "have"
        notify_warning(f"{_sentence(planes_text(constant))} {verb} a single value everywhere: nothing to "
                       "segment there (masks left empty).")
    if no_data:
        verb = "holds" if len(no_data) == 1 else "hold"
        notify_warning(f"{_sentence(planes_text(no_data))} {verb} no data (NaN, or a black border, everywhere): "
                       "nothing to segment there (masks left empty).")
    if noise:
        verb = "holds" if len(noise) == 1 else "hold"
        notify_warning(f"{_sentence(planes_text(noise))} {verb} camera noise alone (no structure at any "
                       "scale): nothing to segment there (masks left empty).")
    if others:
        where = "the part in view of " if all(e.in_view for e in rest) else ""
        notify_warning(f"No objects found in {where}{planes_text(others)}: try a lower threshold or another "
                       "object diameter; if the model does not know images like these, label a few cells by hand "
                       "(Correct) and Fine-tune it.")
