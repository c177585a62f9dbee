"""The training data of the built-in models, as rows: ``{"id", "kind", "split", "image", "labels"}``.

* ``nuclei``: DSB2018 (BBBC038, CC0), the train/val split of its ``manifest.csv``; kinds
  ``grey_dark`` (fluorescence), ``grey_bright`` (bright field), ``color`` (stained tissue).
* ``cells``: whole cells. ``usiigaci_phase`` (phase contrast, MIT; kind ``phase``) and
  ``bbbc030_dic`` (DIC, CC BY 3.0, train only; kind ``dic``; fragments left by filling its
  outlines dropped, see :func:`drop_fragments`): every 7th field (from the 4th) is held
  out as ``val``. ``c2c12_timelapse`` (phase contrast, CC-BY 4.0; kind
  ``c2c12``) is never trained on: its frames are the fine-tuning benchmark
  (benchmarks/bench_finetune.py), so they are all ``test`` and show how the model does on
  a lab and microscope it never saw. No fluorescence-cytoplasm data with whole-cell
  labels is in ../shared/data.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

#: Every ``VAL_EVERY``-th field of a cells source (from ``VAL_OFFSET``) is held out.
VAL_EVERY, VAL_OFFSET = 7, 3


def shared_data(root: Path) -> Path:
    """The shared data folder: ``NAPARI_UNET_DATA`` when set (as the tests read it), else
    ``../shared/data`` beside the repository, else ``/work/shared/data``."""
    told = os.environ.get("NAPARI_UNET_DATA")
    if told:
        if Path(told).is_dir():
            return Path(told)
        raise SystemExit(f"NAPARI_UNET_DATA={told} is not a folder: the data is not there.")
    for candidate in (root.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    raise SystemExit("No ../shared/data folder (set NAPARI_UNET_DATA): the data is not here.")


def nuclei_rows(data: Path, split: str) -> list[dict]:
    """DSB2018 rows of ``split`` (``data``: the dsb2018 folder) with image and labels loaded."""
    from skimage.io import imread

    with open(data / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    if not rows:
        raise SystemExit(f"No '{split}' rows in {data / 'manifest.csv'}.")
    for r in rows:
        img = imread(data / "images" / f"{r['id']}.png")
        if img.ndim == 3:
            img = img[..., :3]
        r["image"] = img
        r["labels"] = imread(data / "labels" / f"{r['id']}.png").astype(np.int32)
    return rows


def drop_fragments(labels: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """``labels`` without the fragments that filling BBBC030's outlines left (its README says so):
    objects smaller than ``fraction`` of the 90th percentile of the image's object areas.
    Dozens of them in some images would otherwise set the median object size to 2-3 px."""
    sizes = np.bincount(labels.ravel())
    present = sizes[1:][sizes[1:] > 0]
    if present.size == 0:
        return labels
    small = sizes < fraction * np.percentile(present, 90)
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype)


def _split_of(index: int) -> str:
    return "val" if index % VAL_EVERY == VAL_OFFSET else "train"


def cells_rows(data: Path, split: str) -> list[dict]:
    """Whole-cell rows of ``split`` ("train", "val" or "test"; ``data``: the shared data folder)."""
    import tifffile
    from skimage.io import imread

    rows: list[dict] = []
    if split in ("train", "val"):
        images = tifffile.imread(data / "usiigaci_phase" / "images.tif")
        labels = tifffile.imread(data / "usiigaci_phase" / "labels.tif")
        names = (data / "usiigaci_phase" / "sets.txt").read_text().split()
        for i, (img, lab) in enumerate(zip(images, labels)):
            if _split_of(i) == split:
                rows.append({"id": f"usiigaci_{names[i] if i < len(names) else i}", "kind": "phase",
                             "split": split, "image": img, "labels": lab.astype(np.int32)})
        for i, path in enumerate(sorted((data / "bbbc030_dic" / "images").glob("*.png"))):
            if _split_of(i) == split:
                lab = drop_fragments(imread(data / "bbbc030_dic" / "labels" / path.name).astype(np.int32))
                rows.append({"id": f"bbbc030_{path.stem}", "kind": "dic", "split": split,
                             "image": imread(path), "labels": lab})
    elif split == "test":
        images = tifffile.imread(data / "c2c12_timelapse" / "images.tif")
        labels = tifffile.imread(data / "c2c12_timelapse" / "labels.tif")
        for t, (img, lab) in enumerate(zip(images, labels)):
            rows.append({"id": f"c2c12_t{t}", "kind": "c2c12", "split": "test", "image": img,
                         "labels": lab.astype(np.int32)})
    if not rows:
        raise SystemExit(f"No '{split}' images of the cells data in {data}.")
    return rows
