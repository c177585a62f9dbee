"""Overlap-tile geometry (Ronneberger et al. 2015, Fig. 2) for images of any size.

Both kinds of U-Net are tiled with the same scheme, per axis:

* the image is extended by mirroring by ``pad_before`` pixels at the start (and as much
  as needed at the end);
* tile ``i`` takes the input window ``[i * step, i * step + tile)`` of the padded image;
* of the tile's output, the window ``[crop, crop + step)`` is kept: it covers image pixels
  ``[i * step, (i + 1) * step)``. The kept windows touch without overlapping: no seams.

"valid" networks (the paper's): ``pad_before`` is the network's margin, ``tile`` a valid
input size, ``crop`` = 0. Every output pixel has its whole context, so the result is the
same as one pass over the whole (mirror-padded) image.

"same" networks: ``pad_before`` = ``crop`` = ``halo``, a multiple of the network's
divisor that is at least its receptive radius, so the zero padding at a tile's border
cannot reach the kept window. Results equal a whole-image pass over the same mirror
padding to float rounding.

In both cases ``step`` is a multiple of the divisor ``2**(depth-1)``, so every tile sees
the same max-pooling grid as the whole image would.

Exactness needs a network whose operations are local: no normalisation or batch norm in
eval mode. Group and instance normalisation average over the whole input, so their tiles
differ (slightly) from a whole-image pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .model import UNet

#: Smallest tile side chosen or accepted (pixels): below it the per-tile overhead dominates.
MIN_TILE = 128


def receptive_radius(net: UNet) -> int:
    """Pixels of context on each side that one output pixel of ``net`` can depend on.

    A conservative bound for a U-Net with 3x3 convolutions, 2x2 pooling and 2x2
    transposed convolutions (pooling and up-sampling each counted as one pixel of their
    level on both sides).
    """
    depth = net.config.depth
    radius = 0
    for level in range(depth):  # contracting path, bottleneck included
        radius += 2 * 2**level  # two 3x3 convolutions
        if level < depth - 1:
            radius += 2**level  # 2x2 max pooling
    for level in range(depth - 1):  # expanding path
        radius += 2**level  # 2x2 transposed convolution
        radius += 2 * 2**level  # two 3x3 convolutions
    return radius


def default_halo(net: UNet) -> int:
    """Smallest multiple of ``net.divisor`` >= the receptive radius (0 for "valid" nets)."""
    if net.config.padding == "valid":
        return 0
    div = net.divisor
    own = getattr(net, "halo", None)  # networks of BioImage.IO packages say theirs
    radius = int(own) if own is not None else receptive_radius(net)
    return int(math.ceil(radius / div) * div)


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one image axis (see the module docstring).

    Attributes
    ----------
    length : int
        Image pixels along the axis.
    tile : int
        Network input size along the axis.
    step : int
        Distance between tile origins = kept output pixels per tile.
    pad_before, pad_after : int
        Mirror padding at the start and end of the axis.
    crop : int
        Offset of the kept window in the tile's output.
    n_tiles : int
        Number of tiles.
    """

    length: int
    tile: int
    step: int
    pad_before: int
    pad_after: int
    crop: int
    n_tiles: int


