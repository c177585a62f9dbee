"""Training data on disk: which labels file goes with which image, and labels that are images.

One rule, used by ``napari-unet train`` and by the Fine-tune widget's "examples from folders"
(:func:`pair_images_with_labels`), one way to read a pair of files into training planes
(:func:`read_training_pair`), and one check that a labels file is not an intensity image
given by mistake (:func:`napari_unet.core.labels.check_labels_not_an_image`, which the core
training runs on every example; re-exported here).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._formats import PLANE_IMAGE_SUFFIXES, list_plane_files, stack_name

log = logging.getLogger(__name__)

#: Endings tried, in this order, after an image's name to find its labels file:
#: ``cells1.tif`` goes with ``cells1.tif`` (same name, other folder), ``cells1_masks.png``, ...
LABEL_NAME_SUFFIXES = ("", "_masks", "_mask", "_labels", "_label", "_seg", " masks")



class PairingError(ValueError):
    """Images and labels files cannot be paired; the message names the files and the rule."""


def _rule() -> str:
    endings = ", ".join(repr(s) for s in LABEL_NAME_SUFFIXES if s)
    return f"a labels file has its image's name, or that name followed by {endings}"


def pair_images_with_labels(
    images_folder: str | os.PathLike, labels_folder: str | os.PathLike
) -> list[tuple[Path, Path]]:
    """Pair the 2D image files of a folder with their labels files.

    The rule: images are the files of ``images_folder`` ending in :data:`PLANE_IMAGE_SUFFIXES`
    (hidden files skipped), in natural order (``img2`` before ``img10``). The labels file of
    ``NAME.ext`` is the file of ``labels_folder`` named ``NAME`` + one of
    :data:`LABEL_NAME_SUFFIXES` + any image ending, the endings tried in that order for all
    images before the next (so ``a.tif`` with ``a.tif`` wins over ``a_masks.tif``); ``.ome.tif``
    counts as one ending. The two folders may be one folder: then the files that are the labels
    of another file are not images, and a file named with a labels ending (``x_masks.png``)
    that is neither an image's labels nor an image with labels is a labels file that fits no
    image. Images without a labels file are left out (with a logged warning naming them).

    Parameters
    ----------
    images_folder, labels_folder : str or PathLike
        Existing folders (possibly the same one).

    Returns
    -------
    list of (Path, Path)
        (image file, labels file) pairs in the images' natural order; never empty.

    Raises
    ------
    PairingError
        A folder is missing or holds no images; two labels files fit one image (with the same
        ending or not: ``a_masks.png`` and ``a_labels.png``); a labels file fits no image; no
        image has a labels file.
    """
    images_dir, labels_dir = Path(images_folder).expanduser(), Path(labels_folder).expanduser()
    for folder, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not folder.is_dir():
            raise PairingError(f"The {what} folder {folder} does not exist or is not a folder.")
    images = list_plane_files(images_dir)
    if not images:
        endings = ", ".join(PLANE_IMAGE_SUFFIXES)
        raise PairingError(f"The images folder {images_dir} holds no images ({endings}).")
    one_folder = images_dir.resolve() == labels_dir.resolve()
    candidates = images if one_folder else list_plane_files(labels_dir)
    by_name: dict[str, list[Path]] = {}
    for path in candidates:
        by_name.setdefault(stack_name(path), []).append(path)

    labels_of: dict[Path, Path] = {}
    claimed: set[Path] = set()
    for suffix in LABEL_NAME_SUFFIXES:
        for image in images:
            if image in labels_of or image in claimed:
                continue
            named = by_name.get(stack_name(image) + suffix, [])
            found = [p for p in named if p != image and p not in claimed]
            if len(found) > 1:
                raise PairingError(
                    f"{image.name} has {len(found)} labels files in {labels_dir}: "
                    f"{', '.join(p.name for p in found)}; keep one."
                )
            if found:
                labels_of[image] = found[0]
                claimed.add(found[0])

    pairs = [(image, labels_of[image]) for image in images if image in labels_of]
    # files left over that are named as labels: in two folders every one; in one folder those
    # (not labels of another file, without labels of their own) whose name ends in a labels ending
    if one_folder:
        stray = [p for p in images if p not in labels_of and p not in claimed and _labels_ending(p)]
    else:
        stray = [p for p in candidates if p not in claimed]
    _refuse_second_labels_files(stray, images, labels_of, labels_dir)
    if stray:
        raise PairingError(
            f"labels file {stray[0].name} in {labels_dir} fits no image"
            + ("" if one_folder else f" in {images_dir}")
            + (f" ({len(stray) - 1} more like it)" if len(stray) > 1 else "")
            + f": {_rule()}."
        )
    if not pairs:
        raise PairingError(f"No image in {images_dir} has a labels file in {labels_dir}: {_rule()}.")
    unlabelled = [p.name for p in images if p not in labels_of and p not in claimed]
    if unlabelled:
        log.warning(
            "%d image(s) in %s have no labels file and are left out: %s%s", len(unlabelled), images_dir,
            ", ".join(unlabelled[:5]), ", ..." if len(unlabelled) > 5 else "",
        )
    return pairs


def _labels_ending(path: Path) -> str:
    """The labels ending (``"_masks"``, ...) that ``path``'s name ends in, or ``""``."""
    name = stack_name(path)
    return next((s for s in LABEL_NAME_SUFFIXES if s and name.endswith(s) and name != s), "")


