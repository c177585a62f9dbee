"""Python's full garbage collections kept short while the widgets are open (issue #17 item 10).

A full collection walks every object Python tracks (over half a million with napari, Qt and
torch loaded: 250 ms of a frozen window on a fast core, the longest pause of a first
segmentation in ``benchmarks/bench_gui.py``). After the widgets' warm-up the heap is frozen
(``gc.freeze``), and thawed whenever something of the user's might otherwise never be collected:
a removed layer, a closed widget or viewer.
"""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from napari_unet.widgets import _base, _heap


@pytest.fixture
def fresh_heap(monkeypatch):
    """The heap thawed around the test, no warm-up thread (its freeze would come at any time:
    the tests freeze by hand), nothing pending from earlier tests (still referenced there)."""
    monkeypatch.setattr(_base, "_WARMED_UP", set(_base._WARM_UPS))
    monkeypatch.setattr(_heap, "_pending", [])
    monkeypatch.setattr(_heap, "_gave_up", False)
    monkeypatch.setattr(_heap, "_froze_once", False)
    monkeypatch.setattr(_heap, "_hosts", weakref.WeakSet())
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_the_warm_up_freezes_the_heap_on_the_main_thread(make_napari_viewer, qtbot, fresh_heap, monkeypatch):
    threads = []
    freeze = _heap.freeze_now
    monkeypatch.setattr(_heap, "freeze_now", lambda: (threads.append(threading.current_thread()), freeze()))
    monkeypatch.setattr(_base, "_WARMED_UP", set())  # the warm-up as in a new process (once per process)
    viewer = make_napari_viewer()
    assert not _heap.frozen()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")  # starts the warm-up thread

    qtbot.waitUntil(_heap.frozen, timeout=60000)
    assert threads == [threading.main_thread()]  # collected and frozen where Qt deletes its objects
    assert gc.get_freeze_count() > 10000  # napari, Qt, torch: out of the full collections' way
    assert gc.get_count()[2] < 10  # (just collected)


def test_a_removed_layer_is_collected_then_the_heap_frozen_again(make_napari_viewer, qtbot, fresh_heap):
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_labels(np.zeros((512, 512), np.int32), name="old masks")  # opened before the freeze
    _heap.freeze_now()
    assert _heap.frozen()
    ref = weakref.ref(layer)
    viewer.layers.remove(layer)
    del layer
    assert not _heap.frozen()  # thawed at once, so that the layer can go

    qtbot.waitUntil(_heap.frozen, timeout=10000)  # frozen again, once the layer was collected
    assert ref() is None


def test_a_layer_made_after_the_freeze_goes_without_thawing(make_napari_viewer, qtbot, fresh_heap, monkeypatch):
    thawed_for = []
    thaw = _heap._thaw_for
    monkeypatch.setattr(_heap, "_thaw_for", lambda ref: (thawed_for.append(id(ref()) if ref else None), thaw(ref)))
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _heap.freeze_now()
    layer = viewer.add_labels(np.zeros((512, 512), np.int32), name="masks of today")
    ref, its_id = weakref.ref(layer), id(layer)
    viewer.layers.remove(layer)
    del layer
    qtbot.wait(50)

    assert its_id not in thawed_for  # not thawed for it: no full collection of the whole heap
    gc.collect()  # (a pass over what was made since the freeze only)
    assert ref() is None


def test_a_removed_layer_still_referenced_keeps_the_heap_thawed(make_napari_viewer, qtbot, fresh_heap, monkeypatch):
    monkeypatch.setattr(_heap, "_RETRY_MS", 20)
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.add_image(np.zeros((64, 64), np.float32), name="kept by the user's script")
    _heap.freeze_now()
    viewer.layers.remove(layer)  # (``layer`` is still held here)

    qtbot.wait(20 * (_heap._MAX_RETRIES + 3))
    assert not _heap.frozen()  # never frozen while it lives: it would outlive its last reference
    ref = weakref.ref(layer)
    del layer
    gc.collect()
    assert ref() is None


def test_closing_the_viewer_thaws_the_heap_for_good(make_napari_viewer, qtbot, fresh_heap):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert widget in _heap._hosts
    _heap.freeze_now()
    assert _heap.frozen()
    ref = weakref.ref(widget)
    del widget

    viewer.close()
    assert not _heap.frozen()
    assert ref() is None or ref() not in _heap._hosts  # a warm-up finishing later freezes nothing for it
    # (napari's make_napari_viewer then collects and fails the test if the viewer's QtViewer is
    # still alive: frozen, it would be)


def test_later_runs_a_function_called_from_another_thread_on_the_main_one(make_napari_viewer, qtbot, fresh_heap):
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")  # (made the main-thread caller)
    ran = []
    thread = threading.Thread(target=lambda: _heap._later(0, lambda: ran.append(threading.current_thread())))
    thread.start()
    thread.join()
    assert ran == []  # queued, not run in the calling thread
    qtbot.waitUntil(lambda: bool(ran), timeout=5000)
    assert ran == [threading.main_thread()]


def test_a_dock_closed_with_its_button_gives_its_widget_back(make_napari_viewer, qtbot, fresh_heap, monkeypatch):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _heap.freeze_now()
    ref = weakref.ref(widget)
    del widget

    dock.destroyOnClose()  # napari's close button: the widget taken out of the dock, the dock deleted
    del dock
    qtbot.waitUntil(lambda: ref() is None or ref() not in _heap._hosts, timeout=5000)
    assert not _heap.frozen()
    _heap.freeze_now()  # (no widget left: nothing frozen)
    assert not _heap.frozen()
    gc.collect()
    assert ref() is None  # (frozen, it would stay: nothing else would ever delete it)
    # opened again: frozen again (no warm-up comes to do it: the window's pauses were back for the session),
    # also when what went is still held a moment (a run's last tile) and the retries were spent before
    class Held:
        pass

    held = Held()
    monkeypatch.setattr(_heap, "_pending", [weakref.ref(held)])
    monkeypatch.setattr(_heap, "_retries_left", 0)
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    qtbot.wait(300)
    del held
    qtbot.waitUntil(_heap.frozen, timeout=10000)
    assert not _heap._gave_up


def test_a_layer_of_another_viewer_open_at_the_freeze_is_collected(make_napari_viewer, qtbot, fresh_heap):
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    other = make_napari_viewer()  # no napari-unet widget there
    layer = other.add_image(np.zeros((256, 256), np.float32), name="in the other window")
    _heap.freeze_now()
    assert _heap.frozen()
    ref = weakref.ref(layer)
    other.layers.remove(layer)
    del layer

    qtbot.waitUntil(_heap.frozen, timeout=10000)  # thawed, collected, frozen again
    assert ref() is None


def test_layers_removed_together_cost_one_collection(make_napari_viewer, qtbot, fresh_heap, monkeypatch):
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    for k in range(6):
        viewer.add_image(np.zeros((64, 64), np.float32), name=f"image {k}")
    _heap.freeze_now()
    calls = []
    freeze = _heap.freeze_now
    monkeypatch.setattr(_heap, "freeze_now", lambda: (calls.append(1), freeze()))

    viewer.layers.clear()  # (select all, delete)
    qtbot.waitUntil(_heap.frozen, timeout=10000)
    assert len(calls) == 1  # one full collection for the six, not one each

