"""The speed work of the network: one memory layout, the layout-keeping instance norm, the fast
depthwise backward, and mixed precision that keeps what needs fp32 in fp32.

Tolerances are stated where they are used; speed itself is measured by the benchmarks, never
here.
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model_config
from torch import nn
from torch.profiler import ProfilerActivity, profile

from dkuxnet.config import ModelConfig
from dkuxnet.model import build_model
from dkuxnet.model.blocks import (
    ChannelsLastInstanceNorm,
    _DepthwiseConvFunction,
    depthwise_conv,
    guard_bf16_convolutions,
)
from dkuxnet.model.kmax_decoder import KMaXLayer
from dkuxnet.model.network import DualKMaXUXNet

CL = torch.channels_last_3d


def test_depthwise_backward_matches_autograd_in_double() -> None:
    torch.manual_seed(0)
    for dims, shape in ((3, (2, 3, 5, 6, 7)), (2, (2, 3, 6, 7))):
        conv = depthwise_conv(dims, 3, 3).double()
        x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b: _DepthwiseConvFunction.apply(x, w, b, 1),
            (x, conv.weight, conv.bias),
        )


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_depthwise_conv_equals_the_stock_convolution(kernel: int) -> None:
    torch.manual_seed(kernel)
    conv = depthwise_conv(3, 4, kernel).to(memory_format=CL)
    x = torch.randn(2, 4, 6, 9, 8).contiguous(memory_format=CL).requires_grad_(True)
    g = torch.randn(2, 4, 6, 9, 8)
    ours = conv(x)
    gx, gw, gb = torch.autograd.grad(ours, (x, conv.weight, conv.bias), g)
    ref = F.conv3d(x, conv.weight, conv.bias, padding=kernel // 2, groups=4)
    rx, rw, rb = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    # fp32, different summation order: agreement to 1e-5 relative
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in ((gx, rx), (gw, rw), (gb, rb)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # its state dict is that of nn.Conv3d (checkpoints of the stock layer still load)
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_depthwise_conv_rejects_even_kernels() -> None:
    with pytest.raises(ValueError, match="odd kernel"):
        depthwise_conv(3, 4, 4)


@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_instance_norm_equals_instance_norm_and_keeps_the_layout(
    batch: int,
) -> None:
    torch.manual_seed(batch)
    x = torch.randn(batch, 5, 6, 7, 8).contiguous(memory_format=CL) * 3 + 1
    ours = ChannelsLastInstanceNorm(5)(x)
    ref = nn.InstanceNorm3d(5)(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous(memory_format=CL)


def test_instance_norms_are_replaced_and_keep_state_dict_keys() -> None:
    net = build_model(tiny_model_config())
    kinds = {type(m).__name__ for m in net.modules()}
    assert "InstanceNorm3d" not in kinds and "ChannelsLastInstanceNorm" in kinds
    # the public design's keys: instance norms had no parameters, and neither do ours
    assert not any("norm" in k and "cnn_decoder" in k for k in net.state_dict())


def _large_copies(fn: collections.abc.Callable[[], object], min_voxels: int) -> list[tuple]:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out = []
    for e in prof.events():
        shapes = e.input_shapes
        if e.name == "aten::copy_" and shapes and len(shapes[0]) == 5:
            n = 1
            for s in shapes[0][2:]:
                n *= s
            if n >= min_voxels:
                out.append(tuple(shapes[0]))
    return out


def test_forward_makes_no_layout_copies() -> None:
    """The input is laid out once; no block converts full- or half-resolution tensors."""
    torch.manual_seed(0)
    net = build_model(tiny_model_config()).eval()
    x = torch.randn(2, 1, 32, 32, 32)  # contiguous, as a user passes it
    with torch.no_grad():
        net(x)  # warm-up
        copies = _large_copies(lambda: net(x), min_voxels=16 * 16 * 16)
    # one copy at the top of forward (the input into channels-last), none after
    assert len(copies) <= 1, copies


def test_weights_and_activations_are_channels_last() -> None:
    net = build_model(tiny_model_config())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(m.weight.is_contiguous(memory_format=CL) for m in convs)
    out = net(torch.randn(2, 1, 32, 32, 32))
    assert out.seg_cnn.is_contiguous(memory_format=CL)


def _autocast(dtype: torch.dtype) -> torch.autocast:
    return torch.autocast("cpu", dtype=dtype)


def test_bf16_outputs_agree_with_fp32_and_fp32_islands_stay_fp32() -> None:
    torch.manual_seed(0)
    net = build_model(tiny_model_config()).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with _autocast(torch.bfloat16):
            low = net(x)
    # what the issue found in half precision: class maps and groups must come out fp32
    for name in ("seg_kmax", "groups", "query_logits"):
        assert getattr(low, name).dtype == torch.float32, name
    # Tolerance: bf16 keeps ~3 significant digits through ~20 layers. The class
    # probabilities of a random network agree to 0.05 everywhere and 0.01 on average; the
    # group distribution, sharpened by the mask temperature (x10), to 0.2 at its worst voxel
    # and 0.02 on average (measured: 0.11 and 0.011).
    diff = (low.probabilities() - ref.probabilities()).abs()
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 0.01, (diff.max(), diff.mean())
    gdiff = (low.groups - ref.groups).abs()
    assert float(gdiff.max()) < 0.2 and float(gdiff.mean()) < 0.02, (gdiff.max(), gdiff.mean())


def test_cluster_update_is_normalised_in_fp32_and_does_not_overflow_in_fp16() -> None:
    """A sum over ~70k voxels of unit values passes fp16's largest finite value (65504)."""
    torch.manual_seed(0)
    layer = KMaXLayer(pixel_dim=4, query_dim=8, embed_dim=4, num_classes=2, num_heads=2, ffn_dim=8)
    with torch.no_grad():
        layer.pixel_value.weight.zero_()
        layer.pixel_value.bias.fill_(1.0)  # every pixel value is 1
        layer.predictor.kernel[1].weight.zero_()  # every mask equal: all voxels to centre 0
    centers = torch.randn(1, 3, 8)
    pixels = torch.randn(1, 4, 70_000)
    with _autocast(torch.float16):
        new_centers, masks, _ = layer(centers, pixels)
    assert new_centers.dtype == torch.float32
    assert torch.isfinite(new_centers).all()


