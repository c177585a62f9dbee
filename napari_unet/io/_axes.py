"""Axis letters: normalise what files say, guess what they do not, check what users type.

napari-unet names array axes with the letters ``T`` (time), ``C`` (channel), ``Z`` (depth),
``Y``, ``X`` (plane) and ``S`` (colour samples of an RGB(A) image, always last).
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_unet._shapes import channels_last

#: Letters napari-unet understands, in the canonical (ImageJ / OME "TCZYX") order.
KNOWN_AXES = "TCZYXS"
#: Order in which unknown leading axes are named, innermost first.
_GUESS_ORDER = "ZTC"
#: tifffile letters that mean "some axis we cannot name".
_UNKNOWN_TIFF_AXES = set("QIRPHEALVM")


class AxesError(ValueError):
    """The axes string does not describe the array (wrong length, unknown or repeated letters)."""


def guess_axes(shape: Sequence[int], rgb: bool = False) -> str:
    """Guess axis letters from a shape alone.

    Parameters
    ----------
    shape : sequence of int
        Array shape, for example ``(10, 256, 256)``.
    rgb : bool
        True when the last axis holds colour samples (size 3 or 4).

    Returns
    -------
    str
        One letter per axis: the last two (or three with ``rgb``) are ``YX`` (``YXS``);
        leading axes become ``Z``, then ``T``, then ``C`` from the inside out,
        so ``(10, 256, 256)`` gives ``"ZYX"`` and ``(5, 10, 256, 256)`` gives ``"TZYX"``.
    """
    ndim = len(shape)
    tail = "YXS" if rgb else "YX"
    if ndim < len(tail):
        raise AxesError(f"an image needs at least {len(tail)} dimensions, got shape {tuple(shape)}")
    n_lead = ndim - len(tail)
    if n_lead > len(_GUESS_ORDER):
        raise AxesError(
            f"{ndim}-dimensional data (shape {tuple(shape)}) is not supported: napari-unet reads at "
            "most 5 axes (T, C, Z, Y, X) plus RGB colour"
        )
    if not rgb and channels_last(shape):
        # (H, W, 2): two channels last (grey + alpha, two stains), not H planes 2 pixels wide
        # (core.stack.stack_layout follows the same rule for arrays)
        lead = "".join(g for g in _GUESS_ORDER if g != "C")[: n_lead - 1][::-1]
        return lead + "YXC"
    lead = _GUESS_ORDER[:n_lead][::-1]
    return lead + tail


def normalize_file_axes(axes: str, shape: Sequence[int]) -> str:
    """Turn tifffile/OME axis letters into napari-unet letters, guessing unknown ones.

    Parameters
    ----------
    axes : str
        Letters as reported by the file (tifffile series axes such as ``"TZCYXS"``, ``"QYX"``,
        ``"IYX"``; OME-Zarr axis names ``"tczyx"``).
    shape : sequence of int
        Array shape, same length as ``axes``.

    Returns
    -------
    str
        Axis letters from :data:`KNOWN_AXES`, unique, one per dimension.
    """
    axes = axes.upper()
    if len(axes) != len(shape) or (axes.endswith("YX") and set(axes[:-2]) <= _UNKNOWN_TIFF_AXES):
        return guess_axes(shape, rgb=_looks_rgb(shape))  # the file names no axis of its own
    letters = list(axes)
    # 'S' is only meaningful as a last axis of 3/4 colour samples
    for i, a in enumerate(letters):
        if a == "S" and not (i == len(letters) - 1 and shape[i] in (3, 4)):
            letters[i] = "C" if "C" not in letters else "Q"
    unknown = [i for i, a in enumerate(letters) if a not in KNOWN_AXES]
    for i in reversed(unknown):
        free = [g for g in _GUESS_ORDER if g not in letters]
        if not free:
            raise AxesError(
                f"{len(shape)}-dimensional data (shape {tuple(shape)}, axes {axes}) is not supported: "
                "napari-unet reads at most 5 axes (T, C, Z, Y, X) plus RGB colour"
            )
        letters[i] = free[0]
    result = "".join(letters)
    check_axes(result, shape)
    return result


def _looks_rgb(shape: Sequence[int]) -> bool:
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4


def check_axes(axes: str, shape: Sequence[int]) -> str:
    """Check that ``axes`` describes an array of ``shape``; return it upper-cased.

    Raises
    ------
    AxesError
        With a message that says what is wrong and what is expected.
    """
    axes = axes.strip().upper()
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise AxesError(
            f"axes '{axes}' has {len(axes)} letters but the data has {len(shape)} dimensions "
            f"(shape {shape}); give one letter per dimension, from {KNOWN_AXES}"
        )
    bad = sorted(set(axes) - set(KNOWN_AXES))
    if bad:
        raise AxesError(f"unknown axis letter(s) {', '.join(bad)} in '{axes}'; use letters from {KNOWN_AXES}")
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise AxesError(f"axis letter(s) {', '.join(repeated)} appear more than once in '{axes}'")
    if "Y" not in axes or "X" not in axes:
        raise AxesError(f"axes '{axes}' must contain Y and X")
    if "S" in axes and (axes[-1] != "S" or shape[-1] not in (3, 4)):
        raise AxesError("S (RGB colour samples) must be the last axis and have size 3 or 4")
    return axes


#: A leading axis of at most this many entries, guessed as Z or T for a file that names no axes,
#: may just as well hold channels (nuclei and cytoplasm): the user is told how to say so.
SHORT_AXIS = 4


def short_guessed_axis(shape: Sequence[int], axes: str, axes_from_file: bool) -> int | None:
    """The first leading axis that was guessed as Z or T (the file names no axes) and has at most
    :data:`SHORT_AXIS` entries: it may be channels. None when there is none."""
    if axes_from_file or "C" in axes:
        return None
    for i, (letter, n) in enumerate(zip(axes, shape)):
        if letter in "ZT" and 1 < int(n) <= SHORT_AXIS:
            return i
    return None


def planes_not_channels_note(shape: Sequence[int], axes: str, axes_from_file: bool) -> str:
    """A sentence saying that a short leading axis of a file that names no axes was taken as planes
    ("" when there is no such axis); the caller adds how to say it holds channels."""
    i = short_guessed_axis(shape, axes, axes_from_file)
    if i is None:
        return ""
    what = {"Z": "z planes", "T": "time points"}[axes[i]]
    return (f"the file does not name its axes: its axis {i} ({int(shape[i])} entries) is taken as {what} "
            f"({axes}), segmented one by one at the object size told on the first; "
            "if they are channels (e.g. cytoplasm and nuclei)")
