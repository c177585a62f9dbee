"""The model catalog on real model files: the built-in model and copies of it in the user's
folder (a fresh temporary folder per test, see conftest)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from napari_unet.cli import main
from napari_unet.core import catalog, checkpoint
from napari_unet.core.catalog import (
    ModelEntry,
    builtin_models_dir,
    check_models_dir_writable,
    delete_model,
    export_model,
    find_model,
    list_models,
    rename_model,
    resolve_model_path,
    suggest_model_name,
    user_models,
    user_models_dir,
)
from napari_unet.core.checkpoint import ModelFileError, read_model_file, read_model_metadata

BUILTIN = builtin_models_dir() / "nuclei.pt"


@pytest.fixture
def mine() -> Path:
    """The built-in model copied into the user's folder as "mine"."""
    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(BUILTIN, folder / "mine.pt"))


def test_list_find_and_resolve(mine):
    (mine.parent / "a folder.pt").mkdir()  # a folder named like a model is no model ...
    (mine.parent / "nuclei-tuned.pt").mkdir()  # ... nor a free name for one
    from napari_unet.core.catalog import suggest_model_name

    assert suggest_model_name("nuclei") == "nuclei-tuned-2"
    entries = list_models()
    assert entries[0] == ModelEntry("nuclei", BUILTIN, True)  # the default first
    assert entries[-1] == ModelEntry("mine", mine, False)
    assert user_models() == [entries[-1]]
    assert [e.label for e in (entries[0], entries[-1])] == ["nuclei", "mine (yours)"]
    assert find_model("mine").path == mine
    with pytest.raises(ModelFileError, match=r"No model named 'nuclei'\. Known models: mine\."):
        find_model("nuclei", user_only=True)

    assert resolve_model_path(None) == BUILTIN
    assert resolve_model_path("mine") == mine
    assert resolve_model_path(str(mine)) == mine
    with pytest.raises(ModelFileError, match="Model file not found"):
        resolve_model_path(mine.with_name("gone.pt"))
    with pytest.raises(ModelFileError, match=r"No model named 'nope'\. Known models: nuclei.*mine"):
        resolve_model_path("nope")


def test_a_model_file_named_in_upper_case_is_listed_once(mine):
    """"cells.PT" (a copy's name on some systems) is a model; beside "mine.pt", "mine.PT" (two files
    on Linux) is not listed a second time."""
    upper = Path(shutil.copyfile(mine, mine.with_name("Big.PT")))
    shutil.copyfile(mine, mine.with_name("mine.PT"))
    (mine.parent / ".hidden.PT").write_bytes(b"")
    assert [(e.name, e.path) for e in user_models()] == [("Big", upper), ("mine", mine)]
    assert resolve_model_path("Big") == upper and find_model("mine").path == mine
    from napari_unet.core import load_model

    assert load_model("Big", device="cpu").name == "Big"  # (a copy keeps the name stored in it: "nuclei")


def test_a_model_of_that_name_in_upper_case_is_never_hidden_or_replaced_unasked(mine, tmp_path, monkeypatch):
    """A user model "mine.PT" is listed as "mine": renaming to, training under or saving as "mine"
    wrote "mine.pt" beside it, which hid it; a model deleted and saved anew under a name while a run
    that was allowed to replace the old one trained was replaced, and "~" in NAPARI_UNET_MODELS
    was a folder named "~" wherever napari was started."""
    from napari_unet.core.catalog import file_identity, free_model_path, save_without_replacing, user_model_path

    upper = mine.rename(mine.with_name("mine.PT"))
    assert user_model_path("mine") == upper and free_model_path(mine) == mine.with_name("mine-2.pt")
    shutil.copyfile(BUILTIN, mine.with_name("other.pt"))
    with pytest.raises(ValueError, match="already exists"):
        rename_model("other", "mine")
    model = read_model_file(BUILTIN)
    assert save_without_replacing(model, user_model_path("mine")) == mine.with_name("mine-2.pt")

    agreed = file_identity(upper)  # the user answered Replace at Start ...
    upper.unlink()  # ... then another window deleted it and saved a model of its own there
    shutil.copyfile(BUILTIN, mine)
    os.utime(mine, ns=(1, 1))
    assert save_without_replacing(model, mine, agreed) == mine.with_name("mine-3.pt")  # kept
    assert save_without_replacing(model, mine, file_identity(mine)) == mine  # the one agreed to: replaced

    # a newer napari-unet's model (a format this version cannot read) is renamed as it is
    data = torch.load(BUILTIN, map_location="cpu", weights_only=True)
    torch.save({**data, "format_version": 99}, mine.with_name("newer.pt"))
    renamed = rename_model("newer", "newer kept")
    assert torch.load(renamed, map_location="cpu", weights_only=True)["format_version"] == 99

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NAPARI_UNET_MODELS", "~/unet models")
    assert user_models_dir() == tmp_path / "unet models"