def _refuse_second_labels_files(
    stray: list[Path], images: list[Path], labels_of: dict[Path, Path], labels_dir: Path
) -> None:
    """Raise when a left-over labels file is named for an image that already has its labels file
    (``a_labels.png`` beside ``a_masks.png``): two labels files for one image."""
    image_by_name = {stack_name(image): image for image in images}
    extra: dict[Path, list[Path]] = {}
    for path in stray:
        name = stack_name(path)
        for suffix in LABEL_NAME_SUFFIXES:
            image = image_by_name.get(name[: len(name) - len(suffix)]) if name.endswith(suffix) else None
            if image is not None and image != path and image in labels_of:
                extra.setdefault(image, []).append(path)
                break
    for image in images:
        if image in extra:
            found = [labels_of[image], *extra[image]]
            raise PairingError(
                f"{image.name} has {len(found)} labels files in {labels_dir}: "
                f"{', '.join(p.name for p in found)}; keep one."
            )


def check_labels_not_an_image(labels, name: str = "labels") -> None:
    """:func:`napari_unet.core.labels.check_labels_not_an_image` (imported when called: napari's reader
    imports this package, and napari_unet.core brings torch)."""
    from ..core.labels import check_labels_not_an_image as check

    check(labels, name)


def _read_file(path: Path) -> tuple[np.ndarray, str, bool]:
    """(array, axes, whether the file says its axes) of one file, in memory."""
    from ._reader import read_stack

    data, info = read_stack(path, lazy=False)
    return np.asarray(data), info.axes, info.axes_from_file


def _planes(arr: np.ndarray, axes: str, path: Path, is_labels: bool, channels_are_planes: bool = False
            ) -> list[np.ndarray]:
    """Split a stack into 2D planes ((H, W) or (H, W, 3) RGB); ``channels_are_planes``: a guessed
    channel axis is a stack of planes (its labels file has as many)."""
    rgb = axes.endswith("S")
    spatial = 3 if rgb else 2
    if arr.ndim < spatial:
        raise ValueError(f"{path} is not an image (shape {arr.shape}).")
    if is_labels and rgb:
        raise ValueError(f"{path} looks like a colour image; label files must hold one integer per pixel.")
    if "C" in axes and not is_labels and not channels_are_planes:
        c = axes.index("C")
        if arr.shape[c] != 1:
            raise ValueError(
                f"{path} has {arr.shape[c]} channels; give the channel to train on (napari-unet train "
                "--channel N), or save it as its own file."
            )
    lead = arr.shape[: arr.ndim - spatial]
    flat = arr.reshape((-1,) + arr.shape[arr.ndim - spatial:]) if lead else arr[None]
    return [flat[i] for i in range(flat.shape[0])]


