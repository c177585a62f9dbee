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
    shutil.copy(ROOT / "sample_data" / "usiigaci_phase_cells.tif", tmp_path / "cells.tif")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    # the whole example, its edit too (the seeds it gave were background: "Seed (40, 52) is not on object 12")
    exec(compile(example, "README.md", "exec"), names)  # noqa: S102 - the project's own documentation
    truth = tifffile.imread(ROOT / "sample_data" / "usiigaci_phase_cells_labels.tif")
    assert names["model"].name == "cells"
    assert names["labels"].shape == truth.shape
    assert average_precision(truth, names["labels"], 0.5) > 0.75  # (one cell split by the example)
    assert names["edit"].message.startswith("split object 12 into 2")
    said = re.search(r'# "(split object 12 into 2 \(12, (\d+)\))"', example)
    assert said and names["edit"].message == said.group(1)  # (what the comment says it prints)
