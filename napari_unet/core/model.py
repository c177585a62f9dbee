"""The U-Net of Ronneberger et al. (2015), configurable.

``UNet.paper()`` is exactly the network of the paper: 1 input channel, 2 classes,
five levels of 64 to 1024 channels, two unpadded 3x3 convolutions + ReLU per level,
2x2 max-pooling, 2x2 transposed convolutions, copy-and-crop skip connections and a
1x1 output convolution.  A (1, 1, 572, 572) input gives a (1, 2, 388, 388) output
and the network has 31,030,658 parameters.

Faster variants change ``base_width`` (narrower), ``padding="same"`` (output the
size of the input) and ``norm`` (batch or group normalisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Padding = Literal["valid", "same"]
Norm = Literal["batch", "group", "instance"] | None

_PADDINGS = ("valid", "same")
_NORMS = (None, "batch", "group", "instance")


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet` (stored in model files).

    Attributes
    ----------
    in_channels : int
        Channels of the input image (1 for grey, 3 for RGB).
    n_classes : int
        Output channels (logits, one per class).
    base_width : int
        Channels of the first level; each level doubles it.
    depth : int
        Number of levels (resolutions), including the bottleneck. The paper uses 5.
    padding : {"valid", "same"}
        "valid": unpadded convolutions as in the paper (the output is smaller than the
        input). "same": zero-padded convolutions (output size = input size).
    norm : {None, "batch", "group", "instance"}
        Normalisation after each convolution (the paper has none).
    """

    in_channels: int = 1
    n_classes: int = 2
    base_width: int = 64
    depth: int = 5
    padding: Padding = "valid"
    norm: Norm = None

    def validate(self) -> None:
        """Raise ``ValueError`` with a message that says what to change."""
        for name in ("in_channels", "n_classes", "base_width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNet {name} must be a positive integer, got {value!r}.")
        if self.n_classes < 2:
            raise ValueError(
                f"UNet n_classes must be at least 2 (background and foreground), got {self.n_classes}."
            )
        if self.depth < 2:
            raise ValueError(f"UNet depth must be at least 2 levels, got {self.depth}.")
        if self.depth > 8:
            raise ValueError(f"UNet depth must be at most 8 levels, got {self.depth}.")
        if self.padding not in _PADDINGS:
            raise ValueError(f"UNet padding must be 'valid' or 'same', got {self.padding!r}.")
        if self.norm not in _NORMS:
            raise ValueError(
                f"UNet norm must be None, 'batch', 'group' or 'instance', got {self.norm!r}."
            )
        if self.norm == "group" and self.base_width % 8:
            raise ValueError(
                f"norm='group' uses 8 groups, so base_width must be a multiple of 8 (got {self.base_width})."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(8, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional normalisation and) ReLU.

    Shape: (N, in_ch, H, W) -> (N, out_ch, H - 4, W - 4) for "valid",
    (N, out_ch, H, W) for "same".
    """

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, norm: Norm) -> None:
        pad = 1 if padding == "same" else 0
        bias = norm is None
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=pad, bias=bias),
            _norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=pad, bias=bias),
            _norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
        )

    def fuse_batch_norm(self) -> None:
        """Fold each batch normalisation into the convolution before it (eval mode only).

        Same outputs to float rounding, one pass less over every feature map: used for
        inference copies (see :func:`napari_unet.core.predict.inference_net`), never on a
        network that will be trained again. Other normalisations are left as they are.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("fuse_batch_norm() needs eval mode: batch statistics are folded in.")
        for i in (0, 3):
            conv, norm = self[i], self[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                self[i] = fuse_conv_bn_eval(conv, norm)
                self[i + 1] = nn.Identity()


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two axes of ``x`` to (height, width) around the centre."""
    if x.shape[-2] == height and x.shape[-1] == width:  # "same" networks: nothing to crop
        return x  # (and no shape arithmetic in an exported ONNX graph)
    dy = (x.shape[-2] - height) // 2
    dx = (x.shape[-1] - width) // 2
    return x[..., dy : dy + height, dx : dx + width]


class Up(nn.Module):
    """2x2 transposed convolution (halving channels), copy-and-crop skip, double conv."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, norm: Norm) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Configurable U-Net; see :class:`UNetConfig` for the arguments.

    Input (N, in_channels, H, W) float; output (N, n_classes, H', W') logits with
    H' = H for "same" padding and ``output_size(H)`` for "valid".
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_width: int = 64,
        depth: int = 5,
        padding: Padding = "valid",
        norm: Norm = None,
    ) -> None:
        super().__init__()
        self.config = UNetConfig(in_channels, n_classes, base_width, depth, padding, norm)
        self.config.validate()
        widths = [base_width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down.append(DoubleConv(prev, w, padding, norm))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], padding, norm) for i in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    # ------------------------------------------------------------------ builders
    @classmethod
    def paper(cls) -> "UNet":
        """The exact network of Ronneberger et al. 2015 (31,030,658 parameters)."""
        return cls(in_channels=1, n_classes=2, base_width=64, depth=5, padding="valid", norm=None)

    @classmethod
    def from_config(cls, config: UNetConfig | dict[str, Any]) -> "UNet":
        if isinstance(config, dict):
            config = UNetConfig.from_dict(config)
        return cls(**config.to_dict())

    # ------------------------------------------------------------------ geometry
    @property
    def divisor(self) -> int:
        """Input sizes of "same" networks must be multiples of this (2**(depth-1))."""
        return 2 ** (self.config.depth - 1)

    def output_size(self, size: int) -> int:
        """Output size along one axis for an input of ``size`` pixels.

        Raises ``ValueError`` if ``size`` is not a valid input size.
        """
        return unet_output_size(size, self.config.depth, self.config.padding)

    def valid_input_size(self, min_size: int) -> int:
        """Smallest valid input size >= ``min_size`` (for "same": a multiple of ``divisor``)."""
        return valid_input_size(min_size, self.config.depth, self.config.padding)

    @property
    def margin(self) -> int:
        """Pixels lost on each side between input and output (0 for "same" networks)."""
        if self.config.padding == "same":
            return 0
        size = self.valid_input_size(1)
        return (size - self.output_size(size)) // 2

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` cannot go through the network."""
        if x.ndim != 4:
            raise ValueError(
                f"UNet expects a 4D tensor (batch, channels, height, width), got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"This network takes {self.config.in_channels} input channel(s) but the input has "
                f"{x.shape[1]}; convert the image (e.g. RGB to grey) or pick a model for "
                f"{x.shape[1]} channel(s)."
            )
        for size in x.shape[-2:]:
            self.output_size(int(size))

    # ------------------------------------------------------------------ forward
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The contracting path: the bottleneck's features and the skips, finest first."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        return x, skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, skips = self.encode(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)


class UNetProbabilities(UNet):
    """A :class:`UNet` whose output is the softmax over its classes (probabilities, not logits).

    Same arguments and state dict as :class:`UNet`. It is what exported BioImage.IO packages
    run in every weight format (see :mod:`napari_unet.core.zoo_export`): this file is
    shipped in them as the architecture, so it must import nothing but torch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)


def _shrink(padding: Padding) -> int:
    return 4 if padding == "valid" else 0


def unet_output_size(size: int, depth: int, padding: Padding = "valid") -> int:
    """Output size along one axis of a U-Net with ``depth`` levels for an input of ``size``.

    Raises ``ValueError`` with the nearest valid sizes if ``size`` does not fit.
    """
    shrink = _shrink(padding)
    s = int(size)
    ok = s > 0
    for _ in range(depth - 1):
        s -= shrink
        if s <= 0 or s % 2:
            ok = False
            break
        s //= 2
    if ok:
        s -= shrink
        ok = s >= _smallest_bottom(depth, padding)
    if not ok:
        lower = _valid_below(size, depth, padding)
        upper = valid_input_size(size, depth, padding)
        if padding == "same":
            hint = f"a multiple of {2 ** (depth - 1)}"
        else:
            hint = "a size that stays even before every pooling and leaves an output"
        near = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"Input size {size} does not fit a {padding!r} U-Net with {depth} levels: it needs {hint} "
            f"(nearest valid sizes: {near})."
        )
    for _ in range(depth - 1):
        s = 2 * s - shrink
    return s


def _smallest_bottom(depth: int, padding: Padding) -> int:
    """The smallest size at the bottom level from which the way up still leaves an output (a
    valid 5-level network needs 4: 1 left 140 px in, -44 out)."""
    shrink = _shrink(padding)
    bottom = 1
    while True:
        s = bottom
        for _ in range(depth - 1):
            s = 2 * s - shrink
        if s > 0:
            return bottom
        bottom += 1


def _bottom_to_input(bottom: int, depth: int, padding: Padding) -> int:
    shrink = _shrink(padding)
    s = bottom + shrink
    for _ in range(depth - 1):
        s = 2 * s + shrink
    return s


def valid_input_size(min_size: int, depth: int, padding: Padding = "valid") -> int:
    """Smallest input size >= ``min_size`` that a U-Net with ``depth`` levels accepts."""
    bottom = _smallest_bottom(depth, padding)
    while _bottom_to_input(bottom, depth, padding) < min_size:
        bottom += 1
    if padding == "same":
        d = 2 ** (depth - 1)
        return max(d, -(-int(min_size) // d) * d)
    return _bottom_to_input(bottom, depth, padding)


def _valid_below(size: int, depth: int, padding: Padding) -> int | None:
    if padding == "same":
        d = 2 ** (depth - 1)
        v = (int(size) // d) * d
        return v or None
    bottom = _smallest_bottom(depth, padding)
    best = None
    while (s := _bottom_to_input(bottom, depth, padding)) <= size:
        best = s
        bottom += 1
    return best


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict on the CPU, apart from the network (training goes on)."""
    from .device import module_lock

    with module_lock(model):  # (Apple's GPU: one thread at a time)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