def _in_image_order(labels: np.ndarray, axes: str, image_axes: str) -> tuple[np.ndarray, str]:
    """``labels`` with its stack axes in the image's order, when both files name the same ones in
    another order: masks are stored as ImageJ keeps them (T before Z), an OME-TIFF may hold Z before T,
    and the planes are paired in order."""
    image_axes = "".join(a for a in image_axes if a not in "CS")
    if axes == image_axes or sorted(axes) != sorted(image_axes):
        return labels, axes
    return labels.transpose([axes.index(a) for a in image_axes]), image_axes


def corrected_planes_of(labels_path: Path, axes: str, lead_shape: tuple[int, ...]) -> np.ndarray | None:
    """Which planes of a labels file (read with ``axes``, its stack axes of ``lead_shape``) the list
    of corrected slices napari-unet keeps beside it names: a boolean array of ``lead_shape``. None
    when there is no list, or it names none (masks written by ``napari-unet predict``, or corrected in
    another program): then every plane counts. A broken list is said (a warning) and counts as none, as
    napari's File > Open reads it."""
    from ._corrected import load_corrected_list, planes_along, sidecar_path, stored_layout
    from ._writer import _IMAGEJ_ORDER

    if not sidecar_path(labels_path).is_file():
        return None
    try:
        planes = load_corrected_list(labels_path)
    except ValueError as exc:
        log.warning("%s: its list of corrected slices is not read (%s): every slice counts.",
                    Path(labels_path).name, exc)
        return None
    if not planes:
        return None
    lead_axes = axes[: len(lead_shape)]
    layer_axes = stored_layout(labels_path).axes
    # the list indexes the file's stack axes as written (those of size 1 too) when it names the
    # layer's axes beside, else the layer's axes, which the file reads back as
    listed = "".join(a for a in _IMAGEJ_ORDER if a in layer_axes)[:-2] if layer_axes else lead_axes
    keep = np.zeros(lead_shape, bool)
    for at in planes_along(planes, listed, lead_axes):  # (a plane off an axis of size 1 the file lost: none)
        if all(0 <= i < n for i, n in zip(at, lead_shape, strict=True)):
            keep[at] = True
    return keep


def colours_of_planes(labels_path: Path, axes: str, lead_shape: tuple[int, ...]) -> np.ndarray | None:
    """The colour of its RGB image each plane of a labels file (read with ``axes``, its stack axes of
    ``lead_shape``) was segmented by, as the list beside it records them (Segment's Colour, see
    :data:`~napari_unet.io._corrected.COLOUR_KEY`): an object array of ``lead_shape`` ("auto" where none
    is recorded); None when the list records none."""
    from ._corrected import COLOUR_KEY, planes_along, recorded_colours, sidecar_path, stored_layout

    if not sidecar_path(labels_path).is_file():
        return None
    stored = stored_layout(labels_path)
    pairs = recorded_colours({COLOUR_KEY: stored.colours})
    if not pairs:
        return None
    lead_axes = axes[: len(lead_shape)]
    # (the colours index the layer's stack axes, which the file names beside when it stores others)
    listed = stored.axes[:-2] if stored.axes else lead_axes
    colours = np.full(lead_shape, "auto", dtype=object)
    for plane, colour in pairs:
        for at in planes_along([plane], listed, lead_axes):
            if all(0 <= i < n for i, n in zip(at, lead_shape, strict=True)):
                colours[at] = colour
    return colours


