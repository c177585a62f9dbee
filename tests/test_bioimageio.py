"""BioImage.IO model packages: export (valid, passes bioimageio.core's test_model), import of our
own packages (identical labels, fine-tunable) and of the spec's example model, and one-line
reasons for packages that cannot be used. Everything runs with the network switched off."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

pytest.importorskip("bioimageio.core")

from napari_unet.core.checkpoint import ModelFileError, SegmentationModel, read_model_file  # noqa: E402
from napari_unet.core.model import UNet  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "dsb2018_fluorescence_nuclei.tif"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to reach the internet fails loudly (packages are read and tested offline)."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access during a BioImage.IO test: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def shipped_package(tmp_path_factory) -> Path:
    """The built-in model exported once for the module."""
    from napari_unet.core.zoo_export import export_bioimageio

    return export_bioimageio("nuclei", tmp_path_factory.mktemp("export") / "nuclei")


@pytest.fixture(scope="module")
def example_package(data_dir) -> Path:
    path = data_dir / "bioimageio_unet2d_nuclei_broad"
    if not (path / "bioimageio.yaml").is_file():
        pytest.skip("the BioImage.IO example package is not in the shared data")
    return path


def _tiny_model(padding: str) -> SegmentationModel:
    import torch

    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=2, base_width=4, depth=3, padding=padding,
               norm="batch" if padding == "same" else None).eval()
    return SegmentationModel(net, "foreground", metadata={"name": f"tiny {padding}", "diameter": 12.0})


# ---------------------------------------------------------------------- export
def test_exported_package_is_valid_and_passes_test_model(shipped_package):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    assert shipped_package.name == "nuclei.zip"
    assert not [p for p in shipped_package.parent.iterdir() if p.name.startswith(".")]  # no temporary files
    descr = load_model_description(shipped_package, perform_io_checks=True)
    assert descr.format_version.startswith("0.5")
    assert {f for f, w in descr.weights if w is not None} == {"pytorch_state_dict", "torchscript", "onnx"}
    assert [a.id for a in descr.inputs[0].axes] == ["batch", "channel", "y", "x"]
    assert descr.inputs[0].axes[2].size.step == 8  # the network's size rule: multiples of 2**(depth-1)
    assert descr.inputs[0].preprocessing[1].kwargs.max_percentile == 99.8
    assert descr.outputs[0].axes[1].channel_names == ["background", "interior", "boundary"]
    assert descr.outputs[0].axes[2].halo == 64
    assert {str(c.doi) for c in descr.cite} == {"10.1007/978-3-319-24574-4_28", "10.1038/s41592-019-0612-7"}
    own = descr.config.model_extra["napari-unet"]
    from napari_unet.core import load_model

    shipped = load_model("nuclei", device="cpu")  # the package records the shipped model's own diameter
    assert own["diameter"] == pytest.approx(shipped.diameter) and own["unet_config"]["depth"] == 4
    summary = test_model(shipped_package)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    assert sum("Reproduce test outputs" in d.name for d in summary.details) == 3  # every weight format
    # written in format 0.5.4, covers and documentation as plain names: bioimageio.spec before 0.5.11
    # (and the tools on it) refused the {source, sha256} entries of 0.5.12
    import zipfile

    import yaml

    with zipfile.ZipFile(shipped_package) as z:
        raw = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
    assert raw["format_version"] == "0.5.4" and raw["covers"] == ["cover.png"] and raw["documentation"] == "README.md"
    # what the description cannot say, said in words (another tool's probabilities differ there)
    assert "## What napari-unet does around the network" in readme and "`reflect`" in readme


def test_valid_padding_network_exports_and_passes_test_model(tmp_path):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    from napari_unet.core.zoo_export import export_bioimageio

    model = _tiny_model("valid")
    path = export_bioimageio(model, tmp_path / "valid.zip", authors=["A. Tester"])
    descr = load_model_description(path, perform_io_checks=True)
    offset = descr.outputs[0].axes[2].size.offset
    assert offset == -2 * model.net.margin < 0
    assert descr.authors[0].name == "A. Tester"
    summary = test_model(path, weight_format="torchscript")
    assert summary.status == "passed", [e.msg for d in summary.details for e in d.errors]


def test_export_writes_atomically_and_refuses_bad_licence(tmp_path):
    from napari_unet.core.zoo_export import export_bioimageio

    target = tmp_path / "m.zip"
    target.write_bytes(b"an earlier export")
    with pytest.raises(ModelFileError, match="license") as refused:
        export_bioimageio(_tiny_model("same"), target, license="not-a-licence")
    assert len(str(refused.value)) < 200  # one short line, not the list of every SPDX id
    assert target.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]


def test_a_package_is_built_beside_its_destination_not_in_the_system_temporary_folder(tmp_path, monkeypatch):
    """A full or small /tmp (a cluster node's) must not stop a package the destination has room for."""
    import tempfile

    from napari_unet.core.zoo_export import export_bioimageio

    blocked = tmp_path / "tmp-is-a-file"
    blocked.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))  # anything made in the system's temporary folder fails
    out = tmp_path / "out"
    out.mkdir()
    path = export_bioimageio(_tiny_model("same"), out / "tiny.zip")
    assert path == out / "tiny.zip" and zipfile.is_zipfile(path)
    assert [p.name for p in out.iterdir()] == ["tiny.zip"]  # the building folder is gone


