"""Small pieces shared by the dock widgets: workers, notifications, viewer geometry.

Nothing here imports torch: widgets import it lazily so napari starts fast.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import RadioButtons
from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet._errors import one_line  # noqa: F401  (the widgets' one line of an error)

from . import _heap
from ._napari_compat import canvas_size, view_size, viewer_camera  # noqa: F401  (re-exported for the widgets)

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


def FixedRadioButtons(**kwargs: Any) -> RadioButtons:  # noqa: N802  (stands for a widget class)
    """magicgui radio buttons whose choices never change.

    napari calls ``reset_choices`` of every docked widget each time a layer is added or removed,
    and magicgui's radio buttons then delete every button and make it anew, after which Qt lays
    out and repaints the dock: 80-190 ms of the window not answering per widget on a 2-core
    machine (sampled in ``bench_gui.py --diagnose`` when Segment adds its masks layer, with
    Load stack, Segment and Correct docked). Choices that never change need no reset.
    """
    buttons = RadioButtons(**kwargs)
    buttons.reset_choices = lambda *_args: None  # type: ignore[method-assign]
    return buttons


def notify_error(what: str, exc: BaseException | str, more: str = "") -> None:
    """Show a one-line error notification (never a traceback dialog); ``more``: said after it (a
    hint); the traceback goes to the log."""
    log.debug("%s failed", what, exc_info=isinstance(exc, BaseException))
    show_error(f"{what}: {one_line(exc)}{more}")


#: How the errors of a GPU's driver or libraries begin or name them (a card the installed PyTorch was not
#: built for: "CUDA error: no kernel image is available", a lost device, an MPS command buffer that failed).
_GPU_ERROR_WORDS = ("CUDA error", "CUDA out of memory", "CUDA driver", "cuDNN error", "CUDNN_STATUS_",
                    "CUBLAS_STATUS_", "MPS backend", "MPSGraph")


def gpu_hint(exc: BaseException | str, where: str) -> str:
    """What to add to a GPU's error (empty for any other): how to run on the CPU instead, ``where``
    the user can choose so ("" when only the environment can)."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "NAPARI_UNET_DEVICE" in text or not any(w in text for w in _GPU_ERROR_WORDS):
        return ""  # (a MemoryError of napari-unet's says what to lower, the CPU included)
    return (f" To run on the CPU instead, {where}." if where else
            " To run on the CPU instead, start napari with the environment variable NAPARI_UNET_DEVICE=cpu.")


def notify_info(message: str) -> None:
    show_info(message)


def notify_warning(message: str) -> None:
    show_warning(message)


def scroll_when_short(container: Any, only: tuple[Any, ...] | None = None) -> None:
    """Put everything in a dock widget's layout into a scroll area, so that the dock can be shorter
    than its contents: on a laptop screen of 768 px (and even 1080) napari's window could not be made
    shorter than Fine-tune's 1053 px, and the dock tabs, the slider and the status bar were off the
    screen; folded sections opened to a 44 px strip. (magicgui's ``scrollable=True`` puts the scroll area
    around ``.native``, and napari docks ``.native`` itself: the scroll area is left out.) Call at the
    end of the widget's ``__init__``, once its controls are in place. ``only``: the Qt widgets (in layout
    order, one after the other) to put in the scroll area, where the first of them was; the others stay
    as they are (Fine-tune's status lines, which a scroll area squeezed to one line: nested layouts'
    heights for a width were not made again when a line wrapped)."""
    from qtpy.QtCore import QCoreApplication, QEvent, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    class WidthOfItsContents(QScrollArea):
        """A scroll area at least as wide as what it holds (no horizontal scrolling: napari's dock keeps
        it), also when that grows later (a long model name in a list)."""

        def minimumSizeHint(self) -> Any:
            hint = super().minimumSizeHint()
            if self.widget() is not None:
                hint.setWidth(self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width())
            return hint

        def eventFilter(self, watched: Any, event: Any) -> bool:
            if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
                # what it holds changed size (a status line wrapped to more lines): its width and height
                # are made again once the layout is done
                self.updateGeometry()
                QCoreApplication.postEvent(self, QEvent(QEvent.Type.LayoutRequest))
            return super().eventFilter(watched, event)

    outer = container.native
    layout = outer.layout()
    inner = QWidget()
    inner_layout = QVBoxLayout()
    inner_layout.setContentsMargins(layout.contentsMargins())
    inner_layout.setSpacing(layout.spacing())
    at = 0 if only is None else next(i for i in range(layout.count()) if layout.itemAt(i).widget() is only[0])
    i = at
    while i < layout.count():
        widget = layout.itemAt(i).widget()
        if only is not None and widget not in only:
            i += 1
            continue
        item = layout.takeAt(i)
        if item.widget() is not None:
            inner_layout.addWidget(item.widget())
        else:
            inner_layout.addItem(item)
    if only is None:
        inner_layout.addStretch(1)  # (the controls at the top when the dock is taller than they are)
    inner.setLayout(inner_layout)
    scroll = WidthOfItsContents(outer)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # (no tab stop of its own: it follows the focus inside)
    scroll.setWidget(inner)
    inner.installEventFilter(scroll)
    if only is None:
        layout.setContentsMargins(0, 0, 0, 0)
    else:  # a part of the dock: never squeezed to a sliver by what stays outside it
        scroll.setMinimumHeight(min(150, inner.minimumSizeHint().height()))
    layout.insertWidget(at, scroll, 1)
    if only is not None:  # what stays below comes after it for Tab too (the scroll area, made last, came last:
        # Start was 72 Tab presses from Fine-tune's Image), made again each time the dock is docked or shown
        after = [w for w in (layout.itemAt(i).widget() for i in range(at + 1, layout.count())) if w is not None]
        outer.installEventFilter(_TabOrderAfter(outer, inner, after))