def test_guarded_convolutions_give_finite_bf16_gradients_on_poisoned_memory() -> None:
    """torch 2.13's CPU bf16 weight gradient of a padded conv with an output side of 2 read
    uninitialised memory (5-29 of 30 trials non-finite after filling freed memory with NaN);
    the guard runs such layers in fp32."""
    torch.manual_seed(0)
    for _ in range(15):
        conv = guard_bf16_convolutions(nn.Conv3d(16, 16, 3, padding=1)).to(memory_format=CL)
        x = torch.randn(4, 16, 2, 4, 4).contiguous(memory_format=CL).requires_grad_(True)
        for n in (1_000, 20_000, 100_000):
            poison = torch.full((n,), float("nan"))
            del poison
        with _autocast(torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.float32  # ran in fp32
        y.backward(torch.randn_like(y))
        assert torch.isfinite(conv.weight.grad).all()


def test_guard_leaves_large_outputs_in_bf16() -> None:
    conv = guard_bf16_convolutions(nn.Conv3d(4, 4, 3, padding=1))
    with _autocast(torch.bfloat16):
        y = conv(torch.randn(1, 4, 8, 8, 8))
    assert y.dtype == torch.bfloat16
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_lite_preset_full_resolution_stage_is_narrow() -> None:
    lite = ModelConfig.preset("lite")
    assert lite.full_res_channels == 8 and lite.refine_block is False
    paper = ModelConfig.preset("paper")
    assert paper.full_res_channels == 0 and paper.refine_block is True  # the public design
    net = DualKMaXUXNet(tiny_model_config(full_res_channels=4, refine_block=False))
    assert net.cnn_decoder.feature_channels[-1] == 4
    assert isinstance(net.cnn_decoder.refine, nn.Identity)


@pytest.mark.parametrize(
    ("batch", "channels", "size"), [(1, 8, (8, 12, 10)), (1, 3, (5, 4, 6)), (2, 8, (8, 12, 10))]
)
def test_guarded_convolution_equals_the_stock_one_in_value_and_gradient(
    batch: int, channels: int, size: tuple[int, int, int]
) -> None:
    """The single-sample oneDNN route (and the batched stock one) compute the same function."""
    torch.manual_seed(0)
    stock = nn.Conv3d(channels, 5, 3, padding=1, stride=(1, 2, 1))
    guarded = guard_bf16_convolutions(nn.Sequential(nn.Conv3d(channels, 5, 3, padding=1)))[0]
    guarded.stride = stock.stride
    guarded.load_state_dict(stock.state_dict())
    x = torch.randn(batch, channels, *size, requires_grad=True)
    y_stock, y_guarded = stock(x), guarded(x)
    torch.testing.assert_close(y_guarded, y_stock, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y_stock)
    grads_stock = torch.autograd.grad(y_stock, (x, stock.weight, stock.bias), g)
    grads_guarded = torch.autograd.grad(y_guarded, (x, guarded.weight, guarded.bias), g)
    for a, b in zip(grads_guarded, grads_stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_single_sample_fp32_cpu_convolutions_go_to_onednn() -> None:
    """PyTorch's own rule would run these on its slow native kernel (B*C*D*H <= 20480)."""
    from dkuxnet.model.blocks import _use_onednn_for_single_sample

    conv = guard_bf16_convolutions(nn.Sequential(nn.Conv3d(8, 8, 3, padding=1)))[0]
    one, two = torch.zeros(1, 8, 32, 64, 80), torch.zeros(2, 8, 32, 64, 80)
    assert _use_onednn_for_single_sample(one, conv) is torch.backends.mkldnn.is_available()
    assert not _use_onednn_for_single_sample(two, conv)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not _use_onednn_for_single_sample(one, conv)
        assert conv(one).shape == (1, 8, 32, 64, 80)