def test_checkpoint_still_exports_the_catalog_names():
    for name in ("list_models", "resolve_model_path", "user_model_path", "check_model_name", "MODEL_SUFFIX",
                 "DEFAULT_MODEL_NAME", "ModelEntry", "builtin_models_dir", "user_models_dir"):
        assert getattr(checkpoint, name) is getattr(catalog, name), name
    with pytest.raises(AttributeError):
        checkpoint.no_such_name  # noqa: B018


def test_rename_moves_the_file_and_the_stored_name(mine):
    weights = read_model_file(mine).net.state_dict()
    new = rename_model("mine", "  my cells v2 ")
    assert new == user_models_dir() / "my cells v2.pt"
    assert not mine.exists() and [e.name for e in user_models()] == ["my cells v2"]
    assert read_model_metadata(new)["name"] == "my cells v2"
    again = read_model_file(new).net.state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert rename_model("my cells v2", "my cells v2") == new  # same name: nothing to do

    shutil.copyfile(BUILTIN, mine)
    with pytest.raises(ValueError, match="already exists"):
        rename_model("mine", "my cells v2")
    with pytest.raises(ValueError, match="is not usable"):
        rename_model("mine", "bad/name")
    with pytest.raises(ValueError, match="name of a built-in model"):
        rename_model("mine", "nuclei")
    with pytest.raises(ValueError, match="built-in models cannot be renamed"):
        rename_model("nuclei", "other")
    with pytest.raises(ModelFileError, match="No model named 'ghost'"):
        rename_model("ghost", "other")
    assert sorted(p.name for p in user_models_dir().iterdir()) == ["mine.pt", "my cells v2.pt"]


def test_delete_only_the_users_models(mine):
    before = BUILTIN.read_bytes()
    with pytest.raises(ValueError, match="built-in models cannot be deleted"):
        delete_model("nuclei")
    assert BUILTIN.read_bytes() == before
    assert delete_model("mine") == mine
    assert not mine.exists() and user_models() == []
    with pytest.raises(ModelFileError, match="No model named 'mine'"):
        delete_model("mine")


def test_export_to_a_file_or_a_folder(mine, tmp_path):
    out = export_model("mine", tmp_path / "shared copy")
    assert out == tmp_path / "shared copy.pt" and out.read_bytes() == mine.read_bytes()
    assert export_model("nuclei", tmp_path) == tmp_path / "nuclei.pt"  # built-in models too
    assert (tmp_path / "nuclei.pt").read_bytes() == BUILTIN.read_bytes()
    out.write_bytes(b"an older file")
    assert export_model(mine, out) == out and out.read_bytes() == mine.read_bytes()  # replaced
    with pytest.raises(ValueError, match="that is the model file itself"):
        export_model("mine", user_models_dir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.pt", "shared copy.pt"]  # no temp files


def test_new_names_and_the_model_folder(mine, tmp_path, monkeypatch):
    assert suggest_model_name("nuclei") == "nuclei-tuned"
    shutil.copyfile(BUILTIN, user_models_dir() / "nuclei-tuned.pt")
    assert suggest_model_name("nuclei") == "nuclei-tuned-2"
    assert suggest_model_name("nuclei-tuned") == "nuclei-tuned-2"
    assert suggest_model_name("") == "model-tuned"
    # a colleague's "cells-tuned", added from a file (not in this folder): not its fine-tuned model's name too
    assert suggest_model_name("cells-tuned") == "cells-tuned-2"
    from napari_unet.core.catalog import check_model_name

    assert check_model_name("a" * 80) == "a" * 80
    with pytest.raises(ValueError, match="at most 80"):  # as the message says
        check_model_name("a" * 81)

    assert check_models_dir_writable() == user_models_dir()
    assert sorted(p.name for p in user_models_dir().iterdir()) == ["mine.pt", "nuclei-tuned.pt"]
    blocker = tmp_path / "a file"
    blocker.write_text("where the model folder should be")
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(blocker / "models"))
    with pytest.raises(OSError, match="cannot be written.*NAPARI_UNET_MODELS"):
        check_models_dir_writable()


