"""Which napari-unet dock widgets live in which viewer.

Widgets register themselves when they are built (``register_widget(viewer, "segment", self)``)
so that another widget can reach them, e.g. the Fine-tune widget asks the Segment widget of
the same viewer to segment the view again with a newly trained model. Only weak references
are kept: a closed widget or viewer disappears from the registry by itself.
"""

from __future__ import annotations

import weakref
from typing import Any

from ._napari_compat import unwrap_proxy as _unwrap  # npe2 hands widgets a proxy viewer

# id(viewer) -> (weak reference to the viewer, {kind: weak reference to the widget})
_REGISTRY: dict[int, tuple[weakref.ref, dict[str, weakref.ref]]] = {}


def _prune() -> None:
    for key, (viewer_ref, widgets) in list(_REGISTRY.items()):
        if viewer_ref() is None:
            del _REGISTRY[key]
            continue
        for kind, ref in list(widgets.items()):
            if ref() is None:
                del widgets[kind]


def register_widget(viewer: Any, kind: str, widget: Any) -> None:
    """Remember ``widget`` as the ``kind`` widget ("segment", "finetune", ...) of ``viewer``.

    A later registration of the same kind in the same viewer replaces the earlier one.
    """
    viewer = _unwrap(viewer)
    _prune()
    entry = _REGISTRY.get(id(viewer))
    if entry is None or entry[0]() is not viewer:
        entry = (weakref.ref(viewer), {})
        _REGISTRY[id(viewer)] = entry
    entry[1][kind] = weakref.ref(widget)


def unregister_widget(viewer: Any, kind: str, widget: Any | None = None) -> None:
    """Forget the ``kind`` widget of ``viewer`` (only if it is ``widget``, when given)."""
    viewer = _unwrap(viewer)
    entry = _REGISTRY.get(id(viewer))
    if entry is None or entry[0]() is not viewer:
        return
    ref = entry[1].get(kind)
    if ref is not None and (widget is None or ref() is widget):
        del entry[1][kind]


def get_widget(viewer: Any, kind: str) -> Any | None:
    """The live ``kind`` widget registered for ``viewer``, or None."""
    viewer = _unwrap(viewer)
    _prune()
    entry = _REGISTRY.get(id(viewer))
    if entry is None or entry[0]() is not viewer:
        return None
    ref = entry[1].get(kind)
    widget = ref() if ref is not None else None
    if widget is None:
        return None
    if not _qt_alive(widget):
        unregister_widget(viewer, kind, widget)
        return None
    return widget


def all_widgets(kind: str) -> list[Any]:
    """The live ``kind`` widgets of every open viewer (a model saved, renamed or deleted in one viewer is
    listed, or followed, in the others)."""
    _prune()
    found = []
    for viewer_ref, widgets in list(_REGISTRY.values()):
        viewer = viewer_ref()
        widget = get_widget(viewer, kind) if viewer is not None and kind in widgets else None
        if widget is not None:
            found.append(widget)
    return found


def _qt_alive(widget: Any) -> bool:
    """False when the widget's Qt object was already deleted (dock closed)."""
    native = getattr(widget, "native", None)
    if native is None:
        return True
    try:
        native.objectName()
    except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
        return False
    return True