# ---------------------------------------------------------------------- our packages back
def test_round_trip_gives_identical_labels(shipped_package):
    from napari_unet.core import load_model, segment

    original = load_model("nuclei", device="cpu")
    imported = read_model_file(shipped_package)
    assert isinstance(imported.net, UNet)
    assert imported.net.config == original.net.config
    assert imported.diameter == original.diameter and imported.postprocessing == original.postprocessing
    image = tifffile.imread(SAMPLE)
    expected = segment(original, image)
    assert expected.max() > 20
    np.testing.assert_array_equal(segment(imported, image), expected)


def test_a_package_exported_as_pt_is_a_model_file(shipped_package, tmp_path, example_package):
    """`napari-unet export PACKAGE.zip OUT.pt` once copied the zip's bytes into OUT.pt: a file that
    no napari-unet could read. It is the model the package holds, as a napari-unet model file."""
    from napari_unet.core.catalog import export_model
    from napari_unet.core.checkpoint import read_model_metadata

    out = export_model(shipped_package, tmp_path / "back.pt")
    model = read_model_file(out)  # raised ModelFileError: "not a napari-unet model file"
    assert isinstance(model.net, UNet) and read_model_metadata(out)["name"] == "nuclei"
    original = read_model_file(shipped_package)
    for key, value in original.net.state_dict().items():
        assert np.array_equal(model.net.state_dict()[key].numpy(), value.numpy()), key
    assert export_model(shipped_package, tmp_path) == tmp_path / "nuclei.pt"  # a folder: named after the zip
    with pytest.raises(ModelFileError, match="BioImage.IO package"):  # a package made elsewhere has no such file
        export_model(example_package, tmp_path / "foreign.pt")
    assert not (tmp_path / "foreign.pt").exists()


def test_a_package_folder_exported_into_a_folder_keeps_its_whole_name(shipped_package, tmp_path):
    """A package unpacked into the folder "nuclei v1.2", exported into a folder: the model file is
    "nuclei v1.2.pt" (Path.stem made it "nuclei v1.pt", as the CLI once named zips)."""
    import zipfile

    from napari_unet.core.catalog import export_model

    unpacked = tmp_path / "nuclei v1.2"
    with zipfile.ZipFile(shipped_package) as zf:
        zf.extractall(unpacked)
    out = tmp_path / "out"
    out.mkdir()
    assert export_model(unpacked, out) == out / "nuclei v1.2.pt"
    assert isinstance(read_model_file(out / "nuclei v1.2.pt").net, UNet)
    assert export_model(shipped_package, out) == out / "nuclei.pt"  # a zip: named without its .zip


def test_imported_own_package_fine_tunes_again(tmp_path, dsb_fluo_crop):
    from napari_unet.core.train import run_finetune
    from napari_unet.core.zoo_export import export_bioimageio

    path = export_bioimageio(_tiny_model("same"), tmp_path / "tiny.zip")
    imported = read_model_file(path)
    image, labels = dsb_fluo_crop
    tuned = run_finetune(imported, [image], [labels], steps=2, patch_size=64, batch_size=2, device="cpu",
                         validate_every=None, validate_start=False)
    assert isinstance(tuned.net, UNet)
    assert tuned.metadata["name"].startswith("tiny same")
    before = imported.net.state_dict()["head.weight"]
    assert not np.allclose(tuned.net.state_dict()["head.weight"].numpy(), before.numpy())


def test_a_colleagues_packaged_model_fine_tuned_again_credits_them(tmp_path, dsb_fluo_crop):
    """A colleague's package (CC-BY-4.0, "Alpha, A.") fine-tuned and exported again said 'napari-unet
    user', BSD-3-Clause, and named them nowhere (a review of a handoff between labs): the new model
    records whom it comes from; its package takes their licence unless told another, cites their
    citations and says so in its README."""
    import zipfile

    from napari_unet.core.train import run_finetune
    from napari_unet.core.zoo_export import export_bioimageio

    theirs = export_bioimageio(_tiny_model("same"), tmp_path / "theirs.zip", authors=["Alpha, A."],
                               license="CC-BY-4.0")
    imported = read_model_file(theirs)
    image, labels = dsb_fluo_crop
    tuned = run_finetune(imported, [image], [labels], steps=1, patch_size=64, batch_size=2, device="cpu",
                         validate_every=None, validate_start=False)
    assert tuned.metadata["derived_from"][0]["authors"] == ["Alpha, A."]
    ours = export_bioimageio(tuned, tmp_path / "ours.zip", authors=["Beta, B."])
    with zipfile.ZipFile(ours) as z:
        raw = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
    assert raw["license"] == "CC-BY-4.0" and [a["name"] for a in raw["authors"]] == ["Beta, B."]
    assert "by Alpha, A. (licence CC-BY-4.0)" in readme
    mine = export_bioimageio(tuned, tmp_path / "mine.zip", license="MIT")  # another licence, when told
    with zipfile.ZipFile(mine) as z:
        assert yaml.safe_load(z.read("rdf.yaml"))["license"] == "MIT"


