"""The model Segment proposes for an image: nuclei-fluo for fluorescence, nuclei for stained and
bright-field nuclei, cells for phase contrast and DIC (:mod:`napari_unet.core.modality`), always overridable.

The proposal looks at the plane on screen (a 2D plane, subsampled to at most 1024 px a side:
0.1-0.2 s for a plane of 1024 px on one core, on the main thread once the slider has rested). It switches the Model list only while the user has not chosen a
model by hand; the hint line says what it proposed and why. An image whose masks record the model that
made them (:data:`~napari_unet.io._corrected.MODEL_KEY`: masks saved after fine-tuning, reopened the
next day) gets that model proposed, the user's own included, while it is in the Model list.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.modality import KIND_WORDS  # what each kind is called in the hint
from napari_unet.core.preprocess import fill_missing
from napari_unet.core.stack import read_plane

from ._base import current_plane_index, lead_ndim


def shown_plane(viewer: Any, layer: Any, index: tuple[int, ...] | None = None) -> np.ndarray:
    """The 2D plane of ``layer`` on screen (``index``: that plane instead), (H, W) or (H, W, 3), as
    its kind is told: at most about 1024 px a side, every pixel or every second of its central part
    (:func:`~napari_unet.core.modality.sample_plane`; a multiscale layer's full resolution, of which
    only that part is read: its coarsest level showed nuclei as dots)."""
    from napari_unet.core.modality import central_window, sample_plane

    index = current_plane_index(viewer, layer) if index is None else index
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = bool(getattr(layer, "rgb", False))
    plane_shape = tuple(data.shape[data.ndim - (3 if rgb else 2):])
    # a plane in memory is handed whole (its quarters are looked at when its middle is empty); of a lazy
    # one only the middle is read
    plane = read_plane(data, index, None if isinstance(data, np.ndarray) else central_window(plane_shape))
    return fill_missing(sample_plane(plane))[0]  # NaN, the black border of a mosaic: no data


def shown_kind(viewer: Any, layer: Any, index: tuple[int, ...] | None = None) -> str | None:
    """The kind of image (:data:`~napari_unet.core.modality.MODALITIES`) of the plane of ``layer`` on
    screen (``index``: that plane), or None when it is not a plane the kinds are told on."""
    from napari_unet.core.modality import image_modality

    try:
        return image_modality(shown_plane(viewer, layer, index)).kind
    except (ValueError, IndexError, TypeError):
        return None


#: A stack axis this long or shorter may be channels that napari's reader did not name (see channel_axis_by_kind).
MAX_UNNAMED_CHANNELS = 4


def channel_axis_by_kind(viewer: Any, layer: Any) -> tuple[int, list[str]] | None:
    """A stack axis of ``layer`` of 2 to :data:`MAX_UNNAMED_CHANNELS` planes whose planes (the others
    where the sliders stand) are of different kinds, and those kinds: channels of a (T, C, Y, X) file
    that napari's own reader opened without naming its axes (phase contrast and a nuclear stain: a
    whole-stack run segmented both with the phase model). None when no axis is so, and for an RGB
    layer (its colours are its channels: its planes are images, of whatever kind each)."""
    if getattr(layer, "rgb", False):
        return None
    current = current_plane_index(viewer, layer)
    for axis in range(lead_ndim(layer)):
        if not 2 <= layer.data.shape[axis] <= MAX_UNNAMED_CHANNELS:
            continue
        kinds = [shown_kind(viewer, layer, current[:axis] + (i,) + current[axis + 1:])
                 for i in range(layer.data.shape[axis])]
        told = [k for k in kinds if k is not None]
        if len(set(told)) > 1:
            return axis, [KIND_WORDS.get(k, k) for k in kinds if k is not None]
    return None


def proposal_for(kind: str | None, builtin: dict[str, str]) -> tuple[str | None, str]:
    """(path of the proposed built-in model or None, the hint) for an image of ``kind``
    (:func:`shown_kind`; None: nothing to propose).

    ``builtin`` maps built-in model names to their paths.
    """
    from napari_unet.core.modality import MODEL_FOR

    if kind is None:
        return None, ""
    name = MODEL_FOR[kind]
    words = KIND_WORDS[kind]
    if name not in builtin:
        return None, f"Looks like a {words}: no built-in '{name}' model here."
    return builtin[name], f"Proposed '{name}' for this {words} (choose another model if you like)."


def masks_model(viewer: Any, image: Any, choices: list[tuple[str, str]],
                metadata_of: Callable[[str], dict | None] | None = None,
                kind: str | None = None) -> tuple[str | None, str] | None:
    """(the Model list's value of the model that made the masks of ``image``, its name) when those
    masks are in ``viewer`` and record it (:data:`~napari_unet.io._corrected.MODEL_KEY`; the value None
    when no listed model is that file, or has its name and date: renamed, deleted, another computer's
    model of that name); None when they record none, or a model that segmented another ``kind`` of
    image than the plane shown (a (T, C, Y, X) stack of phase contrast and DAPI: the phase
    model is not proposed for the DAPI plane). ``metadata_of``: a model file's metadata (its
    "date"), for a model found by name only."""
    from napari_unet.io._corrected import recorded_model

    from ._masks import masks_of

    made = recorded_model(getattr(masks_of(viewer, image), "metadata", None))
    if made is None or (kind is not None and made.get("kind", kind) != kind):
        return None
    target = Path(made["path"]).resolve()
    listed = next((value for _label, value in choices if Path(value).resolve() == target), None)
    if listed is None:  # (the same name: a models folder moved, the masks brought from another computer)
        listed = next((value for _label, value in choices if Path(value).stem == made["name"]
                       and _same_date(made, value, metadata_of)), None)
    return listed, made["name"]


def _same_date(made: dict[str, str], path: str, metadata_of: Callable[[str], dict | None] | None) -> bool:
    """Whether the model file ``path`` was trained when the masks' record ``made`` says (true when
    either does not say: masks saved before models' dates were recorded)."""
    if "date" not in made or metadata_of is None:
        return True
    date = (metadata_of(path) or {}).get("date")
    return not isinstance(date, str) or date == made["date"]