def _tab_order_after(first: Any, then: list[Any]) -> None:
    """Tab goes through ``first``'s controls, then through those of each of ``then`` in turn."""
    from qtpy.QtWidgets import QWidget

    chain = _focus_chain(first)
    for widget in then:
        for follower in _focus_chain(widget):
            if chain:
                QWidget.setTabOrder(chain[-1], follower)
            chain.append(follower)


def _TabOrderAfter(parent: Any, first: Any, then: list[Any]) -> Any:
    """An event filter that keeps :func:`_tab_order_after` when its widget is docked (napari's dock
    makes the tab order of what it takes in again) or shown."""
    from qtpy.QtCore import QEvent, QObject

    class TabOrderAfter(QObject):
        def eventFilter(self, watched: Any, event: Any) -> bool:
            if event.type() in (QEvent.Type.ParentChange, QEvent.Type.Show):
                _tab_order_after(first, then)
            return False

    return TabOrderAfter(parent)


def _focus_chain(root: Any) -> list[Any]:
    """The widgets in ``root`` (itself included) that Tab can reach, in the window's tab order."""
    from qtpy.QtCore import Qt

    found, widget = [], root
    while True:
        if (widget is root or root.isAncestorOf(widget)) and widget.focusPolicy() & Qt.FocusPolicy.TabFocus:
            found.append(widget)
        widget = widget.nextInFocusChain()
        if widget is root or widget is None:
            return found


class WorkerRuntimeError(Exception):
    """A ``RuntimeError`` raised in a generator worker, carried out of it.

    superqt's ``GeneratorWorker`` takes any ``RuntimeError`` from the generator for the sign that
    its own Qt object was deleted: it warns "RuntimeError in aborted thread" and returns without
    emitting ``errored`` or ``finished``, and the widget waited forever (its buttons off) after a
    torch error, ONNX Runtime running out of memory, ... :func:`carry_runtime_errors` raises this
    instead; :func:`original_error` gives back what was raised.
    """

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


