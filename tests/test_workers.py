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
