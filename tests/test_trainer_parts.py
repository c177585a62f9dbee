"""The parts finetune is made of: schedule, patch sampler, loss and optimiser step, validation
with best-weights tracking, metadata. Real small U-Nets and a real DSB2018 crop."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core.augment import NO_AUGMENT, AugmentConfig
from napari_unet.core.checkpoint import SegmentationModel
from napari_unet.core.events import TrainStep, Validation, run_to_end
from napari_unet.core.examples import TrainingExample, prepare_examples
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.metrics import average_precision, dice
from napari_unet.core.model import UNet
from napari_unet.core.optimise import (
    Batch,
    Optimiser,
    evaluation_mode,
    parts_for_memory,
    set_train_mode,
    step_memory,
    weighted_cross_entropy,
    weighted_nll,
)
from napari_unet.core.patches import PatchGeometry, PatchSampler
from napari_unet.core.schedule import (
    DEFAULT_VALIDATIONS,
    RunBudget,
    ValidationCadence,
    WarmupCosine,
    validation_interval,
)
from napari_unet.core.targets import TargetRecipe
from napari_unet.core.tiling import tile_context
from napari_unet.core.train import Trainer, run_finetune
from napari_unet.core.train_metadata import run_record
from napari_unet.core.validation import (
    MIN_VAL_OBJECTS_FOR_AP,
    BestWeights,
    Scores,
    SelectionRule,
    Validator,
    describe_selection,
    forward_plane,
    validation_planes,
)

CPU = torch.device("cpu")


def _net(padding: str = "same", depth: int = 2, n_classes: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=1, n_classes=n_classes, base_width=4, depth=depth, padding=padding, norm="batch")


def _examples(crop):
    image, labels = crop
    model = SegmentationModel(_net().eval(), "bg-interior-boundary", metadata={"name": "tiny"})
    return prepare_examples(model, [image], [labels])


# ---------------------------------------------------------------------- schedule
def test_warmup_then_cosine_to_the_floor():
    schedule = WarmupCosine(1e-3)
    assert schedule(0.0) == pytest.approx(2e-5)  # warm-up starts at 2 % of lr
    assert schedule(0.025) == pytest.approx(0.5e-3)
    assert schedule(0.05) == pytest.approx(1e-3)  # peak at the end of the warm-up
    after = [schedule(f) for f in np.linspace(0.05, 1.0, 20)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert schedule(1.0) == pytest.approx(0.05e-3) and schedule(1.7) == schedule(1.0)
    assert schedule.describe() == "warm-up 5%, cosine to 5%"
    assert WarmupCosine(1.0, warmup=0.1, floor=0.0)(1.0) == pytest.approx(0.0)


def test_run_budget_by_steps_time_or_both():
    by_steps = RunBudget(steps=10)
    assert by_steps.fraction(5, 999.0) == 0.5 and not by_steps.finished(9, 1e6) and by_steps.finished(10, 0.0)
    assert by_steps.is_last_step(10) and not by_steps.is_last_step(9)
    by_time = RunBudget(time_budget=4.0)
    assert by_time.fraction(1000, 1.0) == 0.25 and by_time.finished(0, 4.0) and not by_time.is_last_step(10**6)
    both = RunBudget(steps=10, time_budget=4.0)
    assert both.fraction(2, 2.0) == 0.5 and both.fraction(8, 2.0) == 0.8  # the further of the two
    assert both.fraction(20, 9.0) == 1.0
    assert both.finished(3, 4.0) and both.finished(10, 0.1) and not both.finished(3, 1.0)


def test_validation_cadence_from_the_finetune_setting():
    assert validation_interval(10, 95, None) == 9 and validation_interval(10, 5, 60.0) == 1
    assert validation_interval(4, None, 60.0) == 15.0 and validation_interval(4, None, None) is None
    assert ValidationCadence.from_setting(None, 200, None) == ValidationCadence(every_steps=200 // DEFAULT_VALIDATIONS)
    assert ValidationCadence.from_setting(None, None, 30.0) == ValidationCadence(every_seconds=3.0)
    for meaningless in (0, -1, float("nan"), True):  # (0 and -1 were taken as every step)
        with pytest.raises(ValueError, match="validate_every"):
            ValidationCadence.from_setting(meaningless, 10, None)
    assert ValidationCadence.from_setting(2.5, 10, None) == ValidationCadence(every_seconds=2.5)
    assert ValidationCadence.from_setting(None, 0, None) == ValidationCadence()
    steps = ValidationCadence(every_steps=3)
    assert [s for s in range(1, 10) if steps.due(s, 0.0, 0.0)] == [3, 6, 9]
    seconds = ValidationCadence(every_seconds=2.0)
    assert seconds.due(1, now=12.0, last_time=10.0) and not seconds.due(1, now=11.9, last_time=10.0)
    assert not ValidationCadence().due(3, 100.0, 0.0)


# ---------------------------------------------------------------------- patches
def test_patch_geometry_fits_the_network_and_the_planes():
    same = PatchGeometry.for_network(_net("same", depth=3), 102, largest=500)
    assert same.in_size == 104 and same.out_size == 104 and same.crop == 0  # multiple of 4
    assert PatchGeometry.for_network(_net("same", depth=3), 256, largest=60).in_size == 60
    valid_net = _net("valid", depth=2)
    valid = PatchGeometry.for_network(valid_net, 48, largest=500)
    assert valid.in_size == valid_net.valid_input_size(48) and valid.out_size == valid_net.output_size(valid.in_size)
    assert valid.crop == valid_net.margin > 0


def test_sampler_gives_batches_of_patches_and_targets(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    net = _net("valid")
    geometry = PatchGeometry.for_network(net, 48, 128)
    sampler = PatchSampler(examples, geometry, TargetRecipe(), AugmentConfig(), 3, np.random.default_rng(0))
    batch = sampler.next_batch()
    n_in, n_out = geometry.in_size, geometry.out_size
    assert batch.images.shape == (3, 1, n_in, n_in) and batch.images.dtype == np.float32
    assert batch.classes.shape == batch.weights.shape == (3, n_out, n_out)
    assert set(np.unique(batch.classes)) <= {0, 1, 2} and batch.weights.min() >= 0.1
    with torch.no_grad():  # the targets cover exactly what the network outputs
        assert net.eval()(torch.from_numpy(batch.images)).shape[-2:] == batch.classes.shape[-2:]


def test_debris_pixels_weigh_nothing_in_the_loss(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    geometry = PatchGeometry.for_network(_net(), 64, 128)
    plain = PatchSampler(examples, geometry, TargetRecipe(), NO_AUGMENT, 4, np.random.default_rng(2))
    debris = PatchSampler(examples, geometry, TargetRecipe(), AugmentConfig(
        flip=False, rotate="none", scale=(1.0, 1.0), elastic_prob=0.0, gain=(1.0, 1.0), offset=(0.0, 0.0),
        gamma=(1.0, 1.0), noise=0.0, debris_prob=1.0, debris_renormalised=0.0), 4, np.random.default_rng(2))
    before, after = plain.next_batch(), debris.next_batch()
    c, n = geometry.crop, geometry.out_size
    changed = (after.images != before.images).any(axis=1)[:, c : c + n, c : c + n]  # same crops: only the debris
    assert changed.any()
    assert np.all(after.weights[changed] == 0)  # its class is unknown: no loss there
    assert after.weights[~changed].min() >= 0.1  # elsewhere the same classes, all in the loss
    assert np.all(after.classes[~changed] == before.classes[~changed])


@pytest.mark.parametrize("change", [dict(low_light_prob=1.0, low_light_photons=(10.0, 10.0)),
                                    dict(saturated_prob=1.0, saturated_level=(0.3, 0.3))],
                         ids=["low light", "over-exposed"])
def test_camera_looks_change_fluorescence_patches_only(dsb_fluo_crop, change):
    """Low light (shot noise) and over-exposure (clipping) are made on fluorescence patches only,
    and change no class."""
    examples = _examples(dsb_fluo_crop)
    bright_ground = [TrainingExample(1.0 - ex.image, ex.labels, ex.source) for ex in examples]  # as bright field
    geometry = PatchGeometry.for_network(_net(), 64, 128)
    still = AugmentConfig(flip=False, rotate="none", scale=(1.0, 1.0), elastic_prob=0.0, gain=(1.0, 1.0),
                          offset=(0.0, 0.0), gamma=(1.0, 1.0), noise=0.0)
    for exs, changes in ((examples, True), (bright_ground, False)):
        plain = PatchSampler(exs, geometry, TargetRecipe(), still, 4, np.random.default_rng(3)).next_batch()
        made = PatchSampler(exs, geometry, TargetRecipe(), replace(still, **change), 4,
                            np.random.default_rng(3)).next_batch()
        assert (not np.array_equal(plain.images, made.images)) is changes
        np.testing.assert_array_equal(plain.classes, made.classes)
        np.testing.assert_array_equal(plain.weights, made.weights)
        if changes and "saturated_prob" in change:  # plateaus: many pixels at the top value, the rest in order
            assert (made.images == made.images.max()).mean() > 0.01
            assert np.corrcoef(plain.images.ravel(), made.images.ravel())[0, 1] > 0.5


def test_threads_and_processes_prefetch_the_same_patches(dsb_fluo_crop):
    """Threads, or spawned processes (for a GPU: scipy holds the GIL), make the patches that the
    run's generator drew, in order."""
    examples = _examples(dsb_fluo_crop)
    geometry = PatchGeometry.for_network(_net(), 32, 128)
    runs = []
    for workers, processes in ((0, False), (2, False), (2, True)):
        with PatchSampler(examples, geometry, TargetRecipe(), AugmentConfig(), 2, np.random.default_rng(5),
                          workers=workers, processes=processes) as sampler:
            runs.append([sampler.next_batch(prefetch=i < 2) for i in range(3)])
            assert (sampler._pool is not None) == (workers > 0)
            if processes:
                assert len({p.pid for p in sampler._pool._processes.values()} - {os.getpid()}) >= 1
        assert sampler._pool is None  # closed on leaving the block
    for serial, *parallel in zip(*runs):
        for other in parallel:
            np.testing.assert_array_equal(serial.images, other.images)
            np.testing.assert_array_equal(serial.classes, other.classes)
            np.testing.assert_array_equal(serial.weights, other.weights)
    plain = PatchSampler(examples, geometry, TargetRecipe(), NO_AUGMENT, 1, np.random.default_rng(5), workers=1)
    plain.next_batch()
    plain.close()
    assert plain.next_batch().images.shape[0] == 1  # a closed sampler starts its threads again
    plain.close()



