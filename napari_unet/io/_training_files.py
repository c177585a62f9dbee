"""Training data on disk: which labels file goes with which image, and labels that are images.

One rule, used by ``napari-unet train`` and by the Fine-tune widget's "examples from folders"
(:func:`pair_images_with_labels`), and one check that a labels file is not an intensity image
given by mistake (:func:`napari_unet.core.labels.check_labels_not_an_image`, which the core
training runs on every example; re-exported here).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