# ---------------------------------------------------------------------- the spec's example model
def test_example_package_reproduces_its_test_output(example_package):
    from bioimageio.spec import load_model_description

    from napari_unet.core.zoo_import import PackagedNetwork

    model = read_model_file(example_package)
    assert isinstance(model.net, PackagedNetwork) and model.representation == "foreground-watershed"
    descr = load_model_description(example_package, perform_io_checks=False)
    tolerance = descr.config.bioimageio.reproducibility_tolerance
    rel, abs_ = (tolerance[0].relative_tolerance, tolerance[0].absolute_tolerance) if tolerance else (1e-3, 1e-3)
    x = np.load(example_package / "test_input.npy")[0, 0]
    expected = np.load(example_package / "test_output.npy")[0, 0]
    for engine in ("onnx", "torch"):
        probs = model.net.run_packaged(model.prepare_plane(x)[None], engine)[0, 1]
        np.testing.assert_allclose(probs, expected, rtol=rel, atol=abs_)


def test_example_package_segments_nuclei_with_our_tiling(example_package, dsb_fluo_crop):
    from napari_unet.core import segment
    from napari_unet.core.metrics import average_precision

    model = read_model_file(example_package)
    image, truth = dsb_fluo_crop
    for engine in ("onnx", "torch"):
        labels = segment(model, image, engine=engine, diameter="native")
        assert labels.shape == image.shape
        assert average_precision(truth, labels, 0.5) > 0.5, engine


def test_foreground_watershed_splits_touching_nuclei():
    from napari_unet.core.instances import probabilities_to_labels

    yy, xx = np.mgrid[:64, :96]
    fg = ((yy - 32) ** 2 + (xx - 34) ** 2 < 15**2) | ((yy - 32) ** 2 + (xx - 60) ** 2 < 15**2)  # two touching discs
    probs = np.stack([1.0 - fg, fg]).astype(np.float32)
    assert probabilities_to_labels(probs, 0.5, 0, "foreground").max() == 1
    split = probabilities_to_labels(probs, 0.5, 0, "foreground-watershed")
    assert split.max() == 2 and split[32, 34] != split[32, 60] and (split > 0).sum() == fg.sum()


