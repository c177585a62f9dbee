"""Fine-tuning engine: events, stop, copy semantics, validation split, bad inputs, learning."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import SegmentationModel, read_model_file, save_model
from napari_unet.core.events import TrainNote, TrainStep, Validation, run_to_end
from napari_unet.core.model import UNet
from napari_unet.core.train import DEFAULT_STEPS, finetune, prepare_examples, run_finetune, split_examples


def _tiny(depth: int = 3, padding: str = "same", width: int = 4, representation: str = "bg-interior-boundary"):
    torch.manual_seed(0)
    n_classes = 3 if representation == "bg-interior-boundary" else 2
    net = UNet(in_channels=1, n_classes=n_classes, base_width=width, depth=depth, padding=padding, norm="batch")
    return SegmentationModel(net.eval(), representation, metadata={"name": "tiny"})


def _drain(gen):
    events = []
    return events, run_to_end(gen, events.append)


def test_finetune_on_real_crop_yields_events_and_returns_copy(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = _tiny()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    events, result = _drain(finetune(model, [image], [labels], steps=3, patch_size=32, batch_size=2,
                                     validate_every=2, device="cpu"))
    steps = [e for e in events if isinstance(e, TrainStep)]
    vals = [e for e in events if isinstance(e, Validation)]
    assert [s.step for s in steps] == [1, 2, 3]
    assert all(s.total_steps == 3 and np.isfinite(s.loss) and s.lr > 0 for s in steps)
    assert steps[-1].fraction == pytest.approx(1.0)
    assert [v.step for v in vals] == [0, 2, 3]  # before training, every 2 steps, at the end
    assert all(0.0 <= v.ap50 <= 1.0 for v in vals)
    # the input model is untouched, the result is another object
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result is not model and result.net is not model.net
    meta = result.metadata
    assert meta["base_model"] == "tiny" and meta["n_examples"] == 1 and meta["steps"] == 3
    training = meta["training"]
    if training["selection_metric"] == "loss":  # few held-out nuclei: the loss decides
        chosen = min(vals, key=lambda v: v.loss)
        assert training["n_val_objects"] < 10 and "validation loss" in training["selection_note"]
    else:  # (by AP, a higher one perhaps held back by the gate: the step kept is the one its metadata names)
        chosen = next(v for v in vals if v.step == training["selected_step"])
        assert chosen.is_best
    assert meta["val_ap50"] == chosen.ap50 and training["selected_step"] == chosen.step
    assert meta["training"]["val_split"] == "band" and "date" in meta and "CPU" in meta["device"]
    assert not result.net.training
    assert training["class_weight_cap"] == 3.0  # fine-tuning's (see core.targets.FINETUNE_CLASS_WEIGHT_CAP)


def test_a_few_dozen_steps_lower_the_loss(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = _tiny(depth=2, width=8)
    events, result = _drain(finetune(model, [image], [labels], steps=40, patch_size=64, batch_size=4, lr=3e-3,
                                     augment=False, val_fraction=0, from_scratch=True, device="cpu", seed=1))
    losses = [e.loss for e in events if isinstance(e, TrainStep)]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert result.metadata["val_ap50"] is None  # no validation asked
    # an untrained model tells nothing about unlabelled cells: "auto" learnt every plane as labelled in full
    assert result.metadata["training"]["labelled"] == "all" and result.metadata["training"]["partial_examples"] == []
    assert result.metadata["training"]["class_weight_cap"] == 10.0  # (from scratch: the built-in models' recipe)


def test_the_best_weights_so_far_are_handed_out_as_they_are_found(dsb_fluo_crop):
    """A process killed mid-run (out of memory, a force-quit) kept nothing: each new best is handed to
    ``keep_best`` as a model of its own (Fine-tune writes it to disk), the run itself untouched."""
    image, labels = dsb_fluo_crop
    kept: list = []
    events, result = _drain(finetune(_tiny(depth=2, width=8), [image], [labels], steps=30, patch_size=64,
                                     batch_size=4, lr=3e-3, augment=False, validate_every=5, from_scratch=True,
                                     device="cpu", seed=1, keep_best=kept.append, keep_best_every=0))
    bests = [e.step for e in events if isinstance(e, Validation) and e.is_best and e.step > 0]
    assert bests and [m.metadata["training"]["selected_step"] for m in kept] == bests
    last = kept[-1]
    assert result.metadata["training"]["selected_step"] == bests[-1]
    for key, value in result.net.state_dict().items():
        assert torch.equal(value.cpu(), last.net.state_dict()[key]), key
    assert last.metadata["training"]["stopped_early"] and last.net is not result.net
    once: list = []  # at most every keep_best_every seconds
    _drain(finetune(_tiny(depth=2, width=8), [image], [labels], steps=30, patch_size=64, batch_size=4, lr=3e-3,
                    augment=False, validate_every=5, from_scratch=True, device="cpu", seed=1, keep_best=once.append,
                    keep_best_every=3600))
    assert len(once) == 1


def test_stop_right_after_start_returns_unchanged_copy(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = _tiny()
    stop = threading.Event()
    stop.set()
    events, result = _drain(finetune(model, [image], [labels], steps=5, patch_size=32, stop=stop))
    assert events == [] and result.metadata["steps"] == 0 and result.metadata["training"]["stopped_early"]
    for (k, a), b in zip(model.net.state_dict().items(), result.net.state_dict().values()):
        assert torch.equal(a, b.cpu()), k


def test_stop_flag_between_steps_and_close(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    stop = threading.Event()
    gen = finetune(_tiny(), [image], [labels], patch_size=32, batch_size=1, stop=stop, val_fraction=0)
    seen = []
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            result = done.value
            break
        seen.append(event)
        if len(seen) == 2:
            stop.set()
    assert len(seen) == 2 and seen[0].total_steps == DEFAULT_STEPS  # neither steps nor budget: default
    assert result.metadata["steps"] == 2
    gen = finetune(_tiny(), [image], [labels], steps=50, patch_size=32, batch_size=1, val_fraction=0)
    next(gen)
    gen.close()  # stops cleanly between steps
    with pytest.raises(StopIteration):
        next(gen)


def test_time_budget_and_valid_padding(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = _tiny(depth=2, padding="valid")
    events, result = _drain(finetune(model, [image], [labels], time_budget=1.0, patch_size=48, batch_size=1,
                                     device="cpu"))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert steps and steps[0].total_steps is None
    assert steps[-1].elapsed < 10
    assert result.metadata["training"]["patch_size"] == model.net.valid_input_size(48)


def test_rgb_and_foreground_representation_and_save(tmp_path, dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    rgb = np.stack([image] * 3, axis=-1)
    model = _tiny(representation="foreground")
    result = run_finetune(model, [rgb, image[:100, :90]], [labels, labels[:100, :90]], steps=2,
                          patch_size=32, batch_size=2)
    assert result.representation == "foreground"
    path = save_model(result, tmp_path / "ft.pt")
    loaded = read_model_file(path)
    assert loaded.metadata["steps"] == 2 and loaded.metadata["base_model"] == "tiny"


def test_split_whole_planes_or_bands(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = _tiny()
    one = prepare_examples(model, [image], [labels])
    train, val = split_examples(one, 0.25, np.random.default_rng(0))
    assert len(train) == len(val) == 1
    assert {train[0].labels.shape, val[0].labels.shape} in ({(96, 128), (32, 128)}, {(128, 96), (128, 32)})
    assert train[0].labels.max() > 0 and val[0].labels.max() > 0
    five = prepare_examples(model, [image] * 5, [labels] * 5)
    train, val = split_examples(five, 0.2, np.random.default_rng(0))
    assert len(train) == 4 and len(val) == 1 and val[0].labels.shape == (128, 128)
    assert split_examples(five, 0.0, np.random.default_rng(0)) == (five, [])


def test_an_empty_corrected_slice_is_never_the_one_held_out(dsb_fluo_crop):
    # with slice 3 empty, seeds 0, 2 and 4 held it out: nothing was measured, so nothing was held out
    image, labels = dsb_fluo_crop
    model = _tiny()
    planes = [labels] * 3 + [np.zeros_like(labels)] + [labels]
    five = prepare_examples(model, [image] * 5, planes)
    for seed in range(6):
        train, val = split_examples(five, 0.2, np.random.default_rng(seed))
        assert len(val) == 1 and val[0].labels.max() > 0 and len(train) == 4, seed
    # bands (one plane too few to hold one out): an empty plane keeps none, and trains whole
    two = prepare_examples(model, [image] * 2, [labels, np.zeros_like(labels)])
    train, val = split_examples(two, 0.25, np.random.default_rng(0))
    assert len(val) == 1 and val[0].labels.max() > 0
    assert any(e.labels.shape == labels.shape and not e.labels.any() for e in train)


@pytest.fixture(scope="module")
def c2c12_frame0(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0 of the C2C12 phase-contrast time-lapse (CC-BY 4.0) and its 8 labelled cells."""
    import tifffile

    image = tifffile.imread(data_dir / "c2c12_timelapse" / "images.tif")[0]
    labels = tifffile.imread(data_dir / "c2c12_timelapse" / "labels.tif")[0].astype(np.int32)
    return image, labels


