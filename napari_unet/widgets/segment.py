"""The Segment dock widget: run the U-Net on the current slice, the visible field of
view or the whole stack, in a thread worker, into "<image> masks".

The network runs in :func:`napari_unet.core.predict` generators inside a napari thread
worker; results come back plane by plane through ``yielded`` and are written into the
Labels layer on the main thread. Probability maps of the last run are kept, so the
threshold and minimum size re-apply without running the network again. Slices the user
corrected (see ``_corrections.CorrectedSlices``) are skipped unless the user ticks
"Overwrite slices I corrected".
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from napari_unet.io._corrected import OBJECTS_3D_KEY

from . import _heap
from ._base import (
    FixedRadioButtons,
    ask_before_closing_with_unsaved_masks,
    current_plane_index,
    device_words_at_once,
    disconnect_all,
    format_seconds,
    full_resolution,
    gpu_hint,
    hand_over,
    lead_ndim,
    notify_error,
    notify_info,
    notify_warning,
    one_line,
    qt_alive,
    scroll_when_short,
    show_when_known,
    shows_yx_planes,
    start_background,
    start_worker,
    tab_with_plugin_docks,
    torch_imported,
    visible_region,
    warm_up_in_background,
    when_undocked,
    wrap_text,
)
from ._corrections import format_plane, planes_text
from ._diameter import DiameterControls
from ._disk_masks import (
    NoRoomForMasks,
    fits_in_memory,
    move_to_disk,
    on_disk,
    remove_left_behind,
    room_to_write,
    top_id,
)
from ._kept import KeptResults
from ._masks import (
    RunCorrections,
    corrected_planes,
    covers_plane,
    labels_shape,
    masks_layer_for,
    masks_layer_name,
    masks_of,
    move_past_corrected_slice,
    ready_for_writing,
    report_empty_planes,
    shown_plane_corrected,
    write_plane,
)
from ._napari_compat import unwrap_proxy
from ._object_tools import select_next_free_label_after_run
from ._proposal import KIND_WORDS, ModelProposal
from ._segment3d import ThreeDControls, VolumeResult, channel_axis_of, plan_3d_run, write_volume_result
from ._segment_job import EmptyPlane, segment_planes

if TYPE_CHECKING:
    from napari_unet.core.predict import PlaneResult

log = logging.getLogger(__name__)

SCOPE_SLICE = "Current slice"
SCOPE_VIEW = "Visible field of view"
SCOPE_STACK = "Whole stack"
NO_CHANNEL_AXIS = "none"
#: Segment's Colour (shown for RGB images): what of the colours the model segments, as ``colour`` of
#: core's ``iter_planes`` (a merge of fluorescence channels: the cells' colour rather than the nuclei's;
#: "auto" takes the most nuclei-like one of a merge, stained tissue's mean, an IHC image without its DAB)
COLOUR_CHOICES = [("Auto", "auto"), ("Mean of the colours", "mean"), ("Red", 0), ("Green", 1), ("Blue", 2),
                  ("Without the brown DAB (IHC)", "without DAB")]
#: ``kind`` of :meth:`SegmentWidget._apply_model_postprocessing` when the proposal's look at the plane decides.
_PROPOSED = object()
#: The proposal looks at the plane shown once the dims slider has rested this long (milliseconds).
SLIDER_REST_MS = 300
#: Seconds between two updates of the progress bar and the status line during a run: each repaints
#: the window, which in the 3D view draws the volume again (127 updates of a whole stack took 4.5 s
#: of its 12 s under Xvfb's software OpenGL, with pauses of the window of 2.5-5 s).
PROGRESS_INTERVAL = 0.2
#: Probability maps kept for re-thresholding (float16), at most this many bytes.
PROBABILITY_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class _Resumable:
    """A whole-stack run that was cancelled: its image and masks, what it was given (model file and
    its version, Threshold, Min. size, Colour, diameter, Channel axis, slices) and the slices it
    finished. The next whole-stack run given the same goes on from there (a cancel at frame 300 of
    500 redid the 300), at the object size and scale it used (``size``: the ones it estimated, when
    the diameter is Auto; the frames after 300 were sized on frame 300 again, at another scale than
    those before)."""

    image: Any  # weakref.ref of the layers
    masks: Any
    given: tuple
    done: frozenset
    size: Any = None  # core.scale.MeasuredSize of its finished slices (Auto: the estimate and its scale)

    def left_of(self, image: Any, masks: Any, given: tuple, planes: list[tuple[int, ...]]) -> list[tuple[int, ...]] | None:
        """``planes`` less those this run finished, when a run of ``image`` into ``masks`` is given the
        same; None when it is another run."""
        if self.image() is not unwrap_proxy(image) or self.masks() is not unwrap_proxy(masks) or self.given != given:
            return None
        return [p for p in planes if p not in self.done]


#: The setting that lists the model files added by hand (Add model file…), the last added first.
ADDED_MODELS_SETTING = "added_model_files"
#: ... at most this many.
MAX_ADDED_MODELS = 20


def _added_models() -> list[str]:
    """The model files added by hand in earlier sessions that are still there (a colleague's model,
    forgotten with the window: the masks it made said it was not in the Model list)."""
    from napari_unet.io._settings import get_setting

    stored = get_setting(ADDED_MODELS_SETTING, [])
    return [p for p in stored if isinstance(p, str) and Path(p).exists()] if isinstance(stored, list) else []


def _remember_added_model(path: str) -> None:
    from napari_unet.io._settings import get_setting, update_settings

    stored = get_setting(ADDED_MODELS_SETTING, [])
    earlier = [p for p in stored if isinstance(p, str) and p != path] if isinstance(stored, list) else []
    update_settings(**{ADDED_MODELS_SETTING: [path, *earlier][:MAX_ADDED_MODELS]})


def record_made_by(widget: Any, masks: Any) -> None:
    """Say in ``masks``' metadata what the run of ``widget`` (a SegmentWidget) going on segments with:
    its model (file, date, the kind of image) and the object diameter typed for it (2D and 3D runs)."""
    from napari_unet.io._corrected import record_diameter, record_model

    date = (widget._model_metadata(widget._run_model) or {}).get("date")
    record_model(masks.metadata, widget._run_model, date, widget._run_kind)
    record_diameter(masks.metadata, widget._sizing.run_typed)


def _remove_killed_runs_files() -> None:
    """What napari processes that ended left, removed as Segment docks: masks files (a crash's; Windows'
    at close); 3D probabilities (gigabytes, often in a /tmp held in memory), not only by the next 3D run
    large enough to need a file; hidden copies of models whose save was interrupted, beside the models
    saved (see remove_abandoned_in)."""
    import tempfile

    from napari_unet._atomic import remove_abandoned_in
    from napari_unet.core.catalog import user_models_dir
    from napari_unet.core.volume import _remove_left_behind

    remove_left_behind()
    _remove_left_behind(tempfile.gettempdir())
    remove_abandoned_in(user_models_dir())


def _file_version(path: Any) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return None


def _masks_fit(image: Any, masks: Any, n_planes: int) -> None:
    """Hold the masks layer's labels on disk when the planes a run writes into them do not fit in the
    memory free (it filled them plane by plane, and the system killed napari: the corrections lost).

    Raises
    ------
    ValueError
        They fit neither in memory nor on the disk (said with the ways that work)."""
    data = masks.data
    if n_planes <= 1 or on_disk(data) or not isinstance(data, np.ndarray):
        return
    if fits_in_memory(n_planes * int(np.prod(data.shape[-2:])) * data.dtype.itemsize):
        return
    try:
        move_to_disk(masks)
    except NoRoomForMasks as exc:
        raise ValueError(_too_large_for_memory(image, data.shape, exc.where)) from None


def _too_large_for_memory(image: Any, shape: tuple[int, ...], where: str | None = None) -> str:
    """Why a run cannot hold its masks, with the ways that work (``where``: the disk's part of it,
    :attr:`NoRoomForMasks.where`)."""
    source = (getattr(image, "source", None) and getattr(image.source, "path", None)) or f"<{image.name} file>"
    meta = image.metadata.get("napari_unet") if isinstance(getattr(image, "metadata", None), dict) else None
    series = meta.get("series") if isinstance(meta, dict) else None
    more = f" --series {series}" if isinstance(series, int) and series > 0 else ""  # (another image of the file)
    return (f"the masks of {' x '.join(str(n) for n in shape)} pixels do not fit in memory"
            f"{f', {where}' if where else ''}: segment the current slice or a field of view here, or the whole "
            f"stack into an OME-Zarr file with `napari-unet predict {source}{more} --out FOLDER --dask` (block by "
            "block, in any memory).")


class SegmentWidget(Container):
    """Dock widget "Segment": pick image, model and scope; Segment / Cancel."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self._ids_above: int | None = None  # (see _start)
        self._run_model: Any = None  # the model path of the run going on
        self._run_kind: str | None = None  # the kind of image it was started on (see record_model)
        self._label_at_start = 0  # the brush's label of the masks when the run started
        self._run_corrections = RunCorrections()  # what the running job does with corrected slices
        self._model_cache: dict = {}
        self._extra_models: dict[str, str] = {}
        for added in _added_models():  # (files added by hand in earlier sessions: a colleague's model)
            self._list_extra(added)
        self._kept = KeptResults(PROBABILITY_CACHE_BYTES)  # probabilities etc. of each masks layer's planes
        self._run_started = 0.0
        self._progress_shown = 0.0  # when the progress bar last changed (perf_counter)
        # a progress update that came too soon after the one shown: shown when the interval is over (the
        # steps after a plane's last tile came a few ms after it, and the status kept the tile's words)
        self._progress_pending: Any = None
        from qtpy.QtCore import QTimer

        self._progress_timer = QTimer(self.native)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.timeout.connect(self._show_pending_progress)
        self._cancelled = False
        self._failed = False
        self._resumable: _Resumable | None = None  # the whole-stack run cancelled last (see _Resumable)
        self._run_stack: tuple[tuple, frozenset] | None = None  # a whole-stack run's (given, slices done before)
        self._run_written: set[tuple[int, ...]] = set()  # the slices it finished
        self._run_size: Any = None  # the object size and scale its finished slices were segmented at
        self._new_masks: Any = None  # the masks layer the running job made (None: it was there before)
        self._run_layers: tuple[Any, ...] = ()  # the image and masks layers of the running job
        self._abandoned = ""  # why the running job was given up ("" while it is not)
        self._rethreshold_pending = False  # Threshold / Min. size moved during a run: apply them after it
        self._undocked = False  # its dock was closed (napari keeps the widget, hidden)
        self._last_masks: Any = None  # the masks layer last segmented into (the object behind any proxy)
        self._last_image: Any = None  # a weak reference to the image of the last run
        self._empty_planes: list[EmptyPlane] = []  # planes of this run where nothing was found
        self._notes_said: set[str] = set()  # the notes of this run already shown
        self._volumes_written: int | None = None  # the volumes a 3D run wrote (None: a run of planes)
        #: the images whose unknown voxel size was said (once an image: it was said at each run)
        self._spacing_asked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._rethresholding = False  # the job running applies a new threshold (no network run)
        self._after_cancel = ""  # the status of a cancelled run, kept while its re-threshold follows
        self.last_run_seconds: float | None = None
        self._run_colour: Any = "auto"  # Colour of the run going on (or the last)
        self._run_automatic = False  # the run going on is no run of the user's (the one after a fine-tuning)
        self._new_model_after_run: tuple[Any, Any] | None = None  # (model path, image) to segment with next

        self._image_combo = ComboBox(label="Image", choices=self._image_choices, nullable=False,
                                     tooltip="The image layer to segment; its masks go to the Labels layer '<image> masks'.")
        self._channel_axis = ComboBox(
            label="Channel axis",
            choices=self._channel_axis_choices,
            tooltip="Axis holding channels: the whole-stack run keeps it at the channel shown now.",
        )
        self._colour = ComboBox(
            label="Colour", choices=COLOUR_CHOICES, value="auto", visible=False,
            tooltip="What of the RGB image the model segments. Auto: the most nuclei-like colour of merged "
                    "fluorescence channels, the mean of the colours of stained tissue, an immunohistochemistry "
                    "image without its brown DAB. Choose a colour to segment what it shows (the cells' colour of a "
                    "merge, say); fine-tuning on these masks then learns from that colour too, and the model it "
                    "makes segments that colour under Auto. (A model that takes three colours gets them as they are "
                    "under Auto and Mean, one colour three times under Red, Green or Blue.)")
        self._model_combo = ComboBox(label="Model", choices=self._model_choices,
                                     tooltip="The network that segments: a built-in model (proposed for the kind of "
                                             "image), one of yours (fine-tuned), or a file added below.")
        self._add_model_button = PushButton(
            text="Add model file…",
            tooltip="Add a model someone gave you to the Model list: a napari-unet model (.pt) or a "
                    "BioImage.IO Model Zoo package (.zip or rdf.yaml).")
        self._postprocessing_kind: str | None = None  # the kind whose setting the controls show
        self._postprocessing_applied: dict | None = None
        self._metadata_cache: dict[tuple[str, int], dict] = {}  # (model path, mtime) -> its metadata
        self._metadata_wait: Any = None  # a timer while the models' metadata wait for torch (see _model_metadata)
        self._metadata_wait_since = 0.0
        #: images whose stack axes were looked at for channels of different kinds (see _channels_by_kind)
        self._kinds_looked_at: weakref.WeakSet[Any] = weakref.WeakSet()
        self._run_given: tuple[float | None, int | None] = (None, None)  # what the last run was given
        self._proposal = ModelProposal(viewer, self._image_combo, self._model_combo, self._model_choices,
                                       self._model_metadata)
        self._model_hint = self._proposal.hint
        self._scope = FixedRadioButtons(label="Segment", choices=[SCOPE_SLICE, SCOPE_VIEW, SCOPE_STACK],
                                        value=SCOPE_SLICE,
                                        tooltip="What to segment: the slice the sliders show, only the part of it "
                                                "on screen (fast on a large image), or every slice of the stack.")
        self._threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.05, value=0.5,
                                      tooltip="Probability above which a pixel belongs to a cell.")
        from napari_unet.core.instances import DEFAULT_MIN_SIZE  # not at the top: no torch on import

        self._min_size = SpinBox(label="Min. size (px)", min=0, max=100_000, value=DEFAULT_MIN_SIZE,
                                 tooltip="Objects smaller than this are removed (pixels at the model's scale).")
        self._sizing = DiameterControls()
        self._three_d = ThreeDControls(lambda: self._image_combo.value, on_scale=self._masks_follow_image)
        self._diameter, self._diameter_used = self._sizing.field, self._sizing.used
        self._overwrite = CheckBox(text="Overwrite slices I corrected", value=False,
                                   tooltip="Off: slices you corrected (listed in Fine-tune) are never replaced by a "
                                           "run. On: the next run replaces them too (it unticks once that run starts: a later run "
                                           "asks again).")
        self._run_button = PushButton(
            text="Segment", tooltip="Segment what 'Segment' above asks for into the '<image> masks' labels layer "
                                    "(slices you corrected are kept unless you tick Overwrite).")
        self._cancel_button = PushButton(
            text="Cancel", enabled=False,
            tooltip="Stop the run: slices finished so far keep their new masks, the others stay as they were.")
        self._progress = ProgressBar(label="Progress", min=0, max=100, value=0, visible=False)
        self._status = Label(label="Status", value="")
        self._device_label = Label(label="Device", value="")
        wrap_text(self._status, self._diameter_used, self._device_label)
        self.extend([
            self._image_combo, self._channel_axis, self._colour, self._model_combo, self._model_hint, self._add_model_button,
            self._scope, *self._three_d.widgets, *self._sizing.widgets,
            self._threshold, self._min_size, self._overwrite,
            self._run_button, self._cancel_button, self._progress, self._status, self._device_label,
        ])

        self._run_button.changed.connect(self.run)
        self._cancel_button.changed.connect(self.cancel)
        self._add_model_button.changed.connect(self._ask_model_file)
        self._sizing.from_label_button.changed.connect(self.diameter_from_selected_label)
        self._image_combo.changed.connect(self._channel_axis_of_image)
        self._image_combo.changed.connect(self._colour_of_image)
        self._image_combo.changed.connect(self._diameter_of_image)
        self._image_combo.changed.connect(lambda *_: self._three_d.refresh())
        self._image_combo.changed.connect(self._proposal.refresh)
        self._image_combo.changed.connect(self._on_image_kind)  # after the proposal: it tells the kind
        self._model_combo.changed.connect(self._proposal.model_changed)
        self._threshold.changed.connect(self._rethreshold)
        self._min_size.changed.connect(self._rethreshold)
        self._model_combo.changed.connect(self._on_model_changed)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        viewer.layers.events.renamed.connect(self.reset_choices)  # the lists show the new name
        viewer.layers.events.inserted.connect(self._on_masks_arrived)
        viewer.layers.events.renamed.connect(self._on_masks_arrived)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.events.moved.connect(self.reset_choices)
        # the plane shown decides the proposal too: a (C, Y, X) stack of phase contrast and DAPI is two
        # kinds; told once the slider rests (tens of milliseconds each)
        from qtpy.QtCore import QTimer

        self._slider_rest = QTimer(self.native)
        self._slider_rest.setSingleShot(True)
        self._slider_rest.setInterval(SLIDER_REST_MS)
        self._slider_rest.timeout.connect(self._on_plane_shown)
        viewer.dims.events.current_step.connect(self._on_dims_step)
        self._show_device()
        self._on_model_changed()
        self._proposal.refresh()
        self._on_image_kind()
        self._channel_axis_of_image()  # (an image open before the dock: its combo's value never "changed")
        self._colour_of_image()
        self._diameter_of_image()
        self._register()
        start_background(_remove_killed_runs_files, "napari-unet files left by napari that ended")
        _heap.add_host(self, self.native, viewer)  # full garbage collections kept short (see _heap)
        when_undocked(self.native, self._closed)
        tab_with_plugin_docks(self.native)  # (beside the plugin's other docks, not under them)
        ask_before_closing_with_unsaved_masks(viewer)  # (the user's edits are not lost unasked)
        warm_up_in_background("segmenting")  # the first click then does not import or set up on the main thread
        scroll_when_short(self)  # (a dock shorter than its controls: a laptop's screen)

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _channel_axis_choices(self, _widget=None) -> list[tuple[str, Any]]:
        choices: list[tuple[str, Any]] = [(NO_CHANNEL_AXIS, None)]
        layer = self._image_combo.value if hasattr(self, "_image_combo") else None
        if layer is not None:
            labels = [str(a) for a in (getattr(layer, "axis_labels", None) or ())]
            for axis in range(lead_ndim(layer)):
                named = f" '{labels[axis]}'" if axis < len(labels) and not labels[axis].lstrip("-").isdigit() else ""
                choices.append((f"axis {axis}{named} (size {layer.data.shape[axis]})", axis))
        return choices

    def _channel_axis_of_image(self, *_args) -> None:
        """Another image chosen: its own stack axes, the one it names a channel axis chosen (a
        whole-stack run of a TCZYX layer segmented every channel, unsaid)."""
        self._channel_axis.reset_choices()
        image = self._image_combo.value
        named = channel_axis_of(image) if image is not None else None
        if named is not None:
            self._channel_axis.value = named

    def _colour_of_image(self, *_args) -> None:
        """Colour is shown for an RGB image only, at the choice its masks' last slice was segmented by
        (Auto for new masks, or masks of no choice)."""
        from napari_unet.io._corrected import recorded_colours

        image = self._image_combo.value
        rgb = image is not None and bool(getattr(image, "rgb", False))
        self._colour.visible = rgb
        if rgb:
            masks = masks_of(self._viewer, image)
            pairs = recorded_colours(masks.metadata) if masks is not None else []
            self._colour.value = pairs[-1][1] if pairs else "auto"

    def _diameter_of_image(self, *_args) -> None:
        """The object diameter typed for the chosen image's masks, when they record one (reopened the
        next day), is in the field again while it says Auto (see DiameterControls.restore)."""
        from napari_unet.io._corrected import recorded_diameter

        self._sizing.restore(recorded_diameter(getattr(masks_of(self._viewer, self._image_combo.value), "metadata", None)))

    def _channels_by_kind(self, image: Any) -> None:
        """Before a whole-stack run with no Channel axis: an unnamed axis whose planes are of different
        kinds (channels of a file napari's own reader opened) is taken as the channel axis, once an
        image, said, so that each channel is segmented by a model of its kind (the user may choose
        'none' again: not asked twice)."""
        from ._proposal import channel_axis_by_kind

        if unwrap_proxy(image) in self._kinds_looked_at:
            return
        self._kinds_looked_at.add(unwrap_proxy(image))
        found = channel_axis_by_kind(self._viewer, image)
        if found is None:
            return
        axis, kinds = found
        self._channel_axis.value = axis
        shown = current_plane_index(self._viewer, image)[axis]
        notify_info(f"Axis {axis} of {image.name!r} holds planes of different kinds ({', '.join(kinds)}): taken as "
                    f"its channel axis, so that each channel is segmented by a model of its kind; this run segments "
                    f"channel {shown} (the one shown). Choose 'none' under Channel axis to segment every plane with "
                    "one model.")

    def _on_masks_arrived(self, event: Any = None) -> None:
        """A layer added or renamed: when it is the chosen image's masks (opened after the image, say)
        and records the colour they were segmented by, Colour shows it (new masks leave the choice be);
        when they record the model that made them, the proposal takes it, and the diameter typed for
        them, the field."""
        from napari_unet.io._corrected import recorded_colours, recorded_diameter, recorded_model

        layer = getattr(event, "value", None)
        if layer is None and isinstance(getattr(event, "index", None), int) \
                and 0 <= event.index < len(self._viewer.layers):  # (renamed: the index alone)
            layer = self._viewer.layers[event.index]
        image = self._image_combo.value
        if image is None or getattr(layer, "name", None) != masks_layer_name(image.name) or self._worker is not None:
            return
        if recorded_colours(getattr(layer, "metadata", None)):
            self._colour_of_image()
        if recorded_model(getattr(layer, "metadata", None)):
            self._proposal.refresh()
        if recorded_diameter(getattr(layer, "metadata", None)):
            self._diameter_of_image()

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from napari_unet.core.catalog import list_models

        choices = [(f"{e.name}{'' if e.builtin else ' (yours)'}", str(e.path)) for e in list_models()]
        # a file added by hand and gone since (renamed, deleted) is no longer offered (it was, and failed)
        choices += [(name, path) for name, path in self._extra_models.items() if Path(path).exists()]
        return choices

    def _listed(self, path: str | Path) -> str | None:
        """The value in the Model list of the file ``path`` (the same file by another path: a models
        folder through a link, a relative NAPARI_UNET_MODELS), None when it is not listed."""
        target = Path(path).resolve()
        return next((value for _label, value in self._model_choices() if Path(value).resolve() == target), None)

    def refresh_models(self) -> None:
        """Reload the Model list (models trained, renamed or deleted under Fine-tune). When the chosen
        model is gone, the model proposed for the image is chosen again (not the list's first), and
        the status says so."""
        before = self._model_combo.value
        self._model_combo.reset_choices()
        self._after_model_gone(before)

    def _after_model_gone(self, before: str | None) -> None:
        """When the model chosen (``before`` the lists were made again) is gone: the proposed one instead
        (not the list's first), and the status says so."""
        if not before or before in self._model_combo.choices:  # (the list just made: the folders read once)
            return
        self._proposal.user_chose = False  # the list's fallback is nobody's choice
        self._proposal.refresh()
        now = self._model_combo.value
        self._status.value = (f"The model {Path(before).stem!r} is gone; "
                              f"{'now using ' + repr(Path(now).stem) if now else 'no model left'}.")
        notify_warning(self._status.value)  # (the status line is soon another run's)

    def reset_choices(self, *_args) -> None:
        before = self._model_combo.value
        super().reset_choices()
        self._three_d.refresh()
        self._after_model_gone(before)  # (every layer event resets the lists: a deleted model is said here too)

    def _ask_model_file(self, *_args) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native, "Choose a napari-unet model or a BioImage.IO package", "",
            "Models (*.pt *.zip bioimageio.yaml rdf.yaml model.yaml *.bioimageio.yaml);;napari-unet models (*.pt);;"
            "BioImage.IO packages (*.zip bioimageio.yaml rdf.yaml model.yaml *.bioimageio.yaml)")
        if path:
            self.add_model_file(path)

    def add_model_file(self, path: str | Path) -> None:
        """Offer a model file (``.pt``) or a BioImage.IO package (``.zip``, a folder with
        ``bioimageio.yaml``, or that file) in the Model list and select it. A file that cannot be
        used is reported (one line) when segmenting with it, as for a damaged ``.pt``."""
        from napari_unet.core._package_names import package_location

        path = str(package_location(Path(path).resolve()))
        listed = self._listed(path)  # one of the models listed already (a user's model added by hand): that one
        if listed is not None:
            self._model_combo.reset_choices()
            self._model_combo.value = listed
            return
        self._list_extra(path)
        _remember_added_model(path)
        self._model_combo.reset_choices()
        self._model_combo.value = path
        self._proposal.refresh()  # (masks this model made said it was not in the list)

    def _list_extra(self, path: str) -> None:
        """Offer the model file or package ``path`` (outside the model folders) in the Model list."""
        from napari_unet.core._package_names import is_bioimageio_package

        if path in self._extra_models.values():
            return
        package = is_bioimageio_package(path)
        label = base = f"{Path(path).stem} ({'BioImage.IO' if package else 'file'})"
        if label in self._extra_models:  # a second "model.pt" of another folder: both listed
            label = base = f"{Path(path).stem} ({'BioImage.IO' if package else 'file'}, {Path(path).parent.name})"
        n = 2
        while label in self._extra_models:
            label, n = f"{base} #{n}", n + 1
        self._extra_models[label] = path

    def select_model(self, path: str | Path) -> None:
        """Select the model at ``path`` (adding it to the list if needed)."""
        self._model_combo.reset_choices()
        listed = self._listed(path)
        if listed is None:
            self.add_model_file(path)
        else:
            self._model_combo.value = listed
        self._proposal.refresh()  # (the hint said the model the masks record before this one was chosen)

    def follow_renamed_model(self, old_path: str, new_path: str) -> None:
        """The chosen model renamed (Manage models): the same model under its new name, chosen quietly,
        not a new choice (which takes the model's threshold and min. size: the user's were lost)."""
        with self._model_combo.changed.blocked():
            self._model_combo.reset_choices()
            listed = self._listed(new_path)
            if listed is not None:
                self._model_combo.value = listed
        if self._run_model and Path(str(self._run_model)).resolve() == Path(old_path).resolve():
            self._run_model = self._model_combo.value  # (a run in progress: its end says no other model is chosen)

    def masks_follow_renamed_model(self, old_path: str, new_path: str) -> None:
        """A model renamed (Manage models): the masks it made in this viewer record its new name (saved
        and reopened, they propose it)."""
        from napari_unet.io._corrected import record_model, recorded_model

        for layer in self._viewer.layers:
            made = recorded_model(getattr(layer, "metadata", None))
            if made is not None and Path(made["path"]).resolve() == Path(old_path).resolve():
                record_model(layer.metadata, new_path, made.get("date"), made.get("kind"))
        self._proposal.refresh()  # (the hint named the old name)

    def _on_model_changed(self, *_args) -> None:
        """A new model: take its threshold and min. size (the masks made before keep their kept
        probabilities: moving Threshold still re-thresholds them). Fine-tune's base model follows
        (unless the user chose one there)."""
        from ._registry import get_widget

        self._apply_model_postprocessing(force=True)
        finetune = get_widget(self._viewer, "finetune")
        if finetune is not None:
            finetune.settings_panel.follow(self._model_combo.value)

    def _on_dims_step(self, *_args) -> None:
        try:
            self._slider_rest.start()
        except RuntimeError:  # the dock was closed (its Qt parts deleted) while the viewer goes on
            pass

    def _on_plane_shown(self) -> None:
        """The slider rests on another plane of a stack: the proposal looks at it (not during a run,
        whose model is taken); the kind's own Threshold and Min. size follow when it changes."""
        image = self._image_combo.value
        if not qt_alive(self) or image is None or image.ndim - (3 if image.rgb else 2) < 1 or self._worker is not None:
            return
        if not isinstance(image.data, np.ndarray):  # a lazy stack: no reading of its planes while scrubbing
            return
        before = self._proposal.kind
        self._proposal.refresh()
        if self._proposal.kind != before:
            self._on_image_kind()

    def _on_image_kind(self, *_args) -> None:
        """Another image: when the model has post-processing of its own for that kind of image
        (or had for the last one), the Threshold and Min. size controls take it."""
        self._apply_model_postprocessing(force=False)

    def _model_metadata(self, path: Any = None, wait: bool = False) -> dict | None:
        """The chosen model's metadata (``path``: another model file's), read once per file version
        (path, mtime): image changes must not reload a large file each time. None without a model or
        for a broken file (it is reported when the user segments with it).

        Reading a model file needs torch. While the warm-up thread imports it (2 s and more, as the
        dock opens) this gives None, unless ``wait``, and the metadata are read and applied once it is
        there (:meth:`_metadata_ready`): the window is not held for the import."""
        path = self._model_combo.value if path is None else path
        if not path:
            return None
        try:
            key = (str(path), Path(path).stat().st_mtime_ns)  # a file replaced on disk is read again
            if key not in self._metadata_cache:
                if not wait and not torch_imported() and self._wait_for_torch():
                    return None
                from napari_unet.core.checkpoint import ModelFileError, read_model_metadata

                try:
                    self._metadata_cache[key] = read_model_metadata(path)
                except ModelFileError:
                    return None
        except OSError:
            return None
        return self._metadata_cache[key]

    #: How long the metadata wait for the warm-up's import of torch before reading it on the main thread.
    TORCH_WAIT_S = 30.0

    def _wait_for_torch(self) -> bool:
        """Start (once) the timer that applies the models' metadata when torch is imported; False
        when it waited long enough already (the warm-up failed: read now, as before)."""
        from qtpy.QtCore import QTimer

        if self._metadata_wait_since and time.monotonic() - self._metadata_wait_since >= self.TORCH_WAIT_S:
            return False  # (waited once already: not each time again)
        if self._metadata_wait is None:
            self._metadata_wait = QTimer(self.native)
            self._metadata_wait.setInterval(100)
            self._metadata_wait.timeout.connect(self._metadata_ready)
            self._metadata_wait.start()
            self._metadata_wait_since = time.monotonic()
        return time.monotonic() - self._metadata_wait_since < self.TORCH_WAIT_S

    def _metadata_ready(self, *_args: Any) -> None:
        """The timer of :meth:`_wait_for_torch`: once torch is imported, what the model's metadata
        decide is done as when the model was chosen (its post-processing, the proposal's hint)."""
        waited = time.monotonic() - self._metadata_wait_since >= self.TORCH_WAIT_S
        if self._metadata_wait is None or not (torch_imported() or waited) or not qt_alive(self):
            return
        self._metadata_wait.stop()
        self._metadata_wait = None  # (a later model's metadata are read at once)
        if self._model_metadata(wait=True) is not None and self._postprocessing_applied is None:
            self._on_model_changed()
            self._proposal.refresh()

    def _apply_model_postprocessing(self, force: bool, kind: Any = _PROPOSED, only: tuple[str, ...] = ()) -> None:
        """Set Threshold and Min. size to the model's own for the chosen image's kind (see
        :func:`~napari_unet.core.checkpoint.postprocessing_settings`; ``kind``: this kind, or None
        for the general setting, instead of the kind the proposal told); the tooltip says which.
        Unless ``force``, only when that setting is not the one the controls started from (a value
        the user set stays while the image kind does not change the model's setting). ``only``:
        the controls to set (default both)."""
        metadata = self._model_metadata()
        if metadata is None:
            return
        from napari_unet.core.checkpoint import postprocessing_settings

        kind = self._proposal.kind if kind is _PROPOSED else kind
        own = postprocessing_settings(metadata, kind)
        if own == postprocessing_settings(metadata):
            kind = None  # the general setting applies to this image
        if not force and (kind, own) == (self._postprocessing_kind, self._postprocessing_applied):
            return  # the same setting: keep what the user set
        threshold = min(max(float(own["threshold"]), self._threshold.min), self._threshold.max)
        min_size = min(max(int(own["min_size"]), self._min_size.min), self._min_size.max)
        # a value the controls cannot show (a model file's own) is shown as their nearest, and that is
        # what segmenting then uses (it differs from the model's: _postprocessing_given passes it on)
        self._postprocessing_kind, self._postprocessing_applied = kind, own
        with self._threshold.changed.blocked(), self._min_size.changed.blocked():
            if not only or "threshold" in only:
                self._threshold.value = threshold
            if not only or "min_size" in only:
                self._min_size.value = min_size
        which = f"this model's own for {KIND_WORDS.get(kind, kind)}s" if kind else "this model's own"
        self._threshold.tooltip = f"Probability above which a pixel belongs to a cell ({which}: {own['threshold']:g})."
        self._min_size.tooltip = (f"Objects smaller than this are removed (pixels at the model's scale; {which}: "
                                  f"{int(own['min_size'])}).")

    def _postprocessing_given(self) -> tuple[float | None, int | None]:
        """``(threshold, min_size)`` to segment with: None for a control that shows the model's own
        setting (the core then takes it for the kind of image it tells on the plane, and estimates
        the object size with the model's general setting), else the user's value."""
        threshold, min_size = float(self._threshold.value), int(self._min_size.value)
        own = self._postprocessing_applied
        if own is None:
            return threshold, min_size
        return (None if abs(threshold - own["threshold"]) < 1e-6 else threshold,
                None if min_size == own["min_size"] else min_size)

    def _follow_kind_of(self, result: Any) -> None:
        """After a plane the core post-processed for a kind of image (its own look at the plane: the
        whole stack's first plane, the field of view), the controls the run left to the model show
        the setting it used, so that moving them re-thresholds from there."""
        left = tuple(name for name, value in zip(("threshold", "min_size"), self._run_given) if value is None)
        if left and result.kind != self._postprocessing_kind:
            self._apply_model_postprocessing(force=True, kind=result.kind, only=left)

    def _show_device(self) -> None:
        def words() -> str:
            from napari_unet.core.device import describe_device, select_device
            from napari_unet.core.engine import describe_engine

            device = select_device()
            return f"{describe_device(device)}, {describe_engine(device)}"

        show_when_known(self._device_label, words, device_words_at_once(), waiting="checking for a GPU…")

    def _register(self) -> None:
        try:
            from ._registry import register_widget
        except ImportError:
            return
        register_widget(self._viewer, "segment", self)

    # ------------------------------------------------------------------ layers
    def _masks_layer(self, image) -> "napari.layers.Labels":
        return masks_layer_for(self._viewer, image, wide=self._three_d.active)

    # ------------------------------------------------------------------ run
    def _planes_for_scope(self, image, scope: str) -> list[tuple[int, ...]]:
        n_lead = lead_ndim(image)
        current = current_plane_index(self._viewer, image, strict=scope != SCOPE_STACK)
        if scope != SCOPE_STACK or n_lead == 0:
            return [current]
        ranges: list[Iterable[int]] = [range(s) for s in image.data.shape[:n_lead]]
        channel_axis = self._channel_axis.value
        if channel_axis is not None and channel_axis < n_lead:
            ranges[channel_axis] = [current[channel_axis]]
        return [tuple(i) for i in itertools.product(*ranges)]

    def run(self, *_args, keep_corrected: bool = False) -> None:
        """Segment what the Scope says; results stream into "<image> masks". Slices the user
        corrected are replaced only when 'Overwrite slices I corrected' is ticked and the run is
        not ``keep_corrected`` (one the user did not start, such as the one after fine-tuning)."""
        if self._worker is not None:
            notify_warning("A segmentation is already running; wait for it or press Cancel.")
            return
        image = self._image_combo.value
        if image is None:
            notify_error("Segment", "open an image first (File > Open, or File > Open Sample).")
            self._status.value = "Not started: no image open."  # (not the last run's "Done")
            return
        model_path = self._model_combo.value
        if not model_path:
            notify_error("Segment", "no model available: add a model file or reinstall napari-unet.")
            return
        if not Path(model_path).exists():  # deleted or renamed on disk since the list was made: said, not run
            self.refresh_models()  # (the proposed model is chosen instead, and the status says so)
            if self._model_combo.value == model_path:  # (still chosen: nothing else to take)
                notify_error("Segment", f"the model file {model_path} is gone.")
            return
        if self._postprocessing_applied is None and self._model_metadata(wait=True) is not None:
            self._apply_model_postprocessing(force=True)  # (pressed before torch was imported: see _model_metadata)
        overwrite = bool(self._overwrite.value) and not keep_corrected
        try:
            plane_shape = labels_shape(image)[-2:]
            diameter = self._sizing.chosen(image, plane_shape)  # checked before anything is written
            existed = masks_of(self._viewer, image) is not None
            try:
                masks = self._masks_layer(image)
            except MemoryError:  # (an array of the whole stack's shape, refused by the system)
                raise ValueError(_too_large_for_memory(image, labels_shape(image))) from None
            except NoRoomForMasks as exc:  # (nor on disk)
                raise ValueError(_too_large_for_memory(image, labels_shape(image), exc.where)) from None
            self._new_masks = None if existed else masks  # removed again if the run fails before writing
            scope = self._scope.value
            if self._three_d.active:  # whole volumes: the field of view does not apply
                if scope == SCOPE_VIEW:
                    notify_info("3D objects are segmented in whole volumes: the field of view does not apply "
                                "(untick '3D objects' to segment only what you see).")
                if scope == SCOPE_STACK:  # (every volume: the whole layer filled)
                    _masks_fit(image, masks, int(np.prod(masks.data.shape[:-2])))
                ready_for_writing(masks)
                generator, message = plan_3d_run(self, image, diameter)
                if generator is not None:
                    self._remember_run(image, masks)
                    self._start(generator, message, overwrite=overwrite, masks=masks, automatic=keep_corrected)
                    self._volumes_written = 0  # (a run of volumes; its items come once this returns)
                else:
                    self._drop_new_masks()
                return
            if scope == SCOPE_STACK and self._channel_axis.value is None:
                self._channels_by_kind(image)
            planes = self._planes_for_scope(image, scope)
            all_planes = tuple(planes)
            _masks_fit(image, masks, len(planes))
            yx_view = shows_yx_planes(self._viewer, image)
            in_3d = self._viewer.dims.ndisplay == 3
            # (a field of view of another cut, or of a 3D view, is no part of a Y-X plane: the plane is segmented whole)
            region = visible_region(self._viewer, image, plane_shape) if (
                scope == SCOPE_VIEW and yx_view and not in_3d) else (slice(None), slice(None))
            whole = ", whole" if scope == SCOPE_VIEW else ""
            if in_3d and scope != SCOPE_STACK and planes != [()]:
                notify_info(f"The viewer shows 3D: {format_plane(planes[0])}, where the sliders stand, is "
                            f"segmented{whole} (switch to 2D to see it).")
            if scope != SCOPE_STACK and planes != [()] and _projects(self._viewer, image):
                notify_info(f"The canvas shows a projection of several slices (the viewer's slice thickness): "
                            f"{format_plane(planes[0])} alone, where the sliders stand, is segmented.")
            if scope != SCOPE_STACK and not yx_view and planes != [()]:  # (a 2D image: its one plane, turned)
                notify_warning("The view shows another cut through the stack than its Y-X planes (axes "
                               f"transposed or rolled): {format_plane(planes[0])}, the Y-X plane where the "
                               f"sliders stand, is segmented{whole}.")
        except ValueError as exc:
            notify_error("Segment", exc)
            self._status.value = f"Not started: {one_line(exc)}"
            self._drop_new_masks()
            return
        skipped = []
        if not overwrite:
            protected = corrected_planes(masks)
            skipped = [p for p in planes if p in protected]
            planes = [p for p in planes if p not in protected]
        if skipped:
            shown = planes_text(skipped)
            if skipped == [()]:
                what = "the image, which you corrected"
            else:
                what = (f"{len(skipped)} slices you corrected" if len(skipped) > 1 else "a slice you corrected") + f" ({shown})"
            notify_warning(f"Skipped {what}; tick 'Overwrite slices I corrected' to replace them.")
        if not planes:
            what = f"{format_plane(skipped[0])} is" if len(skipped) == 1 else "every chosen slice is"
            self._status.value = f"Nothing to segment: {what} one you corrected."
            return
        run_stack = None
        if scope == SCOPE_STACK:  # (a slice segmented meanwhile, to look, leaves the cancelled run to go on from)
            resumable, self._resumable = self._resumable, None
            given = (str(model_path), _file_version(model_path), self._postprocessing_given(),
                     self._colour.value if image.rgb else "auto", diameter, self._channel_axis.value, all_planes)
            left = None if resumable is None else resumable.left_of(image, masks, given, planes)
            if left is not None and len(left) < len(planes):
                if not left:
                    self._status.value = "Nothing left to segment: the run cancelled before had finished every slice."
                    return
                at = ""
                if diameter is None and resumable.size is not None:  # (Auto: the size that run measured)
                    diameter = resumable.size
                    at = f", at the object size it measured ({resumable.size.diameter:.1f} px)"
                notify_info(f"Going on from the run cancelled before, given the same: {len(planes) - len(left)} of "
                            f"these {len(planes)} slices were segmented then; the other {len(left)} now{at}.")
                planes = left
            run_stack = (given, resumable.done if left is not None else frozenset())
        try:
            ready_for_writing(masks, widen_16_bit=False)  # (plane by plane: write_plane widens when needed)
        except ValueError as exc:
            notify_error("Segment", exc)
            self._status.value = f"Not started: {one_line(exc)}"
            return
        self._remember_run(image, masks)
        threshold, min_size = self._run_given = self._postprocessing_given()
        colour = self._run_colour = self._colour.value if image.rgb else "auto"
        generator = segment_planes(
            model_path,
            full_resolution(image),
            planes,
            region,
            rgb=bool(image.rgb),
            colour=colour,
            threshold=threshold,
            min_size=min_size,
            diameter=diameter,
            model_cache=self._model_cache,
            size_planes=self._size_planes(image, scope, planes) if diameter is None else None,
        )
        self._start(generator, f"Segmenting {len(planes)} slice(s)" if len(planes) > 1 else "Segmenting",
                    overwrite=overwrite, masks=masks, automatic=keep_corrected, stack=run_stack)

    def _size_planes(self, image: Any, scope: str, planes: list[tuple[int, ...]]) -> list[tuple[int, ...]] | None:
        """For a slice or a field of view of a stack with the automatic diameter: the slices after it
        (in the whole stack's order, the channel shown), where the object size may be measured when
        the slice does not tell it (C2C12's first frame, 8 cells of 14 px: 'no object found at any
        scale'; the next frames tell 10-18 px). Read only then."""
        from napari_unet.core.predict import ESTIMATE_RETRY_PLANES

        if scope == SCOPE_STACK or len(planes) != 1 or planes == [()]:
            return None
        stack = self._planes_for_scope(image, SCOPE_STACK)
        at = stack.index(planes[0]) if planes[0] in stack else -1
        return (stack[at + 1:] + stack[:max(at, 0)])[:ESTIMATE_RETRY_PLANES] or None

    def _remember_run(self, image: Any, masks: Any) -> None:
        """The layers of the run about to start: written to now, re-thresholded later."""
        self._run_layers = (image, masks)
        self._last_masks = unwrap_proxy(masks)
        self._last_image = weakref.ref(unwrap_proxy(image))

    def use_new_model(self, model_path: str | Path, image: Any = None) -> None:
        """A new (fine-tuned) model: select it and segment ``image`` with it (its current view,
        see :meth:`segment_current_view`); with no image (or one no longer open), only select it."""
        target = unwrap_proxy(image) if image is not None else None
        if self._worker is not None and self._run_automatic and not self._rethresholding:
            # the run going on segments with the weights before (the fine-tuned model just saved, whose
            # held-back weights were then kept: "Keep the trained weights instead"): stopped, and the
            # view segmented again with these once it has stopped
            self.select_model(model_path)
            self.cancel()
            self._new_model_after_run = (model_path, image)
            self._status.value = "Segmenting again with the new model once the run with the one before stops…"
            return
        if self._worker is not None:  # the user's run goes on: the view, scope and slider stay as they are
            self.select_model(model_path)
            message = ("The new model is chosen; a segmentation is running with the one before: segment again "
                       "with the new model when it has finished.")
            self._status.value = message
            notify_info(message)  # (the status line is replaced by "Done" when the run ends)
            return
        self.reset_choices()
        match = next((c for c in self._image_combo.choices if target is not None and unwrap_proxy(c) is target), None)
        if match is None:
            self.select_model(model_path)
            self._status.value = "The new model is chosen: segment an image with it."
            return
        self._image_combo.value = match
        self.segment_current_view(model_path)

    def _use_new_model_now(self, model_path: str | Path, image: Any) -> None:
        """:meth:`use_new_model` from the event loop: a failure is said, not a traceback."""
        try:
            self.use_new_model(model_path, image)
        except Exception as exc:  # noqa: BLE001 - a slot of Qt's: the user hears of it
            notify_error("Segmenting again", exc)

    def segment_current_view(self, model_path: str | Path | None = None) -> None:
        """Segment the current slice (or field of view) again, e.g. with a new model.

        When the slice shown is one the user corrected (e.g. the only example of a
        fine-tuning), the viewer moves to the next slice that is not, and that one is
        segmented; the status says which. Corrected slices are never replaced by this run, whatever
        'Overwrite slices I corrected' says: the user did not start it.
        """
        if model_path is not None:
            self.select_model(model_path)
        if self._scope.value == SCOPE_STACK:
            self._scope.value = SCOPE_SLICE
        if self._three_d.active:  # the volume shown, whole: its corrected planes are kept as they are
            self.run(keep_corrected=True)
            return
        if self._stroke_going_on():  # (moved under a brush stroke, the rest of it went onto the next slice)
            from qtpy.QtCore import QTimer

            self._status.value = "The new model is chosen: segmenting when your brush stroke ends…"
            QTimer.singleShot(250, lambda: qt_alive(self) and self._worker is None and self.segment_current_view())
            return
        moved = self._move_past_corrected_slice()
        if not moved and self._shown_plane_is_corrected():
            # every slice was corrected (a 2D image, say): nothing to segment, and no warning for it
            self._status.value = ("The new model is chosen. The slice shown is one you corrected, so it was not "
                                  "segmented again: segment another image or slice with it.")
            return
        self.run(keep_corrected=True)
        if moved and self._worker is not None:
            self._status.value = moved
            notify_info(moved)

    def _masks_follow_image(self, image: Any) -> None:
        """The voxel size typed: the image's masks take its new scale at once (corrections went into
        another plane than the one shown until the next run)."""
        from ._masks import follow_the_images_geometry

        masks = masks_of(self._viewer, image)
        if masks is not None:
            follow_the_images_geometry(masks, image, len(labels_shape(image)))

    def _stroke_going_on(self) -> bool:
        """Whether the user is drawing a brush or eraser stroke in the masks of the image chosen."""
        from ._napari_compat import stroke_in_progress

        masks = masks_of(self._viewer, self._image_combo.value)
        return masks is not None and bool(stroke_in_progress(masks))

    def _shown_plane_is_corrected(self) -> bool:
        image = self._image_combo.value
        return image is not None and shown_plane_corrected(self._viewer, image)

    def _move_past_corrected_slice(self) -> str:
        """Show the next slice the user did not correct when the current one is corrected;
        returns what was done ("" when nothing moved)."""
        image = self._image_combo.value
        if image is None:
            return ""
        # in order, the channel shown kept
        return move_past_corrected_slice(self._viewer, image, self._planes_for_scope(image, SCOPE_STACK))

    def _closed(self) -> None:
        """The dock was closed (napari keeps the widget, hidden; the Plugins menu makes a new one): its
        run is cancelled (it went on writing, and the new Segment could start a second one into the
        same masks), and it no longer follows the viewer nor is found by the other widgets."""
        from ._registry import unregister_widget

        self._undocked = True  # (a Threshold moved during the run is not applied after it: nothing more is written)
        self._rethreshold_pending = False
        self.cancel()
        events = self._viewer.layers.events
        disconnect_all((events.inserted, self.reset_choices), (events.removed, self.reset_choices),
                       (events.renamed, self.reset_choices), (events.removed, self._on_layer_removed),
                       (events.inserted, self._on_masks_arrived), (events.renamed, self._on_masks_arrived),
                       (events.moved, self.reset_choices), (self._viewer.dims.events.current_step, self._on_dims_step))
        self._slider_rest.stop()
        unregister_widget(self._viewer, "segment", self)
        if self._worker is None:  # (else once its run has ended)
            self._let_go()

    def _let_go(self) -> None:
        """A closed dock lets go of the viewer's data: napari keeps the widget for the session, and with
        it the kept probabilities (up to 512 MB), the last masks layer, its image and the model."""
        self._kept = KeptResults(PROBABILITY_CACHE_BYTES)
        self._last_masks = self._last_image = None
        self._model_cache.clear()
        self._run_layers = ()

    def cancel(self, *_args) -> None:
        """Stop the running worker between tiles; what was written so far stays (and nothing follows)."""
        self._new_model_after_run = None
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()
            self._status.value = "Cancelling…"

    def _start(self, generator: Generator, message: str, rethreshold: bool = False, overwrite: bool = False,
               masks: Any = None, automatic: bool = False, stack: tuple[tuple, frozenset] | None = None) -> None:
        """``stack``: of a whole-stack run of planes, what it was given and the slices finished before
        (see :class:`_Resumable`); None for every other run (a slice, a view, 3D objects, Threshold
        applied again), which leaves nothing to go on from when cancelled."""
        self._run_started = time.perf_counter()
        self._run_stack, self._run_written, self._run_size = stack, set(), None
        self._run_model = self._model_combo.value  # (a fine-tune may choose its model while this runs)
        self._run_kind = self._proposal.kind  # the kind of the plane shown, which the masks record with the model
        self._run_corrections = RunCorrections.start(masks, overwrite, automatic)
        if overwrite:  # (the consent of one run: left ticked, a Whole-stack run later replaced corrections unasked)
            self._overwrite.value = False
        self._run_automatic = automatic
        self._label_at_start = int(masks.selected_label) if masks is not None else 0
        # planes segmented again in 2D among 3D objects: their ids start above those (they named
        # other nuclei of the volume: one id, two objects)
        # (a file of 3D objects reopened says so in its metadata: see OBJECTS_3D_KEY)
        held_3d = masks is not None and (self._kept.held_3d(masks) or bool((masks.metadata or {}).get(OBJECTS_3D_KEY)))
        top = top_id(masks.data) if masks is not None else None  # (masks on disk: no pass over their file)
        self._ids_above = (top if top is not None else int(np.max(masks.data))) if held_3d and masks.data.size \
            else None
        self._rethresholding = rethreshold
        if not self._rethresholding:  # the object-size notes are the network run's, once
            self._sizing.new_run(self._run_layers[0] if self._run_layers else None)
            self._after_cancel = ""
        self._cancelled = False
        self._failed = False
        self._abandoned = ""
        self._volumes_written = None  # (a run of planes, unless a 3D run says otherwise)
        self._empty_planes = []
        self._notes_said = set()
        self._status.value = message + "…"
        self._progress.value = 0
        self._progress_shown = 0.0
        self._progress_pending = None
        self._progress_timer.stop()
        self._progress.visible = True
        hand_over(self._run_button, self._cancel_button)
        image = self._run_layers[0] if self._run_layers else None
        of = f" of {image.name!r}" if image is not None else ""
        self._worker = start_worker(
            generator,
            yielded=self._on_yielded,
            errored=self._on_error,
            finished=self._on_finished,
            title=f"Segment{of} (stops; the slices done stay in the masks layer)",
        )

    # ------------------------------------------------------------------ results
    def _on_yielded(self, item: Any) -> None:
        from napari_unet.core.events import Progress
        from napari_unet.core.predict import PlaneResult
        from napari_unet.core.volume import VolumeSized

        if not qt_alive(self):
            return
        if isinstance(item, Progress):
            if self._cancelled:  # after Cancel, the last steps' progress says nothing
                return
            # at most every PROGRESS_INTERVAL: one that comes sooner waits for it (the latest one wins)
            self._progress_pending = item
            wait = PROGRESS_INTERVAL - (time.perf_counter() - self._progress_shown)
            if wait <= 0:
                self._show_pending_progress()
            elif not self._progress_timer.isActive():
                self._progress_timer.start(max(1, int(1000 * wait)))
        elif isinstance(item, PlaneResult) and not self._abandoned:
            # a plane segmented again (at the size a later plane told) is judged by its last result
            self._empty_planes = [e for e in self._empty_planes if e.index != item.index]
            self._write_plane(item)
            if not self._rethresholding:
                self._sizing.show(item)
                self._say_colour(item)
                self._say_clipped(item)
            self._follow_kind_of(item)
        elif isinstance(item, EmptyPlane):
            self._empty_planes.append(item)
        elif isinstance(item, VolumeResult) and not self._abandoned:
            write_volume_result(self, item)
            self._volumes_written = (self._volumes_written or 0) + 1
        elif isinstance(item, VolumeSized):  # (the size a volume was segmented at: Diameter used says it)
            self._notes_said.add(f"Object diameter: {item.note}.")  # (said by show, not again by its note)
            self._sizing.show(item)
        elif hasattr(item, "message") and item.message not in self._notes_said:
            self._notes_said.add(item.message)  # a note of the 3D path (an assumed voxel size, ...), once a run
            from napari_unet.core.volume import UNKNOWN_SPACING_NOTE

            image = unwrap_proxy(self._run_layers[0]) if self._run_layers else None
            if item.message == UNKNOWN_SPACING_NOTE and image is not None:  # once an image: the field is there
                if image in self._spacing_asked:
                    return
                self._spacing_asked.add(image)
            notify_info(item.message)

    def _say_clipped(self, result: PlaneResult) -> None:
        """Once a run: a plane was segmented again with a few far brighter objects clipped."""
        from napari_unet.core.predict import OUTLIERS_NOTE

        if result.clipped is not None and OUTLIERS_NOTE not in self._notes_said:
            self._notes_said.add(OUTLIERS_NOTE)
            notify_info(OUTLIERS_NOTE)

    def _say_colour(self, result: PlaneResult) -> None:
        """Once a run: which colour of an RGB image was segmented on its own (a merge of fluorescence
        channels: the most nuclei-like one, not the mean of the colours), or that an immunohistochemistry
        image was segmented without its DAB, or the colour the model was fine-tuned on; not when the
        user chose the colour (Colour)."""
        image = self._run_layers[0] if self._run_layers else None
        if self._run_colour != "auto" or not getattr(image, "rgb", False):
            return
        from napari_unet.core.channels import chosen_colour, colour_note, model_colour_note

        own = chosen_colour((self._model_metadata(self._run_model) or {}).get("colour"))  # (the run's model)
        if own is not None:
            note = model_colour_note(own, napari=True)
        elif result.colour is None:
            return
        else:
            note = colour_note(result.colour, napari=True)
        if note not in self._notes_said:
            self._notes_said.add(note)
            notify_info(note[0].upper() + note[1:] + ".")

    def _write_plane(self, result: PlaneResult) -> None:
        masks = self._running_masks()
        if masks is None:
            return  # the user removed the masks layer meanwhile (the run is being abandoned)
        whole = covers_plane(masks.data.shape, result.region)
        if self._run_corrections.planes_to_keep(masks, [result.index], whole):
            return
        if not room_to_write(masks.data, result.labels.size * masks.data.dtype.itemsize):
            if not self._cancelled:  # (written into a file on a full disk, napari would die: SIGBUS)
                notify_error("Segment", f"the disk holding {masks.name!r} ({Path(masks.data.filename).parent}) is "
                             "full: the run stops. Free some room there, and save the masks (Correct, Save masks).")
                self.cancel()
            return
        write_plane(masks, result, self._ids_above or 0)
        image = self._run_layers[0] if self._run_layers else None
        if not self._rethresholding:
            from napari_unet.io._corrected import record_colour

            record_made_by(self, masks)  # (reopened, the masks propose their model, and the diameter typed)
            if getattr(image, "rgb", False):  # (fine-tuning learns a slice from its colour)
                record_colour(masks.metadata, result.index, self._run_colour)
        if self._run_stack is not None and not result.provisional:  # (a provisional one comes again)
            self._run_written.add(tuple(result.index))
            if result.diameter is not None:
                from napari_unet.core.scale import MeasuredSize

                self._run_size = MeasuredSize(float(result.diameter), float(result.scale))
        if self._ids_above is not None:
            self._ids_above += int(result.labels.max(initial=0))
        self._kept.keep(masks, result, _checksum(masks, result))
        for other in self._kept.overlapping(masks, result):  # the run changed them there, not the user
            self._kept.rewritten(masks, other, _checksum(masks, other))

    def _running_masks(self) -> Any:
        """The masks layer of the running job (whatever its name now); None once it was removed."""
        if len(self._run_layers) < 2:
            return None
        self._last_masks = unwrap_proxy(self._run_layers[1])
        return self._follow_last_masks()

    def _follow_last_masks(self) -> Any:
        """The masks layer last segmented into, found by identity (the user may have renamed it),
        or None when it was removed."""
        target = self._last_masks
        if target is None:
            return None
        return next((layer for layer in self._viewer.layers if unwrap_proxy(layer) is target), None)

    def kept_result(self, layer: Any, index: tuple[int, ...]) -> PlaneResult | None:
        """The last result (with its probabilities) written to plane ``index`` of the masks layer
        ``layer`` (None when it was not kept)."""
        return self._kept.result(layer, index)

    def kept_results(self, layer: Any, index: tuple[int, ...]) -> list[PlaneResult]:
        """The kept results of plane ``index`` of ``layer`` (one per region), the last written first."""
        return self._kept.results_of_plane(layer, index)

    def diameter_from_selected_label(self, *_args) -> None:
        """Take the object diameter from the masks layer's selected label (see DiameterControls), or
        from the shapes selected in the active Shapes layer (a circle or box drawn around a cell, a
        line across it, its outline)."""
        from napari.layers import Labels, Points, Shapes

        image = self._image_combo.value
        active = self._viewer.layers.selection.active
        if isinstance(active, Shapes):
            self._sizing.from_shapes(active, image)
            return
        if isinstance(active, Points):
            notify_warning("A point has no size: draw a circle around a cell, or a line across it, in a Shapes "
                           "layer (or pick a cell's label in the masks).")
            return
        masks = masks_of(self._viewer, image)
        if isinstance(active, Labels) and image is not None and tuple(active.data.shape[-2:]) == labels_shape(image)[-2:]:
            masks = active  # a cell drawn in a Labels layer of the image's size (before any masks exist)
        self._sizing.from_selected_label(self._viewer, masks)

    def _on_error(self, exc: BaseException) -> None:
        self._failed = True
        if not qt_alive(self):  # the viewer was closed meanwhile
            log.debug("Segmentation failed after its widget was closed", exc_info=exc)
            return
        hint = gpu_hint(exc, "")
        notify_error("Segmentation failed", exc, hint)  # (the traceback in the log)
        self._status.value = f"Failed: {one_line(exc)}{hint}"

    def _on_layer_removed(self, event: Any = None) -> None:
        """A layer was removed: what was kept for it goes; when it is the image or the masks layer
        of the running job, the job is given up."""
        removed = unwrap_proxy(getattr(event, "value", None))
        if removed is not None:
            self._kept.forget(removed)
            if removed is self._last_masks:
                self._last_masks = None
        running = [unwrap_proxy(layer) for layer in self._run_layers]
        if self._worker is None or self._abandoned or not any(removed is layer for layer in running):
            return
        kind = "image" if removed is running[0] else "masks"
        # (the slices finished so far stay in the masks layer, unless that is what was removed)
        self._abandoned = f"the {kind} layer {removed.name!r} was removed" + (
            "; finished slices kept" if kind == "image" else "")
        self._worker.quit()
        self._status.value = f"Stopping: {self._abandoned}…"

    def _show_pending_progress(self) -> None:
        item, self._progress_pending = self._progress_pending, None
        if item is None or self._worker is None or self._cancelled or not qt_alive(self):
            return
        self._progress_shown = time.perf_counter()
        self._progress.value = int(round(100 * item.fraction))
        eta = format_seconds(item.eta) if item.fraction < 1 else ""  # (the last steps after the tiles)
        self._status.value = item.message + (f" — {eta} left" if eta else "")

    def _on_finished(self) -> None:
        took = time.perf_counter() - self._run_started
        self._progress_pending = None
        if not qt_alive(self):  # the viewer was closed meanwhile
            self._worker = None
            return
        self._progress_timer.stop()
        stopped = self._worker is not None and self._worker.abort_requested and not self._cancelled
        if self._abandoned:
            message = f"Segmentation abandoned: {self._abandoned}."
            self._status.value = message
            notify_warning(message)
        elif self._cancelled or stopped:
            # (napari asks the tasks filed under a window to stop as it closes: with two windows, one filed
            # under the other, whichever was current when it started; it had said "Done")
            done = self._volumes_written  # (a 3D run's: volumes, not slices)
            kept = ("nothing was segmented yet" if self._new_masks_unused() else "finished slices kept" if done is None
                    else "no volume was finished: the masks are as they were" if done == 0
                    else f"{done} finished volume{'s' if done > 1 else ''} kept")
            how = "Cancelled" if self._cancelled else "Stopped (napari asked its tasks to stop as a window closed)"
            if self._run_stack is not None and self._run_written and len(self._run_layers) == 2:
                given, before = self._run_stack
                image, masks = (weakref.ref(unwrap_proxy(layer)) for layer in self._run_layers)
                self._resumable = _Resumable(image, masks, given, before | frozenset(self._run_written),
                                             self._run_size)
                kept += " (the whole stack segmented again, given the same, goes on from there)"
            self._status.value = self._after_cancel = f"{how} after {format_seconds(took)}; {kept}."
        elif self._rethresholding and self._after_cancel and not self._failed:  # the one that followed the cancel
            self._status.value = f"{self._after_cancel} The new Threshold / Min. size were applied to them."
            self._after_cancel = ""
        elif not self._failed:
            self._status.value = f"Done in {format_seconds(took)}"
            if not self._rethresholding and self._model_combo.value != self._run_model:
                self._status.value += (f" with {Path(str(self._run_model)).stem!r}; "
                                       f"{Path(str(self._model_combo.value)).stem!r} is chosen for the next run.")
        if not self._failed and not self._abandoned:
            report_empty_planes(self._empty_planes)
            if not self._rethresholding:  # (the masks now record the run's model: the hint says so)
                self._proposal.refresh()
        self._run_corrections.report()
        self._run_layers = ()
        self.last_run_seconds = took
        masks = self._follow_last_masks()
        if masks is not None:  # the brush must not reuse a model's id (unless the user chose it meanwhile)
            select_next_free_label_after_run(self._viewer, masks, self._label_at_start)
        self._progress.visible = False
        hand_over(self._cancel_button, self._run_button)
        self._worker = None
        if self._failed or self._cancelled or self._abandoned or stopped:
            self._drop_new_masks()
        self._new_masks = None
        if self._undocked:  # (its cancelled run has ended)
            self._let_go()
        new_model, self._new_model_after_run = self._new_model_after_run, None
        if new_model is not None and not self._undocked:
            from qtpy.QtCore import QTimer

            self._rethreshold_pending = False
            QTimer.singleShot(0, lambda: qt_alive(self) and self._worker is None and self._use_new_model_now(*new_model))
            return  # (the new run segments with the Threshold / Min. size chosen now)
        pending, self._rethreshold_pending = self._rethreshold_pending, False
        if pending and not self._failed and not self._abandoned:
            from qtpy.QtCore import QTimer

            # the run's own masks get the values the user chose while it ran (whatever image is chosen now)
            QTimer.singleShot(0, lambda: self._rethreshold_layer(self._follow_last_masks()))

    def _drop_new_masks(self) -> None:
        """Remove the masks layer this run made when nothing was written into it (a run that did
        not start, failed, or was cancelled first): no empty layer is left behind."""
        if self._new_masks_unused():
            self._viewer.layers.remove(self._new_masks)
        self._new_masks = None

    def _new_masks_unused(self) -> bool:
        """Whether the masks layer this run made is still there with no plane written into it."""
        new = self._new_masks
        if new is None or new not in self._viewer.layers or self._kept.results(new):
            return False
        top = top_id(new.data)  # (masks on disk: no pass over their file)
        return not np.any(new.data) if top is None else top == 0

    # ------------------------------------------------------------------ re-threshold
    def _masks_to_rethreshold(self) -> Any:
        """The masks layer whose kept results a moved Threshold / Min. size re-applies: the last
        run's (whatever it is named now) while its image is the one chosen, else the chosen image's
        "<image> masks" when results of it are kept (None, and the status says so, when none are)."""
        image = self._image_combo.value
        last_image = self._last_image() if self._last_image is not None else None
        if image is None or unwrap_proxy(image) is last_image:
            return self._follow_last_masks()
        masks = masks_of(self._viewer, image)
        if masks is None or not self._kept.results(masks):
            self._status.value = (f"The new Threshold and Min. size apply when you segment {image.name!r}: none of "
                                  "its masks are kept to re-apply them to.")
            return None
        self._last_image = weakref.ref(unwrap_proxy(image))  # (the re-threshold makes them the last masks)
        return masks

    def _rethreshold(self, *_args) -> None:
        """Apply a new threshold / minimum size to the kept probability maps of the chosen image's
        masks (after the running job, when one runs: its planes then get the values the user chose
        meanwhile)."""
        if self._worker is not None:
            self._rethreshold_pending = True
            return
        self._rethreshold_layer(self._masks_to_rethreshold())

    def _rethreshold_layer(self, masks: Any) -> None:
        """Re-apply Threshold / Min. size to the kept results of the masks layer ``masks``."""
        if self._undocked:
            return
        if self._worker is not None:  # a run started meanwhile: after it
            self._rethreshold_pending = True
            return
        if masks is None:
            return  # nothing segmented yet, or its masks layer was removed (or said by the caller)
        if self._kept.is_3d(masks):
            self._status.value = ("Threshold and Min. size apply from the next run: 3D objects are not "
                                  "re-thresholded from kept probabilities.")
            return
        # corrected slices keep the user's masks ('Overwrite slices I corrected' is for the runs the
        # user starts), and so does a plane edited since it was segmented (then unmarked as corrected)
        protected = corrected_planes(masks)
        cached = [r for r in self._kept.results(masks) if r.index not in protected and _still_fits(masks, r)]
        edited = [r for r in cached if self._kept.written(masks, r) != _checksum(masks, r)]
        if edited:
            cached = [r for r in cached if all(r is not e for e in edited)]
            notify_info(f"Left {_plural(len(edited), 'slice')} you edited as they are "
                        f"({planes_text([r.index for r in edited])}); segment them again with "
                        "'Overwrite slices I corrected' ticked for masks made with the new values.")
        too_large = self._kept.too_large(masks)
        if too_large:
            notify_info(f"{_plural(len(too_large), 'slice').capitalize()} ({planes_text(too_large)}) keep their "
                        f"masks: their probabilities are larger than the {PROBABILITY_CACHE_BYTES // 2**20} MB "
                        "kept for re-thresholding; segment again for the new values.")
        dropped = self._kept.dropped(masks)
        if dropped:
            notify_info(f"The new values apply to the {len(cached)} slices segmented last; "
                        f"{_plural(len(dropped), 'slice')} segmented before ({planes_text(dropped)}) "
                        "keep their masks: segment them again for the new values "
                        "(the probabilities of a run are kept up to "
                        f"{PROBABILITY_CACHE_BYTES // 2**20} MB).")
        if not cached:
            if self._kept.results(masks):
                self._status.value = ("Nothing to re-apply Threshold and Min. size to: every slice kept is one you "
                                      "corrected or edited.")
            return
        from napari_unet.core.predict import iter_rethreshold

        generator = iter_rethreshold(cached, float(self._threshold.value), int(self._min_size.value))
        self._run_layers = (None, masks)  # no image needed: only the masks are written
        self._start(generator, "Applying threshold", rethreshold=True, masks=masks)


