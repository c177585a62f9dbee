"""The run panel: Start / Stop, progress, status, the best score so far and the live curves.

Training runs :func:`napari_unet.widgets._training_job.train_and_save` in a napari thread
worker: its progress events come back through ``yielded`` (progress bar, time left, curves)
while the viewer stays usable, and its :class:`~napari_unet.widgets._training_job.TrainingResult`
through ``returned``. A model that could not be saved is kept for "Save again".

Closing the viewer during training keeps the best model so far: napari asks every running
task to quit when its window closes, and this worker's ``quit`` means "stop after this
step, save the best weights" (see :class:`TrainingWorker`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import GeneratorWorker
from psygnal import Signal

from .._base import (
    carry_runtime_errors,
    device_words_at_once,
    format_seconds,
    gpu_hint,
    hand_over,
    launch,
    notify_error,
    notify_info,
    notify_warning,
    one_line,
    original_error,
    show_when_known,
    titled,
    wrap_text,
)
from .._corrections import touches_of
from .._examples import Example
from .._training_job import TrainingResult, train_and_save
from .curves import LiveCurves

log = logging.getLogger(__name__)

#: When the window closes during training, it waits at most this long (seconds) for the
#: training to stop after its current step and save the best model so far.
CLOSE_WAIT_SECONDS = 30.0


def _train_then_signal(done: threading.Event, *args: Any, **kwargs: Any):
    """:func:`train_and_save`, setting ``done`` once it has ended (saved, stopped or failed)."""
    try:
        return (yield from carry_runtime_errors(train_and_save(*args, **kwargs)))
    finally:
        done.set()
        # the training's batches, activations and gradients are freed by now, but glibc keeps them resident
        # (about 300 MB after a run of the built-in model on a CPU, never reused by napari): give them back
        from napari_unet.core.device import give_freed_memory_back

        give_freed_memory_back()


class TrainingWorker(GeneratorWorker):
    """A training worker whose ``quit()`` keeps the work: it asks the training to stop after
    the current step and waits (at most :data:`CLOSE_WAIT_SECONDS`) until the best model so
    far is saved, instead of abandoning the generator as napari's workers do.

    napari calls ``quit()`` on every running task when the viewer's window closes.

    Attributes
    ----------
    stop_event, done : threading.Event
        Set to stop the training; set by the worker body once it has ended.
    on_quit : callable or None
        Called first by ``quit()`` (the panel detaches itself from the worker).
    """

    def __init__(self, func, done: threading.Event, *args: Any, **kwargs: Any) -> None:
        super().__init__(func, done, *args, **kwargs)
        self.stop_event: threading.Event = kwargs["stop"]
        self.done = done
        self.began = threading.Event()  # set as its thread begins
        self.on_quit: Callable[[], None] | None = None

    def run(self) -> None:
        self.began.set()
        super().run()

    def quit(self) -> None:
        if self.done.is_set():
            return
        if self.on_quit is not None:
            self.on_quit()
        self.stop_event.set()
        if not self.began.is_set():  # it stops as it begins: nothing trained, nothing to wait for (the
            return  # window, closed just after Start, waited 30 s for a run that could not begin meanwhile)
        if not self.done.wait(CLOSE_WAIT_SECONDS):
            log.warning("Fine-tuning did not stop within %.0f s of closing; it goes on in the background "
                        "and saves its model when it ends.", CLOSE_WAIT_SECONDS)


def _starting_weights(metadata: dict) -> bool:
    """Whether a fine-tuned model kept the weights its run started from (no step clearly better)."""
    return (metadata.get("training") or {}).get("selected_step") == 0


def _kept_weights(metadata: dict) -> str:
    """One sentence on which weights were kept and why (from the fine-tuning metadata); for slices of
    3D objects, a second on checking the new model in 3D."""
    said = _which_weights(metadata)
    training = metadata.get("training") or {}
    if said and training.get("sections") and training.get("selected_step"):
        # (trained and validated on xy planes: on the synthetic nuclei its 3D objects came out worse than the
        # starting model's, 3D AP 0.78 -> 0.26-0.61, while the planes' AP rose)
        said += (" It was validated plane by plane: check its 3D objects on a volume you did not correct "
                 "before relying on it.")
    return said


def _which_weights(metadata: dict) -> str:
    """(see :func:`_kept_weights`)"""
    training = metadata.get("training") or {}
    step = training.get("selected_step")
    if step is None:
        return ""
    if training.get("selected") == "latest":
        why = "no object was held out for validation" if training.get("n_val_objects") == 0 else "as asked"
        return f"Kept the latest weights ({why})."
    if step == 0:
        if training.get("gate_kept_start"):  # (the gate: see napari_unet.core.validation)
            base = f"{metadata['base_model']!r}" if metadata.get("base_model") else "the model it started from"
            said = (f"Kept the starting weights: the steps that scored higher on the cells held out of your "
                    f"slices were not clearly better than {base} there.")
            if training.get("stopped_early"):
                return f"{said} The run was stopped early: a longer run may do better."
            return (f"{said} A closer fit to the slices you corrected often does worse on other images. Correct "
                    "cells on other slices or fields, then fine-tune again.")
        n = training.get("n_val_objects")
        cells = f"the {n} cells held out" if n else "the part held out"
        if training.get("selection_metric") == "loss":  # (no cells compared: too few held out for an AP)
            return (f"Kept the starting weights: no step had a lower validation loss on {cells} (too few cells to "
                    "count found ones). Correct cells on other slices or fields, then fine-tune again.")
        return (f"Kept the starting weights: no step found clearly more of {cells} (a score higher by a cell or "
                "so is within chance).")
    n = training.get("n_val_objects")
    if training.get("selection_metric") == "loss":  # (too few held-out cells for an AP)
        judged = f", judged on only {n} held-out cells: check them on other slices" if n else ""
        if n and training.get("val_split") in ("planes", "band"):  # (too few for the gate, see validation.py)
            judged = (f", judged on only {n} cells held out of the slices you corrected: too few to tell whether "
                      "they beat the model it started from; check the new model on a slice you did not correct")
        return f"Kept the weights of step {step} (best validation loss{judged})."
    if training.get("val_split") in ("planes", "band") and n:  # (held out of the corrected images themselves)
        # a gain there can be a closer fit to those images only: on phase contrast, fields not corrected
        # did worse than with the model it started from while this figure rose (0.77 -> 0.66 on 4 fields)
        return (f"Kept the weights of step {step} ({_best_by_ap(training, step)}, on {n} cells held out of the "
                "slices you corrected: check the new model on a slice you did not correct; the model it started "
                "from stays in Segment's list).")
    return f"Kept the weights of step {step} ({_best_by_ap(training, step)})."


def _best_by_ap(training: dict, step: int) -> str:
    """Why weights chosen by AP@0.5 were: the best AP, or, where other validations scored the same (the lower
    loss chose: "best AP@0.5" was said of AP 0.000 at every step), that."""
    history = [h for h in training.get("history") or [] if h.get("ap50") is not None]
    chosen = next((h["ap50"] for h in history if h.get("step") == step), None)
    if chosen is not None and sum(h["ap50"] == chosen for h in history) > 1:
        if chosen == 0:
            return "no held-out cell found at any validation yet, AP@0.5 0.000; the lowest validation loss"
        return f"validation AP@0.5 {chosen:.3f} at several steps; the lowest validation loss of them"
    return "best validation AP@0.5"


class TrainingRunPanel(Container):
    """Start, Stop, Progress, Status, Best, Device, Save again; it feeds ``curves``.

    The owner places ``curves.canvas`` (below this panel in the Fine-tune widget).

    Signals
    -------
    start_requested()
        Start was pressed (the owner checks the inputs and calls :meth:`launch`).
    running_changed(bool)
        A run started (True) or ended (False).
    saved(str)
        Path of a model this panel saved.
    """

    start_requested = Signal()
    running_changed = Signal(bool)
    saved = Signal(str)

    def __init__(self, curves: LiveCurves) -> None:
        super().__init__(labels=True)
        self.curves = curves
        self._worker = None
        self._stop_event: threading.Event | None = None
        self._run_started = 0.0
        self._run_name = ""  # the model name the run was started with
        # the model of that name the user agreed, at Start, to replace (its file_identity; False: none)
        self._replace: Any = False
        self._pending: TrainingResult | None = None
        #: the labels layers the run's worker reads examples of, their slices read, and those slices' edits at
        #: Start (see launch)
        self._watched: list[tuple[Any, list[Any], int]] = []
        # whether the model saved last holds the weights the run started from (Segment then only selects it)
        self.saved_start_weights = False
        self._start_button = PushButton(
            text="Start", tooltip="Fine-tune the model on the slices you corrected, in the background; it is "
                                  "saved under 'New model name', chosen in Segment when done.")
        self._stop_button = PushButton(
            text="Stop", enabled=False,
            tooltip="Stop after the current step: the best weights so far are saved as the new model.")
        self._progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        # (true before and after slices are listed: "Correct some slices" read wrong beside a list of them)
        self._status = Label(label="Status", value="Start learns from the slices listed above (correct or mark some).")
        self._best_label = Label(label="Best", value="–")
        self._best_label.tooltip = ("The best validation score so far: AP@0.5, from 0 to 1, the share of cells held "
                                    "out of training that the model finds (at least half of each right), spurious "
                                    "objects counted against it. Higher is better.")
        self._device_label = Label(label="Device", value="")
        wrap_text(self._status, self._best_label, self._device_label)
        self._save_again_button = PushButton(text="Save again", visible=False)
        # the gate kept the starting weights: the trained ones it held back, if the user wants them
        self._keep_trained_button = PushButton(text="Keep the trained weights instead", visible=False, tooltip=(
            "Save the best weights this run trained in place of the starting ones (they were not clearly better "
            "on the cells held out of your slices: check them on a slice you did not correct)."))
        self._held_back: tuple[Any, Path, Any] | None = None  # (model, where the run saved, that file's identity)
        self.extend([
            self._start_button, self._stop_button, self._progress, self._status, self._best_label,
            self._device_label, self._save_again_button, self._keep_trained_button,
        ])

        self._start_button.changed.connect(lambda *_: self.start_requested.emit())
        self._stop_button.changed.connect(self.stop)
        self._save_again_button.changed.connect(self._save_again)
        self._keep_trained_button.changed.connect(self._keep_trained)
        self.native.destroyed.connect(self._on_destroyed)

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def set_status(self, text: str) -> None:
        self._status.value = text

    def show_device(self, choice: str | None) -> None:
        """Say which device ``choice`` (None = auto) means on this machine."""
        def words() -> str:
            from napari_unet.core.device import describe_device, select_device

            return describe_device(select_device(choice))

        show_when_known(self._device_label, words, device_words_at_once(choice), waiting="checking for a GPU…")

    # ------------------------------------------------------------------ run
    def launch(self, base_path: str, examples: list[Any], target: Path, *, name: str,
               settings: dict[str, Any], replace: Any = False,
               read_from: list[tuple[Any, list[Any]]] | None = None) -> None:
        """Fine-tune ``base_path`` on ``examples`` in a thread worker; save the result to ``target``
        (replacing a model there only when ``replace``: the user agreed to it). ``read_from``: the
        labels layers the worker reads examples of (an edit, an undo, while it reads is said)."""
        self._stop_event = threading.Event()
        read = all(isinstance(ex, Example) for ex in examples)
        # (examples read already, as scripts give them: nothing is read after Start)
        self._watched = [] if read else [(weakref.ref(layer), planes, touches_of(layer, planes))
                                         for layer, planes in read_from or ()]
        self._run_name = name
        self._replace = replace
        self.curves.clear(settings.get("steps"))
        self.curves.canvas.setVisible(True)
        self._run_started = time.perf_counter()
        self._pending = None
        self._save_again_button.visible = False
        self._held_back = None
        self._keep_trained_button.visible = False
        self._progress.value = 0
        self._best_label.value = "–"
        self._status.value = f"Fine-tuning on {len(examples)} example(s)…" if read else "Reading the examples…"
        self._set_running(True)
        from napari.qt.threading import create_worker

        worker = create_worker(
            titled(_train_then_signal, f"Fine-tune of {name!r} (stops after its step; the best model so far is saved)"),
            threading.Event(), base_path, examples, target, name=name, settings=settings,
            replace=replace, stop=self._stop_event, _start_thread=False, _ignore_errors=True, _worker_class=TrainingWorker,
        )
        worker.on_quit = self._detach
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)  # (a bound method: _detach disconnects it)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        launch(worker)

    def stop(self, *_args) -> None:
        """Ask the training to stop after the current step; the best model so far is kept."""
        if self._stop_event is not None and self._worker is not None:
            self._stop_event.set()
            self._status.value = "Stopping after this step…"
            # (Stop stays enabled: disabled, it passed the keyboard focus to the dock's title bar, where a
            # second Space hid the dock; pressed again, it asks again)
            self._stop_button.text = "Stopping…"

    def _set_running(self, running: bool) -> None:
        if running:
            hand_over(self._start_button, self._stop_button)
        else:
            hand_over(self._stop_button, self._start_button)
            self._stop_button.text = "Stop"
        self.running_changed.emit(running)

    def _on_destroyed(self, *_args) -> None:
        self._detach()
        if self._stop_event is not None:
            self._stop_event.set()

    def _detach(self) -> None:
        """The viewer is closing: the worker's results go to the log, not to this panel (its
        widgets are being deleted) nor on to the Segment widget."""
        worker = self._worker
        if worker is None:
            return
        for signal, slot in ((worker.yielded, self._on_yielded), (worker.returned, self._on_returned),
                             (worker.errored, self._on_error), (worker.finished, self._on_finished)):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):  # already disconnected
                pass
        worker.returned.connect(_log_result)
        worker.on_quit = None  # (napari keeps its workers for the session: nothing of this panel through it)
        self._worker = None

    # ------------------------------------------------------------------ worker signals
    def _on_yielded(self, event: Any) -> None:
        from napari_unet.core.events import Progress, TrainNote, TrainStep, Validation

        if isinstance(event, TrainNote):  # e.g. labels that look partial: said, the run goes on
            notify_warning(f"Fine-tuning: {event.message}")
            return
        if self._watched and (isinstance(event, (TrainStep, Validation))
                              or (isinstance(event, Progress) and event.done >= event.total)):
            self._say_edits_while_read()
        if isinstance(event, Progress):  # the examples read (the first step comes after the model's loading)
            self._status.value = event.message if event.done < event.total else (
                f"Fine-tuning on {event.total} example(s)…")
            return
        if isinstance(event, TrainStep):
            self.curves.add_step(event.step, event.loss)
            self._progress.value = int(round(1000 * min(1.0, max(0.0, event.fraction))))
            total = f"/{event.total_steps}" if event.total_steps else ""
            left = format_seconds(event.eta)
            self._status.value = f"step {event.step}{total}, loss {event.loss:.3f}" + (f" — {left} left" if left else "")
        elif isinstance(event, Validation):
            self.curves.add_validation(event.step, event.ap50)
            not_kept = "" if event.ap50 <= event.best_ap50 else (
                ", not kept: not clearly better than the starting model" if event.held_back else ", not kept")
            self._best_label.value = f"validation AP@0.5 {event.best_ap50:.3f}" + (
                f" (at step {event.step})" if event.is_best else f" (now {event.ap50:.3f}{not_kept})")
        self.curves.redraw()

    def _say_edits_while_read(self) -> None:
        """Once the examples are read: say the labels layers edited (a stroke, an undo) while the worker
        read them. It reads them after Start, not to hold the window (64 slices of 2048 x 2048: 2.6 s),
        and learns them as they were when read: an undo meanwhile was trained on as the truth."""
        watched, self._watched = self._watched, []
        edited = [layer.name for ref, planes, touches in watched
                  if (layer := ref()) is not None and touches_of(layer, planes) != touches]
        if edited:
            names = ", ".join(repr(name) for name in edited)
            notify_warning(f"Fine-tuning: {names} changed while its slices were being read: this run learns them "
                           "as they were read then, perhaps partly; press Stop, then Start, to learn your latest edits.")

    def _on_returned(self, result: TrainingResult) -> None:
        took = format_seconds(time.perf_counter() - self._run_started)
        if result.model is None:
            self._status.value = "Stopped before the first step; no model was saved."
            notify_info("Fine-tuning stopped before the first step; no model was saved.")
            return
        failed = (f"Failed at step {result.steps}: {one_line(result.failure)}; the best weights so far (step "
                  f"{result.failed_step}) are kept" if result.failure is not None else "")
        if result.path is None:
            self._pending = result
            self._save_again_button.visible = True
            self._status.value = f"{failed}, but could not be saved." if failed else \
                "Trained, but the model could not be saved."
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
        training = result.model.metadata.get("training") or {}
        if training.get("n_val_objects") == 0:  # no AP was measured: none to show as the best
            self._best_label.value = "– (no object was held out for validation)"
        elif training.get("selection_metric") == "loss" and "loss" not in self._best_label.value:
            self._best_label.value += "; the weights kept were chosen by validation loss"
        self.saved_start_weights = _starting_weights(result.model.metadata)
        if failed:  # (the model's name is said: another may have taken the name asked for)
            self._status.value = f"{failed}: saved as {result.path.stem!r}."
            notify_error("Fine-tuning failed", f"{one_line(result.failure)}. The best weights so far (step "
                         f"{result.failed_step}) were saved as {result.path.stem!r}.")
        elif self._run_name and result.path.stem != self._run_name:
            self._status.value += (f" ({self._run_name!r} was saved by something else while this run trained, and "
                                   "is kept.)")
            notify_warning(f"A model named {self._run_name!r} was saved while this run trained; it is kept, and the "
                           f"fine-tuned model is saved as {result.path.stem!r}.")
        elif self.saved_start_weights:
            base = result.model.metadata.get("base_model")
            notify_info(f"Saved {result.path.stem!r} with the weights it started from" + (f" ({base!r})" if base else "")
                        + ": no step was clearly better (see Status), so nothing is segmented again.")
        else:
            notify_info(f"Fine-tuned model saved as {result.path.stem!r}.")
        log.info("Saved fine-tuned model %s (metric %s)", result.path, metric)
        self._offer_held_back(result, result.path)
        self.saved.emit(str(result.path))

    def _offer_held_back(self, result: TrainingResult, path: Path) -> None:
        """The starting weights were kept (saved at ``path``): offer the trained ones, those the gate held
        back, or the run's last ones where no step scored better on the held-out part."""
        held, result.held_back = result.held_back, None  # (held here only: dropped once saved or at the next run)
        training = result.model.metadata.get("training") or {}
        if held is None or training.get("selected_step") != 0:
            return
        from napari_unet.core.catalog import file_identity

        step = (held.metadata.get("training") or {}).get("selected_step")
        ap, start_ap = held.metadata.get("val_ap50"), result.model.metadata.get("val_ap50")
        self._held_back = (held, path, file_identity(path))
        scored = f", AP@0.5 {ap:.3f}" if ap is not None else ""
        self._keep_trained_button.text = f"Keep the trained weights instead (step {step}{scored})"
        self._keep_trained_button.visible = True
        self._status.value += " Or keep the trained weights anyway: the button below."
        if ap is not None and start_ap is not None:
            gated = bool(training.get("gate_kept_start"))
            self._best_label.value = (f"validation AP@0.5 {start_ap:.3f} (the starting weights, kept); step {step} "
                                      f"scored {ap:.3f}" + (", held back" if gated else ""))

    def follow_renamed(self, old_path: str, new_path: str) -> None:
        """The model saved by the last run was renamed (Manage models): the trained weights offered in its
        place go to its new name (they went to the old one, the renamed file keeping the starting weights)."""
        if self._held_back is None:
            return
        held, path, _identity = self._held_back
        try:
            if Path(path).resolve() == Path(old_path).resolve():
                from napari_unet.core.catalog import file_identity

                # (the user's own rename, which writes a new file: the one to replace is that one)
                self._held_back = (held, Path(new_path), file_identity(new_path))
        except OSError:
            pass

    def _keep_trained(self, *_args) -> None:
        """Save the weights the gate held back in place of the starting ones the run saved (a model
        saved there since, or renamed, is kept: these go beside it)."""
        if self._held_back is None or self.is_running:
            return
        model, path, identity = self._held_back
        from napari_unet.core.catalog import save_without_replacing

        try:
            saved = save_without_replacing(model, path, identity)
        except OSError as exc:
            notify_error("Could not save the trained weights", f"{path.parent}: {exc.strerror or one_line(exc)}. "
                         "Free disk space or fix the folder, then press the button again.")
            return
        self._held_back = None
        self._keep_trained_button.visible = False
        step = (model.metadata.get("training") or {}).get("selected_step")
        ap = model.metadata.get("val_ap50")
        self._status.value = (f"Saved the trained weights (step {step}" + (f", validation AP@0.5 {ap:.3f}" if ap is not
                              None else "") + f") as {saved.stem!r}: check them on a slice you did not correct.")
        if saved != path:
            self._status.value += f" ({path.stem!r} had changed meanwhile, and is kept.)"
        if ap is not None:
            self._best_label.value = f"validation AP@0.5 {ap:.3f} (at step {step}, kept at your request)"
        notify_info(f"The trained weights are saved as {saved.stem!r}.")
        self.saved_start_weights = False
        self.saved.emit(str(saved))

    def _save_again(self, *_args) -> None:
        result = self._pending
        if result is None or result.target is None:
            return
        from napari_unet.core.catalog import save_without_replacing

        try:  # a model saved under the name since is kept, as at the run's end
            path = save_without_replacing(result.model, result.target, self._replace)
        except OSError as exc:
            notify_error("Could not save the fine-tuned model", exc)
            return
        self._pending = None
        self._save_again_button.visible = False
        if result.unfinished is not None:  # (the copy kept while the model was not saved)
            with contextlib.suppress(OSError):
                result.unfinished.unlink()
        self._status.value = f"Saved {path.stem!r}. " + _kept_weights(result.model.metadata)
        self._offer_held_back(result, path)
        if path != result.target:
            self._status.value += f" ({result.target.stem!r} was saved by something else meanwhile, and is kept.)"
            notify_warning(f"A model named {result.target.stem!r} was saved meanwhile; it is kept, and the "
                           f"fine-tuned model is saved as {path.stem!r}.")
        self.saved_start_weights = _starting_weights(result.model.metadata)
        self.saved.emit(str(path))

    def _on_error(self, exc: BaseException) -> None:
        from .._examples import ExamplesError

        exc = original_error(exc)  # (a RuntimeError comes wrapped out of the worker)
        if isinstance(exc, ExamplesError):  # found when the examples were read: the run never began
            notify_error("Cannot start fine-tuning", exc)
            self._status.value = f"Not started: {one_line(exc)}"
            return
        hint = gpu_hint(exc, "choose Device: cpu under Advanced")
        notify_error("Fine-tuning failed", exc, hint)  # (the traceback in the log)
        self._status.value = f"Failed: {one_line(exc)}{hint}"

    def _on_finished(self) -> None:
        self.curves.redraw(force=True)
        self._set_running(False)
        stopped = self._stop_event is not None and self._stop_event.is_set()
        if not (stopped or self._status.value.startswith(("Failed", "Not started"))):  # a stopped run shows how far it got
            self._progress.value = 1000
        if self._worker is not None:  # (napari keeps its workers for the session: the panel, its last model...)
            self._worker.on_quit = None
        self._worker = None
        self._stop_event = None


def _log_result(result: TrainingResult) -> None:
    """What became of a run whose panel was closed (the viewer closed during training)."""
    if result.path is not None:
        log.info("The viewer closed during fine-tuning: the best model so far (%d steps) was saved to %s.",
                 result.steps, result.path)
    elif result.model is not None:
        log.warning("The viewer closed during fine-tuning and the model could not be saved to %s: %s",
                    result.target, result.save_error)