def test_band_follows_the_objects_on_a_real_c2c12_frame(c2c12_frame0):
    """Frame 0 of the C2C12 time-lapse has its 8 cells in the upper two thirds: the far-end band
    of the default order would hold none, so an edge strip with cells is held out instead."""
    image, labels = c2c12_frame0
    assert labels[187:].max() == 0  # the old band (bottom 20 %) is pure background
    (ex,) = prepare_examples(_tiny(), [image], [labels])
    train, val = split_examples([ex], 0.2, np.random.default_rng(0))
    n_total = len(np.unique(labels)) - 1
    n_val = len(np.unique(val[0].labels)) - 1
    assert n_val >= 1 and train[0].labels.max() > 0
    assert train[0].labels.size + val[0].labels.size == labels.size
    assert n_val <= n_total // 2


def test_few_held_out_objects_are_judged_by_the_loss(c2c12_frame0):
    """C2C12 frame 0: the band holds 2 cells, AP@0.5 over them is 0, 1/3, 1/2, 2/3 or 1."""
    image, labels = c2c12_frame0
    events, result = _drain(finetune(_tiny(), [image], [labels], steps=4, patch_size=64, batch_size=2,
                                     validate_every=2, device="cpu"))
    vals = [e for e in events if isinstance(e, Validation)]
    training = result.metadata["training"]
    assert training["selection_metric"] == "loss" and 1 <= training["n_val_objects"] < 10
    best = min(vals, key=lambda v: v.loss)
    assert training["selected_step"] == best.step and result.metadata["val_loss"] == best.loss


