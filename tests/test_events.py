"""core.events.run_to_end: the one pump for the core's generators."""

from __future__ import annotations

import pytest

from napari_unet.core.events import run_to_end


def _counting(closed: list[bool]):
    try:
        yield 1
        yield 2
        return "done"
    finally:
        closed.append(True)


def test_run_to_end_forwards_events_and_returns_the_value():
    closed: list[bool] = []
    seen: list[int] = []
    assert run_to_end(_counting(closed), seen.append) == "done"
    assert seen == [1, 2] and closed == [True]
    assert run_to_end(_counting(closed)) == "done"  # no callback


def test_run_to_end_closes_the_generator_when_the_callback_fails():
    closed: list[bool] = []
    gen = _counting(closed)

    def fail(event: int) -> None:
        raise KeyError(event)

    with pytest.raises(KeyError):
        run_to_end(gen, fail)
    assert closed == [True]  # the generator's finally ran before the error reached the caller
    with pytest.raises(StopIteration):
        next(gen)