def read_training_pair(image_path: Path, labels_path: Path, channel: int | None = None, with_colours: bool = False,
                       channel_taken: list[str] | None = None
                       ) -> tuple[list[tuple[Any, ...]], int]:
    """The training planes of an image file and its labels file: a list of (image plane, labels
    plane, source) with the source ``"a.tif"`` or ``"a.tif, slice 3"``, and how many planes were
    left out as not corrected (masks saved by napari-unet with some slices marked corrected: the
    others are the model's output, which the model would learn as it is).

    Planes are paired by the axes' names where both files name them (an OME-TIFF's Z before T with
    masks stored T before Z); 3 or 4 planes that a file without axes shows as channels are planes
    when the labels hold as many. ``napari-unet train`` and the Fine-tune widget's folders read
    files so. ``channel``: of an image with channels (not RGB colours), the one to train on
    (``napari-unet train --channel N``, as ``predict --channel`` segments it); an image with channels
    and no ``channel`` is refused. ``with_colours``: each entry also holds the colour of its RGB image
    the plane's masks were segmented by (:func:`colours_of_planes`; "auto" where none is recorded).

    Raises
    ------
    ValueError
        Files that are no images, labels of colour or of an intensity image, planes that do not
        pair (another count or another height and width), an image with channels, an image with
        infinite values.
    """
    img, img_axes, img_told = _read_file(image_path)
    lab, lab_axes, _told = _read_file(labels_path)
    lead = lab.shape[: max(lab.ndim - 2, 0)]
    keep = corrected_planes_of(labels_path, lab_axes, lead) if lab.ndim >= 2 else None
    colours = colours_of_planes(labels_path, lab_axes, lead) if with_colours and lab.ndim >= 2 else None
    if colours is not None:  # the same moves as the labels: their planes' order
        colours = _in_image_order(colours[..., None, None], lab_axes, img_axes)[0].reshape(-1)
    lab, order_axes = _in_image_order(lab, lab_axes, img_axes)
    lab_planes = _planes(lab, order_axes, labels_path, is_labels=True)
    if keep is not None:  # the same moves as the labels: their planes' order
        keep = _in_image_order(keep[..., None, None], lab_axes, img_axes)[0].reshape(-1)
    # 3 or 4 planes without axes in the file look like channels; with as many labels planes they are planes
    guessed_planes = ("C" in img_axes and not img_told and not img_axes.endswith("S")
                      and img.shape[img_axes.index("C")] == len(lab_planes))
    if channel is not None and "C" in img_axes and not guessed_planes:
        n = img.shape[img_axes.index("C")]
        if not 0 <= channel < n:
            raise ValueError(f"{image_path.name} has {n} channels (0 to {n - 1}); --channel {channel} is none of them")
        img, img_axes = np.take(img, channel, axis=img_axes.index("C")), img_axes.replace("C", "")
        if channel_taken is not None:  # (said by the caller: the number was used here, not left aside)
            channel_taken.append(image_path.name)
    img_planes = _planes(img, img_axes, image_path, is_labels=False, channels_are_planes=guessed_planes)
    from napari_unet.core.stack import check_finite

    check_finite(img, f" in {image_path.name}", before="training")  # (before anything is measured on it)
    check_labels_not_an_image(np.stack(lab_planes), labels_path.name)
    if len(img_planes) != len(lab_planes):
        raise ValueError(
            f"{image_path.name} has {len(img_planes)} planes but {labels_path.name} has {len(lab_planes)}"
        )
    examples = []
    for k, (a, b) in enumerate(zip(img_planes, lab_planes, strict=True)):
        if a.shape[:2] != b.shape:
            raise ValueError(
                f"plane {k} of {image_path.name} is {a.shape[:2]} but its labels in {labels_path.name} are {b.shape}"
            )
        if keep is None or keep[k]:
            source = image_path.name if len(lab_planes) == 1 and not lead else f"{image_path.name}, slice {k}"
            examples.append((a, b, source, "auto" if colours is None else colours[k]) if with_colours else (a, b, source))
    left_out = 0 if keep is None else int((~keep).sum())
    if left_out:
        log.warning("%s: %d of its %d slices are not marked corrected in the list beside it (%s): left out.",
                    labels_path.name, left_out, len(lab_planes), Path(labels_path.name + ".corrected.json"))
    return examples, left_out