def test_foreign_package_cannot_be_fine_tuned_or_saved(example_package, tmp_path, dsb_fluo_crop):
    from napari_unet.core.checkpoint import save_model
    from napari_unet.core.train import run_finetune

    model = read_model_file(example_package)
    with pytest.raises(ValueError, match="only napari-unet's own networks can be fine-tuned"):
        run_finetune(model, [dsb_fluo_crop[0]], [dsb_fluo_crop[1]], steps=1)
    with pytest.raises(ModelFileError, match="cannot be saved"):
        save_model(model, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------- what cannot be used
def _variant(example_package: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(example_package, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    data = yaml.safe_load((folder / "bioimageio.yaml").read_text())
    change(data, folder)
    (folder / "bioimageio.yaml").write_text(yaml.safe_dump(data))
    return folder


def _add_z(data, _folder):
    data["inputs"][0]["axes"].insert(2, {"type": "space", "id": "z", "size": 16})
    data["outputs"][0]["axes"].insert(2, {"type": "space", "id": "z", "size": {"tensor_id": "raw", "axis_id": "z"}})


def _two_inputs(data, _folder):
    second = dict(data["inputs"][0], id="mask")
    second["axes"] = [dict(a) for a in data["inputs"][0]["axes"]]
    data["inputs"].append(second)


def _three_channels(data, _folder):
    data["inputs"][0]["axes"][1]["channel_names"] = ["r", "g", "b"]


def _keras_only(data, folder):
    (folder / "weights.h5").write_bytes(b"not really keras")
    data["weights"] = {"keras_hdf5": {"source": "weights.h5", "tensorflow_version": "2.15"}}


def _missing_files(_data, folder):
    (folder / "weights.onnx").unlink()
    (folder / "weights.pt").unlink()


def _weights_on_the_web(data, _folder):
    data["weights"] = {"torchscript": {"source": "https://example.com/weights.pt", "pytorch_version": "2.5"}}


def _two_unknown_channels(data, _folder):
    data["outputs"][0]["axes"][1]["channel_names"] = ["cells", "nuclei"]



def _one_boundary_channel(data, _folder):  # it was taken for the foreground (AP 0.03)
    data["outputs"][0]["axes"][1]["channel_names"] = ["boundaries"]


def _weights_swapped(data, _folder):  # damaged or replaced weights ran silently
    for entry in data["weights"].values():
        entry["sha256"] = "0" * 64


def _axes_lie(data, _folder):  # b, y, x, c declared, the weights take b, c, y, x: ONNX Runtime's own words
    axes = data["inputs"][0]["axes"]
    data["inputs"][0]["axes"] = [axes[0], axes[2], axes[3], axes[1]]
    for tensor in (*data["inputs"], *data["outputs"]):
        tensor.pop("sample_tensor", None)


@pytest.mark.parametrize(("change", "reason"), [
    (_add_z, "2D models only"),
    (_two_inputs, "takes 2 inputs"),
    (_three_channels, "3 input channels"),
    (_keras_only, "its weights are keras_hdf5"),
    (_missing_files, "lacks its"),
    (_weights_on_the_web, "only on the web"),
    (_two_unknown_channels, "needs a foreground probability"),
    (_one_boundary_channel, "one output channel is 'boundaries', not a foreground probability"),
    (_weights_swapped, "do not match the sha256"),
    (_axes_lie, "the description does not match its weights"),
])
def test_unusable_packages_get_a_one_line_reason(example_package, tmp_path, change, reason):
    from napari_unet.core import load_model

    folder = _variant(example_package, tmp_path, change)
    with pytest.raises(ModelFileError, match=reason) as info:
        model = load_model(folder, device="cpu")
        model.net.run_packaged(np.zeros((1, 1, 64, 64), np.float32), "onnx")  # weights are read at first use
    assert "\n" not in str(info.value)


def test_a_package_whose_weights_cannot_run_is_refused_once_before_any_input(example_package, tmp_path,
                                                                           dsb_fluo_crop, capsys):
    """Weights load at the first tile: ONNX weights missing (its TorchScript left untrusted) failed once
    per input, each read first, with the same long line (25 of 30 inputs), and blank images still got
    masks that a later run skipped."""
    import tifffile

    from napari_unet.cli import main

    def no_onnx(_data, folder):
        (folder / "weights.onnx").unlink()

    folder = _variant(example_package, tmp_path, no_onnx)
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(images / f"{name}.tif", dsb_fluo_crop[0][:64, :64])
    rc = main(["predict", str(images), "--out", str(tmp_path / "out"), "--model", str(folder), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "napari-unet: error:" in err, err
    assert err.count("variant") == 1, err  # (the package named once: "…/variant: variant: …" before)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_not_a_package_is_a_one_line_reason(tmp_path):
    from napari_unet.core import load_model

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bioimageio.yaml").write_text("type: dataset\nname: x\n")
    for source, reason in ((junk, "not a readable zip"), (empty, "not a valid BioImage.IO description|not a model"),
                           (tmp_path / "gone.zip", "not found")):
        with pytest.raises(ModelFileError, match=reason) as info:
            load_model(source, device="cpu")
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- command line
def _cli(*args: str) -> subprocess.CompletedProcess:
    env_code = ("import socket, sys; real = socket.socket.connect\n"
                "def connect(self, address):\n"
                "    if self.family in (socket.AF_INET, socket.AF_INET6): raise OSError('network used')\n"
                "    return real(self, address)\n"
                "socket.socket.connect = connect\n"
                "from napari_unet.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", env_code, *args], capture_output=True, text=True)


def test_cli_exports_and_predicts_with_packages(tmp_path, example_package, dsb_fluo_crop):
    from napari_unet.core.checkpoint import save_model

    tiny = save_model(_tiny_model("same"), tmp_path / "tiny.pt")
    result = _cli("export", str(tiny), str(tmp_path / "tiny-package.zip"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny-package.zip").is_file()
    # an existing file is not replaced without --overwrite (a user's model among them)
    before = tiny.read_bytes()
    again = _cli("export", str(tmp_path / "tiny-package.zip"), str(tiny))
    assert again.returncode == 2 and "--overwrite" in again.stderr and tiny.read_bytes() == before
    folder = tmp_path / "shared"
    folder.mkdir()
    inside = _cli("export", str(tiny), str(folder))  # a folder: the package goes inside it
    assert inside.returncode == 0, inside.stderr
    assert (folder / "tiny.zip").is_file()
    new_folder = _cli("export", str(tiny), str(tmp_path / "new") + "/")  # "new/": made, the package in it
    assert new_folder.returncode == 0 and (tmp_path / "new" / "tiny.zip").is_file(), new_folder.stderr
    assert not (tmp_path / "new.zip").exists()
    image = tmp_path / "nuclei.tif"
    tifffile.imwrite(image, dsb_fluo_crop[0])
    result = _cli("predict", str(image), "--out", str(tmp_path / "masks"), "--model", str(example_package),
                  "--no-progress")
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(tmp_path / "masks" / "nuclei_masks.tif").max() > 5
    bad = _cli("predict", str(image), "--out", str(tmp_path / "m2"), "--model", str(tmp_path / "tiny.pt.zip"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr


def test_plugin_and_widgets_import_without_bioimageio():
    code = ("import sys, napari_unet, napari_unet.core.predict, napari_unet.core.checkpoint, "
            "napari_unet.widgets.segment, napari_unet.widgets.finetune, napari_unet.cli; "
            "print([m for m in sys.modules if m.startswith('bioimageio')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- widgets
def test_segment_widget_runs_a_zoo_package(make_napari_viewer, qtbot, example_package, dsb_fluo_crop,
                                           notifications):
    from napari_unet.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(dsb_fluo_crop[0], name="nuclei")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(w, SegmentWidget)
    w.add_model_file(example_package / "bioimageio.yaml")  # the file inside: the folder is the package
    assert w._model_combo.value == str(example_package)
    assert any(label == "bioimageio_unet2d_nuclei_broad (BioImage.IO)" for label, _ in w._model_choices())
    w.reset_choices()
    w._image_combo.value = image
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    masks = viewer.layers["nuclei masks"].data
    assert masks.max() > 5, notifications


def test_segment_widget_reports_an_unusable_package(make_napari_viewer, qtbot, tmp_path, example_package,
                                                    notifications):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((64, 64), np.float32) + np.eye(64), name="x")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    folder = _variant(example_package, tmp_path, _add_z)
    w.add_model_file(folder)
    w.reset_choices()
    w._image_combo.value = image
    w._run_button.clicked.emit()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert any("2D models only" in m for m in notifications)


def _models_panel_on_mine(make_napari_viewer):
    """A viewer with the Fine-tune dock, its model list on a tiny user model "mine"."""
    from napari_unet.core.checkpoint import save_model, user_model_path

    save_model(_tiny_model("same"), user_model_path("mine"))
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    panel = w.models_panel
    panel.refresh()
    panel._manage_combo.value = "mine"
    return viewer, panel


def test_manage_models_exports_a_package(make_napari_viewer, qtbot, tmp_path, notifications):
    _viewer, panel = _models_panel_on_mine(make_napari_viewer)
    worker = panel.export_package(tmp_path / "mine.zip")
    assert worker is not None and not panel._export_button.enabled
    qtbot.waitUntil(lambda: panel._export_button.enabled, timeout=60_000)
    assert any("as a BioImage.IO package" in m for m in notifications), notifications
    assert isinstance(read_model_file(tmp_path / "mine.zip").net, UNet)
    # who made it and its licence, as typed (the package said "napari-unet user", BSD-3-Clause, always)
    panel._authors_edit.value = "Smith, J.; Doe, A."
    panel._license_edit.value = "CC-BY-4.0"
    panel.export_package(tmp_path / "signed.zip")
    qtbot.waitUntil(lambda: panel._export_button.enabled, timeout=60_000)
    with __import__("zipfile").ZipFile(tmp_path / "signed.zip") as z:
        raw = yaml.safe_load(z.read("rdf.yaml"))
    assert [a["name"] for a in raw["authors"]] == ["Smith, J.", "Doe, A."] and raw["license"] == "CC-BY-4.0"
    panel._license_edit.value = "CC-BY"  # not an SPDX id: said, nothing written
    notifications.clear()
    panel.export_package(tmp_path / "bad.zip")
    qtbot.waitUntil(lambda: panel._export_button.enabled, timeout=60_000)
    assert any("unknown SPDX license id 'CC-BY'" in m for m in notifications) and not (tmp_path / "bad.zip").exists()
    # typed for "mine": another model chosen shows its own (they went into its package, over its authors)
    from napari_unet.core.checkpoint import save_model, user_model_path

    save_model(_tiny_model("same"), user_model_path("theirs"))
    panel.refresh()
    panel._manage_combo.value = "theirs"
    assert panel._authors_edit.value == "" and panel._license_edit.value == ""
    panel._manage_combo.value = "mine"  # and back: what was typed for it
    assert panel._authors_edit.value == "Smith, J.; Doe, A." and panel._license_edit.value == "CC-BY"
    panel._rename_edit.value = "mine2"  # renamed: still its own (the fields went blank)
    panel._rename_clicked()
    assert panel._manage_combo.value == "mine2" and panel._authors_edit.value == "Smith, J.; Doe, A."
    panel._manage_combo.value = "theirs"
    panel._manage_combo.value = "mine2"
    assert panel._license_edit.value == "CC-BY" and "mine" not in panel._typed_for


def test_closing_the_viewer_during_an_export_still_writes_the_package(make_napari_viewer, qtbot, tmp_path,
                                                                      notifications):
    """The export's last signal reaches a panel whose Qt parts are gone: nothing raises in the
    event loop, and the package is written all the same."""
    from qtpy.QtCore import QThreadPool, QTimer

    viewer, panel = _models_panel_on_mine(make_napari_viewer)

    def export_and_close() -> None:  # (from the event loop, as in napari, where superqt started workers on a timer)
        assert panel.export_package(tmp_path / "mine.zip") is not None
        viewer.close()  # napari asks its window's running tasks to stop: an export is not stopped

    QTimer.singleShot(0, export_and_close)
    qtbot.waitUntil(lambda: (tmp_path / "mine.zip").exists(), timeout=60_000)
    assert QThreadPool.globalInstance().waitForDone(60_000)
    qtbot.wait(200)  # the worker's queued signals are delivered
    assert any("as a BioImage.IO package" in m for m in notifications), notifications
    assert isinstance(read_model_file(tmp_path / "mine.zip").net, UNet)


def test_a_diameter_given_to_a_model_without_one_is_said_to_be_unused(example_package, dsb_fluo_crop, caplog):
    from napari_unet.core import segment

    model = read_model_file(example_package)
    labels = segment(model, dsb_fluo_crop[0], diameter=20)
    assert labels.shape == dsb_fluo_crop[0].shape[:2]
    assert "the diameter given was not used" in caplog.text


def test_a_package_zip_without_its_weights_is_a_one_line_reason(shipped_package, tmp_path):
    """A zip that lost a file (e.g. repacked by hand) raised a TypeError from inside bioimageio.spec:
    a traceback from `napari-unet predict --model` instead of the package's one-line reason."""
    import zipfile

    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(shipped_package) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            if item.filename != "weights.pt":
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(ModelFileError, match="lacks its pytorch_state_dict weights"):
        read_model_file(damaged)
    result = _cli("export", str(damaged), str(tmp_path / "back.pt"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "lacks" in result.stderr and not (tmp_path / "back.pt").exists()


def test_cli_exports_models_with_dots_in_their_names_into_a_folder(tmp_path, capsys):
    """Exported into a folder, "cells v1.2" was named "cells v1.zip", so "cells v1.1" and "cells v1.2"
    went to one file (refused, or with --overwrite the first package silently replaced)."""
    from napari_unet.cli import main
    from napari_unet.core.catalog import user_model_path
    from napari_unet.core.checkpoint import save_model

    for name in ("cells v1.1", "cells v1.2"):
        model = _tiny_model("same")
        model.metadata["name"] = name
        save_model(model, user_model_path(name))
    folder = tmp_path / "shared"
    folder.mkdir()
    for name in ("cells v1.1", "cells v1.2"):
        assert main(["export", name, str(folder)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["cells v1.1.zip", "cells v1.2.zip"]
    assert read_model_file(folder / "cells v1.2.zip").metadata["name"] == "cells v1.2"


def test_cli_exports_to_a_relative_path_and_says_when_a_file_is_in_the_way(tmp_path, capsys, monkeypatch):
    """A relative destination (built beside it, the package's files were looked for in a doubled path);
    a file where a folder is meant ("File exists", "[Errno 17]", or a package written beside it)."""
    from napari_unet.cli import main
    from napari_unet.core.catalog import user_model_path
    from napari_unet.core.checkpoint import save_model

    save_model(_tiny_model("same"), user_model_path("tiny"))
    monkeypatch.chdir(tmp_path)
    assert main(["export", "tiny", "out/tiny.zip"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "tiny.zip")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tiny.zip"]
    Path("afile").write_bytes(b"not a folder")
    for out in ("afile/", "afile/tiny.zip"):
        assert main(["export", "tiny", out]) == 2
        err = capsys.readouterr().err.strip()
        assert "afile is a file, not a folder" in err and "Errno" not in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out"]


def test_exporting_a_file_that_is_no_model_is_refused_and_writes_nothing(tmp_path, capsys):
    """Copied byte for byte before (exit 0): the copy failed only where it was used, later."""
    from napari_unet.cli import main

    fake = tmp_path / "random.pt"
    fake.write_bytes(np.random.default_rng(0).bytes(5000))
    for out in ("copy.pt", "copy.zip"):
        rc = main(["export", str(fake), str(tmp_path / out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "random.pt" in err
        assert not (tmp_path / out).exists()


def test_packages_with_per_dataset_statistics_broken_onnx_or_x_before_y(example_package, tmp_path, dsb_fluo_crop,
                                                                       monkeypatch):
    """Statistics taken "per dataset" are each plane's own (a running measure over every plane seen
    made the same image come out differently after another); ONNX weights that ONNX Runtime cannot
    load give way to the package's TorchScript ones where the user trusts the package's code (loading
    them runs their program), else the reason is said; space axes declared (x, y) are read by their ids."""
    from napari_unet.core import segment
    from napari_unet.core.zoo_import import TRUST_CODE_ENV

    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)

    image, _truth = dsb_fluo_crop

    def per_dataset(data, _folder):
        for step in data["inputs"][0]["preprocessing"]:
            if step["id"] == "zero_mean_unit_variance":
                step["kwargs"]["axes"] = ["batch", "y", "x"]

    model = read_model_file(_variant(example_package, tmp_path / "a", per_dataset))
    first = segment(model, image, engine="onnx", diameter="native")
    segment(model, np.ascontiguousarray(image[::-1, ::-1] * 0.2), engine="onnx", diameter="native")
    np.testing.assert_array_equal(segment(model, image, engine="onnx", diameter="native"), first)

    def broken_onnx(data, folder):
        (folder / data["weights"]["onnx"]["source"]).write_bytes(b"not an onnx graph")
        data["weights"]["onnx"].pop("sha256", None)

    with pytest.raises(ModelFileError, match=rf"ONNX Runtime cannot load its onnx weights.*torchscript weights "
                                             rf"\(the TorchScript program .*\).*{TRUST_CODE_ENV}=1"):
        segment(read_model_file(_variant(example_package, tmp_path / "b", broken_onnx)), image, engine="onnx",
                diameter="native")
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    model = read_model_file(_variant(example_package, tmp_path / "b2", broken_onnx))
    assert segment(model, image, engine="onnx", diameter="native").max() > 0  # TorchScript ran
    assert "onnx" not in model.net.formats  # tried once, not again for every batch and run

    def x_before_y(data, _folder):
        for tensor in (data["inputs"][0], data["outputs"][0]):
            axes = tensor["axes"]
            axes[-2], axes[-1] = axes[-1], axes[-2]

    model = read_model_file(_variant(example_package, tmp_path / "c", x_before_y))
    assert tuple(model.net.in_layout.order[-2:]) == tuple(model.net.out_layout.order[-2:]) == ("x", "y")


def test_damaged_package_descriptions_are_one_line_reasons(example_package, tmp_path):
    """A description that is no YAML, has a key twice, or a config that is no mapping: one line (a
    parser's traceback, or an AttributeError in the Segment widget, before)."""
    from napari_unet.core.checkpoint import read_model_metadata

    for i, text in enumerate(("name: [unclosed\n  - : :\n", None)):
        folder = _variant(example_package, tmp_path / str(i), lambda _d, _f: None)
        yaml_file = folder / "bioimageio.yaml"
        yaml_file.write_text(text if text is not None else yaml_file.read_text() + "name: again\n")
        with pytest.raises(ModelFileError, match="could not be read as a BioImage.IO package") as info:
            read_model_file(folder)
        assert "\n" not in str(info.value)
    folder = _variant(example_package, tmp_path / "cfg", lambda data, _f: data.update(config="x"))
    assert read_model_metadata(folder)["name"]


def test_a_package_whose_network_is_its_own_python_code_runs_only_when_trusted(shipped_package, tmp_path,
                                                                             monkeypatch, dsb_fluo_crop):
    """State-dict weights whose architecture is a Python file of the package run that file: not
    done unless the user sets NAPARI_UNET_TRUST_PACKAGE_CODE=1 (a package could hold anything);
    refused with a one-line reason that says so."""
    import hashlib
    import zipfile

    from napari_unet.core import segment
    from napari_unet.core.zoo_import import TRUST_CODE_ENV

    folder = tmp_path / "foreign"
    zipfile.ZipFile(shipped_package).extractall(folder)
    marker = tmp_path / "code ran"
    arch = (folder / "unet.py").read_bytes() + f"\nopen({str(marker)!r}, 'w').write('ran')\n".encode()
    (folder / "unet.py").write_bytes(arch)
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    data.pop("config")  # no napari-unet section: a package made elsewhere
    for kind in ("onnx", "torchscript"):
        del data["weights"][kind]
    data["weights"]["pytorch_state_dict"]["architecture"]["sha256"] = hashlib.sha256(arch).hexdigest()
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    with pytest.raises(ModelFileError, match=rf"own code \(unet.py\).*{TRUST_CODE_ENV}=1") as err:
        read_model_file(folder)
    assert "\n" not in str(err.value) and not marker.exists()
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    image, _truth = dsb_fluo_crop
    assert segment(read_model_file(folder), image, diameter="native").max() > 0 and marker.exists()


def test_a_library_callable_or_a_torchscript_program_runs_only_when_trusted(shipped_package, tmp_path, monkeypatch):
    """An architecture "from an installed library" is any function of any module called with the
    package's arguments (``os.system`` ran a shell command); loading TorchScript weights runs their
    program (its ``__setstate__`` can write any file): neither without NAPARI_UNET_TRUST_PACKAGE_CODE=1,
    while the ONNX weights of the same package are used as before."""
    import zipfile

    import torch

    from napari_unet.core.zoo_import import TRUST_CODE_ENV

    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    folder = tmp_path / "foreign"
    zipfile.ZipFile(shipped_package).extractall(folder)
    marker = tmp_path / "code ran"
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    data.pop("config")  # a package made elsewhere
    weights = data["weights"]
    weights["pytorch_state_dict"]["architecture"] = {"callable": "system", "import_from": "os",
                                                     "kwargs": {"command": f"touch '{marker}'"}}
    onnx = weights.pop("onnx")
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelFileError, match=rf"TorchScript program.*os\.system.*{TRUST_CODE_ENV}=1") as err:
        read_model_file(folder)
    assert "\n" not in str(err.value) and not marker.exists()
    weights["onnx"] = onnx  # with ONNX weights beside them: those, and nothing of the package runs
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))
    model = read_model_file(folder)
    assert model.net(torch.zeros(1, 1, 64, 64)).shape[-2:] == (64, 64) and not marker.exists()

    # its only weights that run are ONNX: on the CPU even where the network was meant for a GPU, as said
    from napari_unet.core.engine import resolve_engine

    assert model.net.packaged_engine(resolve_engine("auto", "cpu")).describe() == "ONNX Runtime"
    on_gpu = model.net.to("meta").packaged_engine(resolve_engine("auto", "meta"))
    assert on_gpu.name == "onnx" and on_gpu.describe().startswith(
        "ONNX Runtime (on the CPU, not meta: its ")  # (weights left aside: the way to run them there is said)
    assert f"left aside: set {TRUST_CODE_ENV}=1 if you trust where it comes from, to run them on meta" in \
        on_gpu.describe()
    # and Segment says so (its device line names the GPU)
    from napari_unet.widgets._segment_job import RunNote, segment_planes

    cache = {(str(folder), folder.stat().st_mtime_ns, None): model}
    job = segment_planes(str(folder), np.zeros((64, 64), np.float32), [()], (slice(None), slice(None)), rgb=False,
                         threshold=None, min_size=None, model_cache=cache)
    next(job)  # "Loading the model"
    note = next(job)
    job.close()
    assert isinstance(note, RunNote) and note.message.startswith(f"{model.name} runs through ONNX Runtime, on the "
                                                                 "CPU, not meta: its ")
    # a package with no other weights at all: said so
    del data["weights"]["pytorch_state_dict"], data["weights"]["torchscript"]
    data["weights"]["onnx"].pop("parent", None)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))
    only = read_model_file(folder).net.to("meta").packaged_engine(resolve_engine("auto", "meta"))
    assert only.describe() == "ONNX Runtime (on the CPU, not meta: the package has only ONNX weights)"


def test_exported_again_a_package_keeps_its_authors_licence_citations_and_card(tmp_path):
    """Authors, licence, citations and the built-in card survive export -> import -> export; the
    cells model cites and shows its own data (it cited DSB2018 and showed fluorescent nuclei), and a
    model fine-tuned from it inherits that."""
    import io
    import zipfile

    from napari_unet.core import load_model
    from napari_unet.core.zoo_export import ORIGINS, export_bioimageio, model_origin

    first = export_bioimageio("cells", tmp_path / "cells.zip", authors=["Jane Doe"], license="CC-BY-4.0")
    again = export_bioimageio(read_model_file(first), tmp_path / "again.zip")
    for path in (first, again):
        with zipfile.ZipFile(path) as z:
            rdf = yaml.safe_load(z.read("rdf.yaml"))
            card = z.read("README.md").decode()
            output = np.load(io.BytesIO(z.read("test_output.npy")))
        assert [a["name"] for a in rdf["authors"]] == ["Jane Doe"] and rdf["license"] == "CC-BY-4.0"
        assert any("Usiigaci" in c["text"] for c in rdf["cite"]) and not any("Bowl" in c["text"] for c in rdf["cite"])
        assert "cells" in rdf["tags"] and "nuclei" not in rdf["tags"]
        assert "## Model card" in card and "Usiigaci" in card
        assert (output[0, 1] > 0.5).mean() > 0.05  # the sample shows whole cells the model finds
    tuned = load_model("nuclei", device="cpu")
    tuned.metadata.update(name="mine", base_model="mine-before", origin="cells", path=None)
    assert model_origin(tuned) is ORIGINS["cells"]


def test_export_refuses_a_folder_it_cannot_write_before_any_work(tmp_path):
    from napari_unet.core.zoo_export import export_bioimageio

    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot be written"):
        export_bioimageio("nuclei", blocker / "nuclei.zip")


def test_a_foreground_watershed_model_exports_and_comes_back(tmp_path):
    """A model whose instances are a distance watershed of its foreground (a representation the
    loader takes) exported with a KeyError traceback."""
    from napari_unet.core.zoo_export import export_bioimageio

    tiny = _tiny_model("same")
    model = SegmentationModel(tiny.net, "foreground-watershed", metadata={"name": "fg ws", "diameter": 12.0})
    path = export_bioimageio(model, tmp_path / "fgws.zip")
    back = read_model_file(path)
    assert back.representation == "foreground-watershed"
    assert "distance to the background" in __import__("zipfile").ZipFile(path).read("README.md").decode()


def test_a_package_folder_travels_to_dask_workers_by_its_path(example_package):
    """``predict --dask`` with a package folder: workers read the package again from its path (a
    package made elsewhere cannot be serialised: it said so and stopped)."""
    from napari_unet.batch import ModelSpec

    spec = ModelSpec(read_model_file(example_package))
    assert spec.path == str(example_package) and spec.payload is None
    assert spec.get().name == read_model_file(example_package).name


@pytest.mark.parametrize("name", ["model.yaml", "unet.bioimageio.yaml"])
def test_description_file_names_bioimageio_spec_takes_are_taken(shipped_package, tmp_path, name):
    """A package whose description is model.yaml or *.bioimageio.yaml (names bioimageio.spec takes)
    was refused ("holds no bioimageio.yaml or rdf.yaml"; a folder: "is a folder, not a model file")."""
    import zipfile

    from napari_unet.core import load_model
    from napari_unet.core.checkpoint import read_model_metadata
    from napari_unet.core.zoo_import import is_bioimageio_package

    folder = tmp_path / "pkg"
    with zipfile.ZipFile(shipped_package) as z:
        z.extractall(folder)
    (folder / "rdf.yaml").rename(folder / name)
    assert is_bioimageio_package(folder) and is_bioimageio_package(folder / name)
    assert read_model_metadata(folder)["name"] == "nuclei"
    assert load_model(folder, device="cpu").representation == "bg-interior-boundary"
    zipped = tmp_path / "renamed.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
    assert read_model_metadata(zipped)["name"] == "nuclei"


def test_a_zip_of_the_package_folder_says_to_unzip_it(shipped_package, tmp_path):
    import zipfile

    from napari_unet.core.checkpoint import ModelFileError, read_model_metadata

    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(shipped_package) as src, zipfile.ZipFile(nested, "w") as out:
        for name in src.namelist():
            out.writestr(f"nuclei/{name}", src.read(name))
    with pytest.raises(ModelFileError, match="in its folder 'nuclei', not at its top: unzip it"):
        read_model_metadata(nested)


def test_one_of_our_packages_without_its_state_dict_keeps_its_diameter_and_post_processing(shipped_package, tmp_path):
    """One of our packages whose state dict was dropped (converted to other weight formats) ran as a
    foreign package: threshold 0.5, min. size 16 and no object diameter (67 objects for 64), while
    Fine-tune offered it as a base and then failed ("made elsewhere")."""
    import zipfile

    from napari_unet.core import load_model
    from napari_unet.core.zoo_import import is_own_package

    folder = tmp_path / "converted"
    with zipfile.ZipFile(shipped_package) as z:
        z.extractall(folder)
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    del data["weights"]["pytorch_state_dict"]
    for entry in data["weights"].values():
        entry.pop("parent", None)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (folder / "weights.pt").unlink()
    shipped = load_model("nuclei", device="cpu")
    model = load_model(folder, device="cpu")
    assert model.metadata.get("bioimageio") and not is_own_package(folder) and is_own_package(shipped_package)
    assert model.diameter == pytest.approx(shipped.diameter)
    assert model.postprocessing["threshold"] == shipped.postprocessing["threshold"]
    assert model.postprocessing["min_size"] == shipped.postprocessing["min_size"]


def test_cli_export_into_the_model_folder_writes_a_model_file(tmp_path, capsys):
    """`napari-unet export their.pt $NAPARI_UNET_MODELS/` (importing a colleague's model) wrote a
    BioImage.IO zip there, which no model list showed; it writes a model file, listed, and says so."""
    from napari_unet.cli import main
    from napari_unet.core.catalog import list_models, user_models_dir
    from napari_unet.core.checkpoint import save_model

    model = _tiny_model("same")
    model.metadata["name"] = "theirs"
    theirs = save_model(model, tmp_path / "theirs.pt")
    user_models_dir().mkdir(parents=True, exist_ok=True)
    assert main(["export", str(theirs), str(user_models_dir())]) == 0
    err = capsys.readouterr().err
    assert "written as theirs.pt" in err
    assert "theirs" in [e.name for e in list_models()]
    assert not list(user_models_dir().glob("*.zip"))
