"""The Segment widget's "3D objects" controls and worker body.

A z-stack can be segmented into 3D objects (core's :func:`~napari_unet.core.volume.iter_segment_volume`):
one id per nucleus over all the planes it spans. The Z axis comes from the layer's axis labels
(the reader names them from the file), else the user picks it; the voxel size from the layer's
scale (else isotropic voxels are assumed, and a notification says so). Other stack axes (time)
stay apart: each of their indices is one volume.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, LineEdit

from napari_unet.io._corrected import OBJECTS_3D_KEY

from ._base import full_resolution, lead_ndim
from ._corrections import CorrectedSlices
from ._disk_masks import note_ids
from ._masks import forget_history_of_planes, ids_above, make_room_for

__all__ = ["ThreeDControls", "VolumeResult", "segment_volumes", "write_volume"]


#: Stack axes named so hold channels.
CHANNEL_LABELS = frozenset({"c", "ch", "channel", "channels"})
#: Stack axes named so are never depth: time points and channels stay apart.
NOT_DEPTH_LABELS = frozenset({"t", "time"}) | CHANNEL_LABELS


def _layer_axes(layer: Any) -> str | None:
    """napari-unet's axis letters of the layer ("TZYX"), read from the file, when it has them."""
    axes = ((getattr(layer, "metadata", None) or {}).get("napari_unet") or {}).get("layer_axes")
    return axes if isinstance(axes, str) and len(axes) == layer.ndim else None


def channel_axis_of(layer: Any) -> int | None:
    """The stack axis that the layer names a channel axis (its axis labels, or its axis letters from
    the file), None when none does: the Segment widget's Channel axis, preselected."""
    labels = [str(a).lower() for a in (getattr(layer, "axis_labels", None) or ())]
    letters = _layer_axes(layer)
    return next((i for i in range(lead_ndim(layer)) if (i < len(labels) and labels[i] in CHANNEL_LABELS)
                 or (letters is not None and letters[i] == "C")), None)


def depth_candidates(layer: Any) -> list[int]:
    """The stack axes that may be Z: all but those the layer names time or channel (its axis
    labels, or its axis letters from the file)."""
    labels = [str(a).lower() for a in (getattr(layer, "axis_labels", None) or ())]
    letters = _layer_axes(layer)
    return [i for i in range(lead_ndim(layer))
            if not (i < len(labels) and labels[i] in NOT_DEPTH_LABELS)
            and not (letters is not None and letters[i] in "TC")]


def z_axis_of(layer: Any) -> int | None:
    """The index of the layer's Z axis among its stack axes, when its axis labels say (else None)."""
    n_lead = lead_ndim(layer)
    labels = [str(a).lower() for a in (getattr(layer, "axis_labels", None) or ())][:n_lead]
    if "z" in labels:
        return labels.index("z")
    axes = _layer_axes(layer)
    if axes is not None and "Z" in axes[:n_lead]:
        return axes.index("Z")
    return None


def _unnamed_depth(layer: Any, candidates: list[int]) -> int:
    """The likeliest Z axis of a layer that names none: the last candidate with more than
    :data:`~napari_unet.io._axes.SHORT_AXIS` entries (a stack of (Z, C, Y, X) with two channels
    keeps its channels apart), else the last candidate."""
    from napari_unet.io._axes import SHORT_AXIS

    long = [i for i in candidates if layer.data.shape[i] > SHORT_AXIS]
    return (long or candidates)[-1]


