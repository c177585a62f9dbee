"""Training in legs: a run cut by a checkpoint goes on exactly as one run would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import SegmentationModel
from napari_unet.core.events import TrainStep, Validation
from napari_unet.core.model import UNet
from napari_unet.core.optimise import autocast_dtype, cpu_has_fast_bf16
from napari_unet.core.resume import CheckpointError, capture, load_checkpoint, restore, save_checkpoint
from napari_unet.core.train import prepare_run

STEPS = 6
OPTIONS = dict(steps=STEPS, patch_size=48, batch_size=2, lr=3e-3, validate_every=2, device="cpu", seed=3,
               from_scratch=True, workers=0)


def _fresh() -> SegmentationModel:
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch")
    return SegmentationModel(net, "bg-interior-boundary", metadata={"name": "legs"})


def _drive(gen):
    """Drive a trainer's run to its end; return (events, run summary)."""
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as done:
        return events, done.value


@pytest.fixture
def one_thread():
    """Bit-for-bit comparisons need one reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _many_cells(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """A DSB2018 val crop (CC0) whose held-out band holds 15 nuclei: the gate of
    :mod:`napari_unet.core.validation` compares each step with the starting weights."""
    from skimage.io import imread

    name = "20b20ab049372d184c705acebe7af026d3580f5fd5a72ed796e3622e1685af2f"
    image = imread(data_dir / "dsb2018" / "images" / f"{name}.png")
    labels = imread(data_dir / "dsb2018" / "labels" / f"{name}.png")
    if image.ndim == 3:
        image = image[..., :3].mean(-1).astype(np.uint8)
    return image[150:342, 600:792], labels[150:342, 600:792].astype(np.int32)


@pytest.mark.parametrize("stop_after, gated", [(3, False), (4, False), (3, True)])
def test_two_legs_equal_one_run(dsb_fluo_crop, data_dir, tmp_path, one_thread, stop_after, gated):
    # stop_after=4: the leg's time ran out right after a step due for validation (every 2): that
    # validation was skipped for good, and the legs could keep other weights than the one run.
    # gated: the starting weights' block losses, which the gate compares each step with, are kept too
    image, labels = _many_cells(data_dir) if gated else dsb_fluo_crop

    one = prepare_run(_fresh(), [image], [labels], **OPTIONS)
    events_one, run_one = _drive(one.trainer.run())
    straight = one.result(run_one)

    # leg 1: stopped after a few steps (as a leg's time limit stops it), checkpointed to disk
    first = prepare_run(_fresh(), [image], [labels], **OPTIONS)
    done = {"n": 0}

    def stopped() -> bool:
        return done["n"] >= stop_after

    gen = first.trainer.run(stopped)
    leg1 = []
    try:
        while True:
            e = next(gen)
            leg1.append(e)
            if isinstance(e, TrainStep):
                done["n"] = e.step
    except StopIteration as end:
        run1 = end.value
    assert run1.steps == stop_after and run1.stopped_early
    first_start = first.tracker.start
    assert (first_start is not None and len(first_start.blocks) > 4) if gated else first_start is None
    path = save_checkpoint(capture(first, run1, {"leg": 1}), tmp_path / "training" / "checkpoint.pt")
    del first, gen

    # leg 2: a new process would do this: the model from the checkpoint, the same options, restore, go on
    state = load_checkpoint(path)
    assert state["extra"] == {"leg": 1} and state["run"]["steps"] == stop_after
    second = prepare_run(SegmentationModel.from_dict(state["model"]), [image], [labels], **OPTIONS)
    start = restore(second, state)
    assert second.tracker.rule.gate is gated and second.tracker.start == first_start
    events_two, run2 = _drive(second.trainer.run(start=start))
    resumed = second.result(run2)

    steps_one = [e for e in events_one if isinstance(e, TrainStep)]
    steps_legs = [e for e in leg1 + events_two if isinstance(e, TrainStep)]
    assert [e.step for e in steps_legs] == list(range(1, STEPS + 1))
    assert [e.loss for e in steps_legs] == [e.loss for e in steps_one]  # same patches, same updates
    assert [e.lr for e in steps_legs] == [e.lr for e in steps_one]  # one schedule over both legs
    vals_one = [(v.step, v.ap50, v.loss) for v in events_one if isinstance(v, Validation)]
    vals_legs = [(v.step, v.ap50, v.loss) for v in leg1 + events_two if isinstance(v, Validation)]
    assert vals_legs == vals_one  # no second step-0 validation when resuming
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert resumed.metadata["steps"] == STEPS and resumed.metadata["training"]["history"] == \
        straight.metadata["training"]["history"]


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="No training checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"version": 99}, other)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(other)


def test_cpu_mixed_precision_only_where_the_cpu_has_bf16():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, None) is None and autocast_dtype(cpu, False) is None
    assert autocast_dtype(cpu, True) == (torch.bfloat16 if cpu_has_fast_bf16() else None)


def test_bf16_training_on_cpu_runs_when_available(dsb_fluo_crop):
    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no bfloat16 instructions")
    image, labels = dsb_fluo_crop
    run = prepare_run(_fresh(), [image], [labels], **{**OPTIONS, "steps": 2, "mixed_precision": True})
    events, summary = _drive(run.trainer.run())
    model = run.result(summary)
    assert model.metadata["training"]["mixed_precision"] == "bfloat16"
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, TrainStep))


def test_legs_write_checkpoints_and_say_when_the_run_is_finished(dsb_fluo_crop, tmp_path):
    from napari_unet.core.resume import iter_leg

    image, labels = dsb_fluo_crop
    path = tmp_path / "checkpoint.pt"
    first = prepare_run(_fresh(), [image], [labels], **OPTIONS)
    seen = []

    def after_two() -> bool:
        return sum(isinstance(e, TrainStep) for e in seen) >= 2

    gen = iter_leg(first, path, stop=after_two, checkpoint_every=0.0, extra={"leg": 1})
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as end:
        run, finished = end.value
    assert run.steps == 2 and not finished and path.is_file()
    state = load_checkpoint(path)
    assert state["run"]["steps"] == 2 and state["extra"] == {"leg": 1}
    assert [h["step"] for h in state["tracker"]["history"]] == [0]  # no validation once the leg is stopped

    second = prepare_run(SegmentationModel.from_dict(state["model"]), [image], [labels], **OPTIONS)
    gen = iter_leg(second, path, start=restore(second, state), leg_seconds=3600.0)
    rest = []
    try:
        while True:
            rest.append(next(gen))
    except StopIteration as end:
        run, finished = end.value
    assert finished and run.steps == STEPS
    assert [e.step for e in rest if isinstance(e, TrainStep)] == list(range(3, STEPS + 1))
    assert load_checkpoint(path)["run"]["steps"] == STEPS


def _start_then_trained(base, image, labels):
    """A run prepared with the starting weights' scores recorded (AP 0.5, loss 0.40 and its blocks), then
    weights moved as by training: (the run, the start's block losses, the trained weights)."""
    from napari_unet.core.validation import Scores

    prepared = prepare_run(base, [image], [labels], **{**OPTIONS, "from_scratch": False})
    tracker, net = prepared.tracker, prepared.trainer.net
    assert tracker.rule.gate and tracker.layout.n_blocks >= 4
    blocks = tuple(0.4 + 0.05 * np.sin(np.arange(tracker.layout.weights.size)))
    assert tracker.record(Scores(0, 0.50, 0.8, 0.40, blocks), net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    return prepared, blocks, {k: v.clone() for k, v in net.state_dict().items()}


def test_the_weights_the_gate_held_back_come_as_a_model_of_their_own(data_dir, one_thread):
    """The gate kept the starting weights: the best weights it held back are offered (Fine-tune's "Keep the
    trained weights instead"), as a model whose metadata says which step and why; the model returned is the
    start's. Scores recorded by hand into the run's tracker: which steps the gate holds back in a real
    run of a few steps is not foreseeable."""
    from napari_unet.core.train_metadata import RunSummary
    from napari_unet.core.validation import Scores

    image, labels = _many_cells(data_dir)
    base = _fresh()
    start_weights = {k: v.clone() for k, v in base.net.state_dict().items()}
    prepared, blocks, trained = _start_then_trained(base, image, labels)
    tracker, net = prepared.tracker, prepared.trainer.net
    assert not tracker.record(Scores(2, 0.70, 0.8, 0.399, tuple(b - 0.001 + 0.03 * (-1) ** i for i, b in enumerate(blocks))), net)  # no clear gain
    run = RunSummary(steps=2)
    kept = prepared.result(run)
    assert kept.metadata["training"]["gate_kept_start"] and kept.metadata["training"]["selected_step"] == 0
    assert all(torch.equal(v, start_weights[k]) for k, v in kept.net.state_dict().items())
    # and it segments as the start did: no size of the user's objects to start the automatic diameter from
    # (it moved the search: 0.766 -> 0.757 on other Usiigaci fields with the very same weights)
    base.metadata.update(postprocessing_by_kind={"colour": {"threshold": 0.4}})
    assert prepared.result(run).metadata["postprocessing_by_kind"] == {"colour": {"threshold": 0.4}}
    assert "data_diameter" not in kept.metadata
    held = prepared.held_back_result(run)
    assert held is not None and held.net is not kept.net
    assert all(torch.equal(v, trained[k]) for k, v in held.net.state_dict().items())
    training = held.metadata["training"]
    assert training["selected_step"] == 2 and held.metadata["val_ap50"] == 0.70 and training["kept_against_gate"]
    assert held.metadata["data_diameter"] > 0 and "postprocessing_by_kind" not in held.metadata
    assert not training["gate_kept_start"] and "kept at the user's request" in training["selection_note"]


def test_where_no_step_scored_better_the_runs_last_weights_are_offered(data_dir, one_thread):
    """No step beat the start on the held-out part, the gate aside: the run's last weights are offered
    too (a user who corrected a few cells: the held-out part, mostly the model's own masks, favoured the
    start, while the last weights did better on other frames), their metadata saying so."""
    from napari_unet.core.model import cpu_state
    from napari_unet.core.train_metadata import RunSummary
    from napari_unet.core.validation import Scores

    image, labels = _many_cells(data_dir)
    base = _fresh()
    prepared, blocks, trained = _start_then_trained(base, image, labels)
    tracker, net = prepared.tracker, prepared.trainer.net
    assert not tracker.record(Scores(2, 0.40, 0.7, 0.45, tuple(b + 0.05 for b in blocks)), net)  # worse
    assert not tracker.gate_kept_start
    run = RunSummary(steps=2)
    latest = cpu_state(net)
    kept = prepared.result(run)
    assert kept.metadata["training"]["selected_step"] == 0
    assert prepared.held_back_result(run) is None  # (nothing the gate held back)
    offered = prepared.held_back_result(run, latest)
    assert all(torch.equal(v, trained[k]) for k, v in offered.net.state_dict().items())
    training = offered.metadata["training"]
    assert training["selected_step"] == 2 and offered.metadata["val_ap50"] == 0.40
    assert not training["kept_against_gate"] and "the last weights of the run (step 2)" in training["selection_note"]


def test_a_leg_writes_its_checkpoint_at_a_validation_before_it_ends(dsb_fluo_crop, tmp_path):
    """A leg's checkpoint is written at each validation (``checkpoint_every=0``), not only at its end:
    a leg that crashes keeps what it learnt up to its last validation."""
    from napari_unet.core.resume import iter_leg

    image, labels = dsb_fluo_crop
    path = tmp_path / "checkpoint.pt"
    gen = iter_leg(prepare_run(_fresh(), [image], [labels], **OPTIONS), path, checkpoint_every=0.0)
    for event in gen:
        if isinstance(event, Validation) and event.step > 0:
            next(gen)  # (the checkpoint is written after the validation is yielded)
            assert load_checkpoint(path)["run"]["steps"] == event.step
            break
    else:
        pytest.fail("no validation after the first step")
    gen.close()


def test_an_urgent_stop_during_a_validation_drops_it(dsb_fluo_crop, one_thread):
    """A scheduler's SIGTERM (an urgent stop) during a validation of many held-out images waited for its end
    (14 s, up to ~50 s a held-out image on a loaded node: Slurm's kill comes 30 s after). The validation is
    dropped between its planes, nothing of it recorded, and the run stops as after a step."""
    image, labels = dsb_fluo_crop
    halves = [image[:, : image.shape[1] // 2], image[:, image.shape[1] // 2:]]
    label_halves = [labels[:, : labels.shape[1] // 2], labels[:, labels.shape[1] // 2:]]
    run = prepare_run(_fresh(), [image], [labels], val_images=halves, val_labels=label_halves, **OPTIONS)
    calls = []

    def urgent() -> bool:  # (false at the first held-out plane of the first validation after steps, then true)
        calls.append(1)
        return len(calls) >= 2

    events, summary = _drive(run.trainer.run(user_stop=True, urgent=urgent))
    validations = [e for e in events if isinstance(e, Validation)]
    steps = [e.step for e in events if isinstance(e, TrainStep)]
    assert [v.step for v in validations] == [0] and steps == [1, 2]  # (the one at step 2 dropped)
    assert summary.stopped_early and summary.unvalidated
    assert [h["step"] for h in run.tracker.history] == [0]