def test_validation_without_objects_keeps_the_latest_weights(dsb_fluo_crop):
    """Held-out images given without any object: the metric cannot tell models apart."""
    image, labels = dsb_fluo_crop
    events, result = _drain(finetune(_tiny(), [image], [labels], steps=2, patch_size=32, batch_size=2,
                                     val_images=[image], val_labels=[np.zeros_like(labels)],
                                     validate_every=1, device="cpu"))
    training = result.metadata["training"]
    assert training["val_split"] == "explicit"
    assert training["selected"] == "latest" and training["selected_step"] == 2
    assert "no object" in training["selection_note"]
    assert [e.step for e in events if isinstance(e, Validation)] == [0, 1, 2]


@pytest.mark.parametrize("n_labelled", [1, 2])
def test_one_or_two_labelled_objects_are_all_trained_on(dsb_fluo_crop, n_labelled):
    """With one or two labelled nuclei, a held-out band would take one of them: its loss alone would
    pick the weights, and training would lose half of what it has. Nothing is held out, the last
    weights are kept, and the user is told."""
    image, labels = dsb_fluo_crop
    ids = [i for i in np.unique(labels) if i][:n_labelled]
    few = np.where(np.isin(labels, ids), labels, 0).astype(np.int32)
    events, result = _drain(finetune(_tiny(), [image], [few], steps=2, patch_size=32, batch_size=2,
                                     validate_every=1, device="cpu", labelled="all"))
    training = result.metadata["training"]
    assert training["val_split"] == "none" and training["selected"] == "latest"
    assert result.metadata["steps"] == 2 and not any(isinstance(e, Validation) for e in events)
    notes = [e.message for e in events if isinstance(e, TrainNote)]
    assert any(f"only {n_labelled} labelled" in n and "last weights" in n for n in notes), notes


def test_bad_inputs(dsb_fluo_crop):
    image, labels = dsb_fluo_crop
    model = _tiny()
    with pytest.raises(ValueError, match="No training examples"):
        next(finetune(model, [], [], steps=1))
    with pytest.raises(ValueError, match="[Nn]othing to learn from"):
        next(finetune(model, [image], [np.zeros_like(labels)], steps=1))
    with pytest.raises(ValueError, match="same pixels"):
        next(finetune(model, [image], [labels[:64]], steps=1))
    with pytest.raises(ValueError, match="non-integer"):
        next(finetune(model, [image], [labels.astype(np.float32) + 0.5], steps=1))
    with pytest.raises(ValueError, match="negative"):
        next(finetune(model, [image], [-labels], steps=1))
    with pytest.raises(ValueError, match="one label image per image"):
        next(finetune(model, [image, image], [labels], steps=1))
    with pytest.raises(ValueError, match="time_budget"):
        next(finetune(model, [image], [labels], time_budget=-1))
    # the image and its labels given the other way round (the CLI refuses such files by their names)
    with pytest.raises(ValueError, match="example 1 looks like an intensity image.*other way round"):
        next(finetune(model, [labels], [image], steps=1))
    # an all-background example beside a labelled one is fine (it teaches background)
    result = run_finetune(model, [image, image], [labels, np.zeros_like(labels)], steps=1, patch_size=32,
                          batch_size=1, val_fraction=0)
    assert result.metadata["steps"] == 1


