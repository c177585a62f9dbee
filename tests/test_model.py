"""The U-Net: the paper's exact network, the variants, their geometry and errors."""

from __future__ import annotations

import pytest
import torch

from napari_unet.core.model import UNet, UNetConfig, count_parameters, unet_output_size, valid_input_size


def test_paper_network_shapes_and_parameter_count():
    net = UNet.paper()
    assert count_parameters(net) == 31_030_658
    assert net.config == UNetConfig(1, 2, 64, 5, "valid", None)
    assert net.output_size(572) == 388
    assert net.margin == 92
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_paper_network_layers_follow_the_paper():
    net = UNet.paper()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    three = [c for c in convs if c.kernel_size == (3, 3)]
    assert len(three) == 18 and all(c.padding == (0, 0) for c in three)
    assert [c.out_channels for c in three[:10:2]] == [64, 128, 256, 512, 1024]
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 4 and all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert net.head.kernel_size == (1, 1) and net.head.out_channels == 2
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in net.modules())


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("norm", [None, "batch", "group"])
def test_same_padding_keeps_size_for_multiples_of_2_pow_depth(depth, norm):
    net = UNet(in_channels=2, n_classes=3, base_width=8, depth=depth, padding="same", norm=norm).eval()
    size = 2**depth * 3
    with torch.no_grad():
        out = net(torch.rand(2, 2, size, size + 2**depth))
    assert out.shape == (2, 3, size, size + 2**depth)


def test_same_padding_rejects_other_sizes_with_a_hint():
    net = UNet(base_width=4, depth=4, padding="same")
    with pytest.raises(ValueError, match=r"multiple of 8.*nearest valid sizes: 96 or 104"):
        net(torch.zeros(1, 1, 100, 96))


def test_valid_sizes_helpers_agree_with_the_network():
    net = UNet(base_width=4, depth=3, padding="valid").eval()
    size = net.valid_input_size(50)
    assert size >= 50
    with torch.no_grad():
        out = net(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == net.output_size(size) == size - 2 * net.margin
    assert valid_input_size(570, 5) == 572 and unet_output_size(572, 5) == 388
    with pytest.raises(ValueError, match="nearest valid sizes"):
        unet_output_size(570, 5)


def test_the_smallest_valid_input_leaves_an_output():
    """The paper's network took 140 px as its smallest input and 'gave' -44 px out: a patch size
    of 128 then trained on nothing (every patch's targets empty). Its smallest input is 188 (4 out)."""
    from napari_unet.core.patches import PatchGeometry

    assert valid_input_size(1, 5) == 188 and unet_output_size(188, 5) == 4
    with pytest.raises(ValueError, match="leaves an output.*nearest valid sizes: 188"):
        unet_output_size(140, 5)
    geometry = PatchGeometry.for_network(UNet.paper(), 128, largest=1000)
    assert geometry.in_size == 188 and geometry.out_size == 4
    small = UNet(base_width=4, depth=3, padding="valid").eval()
    size = small.valid_input_size(1)
    with torch.no_grad():
        assert small(torch.zeros(1, 1, size, size)).shape[-1] == small.output_size(size) > 0


def test_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, base_width=4, depth=3, padding="same", norm="batch")
    x = torch.rand(2, 1, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(net(x), target)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_paper_network_backward_on_cpu():
    net = UNet.paper()
    x = torch.rand(1, 1, 188, 188)  # smallest useful valid size: output 4x4
    out = net(x)
    assert out.shape == (1, 2, 4, 4)
    out.sum().backward()
    for layer in (net.down[0][0], net.head):  # the gradient reaches both ends, finite
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 1}, "depth must be at least 2"),
        ({"n_classes": 1}, "n_classes must be at least 2"),
        ({"base_width": 0}, "base_width must be a positive integer"),
        ({"padding": "reflect"}, "padding must be 'valid' or 'same'"),
        ({"norm": "layer"}, "norm must be None"),
        ({"norm": "group", "base_width": 12}, "multiple of 8"),
    ],
)
def test_invalid_configurations_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_wrong_input_channels_and_rank_are_clear_errors():
    net = UNet(in_channels=3, base_width=4, depth=2, padding="same")
    with pytest.raises(ValueError, match="takes 3 input channel"):
        net(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="4D tensor"):
        net(torch.zeros(3, 16, 16))


def test_config_round_trip():
    net = UNet(in_channels=3, n_classes=3, base_width=8, depth=3, padding="same", norm="group")
    again = UNet.from_config(net.config.to_dict())
    assert again.config == net.config
    assert count_parameters(again) == count_parameters(net)