def test_a_patch_process_that_dies_is_replaced(dsb_fluo_crop):
    """A patch process killed (for memory, say) is started again and the batch is the same."""
    import signal

    examples = _examples(dsb_fluo_crop)
    geometry = PatchGeometry.for_network(_net(), 32, 128)
    serial = PatchSampler(examples, geometry, TargetRecipe(), AugmentConfig(), 2, np.random.default_rng(7))
    expected = [serial.next_batch() for _ in range(3)]
    with PatchSampler(examples, geometry, TargetRecipe(), AugmentConfig(), 2, np.random.default_rng(7),
                      workers=2, processes=True) as sampler:
        got = [sampler.next_batch()]
        first = dict(sampler._pool._processes)
        for pid, process in first.items():  # all of them: the next batches cannot be made without new ones
            os.kill(pid, signal.SIGKILL)
            process.join(10)
        got += [sampler.next_batch() for _ in range(2)]
        assert not set(first) & set(sampler._pool._processes)  # a new pool of processes
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.weights, b.weights)

# ---------------------------------------------------------------------- loss and optimiser step
def test_training_and_validation_losses_are_the_same_number(dsb_fluo_crop):
    _, labels = dsb_fluo_crop
    classes, weights = TargetRecipe()(labels)
    logits = torch.randn(1, 3, *labels.shape, generator=torch.Generator().manual_seed(0))
    from_logits = weighted_cross_entropy(logits, torch.from_numpy(classes[None].astype(np.int64)),
                                         torch.from_numpy(weights[None]))
    from_probs = weighted_nll(torch.softmax(logits, 1)[0].numpy(), classes, weights)
    assert from_probs == pytest.approx(float(from_logits), rel=1e-4)


