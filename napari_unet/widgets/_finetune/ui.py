"""Small UI pieces the Fine-tune panels share: layer choices and collapsible boxes."""

from __future__ import annotations

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
    box._collapsible = widget  # for tests and to expand it from code
    return widget
