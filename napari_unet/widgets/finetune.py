"""The Fine-tune dock widget: the human-in-the-loop.

1. The user corrects masks in "<image> masks"; the corrected slices are listed, and more
   examples can come from other layer pairs or folders.
2. Start fine-tunes the chosen base model on those examples in a napari thread worker, with
   progress, time left and live curves while the viewer stays usable (painting included).
3. The best model is saved atomically in the user's model folder and appears in every model
   list; :attr:`FinetuneWidget.model_trained` says so, and the Segment widget of the same
   viewer segments the current view again with it (corrected slices are left alone).

The widget stacks the panels of :mod:`._finetune` and wires them together; gathering and
checking examples lives in :mod:`._examples`, the worker body in :mod:`._training_job`, the
model catalog in :mod:`napari_unet.core.catalog`. torch is imported lazily so napari starts fast.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container
from psygnal import Signal

from . import _heap
from ._base import (
    ask_before_closing_with_unsaved_masks,
    disconnect_all,
    full_resolution,
    notify_error,
    notify_info,
    notify_warning,
    one_line,
    scroll_when_short,
    tab_with_plugin_docks,
    warm_up_in_background,
    when_undocked,
)
from ._corrections import CorrectedSlices
from ._examples import check_examples, read_examples
from ._finetune.curves import LiveCurves
from ._finetune.models import ModelsPanel
from ._finetune.run import TrainingRunPanel
from ._finetune.settings import TrainingSettingsPanel
from ._finetune.slices import CorrectedSlicesPanel
from ._finetune.sources import ExtraExamplesPanel
from ._finetune.ui import ask, collapsible
from ._napari_compat import unwrap_proxy
from ._registry import all_widgets, get_widget, register_widget

if TYPE_CHECKING:
    import napari

#: The plugin's own name and the Segment widget's display name (napari.yaml).
_PLUGIN, _SEGMENT = "napari-unet", "Segment"


class FinetuneWidget(Container):
    """Dock widget "Fine-tune": corrected slices, settings, more examples, Start / Stop with
    live curves, and the user's models.

    Attributes
    ----------
    corrected_panel, settings_panel, examples_panel, run_panel, models_panel
        The panels (see :mod:`napari_unet.widgets._finetune`), top to bottom; the live
        curves (``run_panel.curves``) sit below the run panel.

    Signals
    -------
    model_trained(str)
        Path of a newly saved fine-tuned model. Connected to :meth:`resegment_current_view`.
    """

    model_trained = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        #: The open "replace your model?" question (a QMessageBox), None when none is open.
        self.replace_question = None
        self._trained_on: Any = None  # weak reference to the image layer the last run learnt from (None: files)
        self.corrected_panel = CorrectedSlicesPanel(viewer)
        self.settings_panel = TrainingSettingsPanel()
        self.examples_panel = ExtraExamplesPanel(viewer)
        self.run_panel = TrainingRunPanel(LiveCurves())
        self.models_panel = ModelsPanel()
        layout = self.native.layout()
        for panel in (self.corrected_panel, self.settings_panel):  # flush with the window, as before
            panel.margins = (0, 0, 0, 0)
        layout.addWidget(self.corrected_panel.native)
        layout.addWidget(self.settings_panel.native)
        more_examples = collapsible("More examples", self.examples_panel)
        layout.addWidget(more_examples)
        manage_models = collapsible("Manage models", self.models_panel)
        layout.addWidget(manage_models)
        layout.addWidget(self.run_panel.native)
        layout.addWidget(self.run_panel.curves.canvas)
        # shown from the first Start: until then its 170 px go to the settings (292 -> 468 px of them on a
        # 1366 x 768 screen, where Steps, Time budget and Learning rate were below the fold)
        self.run_panel.curves.canvas.setVisible(False)

        self.run_panel.start_requested.connect(self.start)
        self.run_panel.running_changed.connect(self.settings_panel.set_running)
        self.run_panel.running_changed.connect(self.models_panel.set_running)
        self.run_panel.saved.connect(self._on_model_saved)
        self.models_panel.model_renamed.connect(self._on_model_renamed)
        self.models_panel.models_changed.connect(self.refresh_models)
        self.model_trained.connect(self.resegment_current_view)
        self.run_panel.show_device(self.settings_panel.device_choice())
        register_widget(viewer, "finetune", self)
        segment = get_widget(viewer, "segment")
        if segment is not None:  # the base model: the one Segment uses (see TrainingSettingsPanel.follow)
            self.settings_panel.follow(segment._model_combo.value)
        _heap.add_host(self, self.native, viewer)  # full garbage collections kept short (see _heap)
        self._dock_closed = False
        when_undocked(self.native, self._closed)
        tab_with_plugin_docks(self.native)  # (beside the plugin's other docks, not under them)
        ask_before_closing_with_unsaved_masks(viewer)  # (the user's edits are not lost unasked)
        warm_up_in_background("segmenting", "training")  # the first run then holds up the window less
        # (a dock shorter than its controls: a laptop's screen); the run's status lines and curves stay below
        scroll_when_short(self, only=(self.corrected_panel.native, self.settings_panel.native, more_examples,
                                      manage_models))

    @property
    def corrections(self) -> CorrectedSlices | None:
        """The tracker of the chosen masks layer."""
        return self.corrected_panel.corrections

    def gather_examples(self, read: bool = True) -> list[Any]:
        """All training examples: the corrected planes plus the extra sources.

        ``read=False``: checked where that costs no copy, still to be read
        (:func:`._examples.read_examples`, in the training worker: Start).

        Raises
        ------
        ValueError
            Missing layers, shape mismatches, labels that are not integers, no examples,
            or only background.
        """
        corrected = self.corrected_panel.examples(read=False)
        # the corrected slices given again under More examples (their layer pair added) count once;
        # the extra sources among themselves are not compared (two folders may hold files named alike)
        known = {ex.source for ex in corrected}
        examples = corrected + [ex for ex in self.examples_panel.examples(read=False) if ex.source not in known]
        left = ", ".join(repr(n) for n in self._corrections_left_out(examples))
        if not examples and left:  # (it said "No corrected slice yet" of the masks chosen)
            raise ValueError(f"the slices you corrected are in {left}: choose their image under Corrected slices, "
                             "or add the pair under More examples (Add layer pair).")
        check_examples(examples)
        if left:
            notify_warning(f"The slices you corrected in {left} are not in this run: Fine-tune learns from the masks "
                           "chosen under Corrected slices; add the others under More examples (Add layer pair).")
        if close := self._corrected_close_together():
            notify_warning(close)
        if not read:
            return examples
        from napari_unet.core.events import TrainNote

        reading = read_examples(examples)
        while True:
            try:
                event = next(reading)
            except StopIteration as done:
                return done.value
            if isinstance(event, TrainNote):
                notify_info(event.message)

    def _corrected_close_together(self) -> str:
        """Advice when the corrected slices of a stack (5 slices or more along an axis) all lie within a
        third of it: the model learns, and is checked, on how the cells look there only (C2C12 frames 0
        and 1 corrected: AP@0.5 on the other frames 0.51 -> 0.41; frames 0 and 9: 0.50 -> 0.69)."""
        panel = self.corrected_panel
        planes = panel.corrections.planes if panel.corrections is not None else []
        masks = panel._labels_combo.value
        if len(planes) < 2 or masks is None:
            return ""
        for axis, n in enumerate(masks.data.shape[: len(planes[0])]):
            first, last = min(p[axis] for p in planes), max(p[axis] for p in planes)
            if n >= 5 and last - first + 1 < n / 3:
                return (f"The slices you corrected lie close together ({first} to {last} of {n}): the model learns, "
                        "and is checked, only on how the cells look there. Correct a slice from elsewhere in the "
                        "stack too (the last one, say) before segmenting it whole with the new model.")
        return ""

    def _corrections_left_out(self, examples: list[Any]) -> list[str]:
        """Masks layers with corrected slices that are not among the examples (another image's,
        corrected before this one was segmented): Fine-tune learns from the masks chosen under
        Corrected slices and the extra examples only."""
        from napari.layers import Labels

        def used(name: str) -> bool:  # (sources read "'name'" or "'name', slice 3"; names may hold commas)
            return any(ex.source == repr(name) or ex.source.startswith(f"{name!r}, ") for ex in examples)

        return [layer.name for layer in self._viewer.layers if isinstance(layer, Labels)
                and (tracker := CorrectedSlices.existing(layer)) is not None and tracker.planes
                and not used(layer.name)]

    def training_settings(self) -> dict:
        """Keyword arguments for :func:`napari_unet.core.train.finetune` from the widgets."""
        return self.settings_panel.training_settings()

    # ------------------------------------------------------------------ run
    def start(self, *_args) -> None:
        """Check the inputs and start fine-tuning in a thread worker.

        When a model of the new name exists (the base model included), the user is asked
        first (:attr:`replace_question`); training starts only after "Replace".
        """
        if self.run_panel.is_running:
            notify_warning("Fine-tuning is already running; press Stop first.")
            return
        if self.replace_question is not None:
            self.replace_question.raise_()
            return
        if self.examples_panel.reading is not None:  # (it trained without them, and "Added N examples" came after)
            notify_warning("The folder of examples is still being read: press Start once it says "
                           "\"Added ... examples\".")
            self.run_panel.set_status("Not started: the folder of examples is still being read.")
            return
        from napari_unet.core.catalog import check_model_name, check_models_dir_writable, user_model_path

        base_path = self.settings_panel.base_model_path
        try:
            if not base_path:
                raise ValueError("no base model: add a model file or reinstall napari-unet.")
            name = check_model_name(self.settings_panel.model_name)
            settings = self.training_settings()
            examples = self.gather_examples(read=False)  # (read in the worker)
            check_models_dir_writable()
            target = user_model_path(name)
        except (ValueError, OSError) as exc:
            notify_error("Cannot start fine-tuning", exc)
            self.run_panel.set_status(f"Not started: {one_line(exc)}")
            return
        # the image whose corrected slices this run learns from: segmented again when it ends
        corrected_image = self.corrected_panel.corrected_image

        def launch() -> None:
            # weakly: a removed image must not stay in memory until the next run
            self._trained_on = weakref.ref(unwrap_proxy(corrected_image)) if corrected_image is not None else None
            self.run_panel.show_device(settings["device"])
            # the model there now is the one the user agreed to replace (asked just before); one saved
            # there anew while this run trains (deleted and trained again in another window) is kept
            from napari.layers import Labels

            from napari_unet.core.catalog import file_identity

            read_from = []  # (the labels layers, and their slices, the worker reads after Start)
            for layer in self._viewer.layers:
                data = full_resolution(layer) if isinstance(layer, Labels) else None
                # (a lazily read pair's slices are found in the worker, and cannot be edited: left out)
                planes = [ex.plane for ex in examples if data is not None and getattr(ex, "plane", None) is not None
                          and getattr(ex, "labels_data", None) is data]
                if planes:
                    read_from.append((unwrap_proxy(layer), planes))
            self.run_panel.launch(base_path, examples, target, name=name, settings=settings,
                                  replace=file_identity(target) or False, read_from=read_from)

        if target.exists():
            self._ask_to_replace(name, Path(base_path).resolve() == target.resolve(), launch)
        else:
            launch()

    def _ask_to_replace(self, name: str, is_base: bool, launch) -> None:
        """Ask before a run whose model would replace the user's model ``name``."""
        which = "your model" + (" (the base model of this run)" if is_base else "")

        def answered(replace: bool) -> None:
            self.replace_question = None
            if replace:
                launch()
            else:
                self.run_panel.set_status(f"Not started: {name!r} is taken; choose another new model name.")

        self.run_panel.set_status(f"{name!r} exists: replace it?")
        self.replace_question = ask(
            self.native,
            f"A model named {name!r} exists: {which}. Fine-tuning will replace it with the new model "
            "when training ends. Replace it?",
            answered, yes="Replace", no="Keep it",
        )

    def stop(self, *_args) -> None:
        """Ask the training to stop after the current step; the best model so far is kept."""
        self.run_panel.stop()

    def reset_choices(self, *_args) -> None:
        """napari calls this on layer events: the model lists are read from disk again too (a model saved
        by ``napari-unet train`` or deleted in a file manager; the panels sit in the layout, where the
        container's own reset never reached them: a model Segment listed could not be renamed here)."""
        super().reset_choices()
        self._reload_model_lists(segment_too=False)  # (Segment gets the same event from napari)

    def refresh_models(self, *_args) -> None:
        """Reload the model lists (after training, renaming, deleting), Segment's too, and those of the
        other open viewers (a model trained in one was not listed in the other until a layer changed)."""
        self._reload_model_lists(segment_too=True)
        for segment in all_widgets("segment"):
            if get_widget(self._viewer, "segment") is not segment:
                segment.refresh_models()
        for other in all_widgets("finetune"):
            if other is not self:
                other._reload_model_lists(segment_too=False)

    def _reload_model_lists(self, segment_too: bool) -> None:
        """This widget's model lists read again, the base following Segment's model (unless chosen here)."""
        self.settings_panel.refresh_models()
        self.models_panel.refresh()
        segment = get_widget(self._viewer, "segment")
        if segment is not None:
            if segment_too:
                segment.refresh_models()
            self.settings_panel.follow(segment._model_combo.value)

    def export_model(self, destination: str | Path, name: str | None = None) -> Path | None:
        """Copy the chosen model of "Manage models" (or ``name``) to ``destination``."""
        return self.models_panel.export_model(destination, name)

    def _on_model_renamed(self, old_path: str, new_path: str) -> None:
        """A model renamed under Manage models stays chosen where it was chosen (the base model
        here, the model of Segment), under its new name."""
        def same(a: Any, b: str) -> bool:
            return bool(a) and Path(str(a)).resolve() == Path(b).resolve()

        # every open viewer's: another viewer's Segment said the model "gone" and fell back to a built-in one
        finetunes = [self] + [other for other in all_widgets("finetune") if other is not self]
        segments = {id(segment._model_combo): segment for segment in all_widgets("segment")}
        combos = [finetune.settings_panel._base_model for finetune in finetunes]
        combos += [segment._model_combo for segment in segments.values()]
        chosen = [combo for combo in combos if same(combo.value, old_path)]
        with self.settings_panel.code_sets_base():  # the same model under its new name: nobody's new choice
            for combo in combos:
                if id(combo) in segments and combo in chosen:  # (its threshold and min. size stay the user's)
                    segments[id(combo)].follow_renamed_model(old_path, new_path)
                else:
                    combo.reset_choices()
            for combo in chosen:
                match = next((v for v in combo.choices if same(v, new_path)), None)
                if match is not None and id(combo) not in segments:
                    combo.value = match
        for segment in segments.values():
            segment.masks_follow_renamed_model(old_path, new_path)
        for finetune in finetunes:  # the trained weights offered in place of a model just renamed: in its place
            finetune.run_panel.follow_renamed(old_path, new_path)

    def _closed(self) -> None:
        """The dock was closed (napari keeps the widget, hidden; the Plugins menu makes a new one): its
        training stops after the current step, the best weights so far saved, as when the window
        closes (it went on, and the new Fine-tune could start a second run beside it, saved as
        "NAME-2"); the widget no longer follows the layers, nor segments again when the run ends."""
        from ._registry import unregister_widget

        self._dock_closed = True
        self.run_panel.stop()
        events = self._viewer.layers.events
        disconnect_all(*((event, panel._on_layers_changed) for panel in (self.corrected_panel, self.examples_panel)
                         for event in (events.inserted, events.removed, events.moved, events.renamed)))
        unregister_widget(self._viewer, "finetune", self)

    def _on_model_saved(self, path: str) -> None:
        self.refresh_models()
        self.settings_panel.suggest_name(force=True)  # the name just used is taken now
        self.model_trained.emit(path)

    # ------------------------------------------------------------------ re-segmentation
    def resegment_current_view(self, model_path: str | Path) -> None:
        """Have the Segment widget of this viewer segment the image this run learnt from (its
        current view, past the slices the user corrected) with ``model_path``.

        The Segment widget is docked first when it is not there. When the run learnt from files
        alone (or the image was removed meanwhile), or kept the weights it started from, Segment only
        selects the new model.
        """
        if self._dock_closed:  # (its model is listed in Segment: refresh_models)
            return
        segment = get_widget(self._viewer, "segment") or self._dock_segment_widget()
        if segment is None:
            return
        # the weights the run started from, kept (no step clearly better): the same masks again, so only chosen
        again = self._trained_on is not None and not self.run_panel.saved_start_weights
        try:
            segment.use_new_model(str(model_path), self._trained_on() if again else None)
        except Exception as exc:  # never break the loop over the other widget
            notify_error("Segmenting again", exc)

    def _dock_segment_widget(self):
        """Dock the plugin's Segment widget in this viewer; None (and a warning) if that fails."""
        try:
            self._viewer.window.add_plugin_dock_widget(_PLUGIN, _SEGMENT, tabify=True)
        except Exception as exc:  # no window (a headless viewer model), plugin not registered, ...
            notify_warning(f"Open {_SEGMENT} to segment with the new model ({one_line(exc)}).")
            return None
        return get_widget(self._viewer, "segment")