@dataclass(frozen=True)
class TilePlan:
    """Tiling of a 2D plane: one :class:`AxisPlan` per axis (y, x)."""

    y: AxisPlan
    x: AxisPlan

    @property
    def n_tiles(self) -> int:
        return self.y.n_tiles * self.x.n_tiles

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.y.tile, self.x.tile

    def origins(self) -> list[tuple[int, int]]:
        """Tile origins (padded coordinates), row by row."""
        return [
            (i * self.y.step, j * self.x.step)
            for i in range(self.y.n_tiles)
            for j in range(self.x.n_tiles)
        ]

    def pad_width(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (self.y.pad_before, self.y.pad_after), (self.x.pad_before, self.x.pad_after)

    def placements(self) -> list[tuple[tuple[int, int], tuple[slice, slice], tuple[slice, slice]]]:
        """Where each tile's output goes, row by row: its origin (padded coordinates), the
        window of the plane its kept output covers, and that window's place in the output."""
        out = []
        for y, x in self.origins():
            y0, x0 = y // self.y.step * self.y.step, x // self.x.step * self.x.step
            hy, hx = min(self.y.step, self.y.length - y0), min(self.x.step, self.x.length - x0)
            out.append(((y, x), (slice(y0, y0 + hy), slice(x0, x0 + hx)),
                        (slice(self.y.crop, self.y.crop + hy), slice(self.x.crop, self.x.crop + hx))))
        return out


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_axis(length: int, net: UNet, max_tile: int, halo: int | None = None) -> AxisPlan:
    """Balanced tiling of one axis of ``length`` pixels with tiles of at most ``max_tile``.

    Uses the fewest tiles that fit ``max_tile`` and then the smallest tile that covers
    the axis with that many tiles (so a 1000-pixel axis is not tiled as 512 + 512 + 512).

    Parameters
    ----------
    length : int
        Pixels along the axis (>= 1).
    net : UNet
        The network (its padding, depth and margin decide the geometry).
    max_tile : int
        Largest network input along this axis; raised to the smallest workable size.
    halo : int, optional
        "same" networks only: context kept around each tile, rounded up to a multiple
        of the divisor. Default: :func:`default_halo` (exact results).
    """
    if length < 1:
        raise ValueError(f"Cannot tile an axis of {length} pixels.")
    div = net.divisor
    if net.config.padding == "same":
        halo = default_halo(net) if halo is None else _ceil_to(max(0, int(halo)), div)
        max_step = max(div, (int(max_tile) - 2 * halo) // div * div)
        n = math.ceil(length / max_step)
        step = _ceil_to(math.ceil(length / n), div)
        tile = step + 2 * halo
        pad_before, crop = halo, halo
    else:
        margin = net.margin
        # tile = valid input size; output = tile - 2 * margin; keep a multiple of div.
        smallest = net.valid_input_size(2 * margin + div)
        tile_max = max(smallest, int(max_tile))
        # largest valid input <= tile_max
        tile_max = _largest_valid(net, tile_max)
        max_step = (net.output_size(tile_max) // div) * div
        n = math.ceil(length / max_step)
        want_step = _ceil_to(math.ceil(length / n), div)
        tile = net.valid_input_size(want_step + 2 * margin)
        step = (net.output_size(tile) // div) * div
        if step * n < length:  # cannot happen, kept as a guard
            n = math.ceil(length / step)
        pad_before, crop = margin, 0
    pad_after = (n - 1) * step + tile - pad_before - length
    return AxisPlan(length, tile, step, pad_before, pad_after, crop, n)


def _largest_valid(net: UNet, limit: int) -> int:
    size = net.valid_input_size(1)
    best = size
    while True:
        nxt = net.valid_input_size(size + 1)
        if nxt > limit:
            return best
        best = size = nxt


def plan_tiles(shape: tuple[int, int], net: UNet, max_tile: int | tuple[int, int], halo: int | None = None) -> TilePlan:
    """Tiling of a (H, W) plane; see :func:`plan_axis`."""
    if isinstance(max_tile, int):
        max_tile = (max_tile, max_tile)
    return TilePlan(
        plan_axis(int(shape[0]), net, int(max_tile[0]), halo),
        plan_axis(int(shape[1]), net, int(max_tile[1]), halo),
    )


def mirror_pad(chw: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Extend a (C, H, W) array by mirroring (no repeated edge pixel) to the plan's padded size.

    Axes of one pixel, which cannot be mirrored, are extended by repeating the pixel.
    """
    return mirror_pad_by(chw, *plan.pad_width())


def mirror_pad_by(chw: np.ndarray, y_pad: tuple[int, int], x_pad: tuple[int, int]) -> np.ndarray:
    """Extend a (C, H, W) array by mirroring, as :func:`mirror_pad`, by (before, after) pixels per axis."""
    (yb, ya), (xb, xa) = y_pad, x_pad
    mode_y = "reflect" if chw.shape[1] > 1 else "edge"
    mode_x = "reflect" if chw.shape[2] > 1 else "edge"
    if mode_y == mode_x:
        return np.pad(chw, ((0, 0), (yb, ya), (xb, xa)), mode=mode_y)
    out = np.pad(chw, ((0, 0), (yb, ya), (0, 0)), mode=mode_y)
    return np.pad(out, ((0, 0), (0, 0), (xb, xa)), mode=mode_x)


def estimate_bytes_per_pixel(net: UNet, bytes_per_value: int = 4) -> int:
    """Rough peak activation memory per input pixel of a forward pass without gradients."""
    w = net.config.base_width
    # skip tensors kept (~2w per pixel over all levels) + the working set of the widest
    # level-0 block (concatenation, two convolutions, up-sampled input): about 8w.
    values = 10 * w + 2 * net.config.in_channels + 2 * net.config.n_classes
    return int(values * bytes_per_value)


def choose_tile_and_batch(
    net: UNet, memory_bytes: int, bytes_per_value: int = 4, max_tile: int = 2048, min_tile: int = MIN_TILE
) -> tuple[int, int]:
    """Largest tile side (and tiles per batch) whose activations fit ``memory_bytes``.

    Returns
    -------
    tile : int
        Network input side in pixels (before :func:`plan_axis` balances it).
    batch : int
        Tiles per forward pass (>= 1).
    """
    per_pixel = estimate_bytes_per_pixel(net, bytes_per_value)
    pixels = max(1, memory_bytes // per_pixel)
    side = int(math.sqrt(pixels))
    div = net.divisor
    side = max(min_tile, min(max_tile, side // div * div))
    batch = max(1, int(pixels // (side * side)))
    return side, min(batch, 16)


def tile_context(net: UNet) -> int:
    """The pixels each tile re-reads on a side: the halo of "same" networks, the margin of "valid" ones."""
    return default_halo(net) if net.config.padding == "same" else net.margin


def min_tile_size(net: UNet) -> int:
    """Smallest tile side worth asking for with ``net``.

    At least :data:`MIN_TILE`, and at least three times the context each tile re-reads on a
    side (the halo of "same" networks, the margin of "valid" ones), so that each tile adds
    at least as many new pixels as that context: smaller tiles multiply the tiles of a plane
    (a 1024 x 1024 plane in 8-pixel steps is 16,384 tiles) for the same result.
    """
    return int(net.valid_input_size(max(MIN_TILE, 3 * tile_context(net))))