def _still_fits(masks: Any, result: Any) -> bool:
    """Whether a kept result's plane and region are still in ``masks`` (whose data may have been
    replaced by an array of another shape since: re-thresholding it raised an IndexError)."""
    shape = tuple(masks.data.shape)
    if len(result.index) != len(shape) - 2 or not all(0 <= i < n for i, n in zip(result.index, shape[:-2], strict=True)):
        return False
    return all(s.stop is None or s.stop <= n for s, n in zip(result.region, shape[-2:], strict=True))


def _checksum(masks: Any, result: Any) -> int:
    """CRC of the region of ``masks`` that ``result`` covers (to tell whether the user edited it)."""
    import zlib

    plane = masks.data[result.index] if result.index else masks.data
    rows, cols = result.region
    return zlib.crc32(np.ascontiguousarray(plane[rows, cols]))  # (its buffer: no copy of a whole plane)


def _projects(viewer: Any, layer: Any) -> bool:
    """Whether the canvas shows ``layer`` projected over several slices (napari's thick slicing:
    a slice thickness above 1 on an axis not shown, and a projection mode other than "none")."""
    mode = str(getattr(layer, "projection_mode", "none") or "none").lower()
    if mode == "none":
        return False
    thickness = getattr(viewer.dims, "thickness", ())  # (in world units: the layer's slices are its scale apart)
    shown, offset = set(viewer.dims.displayed), viewer.dims.ndim - layer.ndim
    return any(t / max(abs(float(layer.scale[axis - offset])), 1e-12) > 1
               for axis, t in enumerate(thickness) if axis not in shown and axis >= offset)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"

