"""The models panel: rename, delete (after a confirmation) and export the user's own models.

The work is done by :mod:`napari_unet.core.catalog` and, for BioImage.IO packages,
:mod:`napari_unet.core.zoo_export` (in a thread worker: it takes a few seconds); this panel
turns their errors into notifications.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, LineEdit, PushButton
from psygnal import Signal

from .._base import notify_error, notify_info


PACKAGE_FILTER = "BioImage.IO model package (*.zip)"
MODEL_FILTER = "napari-unet model (*.pt)"


def _export_package_job(source, destination: Path, authors: list[str] | None = None, license: str | None = None):
    """Worker body: the BioImage.IO export (a generator, so that it runs in a thread worker). It
    yields nothing before it is done: a worker asked to quit (the viewer closed) stops at a yield,
    and one before the export left no package."""
    from napari_unet.core.zoo_export import export_bioimageio

    return export_bioimageio(source, destination, authors=authors, license=license)
    yield  # noqa: B901 - unreachable: makes this a generator


def _names(text: str) -> list[str] | None:
    """The authors typed, separated by ";" ("Smith, J.; Doe, A."), None when none."""
    names = [n.strip() for n in str(text or "").split(";") if n.strip()]
    return names or None


def _user_model_choices(_widget=None) -> list[str]:
    from napari_unet.core.catalog import user_models

    return [e.name for e in user_models()]


class ModelsPanel(Container):
    """Your models, New name, Rename, Delete…, Export….

    Signals
    -------
    models_changed()
        A model was renamed or deleted (other model lists should be reloaded).
    """

    models_changed = Signal()
    model_renamed = Signal(str, str)  # old path, new path (emitted before models_changed)

    def __init__(self) -> None:
        super().__init__(labels=True)
        self._manage_combo = ComboBox(label="Your models", choices=_user_model_choices)
        self._rename_edit = LineEdit(label="New name")
        self._rename_button = PushButton(text="Rename")
        self._delete_button = PushButton(text="Delete…")
        self._export_button = PushButton(text="Export…")
        # what a BioImage.IO package says of who made it (the Model Zoo shows it): "napari-unet user" and
        # BSD-3-Clause unless typed (a model imported from a package keeps that package's)
        self._authors_edit = LineEdit(label="Package authors",
                                      tooltip="Who made the model, for a BioImage.IO package (Export… as .zip): names "
                                              "separated by ';' (e.g. 'Smith, J.; Doe, A.'). Empty: the authors of "
                                              "the package it came from, else 'napari-unet user'.")
        self._license_edit = LineEdit(label="Package licence",
                                      tooltip="The package's licence, an SPDX id such as CC-BY-4.0, MIT or "
                                              "BSD-3-Clause. Empty: that of the package it came from, else "
                                              "BSD-3-Clause (napari-unet's).")
        self.extend([
            self._manage_combo, self._rename_edit, self._rename_button, self._delete_button, self._authors_edit,
            self._license_edit, self._export_button,
        ])
        self._rename_button.changed.connect(self._rename_clicked)
        self._delete_button.changed.connect(self._delete_clicked)
        self._export_button.changed.connect(self._export_clicked)
        self._running = False
        # the authors and licence typed are of the model chosen when typed: another model chosen shows its
        # own (typed for one, they went into the next model's package, over that package's own authors)
        self._typed_for: dict[str, tuple[str, str]] = {}
        self._fields_of = self._manage_combo.value
        self._manage_combo.changed.connect(self._model_chosen)
        self._update_buttons()

    def _model_chosen(self, *_args) -> None:
        if self._fields_of:
            self._typed_for[self._fields_of] = (str(self._authors_edit.value or ""), str(self._license_edit.value or ""))
        self._fields_of = self._manage_combo.value
        self._authors_edit.value, self._license_edit.value = self._typed_for.get(self._fields_of, ("", ""))
        self._update_buttons()

    def refresh(self, *_args) -> None:
        """Reload the list of the user's models."""
        self._manage_combo.reset_choices()
        self._update_buttons()

    def set_running(self, running: bool) -> None:
        """No renaming or deleting while a model is being trained."""
        self._running = running
        self._update_buttons()

    def _update_buttons(self) -> None:
        """Rename, Delete and Export need a model of yours (with none they were enabled, and said so only
        when clicked); renaming and deleting wait while a model is trained."""
        has = bool(self._manage_combo.value)
        self._rename_button.enabled = has and not self._running
        self._delete_button.enabled = has and not self._running
        self._export_button.enabled = has

    def _chosen(self, what: str) -> str | None:
        name = self._manage_combo.value
        if not name:
            notify_error(what, "you have no models of your own yet.")
        return name or None

    def _ask_confirmation(self, text: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Question, "napari-unet", text, QMessageBox.Yes | QMessageBox.No, self.native)
        box.setDefaultButton(QMessageBox.No)
        return box.exec_() == QMessageBox.Yes

    def _rename_clicked(self, *_args) -> None:
        from napari_unet.core.catalog import rename_model

        name, new_name = self._chosen("Rename model"), self._rename_edit.value
        if name is None:
            return
        from napari_unet.core.catalog import find_model

        try:
            # the file as it is (a name such as "my cells (1)", or one hidden by a built-in's, is not
            # a name one can give a new model, yet it is the user's model to rename)
            old_path = find_model(name, user_only=True).path
            new_path = rename_model(name, new_name)
        except (ValueError, OSError) as exc:
            notify_error("Rename model", exc)
            return
        self._model_chosen()  # (what is typed is kept for the model under its new name)
        typed = self._typed_for.pop(name, None)
        if typed is not None:
            self._typed_for[new_name.strip()] = typed
        self._fields_of = None
        self.refresh()
        self._manage_combo.value = new_name.strip()
        self._rename_edit.value = ""
        self.model_renamed.emit(str(old_path), str(new_path))
        self.models_changed.emit()

    def _delete_clicked(self, *_args) -> None:
        from napari_unet.core.catalog import delete_model

        name = self._chosen("Delete model")
        if name is None or not self._ask_confirmation(f"Delete your model {name!r}? This cannot be undone."):
            return
        try:
            delete_model(name)
            self._typed_for.pop(name, None)  # (not given to a later model of that name)
        except (ValueError, OSError) as exc:
            notify_error("Delete model", exc)
            return
        self.refresh()
        self.models_changed.emit()

    def _export_clicked(self, *_args) -> None:
        from qtpy.QtWidgets import QFileDialog

        name = self._chosen("Export model")
        if name is None:
            return
        path, chosen_filter = QFileDialog.getSaveFileName(
            self.native, "Export model", f"{name}.zip", f"{PACKAGE_FILTER};;{MODEL_FILTER}")
        if not path:
            return
        if Path(path).suffix.lower() not in (".zip", ".pt"):
            path += ".pt" if chosen_filter == MODEL_FILTER else ".zip"
        if Path(path).suffix.lower() == ".zip":
            self.export_package(path)
        else:
            self.export_model(path)

    def export_package(self, destination: str | Path, name: str | None = None):
        """Write the chosen model (or the model ``name``) as a BioImage.IO package, in a thread
        worker; returns the worker (None if the model is unknown). A notification says where it
        went, or why it failed."""
        from napari_unet.core.catalog import find_model

        from .._base import qt_alive, start_worker

        chosen = name is None
        name = self._manage_combo.value if chosen else name
        license = str(self._license_edit.value or "").strip() or None  # (a typo is said before any packaging)
        try:
            source = find_model(name, user_only=True).path if chosen else name
        except (ValueError, OSError) as exc:
            notify_error("Export model", exc)
            return None
        self._export_button.enabled = False

        def done(written: Path) -> None:
            notify_info(f"Exported {name!r} as a BioImage.IO package to {written}.")

        def finished() -> None:
            if qt_alive(self._export_button):  # (the viewer may have been closed meanwhile)
                self._export_button.enabled = True

        self._export_worker = start_worker(
            _export_package_job(source, Path(destination), _names(self._authors_edit.value), license), returned=done,
            errored=lambda exc: notify_error("Export model", exc), finished=finished, finishes=True,
            title=f"Export of {name!r} as a BioImage.IO package (written all the same)")
        return self._export_worker

    def export_model(self, destination: str | Path, name: str | None = None) -> Path | None:
        """Copy the chosen model (or the model ``name``) to ``destination``; returns the file written."""
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
