"""Which colour of an RGB fluorescence composite to segment.

A merge of fluorescence channels saved as RGB (nuclei in blue, a cytoplasm or membrane stain in
green, on a black background) is no stained-tissue image: the mean of its colours mixes the
nuclei with the stain around them (DSB2018 nuclei with a cytoplasm channel: AP@0.5 from 0.88 to
0.24). Such an image is told by its colours on their own: at least one is a fluorescence image
(a flat dark background, :func:`~napari_unet.core.modality.image_modality`), where no colour of
DSB2018's 91 stained-tissue images is one (their background is bright in every colour), and the
colours are not one picture in several colours (a pseudo-coloured single channel: its mean is
that channel).

The colour segmented is the one that looks most like nuclei among the fluorescence ones: the
smallest bright area (Otsu's threshold), among those whose bright objects are compact (area-
weighted solidity at least :data:`COMPACT`; a cytoplasm stain rings the nuclei, a membrane stain
draws lines). A cell holds its nucleus, so a whole-cell or cytoplasm stain always covers more.

Bright-field immunohistochemistry (a protein in brown DAB beside blue haematoxylin nuclei) is
segmented without its DAB where the DAB is most of the stain and not in compact objects
(:func:`leaves_out_dab`, :func:`without_dab`: colour deconvolution); :func:`colour_to_segment` says
which of the three an RGB plane gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet._shapes import is_rgb

from .modality import sample_plane  # planes sampled as image_modality samples them

#: Names of the colours of an RGB image, by index.
COLOUR_NAMES = ("red", "green", "blue")
#: Area-weighted mean solidity of a colour's bright objects above which they are compact (nuclei:
#: 0.87-0.97 on DSB2018 val fluorescence; a cytoplasm ring around them 0.52-0.85).
COMPACT = 0.85
#: Colours whose pixels correlate more than this are one picture (a colour map), not channels.
SAME_PICTURE = 0.9
#: Bright objects smaller than this (pixels, after subsampling) are noise, not objects.
MIN_OBJECT = 16
#: Compactness is measured on at most this many of a colour's bright parts (see :func:`_solidity`): a
#: convex hull each, and a 2048 px merge's surroundings hold thousands (two colours of 2,000 nuclei:
#: 0.47 s of the 0.72 s that told its colour; 0.16 s now).
MAX_MEASURED_OBJECTS = 256


@dataclass(frozen=True)
class ColourStats:
    """What decided about one colour: its kind of image, bright area and compactness (the last two
    measured for fluorescence colours only, the candidates; 0 for the others)."""

    colour: int
    kind: str
    bright_fraction: float
    solidity: float


def _varies(channel: np.ndarray) -> bool:
    """Whether a colour holds anything (its 1st and 99.8th percentiles differ)."""
    lo, hi = np.percentile(channel, (1, 99.8))
    return bool(hi - lo > 0)


def colour_stats(channel: np.ndarray, colour: int) -> ColourStats:
    """The numbers of one colour that holds something (see :func:`_varies`)."""
    from .modality import image_modality

    a = np.asarray(channel, dtype=np.float32)
    kind = image_modality(a).kind
    if kind != "fluorescence":  # not a candidate: its objects need not be measured (0.1-0.2 s a colour)
        return ColourStats(colour, kind, 0.0, 0.0)
    bright, props = _bright_objects(a)
    return ColourStats(colour, kind, float(bright.mean()), _solidity(props))


def nuclear_colour(plane: np.ndarray) -> int | None:
    """The colour (0 red, 1 green, 2 blue) to segment in an RGB fluorescence composite, or None
    where the mean of the colours is the image (stained tissue, grey stored as RGB, a single
    pseudo-coloured channel, a grey plane). See the module docs."""
    a = np.asarray(plane)
    if not is_rgb(a.shape):
        return None
    rgb = np.asarray(sample_plane(a)[..., :3], dtype=np.float32)  # (never sparser than every 2nd pixel)
    varying = [c for c in range(3) if _varies(rgb[..., c])]
    if len(varying) > 1:  # (told first: it decides alone, and the kinds below cost 0.1 s a colour)
        corr = np.corrcoef(rgb.reshape(-1, 3)[:, varying].T)
        if np.all(corr[np.triu_indices(len(varying), 1)] > SAME_PICTURE):
            return None  # one picture in several colours (a colour map, grey as RGB): the mean is that picture
    stats = [colour_stats(rgb[..., c], c) for c in varying]
    fluorescent = [s for s in stats if s.kind == "fluorescence" and s.solidity > 0]
    if not fluorescent:
        return None  # no colour on a dark background: stained tissue, or nothing at all
    compact = [s for s in fluorescent if s.solidity >= COMPACT] or fluorescent
    return min(compact, key=lambda s: s.bright_fraction).colour


def chosen_colour(colour: Any) -> int | str | None:
    """``colour`` as a choice of what to segment of an RGB image (``colour`` of
    :func:`~napari_unet.core.predict.iter_planes` other than "auto"): "mean", :data:`WITHOUT_DAB` (any
    case) or 0, 1, 2; None for anything else (Auto, or a value that is no colour)."""
    if isinstance(colour, str):
        return {"mean": "mean", WITHOUT_DAB.lower(): WITHOUT_DAB}.get(colour.strip().lower())
    if isinstance(colour, (int, np.integer)) and not isinstance(colour, (bool, np.bool_)) and 0 <= colour < 3:
        return int(colour)
    return None


def colour_choice(colour: Any, rgb: bool = False) -> int | str:
    """``colour`` of :func:`~napari_unet.core.predict.iter_planes` checked: "auto" (None or "auto",
    any case), "mean", :data:`WITHOUT_DAB` or an int (a colour); a ValueError for anything else, and
    for an RGB image (``rgb``) an ImageError for a number that is none of its colours."""
    if colour is None or (isinstance(colour, str) and colour.strip().lower() == "auto"):
        return "auto"
    chosen = chosen_colour(colour)
    if chosen is not None:
        return chosen
    if isinstance(colour, (int, np.integer)) and not isinstance(colour, (bool, np.bool_)):
        if rgb:  # (0, 1, 2 were taken above)
            from .preprocess import ImageError

            raise ImageError(f"colour {colour} is not a colour of an RGB image: give 0 (red), 1 (green) or 2 (blue).")
        return int(colour)
    raise ValueError(f"colour must be 'auto', 'mean', {WITHOUT_DAB!r} or 0, 1, 2 (red, green, blue); got {colour!r}.")


def model_colour_note(colour: int | str, napari: bool = False) -> str:
    """What to tell the user when ``colour`` of an RGB image was segmented because the model was
    fine-tuned on it (``SegmentationModel.colour``)."""
    what = {"mean": "the mean of the colours", WITHOUT_DAB: "the image without its DAB"}.get(
        colour, f"the {COLOUR_NAMES[colour] if isinstance(colour, int) else colour} colour")
    other = ("for another, choose it under Colour in Segment" if napari else
             "for another, give --channel (command line) or colour= (Python)")
    return f"the model was fine-tuned on {what} of RGB images: {what} was segmented; {other}"


def colour_note(colour: int | str, napari: bool = False) -> str:
    """What to tell the user when ``colour`` of an RGB image was segmented on its own (or the image
    without its DAB: :data:`WITHOUT_DAB`) as the automatic choice; ``napari``: said in napari (where
    Segment's Colour chooses), else on the command line or in Python."""
    if colour == WITHOUT_DAB:
        other = ("for the mean, choose 'Mean of the colours' under Colour in Segment" if napari else
                 "for the mean, give --channel mean (command line) or colour='mean' (Python)")
        return ("the RGB image looks like immunohistochemistry with most of its stain in brown DAB, not in "
                "compact objects: its haematoxylin-stained nuclei were segmented, with the DAB taken out, not the "
                f"mean of the colours; {other}")
    other = ("for another one (or the mean), choose it under Colour in Segment" if napari else
             "for another one, give --channel 0|1|2 (command line) or colour=0|1|2|'mean' (Python)")
    return (f"the RGB image looks like merged fluorescence channels: its {COLOUR_NAMES[colour]} channel "
            f"(the most nuclei-like: compact bright objects) was segmented, not the mean of the colours; {other}")


# ------------------------------------------------------------------ stained tissue: DAB left out
#: The value of ``colour`` (:func:`~napari_unet.core.predict.iter_planes`) that segments a bright-field
#: RGB plane without its brown DAB stain (:func:`without_dab`).
WITHOUT_DAB = "without DAB"
#: Immunohistochemistry shows a protein in brown DAB (3,3'-diaminobenzidine) wherever the protein is
#: (membranes, cytoplasm), beside a blue haematoxylin counterstain of the nuclei. In the mean of the
#: colours the brown is as dark as the nuclei: the nuclei models outlined the stained cells and missed
#: the blue nuclei (scikit-image's IHC section of colonic glands, FHL2 in DAB). Where DAB holds more
#: than this share of the optical density of the most stained 30% of the pixels, and does not lie in
#: compact objects (a nuclear protein in DAB: the nuclei themselves, kept), the plane is segmented
#: without it. DSB2018's 91 H&E-like colour images: at most 0.30 (median 0.03); the IHC section 0.82.
DAB_SHARE = 0.5
#: The most stained pixels (this top fraction of the optical density) that measure the stains' shares.
STAINED_FRACTION = 0.3
#: Pixels whose optical density summed over the three colours reaches this let almost no light through
#: (under 1% in each colour): a mosaic's black fill, a scale bar, not stain (the IHC section's most
#: stained pixels reach 3.8). An unfilled black square of 2.4% of that section made its DAB look a
#: minority of the stain.
BLACK_DENSITY = 4.0
#: Colour deconvolution is for white light: the background's dimmest colour at least this fraction of
#: its brightest (IHC fields without glass: 0.73 or more), else no stained tissue (a fluorescence image
#: shown in a yellow colour map, taken for a colour image: 0.0; AP@0.5 0.864 -> 0.019 without "DAB").
NEUTRAL_WHITE = 0.5
#: A bright part larger than this fraction of the plane is no nucleus (cytoplasmic DAB filling a
#: zoomed-in field is one convex sheet, solidity 0.85-0.89): it counts as not compact.
NUCLEUS_MAX_FRACTION = 0.05
#: Transmission below this (of the background's) counts as this: a black pixel has no finite density.
MIN_TRANSMISSION = 1e-3
#: Rows of a plane turned into stains at a time (the float32 copies of a slide stay small).
_STAIN_ROWS = 1024


def _white(rgb: np.ndarray) -> np.ndarray:
    """The background's (the light's) level of each colour of a bright-field RGB plane: the 99.5th
    percentile of a sample of it (the glass between the tissue, whatever the dtype's range)."""
    sample = np.asarray(sample_plane(rgb)[..., :3], dtype=np.float32).reshape(-1, 3)
    white = np.percentile(sample, 99.5, axis=0).astype(np.float32)
    return np.maximum(white, np.finfo(np.float32).tiny)


def _densities(rgb: np.ndarray, white: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 optical densities of the colours of ``rgb`` (H, W, 3) against ``white``."""
    return -np.log(np.clip(np.asarray(rgb)[..., :3].astype(np.float32) / white, MIN_TRANSMISSION, 1.0))


def _stains(density: np.ndarray) -> np.ndarray:
    """Colours' optical densities (:func:`_densities`) -> haematoxylin, eosin and DAB's (Ruifrok and
    Johnston's colour deconvolution, scikit-image's ``hed_from_rgb``), negatives as 0."""
    from skimage.color import hed_from_rgb

    return np.maximum(density @ hed_from_rgb.astype(np.float32), 0.0)


def stain_densities(rgb: np.ndarray, white: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float32 optical densities of haematoxylin, eosin and DAB of a bright-field RGB plane
    (:func:`_stains`; ``white``: the background's level, default measured on ``rgb``)."""
    return _stains(_densities(rgb, _white(rgb) if white is None else white))


def _stained_sample(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of ``rgb``'s sample (:func:`~napari_unet.core.modality.sample_plane`): its stains, where light
    came through (not :data:`BLACK_DENSITY`) and the background's level of each colour."""
    sample = sample_plane(np.asarray(rgb))[..., :3]
    white = _white(sample)
    density = _densities(sample, white)
    return _stains(density), density.sum(-1) < BLACK_DENSITY, white


def dab_share(rgb: np.ndarray) -> float:
    """DAB's share of the stains' optical density in the most stained pixels of ``rgb`` (0 to 1;
    black pixels, which let no light through, left out)."""
    stains, lit, _white_level = _stained_sample(rgb)
    return _dab_share(stains, lit)


def _dab_share(stains: np.ndarray, lit: np.ndarray) -> float:
    total = stains.sum(-1)
    if not lit.any():
        return 0.0
    stained = lit & (total >= np.quantile(total[lit], 1.0 - STAINED_FRACTION))
    sums = stains[stained].sum(0)
    return float(sums[2] / sums.sum()) if sums.sum() > 0 else 0.0


def _bright_objects(a: np.ndarray) -> tuple[np.ndarray, list]:
    """The bright part of ``a`` (Otsu's threshold of it smoothed over 1 px) and its parts of at least
    :data:`MIN_OBJECT` pixels (scikit-image region properties)."""
    from scipy.ndimage import gaussian_filter
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    smooth = gaussian_filter(a, 1)
    bright = smooth > threshold_otsu(smooth)
    return bright, [p for p in regionprops(label(bright)) if p.area >= MIN_OBJECT]


def _solidity(props: list, largest: float = math.inf) -> float:
    """The area-weighted mean solidity of the parts ``props`` (0 for none; a part larger than ``largest``
    pixels counts as 0), measured on at most :data:`MAX_MEASURED_OBJECTS` of them: the largest half of
    that number, and of the others every n-th by size, each standing for n."""
    if not props:
        return 0.0
    ranked = sorted(props, key=lambda p: p.area, reverse=True)
    head = MAX_MEASURED_OBJECTS // 2
    n = max(1, -(-(len(ranked) - head) // (MAX_MEASURED_OBJECTS - head)))
    sample = [(p, 1.0) for p in ranked[:head]] + [(p, float(n)) for p in ranked[head::n]]
    weights = [w * p.area for p, w in sample]
    return float(np.average([p.solidity if p.area <= largest else 0.0 for p, _w in sample], weights=weights))


def _compact(channel: np.ndarray) -> bool:
    """Whether the bright parts of ``channel`` are compact objects (area-weighted solidity at least
    :data:`COMPACT`; a part larger than :data:`NUCLEUS_MAX_FRACTION` of the plane counts as 0)."""
    if np.ptp(channel) <= 0:
        return False
    _bright, props = _bright_objects(channel)
    return bool(props) and _solidity(props, NUCLEUS_MAX_FRACTION * channel.size) >= COMPACT


def leaves_out_dab(plane: np.ndarray) -> bool:
    """Whether an RGB ``plane`` is a bright-field immunohistochemistry image to segment without its DAB:
    a colour (stained-tissue) image in white light (:data:`NEUTRAL_WHITE`) whose stain is mostly DAB
    (:data:`DAB_SHARE`), not in compact objects. Not fluorescence merges (:func:`nuclear_colour` takes
    those) nor grey or pseudo-colour."""
    from .modality import image_modality

    a = np.asarray(plane)
    if not is_rgb(a.shape):
        return False
    stains, lit, white = _stained_sample(a)
    if float(white.min() / white.max()) < NEUTRAL_WHITE or _dab_share(stains, lit) <= DAB_SHARE:
        return False  # (the quickest tests first)
    if image_modality(sample_plane(a)).kind != "colour":  # (the sample is what image_modality looks at)
        return False
    return not _compact(stains[..., 2])


def without_dab(plane: np.ndarray) -> np.ndarray:
    """An RGB bright-field plane as it would look without its DAB stain: (H, W, 3) float32 on the
    plane's own scale (its background as bright as before), haematoxylin and eosin as they are."""
    from skimage.color import rgb_from_hed

    a = np.asarray(plane)[..., :3]
    white = _white(a)
    out = np.empty(a.shape, np.float32)
    to_rgb = rgb_from_hed.astype(np.float32)
    for start in range(0, a.shape[0], _STAIN_ROWS):
        rows = slice(start, start + _STAIN_ROWS)
        stains = stain_densities(a[rows], white)
        stains[..., 2] = 0.0
        out[rows] = np.exp(-(stains @ to_rgb)) * white
    return out


def colour_to_segment(plane: np.ndarray) -> int | str | None:
    """What a 1-channel model segments of an RGB ``plane``: a colour of a fluorescence merge
    (:func:`nuclear_colour`), the plane without its DAB (:data:`WITHOUT_DAB`, :func:`leaves_out_dab`),
    or None: the mean of the colours."""
    colour = nuclear_colour(plane)
    if colour is None and leaves_out_dab(plane):
        return WITHOUT_DAB
    return colour


def colour_plane(plane: np.ndarray, colour: int | str) -> np.ndarray:
    """``plane`` (H, W, 3|4) as a 1-channel model segments it for ``colour``: that colour (an int), or
    the plane without its DAB (:data:`WITHOUT_DAB`)."""
    if colour == WITHOUT_DAB:
        return without_dab(plane)
    return plane[..., colour]