def test_patch_threads_give_the_same_training(dsb_fluo_crop):
    """Patches prepared by worker threads (GPU default) equal the serial ones: same losses."""
    image, labels = dsb_fluo_crop
    runs = []
    for workers in (0, 2):
        events, _ = _drain(finetune(_tiny(), [image], [labels], steps=3, patch_size=32, batch_size=2,
                                    val_fraction=0, workers=workers, device="cpu", seed=3))
        runs.append([e.loss for e in events])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)
    # a callable works as a stop flag too
    events, result = _drain(finetune(_tiny(), [image], [labels], steps=3, patch_size=32, stop=lambda: True))
    assert events == [] and result.metadata["steps"] == 0


def test_a_binary_mask_is_split_into_its_separate_objects(dsb_fluo_crop, caplog):
    """0/255 masks (or every cell painted with label 1) train on each separate piece as an object,
    with a warning: as one object they taught neither the borders between cells nor their number."""
    from scipy import ndimage as ndi

    from napari_unet.core import SegmentationModel, UNet
    from napari_unet.core.examples import prepare_examples

    image, labels = dsb_fluo_crop
    mask = ((labels > 0) * 255).astype(np.uint8)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=2, padding="same", norm="batch")
    (example,) = prepare_examples(SegmentationModel(net), [image], [mask])
    n_pieces = ndi.label(mask > 0)[1]
    assert n_pieces > 5 and int(example.labels.max()) == n_pieces
    assert "like a mask" in caplog.text
    (as_given,) = prepare_examples(SegmentationModel(net), [image], [labels])  # instance labels stay as they are
    np.testing.assert_array_equal(as_given.labels, labels.astype(np.int32))
    one = np.zeros((96, 96), np.int32)
    one[20:60, 20:60] = 3
    one[80, 80] = 3  # a stray brush pixel
    for k in range(15):  # a thin diagonal part, joined at the corners only
        one[60 + k, 60 + k] = 3
    (single,) = prepare_examples(SegmentationModel(net), [image[:96, :96]], [one])
    np.testing.assert_array_equal(single.labels, one)  # one object as drawn, not split
    # said as a note of the run (Fine-tune shows it; the log alone went unheard in the GUI)
    events, _model = _drain(finetune(_tiny(), [image], [mask], steps=1, patch_size=32, batch_size=1, val_fraction=0))
    assert any(isinstance(e, TrainNote) and "like a mask" in e.message for e in events)


def test_a_fine_tuned_model_does_not_carry_the_bases_scores_and_card(dsb_fluo_crop):
    from napari_unet.core import load_model

    image, labels = dsb_fluo_crop
    base = load_model("nuclei", device="cpu")
    assert {"val_ap75", "model_card", "stages"} <= set(base.metadata)  # the shipped model's own record
    _events, tuned = _drain(finetune(base, [image], [labels], steps=1, patch_size=64, batch_size=1, device="cpu"))
    meta = tuned.metadata
    assert not {"val_ap75", "model_card", "stages", "legs"} & set(meta)  # never measured for the new weights
    assert meta["base_model"] == "nuclei" and meta["description"].startswith("Fine-tuned from 'nuclei'")


def test_labels_that_look_partial_are_said_before_training(dsb_fluo_crop, caplog):
    """Two nuclei labelled of a field full of them: every unlabelled nucleus would be learnt as
    background (C2C12, 2 of 8 cells: AP 0.50 -> 0.00 after fine-tuning), so the plane is learnt from
    where it is known only, and a note says so before the first step; a field labelled in full gets none."""
    from napari_unet.core import load_model
    from napari_unet.core.events import TrainNote, TrainStep

    image, labels = dsb_fluo_crop
    ids = [i for i in np.unique(labels) if i][:2]
    partial = np.where(np.isin(labels, ids), labels, 0)
    model = load_model("nuclei", device="cpu")

    def events(lab):
        gen = finetune(model, [image], [lab], steps=1, patch_size=64, batch_size=1, val_fraction=0, device="cpu")
        seen = []
        for event in gen:
            seen.append(event)
            if isinstance(event, TrainStep):
                gen.close()
                break
        return seen

    with caplog.at_level("WARNING", logger="napari_unet"):
        seen = events(partial)
    notes = [e for e in seen if isinstance(e, TrainNote)]
    assert len(notes) == 1 and isinstance(seen[0], TrainNote)  # before the first step
    assert "2 labelled" in notes[0].message and "labelled in part" in notes[0].message
    assert any("labelled in part" in r.getMessage() for r in caplog.records)
    assert not any(isinstance(e, TrainNote) for e in events(labels))