def test_optimiser_step_learns_and_refuses_a_non_finite_loss(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    net = _net()
    sampler = PatchSampler(examples, PatchGeometry.for_network(net, 64, 128), TargetRecipe(), NO_AUGMENT, 4,
                           np.random.default_rng(1))
    batch = sampler.next_batch()
    optimiser = Optimiser(net, 3e-3, 1e-4, CPU)
    set_train_mode(net, freeze_norm=False)
    losses = [optimiser.step(batch, 3e-3, step) for step in range(1, 16)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0]
    assert optimiser.optimizer.param_groups[0]["lr"] == 3e-3
    broken = Batch(np.full_like(batch.images, np.nan), batch.classes, batch.weights)
    with pytest.raises(FloatingPointError, match="at step 16; try a lower learning rate"):
        optimiser.step(broken, 3e-3, 16)


class _Cramped(torch.nn.Module):
    """A real network on a device with room for ``room`` patches at once: more raise torch's own
    out-of-memory error, as a GPU shared with another program (or a laptop's) does."""

    def __init__(self, net: torch.nn.Module, room: int) -> None:
        super().__init__()
        self.net, self.room = net, room

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.room:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} patches.")
        return self.net(x)


def test_a_batch_that_does_not_fit_runs_in_parts_for_the_same_step(dsb_fluo_crop):
    """Out of memory at the first step ended fine-tuning ("lower Batch size"): the batch now runs in
    twice as many parts until they fit, their gradients summed, the same step as the whole batch's;
    said once; a single patch that does not fit still ends it."""
    examples = _examples(dsb_fluo_crop)
    torch.manual_seed(0)
    whole = UNet(in_channels=1, n_classes=3, base_width=4, depth=2, padding="same", norm=None)
    cramped = _Cramped(UNet(in_channels=1, n_classes=3, base_width=4, depth=2, padding="same", norm=None), room=3)
    cramped.net.load_state_dict(whole.state_dict())
    sampler = PatchSampler(examples, PatchGeometry.for_network(whole, 64, 128), TargetRecipe(), NO_AUGMENT, 8,
                           np.random.default_rng(1))
    batches = [sampler.next_batch() for _ in range(2)]
    plain, parted = Optimiser(whole, 3e-3, 1e-4, CPU), Optimiser(cramped, 3e-3, 1e-4, CPU)
    for step, batch in enumerate(batches, 1):
        assert parted.step(batch, 3e-3, step) == pytest.approx(plain.step(batch, 3e-3, step), rel=1e-5)
        for a, b in zip(whole.parameters(), cramped.net.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert parted.parts == 4  # 8 patches: 4 did not fit, 2 do
        assert (parted.take_note() is not None) == (step == 1)
    cramped.room = 0
    with pytest.raises(torch.OutOfMemoryError):
        parted.step(batches[0], 3e-3, 3)


def test_the_trainer_says_when_the_batch_was_split(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    net = _Cramped(_net(), room=1)
    sampler = PatchSampler(examples, PatchGeometry.for_network(net.net, 32, 128), TargetRecipe(), NO_AUGMENT, 2,
                           np.random.default_rng(0))
    trainer = Trainer(net, sampler, Optimiser(net, 1e-3, 1e-4, CPU), WarmupCosine(1e-3), RunBudget(steps=2),
                      ValidationCadence(every_steps=None))
    events: list = []
    run = run_to_end(trainer.run(), events.append)
    assert run.steps == 2
    assert [type(e).__name__ for e in events] == ["TrainStep", "TrainNote", "TrainStep"]
    assert "ran out of memory with 2 patches at a time: training goes on with 1 at a time" in events[1].message


def test_the_memory_of_a_step_is_told_before_it_runs():
    """A memory limit (a Slurm job's, a container's) kills the process at the first step with no error to
    split the batch on: its memory is told beforehand, from a forward pass on torch's meta device (the
    built-in network: 31 MB per 128 px patch measured, benchmarks/RESULTS.md), and the batch is split to
    fit 70% of the memory free."""
    net = UNet(in_channels=1, n_classes=3, base_width=16, depth=4, padding="same", norm="batch")  # the built-in models'
    weights = [p.detach().clone() for p in net.parameters()]
    per_patch, once = step_memory(net, 128)
    assert 25 * 2**20 < per_patch < 60 * 2**20
    assert once == 3 * 4 * sum(p.numel() for p in net.parameters())  # gradients, AdamW's two moments
    assert step_memory(net, 64)[0] == pytest.approx(per_patch / 4, rel=0.05)  # activations follow the pixels
    for a, b in zip(net.parameters(), weights, strict=True):  # (nothing of the network was touched)
        assert a.device.type == "cpu" and torch.equal(a, b)
    fits = lambda n: (n * per_patch + once) / 0.7  # noqa: E731 - the memory free that holds n patches
    assert parts_for_memory(net, 128, 8, None) == 1  # not known: the batch as asked
    assert parts_for_memory(net, 128, 8, int(fits(8)) + 2**20) == 1
    assert parts_for_memory(net, 128, 8, int(fits(4)) + 2**20) == 2
    assert parts_for_memory(net, 128, 8, int(fits(3)) + 2**20) == 3  # (3 + 3 + 2)
    assert parts_for_memory(net, 128, 8, int(fits(1)) - 2**20) == 8  # one at a time, the most it can do
    assert parts_for_memory(net, 128, 1, 1) == 1


def test_a_step_too_large_for_the_memory_free_runs_in_parts_from_the_first(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    net = _net()
    per_patch, once = step_memory(net, 32)
    sampler = PatchSampler(examples, PatchGeometry.for_network(net, 32, 128), TargetRecipe(), NO_AUGMENT, 4,
                           np.random.default_rng(0))
    optimiser = Optimiser(net, 1e-3, 1e-4, CPU)
    optimiser.fit_memory(32, 4, int((2 * per_patch + once) / 0.7) + 1)
    assert optimiser.parts == 2
    trainer = Trainer(net, sampler, optimiser, WarmupCosine(1e-3), RunBudget(steps=2), ValidationCadence(every_steps=None))
    events: list = []
    run = run_to_end(trainer.run(), events.append)
    assert run.steps == 2 and optimiser.parts == 2
    assert [type(e).__name__ for e in events] == ["TrainStep", "TrainNote", "TrainStep"]
    assert "holds about 2 of the 4 patches of a step at a time: each step runs in 2 parts" in events[1].message
    roomy = Optimiser(net, 1e-3, 1e-4, CPU)
    roomy.fit_memory(32, 4, 2**40)
    assert roomy.parts == 1 and roomy.take_note() is None


def test_evaluation_mode_gives_every_module_its_mode_back():
    net = _net()
    set_train_mode(net, freeze_norm=True)
    before = [m.training for m in net.modules()]
    assert net.training and not all(before)  # BatchNorm layers stay in eval mode
    with evaluation_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before


# ---------------------------------------------------------------------- selection rules and tracking
def test_selection_rule_follows_the_held_out_objects():
    assert SelectionRule.for_validation("best", 0, 0) == SelectionRule("latest", "ap50", None)  # nothing held out
    assert SelectionRule.for_validation("latest", 3, 50) == SelectionRule("latest", "ap50", None)
    none = SelectionRule.for_validation("best", 1, 0)
    assert none.select == "latest" and "no object" in none.note and none.recorded_metric is None
    few = SelectionRule.for_validation("best", 1, MIN_VAL_OBJECTS_FOR_AP - 1)
    assert few.metric == "loss" and f"only {MIN_VAL_OBJECTS_FOR_AP - 1} object(s)" in few.note
    assert SelectionRule.for_validation("best", 2, 20) == SelectionRule("best", "ap50", ap_margin=0.05)


def test_ap_rule_breaks_ties_by_loss_and_loss_rule_ignores_ap():
    ap_rule, loss_rule = SelectionRule(), SelectionRule("best", "loss")
    best = Scores(2, ap50=0.5, dice=0.7, loss=0.30)
    assert ap_rule.improves(Scores(0, 0.0, 0.0, 9.0), None) and loss_rule.improves(Scores(0, 0.0, 0.0, 9.0), None)
    assert ap_rule.improves(Scores(4, 0.6, 0.7, 0.90), best)
    assert ap_rule.improves(Scores(4, 0.5, 0.7, 0.29), best) and not ap_rule.improves(Scores(4, 0.5, 0.7, 0.31), best)
    assert not ap_rule.improves(Scores(4, 0.4, 0.9, 0.01), best)
    # held-out objects are few: a gain of less than one object's worth counts only with a lower loss
    noisy = SelectionRule.for_validation("best", 1, 15)
    assert not noisy.improves(Scores(30, 0.5 + 0.058, 0.7, 0.31), best)  # Usiigaci: one cell more, loss up
    assert noisy.improves(Scores(30, 0.5 + 0.058, 0.7, 0.29), best) and noisy.improves(Scores(30, 0.6, 0.7, 0.9), best)
    assert loss_rule.improves(Scores(4, 0.0, 0.0, 0.29), best) and not loss_rule.improves(Scores(4, 1.0, 1.0, 0.31), best)


def test_best_weights_keeps_the_best_and_reports_the_latest():
    net = _net()
    tracker = BestWeights(SelectionRule())
    first = {k: v.clone() for k, v in net.state_dict().items()}
    assert tracker.record(Scores(0, 0.4, 0.6, 0.5), net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert not tracker.record(Scores(5, 0.3, 0.6, 0.4), net)  # worse AP: not kept
    assert tracker.latest.step == 5 and [h["step"] for h in tracker.history] == [0, 5]
    assert tracker.keep(net, final_step=5) == Scores(0, 0.4, 0.6, 0.5)
    for k, v in net.state_dict().items():
        assert torch.equal(v, first[k]), k  # the best weights are back in the network
    latest = BestWeights(SelectionRule("latest"))
    latest.record(Scores(3, 0.9, 0.9, 0.1), net)
    assert latest.keep(net, final_step=3) == Scores(3, 0.9, 0.9, 0.1)
    assert latest.keep(net, final_step=4) == Scores(4)  # the final weights were never validated


def test_validator_scores_with_the_metrics_and_the_prediction_post_processing(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    planes = validation_planes(examples, TargetRecipe())
    net = _net()
    set_train_mode(net, freeze_norm=True)
    tracker = BestWeights(SelectionRule())
    event = Validator(planes, tracker, CPU, None, "bg-interior-boundary")(net, 7)
    assert isinstance(event, Validation) and event.step == 7 and event.is_best and event.best_ap50 == event.ap50
    assert net.training  # back in training mode
    with torch.no_grad():
        probs = forward_plane(net.eval(), planes[0].image, CPU)
    pred = probabilities_to_labels(probs, representation="bg-interior-boundary")
    assert event.ap50 == average_precision(planes[0].labels, pred) and event.dice == dice(planes[0].labels, pred)
    assert event.loss == weighted_nll(probs, planes[0].classes, planes[0].weights)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_a_plane_too_large_for_one_pass_is_validated_tile_by_tile(dsb_fluo_crop, padding):
    """A held-out plane whose activations exceed the memory budget goes tile by tile (one pass
    of a 4096 px plane needs ~9 GB): the same probabilities as one pass."""
    net = _net(padding, depth=3).eval()
    image = dsb_fluo_crop[0][None].astype(np.float32)
    image = (image - image.mean()) / (image.std() + 1e-6)
    whole = forward_plane(net, image, CPU, budget=2**40)
    tiled = forward_plane(net, image, CPU, budget=64**2 * 200)  # a few 64 px tiles' worth
    assert whole.shape == tiled.shape == (3, *image.shape[1:])
    # the same away from the plane's edges (one pass pads them its own way: zeros or repeated pixels)
    inner = (slice(None), *[slice(tile_context(net), -tile_context(net))] * 2)
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-4)
    if padding == "valid":  # an unpadded network sees mirrored borders either way, as Segment's tiles (it was
        np.testing.assert_allclose(tiled, whole, atol=1e-4)  # symmetric in one pass: 0.0017 apart at the edges)


# ---------------------------------------------------------------------- the loop and the metadata
def test_trainer_runs_its_parts_and_stops(dsb_fluo_crop):
    examples = _examples(dsb_fluo_crop)
    net = _net()
    sampler = PatchSampler(examples, PatchGeometry.for_network(net, 32, 128), TargetRecipe(), NO_AUGMENT, 2,
                           np.random.default_rng(0))
    trainer = Trainer(net, sampler, Optimiser(net, 1e-3, 1e-4, CPU), WarmupCosine(1e-3), RunBudget(steps=4),
                      ValidationCadence(every_steps=2))
    events: list = []
    run = run_to_end(trainer.run(), events.append)
    assert [e.step for e in events] == [1, 2, 3, 4] and all(isinstance(e, TrainStep) for e in events)
    assert [e.lr for e in events] == [WarmupCosine(1e-3)(f) for f in (0.0, 0.25, 0.5, 0.75)]
    assert run.steps == 4 and len(run.losses) == 4 and not run.stopped_early
    assert run.final_train_loss == pytest.approx(np.mean(run.losses))
    events.clear()
    calls = iter([False, False, True])
    run = run_to_end(trainer.run(stopped=lambda: next(calls)), events.append)
    assert run.steps == 2 and run.stopped_early and len(events) == 2


def test_run_record_reads_back_what_finetune_wrote(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = SegmentationModel(_net().eval(), "bg-interior-boundary", metadata={"name": "tiny"})
    result = run_finetune(model, [image], [labels], steps=2, patch_size=32, batch_size=2, validate_every=1,
                          device="cpu")
    record = run_record(result.metadata)
    training = result.metadata["training"]
    assert record["steps"] == 2 and (record["patch_size"], record["batch_size"], record["lr"]) == (32, 2, 1e-3)
    assert record["selected_step"] == training["selected_step"] and record["device"] == result.metadata["device"]
    assert describe_selection(training).endswith(f"among {len(training['history'])} validations")


def test_the_gate_keeps_the_starting_weights_unless_the_loss_gain_beats_its_noise():
    """Held out of the corrected images: a step whose block losses are no lower than the start's beyond
    their spread is not kept even with a higher AP (Usiigaci: AP 0.82 -> 0.88 on the strip, 0.77 -> 0.66
    on the fields not corrected); a clear gain is, and the AP rule chooses among those that pass."""
    from napari_unet.core.validation import block_losses, loss_gain, passes_gate

    rng = np.random.default_rng(0)
    start = tuple(0.35 + 0.05 * rng.standard_normal(40))
    noise = tuple(s - 0.002 + 0.05 * rng.standard_normal() for s in start)
    clear = tuple(s - 0.05 + 0.01 * rng.standard_normal() for s in start)
    assert not passes_gate(loss_gain(start, noise)) and passes_gate(loss_gain(start, clear))
    assert not passes_gate(loss_gain(start[:3], clear[:3]))  # too few blocks to know the noise
    rule = SelectionRule.for_validation("best", 1, 15, held_out_of_training=True)
    assert rule.gate and not SelectionRule.for_validation("best", 1, 15).gate
    assert not SelectionRule.for_validation("latest", 1, 15, held_out_of_training=True).gate
    # with few held-out cells the gate cannot tell (C2C12 from `nuclei`, 2 cells: a real gain at z 1.8): the
    # best loss is kept, and the note says whether it beats the start elsewhere is not known
    few = SelectionRule.for_validation("best", 1, 2, held_out_of_training=True)
    assert not few.gate and few.metric == "loss" and "too few to tell whether the new weights" in few.note
    assert few.note.startswith("the validation part holds only 2 object(s), so the best weights were chosen by")
    # a new network (`train --new`) has no starting model for the note to compare with
    new = SelectionRule.for_validation("best", 1, 2, held_out_of_training=True, from_scratch=True)
    assert new.metric == "loss" and "starting model" not in new.note and new.note.startswith("the validation part")
    net = _net()
    tracker = BestWeights(rule)
    assert tracker.record(Scores(0, 0.82, 0.9, 0.366, start), net)
    assert not tracker.record(Scores(30, 0.88, 0.9, 0.358, noise), net)  # AP up, loss within its noise
    assert tracker.history[-1]["passes_gate"] is False and "blocks" not in tracker.history[-1] and tracker.held_back
    assert tracker.gate_kept_start and "no clear gain over 'cells'" in tracker.gate_note("cells")
    assert tracker.record(Scores(60, 0.85, 0.9, 0.31, clear), net) and tracker.best.step == 60
    assert not tracker.held_back
    assert tracker.gate_note("cells") is None
    # per block: the weighted NLL of each 32 px block holding weight (a remainder under 16 px joins its neighbour)
    probs = np.full((2, 70, 40), 0.5, np.float32)
    weights = np.ones((70, 40), np.float32)
    weights[:32, :] = 0
    losses = block_losses(probs, np.zeros((70, 40), np.int64), weights)
    assert losses.shape == (2,) and np.isnan(losses[0]) and losses[1] == pytest.approx(math.log(2))


def test_the_gate_says_nothing_when_it_held_nothing_back():
    """The start kept because every later step scored lower (a run that wrecked the model: AP 0.62 -> 0.00):
    the note blamed the gate ("a closer fit to these slices"), even for a step that had passed it."""
    rng = np.random.default_rng(1)
    start = tuple(0.4 + 0.05 * rng.standard_normal(30))
    tracker = BestWeights(SelectionRule.for_validation("best", 1, 20, held_out_of_training=True))
    net = _net()
    assert tracker.record(Scores(0, 0.80, 0.9, 0.40, start), net)
    assert not tracker.record(Scores(100, 0.70, 0.9, 0.30, tuple(s - 0.1 for s in start)), net)  # passes; AP lower
    assert not tracker.record(Scores(200, 0.00, 0.1, 5.0, tuple(s + 4.6 for s in start)), net)
    assert not tracker.held_back and not tracker.gate_kept_start and tracker.gate_note("nuclei") is None
    assert [h.get("passes_gate") for h in tracker.history] == [None, True, False]


def test_the_gain_is_the_fall_of_the_loss_and_its_error_counts_neighbouring_blocks():
    """Blocks weighted by their loss weight (an edge block with one known pixel counted as much as a full
    one), and an error that counts the likeness of neighbouring blocks (a cell across two of them: on
    phase contrast the plain error was 20-30% too small, and 18-24% of steps with no gain passed)."""
    from napari_unet.core.validation import BlockLayout, ValPlane, block_losses, loss_gain

    rng = np.random.default_rng(2)
    h, w = 128, 160  # 4 x 5 blocks
    weights = rng.uniform(0.5, 2.0, (h, w)).astype(np.float32)
    weights[:, :32] = 0  # a column of blocks with no loss weight (pixels whose class is not known)
    weights[-32:, -64:] = 0
    weights[-32, -64] = 1e-3  # and a block that holds almost none
    classes = rng.integers(0, 3, (h, w))
    plane = ValPlane(np.zeros((1, h, w), np.float32), np.zeros((h, w), np.int32), classes, weights, source=0)
    layout = BlockLayout.of([plane])
    assert layout.weights.shape == (20,) and layout.n_blocks == 15
    assert len(layout.pairs) == 4 * 4 + 3 * 5 + 2 * 3 * 4  # right, down and both diagonals
    a = rng.dirichlet(np.ones(3), (h, w)).transpose(2, 0, 1)
    b = rng.dirichlet(np.ones(3), (h, w)).transpose(2, 0, 1)
    gain, se, n = loss_gain(tuple(block_losses(a, classes, weights)), tuple(block_losses(b, classes, weights)), layout)
    assert n == 15 and gain == pytest.approx(weighted_nll(a, classes, weights) - weighted_nll(b, classes, weights))
    # differences alike over neighbouring blocks: a larger error than counting the blocks apart
    rows, cols = np.mgrid[0:4, 0:5]
    smooth = np.sin(rows * 0.7 + cols * 0.6).ravel()
    start = tuple(np.full(20, 0.4))
    later = tuple(0.4 - 0.01 - 0.05 * smooth)
    flat = BlockLayout(np.ones(20), np.zeros((0, 2), np.int64))
    neighbours = BlockLayout(np.ones(20), layout.pairs)
    assert loss_gain(start, later, neighbours)[1] > 1.3 * loss_gain(start, later, flat)[1]
    # never below the plain error (differences unlike their neighbours)
    checker = tuple(0.4 - 0.01 - 0.05 * ((rows + cols) % 2 * 2 - 1).ravel())
    assert loss_gain(start, checker, neighbours)[1] == pytest.approx(loss_gain(start, checker, flat)[1])