class ThreeDControls:
    """"3D objects" check box, "Z axis" choice and "Voxel size" field (shown for images with stack
    axes); ``on_scale(layer)`` is called when the field has changed the layer's scale."""

    def __init__(self, image_getter: Any, on_scale: Any = None) -> None:
        self._image = image_getter
        self._on_scale = on_scale
        self._voxel_shown = ""  # what the field showed: left as it is, the scale is not written again
        self.enabled = CheckBox(
            text="3D objects", value=False,
            tooltip="Join the planes of a z-stack into 3D objects (one id per cell over the planes it spans). "
                    "Time points stay apart. Uses the layer's scale as the voxel size.",
        )
        self.z_axis = ComboBox(label="Z axis", choices=self._choices, visible=False,
                               tooltip="The stack axis that is depth (z).")
        # (the 3D notes ask for a voxel size: napari has no control for a layer's scale)
        self.voxel = LineEdit(
            label="Voxel size (z, y, x)", visible=False,
            tooltip="The step between the planes and the pixel size, in the image's unit (um when it has one), "
                    "e.g. '2, 0.5, 0.5'; or the z step alone in pixels ('4': planes 4 pixels apart). It sets the "
                    "image layer's scale, which 3D objects use (planes farther apart than the pixels need it).",
        )
        self.voxel.native.setPlaceholderText("z step, pixel size: e.g. 2, 0.5, 0.5")
        self.available = False  # the image shown is grey and has a stack axis that may be depth
        self._shown: Any = None  # the layer the choices were made for (the object behind any proxy)
        self.enabled.changed.connect(self._on_toggled)
        self.z_axis.changed.connect(lambda *_: self._show_voxel())
        self.voxel.native.editingFinished.connect(self._apply_voxel)

    @property
    def widgets(self) -> list[Any]:
        return [self.enabled, self.z_axis, self.voxel]

    def _show_voxel(self) -> None:
        """The voxel size field shows the layer's scale along (Z, Y, X) (empty when uncalibrated)."""
        layer = self._image()
        if layer is None or not self.available or self.z_axis.value is None:
            self.voxel.value = ""
            return
        steps = [abs(float(layer.scale[a])) for a in (int(self.z_axis.value), layer.ndim - 2, layer.ndim - 1)]
        self.voxel.value = self._voxel_shown = ("" if all(v == 1.0 for v in steps) and not _voxel_typed(layer)
                                                else ", ".join(f"{v:.10g}" for v in steps))

    def _apply_voxel(self) -> None:
        """Set the layer's scale from the field (a one-line notification when it cannot be read)."""
        layer = self._image()
        if layer is None or not self.available or self.z_axis.value is None:
            return
        text = self.voxel.value.strip()
        if text == self._voxel_shown:  # (focus left the field: nothing typed, nothing rounded written back)
            return
        try:
            steps = parse_voxel_size(text, (float(abs(layer.scale[-2])), float(abs(layer.scale[-1]))))
        except ValueError as exc:
            from ._base import notify_error

            notify_error("Voxel size", exc)
            return
        if steps is None:  # (emptied: "1, 1, 1" typed before is forgotten)
            if isinstance(layer.metadata, dict) and layer.metadata.pop(VOXEL_GIVEN_KEY, None):
                self._show_voxel()
            return
        if isinstance(layer.metadata, dict):  # ("1, 1, 1": an isotropic stack said so, not an uncalibrated one)
            layer.metadata[VOXEL_GIVEN_KEY] = True
        z = int(self.z_axis.value)
        scale = list(layer.scale)
        for axis, value in zip((z, layer.ndim - 2, layer.ndim - 1), steps, strict=True):
            scale[axis] = value if float(scale[axis]) >= 0 else -value  # (a flipped axis stays flipped)
        units = list(getattr(layer, "units", None) or [])
        if len(units) == layer.ndim and str(units[z]) == "pixel" and str(units[-1]) != "pixel":
            units[z] = units[-1]  # (a file calibrated in y, x only: the z step typed is in their unit)
            layer.units = units
        if tuple(map(float, scale)) != tuple(map(float, layer.scale)):
            layer.scale = scale
        self._show_voxel()
        if self._on_scale is not None:
            self._on_scale(layer)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layer = self._image()
        if layer is None or getattr(layer, "rgb", False):
            return []
        labels = list(getattr(layer, "axis_labels", None) or [])
        return [(f"axis {i} ({labels[i] if i < len(labels) else '?'}, size {layer.data.shape[i]})", i)
                for i in depth_candidates(layer)]

    def refresh(self) -> None:
        """Offer the option only for grey images with a stack axis that may be depth; for a new
        image, pick the Z axis the layer names (else the last candidate). The user's choice stays
        while the image stays (layers added, removed or renamed call this too)."""
        from ._napari_compat import unwrap_proxy

        layer = self._image()
        chosen = self.z_axis.value
        choices = [value for _label, value in self._choices()]
        usable = layer is not None and not getattr(layer, "rgb", False) and layer.ndim > 2 and bool(choices)
        self.available = usable
        self.enabled.visible = usable
        if not usable:
            self.enabled.value = False
        same_image = layer is not None and unwrap_proxy(layer) is self._shown
        if not same_image:  # another image: 3D is asked for again (a time-lapse is no z-stack)
            self.enabled.value = False
        self._shown = unwrap_proxy(layer) if layer is not None else None
        self.z_axis.reset_choices()
        if usable:
            found = z_axis_of(layer)
            if same_image and chosen in choices:
                value = chosen
            else:
                value = found if found in choices else _unnamed_depth(layer, choices)
            self.z_axis.value = value
        self.z_axis.visible = self.voxel.visible = bool(self.enabled.value and usable)
        self._show_voxel()

    def _on_toggled(self, *_args: Any) -> None:
        self.z_axis.visible = self.voxel.visible = bool(self.enabled.value)
        self._show_voxel()

    @property
    def active(self) -> bool:
        return bool(self.enabled.value and self.available)