def test_default_patch_follows_the_network(dsb_fluo_crop):
    # 128 px x 8 for a padded network (the built-in models; on a CPU the AP of 256 x 4 per step in
    # half the time, benchmarks/RESULTS.md); an unpadded one keeps 256 x 4 (128 px in would leave
    # the paper's U-Net an output of 4 px)
    from napari_unet.core.train import default_patch

    assert default_patch(_tiny().net) == (128, 8)
    assert default_patch(UNet.paper()) == (256, 4)
    image, labels = dsb_fluo_crop
    big = np.tile(image, (3, 3))
    big_labels = np.concatenate([np.concatenate([np.where(labels > 0, labels + 1000 * (3 * i + j), 0)
                                                 for j in range(3)], axis=1) for i in range(3)], axis=0)
    result = run_finetune(_tiny(), [big], [big_labels], steps=1, device="cpu", val_fraction=0)
    training = result.metadata["training"]
    assert (training["patch_size"], training["batch_size"]) == (128, 8)
    unpadded = run_finetune(_tiny(depth=2, padding="valid"), [big], [big_labels], steps=1, device="cpu",
                            val_fraction=0)
    assert unpadded.metadata["training"]["batch_size"] == 4
    assert unpadded.metadata["training"]["patch_size"] >= 256
    # a patch size given without a batch: the batch follows it
    larger = run_finetune(_tiny(), [big], [big_labels], steps=1, patch_size=256, device="cpu", val_fraction=0)
    assert (larger.metadata["training"]["patch_size"], larger.metadata["training"]["batch_size"]) == (256, 4)


def test_labels_with_ids_far_beyond_their_pixels_train_as_the_same_objects(dsb_fluo_crop):
    """Ids as tracking tools write them (an offset of 4e9): every count by id took memory by the id
    (a MemoryError traceback for one small plane); they are renumbered for training, objects kept."""
    image, labels = dsb_fluo_crop
    labels = labels.astype(np.int64)
    huge = np.where(labels > 0, labels + 4_000_000_000, 0)
    (plain,) = prepare_examples(_tiny(), [image], [labels])
    (renumbered,) = prepare_examples(_tiny(), [image], [huge])
    assert renumbered.labels.dtype == np.int32 and renumbered.labels.max() <= labels.size
    np.testing.assert_array_equal(renumbered.labels > 0, plain.labels > 0)
    assert len(np.unique(renumbered.labels)) == len(np.unique(plain.labels))


