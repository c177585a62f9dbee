"""Small UI pieces the Fine-tune panels share: layer choices, collapsible boxes, questions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import Container


def layer_choices(viewer: napari.viewer.Viewer, *kinds: type) -> list[tuple[str, Any]]:
    """``(name, layer)`` of the viewer's layers of the given kinds, in layer-list order."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kinds)]


def collapsible(title: str, box: Container):
    """A collapsed ``QCollapsible`` called ``title`` holding ``box`` (kept as ``box._collapsible``)."""
    from superqt import QCollapsible

    widget = QCollapsible(title)
    widget.addWidget(box.native)
    # never squeezed below its header (a dock short of height cut the "Advanced" title in half)
    widget.setMinimumHeight(widget.sizeHint().height())
    box._collapsible = widget  # for tests and to expand it from code
    _tab_skips_when_folded(widget, box.native)
    widget.toggled.connect(lambda expanded: _tab_skips_when_folded(widget, box.native))
    return widget


def _tab_skips_when_folded(collapsible: Any, content: Any) -> None:
    """Tab passes over the controls of a folded section (folded, they are there but 0 px high: the
    keyboard's focus went into them, out of sight) and reaches them again once it is unfolded."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QWidget

    folded = not collapsible.isExpanded()
    widgets = [content, *content.findChildren(QWidget)]
    # (a spin box's line edit passes its policy on to the spin box, its focus proxy: put back after it)
    for child in widgets if folded else widgets[::-1]:
        kept = child.property("napari_unet_focus")
        if folded and kept is None:
            child.setProperty("napari_unet_focus", int(child.focusPolicy()) if isinstance(
                child.focusPolicy(), int) else child.focusPolicy().value)
            child.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        elif not folded and kept is not None:
            child.setFocusPolicy(Qt.FocusPolicy(kept))
            child.setProperty("napari_unet_focus", None)


def ask(parent: Any, text: str, on_answer: Callable[[bool], None], *, yes: str = "Yes", no: str = "No"):
    """Ask a yes/no question without blocking: the box opens (modal to ``parent``'s window)
    and ``on_answer(True)`` or ``on_answer(False)`` is called once it is answered or closed.

    Returns the ``QMessageBox`` (its ``button(QMessageBox.Yes)`` / ``No`` can be clicked from
    code, as a test does); "No" is the default and what closing the box means.
    """
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Question, "napari-unet", text, QMessageBox.Yes | QMessageBox.No, parent)
    box.button(QMessageBox.Yes).setText(yes)
    box.button(QMessageBox.No).setText(no)
    box.setDefaultButton(QMessageBox.No)
    box.setEscapeButton(QMessageBox.No)

    def answered(_result: int) -> None:
        on_answer(box.standardButton(box.clickedButton()) == QMessageBox.Yes)
        box.deleteLater()

    box.finished.connect(answered)
    box.open()
    return box
