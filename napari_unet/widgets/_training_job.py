"""The body of the Fine-tune widget's training worker (no Qt).

:func:`train_and_save` loads the base model, fine-tunes it with
:func:`napari_unet.core.train.finetune` (passing on its progress events) and saves the best
model atomically, handing back a :class:`TrainingResult`. Segmenting with the new model is
the Segment widget's job. torch is imported lazily, inside the function.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._examples import Example, read_examples


@dataclass
class TrainingResult:
    """What the training worker hands back to the main thread."""

    model: Any  # SegmentationModel or None (stopped before the first step)
    path: Path | None  # where it was saved, None if it was not
    save_error: BaseException | None
    steps: int
    target: Path | None = None
    #: The training failed after ``steps`` steps: ``model`` has the best weights validated before
    #: (those of step ``failed_step``), what failed is here.
    failure: BaseException | None = None
    failed_step: int | None = None
    #: The gate kept the starting weights: the model with the best weights it held back, which
    #: the user may keep instead (:class:`napari_unet.core.events.HeldBackWeights`); not saved.
    held_back: Any = None
    #: The best weights of the run written as 'NAME unfinished', left where the model could not be saved
    #: (removed by a later Save again)
    unfinished: Path | None = None


def train_and_save(
    base_model_path: str,
    examples: list[Any],
    target: Path,
    *,
    name: str,
    settings: dict[str, Any],
    stop: threading.Event,
    replace: Any = False,
):
    """Worker body: read the examples not read yet (:func:`._examples.read_examples`: yielding
    Progress, a TrainNote for slices left out; an ``ExamplesError`` for examples that cannot be
    trained on), load the base model, fine-tune it (yielding TrainStep/Validation events),
    then save the best model atomically to ``target``.

    Returns a :class:`TrainingResult`; a save failure is returned (not raised) so the
    trained model is kept and can be saved again. ``replace``: the model at ``target`` the user agreed, when
    the run started, to replace (its ``file_identity``; see ``save_without_replacing``); without it, a model saved there while this run
    trained is kept, and this one goes to the first free ``NAME-2``, ``NAME-3``, ...
    """
    from napari_unet.core.checkpoint import read_model_file

    if any(not isinstance(ex, Example) for ex in examples):  # read here, not in the window
        examples = yield from read_examples(examples, stop)
        if examples is None:  # stopped while reading them
            return TrainingResult(None, None, None, 0, target)
    base = read_model_file(base_model_path, device="cpu")
    keeper = _UnfinishedCopy(name)
    result = yield from _train(base, examples, target, name, settings, stop, replace, keeper)
    if result.path is not None or result.model is None:  # (saved, or nothing to keep; a failed save: kept)
        keeper.remove()
    elif keeper.written:
        result.unfinished = keeper.path
    return result


#: The 'NAME unfinished' files of runs going on in this process (two windows training one name at once
#: took the same file: each wrote over the other's, and the first to end removed the other's)
_CLAIMED: set[Path] = set()
_CLAIM_LOCK = threading.Lock()


class _UnfinishedCopy:
    """The best weights of a run going on, written to the model folder as ``NAME unfinished`` each time
    better ones are validated (at most once a minute): napari killed (out of memory, a force-quit) kept
    nothing of a fine-tuning, its best weights held in memory alone. Listed with the user's models, so
    that they find it after such an end; removed when the run ends."""

    def __init__(self, name: str) -> None:
        from napari_unet.core.catalog import free_model_path, user_model_path

        self.path: Any = None
        self.written = False
        with _CLAIM_LOCK:
            try:
                candidate, k = free_model_path(user_model_path(f"{name} unfinished")), 2  # (one left before: kept)
                while candidate in _CLAIMED:
                    candidate, k = free_model_path(user_model_path(f"{name} unfinished {k}")), k + 1
            except ValueError:  # (a name too long for the word: no copy)
                return
            _CLAIMED.add(candidate)
            self.path = candidate

    def __call__(self, model: Any) -> None:
        from napari_unet.core.checkpoint import save_model

        if self.path is None:
            return
        model.metadata["name"] = self.path.stem
        model.metadata["description"] = ("The best weights of a fine-tuning that did not end (napari closed or "
                                         "killed during it), at the step its training says.")
        save_model(model, self.path)
        self.written = True

    def remove(self) -> None:
        if self.written and self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.written = False
        with _CLAIM_LOCK:
            _CLAIMED.discard(self.path)


def _train(base: Any, examples: list, target: Path, name: str, settings: dict[str, Any], stop: Any, replace: Any,
           keeper: _UnfinishedCopy):
    from napari_unet.core.checkpoint import stamp_metadata
    from napari_unet.core.events import HeldBackWeights, TrainStep
    from napari_unet.core.train import TrainingFailed, finetune

    gen = finetune(
        base,
        [ex.image for ex in examples],
        [ex.labels for ex in examples],
        stop=stop,
        colours=[ex.colour for ex in examples],
        sections=bool(examples) and all(ex.sections for ex in examples),  # (every one through 3D objects)
        keep_best=keeper,
        **settings,
    )
    steps = 0
    failed: TrainingFailed | None = None
    held_back = None
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            model = done.value
            break
        except TrainingFailed as exc:  # the weights that were best before it failed are saved
            model, failed = exc.model, exc
            break
        if isinstance(event, TrainStep):
            steps = event.step
        if isinstance(event, HeldBackWeights):  # (handed back with the result, not through the event queue)
            held_back = event.model
            continue
        yield event
    if model is None or steps == 0:
        return TrainingResult(None, None, None, steps, target)
    model.metadata["name"] = name
    model.metadata.setdefault("base_model", base.name)
    model.metadata.setdefault("n_examples", len(examples))
    model.metadata["examples"] = [ex.source for ex in examples][:200]
    model.metadata.setdefault("steps", steps)
    stamp_metadata(model)  # adds the date when the engine did not
    from napari_unet.core.catalog import save_without_replacing

    failure = dict(failure=failed.error, failed_step=failed.step) if failed is not None else {}
    if held_back is not None:
        held_back.metadata.update({k: model.metadata[k] for k in ("base_model", "n_examples", "examples", "steps")})
    try:
        path = save_without_replacing(model, target, replace)
    except OSError as exc:
        return TrainingResult(model, None, exc, steps, target, **failure, held_back=held_back)
    return TrainingResult(model, path, None, steps, target, **failure, held_back=held_back)
