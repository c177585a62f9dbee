"""Python's full garbage collections, kept short while napari-unet's widgets are open.

CPython's cyclic garbage collector now and then makes a full pass over every object it tracks,
holding the GIL all the while: the window does not answer, whichever thread set it off. With
napari, Qt, torch and scikit-image loaded that is over half a million objects, 250 ms on a fast
core and more on a laptop's, and napari-unet's work (a new masks layer, training) allocates enough
to set one off every few seconds: the longest pause of the window when a first segmentation
starts (``benchmarks/bench_gui.py``; a ``gc.callbacks`` probe timed the pass).

Once the widgets have warmed up (the imports done: see ``_base.warm_up_in_background``), every
object alive is collected once and then frozen (:func:`gc.freeze`): later full passes skip the
frozen ones and only walk what was made since. Frozen objects are never collected as cyclic
garbage, so nothing of the user's may stay frozen past its life:

* a layer made since the last freeze is not frozen: removed, it is collected as usual;
* a layer that was open at the last freeze, or a napari-unet widget, removed or closed, thaws
  everything; the heap is collected and frozen again once nothing holds it any more, or stays
  thawed if something still does after a few seconds;
* once no napari-unet widget is left (the viewer closed), the heap stays thawed: the viewer's
  objects are collected as napari expects.

Only plain :mod:`gc` calls; the collections run on the main thread, where Qt wants its objects
deleted.
"""

from __future__ import annotations

import gc
import logging
import time
import weakref
from typing import Any

from ._napari_compat import unwrap_proxy

log = logging.getLogger(__name__)

_hosts: weakref.WeakSet[Any] = weakref.WeakSet()  # napari-unet widgets alive: they allow the freeze
_pending: list[weakref.ref[Any]] = []  # removed layers, closed widgets: to be collected before a freeze
_viewers: weakref.WeakSet[Any] = weakref.WeakSet()  # the hosts' viewers
_frozen_layers: weakref.WeakSet[Any] = weakref.WeakSet()  # their layers at the last freeze: frozen with it
_retries_left = 0
_RETRY_MS = 1000
_MAX_RETRIES = 5


def frozen() -> bool:
    """Whether objects are held in the collector's permanent generation now."""
    return gc.get_freeze_count() > 0


def add_host(owner: Any, widget: Any, viewer: Any) -> None:
    """Allow the freeze while ``widget`` (``owner``'s QWidget) lives; thaw when it is destroyed
    or when a layer leaves ``viewer``. Call on the main thread."""
    _hosts.add(owner)
    _viewers.add(unwrap_proxy(viewer))
    ref = _weak(owner)
    widget.destroyed.connect(lambda *_args: _host_destroyed(ref))
    viewer.layers.events.removed.connect(_layer_removed)


def freeze_now() -> None:
    """Collect, then freeze every object alive (main thread). Nothing when no widget is alive any
    more (the viewer was closed); put off while a removed layer or a closed widget is still
    referenced (it might be frozen past its life): tried again a second later, a few times."""
    global _retries_left
    if not _hosts:
        return
    start = time.perf_counter()
    gc.collect()  # (frozen objects are skipped: cheap when most are)
    _pending[:] = [ref for ref in _pending if ref() is not None]
    if _pending:
        _retries_left -= 1
        if _retries_left > 0:
            _later(_RETRY_MS, freeze_now)
        else:
            log.debug("a removed layer or closed widget is still referenced: the heap stays thawed")
        return
    _frozen_layers.clear()
    for viewer in list(_viewers):
        _frozen_layers.update(unwrap_proxy(layer) for layer in viewer.layers)
    gc.freeze()
    log.debug("heap frozen: %d objects, collection %.0f ms", gc.get_freeze_count(),
              1000 * (time.perf_counter() - start))


def _thaw_for(ref: weakref.ref[Any] | None) -> None:
    """Thaw, so that ``ref``'s object can be collected; freeze again once it was."""
    global _retries_left
    was_frozen = frozen() or bool(_pending)
    gc.unfreeze()
    if ref is not None:
        _pending.append(ref)
    if was_frozen and _hosts:
        _retries_left = _MAX_RETRIES
        _later(0, freeze_now)


def _host_destroyed(ref: weakref.ref[Any] | None) -> None:
    owner = ref() if ref is not None else None
    if owner is not None:
        _hosts.discard(owner)
    _thaw_for(ref)


def _layer_removed(event: Any) -> None:
    """A layer left a viewer. One made after the last freeze is not frozen: the collector takes it
    as usual (nothing to do, no pause). One alive at the freeze is thawed with everything and the
    heap frozen again once it was collected (a full collection: a pause as long as one before
    the freeze); so is any layer removed while that is pending."""
    layer = unwrap_proxy(getattr(event, "value", None))
    try:
        was_frozen = layer in _frozen_layers
    except TypeError:  # (not hashable: take it as frozen)
        was_frozen = True
    if (was_frozen and frozen()) or (_pending and not frozen()):
        _thaw_for(_weak(layer))


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj) if obj is not None else None
    except TypeError:
        return None


def _later(ms: int, fn: Any) -> None:
    from qtpy.QtCore import QTimer

    QTimer.singleShot(ms, fn)
