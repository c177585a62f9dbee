"""Post-processing of a model's own for a kind of image (issue #15): read from the model file with
care, chosen from the image itself in the one plane loop, tuned on images with ground truth, and
shown by Segment's Threshold and Min. size controls."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core import load_model, segment
from napari_unet.core import calibrate
from napari_unet.core.checkpoint import postprocessing_by_kind, postprocessing_settings, save_model
from napari_unet.core.metrics import average_precision
from napari_unet.core.predict import PlaneResult, iter_planes, probabilities_to_labels
from napari_unet.core.scale import min_size_at
from napari_unet.io import load_sample

COLOUR = {"threshold": 0.55, "min_size": 8, "seed_fraction": 0.2}


def _model_with_colour_setting():
    model = load_model("nuclei")
    model.metadata["postprocessing_by_kind"] = {"colour": dict(COLOUR)}
    return model


def _general_only(name: str = "nuclei"):
    """The built-in model with its general post-processing alone."""
    model = load_model(name)
    model.metadata.pop("postprocessing_by_kind", None)
    return model


def _plane(model, image, **kwargs) -> PlaneResult:
    [result] = [r for r in iter_planes(model, image, device="cpu", **kwargs) if isinstance(r, PlaneResult)]
    return result


def test_settings_per_kind_are_read_with_care():
    meta = {
        "postprocessing": {"threshold": 0.7, "min_size": 32, "seed_fraction": 0.05},
        "postprocessing_by_kind": {
            "colour": {"threshold": 0.6, "n_images": 79},  # values not given are the general ones
            "no-such-kind": {"threshold": 0.1},
            "fluorescence": {"threshold": float("nan"), "min_size": True},  # not numbers: ignored
            "transmitted": {"threshold": 1.5, "min_size": -3, "seed_fraction": 2.0},  # out of range: ignored
            "bright-field": "0.4",
        },
    }
    kinds = postprocessing_by_kind(meta)
    assert set(kinds) == {"colour", "fluorescence", "transmitted"}
    assert kinds["colour"] == {"threshold": 0.6, "min_size": 32, "seed_fraction": 0.05}
    assert kinds["fluorescence"] == kinds["transmitted"] == postprocessing_settings(meta)
    assert postprocessing_settings(meta, "colour")["threshold"] == 0.6
    assert postprocessing_settings(meta, "transmitted") == postprocessing_settings(meta) == meta["postprocessing"]
    assert postprocessing_by_kind({"postprocessing_by_kind": ["colour"]}) == {}
    assert postprocessing_settings({}) == {"threshold": 0.5, "min_size": 16, "seed_fraction": 0.05}


def test_a_colour_image_gets_the_colour_setting_a_grey_one_the_general():
    model = _model_with_colour_setting()
    general = _general_only()
    assert model.min_seed_for("colour") > model.min_seed == general.min_seed
    rgb, _, _ = load_sample("nuclei_stained_2d")
    grey, _, _ = load_sample("nuclei_fluorescence_2d")

    colour = _plane(model, rgb)
    assert colour.kind == "colour" and colour.min_seed == model.min_seed_for("colour")
    expected = probabilities_to_labels(colour.probabilities, COLOUR["threshold"],
                                       min_size_at(COLOUR["min_size"], colour.scale), model.representation,
                                       min_seed=min_size_at(colour.min_seed, colour.scale))[colour.inner]
    np.testing.assert_array_equal(colour.labels, expected)
    # re-thresholding keeps the colour seed rule
    again = colour.relabel(COLOUR["threshold"], COLOUR["min_size"])
    np.testing.assert_array_equal(again.labels, colour.labels)

    before = _plane(general, rgb)
    assert before.kind is None and before.min_seed == general.min_seed
    assert not np.array_equal(before.labels, colour.labels)  # the setting changes the labels ...
    assert colour.diameter == before.diameter  # ... not the estimate, made with the general setting
    np.testing.assert_array_equal(colour.probabilities, before.probabilities)

    fluo = _plane(model, grey)
    assert fluo.kind is None  # no setting of its own for fluorescence: the general one
    np.testing.assert_array_equal(fluo.labels, _plane(general, grey).labels)


def test_values_given_win_over_the_kinds_own_but_its_seed_rule_stays():
    model = _model_with_colour_setting()
    rgb, _, _ = load_sample("nuclei_stained_2d")
    result = _plane(model, rgb, threshold=0.8, min_size=0)
    assert result.kind == "colour"
    expected = probabilities_to_labels(result.probabilities, 0.8, 0, model.representation,
                                       min_seed=min_size_at(model.min_seed_for("colour"), result.scale))[result.inner]
    np.testing.assert_array_equal(result.labels, expected)
    with pytest.raises(ValueError, match="threshold"):
        _plane(model, rgb, threshold=1.5)


def _halves(image: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    w = image.shape[1] // 2
    return [(image[:, :w], labels[:, :w]), (image[:, w:], labels[:, w:])]


def test_tuning_per_kind_on_images_with_ground_truth(monkeypatch):
    """Two colour images (halves of the stained sample) and two fluorescence fields. The general
    setting's score is what a user gets with the model as it is; a kind keeps a setting only when
    it beats that."""
    model = _general_only()
    rgb, rgb_labels, _ = load_sample("nuclei_stained_2d")
    fields, fields_labels, _ = load_sample("nuclei_fluorescence_fields")
    pairs = _halves(rgb, rgb_labels) + list(zip(fields[:2], fields_labels[:2]))
    images, labels = [p[0] for p in pairs], [p[1].astype(np.int32) for p in pairs]
    monkeypatch.setattr(calibrate, "KIND_MIN_IMAGES", 2)
    grid = dict(thresholds=(0.3, 0.5, 0.7, 0.9), min_sizes=(0, 32), seed_fractions=(0.0, 0.05, 0.2))

    events = []
    gen = calibrate.iter_tune_postprocessing_by_kind(model, images, labels, **grid, device="cpu")
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        by_kind = stop.value
    assert [e.done for e in events] == [1, 2, 3, 4] and events[-1].total == 4

    as_is = {kind: float(np.mean([average_precision(lab, segment(model, img, device="cpu"))
                                  for img, lab in zip(images[i:i + 2], labels[i:i + 2])]))
             for kind, i in (("colour", 0), ("fluorescence", 2))}
    assert "colour" in by_kind and set(by_kind) <= {"colour", "fluorescence"}  # two images: easy to beat
    for kind, chosen in by_kind.items():
        assert chosen["n_images"] == 2
        assert chosen["ap50_general"] == pytest.approx(as_is[kind], abs=1e-4)
        assert chosen["ap50"] >= chosen["ap50_general"] + calibrate.KIND_MARGIN
        assert chosen["threshold"] in grid["thresholds"] and chosen["min_size"] in grid["min_sizes"]

    # only the kinds asked for are tuned
    only = list(calibrate.iter_tune_postprocessing_by_kind(model, images, labels, **grid, kinds=["colour"],
                                                           device="cpu"))
    assert [e.total for e in only] == [2, 2]

    # a margin no setting can beat: no kind keeps one; too few images of a kind: not even tried
    monkeypatch.setattr(calibrate, "KIND_MARGIN", 1.01)
    from napari_unet.core.events import run_to_end

    assert run_to_end(calibrate.iter_tune_postprocessing_by_kind(model, images, labels, **grid, device="cpu")) == {}
    monkeypatch.setattr(calibrate, "KIND_MIN_IMAGES", 3)
    assert list(calibrate.iter_tune_postprocessing_by_kind(model, images, labels, **grid, device="cpu")) == []


def test_segment_shows_the_models_setting_for_the_kind_of_image(make_napari_viewer, tmp_path, qtbot):
    from napari_unet.widgets.segment import SegmentWidget

    model = _model_with_colour_setting()
    general = model.postprocessing
    path = save_model(model, tmp_path / "with_colour.pt")
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    rgb, _, _ = load_sample("nuclei_stained_2d")
    grey, _, _ = load_sample("nuclei_fluorescence_2d")
    viewer.add_image(grey, name="fluo")
    viewer.add_image(rgb, name="stained", rgb=True)
    viewer.add_image(grey[::-1], name="fluo 2")
    w.reset_choices()
    w.add_model_file(path)

    w._image_combo.value = viewer.layers["stained"]
    assert w._threshold.value == pytest.approx(COLOUR["threshold"])
    assert w._min_size.value == COLOUR["min_size"]
    assert w._model_metadata() is w._model_metadata()  # read once, not at every image change
    assert "colour" in w._threshold.tooltip
    assert w._postprocessing_given() == (None, None)  # the model's own: the core applies it per kind
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    masks = viewer.layers["stained masks"].data
    expected = _plane(model, rgb, diameter="auto")
    assert expected.kind == "colour"
    np.testing.assert_array_equal(masks > 0, expected.labels > 0)
    assert len(np.unique(masks)) == len(np.unique(expected.labels))

    w._image_combo.value = viewer.layers["fluo"]
    assert w._threshold.value == pytest.approx(general["threshold"])
    assert w._min_size.value == general["min_size"]

    # a value the user sets stays while the image kind does not change the model's setting
    w._threshold.value = 0.4
    w._image_combo.value = viewer.layers["fluo 2"]
    assert w._threshold.value == pytest.approx(0.4)
    assert w._postprocessing_given() == (pytest.approx(0.4), None)  # min. size still the model's own
    w._image_combo.value = viewer.layers["stained"]
    assert w._threshold.value == pytest.approx(COLOUR["threshold"])


def test_a_trained_model_drops_the_settings_per_kind_of_its_base(dsb_fluo_crop):
    """They were tuned for the base's weights: the fine-tuned model keeps its base's general
    setting (at the threshold 0.5: see core.train_metadata.finetuned_postprocessing), which applies to
    every image, and no setting per kind it was never measured with."""
    import torch

    from napari_unet.core.checkpoint import SegmentationModel
    from napari_unet.core.events import run_to_end
    from napari_unet.core.model import UNet
    from napari_unet.core.train import finetune

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch").eval()
    general = {"threshold": 0.6, "min_size": 20, "seed_fraction": 0.05}
    base = SegmentationModel(net, "bg-interior-boundary", metadata={
        "name": "tiny", "diameter": 14.0, "postprocessing": general,
        "postprocessing_by_kind": {"fluorescence": dict(COLOUR)}})
    assert base.postprocessing_for("fluorescence")["threshold"] == COLOUR["threshold"]
    image, labels = dsb_fluo_crop
    # (the latest weights: a run that keeps its starting weights keeps their settings per kind, see test_resume)
    tuned = run_to_end(finetune(base, [image], [labels], steps=2, patch_size=32, batch_size=2, device="cpu",
                                select="latest"))
    assert "postprocessing_by_kind" not in tuned.metadata and tuned.postprocessing_by_kind == {}
    assert tuned.postprocessing == {**general, "threshold": 0.5} == tuned.postprocessing_for("fluorescence")
    assert base.postprocessing_by_kind  # the base is untouched


def test_cli_uses_the_models_setting_for_a_colour_image(tmp_path):
    """`napari-unet predict` without --threshold leaves the choice to the core: the built-in nuclei
    model's colour setting for a stained RGB image, as the Python API gives it."""
    import tifffile

    from napari_unet.cli import main

    rgb, _, _ = load_sample("nuclei_stained_2d")
    model = load_model("nuclei")
    assert model.postprocessing_by_kind.get("colour")  # the shipped model has one
    tifffile.imwrite(tmp_path / "stained.tif", rgb, photometric="rgb")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "stained.tif"), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    masks = tifffile.imread(out / "stained_masks.tif")
    np.testing.assert_array_equal(masks, segment(model, rgb, device="cpu"))
    colour = _plane(model, rgb)
    assert colour.kind == "colour"
    np.testing.assert_array_equal(masks > 0, colour.labels > 0)