def parse_voxel_size(text: str, pixel: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float, float] | None:
    """(dz, dy, dx) from "2, 0.5, 0.5" (or spaces between), or from a z step alone in pixels ("4":
    4 pixel widths, the pixel size ``pixel`` (dy, dx) kept); None for an empty field."""
    parts = [p for p in text.replace(",", " ").replace(";", " ").split() if p]
    if not parts:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"give three numbers (z step, pixel height, pixel width), e.g. '2, 0.5, 0.5', or the z "
                         f"step alone in pixels; got {text!r}") from None
    if len(values) not in (1, 3) or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"give three positive numbers (z step, pixel height, pixel width), e.g. '2, 0.5, 0.5', or "
                         f"the z step alone in pixels; got {text!r}")
    if len(values) == 1:
        return (values[0] * pixel[1], pixel[0], pixel[1])
    return (values[0], values[1], values[2])


#: Key, in an image layer's metadata, saying that the user typed its voxel size (Segment's Voxel size):
#: a scale of all ones is then an isotropic stack's, not a missing calibration.
VOXEL_GIVEN_KEY = "napari_unet_voxel_given"


def voxel_size(layer: Any, z_axis: int) -> tuple[float, float, float] | None:
    """(dz, dy, dx) from the layer's scale: in micrometres when its units are lengths (nm, um, ...,
    one unit per axis), else as they are; None when it holds no calibration (all ones, no units, and
    no voxel size typed: :data:`VOXEL_GIVEN_KEY`) or only some of the three axes have a length."""
    axes = (z_axis, layer.ndim - 2, layer.ndim - 1)
    scale = [abs(float(layer.scale[a])) for a in axes]  # (flipped axes have negative scales)
    from napari_unet.io._units import in_unit

    units = getattr(layer, "units", None)
    micrometres = [in_unit(s, units[a]) for s, a in zip(scale, axes)] if units else [None]
    if all(v is not None for v in micrometres):
        return (micrometres[0], micrometres[1], micrometres[2])
    if any(v is not None for v in micrometres):
        # some axes in a length, the others in pixels (a file calibrated in x and y with no z step, as
        # ImageJ writes a step of 1): the step between the planes is not known, as the CLI reads it
        return None
    return None if all(s == 1.0 for s in scale) and not _voxel_typed(layer) else (scale[0], scale[1], scale[2])


def _voxel_typed(layer: Any) -> bool:
    """Whether the user typed the layer's voxel size (see :data:`VOXEL_GIVEN_KEY`)."""
    metadata = getattr(layer, "metadata", None)
    return isinstance(metadata, dict) and bool(metadata.get(VOXEL_GIVEN_KEY))


def volume_indices(shape: tuple[int, ...], z_axis: int, current: tuple[int, ...], whole_stack: bool,
                   channel_axis: int | None) -> list[tuple[Any, ...]]:
    """Indices (along the stack axes, ``slice(None)`` at Z) of the volumes to segment: the one
    shown, or every one of the stack (the channel shown kept)."""
    import itertools

    ranges: list[Any] = []
    for axis, size in enumerate(shape):
        if axis == z_axis:
            ranges.append([slice(None)])
        elif whole_stack and axis != channel_axis:
            ranges.append(range(size))
        else:
            ranges.append([current[axis]])
    return [tuple(i) for i in itertools.product(*ranges)]


@dataclasses.dataclass(frozen=True)
class VolumeResult:
    """Yielded by :func:`segment_volumes` when a volume is done."""

    index: tuple[Any, ...]  # along the stack axes, slice(None) at Z
    labels: np.ndarray  # (Z, Y, X) int32, ids unique in the volume


