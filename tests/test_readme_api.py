"""The README's Python example, run as written on the sample of whole cells it names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_python_example_segments_its_cells(tmp_path, monkeypatch):
    """``load_model()`` alone ran the nuclei model on the example's cells.tif (AP@0.5 0.008): the
    example proposes the model for the image's kind, as Segment does."""
    from napari_unet.core.metrics import average_precision

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    example = next(b for b in blocks if 'read_stack("cells.tif")' in b)
    setup = example.split("from napari_unet.core.edit")[0]  # (the edit lines need an object the reader picks)
    shutil.copy(ROOT / "sample_data" / "usiigaci_phase_cells.tif", tmp_path / "cells.tif")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(setup, "README.md", "exec"), names)  # noqa: S102 - the project's own documentation
    truth = tifffile.imread(ROOT / "sample_data" / "usiigaci_phase_cells_labels.tif")
    assert names["model"].name == "cells"
    assert names["labels"].shape == truth.shape
    assert average_precision(truth, names["labels"], 0.5) > 0.8