def test_segment_on_an_rgb_stack_follows_the_kind_the_core_used(make_napari_viewer, tmp_path, qtbot):
    """An RGB time stack: the slice on screen is told apart (napari's ``ndim`` leaves out the colour
    axis), current slice segments that slice only, and after a whole-stack run whose first plane
    is of another kind, the controls show the setting the core used for it."""
    from napari_unet.widgets.segment import SCOPE_STACK, SegmentWidget

    model = _model_with_colour_setting()
    general = model.postprocessing
    path = save_model(model, tmp_path / "with_colour.pt")
    stained, _, _ = load_sample("nuclei_stained_2d")
    grey_as_rgb = np.repeat(stained.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)  # plane 0: no colour
    stack = np.stack([grey_as_rgb, stained])
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    layer = viewer.add_image(stack, name="stack", rgb=True)
    viewer.dims.set_current_step(0, 1)
    w.reset_choices()
    w.add_model_file(path)
    w._image_combo.value = layer
    w._proposal.refresh()
    w._on_image_kind()
    assert w._proposal.kind == "colour"
    assert w._threshold.value == pytest.approx(COLOUR["threshold"])

    w._run_button.clicked.emit()  # current slice: plane 1 only
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    masks = viewer.layers["stack masks"].data
    assert masks.shape == stack.shape[:3] and masks[1].any() and not masks[0].any()
    np.testing.assert_array_equal(masks[1] > 0, _plane(model, stained).labels > 0)

    w._scope.value = SCOPE_STACK
    w._overwrite.value = True
    w._run_button.clicked.emit()  # the core tells the kind on plane 0: not colour
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert viewer.layers["stack masks"].data[0].any()
    assert w._threshold.value == pytest.approx(general["threshold"])
    assert w._min_size.value == general["min_size"]


def test_a_setting_the_controls_cannot_show_is_shown_as_their_nearest(make_napari_viewer, tmp_path):
    """A model file whose colour threshold (0.97) is beyond the slider (0.95 at most): no error, the
    slider shows 0.95, and segmenting uses what it shows."""
    from napari_unet.widgets.segment import SegmentWidget

    model = load_model("nuclei")
    model.metadata["postprocessing_by_kind"] = {"colour": {"threshold": 0.97, "min_size": 10**7}}
    path = save_model(model, tmp_path / "extreme.pt")
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    rgb, _, _ = load_sample("nuclei_stained_2d")
    viewer.add_image(rgb, name="stained", rgb=True)
    w.reset_choices()
    w.add_model_file(path)
    w._image_combo.value = viewer.layers["stained"]
    assert w._threshold.value == pytest.approx(w._threshold.max)
    assert w._min_size.value == w._min_size.max
    assert w._postprocessing_given() == (pytest.approx(w._threshold.max), w._min_size.max)