@pytest.mark.parametrize("name", ["cells.PT", "cells.Pt"])
def test_a_name_ending_in_pt_in_any_case_is_refused(name):
    """"cells.PT" was accepted as a model name (saved as "cells.PT.pt" and listed), yet every
    command given that name took it for a file path: "Model file not found: cells.PT"."""
    from napari_unet.core.catalog import check_model_name

    with pytest.raises(ValueError, match="without a file extension"):
        check_model_name(name)
    assert check_model_name("cells v1.2") == "cells v1.2"  # other dots stay usable


def test_cli_lists_models_from_their_metadata(mine, capsys):
    """Rows come from the metadata alone: a file whose weights are damaged is still listed with
    its score (the network is never built), a file that is no model at all is "broken"."""
    data = torch.load(mine, weights_only=True)
    data["state_dict"].popitem()
    data["metadata"]["val_ap50"] = 0.5
    torch.save(data, mine)
    with pytest.raises(ModelFileError, match="damaged"):
        read_model_file(mine)
    (user_models_dir() / "junk.pt").write_bytes(b"not a model")

    assert main(["models", "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mine"]["val_ap50"] == 0.5 and rows["mine"]["error"] is None and rows["mine"]["kind"] == "user"
    assert rows["nuclei"]["kind"] == "builtin" and rows["nuclei"]["val_ap50"] is not None
    assert rows["junk"]["error"] and "not a napari-unet model" in rows["junk"]["error"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    builtin = [[name, "builtin", f"{rows[name]['val_ap50']:.3f}"] for name in ("nuclei", "cells", "nuclei-fluo")]
    user = [["junk", "user", "broken"], ["mine", "user", "0.500"]]
    assert [line.split()[:3] for line in table[1:6]] == [*builtin, *user]
    assert table[-1] == f"user model folder: {user_models_dir()}"


def test_a_free_model_path_is_a_name_that_still_works(tmp_path):
    """NAME-2 for a model whose name has the most characters allowed stays a usable name."""
    from napari_unet.core.catalog import MAX_NAME_LENGTH, check_model_name, free_model_path

    name = "c" * MAX_NAME_LENGTH
    (tmp_path / f"{name}.pt").write_bytes(b"")
    free = free_model_path(tmp_path / f"{name}.pt")
    assert free.suffix == ".pt" and not free.exists() and free.stem.endswith("-2")
    assert check_model_name(free.stem) == free.stem
    assert free_model_path(tmp_path / "other.pt") == tmp_path / "other.pt"  # free as it is


def test_a_reader_that_stops_early_is_no_error():
    """`napari-unet models --json | head`: the pipe closes before the list is written."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "napari_unet.cli", "models", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the list is written (the child takes seconds to start)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Broken pipe" not in err, err


def test_save_model_into_the_model_folder_names_the_model_by_its_file(tmp_path):
    """``save_model`` into the user's folder: a built-in model's name is refused (the copy hid the
    built-in and was never found by name), and the stored name is the file's (``load_model`` by
    that name gave "nuclei-finetuned"); elsewhere the model keeps its name."""
    from napari_unet.core import load_model, save_model

    model = load_model("nuclei", device="cpu")
    model.metadata["name"] = "nuclei-finetuned"
    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.raises(ValueError, match="built-in"):
        save_model(model, folder / "nuclei.pt")
    assert not (folder / "nuclei.pt").exists()
    save_model(model, folder / "my-nuclei.pt")
    assert load_model("my-nuclei", device="cpu").name == "my-nuclei"
    assert model.metadata["name"] == "nuclei-finetuned"  # (the model in memory is left as it was)
    save_model(model, tmp_path / "elsewhere.pt")
    assert read_model_file(tmp_path / "elsewhere.pt").name == "nuclei-finetuned"


def test_export_into_the_model_folder_follows_the_folder_s_naming(mine):
    """A copy into the model folder under a built-in's name hid that model (listed twice, never
    found by name): refused, as save_model refuses it; under a free name it is known by it."""
    from napari_unet.core import load_model

    with pytest.raises(ValueError, match="built-in"):
        export_model("cells", user_models_dir() / "nuclei.pt")
    assert not (user_models_dir() / "nuclei.pt").exists()
    export_model("cells", user_models_dir() / "my cells.pt")
    assert load_model("my cells", device="cpu").name == "my cells"