def segment_volumes(model_path: str, data: Any, volumes: list[tuple[Any, ...]], *, spacing: Any,
                    threshold: float | None, min_size: int | None, diameter: float | None, model_cache: dict | None = None,
                    device: str | None = None) -> Generator[Any, None, None]:
    """Worker body: load the model, then core's 3D path on each volume (Progress, VolumeNote and
    one :class:`VolumeResult` per volume)."""
    from napari_unet.core.events import Progress
    from napari_unet.core.volume import iter_segment_volume

    from ._segment_job import _load_model_cached

    yield Progress(0, 1, message="Loading the model")
    model = _load_model_cached(model_cache if model_cache is not None else {}, model_path, device)
    start = time.perf_counter()
    per_volume = 1000  # each volume's own fraction, in thousandths of the run (a bar that restarted per volume)
    for k, index in enumerate(volumes):
        gen = iter_segment_volume(model, data[index], spacing=spacing, diameter=diameter, threshold=threshold,
                                  min_size=min_size)
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    yield VolumeResult(index, stop.value)
                    break
                if isinstance(event, Progress) and len(volumes) > 1:  # the whole run's bar and time left
                    event = dataclasses.replace(
                        event, done=k * per_volume + round(per_volume * min(event.fraction, 1.0)),
                        total=per_volume * len(volumes), plane=k, elapsed=time.perf_counter() - start,
                        message=f"volume {k + 1}/{len(volumes)}: {event.message}")
                yield event
        finally:
            gen.close()


def volume_planes(result: VolumeResult) -> list[tuple[int, ...]]:
    """The planes of the masks layer that a volume's labels go to, in Z order."""
    z_axis = next(i for i, value in enumerate(result.index) if isinstance(value, slice))
    return [tuple(z if i == z_axis else i_ for i, i_ in enumerate(result.index)) for z in range(result.labels.shape[0])]


def write_volume(layer: Any, result: VolumeResult, protected: set[tuple[int, ...]]) -> int:
    """Write a volume's labels into the masks layer, leaving the planes the user corrected as they
    are (new ids start above theirs). Returns how many corrected planes were kept. The Z axis is
    the one the run segmented along (``slice(None)`` in the result's index), whatever the Z axis
    control says now."""
    labels = np.asarray(result.labels)
    planes = volume_planes(result)
    kept = [k for k, plane in enumerate(planes) if plane in protected]
    if kept:
        users = {k: np.asarray(layer.data[planes[k]]) for k in kept}
        top = max(int(users[k].max()) for k in kept)
        make_room_for(layer, top + (int(labels.max()) if labels.size else 0))
        # a new object that is one of the user's on a kept plane takes its id: it went on above and below
        # with another, a nucleus cut in three at each corrected plane (3D AP 0.78 -> 0.58 for one brush dab)
        adopted = adopted_ids([(labels[k], users[k]) for k in kept])
        run_ids, labels = labels, ids_above(labels, top, layer.data.dtype)
        if adopted:  # (the run's ids are 1..n: a table of them)
            table = np.zeros(int(run_ids.max()) + 1, labels.dtype)
            table[list(adopted)] = list(adopted.values())
            labels = np.where(table[run_ids] > 0, table[run_ids], labels)
    for k, plane in enumerate(planes):
        if k not in kept:
            layer.data[plane] = labels[k]
    note_ids(layer.data, int(labels.max()) if labels.size else 0)  # (masks on disk: the brush's next free id)
    replaced = [p for k, p in enumerate(planes) if k not in kept]
    forget_history_of_planes(layer, replaced)  # see write_plane
    CorrectedSlices.for_layer(layer).replaced(replaced)
    layer.refresh()
    return len(kept)


def adopted_ids(pairs: list[tuple[np.ndarray, np.ndarray]], min_iou: float = 0.5) -> dict[int, int]:
    """{new id: the user's id} for the objects of a volume that are one of the user's on a plane they
    corrected: ``pairs`` of (the volume's labels there, the user's) planes; IoU above ``min_iou``
    (one match a plane at most, each way), the best of the planes where several match; each
    user's id is taken by one object at most (two new objects are not merged)."""
    best: dict[int, tuple[float, int]] = {}
    for new_plane, user_plane in pairs:
        new_plane, user_plane = new_plane.ravel(), user_plane.ravel()
        news, new_area = np.unique(new_plane[new_plane > 0], return_counts=True)
        users, user_area = np.unique(user_plane[user_plane > 0], return_counts=True)
        both = (new_plane > 0) & (user_plane > 0)
        # (the user's ids by their rank: ids of 2^63 or more in uint64 masks did not fit the pairs' int64)
        met, rank = np.unique(user_plane[both], return_inverse=True)
        shared, counts = np.unique(np.stack([new_plane[both].astype(np.int64), rank.astype(np.int64)]), axis=1,
                                   return_counts=True)
        if not counts.size:
            continue
        user_ids = met[shared[1]]
        a = new_area[np.searchsorted(news, shared[0])]
        b = user_area[np.searchsorted(users, user_ids)]
        iou = counts / (a + b - counts)
        kept = iou > min_iou
        for new, user, value in zip(shared[0][kept], user_ids[kept], iou[kept], strict=True):
            if value > best.get(int(new), (0.0, 0))[0]:
                best[int(new)] = (float(value), int(user))
    adopted: dict[int, int] = {}
    taken: set[int] = set()
    for new, (_iou, user) in sorted(best.items(), key=lambda item: -item[1][0]):
        if user not in taken:
            adopted[new] = user
            taken.add(user)
    return adopted


