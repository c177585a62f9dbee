"""The training-settings panel: base model, new model name, steps, time budget and the rest.

What is rarely changed (batch size, device, random seed) hides behind "Advanced".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from napari_unet._training_bounds import DEFAULT_STEPS, MAX_BATCH, MAX_PATCH, MIN_PATCH
from napari_unet.core._choices import DEVICE_CHOICES  # (core.device imports torch: not as the dock opens)

from .ui import collapsible


def fine_tunable_file(path: str) -> bool:
    """Whether a model outside the model folders (Segment's *Add model file…*) can be a base model:
    a napari-unet model file, or a BioImage.IO package that napari-unet exported (not another
    network's package: that one cannot be fine-tuned)."""
    from napari_unet.core._package_names import is_bioimageio_package, is_own_package

    return is_own_package(path) if is_bioimageio_package(path) else Path(path).is_file()


class TrainingSettingsPanel(Container):
    """Base model, New model name, Steps, Time budget, Learning rate, Patch size, Augmentation, Cells labelled."""

    def __init__(self) -> None:
        super().__init__(labels=True)
        self._extra_models: dict[str, str] = {}  # label -> path: files added in Segment, followed here
        self._base_model = ComboBox(label="Base model", choices=self._model_choices,
                                    tooltip="The model to start from (a copy is trained; it stays as it is). It "
                                            "follows Segment's model unless you choose one here.")
        self._name = LineEdit(label="New model name",
                              tooltip="The name the trained model is saved under (your models folder); Segment "
                                      "lists it as '<name> (yours)'.")
        self._steps = SpinBox(label="Steps", min=0, max=1_000_000, step=50, value=DEFAULT_STEPS,
                              tooltip="Training steps (0 = only the time budget limits the run).")
        self._time_budget = FloatSpinBox(label="Time budget (min)", min=0.0, max=24 * 60, step=1.0, value=0.0,
                                         tooltip="Stop after this many minutes (0 = no limit); whichever comes first.")
        self._lr = FloatSpinBox(label="Learning rate", min=1e-6, max=1.0, step=1e-4, value=1e-3,
                                tooltip="How large a change each training step makes at most (it rises, then falls "
                                        "off towards the end). Lower it if the loss jumps about; the default suits "
                                        "most data.")
        self._lr.native.setDecimals(6)
        self._patch_size = SpinBox(label="Patch size", min=0, max=MAX_PATCH, step=16, value=0,
                                   tooltip="Side in pixels of the square pieces of your slices the model learns from "
                                           "(Auto: 128 for the built-in models, 256 for the paper's U-Net).")
        _show_auto(self._patch_size)
        self._augment = CheckBox(text="Augmentation (flips, rotations, scale, deformation, brightness)", value=True,
                                 tooltip="Show the examples flipped, rotated, rescaled, deformed and with other "
                                         "brightness: a model that learns from few cells needs it.")
        self._labelled = ComboBox(
            label="Cells labelled", value="auto",
            choices=[("Auto (told per slice)", "auto"), ("All (the rest is background)", "all"),
                     ("Some (learn from those only)", "some")],
            tooltip="Whether every cell of a corrected slice is labelled. All: everything unlabelled is learnt as "
                    "background. Some: the labelled cells are learnt, and as background only what lies around them "
                    "and where the model finds nothing (draw the cells it misses). Auto decides per slice.",
        )
        self._batch_size = SpinBox(label="Batch size", min=0, max=MAX_BATCH, value=0,
                                   tooltip="Patches per step (Auto: 8 with patches of up to 128 px, 4 with larger ones).")
        _show_auto(self._batch_size)
        self._device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto",
                                tooltip="Where to train: auto takes the GPU (CUDA or Apple MPS) when there is one, "
                                        "else the CPU.")
        self._seed = SpinBox(label="Random seed", min=0, max=2**31 - 1, value=0,
                             tooltip="The same seed, slices and settings give the same model again on the CPU "
                                     "(nearly the same on a GPU) when Steps ends the run, not the time budget.")
        self.extend([
            self._base_model, self._name, self._steps, self._time_budget, self._lr, self._patch_size, self._augment,
            self._labelled,
        ])
        self._advanced = Container(widgets=[self._batch_size, self._device, self._seed], labels=True)
        self.native.layout().addWidget(collapsible("Advanced", self._advanced))

        self._base_model.changed.connect(self.suggest_name)
        self._base_model.changed.connect(self._on_base_chosen)
        self._setting_base = False  # the base set by the code (follow, refresh), not by the user
        self.user_chose_base = False
        self._suggested = ""  # the last name suggested (a name the user typed is kept)
        self._running = False  # a run is going: its base model and name stay as they are shown
        self._follow_later: str | None = None  # the model Segment took during the run
        self.suggest_name()

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from napari_unet.core.catalog import list_models

        return [(e.label, str(e.path)) for e in list_models()] + list(self._extra_models.items())

    @property
    def base_model_path(self) -> str | None:
        """The file of the chosen base model (None when there is no model at all)."""
        return self._base_model.value or None

    @property
    def model_name(self) -> str:
        """The new model's name as typed (unchecked)."""
        return str(self._name.value)

    def device_choice(self) -> str | None:
        """The chosen device, None for "auto"."""
        value = self._device.value
        return None if value in (None, "auto") else value

    def training_settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`napari_unet.core.train.finetune` from the widgets."""
        steps = int(self._steps.value)
        minutes = float(self._time_budget.value)
        if steps <= 0 and minutes <= 0:
            raise ValueError("set a number of steps or a time budget (both are 0).")
        if 0 < int(self._patch_size.value) < MIN_PATCH:
            raise ValueError(f"set the patch size to Auto (0) or to {MIN_PATCH} pixels or more.")
        return {
            "steps": steps if steps > 0 else None,
            "time_budget": minutes * 60.0 if minutes > 0 else None,
            "lr": float(self._lr.value),
            "patch_size": int(self._patch_size.value) or None,  # 0 (Auto): the network's default
            "batch_size": int(self._batch_size.value) or None,
            "augment": bool(self._augment.value),
            "device": self.device_choice(),
            "seed": int(self._seed.value),
            "labelled": str(self._labelled.value),
        }

    def refresh_models(self, *_args) -> None:
        """Reload the base-model list, keeping the chosen model when it is still there."""
        current = self._base_model.value
        with self.code_sets_base():
            self._base_model.reset_choices()
            if current in self._base_model.choices:
                self._base_model.value = current
            elif current:  # the chosen base is gone (deleted): back to following Segment's model
                self.user_chose_base = False

    @contextlib.contextmanager
    def code_sets_base(self) -> Iterator[None]:
        """Changes of the base model made inside are not the user's choice (see :meth:`follow`)."""
        self._setting_base, before = True, self._setting_base
        try:
            yield
        finally:
            self._setting_base = before

    def _on_base_chosen(self, *_args) -> None:
        if not self._setting_base:
            self.user_chose_base = True

    def follow(self, model_path: str | None) -> None:
        """Take ``model_path`` (the model Segment uses, a model just fine-tuned) as the base model,
        unless the user chose a base here: the next fine-tuning builds on the model whose masks
        were corrected. A model file added in Segment (or a package napari-unet exported) joins the
        list; another network's BioImage.IO package, which cannot be fine-tuned, is not followed."""
        if self._running:  # the run's base stays shown; the model Segment took meanwhile is followed after it
            self._follow_later = model_path
            return
        if self.user_chose_base or not model_path:
            return
        target = Path(str(model_path)).resolve()

        def in_list() -> Any:
            return next((v for v in self._base_model.choices if v and Path(str(v)).resolve() == target), None)

        match = in_list()
        if match is None:  # a model saved since the list was made: the folder is read again
            self.refresh_models()
            match = in_list()
        if match is None and fine_tunable_file(str(target)):  # a file added in Segment
            label = f"{target.stem} ({target.parent.name})"
            while label in self._extra_models:
                label += "'"
            self._extra_models[label] = match = str(target)
            with self.code_sets_base():
                self._base_model.reset_choices()
        if match is None or match == self._base_model.value:
            return
        with self.code_sets_base():
            self._base_model.value = match

    def suggest_name(self, *_args, force: bool = False) -> None:
        """Fill in a free name derived from the base model ("nuclei-tuned", "nuclei-tuned-2", ...),
        unless the user typed a name of their own (``force``: after a model was saved under it)."""
        from napari_unet.core.catalog import suggest_model_name

        if not force and self._name.value not in ("", self._suggested):
            return
        path = self._base_model.value
        self._name.value = self._suggested = suggest_model_name(Path(path).stem if path else "model")

    def set_running(self, running: bool) -> None:
        """While training runs, the base model and the name cannot change."""
        self._running = running
        self._base_model.enabled = not running
        self._name.enabled = not running
        later, self._follow_later = self._follow_later, None
        if not running and later:  # (the model just trained, which Segment took as the run ended)
            self.follow(later)


def _show_auto(spin: Any) -> None:
    """Show "Auto" in a spin box at its minimum (0), as the README and the messages call it. magicgui's
    spin box is superqt's QLargeIntSpinBox, which ignores Qt's special value text (it showed "0")."""
    box = spin.native
    if not hasattr(box, "_updateEdit") or not hasattr(box, "_interpret"):  # a QSpinBox: Qt's own
        box.setSpecialValueText("Auto")
        return

    def update(box: Any = box) -> None:
        text = "Auto" if box.value() == box.minimum() else str(box.value())
        if box.lineEdit().text() != text:
            box.lineEdit().setText(text)

    def interpret(policy: Any, box: Any = box) -> None:
        text = (box.lineEdit().displayText() or str(box.value())).strip()
        box._setValue(box.minimum() if text.lower() in ("auto", "") else int(text), policy)

    box._updateEdit = update
    box._interpret = interpret
    update()