def builtin_paths(choices: list[tuple[str, str]]) -> dict[str, str]:
    """Built-in model names and paths among the Model list's (label, path) choices."""
    from napari_unet.core.catalog import builtin_models_dir

    folder = builtin_models_dir().resolve()
    return {Path(path).stem: path for _label, path in choices if Path(path).resolve().parent == folder}


class ModelProposal:
    """The hint line under Segment's Model list, and the rule: switch the list to the proposed
    built-in model for each chosen image until the user picks a model (then only say it)."""

    def __init__(self, viewer: Any, image_combo: Any, model_combo: Any, choices: Any,
                 metadata_of: Callable[[str], dict | None] | None = None) -> None:
        from magicgui.widgets import Label

        from ._base import wrap_text

        self.hint = Label(label="", value="")
        wrap_text(self.hint)
        self.user_chose = False
        #: The kind of the chosen image's plane on screen (None: no image, or not told).
        self.kind: str | None = None
        self._viewer, self._images, self._models, self._choices = viewer, image_combo, model_combo, choices
        self._metadata_of = metadata_of  # a model file's metadata (see masks_model)
        self._switching = False

    def model_changed(self, *_args: Any) -> None:
        """Connected to the Model list: a change this class did not make is the user's choice."""
        if not self._switching:
            self.user_chose = True

    def refresh(self, *_args: Any) -> None:
        """Propose a model for the chosen image; switch to it unless the user chose one."""
        image = self._images.value
        self.kind = None if image is None else shown_kind(self._viewer, image)
        choices = self._choices()
        made = None if image is None else masks_model(self._viewer, image, choices, self._metadata_of, self.kind)
        if made is not None and made[0] is not None:
            path, self.hint.value = made[0], (f"Proposed {Path(made[0]).stem!r}: it made this image's masks "
                                              "(choose another model if you like).")
            if self.user_chose and self._models.value and Path(str(self._models.value)) != Path(made[0]):
                self.hint.value = (f"This image's masks were made by {Path(made[0]).stem!r}; "
                                   f"{Path(str(self._models.value)).stem!r} is chosen.")
        else:
            path, self.hint.value = proposal_for(self.kind, builtin_paths(choices))
            if made is not None and any(Path(value).stem == made[1] for _label, value in choices):
                self.hint.value = (f"This image's masks were made by another model named {made[1]!r} (trained "
                                   f"elsewhere, or replaced since): Add model file… to use it. {self.hint.value}")
            elif made is not None:
                self.hint.value = f"This image's masks were made by {made[1]!r}, not in the Model list. {self.hint.value}"
        if path and not self.user_chose and path != self._models.value:
            self._switching = True
            try:
                self._models.value = path
            finally:
                self._switching = False