def plan_3d_run(widget: Any, image: Any, diameter: float | None) -> tuple[Any, str]:
    """The worker body and status text of a 3D run of the Segment widget (``(None, "")`` and a
    notification when there is nothing to run). The widget's kept 2D probabilities of the masks
    are forgotten when the first volume is written (:func:`write_volume_result`)."""
    from ._base import current_plane_index, notify_error
    from .segment import SCOPE_STACK

    z_axis = widget._three_d.z_axis.value
    if z_axis is None or image.data.shape[z_axis] < 2:
        size = 1 if z_axis is None else image.data.shape[z_axis]
        message = (f"3D objects need a Z axis of more than one plane (this one has {size}); "
                   "untick '3D objects' to segment the planes.")
        notify_error("Segment", message)
        widget._status.value = f"Not started: {message}"
        return None, ""
    if z_axis == widget._channel_axis.value:
        message = "The Z axis cannot also be the channel axis: choose another one."
        notify_error("Segment", message)
        widget._status.value = f"Not started: {message}"
        return None, ""
    n_lead = lead_ndim(image)
    current = current_plane_index(widget._viewer, image, strict=widget._scope.value != SCOPE_STACK,
                                  free_axes=(int(z_axis),))  # (the whole volume, wherever its Z slider is)
    volumes = volume_indices(tuple(image.data.shape[:n_lead]), z_axis, current,
                             widget._scope.value == SCOPE_STACK, widget._channel_axis.value)
    threshold, min_size = widget._postprocessing_given()
    generator = segment_volumes(
        widget._model_combo.value, full_resolution(image), volumes, spacing=voxel_size(image, z_axis),
        threshold=threshold, min_size=min_size, diameter=diameter,
        model_cache=widget._model_cache,
    )
    what = f"{len(volumes)} volumes" if len(volumes) > 1 else "the volume"
    return generator, f"Segmenting {what} into 3D objects"


def write_volume_result(widget: Any, result: VolumeResult) -> None:
    """The Segment widget got a finished volume: into its masks layer, corrected planes kept."""
    from ._base import notify_warning

    masks = widget._running_masks()
    if masks is None:
        return  # the user removed the masks layer meanwhile
    # 3D objects: not re-thresholded plane by plane from kept results (said when the first volume is
    # written, not when the run starts: a run cancelled or failed before it leaves the 2D results usable)
    widget._kept.made_3d(masks)
    masks.metadata[OBJECTS_3D_KEY] = True  # (saved with the masks: a 2D run after they are reopened numbers above)
    from .segment import record_made_by

    record_made_by(widget, masks)  # (reopened, the masks propose their model, and the diameter typed)
    corrections = widget._run_corrections
    protected = corrections.planes_to_keep(masks, volume_planes(result))  # (those replaced are unmarked)
    # (slices corrected while the run went on are reported when it ends)
    if write_volume(masks, result, protected) and protected - set(corrections.meanwhile):
        notify_warning("Slices you corrected were left as they are (an object found across one goes on with your id "
                       "for it above and below)" + (
            "." if corrections.automatic else "; tick 'Overwrite slices I corrected' to replace them."))
    if not result.labels.any():  # (said of 2D planes; a 3D run ended "Done" with empty masks)
        others = tuple(i for i in result.index if not isinstance(i, slice))
        notify_warning(f"No 3D objects found{' in the volume at ' + str(others[0] if len(others) == 1 else others) if others else ''}:"
                       " try a lower threshold or Min. size, or another object diameter.")
