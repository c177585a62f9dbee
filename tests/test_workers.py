"""The thread workers the widgets run their jobs in (real napari workers, real Qt)."""

from __future__ import annotations

import pytest

from napari_unet.widgets._base import WorkerRuntimeError, carry_runtime_errors, start_worker


def _fails_with(error: BaseException):
    yield "a step"
    raise error


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access"), ValueError("bad value")])
def test_an_error_of_the_job_reaches_errored_and_finished(qtbot, error):
    """superqt's GeneratorWorker takes a RuntimeError for its own deleted Qt object: it warned
    "RuntimeError in aborted thread" and emitted neither errored nor finished (torch's errors are
    RuntimeErrors: Segment waited forever, its Run button off)."""
    seen: list = []
    finished: list = []
    start_worker(_fails_with(error), yielded=seen.append, errored=seen.append, finished=lambda: finished.append(1))
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert seen == ["a step", error]  # the error as raised, not a wrapper


def test_the_training_body_carries_its_runtime_errors_out():
    """What the Fine-tune worker's body (its own worker class) goes through: the error comes out
    as a WorkerRuntimeError holding the original (its panel's errored unwraps it)."""
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    carried = carry_runtime_errors(_fails_with(error))
    assert next(carried) == "a step"
    with pytest.raises(WorkerRuntimeError) as raised:
        next(carried)
    assert raised.value.error is error and raised.value.__cause__ is error


def _waits_for(event):
    yield "started"
    assert event.wait(30)
    return "done"


def test_a_job_starts_at_once_when_the_thread_pool_is_busy_and_warnings_are_shown_after(qtbot):
    """Qt's pool has a thread per CPU: a third job on a 2-core laptop (Save masks during Fine-tune and
    Segment) waited in its queue; and jobs that ended out of order left a dead worker's warnings hook."""
    import threading
    import warnings

    from qtpy.QtCore import QThreadPool

    hook, filters = warnings.showwarning, list(warnings.filters)
    release = [threading.Event() for _ in range(QThreadPool.globalInstance().maxThreadCount() + 1)]
    started, ended = [], []
    for i, event in enumerate(release):  # every thread of the pool busy
        start_worker(_waits_for(event), yielded=started.append, finished=lambda i=i: ended.append(i))
    qtbot.waitUntil(lambda: len(started) == len(release), timeout=10_000)
    quick: list = []
    start_worker(_fails_with(ValueError("quick")), errored=quick.append)
    qtbot.waitUntil(lambda: bool(quick), timeout=10_000)  # ran while the others still hold their threads
    assert not ended
    release[0].set()  # the first started ends first: out of order
    qtbot.waitUntil(lambda: ended == [0], timeout=10_000)
    for event in release[1:]:
        event.set()
    qtbot.waitUntil(lambda: len(ended) == len(release), timeout=10_000)
    qtbot.wait(50)
    assert warnings.showwarning is hook and warnings.filters == filters


def test_a_finished_jobs_slots_let_go_of_what_they_hold(make_napari_viewer, qtbot):
    """napari keeps every worker it made in the window's task list for the session, and the slots
    connected to a worker kept what they hold: a closed Segment dock with its layers and kept
    probabilities (70 MB a round), each masks layer of a large plane filled."""
    import gc
    import weakref

    import numpy as np

    make_napari_viewer()  # (its window's task list keeps the workers)

    def job():
        yield 1

    held = np.zeros(10)  # what a slot's closure holds (a widget, a layer)
    ref = weakref.ref(held)
    done: list = []
    start_worker(job(), yielded=lambda _item, held=held: None, finished=lambda: done.append(True))
    del held
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)
    qtbot.waitUntil(lambda: (gc.collect(), ref() is None)[1], timeout=5_000)


def test_a_titled_job_is_its_function_under_the_title_napari_shows():
    """napari's dialog on closing a window with running tasks says "Executing <function>": a job's
    body is named by its title there, and is still the generator function (or plain function) it
    wraps for superqt, which tells the worker's kind by it."""
    import inspect

    from napari_unet.widgets._base import titled

    def body(n):
        yield from range(n)
        return n

    def plain(n):
        return 2 * n

    named = titled(body, "Segment of 'cells' (stops)")
    assert f"Executing {named}" == "Executing napari-unet: Segment of 'cells' (stops)"
    assert inspect.isgeneratorfunction(named) and list(named(3)) == [0, 1, 2]
    named_plain = titled(plain, "Load stack, reading a.tif")
    assert not inspect.isgeneratorfunction(named_plain) and named_plain(2) == 4
    assert titled(body, None) is body


def test_the_interpreters_exit_waits_for_the_background_threads(tmp_path):
    """Closed a few seconds after Fine-tune docked, napari died at exit ("terminate called without an
    active exception", a segmentation fault): torch's first optimiser step still ran in the warm-up
    thread while the interpreter was torn down. Exit now waits for the plugin's background threads, and
    tells them to stop between their steps."""
    import subprocess
    import sys

    done = tmp_path / "done"
    code = f"""
import time
from napari_unet.widgets import _base

def slow():
    time.sleep(1.0)
    open({str(done)!r}, "w").write("exiting" if _base.EXITING.is_set() else "not told")

_base.start_background(slow, "napari-unet test")
"""  # (the interpreter exits at once)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert done.read_text() == "exiting"
