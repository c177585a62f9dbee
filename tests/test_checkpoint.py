"""Model files: safe loading (no unpickling), format versions, names, the built-in default."""

from __future__ import annotations

import pickle

import pytest
import torch

from napari_unet.core.checkpoint import (
    FORMAT_VERSION,
    ModelFileError,
    SegmentationModel,
    check_model_name,
    list_models,
    load_model,
    read_model_file,
    read_model_metadata,
    save_model,
    user_model_path,
)
from napari_unet.core.model import UNet


class _Payload:
    """Stands for malicious code in a pickle: loading must never build it."""

    built = False

    def __reduce__(self):
        return (_Payload._mark, ())

    @staticmethod
    def _mark():
        _Payload.built = True
        return {}


def test_builtin_default_model_loads_offline_with_its_metadata():
    model = load_model()
    assert model.name == "nuclei" and model.representation == "bg-interior-boundary"
    assert model.metadata["model_card"]["data"].startswith("DSB2018")
    assert 0 < model.postprocessing["threshold"] < 1
    assert list_models()[0].name == "nuclei" and list_models()[0].builtin
    assert "path" not in torch.load(model.metadata["path"], weights_only=True)["metadata"]
    # the card's training stages add up to the recorded totals
    stages = model.metadata["stages"]
    assert sum(st["steps"] for st in stages) == model.metadata["steps"]


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = SegmentationModel(UNet(1, 3, 4, 2, "same", "batch"), metadata={"name": "mine", "val_ap50": 0.9})
    path = save_model(model, tmp_path / "mine.pt")
    again = read_model_file(path)
    for (k, a), (_k, b) in zip(model.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert read_model_metadata(path)["val_ap50"] == 0.9
    # where a copy was read from is not written into the next file
    assert again.metadata["path"] == str(path)
    copy_path = save_model(again, tmp_path / "copy.pt")
    assert "path" not in torch.load(copy_path, weights_only=True)["metadata"]


def test_pickled_code_is_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "napari-unet-model", "x": _Payload()}, fh)
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        read_model_file(path)
    assert not _Payload.built


def test_newer_format_version_is_refused_with_advice(tmp_path):
    data = SegmentationModel(UNet(1, 3, 4, 2, "same")).to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="Update napari-unet"):
        read_model_file(tmp_path / "future.pt")


def test_damaged_weights_are_a_clear_error(tmp_path):
    data = SegmentationModel(UNet(1, 3, 4, 2, "same")).to_dict()
    data["state_dict"].popitem()
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="damaged or incomplete") as info:
        read_model_file(tmp_path / "broken.pt")
    assert "weights missing for head.bias" in str(info.value)  # what is wrong, not only that something is
    data = SegmentationModel(UNet(1, 3, 4, 2, "same")).to_dict()
    data["state_dict"]["head.weight"] = data["state_dict"]["head.weight"][:2]
    torch.save(data, tmp_path / "shape.pt")
    with pytest.raises(ModelFileError, match=r"the weights of head.weight have shape \(2, 4, 1, 1\)"):
        read_model_file(tmp_path / "shape.pt")


def test_weights_that_are_not_numbers_are_refused(tmp_path):
    """A run that diverged, saved by another program: it segmented nothing without a word."""
    data = SegmentationModel(UNet(1, 3, 4, 2, "same")).to_dict()
    data["state_dict"]["head.weight"][0] = float("nan")
    torch.save(data, tmp_path / "nan.pt")
    with pytest.raises(ModelFileError, match=r"head\.weight hold values that are not numbers"):
        read_model_file(tmp_path / "nan.pt")


@pytest.mark.parametrize("key, value", [("metadata", "mine"), ("normalization", [1.0, 99.8])])
def test_a_damaged_metadata_or_normalisation_entry_is_a_clear_error(tmp_path, key, value, capsys):
    """A model file whose metadata (or normalisation) was no dict raised a bare ValueError/TypeError
    (a traceback in the CLI), and one such file in the model folder made `napari-unet models` fail."""
    from napari_unet.cli import main

    data = SegmentationModel(UNet(1, 3, 4, 2, "same")).to_dict()
    data[key] = value
    path = user_model_path("damaged")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="damaged or incomplete"):
        read_model_file(path)
    save_model(SegmentationModel(UNet(1, 3, 4, 2, "same"), metadata={"name": "good"}), user_model_path("good"))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and ("broken" in out) == (key == "metadata")


def test_model_names_are_checked():
    assert check_model_name("  my cells v2 ") == "my cells v2"
    for bad in ("", "../escape", "a/b", "x.pt", "nuclei"):
        with pytest.raises(ValueError):
            check_model_name(bad)
    assert user_model_path("mine").name == "mine.pt"


def test_a_torchscript_file_is_refused_in_one_line_without_torch_warnings(data_dir, recwarn):
    """The TorchScript weights of a BioImage.IO package given as a model file: torch.load handed it to
    torch.jit.load (two warnings) before it was refused."""
    from napari_unet.core.checkpoint import ModelFileError, read_model_file

    with pytest.raises(ModelFileError, match="is a TorchScript file"):
        read_model_file(data_dir / "bioimageio_unet2d_nuclei_broad" / "weights.pt")
    assert not [w for w in recwarn if "torch" in str(w.filename)]


def _audit_net(padding="same", depth=3):
    torch.manual_seed(0)
    return UNet(in_channels=1, n_classes=3, base_width=4, depth=depth, padding=padding, norm=None).eval()


def _audit_model(**metadata):
    from napari_unet.core.checkpoint import SegmentationModel

    return SegmentationModel(_audit_net(), "bg-interior-boundary", metadata=metadata)


def test_a_diameter_range_that_does_not_hold_the_diameter_is_not_used():
    from napari_unet.core.scale import ObjectSize

    assert _audit_model(diameter=20.0, diameter_range=[15.0, 25.0]).object_size == ObjectSize(20.0, 15.0, 25.0)
    assert _audit_model(diameter=20.0, diameter_range=[30.0, 40.0]).object_size == ObjectSize.around(20.0)
    assert _audit_model(diameter=20.0, diameter_range=[0.0, 40.0]).object_size == ObjectSize.around(20.0)


def test_model_format_version_zero_is_refused_and_normalization_round_trips(tmp_path):
    from napari_unet.core.checkpoint import ModelFileError, SegmentationModel, read_model_file, save_model

    model = _audit_model()
    model.normalization = {"kind": "percentile", "low": 2.0, "high": 98.0}
    again = read_model_file(save_model(model, tmp_path / "m.pt"))
    assert again.normalization == model.normalization
    with pytest.raises(ModelFileError, match="format version"):
        SegmentationModel.from_dict(dict(model.to_dict(), format_version=0))