def test_plain_mistakes_of_a_script_get_messages_that_say_what_to_do(dsb_fluo_crop, tmp_path):
    from napari_unet.core import segment
    from napari_unet.core.preprocess import ImageError

    image, labels = dsb_fluo_crop
    model = _tiny()
    with pytest.raises(ImageError, match="segment images of different sizes one at a time"):
        segment(model, [image, image[:50, :60]])
    with pytest.raises(ImageError, match="read it first"):
        segment(model, str(tmp_path / "x.png"))
    with pytest.raises(TypeError, match="model must be a SegmentationModel"):
        run_finetune("nuclei", [image], [labels], steps=1)
    with pytest.raises(TypeError, match="run_finetune returns the model"):
        save_model(finetune(model, [image], [labels], steps=1), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got -0.5"):
        run_finetune(model, [image], [labels], steps=1, val_fraction=-0.5)


def test_an_rgb_fluorescence_merge_trains_on_the_colour_prediction_segments(dsb_fluo_crop):
    """Nuclei in blue, a cytoplasm ring in green: prediction segments the blue colour alone, and so do
    the training examples of a 1-channel model (they were the mean of the colours)."""
    from scipy import ndimage as ndi

    from napari_unet.core.examples import prepare_examples

    image, labels = dsb_fluo_crop
    nuclei = image.astype(np.float32)
    ring = ndi.grey_dilation(nuclei, size=9) - nuclei
    merge = np.stack([np.zeros_like(nuclei), ring, nuclei], -1).clip(0, 255).astype(np.uint8)
    model = _tiny()
    (from_merge,) = prepare_examples(model, [merge], [labels])
    (from_blue,) = prepare_examples(model, [merge[..., 2]], [labels])
    np.testing.assert_allclose(from_merge.image, from_blue.image)


def test_a_run_that_diverged_in_its_last_step_is_refused_not_returned(dsb_fluo_crop):
    # the loss is checked before each update: the last one was never checked, and with nothing held
    # out a network that outputs NaN was returned (and saved by its caller)
    image, labels = dsb_fluo_crop
    with pytest.raises(FloatingPointError, match="diverged.*lower learning rate"):
        run_finetune(_tiny(depth=2), [image], [labels], steps=1, patch_size=32, batch_size=2, lr=1e10,
                     val_fraction=0)


def test_weights_with_a_nan_validation_loss_are_never_the_best():
    from napari_unet.core.validation import BestWeights, Scores, SelectionRule

    tracker = BestWeights(SelectionRule(select="best"))
    net = _tiny(depth=2).net
    assert not tracker.record(Scores(0, ap50=0.0, dice=0.0, loss=float("nan")), net)
    assert tracker.best is None
    assert tracker.record(Scores(5, ap50=0.0, dice=0.1, loss=0.7), net) and tracker.best.step == 5


def test_stop_before_the_first_validation_keeps_what_was_trained(dsb_fluo_crop):
    """Stop at step 3 of 20 (validated every 10): only the starting weights had been validated, and
    they were kept under a fine-tuned name ("no step did better"); the trained ones are validated
    once now. A Stop pressed during the last step no longer waits for its validation."""
    image, labels = dsb_fluo_crop
    base = _tiny(depth=2)
    pressed = {"at": 3}

    def drive():
        gen = finetune(base, [image], [labels], steps=20, validate_every=10, patch_size=32, batch_size=2,
                       stop=lambda: pressed["now"])
        pressed["now"] = False
        events = []
        try:
            while True:
                event = next(gen)
                events.append(event)
                if isinstance(event, TrainStep) and event.step == pressed["at"]:
                    pressed["now"] = True
        except StopIteration as done:
            return events, done.value

    events, model = drive()
    validated = [e.step for e in events if isinstance(e, Validation)]
    assert validated == [0, 3] and model.metadata["steps"] == 3
    assert model.metadata["training"]["selected_step"] in (0, 3)  # the better of the two, both measured
    pressed["at"] = 20  # Stop during the last step: its weights are the result, no validation waited for
    events, model = drive()
    assert [e.step for e in events if isinstance(e, Validation)] == [0, 10]


def test_odd_inputs_of_a_script_get_clear_answers(dsb_fluo_crop):
    from napari_unet.core.augment import NO_AUGMENT
    from napari_unet.core.targets import border_weights, labels_to_targets

    image, labels = dsb_fluo_crop
    # a tracking tool's global ids: the targets measured memory by id (MemoryError at 2**31 - 1)
    far = np.where(labels > 0, labels.astype(np.int64) + 2**31 - 1 - int(labels.max()), 0)
    classes, weights = labels_to_targets(far)
    np.testing.assert_array_equal(classes, labels_to_targets(labels)[0])
    np.testing.assert_allclose(weights, labels_to_targets(labels)[1])
    assert border_weights(far).shape == labels.shape
    # an example without any data: one line, not the sampler's "high <= 0"
    with pytest.raises(ValueError, match="Example 2 holds no data at all"):
        run_finetune(_tiny(depth=2), [image, np.full(image.shape, np.nan, np.float32)], [labels, labels],
                     steps=1, patch_size=32)
    # infinite values: one line that says training (numpy's warnings, then "before segmenting"); float64
    # beyond float32's range is scaled into it, as for prediction (it became infinite)
    with pytest.raises(ValueError, match=r"infinite values \(example 1\).*before training"):
        prepare_examples(_tiny(depth=2), [np.where(labels == labels.max(), np.inf, image)], [labels])
    huge = prepare_examples(_tiny(depth=2), [image * 1e300], [labels])[0]
    assert np.isfinite(huge.image).all()
    # a blank image (a wrong channel or colour) with real labels: refused (it trained, "val AP 0.000")
    with pytest.raises(ValueError, match="Example 2: the image has one value everywhere"):
        prepare_examples(_tiny(depth=2), [image, np.full(image.shape, 50, np.uint8)], [labels, labels])
    assert prepare_examples(_tiny(depth=2), [np.zeros_like(image)], [np.zeros_like(labels)])  # (no objects: as before)
    # the background labelled (Fiji's inverted 0/255 mask; a tool's background id): refused, said
    with pytest.raises(ValueError, match=r"labels of example 1 hold one object \(255\) over \d+% of the image, "
                                         r"touching all four edges: the background labelled"):
        prepare_examples(_tiny(depth=2), [image], [((labels == 0) * 255).astype(np.uint8)])
    with pytest.raises(ValueError, match="the background labelled"):
        prepare_examples(_tiny(depth=2), [image], [np.where(labels > 0, labels + 1, 1)])
    # ... also behind a watershed's dams (a line of 0 between the background id and each cell)
    from scipy import ndimage as ndi

    dams = ndi.binary_dilation(labels > 0) & (labels == 0)
    with pytest.raises(ValueError, match="the background labelled"):
        prepare_examples(_tiny(depth=2), [image], [np.where(dams, 0, np.where(labels > 0, labels + 1, 1))])
    with pytest.raises(ValueError, match="class_weight_cap must be a number of 1 or more"):
        run_finetune(_tiny(depth=2), [image], [labels], steps=1, patch_size=32, class_weight_cap=0.5)
    # one cell filling the tile (a muscle fibre, an adipocyte at high magnification): no holes, taken
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    big = ((yy - image.shape[0] / 2) ** 2 + (xx - image.shape[1] / 2) ** 2 < (0.7 * max(image.shape)) ** 2)
    assert prepare_examples(_tiny(depth=2), [image], [big.astype(np.uint8)])[0].labels.max() == 1
    np.testing.assert_allclose(huge.image, prepare_examples(_tiny(depth=2), [image], [labels])[0].image, atol=1e-4)
    # training without augmentation says so in its metadata (it said "augment: True")
    model = run_finetune(_tiny(depth=2), [image], [labels], steps=1, patch_size=32, augment=NO_AUGMENT,
                         val_fraction=0)
    assert model.metadata["training"]["augment"] is False


def test_electron_micrographs_labels_are_told_from_membrane_masks(data_dir):
    """ISBI 2012 EM: a crop whose large profile encloses cells within rings of membrane (0) was refused as
    "the background labelled"; a mask of the membranes (1, the cells 0) was trained on as one object."""
    import tifffile
    from scipy import ndimage as ndi

    from napari_unet.core.examples import MEMBRANE_OBJECT_HOLES

    volume = tifffile.imread(data_dir / "isbi2012" / "volume.tif")
    regions = tifffile.imread(data_dir / "isbi2012" / "labels.tif")  # 255 the cells, 0 the membranes
    crop = np.s_[144:272, 96:224]
    cells = ndi.label(regions[1][crop] > 0)[0]
    assert np.count_nonzero(cells == np.bincount(cells.ravel())[1:].argmax() + 1) > 0.5 * cells.size  # (one large)
    example = prepare_examples(_tiny(depth=2), [volume[1][crop]], [cells])[0]
    assert example.labels.max() == cells.max()
    membranes = (regions[0] == 0).astype(np.uint8)  # 22% of the slice, one object around ~100 cells
    with pytest.raises(ValueError, match=r"labels of example 1 hold one object \(1\) touching all four edges around "
                                         r"\d+ unlabelled parts: a mask of membranes or cell borders\?"):
        prepare_examples(_tiny(depth=2), [volume[0]], [membranes])
    # the slice's own labels, one id for all cells (a mask: split into its pieces) or one per cell, are taken
    assert prepare_examples(_tiny(depth=2), [volume[0]], [regions[0]])[0].labels.max() > MEMBRANE_OBJECT_HOLES
    assert prepare_examples(_tiny(depth=2), [volume[0]], [ndi.label(regions[0] > 0)[0]])[0].labels.max() > 100


@pytest.mark.parametrize("option, value", [("augment", "strong"), ("validate_every", 0), ("validate_every", -1),
                                           ("validate_every", float("nan")), ("patch_size", 16),
                                           ("batch_size", 65)])
def test_options_of_no_meaning_are_refused(dsb_fluo_crop, option, value):
    """``augment="strong"`` was taken as True, ``validate_every=0`` or -1 as every step; patches and
    batches outside the bounds the CLI and Fine-tune keep to (a batch of 100,000 was killed for memory)."""
    image, labels = dsb_fluo_crop
    with pytest.raises(ValueError, match=option):
        run_finetune(_tiny(), [image], [labels], steps=2, device="cpu",
                     **{"patch_size": 32, "batch_size": 2, option: value})


def test_a_threading_event_stops_segmentation_as_it_stops_training(dsb_fluo_crop):
    from napari_unet.core.predict import PredictionStopped, segment

    image, _labels = dsb_fluo_crop
    stop = threading.Event()
    stop.set()
    with pytest.raises(PredictionStopped):
        segment(_tiny(), image, should_stop=stop)
    import napari_unet.core as core

    assert {"segment", "finetune", "load_model"} <= set(dir(core))  # (a notebook's tab completion)


class _FailsAtCall:
    """A stop flag that raises, at its n-th look, the error a device raises in the middle of a run
    (torch's out of memory is a RuntimeError): what the run keeps is then tested."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return False


def test_a_device_that_failed_for_good_still_hands_back_the_best_weights(dsb_fluo_crop, monkeypatch):
    """A CUDA launch failure or illegal memory access fails every later call on the device, the trained
    network's too (imitated on that network alone): the best weights validated before, kept on the CPU,
    now go into a new network there (they were lost: the error alone was raised, nothing saved)."""
    import napari_unet.core.optimise as optimise
    from napari_unet.core.train import TrainingFailed

    error = "CUDA error: an illegal memory access was encountered"
    step = optimise.Optimiser.step

    def failing(self, batch, lr, k):
        if k == 14:
            def dead(*_args, **_kwargs):
                raise RuntimeError(error)

            self.net.forward = self.net.load_state_dict = dead
            dead()
        return step(self, batch, lr, k)

    monkeypatch.setattr(optimise.Optimiser, "step", failing)
    image, labels = dsb_fluo_crop
    with pytest.raises(TrainingFailed) as failed:
        _drain(finetune(_tiny(), [image], [labels], steps=30, patch_size=32, batch_size=1, validate_every=5,
                        validate_start=False))
    assert str(failed.value.error) == error and failed.value.step in (5, 10)
    kept = failed.value.model
    assert kept.metadata["training"]["selected_step"] == failed.value.step
    from napari_unet.core.predict import predict_probabilities

    probs = predict_probabilities(kept, image)
    assert np.isfinite(probs).all() and probs.shape[-2:] == image.shape


def test_a_failure_in_the_middle_of_training_keeps_the_best_weights_validated_before(dsb_fluo_crop, tmp_path):
    from napari_unet.core.train import TrainingFailed
    from napari_unet.widgets._training_job import train_and_save

    image, labels = dsb_fluo_crop
    options = dict(steps=30, patch_size=32, batch_size=1, validate_every=5, validate_start=False)
    with pytest.raises(TrainingFailed) as failed:
        _drain(finetune(_tiny(), [image], [labels], stop=_FailsAtCall(14), **options))
    assert isinstance(failed.value.error, MemoryError) and failed.value.__cause__ is failed.value.error
    assert failed.value.step in (5, 10)  # the best weights validated before the failure
    kept = failed.value.model
    assert kept.metadata["training"]["selected_step"] == failed.value.step
    assert kept.metadata["steps"] > failed.value.step and kept.metadata["training_time_s"] > 0  # as far as it got
    assert all(torch.isfinite(v).all() for v in kept.net.state_dict().values() if v.is_floating_point())

    assert str(failed.value.error) == ("The computer ran out of memory while training on patches of 32 px, 1 at a "
                                       "time: lower Patch size or Batch size (Fine-tune's Advanced; --patch-size, "
                                       "--batch-size).")

    # nothing validated yet: the failure itself (in a user's words), nothing to keep
    with pytest.raises(MemoryError, match="The computer ran out of memory while training on patches of 32 px") as failed:
        _drain(finetune(_tiny(), [image], [labels], stop=_FailsAtCall(3), **options))
    assert "Tried to allocate 2.00 GiB" in str(failed.value.__cause__)

    # the Fine-tune widget's worker body saves them and says what failed
    base = save_model(_tiny(), tmp_path / "base.pt")
    from napari_unet.widgets._examples import Example

    job = train_and_save(str(base), [Example(image, labels, "crop")], tmp_path / "tuned.pt", name="tuned",
                         settings=options, stop=_FailsAtCall(14))
    result = run_to_end(job, lambda _event: None)
    assert result.path == tmp_path / "tuned.pt" and result.failed_step in (5, 10)
    assert "ran out of memory while training" in str(result.failure)
    assert read_model_file(result.path).metadata["training"]["selected_step"] == result.failed_step


def test_a_finetuned_model_segments_at_threshold_0_5_with_its_bases_sizes(dsb_fluo_crop):
    """Fine-tuning (class weights capped at 3) makes models that call fewer pixels cells than their base
    (capped at 10) at its threshold: the fine-tuned model takes 0.5 and keeps the base's minimum size and
    seed fraction, and its validation scores the objects so (it used 0.5 / 16 px / every seed)."""
    from napari_unet.core.instances import seed_pixels
    from napari_unet.core.train import prepare_run

    image, labels = dsb_fluo_crop
    base = _tiny(depth=2)
    base.metadata.update(postprocessing={"threshold": 0.7, "min_size": 32, "seed_fraction": 0.1}, diameter=17.0)
    run = prepare_run(base, [image], [labels], steps=2, patch_size=32, batch_size=2)
    assert run.trainer.validator.setting == (0.5, 32, seed_pixels(0.1, 17.0))
    # the starting weights (step 0), saved with the base's own setting if kept, are scored with it
    assert run.trainer.validator.start_setting == (0.7, 32, seed_pixels(0.1, 17.0))
    model = run_finetune(base, [image], [labels], steps=2, patch_size=32, batch_size=2, select="latest")
    assert model.metadata["postprocessing"] == {"threshold": 0.5, "min_size": 32, "seed_fraction": 0.1}
    assert base.metadata["postprocessing"]["threshold"] == 0.7  # (the base is not changed)
    # from scratch: the recipe's own setting is tuned after training (scripts/train_default_model.py)
    scratch = prepare_run(base, [image], [labels], steps=2, patch_size=32, batch_size=2, from_scratch=True)
    assert scratch.trainer.validator.setting is None and scratch.trainer.validator.start_setting is None
    assert run_finetune(base, [image], [labels], steps=1, patch_size=32, batch_size=2, select="latest",
                        from_scratch=True).metadata["postprocessing"]["threshold"] == 0.7