def carry_runtime_errors(generator: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """``generator`` whose ``RuntimeError`` reach a worker's ``errored`` (see :class:`WorkerRuntimeError`)."""
    try:
        return (yield from generator)
    except RuntimeError as exc:
        raise WorkerRuntimeError(exc) from exc


def original_error(exc: BaseException) -> BaseException:
    """The error a worker's generator raised (``errored`` hands a :class:`WorkerRuntimeError`)."""
    return exc.error if isinstance(exc, WorkerRuntimeError) else exc


def _interruptible(generator: Generator[Any, None, Any], interrupt: Any) -> Generator[Any, None, Any]:
    """``generator`` run step by step inside ``interrupt.around()``: its ONNX Runtime runs end when
    the worker quits (:class:`~napari_unet.core.engine.RunInterrupt`), and then it ends quietly."""
    from napari_unet.core.engine import RunInterrupted

    while True:
        with interrupt.around():
            try:
                item = next(generator)
            except StopIteration as end:
                return end.value
            except RunInterrupted:
                if interrupt.is_set():
                    return None
                raise
            except RuntimeError as exc:
                raise WorkerRuntimeError(exc) from exc
        yield item


@functools.cache
def _worker_class() -> type:
    from napari.qt.threading import GeneratorWorker

    class InterruptingWorker(GeneratorWorker):
        """A worker whose ``quit()`` also ends the network run in progress (see :func:`start_worker`)."""

        interrupt: Any = None
        finishes = False  # writes the user's file: nothing stops it (see start_worker's ``finishes``)

        def quit(self) -> None:
            if self.finishes:
                return
            super().quit()
            if self.interrupt is not None:
                self.interrupt.set()

    return InterruptingWorker


class _Titled:
    """``func`` under ``title``, for napari's ``create_worker``: napari names a worker's task by its
    function in the dialog that asks before a window with running tasks closes ("napari-worker:
    Executing <function _interruptible at 0x7f2611fc7100>", the same line for every job). This says
    which job it is and what closing does to it. It stands for ``func`` wherever a function is looked
    at (superqt tells a generator function by its code: :func:`titled` checks that it still does)."""

    def __init__(self, func: Callable[..., Any], title: str) -> None:
        self._func, self._title = func, title
        for name in ("__module__", "__name__", "__qualname__", "__doc__", "__code__", "__defaults__",
                     "__kwdefaults__"):
            setattr(self, name, getattr(func, name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def __str__(self) -> str:
        return self._title

    __repr__ = __str__


def titled(func: Callable[..., Any], title: str | None) -> Callable[..., Any]:
    """``func`` named ``title`` where napari shows its task (see :class:`_Titled`): "napari-unet: "
    and ``title`` follow napari's "Executing" (and come before its "execution pending"); ``func``
    itself where the title cannot stand for it."""
    import inspect

    if not title:
        return func
    named = _Titled(func, f"napari-unet: {title}")
    return named if inspect.isgeneratorfunction(named) == inspect.isgeneratorfunction(func) else func


def start_worker(
    generator: Generator[Any, None, Any],
    *,
    yielded: Callable[[Any], None] | None = None,
    returned: Callable[[Any], None] | None = None,
    errored: Callable[[BaseException], None] | None = None,
    finished: Callable[[], None] | None = None,
    finishes: bool = False,
    title: str | None = None,
):
    """Run a core generator in a napari thread worker and connect its signals.

    Errors in the worker go to ``errored`` (on the main thread), never up the stack.
    The returned worker's ``quit()`` stops the generator at its next yield, and ends an ONNX
    Runtime run in progress (a tile of the paper's network runs ~35 s on a laptop: Cancel waited
    for it). The generator is closed (its ``finally`` blocks run) when the worker has finished.

    ``finishes``: a job that writes a file of the user's (Save masks, an export) is never stopped:
    napari's window, as it closes, asks every task of its viewer to stop (``quit()``), and a save
    whose thread had not yet begun wrote nothing (the window closed just after Save: masks lost).
    ``title``: the job, as napari's dialog on closing a window with running tasks names it (see
    :func:`titled`), with what closing does to it.
    """
    from napari.qt.threading import create_worker

    from napari_unet.core.engine import RunInterrupt

    interrupt = RunInterrupt()
    worker = create_worker(titled(_interruptible, title), generator, interrupt, _start_thread=False,
                           _ignore_errors=True, _worker_class=_worker_class())
    worker.interrupt = interrupt
    worker.finishes = finishes
    if yielded:
        worker.yielded.connect(yielded)
    if returned:
        worker.returned.connect(returned)
    if errored:
        worker.errored.connect(lambda exc: errored(original_error(exc)))
    if finished:
        worker.finished.connect(finished)
    # quit() stops iterating without closing the generator: its cleanup (a 3D run's temporary file of
    # probabilities, 400 MB for 100 x 1024 x 1024; arrays held in memory) waited for the process's end.
    # The thread is done when finished comes: the generator is closed here (a no-op once exhausted).
    worker.finished.connect(generator.close)
    launch(worker)
    return worker


_RUNNING: set[Any] = set()  # the workers of this plugin's jobs that have not finished
_WARNINGS_STATE: list[Any] = [None]  # (warnings.showwarning, warnings.filters) when the first of them started


def launch(worker: Any) -> None:
    """Start a napari/superqt thread worker at once, in a thread of its own.

    Qt's global thread pool has one thread per CPU (2 on many laptops): a third job (Save masks
    while Fine-tune and Segment run) waited in its queue saying "Saving…", and was never run when
    the window closed meanwhile (the masks lost). The pool is given a thread more when it is full.

    superqt's workers also swap the process's ``warnings.showwarning`` (and add an "always" filter)
    while they run and put back what they found: two jobs that end in the order they did not start
    left a dead worker's hook, and napari showed no warning any more (and repeated warnings were
    shown each time). napari's hook and the filters are put back when the last job has ended.

    The worker goes into the thread pool now: superqt's ``start()``, called from a running event loop
    (always, in napari), puts it there on a 1 ms timer. A window closed meanwhile asked a job whose
    thread had not begun to stop: Fine-tune's ``quit()`` waited 30 s for a run that could not begin
    (the window frozen), and napari's exit, waiting for the pool's threads, found none: Save masks
    then ran during the interpreter's shutdown (the process aborted). This plugin holds its running
    workers (``_RUNNING``), as superqt's start would.
    """
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if pool.activeThreadCount() >= pool.maxThreadCount():
        pool.setMaxThreadCount(pool.activeThreadCount() + 1)
    if not _RUNNING:
        _WARNINGS_STATE[0] = (warnings.showwarning, list(warnings.filters))
    _RUNNING.add(worker)
    worker.finished.connect(lambda: _ended(worker))
    pool.start(worker)


def _ended(worker: Any) -> None:
    from qtpy.QtCore import QTimer

    _RUNNING.discard(worker)
    QTimer.singleShot(0, lambda: _forget_connections(worker))  # (after the other slots of its end)
    if _RUNNING or _WARNINGS_STATE[0] is None:
        return
    hook, filters = _WARNINGS_STATE[0]
    if warnings.showwarning is not hook:
        warnings.showwarning = hook
    if warnings.filters != filters:
        warnings.filters[:] = filters
        mutated = getattr(warnings, "_filters_mutated", None)  # (the module's cache of what was shown)
        if mutated is not None:
            mutated()


_WORKER_SIGNALS = ("started", "yielded", "returned", "errored", "finished", "aborted", "paused", "resumed", "warned")


def _forget_connections(worker: Any) -> None:
    """Disconnect a finished worker's signals. napari (0.6.5 on) keeps every worker it created in the
    window's task list for the session, and the slots connected to it (closures, bound methods) kept
    what they hold: a closed Segment dock with its layers and kept probabilities (70 MB a round), the
    masks of a large plane filled (each layer removed since), Save masks' and Load stack's docks."""
    with warnings.catch_warnings():  # (PySide6 warns where the others raise: napari showed each warning)
        warnings.filterwarnings("ignore", message="libpyside: Failed to disconnect", category=RuntimeWarning)
        for name in _WORKER_SIGNALS:
            signal = getattr(worker, name, None)
            if signal is None:
                continue
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):  # (nothing connected; a Qt object deleted with its window)
                pass


_WARMED_UP: set[str] = set()
_WARM_UP_LOCK = threading.Lock()
#: Set when the interpreter exits: background threads stop between their steps (see :func:`start_background`).
EXITING = threading.Event()
_BACKGROUND: list[threading.Thread] = []
#: How long the interpreter's exit waits for background threads (a warm-up's optimiser step: 3-6 s).
EXIT_WAIT_S = 20.0


def _wait_for_background() -> None:
    """At exit: let background threads end before the interpreter is torn down (closed a few seconds
    after Fine-tune docked, napari died with "terminate called without an active exception" or a
    segmentation fault, torch's first optimiser step still running in the warm-up thread)."""
    import time

    EXITING.set()
    deadline = time.monotonic() + EXIT_WAIT_S
    for thread in list(_BACKGROUND):
        thread.join(max(0.0, deadline - time.monotonic()))


def start_background(target: Callable[[], Any], name: str) -> threading.Thread:
    """Start ``target`` in a daemon thread that the interpreter's exit waits for (up to
    :data:`EXIT_WAIT_S`; :data:`EXITING` is set then, for it to stop between its steps)."""
    import atexit

    with _WARM_UP_LOCK:
        if not _BACKGROUND:
            atexit.register(_wait_for_background)
        _BACKGROUND[:] = [t for t in _BACKGROUND if t.is_alive()]
        thread = threading.Thread(target=target, name=name, daemon=True)
        _BACKGROUND.append(thread)
    thread.start()
    return thread


def _warm_up_segmenting() -> None:
    import napari_unet.core.predict  # noqa: F401
    import napari_unet.core.scale  # noqa: F401
    from napari.layers import Labels

    Labels(np.zeros((2, 2), np.int32))  # a throwaway model object: no Qt, no viewer
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()  # its patterns are cached for the process (pure numpy, no OpenGL)


def _warm_up_training() -> None:
    import torch

    import napari_unet.core.train  # noqa: F401

    weight = torch.zeros(1, requires_grad=True)  # one optimiser step: torch imports a lot on the first
    (weight * 2).sum().backward()
    torch.optim.AdamW([weight]).step()


_WARM_UPS = {"segmenting": _warm_up_segmenting, "training": _warm_up_training}


def torch_imported() -> bool:
    """Whether torch is imported whole in this process: its module is in ``sys.modules`` from the
    start of its import, which takes 2 s and more (the warm-up thread's, while a dock opens); a
    module still being imported says so in its spec, as Python's own import machinery reads it."""
    module = sys.modules.get("torch")
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def device_words_at_once(choice: Any = None) -> bool:
    """Whether the words for the device ``choice`` (None: auto) can be written as a dock opens (see
    :func:`show_when_known`): not while torch is not imported yet (its import is the warm-up
    thread's), nor while CUDA is not started (:func:`~napari_unet.core.device.describing_is_quick`)."""
    if not torch_imported():
        return False
    from napari_unet.core.device import describing_is_quick

    return describing_is_quick(choice)


def _unit_registry_ready() -> None:
    """Build pint's unit registry (every napari layer's transform asks it for "pixel") here, on
    the calling thread: its lazy first build is not thread-safe, and a layer made on the main
    thread while the warm-up thread builds one failed with "'pixel' is not defined"."""
    try:
        import pint

        pint.get_application_registry().pixel  # noqa: B018 - the attribute access builds it
    except Exception:  # noqa: BLE001 - napari builds it later, as before
        log.debug("pint's unit registry could not be built", exc_info=True)


def warm_up_in_background(*what: str) -> None:
    """Start, once per process and kind, a background thread doing the one-time work that a
    first segmentation ("segmenting") or training ("training") would otherwise do on the main
    thread or while holding up the window: imports, napari's first Labels layer (its imports,
    the label colormap, vispy's dash patterns for the layer's outline overlays), torch's first
    optimiser step. Failures are ignored: the work is then done later, as before."""
    with _WARM_UP_LOCK:
        todo = [name for name in what if name not in _WARMED_UP]
        _WARMED_UP.update(todo)
    if not todo:
        return
    if "segmenting" in todo:
        _unit_registry_ready()

    def warm_up() -> None:
        for name in todo:
            if EXITING.is_set():  # (napari closing: the rest is not needed)
                return
            try:
                _WARM_UPS[name]()
            except Exception:  # noqa: BLE001 - an optimisation only
                log.debug("warm-up %r failed", name, exc_info=True)
        _heap.freeze_soon()  # the imports' objects are long-lived: see _heap

    start_background(warm_up, "napari-unet warm-up")


def format_seconds(seconds: float | None) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min' (or '' for None)."""
    if seconds is None or not np.isfinite(seconds):
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def disconnect_all(*connections: tuple[Any, Callable[..., Any]]) -> None:
    """Disconnect each ``(event, slot)`` pair, those not connected (any more) included: what a closed
    dock's widget followed (see :func:`when_undocked`)."""
    for event, slot in connections:
        try:
            event.disconnect(slot)
        except (TypeError, ValueError, RuntimeError):  # (not connected)
            pass


def when_undocked(widget: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` when napari's close button of a dock takes ``widget`` (a QWidget) out of the
    window: napari then deletes the dock but not the widget, which lives on hidden (its run going
    on, its tools bound to the layers) until collected; the Plugins menu makes a new one."""
    from qtpy.QtCore import QEvent, QObject

    class Undocked(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
                callback()
            return False

    watcher = Undocked(widget)  # (a child of the widget: lives as long as it does)
    widget.installEventFilter(watcher)


#: How napari titles the docks of this plugin's widgets ("Segment (napari-unet)").
PLUGIN_DOCK_SUFFIX = "(napari-unet)"


def tab_with_plugin_docks(widget: Any) -> None:
    """Once ``widget`` (a dock's QWidget) is docked in napari's window, it joins another of this
    plugin's docks in the same area as a tab, in front (napari's Plugins menu stacks docks in one
    column: Fine-tune's wrapped notes and curves under Segment made the window taller than a 1000 px
    screen, its canvas, slider and status bar below it; ``napari-unet gui`` tabs them too). Once: a
    dock the user moves or floats afterwards stays where it is put."""
    import weakref

    from qtpy.QtCore import QEvent, QObject, QTimer
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    held = weakref.ref(widget)  # (held strongly, through the filter, a child of the widget, it kept a closed
    # dock's widget alive for good)

    def join() -> None:
        widget = held()
        try:
            dock = widget.parentWidget() if widget is not None else None
        except RuntimeError:  # (deleted meanwhile)
            return
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        if not isinstance(window, QMainWindow) or dock.isFloating() or window.tabifiedDockWidgets(dock):
            return
        area = window.dockWidgetArea(dock)
        others = [d for d in window.findChildren(QDockWidget) if d is not dock and d.isVisible()
                  and not d.isFloating() and window.dockWidgetArea(d) == area
                  and d.windowTitle().endswith(PLUGIN_DOCK_SUFFIX)]
        if others:
            window.tabifyDockWidget(others[-1], dock)
            dock.show()
            dock.raise_()

    class Docked(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.ParentChange and obj.parent() is not None:
                obj.removeEventFilter(self)
                self.deleteLater()
                QTimer.singleShot(0, join)  # (napari puts the dock in its window after it is made)
            return False

    widget.installEventFilter(Docked(widget))


def qt_alive(widget: Any) -> bool:
    """Whether a magicgui widget's Qt widget still exists: a worker's last signals can arrive
    after the viewer (and the dock widget with it) was closed."""
    try:
        widget.native.objectName()
    except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
        return False
    return True


#: The relays of :func:`show_when_known` whose text has not arrived yet.
_RELAYS: set[Any] = set()


def show_when_known(label: Any, describe: Callable[[], str], quick: bool, waiting: str = "finding the GPU…") -> None:
    """Set the magicgui Label ``label`` to ``describe()`` (its error's one line: "unknown (...)"): at
    once when ``quick``; otherwise from a daemon thread, the label saying ``waiting`` until then (the
    first look at a CUDA GPU starts CUDA: a second or more on the main thread as a dock opened). The
    text of the latest call wins; a label closed meanwhile is left be."""
    def text() -> str:
        try:
            return describe()
        except Exception as exc:  # noqa: BLE001 - a broken torch install must not break the widget
            return f"unknown ({one_line(exc)})"

    ticket = object()
    label._napari_unet_pending = ticket  # (a later call's text is the one shown)
    if quick:
        label.value = text()
        return
    from qtpy.QtCore import QObject, Signal

    class Relay(QObject):
        said = Signal(str)

    relay = Relay()  # made on the main thread: its signal, sent from the thread, is queued to it

    def show(words: str) -> None:
        _RELAYS.discard(relay)  # (let go here, on the main thread)
        if qt_alive(label) and getattr(label, "_napari_unet_pending", None) is ticket:
            label.value = words

    relay.said.connect(show)
    # held here until its text arrived, not by the thread alone: a QObject freed by the thread that dropped
    # its last reference is deleted outside its own thread, its queued call maybe with it
    _RELAYS.add(relay)
    label.value = waiting
    start_background(lambda: relay.said.emit(text()), "napari-unet device")


@functools.cache
def _fit_to_text() -> Any:
    """An event filter keeping a word-wrapped QLabel's minimum height at what its text needs for its
    width: in a dock's scroll area (:func:`scroll_when_short`) magicgui's nested row layouts did not
    make their height for a width again when a line's text grew, and the longer message was cut off
    at the top and bottom (Segment's model hint, "Diameter used", Correct's status after Save masks)."""
    from qtpy.QtCore import QEvent, QObject

    QWIDGETSIZE_MAX = (1 << 24) - 1

    def needed(label: Any) -> int:
        # QLabel's height for a width counts the minimum height set here: measured without it, or the
        # height only grew, and a short text after a long one ("Done in 25 s" after three lines of
        # progress) was drawn in the middle of 50 px, out of its row, an empty status to the user
        low, high = label.minimumHeight(), label.maximumHeight()
        label.setMinimumHeight(0)
        label.setMaximumHeight(QWIDGETSIZE_MAX)
        height = label.heightForWidth(max(label.width(), 1))
        label.setMinimumHeight(low)
        label.setMaximumHeight(high)
        return height

    class FitToText(QObject):
        def eventFilter(self, watched: Any, event: Any) -> bool:
            # a new text repaints the label (setText posts no event of its own); a new width resizes it
            if event.type() in (QEvent.Type.Paint, QEvent.Type.Resize):
                # measured once a text and width (every repaint, a progress bar's among them, had a layout pass)
                key = f"{watched.width()}\n{watched.font().key()}\n{watched.text()}"  # (a new font size too)
                if watched.property("napariUnetFitted") == key:
                    return False
                watched.setProperty("napariUnetFitted", key)
                height = needed(watched)
                if height > 0 and (watched.minimumHeight(), watched.maximumHeight()) != (height, height):
                    watched.setFixedHeight(height)  # (at most too: the text is drawn in its row's height)
            return False

    return FitToText()


def unsaved_masks(viewer: Any) -> list[Any]:
    """The Labels layers of ``viewer`` with the user's edits not saved (see
    :data:`~napari_unet.io._corrected.EDITS_KEY`)."""
    from napari.layers import Labels

    from napari_unet.io._corrected import unsaved_edits

    return [layer for layer in viewer.layers if isinstance(layer, Labels) and unsaved_edits(layer.metadata)]


def ask_before_closing_with_unsaved_masks(viewer: Any) -> None:
    """Closing the viewer's window by hand (its close button; File > Close Window, File > Exit and their
    keys, Ctrl+W, Ctrl+Q) while masks hold edits not saved asks first: napari's own question ("Close
    window?", when it is on) did not say that corrections would be lost. Set up once a window.

    The button's close event is the window system's (spontaneous); napari's menu items call the
    window's ``close`` with ``confirm_need`` (checked against napari 0.5.0 to 0.9.2), which is
    wrapped; scripts and ``viewer.close()`` close without asking, as napari's own question does."""
    import weakref

    from qtpy.QtCore import QEvent, QObject

    from ._napari_compat import main_window, unwrap_proxy

    window = main_window(viewer)
    if window is None or window.property("napariUnetAsksUnsaved"):
        return
    window.setProperty("napariUnetAsksUnsaved", True)
    viewer_ref = weakref.ref(unwrap_proxy(viewer))  # (the window's filter must not keep the viewer alive)

    class AskFirst(QObject):
        def eventFilter(self, watched: Any, event: Any) -> bool:
            if event.type() != QEvent.Type.Close or not event.spontaneous():
                return False
            shown = viewer_ref()
            if shown is not None and not close_with_unsaved_masks(shown):
                event.ignore()
                return True
            return False

    window.installEventFilter(AskFirst(window))  # (a child of the window: it goes with it)
    # (the window held weakly, napari's close unbound: a window holding a closure that held it was a cycle,
    # kept alive while the heap was frozen, and the closed viewer never thawed it: see _heap)
    napari_close, window_ref = type(window).close, weakref.ref(window)

    def close(*args: Any, **kwargs: Any) -> Any:
        confirm = kwargs.get("confirm_need", args[1] if len(args) > 1 else False)
        shown, target = viewer_ref(), window_ref()
        if target is None:
            return None
        if confirm and shown is not None and not close_with_unsaved_masks(shown):
            return None  # (as napari's own question, answered no)
        return napari_close(target, *args, **kwargs)

    window.close = close


def close_with_unsaved_masks(viewer: Any) -> bool:
    """Whether to close ``viewer``'s window: yes when no masks hold edits not saved, else the user's answer."""
    from qtpy.QtWidgets import QMessageBox

    from ._napari_compat import main_window

    layers = unsaved_masks(viewer)
    if not layers:
        return True
    names = ", ".join(repr(layer.name) for layer in layers)
    box = QMessageBox(main_window(viewer))
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Edits not saved")
    box.setText(f"Your edits of {names} are not saved.")
    box.setInformativeText("Close without saving them? (Save them with Save masks… in the Correct tab, or File > "
                           "Save Selected Layers…)")
    close = box.addButton("Close without saving", QMessageBox.ButtonRole.DestructiveRole)
    keep = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(keep)
    box.exec()
    return box.clickedButton() is close


def hand_over(off: Any, on: Any) -> None:
    """Disable the magicgui button ``off`` (Segment, Start) and enable ``on`` (Cancel, Stop), the
    keyboard focus moved along when ``off`` had it: Qt passes it on to the next control, which for
    a keyboard user was the dock's title bar, where a second Space hid the dock while the run went on."""
    had_focus = off.native.hasFocus()
    on.enabled = True
    off.enabled = False
    if had_focus:
        on.native.setFocus()


def wrap_text(*labels: Any) -> None:
    """Let magicgui ``Label`` widgets (status lines) wrap, so that long messages are shown
    whole in a narrow dock instead of being cut off at its edge (at the height they need).

    The labels take the row's width rather than their text's: magicgui makes them Fixed, so a
    long note widened the dock for good (a fine-tuning's closing note: 412 -> 641 px, the image's
    part of a 1366 px screen 607 -> 379 px), cut the text's last lines off, and set their row
    names apart from the others'."""
    from qtpy.QtWidgets import QSizePolicy

    for label in labels:
        label.native.setWordWrap(True)
        label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        label.native.installEventFilter(_fit_to_text())


def lead_ndim(layer: "napari.layers.Layer") -> int:
    """The layer's stack axes (time, z, channels...) in front of its planes. napari's ``layer.ndim``
    never counts an RGB layer's colour axis, so this is ``layer.ndim - 2`` for every layer."""
    return max(0, int(layer.ndim) - 2)


def full_resolution(layer: "napari.layers.Layer") -> Any:
    """The layer's pixels at full resolution: a multiscale layer's (pyramidal OME-Zarr or
    OME-TIFF) finest level, else ``layer.data``."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def hides_current_slice(viewer: Any, layer: Any) -> bool:
    """Whether the viewer shows ``layer`` in 3D, so that the slice its sliders name is not the one in
    sight (an edit or a mark "of the slice shown" would act on one the user does not see)."""
    return viewer.dims.ndisplay != 2 and layer.ndim > 2


def shows_yx_planes(viewer: Any, layer: Any) -> bool:
    """Whether the canvas shows the layer's own planes (its last two axes, in either order)."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        return True  # a 3D view: the slider position says which plane
    offset = dims.ndim - int(layer.ndim)
    return set(dims.displayed) == {offset + layer.ndim - 2, offset + layer.ndim - 1}


def _affine_of(transform: Callable[[Any], Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(origin, matrix)`` of a layer's map between world and data coordinates over its ``n`` axes
    (``layer.world_to_data`` or ``layer.data_to_world``): ``transform(x) = matrix @ x + origin``."""
    origin = np.asarray(transform(np.zeros(n)), dtype=float)[-n:]
    matrix = np.stack([np.asarray(transform(np.eye(n)[j]), dtype=float)[-n:] - origin for j in range(n)], axis=1)
    return origin, matrix


def _sliced_data_point(viewer: Any, layer: Any) -> np.ndarray:
    """The viewer's position in the layer's data coordinates as napari slices the layer: its axes not
    displayed are mapped through their own block of the world-to-data transform, as napari's slicing does
    (``_SliceInput.data_slice``); the displayed ones through the whole transform. The whole transform alone
    named another slice than the one shown when an affine mixes the sliced axis with the displayed ones
    (a shear of deskewed light-sheet data, an oblique rotation): world z 10 shown, slice 1 segmented."""
    dims = viewer.dims
    n = int(layer.ndim)
    offset = dims.ndim - n
    world = np.asarray(dims.point, dtype=float)[offset:]
    point = np.asarray(layer.world_to_data(dims.point), dtype=float)[-n:]
    hidden = [a - offset for a in dims.not_displayed if a >= offset]
    if not hidden:
        return point
    origin, linear = _affine_of(layer.world_to_data, n)  # (data axis, world axis)
    block = linear[np.ix_(hidden, hidden)]
    point[hidden] = block @ world[hidden] + origin[hidden]
    return point


def current_plane_index(viewer: "napari.Viewer", layer: "napari.layers.Layer", strict: bool = False,
                        free_axes: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Indices along the layer's non-plane axes of the slice the viewer shows now (the nearest one
    when the viewer's position lies outside the layer, as with a stack shorter than another).
    ``free_axes``: axes that ``strict`` leaves be (a 3D run's Z: it takes the whole volume).

    Raises
    ------
    ValueError
        ``strict`` and the layer has no slice at the viewer's position (napari shows nothing of it).
    """
    n_lead = lead_ndim(layer)
    if n_lead <= 0:
        return ()
    coords = _sliced_data_point(viewer, layer)[:n_lead]
    shape = layer.data.shape[:n_lead]
    index = tuple(int(np.round(c)) for c in coords)
    if strict:
        for axis, (i, s) in enumerate(zip(index, shape)):
            if not 0 <= i < s and axis not in free_axes:
                label = str(viewer.dims.axis_labels[viewer.dims.ndim - layer.ndim + axis])
                if label.lstrip("-").isdigit():  # napari's own labels ("-3") name no axis to a user
                    label = f"its axis {axis}"
                raise ValueError(f"{layer.name!r} has no slice at the viewer's position ({label} = {i}; it has {s} "
                                 f"along that axis): move the slider into it.")
    return tuple(int(np.clip(i, 0, s - 1)) for i, s in zip(index, shape))


def show_plane(viewer: "napari.Viewer", layer: "napari.layers.Layer", plane: tuple[int, ...]) -> None:
    """Move the viewer's sliders to ``plane`` (indices along the layer's non-plane axes)."""
    if not plane:
        return
    offset = viewer.dims.ndim - layer.ndim
    for axis, index in enumerate(plane):
        world = float(layer.translate[axis]) + float(layer.scale[axis]) * int(index)
        viewer.dims.set_point(axis + offset, world)


def visible_region(
    viewer: "napari.Viewer", layer: "napari.layers.Layer", plane_shape: tuple[int, int]
) -> tuple[slice, slice]:
    """(rows, cols) slices of the layer's plane that the canvas shows at the current zoom.

    Computed from the camera (centre, zoom) and the canvas size, so it is right even
    before napari has drawn the new view; clipped to the plane.
    """
    h, w = plane_shape
    camera = viewer_camera(viewer)
    canvas = view_size(viewer)  # (in grid mode: one tile)
    zoom = float(camera.zoom)
    if canvas is None or min(canvas) <= 1 or zoom <= 0:
        return slice(0, h), slice(0, w)
    half = np.asarray(canvas, dtype=float) / zoom / 2
    center = np.asarray(camera.center[-2:], dtype=float)
    # the camera and the canvas are in the order of the axes on screen (after napari's transpose
    # button, X then Y): the world axes they stand for, in that order
    shown = list(viewer.dims.displayed)[-2:]
    # napari draws a slice through the block of the layer's data-to-world transform of the displayed axes
    # only (an out-of-slice shear or rotation is not applied: a deskew shear, world y = y + k z): the part
    # on screen is found through that block too (the whole transform put it k z rows away)
    n = int(layer.ndim)
    offset = viewer.dims.ndim - n
    axes = [a - offset for a in shown]  # the layer's displayed axes, in screen order
    origin, forward = _affine_of(layer.data_to_world, n)  # (world axis, data axis)
    inverse = np.linalg.inv(forward[np.ix_(axes, axes)])
    corners = []
    for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):  # all four: a rotated or sheared layer's box
        data = np.zeros(n)
        data[axes] = inverse @ (center + half * (dy, dx) - origin[axes])
        corners.append(data)
    yx = np.asarray(corners)[:, -2:]  # the layer's ndim coordinates: never a colour one
    (y0, x0), (y1, x1) = yx.min(axis=0), yx.max(axis=0)
    y0, y1 = int(np.clip(np.floor(y0), 0, h)), int(np.clip(np.ceil(y1) + 1, 0, h))
    x0, x1 = int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.ceil(x1) + 1, 0, w))
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise ValueError("the image is not in view: pan or zoom to it, or segment the current slice.")
    return slice(y0, y1), slice(x0, x1)
