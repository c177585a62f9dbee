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
garbage, so nothing of the user's may stay frozen past its life. What was open at the freeze is
recorded (every viewer and its layers, napari-unet's widgets), and when one of those goes, the
heap is thawed (:func:`gc.unfreeze`), collected, and frozen again once it was collected:

* a layer removed, a viewer closed, a napari-unet widget destroyed or taken out of its dock;
* layers and viewers made after the freeze are not frozen: they go as usual, with no pause
  (a layer object made before a freeze but added to a viewer only after it, by a script, is not
  known as frozen: it stays until the next thaw; finding such objects would mean a pass over
  every object at each freeze, 130 ms);
* when something that went is still referenced a few seconds later (a variable in napari's
  console, say), the heap stays thawed for the rest of the session: Python collects as it does
  without napari-unet; so it does once no napari-unet widget is left.

The collections run on the main thread, where Qt wants its objects deleted.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from typing import Any

from ._napari_compat import open_viewers, unwrap_proxy, window_destroyed_signal

log = logging.getLogger(__name__)

#: False: never freeze (the test suite, apart from tests/test_heap.py: one test's freeze would
#: span the next ones)
enabled = True
_hosts: weakref.WeakSet[Any] = weakref.WeakSet()  # napari-unet widgets alive: they allow the freeze
_pending: list[weakref.ref[Any]] = []  # what went since the last freeze: to be collected before the next
_frozen: weakref.WeakSet[Any] = weakref.WeakSet()  # viewers and layers open at the last freeze
_watched: weakref.WeakSet[Any] = weakref.WeakSet()  # viewers whose layers and window are watched
_retries_left = 0
_scheduled = False  # a freeze_now is due (one chain of retries at a time)
_gave_up = False
_froze_once = False  # a freeze was done in this session (after the first widget's warm-up)
_RETRY_MS = 1000
_MAX_RETRIES = 5
_caller: Any = None  # runs functions on the main thread (made there, by the first add_host)


def frozen() -> bool:
    """Whether objects are held in the collector's permanent generation now."""
    return gc.get_freeze_count() > 0


def add_host(owner: Any, widget: Any, viewer: Any) -> None:
    """Allow the freeze while ``widget`` (``owner``'s QWidget) lives in a dock; thaw when it is
    destroyed or taken out of its dock, or when something open at the freeze goes. Main thread."""
    global _caller, _retries_left
    if _caller is None:
        _caller = _main_thread_caller()
    _hosts.add(owner)
    ref = _weak(owner)
    widget.destroyed.connect(lambda *_args: _host_gone(ref))
    _watch_undocking(widget, ref)
    _watch(unwrap_proxy(viewer))
    # a dock opened again after the last one closed (thawed then): no warm-up comes to freeze, and the
    # window's pauses came back for the session; the closed one may be held a little longer (its run's last tile)
    if _froze_once and not frozen() and not _scheduled:
        _retries_left = _MAX_RETRIES
        freeze_soon()


def freeze_soon() -> None:
    """:func:`freeze_now` on the main thread, called from any thread (the warm-up's, when done);
    nothing before the first widget registered with :func:`add_host`."""
    _later(0, freeze_now)


def freeze_now() -> None:
    """Collect, then freeze every object alive (main thread). Nothing when no widget is alive (the
    viewer was closed), when disabled or given up; put off while something that went is still
    referenced (it might be frozen past its life): tried again a second later, a few times, then
    given up for the session."""
    global _retries_left, _gave_up, _scheduled, _froze_once
    _scheduled = False
    if not (enabled and _hosts) or _gave_up:
        return
    start = time.perf_counter()
    gc.collect()  # (frozen objects are skipped: cheap when most are)
    if not _hosts:  # (that collection freed the last widget)
        return
    _pending[:] = [ref for ref in _pending if ref() is not None]
    if _pending:
        _retries_left -= 1
        if _retries_left > 0:
            _scheduled = True
            _later(_RETRY_MS, freeze_now)
        else:
            _gave_up = True
            _pending.clear()
            log.debug("something closed is still referenced: the heap stays thawed for the session")
        return
    _frozen.clear()
    for viewer in (unwrap_proxy(v) for v in open_viewers()):
        _watch(viewer)
        _frozen.add(viewer)
        _frozen.update(unwrap_proxy(layer) for layer in viewer.layers)
    gc.freeze()
    _froze_once = True
    log.debug("heap frozen: %d objects, collection %.0f ms", gc.get_freeze_count(),
              1000 * (time.perf_counter() - start))


def _watch(viewer: Any) -> None:
    if viewer is None or viewer in _watched:
        return
    _watched.add(viewer)
    viewer.layers.events.removed.connect(_layer_removed)
    signal = window_destroyed_signal(viewer)
    if signal is not None:
        ref = _weak(viewer)
        signal.connect(lambda *_args: _went(ref))


def _went(ref: weakref.ref[Any] | None) -> None:
    """Something recorded at the freeze went (or anything, while a thaw is pending)."""
    obj = ref() if ref is not None else None
    try:
        was_frozen = obj is None or obj in _frozen
    except TypeError:  # (not hashable: taken as frozen)
        was_frozen = True
    if (was_frozen and frozen()) or (_pending and not frozen()):
        _thaw_for(ref)
    elif obj is not None and frozen() and _hosts:
        # a layer made after the freeze: it is not frozen, but a layer is always in reference cycles, so only
        # a full collection frees it, and its data; an idle window makes none for minutes (a closed 88 MB
        # stack stayed resident); frozen objects are skipped, so this pass walks only what came since
        _collect_soon()


_collect_scheduled = False


def _collect_soon() -> None:
    """One full collection of the objects made since the freeze, half a second from now (several layers
    removed at once: one collection)."""
    global _collect_scheduled
    if _collect_scheduled:
        return
    _collect_scheduled = True

    def collect() -> None:
        global _collect_scheduled
        _collect_scheduled = False
        gc.collect()

    _later(500, collect)


def _thaw_for(ref: weakref.ref[Any] | None) -> None:
    """Thaw, so that ``ref``'s object can be collected; freeze again once it was."""
    global _retries_left, _scheduled
    was_frozen = frozen() or bool(_pending)
    gc.unfreeze()
    if ref is not None:
        _pending.append(ref)
    if was_frozen and _hosts and not _gave_up:
        _retries_left = _MAX_RETRIES
        if not _scheduled:  # (several layers removed at once: one collection, not one each)
            _scheduled = True
            _later(0, freeze_now)


def _host_gone(ref: weakref.ref[Any] | None) -> None:
    owner = ref() if ref is not None else None
    if owner is None or owner not in _hosts:  # (collected already, or told before)
        return
    _hosts.discard(owner)
    _thaw_for(ref)


def _layer_removed(event: Any) -> None:
    _went(_weak(unwrap_proxy(getattr(event, "value", None))))


def _watch_undocking(widget: Any, ref: weakref.ref[Any] | None) -> None:
    """napari's close button of a dock takes the widget out (no parent) and deletes the dock; the
    widget itself goes only when collected, which it cannot be while frozen: that is the sign."""
    from ._base import when_undocked

    when_undocked(widget, lambda: _host_gone(ref))


def _main_thread_caller() -> Any:
    from qtpy.QtCore import QObject, Signal, Slot

    class Caller(QObject):
        call = Signal(object)

        @Slot(object)
        def run(self, fn: Any) -> None:
            fn()

    caller = Caller()  # made on the main thread: a signal sent from another is queued to it
    caller.call.connect(caller.run)
    return caller


def _later(ms: int, fn: Any) -> None:
    """Run ``fn`` on the main thread in ``ms`` ms, from whichever thread (a collection in a worker
    thread can free a widget)."""
    from qtpy.QtCore import QTimer

    if threading.current_thread() is threading.main_thread():
        QTimer.singleShot(ms, fn)
    elif _caller is not None:
        try:
            _caller.call.emit(lambda: QTimer.singleShot(ms, fn))
        except RuntimeError:  # Qt already gone (a worker thread at the application's exit): nothing to run
            pass


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj) if obj is not None else None
    except TypeError:
        return None
