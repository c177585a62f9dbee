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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class ColourStats:
    """What decided about one colour: its kind of image, bright area and compactness (the last two
    measured for fluorescence colours only, the candidates; 0 for the others)."""

    colour: int
    kind: str
    bright_fraction: float
    solidity: float


def colour_stats(channel: np.ndarray, colour: int) -> ColourStats | None:
    """The numbers of one colour (None when it is flat: nothing in that colour)."""
    from scipy.ndimage import gaussian_filter
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    from .modality import image_modality

    a = np.asarray(channel, dtype=np.float32)
    lo, hi = np.percentile(a, (1, 99.8))
    if hi - lo <= 0:
        return None
    kind = image_modality(a).kind
    if kind != "fluorescence":  # not a candidate: its objects need not be measured (0.1-0.2 s a colour)
        return ColourStats(colour, kind, 0.0, 0.0)
    smooth = gaussian_filter(a, 1)
    bright = smooth > threshold_otsu(smooth)
    props = [p for p in regionprops(label(bright)) if p.area >= MIN_OBJECT]
    solidity = float(np.average([p.solidity for p in props], weights=[p.area for p in props])) if props else 0.0
    return ColourStats(colour, kind, float(bright.mean()), solidity)


def nuclear_colour(plane: np.ndarray) -> int | None:
    """The colour (0 red, 1 green, 2 blue) to segment in an RGB fluorescence composite, or None
    where the mean of the colours is the image (stained tissue, grey stored as RGB, a single
    pseudo-coloured channel, a grey plane). See the module docs."""
    a = np.asarray(plane)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        return None
    rgb = np.asarray(sample_plane(a)[..., :3], dtype=np.float32)  # (never sparser than every 2nd pixel)
    stats = [s for c in range(3) if (s := colour_stats(rgb[..., c], c)) is not None]
    fluorescent = [s for s in stats if s.kind == "fluorescence" and s.solidity > 0]
    if not fluorescent:
        return None  # no colour on a dark background: stained tissue, or nothing at all
    if len(stats) > 1:
        flat = rgb.reshape(-1, 3)[:, [s.colour for s in stats]]
        corr = np.corrcoef(flat.T)
        if np.all(corr[np.triu_indices(len(stats), 1)] > SAME_PICTURE):
            return None  # one picture in several colours (a colour map): the mean is that picture
    compact = [s for s in fluorescent if s.solidity >= COMPACT] or fluorescent
    return min(compact, key=lambda s: s.bright_fraction).colour


def colour_note(colour: int) -> str:
    """What to tell the user when ``colour`` of an RGB image was segmented on its own."""
    return (f"the RGB image looks like merged fluorescence channels: its {COLOUR_NAMES[colour]} channel "
            "(the most nuclei-like: compact bright objects) was segmented, not the mean of the colours; "
            "for another one, split the RGB layer into its channels (napari: right-click it, Split RGB), "
            "or give --channel 0|1|2 (command line) or colour=0|1|2|'mean' (Python)")
