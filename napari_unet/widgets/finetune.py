"""The Fine-tune dock widget: the human-in-the-loop.

1. The user corrects masks in "<image> masks" (brush, eraser, fill, polygon, undo); each
   changed plane is recorded by :class:`~napari_unet.widgets._corrections.CorrectedSlices`
   and listed here. A plane can be marked correct without editing, unmarked, or jumped to.
   More examples come from other image/labels layer pairs or folders of image/label files.
2. Start fine-tunes the chosen base model on those planes with
   :func:`napari_unet.core.train.finetune` inside a napari thread worker: progress, time
   left, a live loss / validation curve and the best score so far are shown while the
   viewer stays usable (painting included).
3. The best model is saved atomically in the user's model folder, appears in every model
   list, and the current view is segmented again with it (corrected planes are left alone).

Gathering and checking the examples lives in :mod:`._examples`, the worker body that trains
and saves in :mod:`._training_job`.

torch is imported lazily (inside functions and the worker) so napari starts fast.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from psygnal import Signal

from ._base import current_plane_index, format_seconds, notify_error, notify_info, notify_warning, one_line
from ._corrections import CorrectedSlices, format_plane
from ._examples import (
    Example,
    FolderSource,
    LayerPairSource,
    _check_pair_shapes,
    _plane_of,
    as_label_plane,
    check_examples,
    examples_from_folders,
    examples_from_layers,
)
from ._registry import get_widget, register_widget
from ._training_job import TrainingResult, _segment_plane_body, train_and_save

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: The live plot is redrawn at most this often (seconds).
PLOT_INTERVAL = 0.3
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


# ---------------------------------------------------------------------- the widget
def _kept_weights(metadata: dict) -> str:
    """One sentence on which weights were kept and why (from the fine-tuning metadata)."""
    training = metadata.get("training") or {}
    step = training.get("selected_step")
    if step is None:
        return ""
    if training.get("selected") == "latest":
        why = "no object was held out for validation" if training.get("n_val_objects") == 0 else "as asked"
        return f"Kept the latest weights ({why})."
    if step == 0:
        return "Kept the starting weights: no step did better on the held-out part."
    by = "validation loss" if training.get("selection_metric") == "loss" else "validation AP@0.5"
    return f"Kept the weights of step {step} (best {by})."


class FinetuneWidget(Container):
    """Dock widget "Fine-tune": corrected slices, settings, Start / Stop, live curves, models.

    Signals
    -------
    model_trained(str)
        Path of a newly saved fine-tuned model.
    """

    model_trained = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self._segment_worker = None
        self._stop_event: threading.Event | None = None
        self._tracker: CorrectedSlices | None = None
        self._extra_sources: list[LayerPairSource | FolderSource] = []
        self._history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "ap50": []}
        self._last_plot = 0.0
        self._run_started = 0.0
        self._pending: TrainingResult | None = None
        self._last_result: TrainingResult | None = None

        # --- training data
        self._image_combo = ComboBox(label="Image", choices=self._image_choices)
        self._labels_combo = ComboBox(label="Masks", choices=self._labels_choices,
                                      tooltip="The Labels layer you correct; its changed slices are the examples.")
        self._corrected_info = Label(label="Corrected", value="")
        self._corrected_list = Select(label="Slices", choices=self._corrected_choices)
        self._corrected_list.native.setMaximumHeight(110)
        self._mark_button = PushButton(text="Mark current slice as correct")
        self._unmark_button = PushButton(text="Unmark selected")
        self._jump_button = PushButton(text="Go to selected")
        # --- more examples
        self._extra_image_combo = ComboBox(label="Other image", choices=self._image_choices)
        self._extra_labels_combo = ComboBox(label="Its labels", choices=self._any_labels_choices,
                                            tooltip="A Labels layer, or an Image layer holding label ids.")
        self._add_pair_button = PushButton(text="Add layer pair")
        self._image_folder = FileEdit(label="Image folder", mode="d")
        self._labels_folder = FileEdit(label="Label folder", mode="d")
        self._add_folder_button = PushButton(text="Add folders")
        self._extra_list = Select(label="Extra examples", choices=self._extra_choices)
        self._extra_list.native.setMaximumHeight(80)
        self._remove_extra_button = PushButton(text="Remove selected examples")
        # --- model and settings
        self._base_model = ComboBox(label="Base model", choices=self._model_choices)
        self._name = LineEdit(label="New model name")
        self._steps = SpinBox(label="Steps", min=0, max=1_000_000, step=50, value=300,
                              tooltip="Training steps (0 = only the time budget limits the run).")
        self._time_budget = FloatSpinBox(label="Time budget (min)", min=0.0, max=24 * 60, step=1.0, value=0.0,
                                         tooltip="Stop after this many minutes (0 = no limit); whichever comes first.")
        self._lr = FloatSpinBox(label="Learning rate", min=1e-6, max=1.0, step=1e-4, value=1e-3,
                                tooltip="Peak AdamW learning rate (warm-up, then cosine decay).")
        self._lr.native.setDecimals(6)
        self._patch_size = SpinBox(label="Patch size", min=32, max=1024, step=16, value=256)
        self._augment = CheckBox(text="Augmentation (flips, rotations, intensity)", value=True)
        # advanced
        self._batch_size = SpinBox(label="Batch size", min=1, max=64, value=4)
        self._device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto")
        self._seed = SpinBox(label="Random seed", min=0, max=2**31 - 1, value=0)
        # --- run
        self._start_button = PushButton(text="Start")
        self._stop_button = PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self._status = Label(label="Status", value="Correct some slices, then Start.")
        self._best_label = Label(label="Best", value="–")
        self._device_label = Label(label="Device", value="")
        for label in (self._status, self._corrected_info, self._best_label):
            label.native.setWordWrap(True)
        self._save_again_button = PushButton(text="Save again", visible=False)
        # --- manage models
        self._manage_combo = ComboBox(label="Your models", choices=self._user_model_choices)
        self._rename_edit = LineEdit(label="New name")
        self._rename_button = PushButton(text="Rename")
        self._delete_button = PushButton(text="Delete…")
        self._export_button = PushButton(text="Export…")

        self.extend([
            self._image_combo, self._labels_combo, self._corrected_info, self._corrected_list,
            self._mark_button, self._unmark_button, self._jump_button,
            self._base_model, self._name, self._steps, self._time_budget, self._lr, self._patch_size,
            self._augment,
        ])
        self._advanced = self._collapsible("Advanced", [self._batch_size, self._device, self._seed])
        self._more_examples = self._collapsible("More examples", [
            self._extra_image_combo, self._extra_labels_combo, self._add_pair_button,
            self._image_folder, self._labels_folder, self._add_folder_button,
            self._extra_list, self._remove_extra_button,
        ])
        self._run_box = Container(widgets=[
            self._start_button, self._stop_button, self._progress, self._status, self._best_label,
            self._device_label, self._save_again_button,
        ], labels=True)
        self.native.layout().addWidget(self._run_box.native)
        self._canvas, self._figure = self._make_plot()
        self.native.layout().addWidget(self._canvas)
        self._manage = self._collapsible("Manage models", [
            self._manage_combo, self._rename_edit, self._rename_button, self._delete_button, self._export_button,
        ])

        # --- connections
        self._image_combo.changed.connect(self._on_image_changed)
        self._labels_combo.changed.connect(self._on_labels_changed)
        self._mark_button.changed.connect(self.mark_current_slice)
        self._unmark_button.changed.connect(self.unmark_selected)
        self._jump_button.changed.connect(self.jump_to_selected)
        self._add_pair_button.changed.connect(self._add_pair_clicked)
        self._add_folder_button.changed.connect(self._add_folder_clicked)
        self._remove_extra_button.changed.connect(self._remove_extra_clicked)
        self._base_model.changed.connect(self._suggest_name)
        self._start_button.changed.connect(self.start)
        self._stop_button.changed.connect(self.stop)
        self._save_again_button.changed.connect(self._save_again)
        self._rename_button.changed.connect(self._rename_clicked)
        self._delete_button.changed.connect(self._delete_clicked)
        self._export_button.changed.connect(self._export_clicked)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self._on_layers_changed)
        self.native.destroyed.connect(self._on_destroyed)

        self._on_image_changed()
        self._on_labels_changed()
        self._suggest_name()
        self._show_device()
        register_widget(viewer, "finetune", self)

    # ------------------------------------------------------------------ layout helpers
    def _collapsible(self, title: str, widgets: list) -> Container:
        from superqt import QCollapsible

        box = Container(widgets=widgets, labels=True)
        collapsible = QCollapsible(title)
        collapsible.addWidget(box.native)
        self.native.layout().addWidget(collapsible)
        box._collapsible = collapsible  # keep for tests/expansion
        return box

    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3.6, 2.2), dpi=90, tight_layout=True)
        ax = figure.add_subplot(111)
        self._ax_loss = ax
        self._ax_val = ax.twinx()
        (self._loss_line,) = ax.plot([], [], color="tab:blue", lw=1, label="training loss")
        (self._val_line,) = self._ax_val.plot([], [], "o-", color="tab:orange", ms=3, lw=1, label="validation AP50")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8, color="tab:blue")
        self._ax_val.set_ylabel("AP50", fontsize=8, color="tab:orange")
        self._ax_val.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        self._ax_val.tick_params(labelsize=7)
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(170)
        return canvas, figure

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _any_labels_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image, Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, (Labels, Image))]

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from napari_unet.core.catalog import list_models

        return [(e.label, str(e.path)) for e in list_models()]

    def _user_model_choices(self, _widget=None) -> list[str]:
        from napari_unet.core.catalog import user_models

        return [e.name for e in user_models()]

    def _corrected_choices(self, _widget=None) -> list[tuple[str, Any]]:
        if self._tracker is None:
            return []
        return [(format_plane(p), p) for p in self._tracker.planes]

    def _extra_choices(self, _widget=None) -> list[tuple[str, int]]:
        return [(src.description, i) for i, src in enumerate(self._extra_sources)]

    def refresh_models(self) -> None:
        """Reload the model lists (after training, renaming, deleting)."""
        current = self._base_model.value
        self._base_model.reset_choices()
        if current in [v for _l, v in self._model_choices()]:
            self._base_model.value = current
        self._manage_combo.reset_choices()

    def _on_layers_changed(self, event: Any = None) -> None:
        for combo in (self._image_combo, self._labels_combo, self._extra_image_combo, self._extra_labels_combo):
            combo.reset_choices()
        # a new "<image> masks" layer (e.g. made by the Segment widget) is the one to correct
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        image = self._image_combo.value
        if added is not None and image is not None and getattr(added, "name", None) == f"{image.name} masks":
            self._on_image_changed()

    def _on_image_changed(self, *_args) -> None:
        """Select "<image> masks" when it exists."""
        image = self._image_combo.value
        if image is None:
            return
        wanted = f"{image.name} masks"
        for name, layer in self._labels_choices():
            if name == wanted:
                self._labels_combo.value = layer
                break

    def _on_labels_changed(self, *_args) -> None:
        layer = self._labels_combo.value
        if self._tracker is not None:
            try:
                self._tracker.changed.disconnect(self._update_corrected)
            except (ValueError, RuntimeError):
                pass
        self._tracker = CorrectedSlices.for_layer(layer) if layer is not None else None
        if self._tracker is not None:
            self._tracker.changed.connect(self._update_corrected)
        self._update_corrected()

    def _update_corrected(self, *_args) -> None:
        planes = self._tracker.planes if self._tracker is not None else []
        if not planes:
            self._corrected_info.value = "none yet: correct masks or mark a slice"
        else:
            shown = ", ".join(format_plane(p) for p in planes[:6]) + (" …" if len(planes) > 6 else "")
            self._corrected_info.value = f"{len(planes)}: {shown}"
        selected = [p for p in (self._corrected_list.value or []) if p in planes]
        self._corrected_list.native.clear()  # rebuild so that the list stays sorted
        self._corrected_list.reset_choices()
        if selected:
            self._corrected_list.value = selected

    def _suggest_name(self, *_args) -> None:
        path = self._base_model.value
        base = Path(path).stem if path else "model"
        from napari_unet.core.catalog import suggest_model_name

        self._name.value = suggest_model_name(base)

    def _show_device(self) -> None:
        try:
            from napari_unet.core.device import describe_device, select_device

            self._device_label.value = describe_device(select_device(self._device_choice()))
        except Exception as exc:  # a broken torch install must not break the widget
            self._device_label.value = f"unknown ({one_line(exc)})"

    def _device_choice(self) -> str | None:
        value = self._device.value
        return None if value in (None, "auto") else value

    # ------------------------------------------------------------------ corrected slices
    @property
    def corrections(self) -> CorrectedSlices | None:
        """The tracker of the chosen masks layer."""
        return self._tracker

    def mark_current_slice(self, *_args) -> None:
        """Mark the slice shown now as correct (a training example) without editing it."""
        layer = self._labels_combo.value
        if layer is None or self._tracker is None:
            notify_error("Mark slice", "choose a masks (Labels) layer first.")
            return
        plane = current_plane_index(self._viewer, layer)
        self._tracker.mark(plane)

    def unmark_selected(self, *_args) -> None:
        if self._tracker is None:
            return
        for plane in list(self._corrected_list.value or []):
            self._tracker.unmark(plane)

    def jump_to_selected(self, *_args) -> None:
        selected = list(self._corrected_list.value or [])
        if selected:
            self.jump_to(selected[0])

    def jump_to(self, plane: tuple[int, ...]) -> None:
        """Show ``plane`` of the masks layer in the viewer (sets the dims sliders)."""
        layer = self._labels_combo.value
        if layer is None or not plane:
            return
        offset = self._viewer.dims.ndim - layer.ndim
        for axis, index in enumerate(plane):
            world = float(layer.translate[axis]) + float(layer.scale[axis]) * int(index)
            self._viewer.dims.set_point(axis + offset, world)

    # ------------------------------------------------------------------ extra examples
    def _add_pair_clicked(self, *_args) -> None:
        image, labels = self._extra_image_combo.value, self._extra_labels_combo.value
        if image is None or labels is None:
            notify_error("Add examples", "choose an image layer and a labels layer first.")
            return
        try:
            self.add_layer_pair(image, labels)
        except ValueError as exc:
            notify_error("Add examples", exc)

    def add_layer_pair(self, image: Any, labels: Any) -> None:
        """Use another image/labels layer pair as extra examples (checked now, read at Start)."""
        if labels is image:
            raise ValueError("choose two different layers: an image and its labels.")
        _check_pair_shapes(image, labels)
        as_label_plane(labels.data[(0,) * (labels.ndim - 2)] if labels.ndim > 2 else labels.data,
                       f"{labels.name!r}")
        source = LayerPairSource(image.name, labels.name)
        if any(isinstance(s, LayerPairSource) and s == source for s in self._extra_sources):
            return
        self._extra_sources.append(source)
        self._extra_list.reset_choices()

    def _add_folder_clicked(self, *_args) -> None:
        try:
            self.add_example_folders(self._image_folder.value, self._labels_folder.value)
        except (ValueError, OSError) as exc:
            notify_error("Add examples", exc)

    def add_example_folders(self, image_dir: str | Path, labels_dir: str | Path) -> int:
        """Read image/label file pairs from two folders as extra examples; returns how many."""
        if not str(image_dir).strip() or str(image_dir) == "." or not str(labels_dir).strip():
            raise ValueError("choose an image folder and a label folder first.")
        examples = examples_from_folders(image_dir, labels_dir)
        self._extra_sources.append(FolderSource(Path(image_dir), Path(labels_dir), examples))
        self._extra_list.reset_choices()
        notify_info(f"Added {len(examples)} examples from {Path(image_dir).name}/.")
        return len(examples)

    def _remove_extra_clicked(self, *_args) -> None:
        chosen = set(self._extra_list.value or [])
        self._extra_sources = [s for i, s in enumerate(self._extra_sources) if i not in chosen]
        self._extra_list.reset_choices()

    def gather_examples(self) -> list[Example]:
        """All training examples: the corrected planes plus the extra sources.

        Raises
        ------
        ValueError
            Missing layers, shape mismatches, labels that are not integers, no examples,
            or only background.
        """
        examples: list[Example] = []
        image, labels = self._image_combo.value, self._labels_combo.value
        planes = self._tracker.planes if self._tracker is not None else []
        if planes:
            if image is None:
                raise ValueError("choose the image whose masks you corrected.")
            examples += examples_from_layers(image, labels, planes)
        layers = self._viewer.layers
        for source in self._extra_sources:
            if isinstance(source, FolderSource):
                examples += source.examples
                continue
            if source.image_name not in layers or source.labels_name not in layers:
                raise ValueError(f"{source.description}: a layer was removed; remove this extra source.")
            extra_labels = layers[source.labels_name]
            extra_planes = None
            if extra_labels.metadata.get("napari_unet_corrected"):
                extra_planes = CorrectedSlices.for_layer(extra_labels).planes
            examples += examples_from_layers(layers[source.image_name], extra_labels, extra_planes)
        check_examples(examples)
        return examples

    def training_settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`napari_unet.core.train.finetune` from the widgets."""
        steps = int(self._steps.value)
        minutes = float(self._time_budget.value)
        if steps <= 0 and minutes <= 0:
            raise ValueError("set a number of steps or a time budget (both are 0).")
        return {
            "steps": steps if steps > 0 else None,
            "time_budget": minutes * 60.0 if minutes > 0 else None,
            "lr": float(self._lr.value),
            "patch_size": int(self._patch_size.value),
            "batch_size": int(self._batch_size.value),
            "augment": bool(self._augment.value),
            "device": self._device_choice(),
            "seed": int(self._seed.value),
        }

    # ------------------------------------------------------------------ run
    def start(self, *_args) -> None:
        """Check the inputs and start fine-tuning in a thread worker."""
        if self._worker is not None:
            notify_warning("Fine-tuning is already running; press Stop first.")
            return
        from napari_unet.core.catalog import check_model_name, check_models_dir_writable, user_model_path

        base_path = self._base_model.value
        try:
            if not base_path:
                raise ValueError("no base model: add a model file or reinstall napari-unet.")
            name = check_model_name(self._name.value)
            settings = self.training_settings()
            examples = self.gather_examples()
            check_models_dir_writable()
            target = user_model_path(name)
        except (ValueError, OSError) as exc:
            notify_error("Cannot start fine-tuning", exc)
            self._status.value = f"Not started: {one_line(exc)}"
            return
        if target.exists():
            notify_info(f"The new model will replace your model {name!r} when training ends.")
        self._stop_event = threading.Event()
        self._history = {"step": [], "loss": [], "val_step": [], "ap50": []}
        self._redraw(force=True)
        self._run_started = time.perf_counter()
        self._pending = None
        self._save_again_button.visible = False
        self._progress.value = 0
        self._best_label.value = "–"
        self._status.value = f"Fine-tuning on {len(examples)} example(s)…"
        self._set_running(True)
        self._show_device()
        from napari.qt.threading import create_worker

        worker = create_worker(
            train_and_save, base_path, examples, target, name=name, settings=settings, stop=self._stop_event,
            _start_thread=False, _ignore_errors=True,
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def stop(self, *_args) -> None:
        """Ask the training to stop after the current step; the best model so far is kept."""
        if self._stop_event is not None and self._worker is not None:
            self._stop_event.set()
            self._status.value = "Stopping after this step…"
            self._stop_button.enabled = False

    def _set_running(self, running: bool) -> None:
        self._start_button.enabled = not running
        self._stop_button.enabled = running
        for w in (self._base_model, self._name, self._rename_button, self._delete_button):
            w.enabled = not running

    def _on_destroyed(self, *_args) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    # ------------------------------------------------------------------ worker signals
    def _on_yielded(self, event: Any) -> None:
        from napari_unet.core.events import TrainStep, Validation

        if isinstance(event, TrainStep):
            self._history["step"].append(event.step)
            self._history["loss"].append(float(event.loss))
            self._progress.value = int(round(1000 * min(1.0, max(0.0, event.fraction))))
            total = f"/{event.total_steps}" if event.total_steps else ""
            left = format_seconds(event.eta)
            self._status.value = f"step {event.step}{total}, loss {event.loss:.3f}" + (f" — {left} left" if left else "")
        elif isinstance(event, Validation):
            self._history["val_step"].append(event.step)
            self._history["ap50"].append(float(event.ap50))
            self._best_label.value = f"validation AP50 {event.best_ap50:.3f}" + (
                f" (at step {event.step})" if event.is_best else f" (now {event.ap50:.3f})")
        self._redraw()

    def _redraw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_plot < PLOT_INTERVAL:
            return
        self._last_plot = now
        h = self._history
        self._loss_line.set_data(h["step"], h["loss"])
        self._val_line.set_data(h["val_step"], h["ap50"])
        self._ax_loss.relim()
        self._ax_loss.autoscale_view()
        if h["step"]:
            self._ax_loss.set_xlim(0, max(h["step"]) + 1)
        self._canvas.draw_idle()

    def _on_returned(self, result: TrainingResult) -> None:
        self._last_result = result
        took = format_seconds(time.perf_counter() - self._run_started)
        if result.model is None:
            self._status.value = "Stopped before the first step; no model was saved."
            notify_info("Fine-tuning stopped before the first step; no model was saved.")
            return
        if result.path is None:
            self._pending = result
            self._save_again_button.visible = True
            self._status.value = "Trained, but the model could not be saved."
            folder = result.target.parent if result.target is not None else "the model folder"
            notify_error(
                "Could not save the fine-tuned model",
                f"{folder}: {one_line(result.save_error or 'unknown error')}. Free disk space or fix the "
                "folder, then press 'Save again'.",
            )
            return
        metric = result.model.metadata.get("val_ap50")
        self._status.value = f"Saved {result.path.stem!r} after {result.steps} steps ({took}). " + _kept_weights(
            result.model.metadata
        )
        notify_info(f"Fine-tuned model saved as {result.path.stem!r}.")
        log.info("Saved fine-tuned model %s (metric %s)", result.path, metric)
        self._after_saved(result.path)

    def _after_saved(self, path: Path) -> None:
        self.refresh_models()
        self._suggest_name()
        self.model_trained.emit(str(path))
        self.resegment_current_view(path)

    def _save_again(self, *_args) -> None:
        result = self._pending
        if result is None or result.target is None:
            return
        from napari_unet.core.checkpoint import save_model

        try:
            path = save_model(result.model, result.target)
        except OSError as exc:
            notify_error("Could not save the fine-tuned model", exc)
            return
        self._pending = None
        self._save_again_button.visible = False
        self._status.value = f"Saved {path.stem!r}."
        self._after_saved(path)

    def _on_error(self, exc: BaseException) -> None:
        notify_error("Fine-tuning failed", exc)
        self._status.value = f"Failed: {one_line(exc)}"

    def _on_finished(self) -> None:
        self._redraw(force=True)
        self._set_running(False)
        self._progress.value = self._progress.value if self._status.value.startswith("Failed") else 1000
        self._worker = None
        self._stop_event = None

    # ------------------------------------------------------------------ re-segmentation
    def resegment_current_view(self, model_path: str | Path) -> None:
        """Segment the current view again with ``model_path``, leaving corrected slices alone.

        Uses the docked Segment widget of this viewer when there is one; otherwise segments
        the current slice of the chosen image into the chosen masks layer here.
        """
        segment_widget = get_widget(self._viewer, "segment")
        if segment_widget is not None and hasattr(segment_widget, "segment_current_view"):
            try:
                segment_widget.segment_current_view(str(model_path))
            except Exception as exc:  # never break the loop over the other widget
                notify_error("Segmenting again", exc)
            return
        image, labels = self._image_combo.value, self._labels_combo.value
        if image is None or labels is None:
            return
        try:
            _check_pair_shapes(image, labels)
        except ValueError as exc:
            notify_warning(f"Not segmenting again: {one_line(exc)}")
            return
        plane = current_plane_index(self._viewer, labels)
        tracker = CorrectedSlices.for_layer(labels)
        if plane in tracker:
            self._status.value += f" The current {format_plane(plane)} is a corrected one; left as it is."
            return
        from napari.qt.threading import create_worker

        image_plane = _plane_of(image.data, plane)
        worker = create_worker(_segment_plane_body, str(model_path), image_plane, bool(image.rgb),
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._write_plane(labels, plane, result))
        worker.errored.connect(lambda exc: notify_error("Segmenting again", exc))
        worker.finished.connect(self._segment_finished)
        self._segment_worker = worker
        worker.start()

    def _segment_finished(self) -> None:
        self._segment_worker = None

    def _write_plane(self, layer: Any, plane: tuple[int, ...], result: np.ndarray) -> None:
        if layer not in self._viewer.layers:
            return
        tracker = CorrectedSlices.for_layer(layer)
        if plane in tracker:  # corrected while the model ran: the user's work wins
            return
        with tracker.suspended():
            if plane:
                layer.data[plane] = result.astype(layer.data.dtype, copy=False)
            else:
                layer.data[...] = result.astype(layer.data.dtype, copy=False)
        layer.refresh()

    # ------------------------------------------------------------------ manage models
    def _ask_confirmation(self, text: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Question, "napari-unet", text, QMessageBox.Yes | QMessageBox.No, self.native)
        box.setDefaultButton(QMessageBox.No)
        return box.exec_() == QMessageBox.Yes

    def _rename_clicked(self, *_args) -> None:
        name, new_name = self._manage_combo.value, self._rename_edit.value
        if not name:
            notify_error("Rename model", "you have no models of your own yet.")
            return
        from napari_unet.core.catalog import rename_model

        try:
            rename_model(name, new_name)
        except (ValueError, OSError) as exc:
            notify_error("Rename model", exc)
            return
        self.refresh_models()
        self._manage_combo.value = new_name.strip()
        self._rename_edit.value = ""

    def _delete_clicked(self, *_args) -> None:
        name = self._manage_combo.value
        if not name:
            notify_error("Delete model", "you have no models of your own yet.")
            return
        if not self._ask_confirmation(f"Delete your model {name!r}? This cannot be undone."):
            return
        from napari_unet.core.catalog import delete_model

        try:
            delete_model(name)
        except (ValueError, OSError) as exc:
            notify_error("Delete model", exc)
            return
        self.refresh_models()

    def _export_clicked(self, *_args) -> None:
        from qtpy.QtWidgets import QFileDialog

        name = self._manage_combo.value
        if not name:
            notify_error("Export model", "you have no models of your own yet.")
            return
        path, _ = QFileDialog.getSaveFileName(self.native, "Export model", f"{name}.pt", "Models (*.pt)")
        if path:
            self.export_model(path)

    def export_model(self, destination: str | Path, name: str | None = None) -> Path | None:
        """Copy the chosen model (or ``name``) to ``destination``; returns the file written."""
        from napari_unet.core.catalog import export_model, find_model

        chosen = name is None  # the user's model chosen in the list, or any model by name
        name = self._manage_combo.value if chosen else name
        try:
            written = export_model(find_model(name, user_only=True).path if chosen else name, destination)
        except (ValueError, OSError) as exc:
            notify_error("Export model", exc)
            return None
        notify_info(f"Exported {name!r} to {written}.")
        return written
