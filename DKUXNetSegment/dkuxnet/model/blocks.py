"""Small building blocks shared by the encoder and the kMaX decoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, DropPath
from torch import nn


def memory_format(spatial_dims: int) -> torch.memory_format:
    """The one memory layout of the whole network: channels-last (NDHWC / NHWC).

    PyTorch's CPU backward of a depthwise ``Conv3d`` on a contiguous (NCDHW) tensor falls back
    to a very slow kernel: measured on 2 CPU cores, (4, 32, 16, 32, 32) with kernel 5 took 13.2 s
    contiguous and 0.26 s channels-last (16 channels, kernel 7: 21.6 s vs 0.19 s); oneDNN and
    cuDNN convolutions are fastest channels-last too. The network's weights are laid out so once
    (:func:`dkuxnet.model.build_model`) and its input is converted once at the top of
    ``forward``; every layer then keeps the layout, so no block converts back and forth.
    """
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def layout_preserving_norms(module: nn.Module) -> nn.Module:
    """Replace every instance norm in ``module`` by :class:`ChannelsLastInstanceNorm`, in place.

    Same values, same state-dict keys (affine weights keep their names), no layout changes.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.instancenorm._InstanceNorm):
            if child.track_running_stats:
                raise ValueError(f"{name}: instance norm with running statistics is not supported")
            norm = ChannelsLastInstanceNorm(child.num_features, child.eps, child.affine)
            if child.affine:
                norm.weight, norm.bias = child.weight, child.bias
            setattr(module, name, norm)
        else:
            layout_preserving_norms(child)
    return module


class ChannelsLastInstanceNorm(nn.Module):
    """Instance norm that keeps a channels-last tensor channels-last.

    ``InstanceNorm3d`` reshapes ``(B, C, *S)`` to ``(1, B*C, *S)``, which on a channels-last
    tensor is a copy to channels-first (and another on the way back, in both passes); for one
    sample, instance norm *is* batch norm in training mode, and batch norm handles channels-last
    natively. So each sample is normalised by ``batch_norm`` on its own ``(1, C, *S)`` view:
    the same per-(sample, channel) mean and biased variance and the same eps as
    ``InstanceNorm3d`` (agreement is at float rounding), without layout changes. Measured on
    2 CPU cores for (2, 8, 80, 112, 112) forward + backward: 0.21 s, against 0.27 s for the
    equivalent ``GroupNorm`` and 0.22 s for ``InstanceNorm3d`` with its two copies.

    Args:
        num_features: C.
        eps: added to the variance.
        affine: learn a per-channel scale and shift (``weight``, ``bias`` as instance norm).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split, not indexing: the backward of split is one concatenation, where each index's
        # backward would build a zero-filled full-size gradient (in the default layout)
        samples = x.split(1) if x.shape[0] > 1 else (x,)
        parts = [
            F.batch_norm(xi, None, None, self.weight, self.bias, True, 0.0, self.eps)
            for xi in samples
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class _DepthwiseConvFunction(torch.autograd.Function):
    """A stride-1, 'same'-padded depthwise convolution with a faster CPU backward.

    PyTorch's CPU backward of a depthwise 3D convolution is ~25x slower than its forward
    (measured: (2, 16, 40, 56, 56), kernel 7: forward 0.016 s, weight gradient 0.19 s, input
    gradient 0.19 s). Both gradients are depthwise convolutions themselves: the input gradient
    is the output gradient convolved with the flipped kernel, and the weight gradient of
    channel c is the padded input of channel c correlated with the output gradient of channel c
    (the gradient used as a kernel, one sample at a time). Computed that way they took 0.016 s
    and 0.042 s on the same input, with the same values up to float rounding.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.pad = pad
        ctx.has_bias = bias is not None
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        return conv(x, weight, bias, padding=pad, groups=x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        pad = ctx.pad
        channels = x.shape[1]
        spatial = tuple(range(2, x.ndim))
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        grad = grad.contiguous(memory_format=memory_format(x.ndim - 2))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv(grad, weight.flip(spatial), padding=pad, groups=channels)
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (pad,) * (2 * len(spatial)))
            for b in range(x.shape[0]):
                # (1, C, *S + 2 pad) correlated with (C, 1, *S) -> (1, C, *kernel)
                part = conv(padded[b : b + 1], grad[b].unsqueeze(1), groups=channels)
                grad_w = part if grad_w is None else grad_w + part
            assert grad_w is not None
            grad_w = grad_w.transpose(0, 1).to(weight.dtype)  # (C, 1, *kernel)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, *spatial))
        return grad_x, grad_w, grad_b, None


class _DepthwiseConvMixin:
    """Forward of :func:`depthwise_conv`: fp32 always, the fast backward on CPU."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    padding: Any

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # cuDNN's depthwise kernels are fine, in any precision
            return self._conv_forward(x, self.weight, self.bias)  # type: ignore[attr-defined]
        # Kept in fp32 under CPU autocast: the bf16 kernel is no faster forward and twice as
        # slow backward, and the weight gradient sums over every voxel of the patch.
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConvFunction.apply(x.float(), self.weight, self.bias, self.padding[0])


class _DepthwiseConv3d(_DepthwiseConvMixin, nn.Conv3d):
    pass


class _DepthwiseConv2d(_DepthwiseConvMixin, nn.Conv2d):
    pass


def depthwise_conv(spatial_dims: int, channels: int, kernel_size: int) -> nn.Module:
    """A depthwise, stride-1, 'same' convolution (odd ``kernel_size``); a ``ConvNd`` subclass,
    so its parameters and state-dict keys are those of ``nn.Conv3d`` / ``nn.Conv2d``."""
    if kernel_size % 2 == 0:
        raise ValueError(f"depthwise_conv needs an odd kernel, got {kernel_size}")
    cls = _DepthwiseConv3d if spatial_dims == 3 else _DepthwiseConv2d
    return cls(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


def _autocast_on_cpu() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


def _use_onednn_for_single_sample(x: torch.Tensor, conv: Any) -> bool:
    """Whether an fp32 CPU convolution of one sample should go to oneDNN directly.

    PyTorch (2.13) sends a CPU fp32 convolution with a batch of 1 and a 3x3 kernel to its
    native im2col kernel unless ``B * C * D * H > 20480`` -- a rule tuned for 2D images that,
    on a 3D patch, picks the native kernel for the narrow full-resolution stage (8 channels
    of 32 x 64 x 80: ``1 * 8 * 32 * 64 = 16384``) and the 32-channel half-resolution one.
    Measured on a 2-core AVX2 EPYC (``benchmarks/conv_dispatch.py``): 8 -> 8 channels over
    32 x 64 x 80, native 160 ms, oneDNN 10 ms; 32 -> 32 over 16 x 32 x 40, 96 ms vs 8 ms;
    the same values to fp32 rounding. Sliding-window inference runs one window at a time,
    so every window paid this. Batches of 2 or more already go to oneDNN.
    """
    return (
        x.device.type == "cpu"
        and x.shape[0] == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
    )


class _GuardedConvMixin:
    """Forward of :func:`guard_bf16_convolutions`: fp32 where CPU bf16 is not safe, and
    single-sample fp32 CPU convolutions on oneDNN (:func:`_use_onednn_for_single_sample`)."""

    padding: Any
    kernel_size: Any
    stride: Any
    dilation: Any

    def _needs_fp32(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or not _autocast_on_cpu():
            return False
        if all(p == 0 for p in self.padding):
            return False
        sides = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                x.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        ]
        return min(sides) <= 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._needs_fp32(x):
            with torch.autocast("cpu", enabled=False):
                return self._forward_fp32(x.float())
        if x.dtype == torch.float32 and not _autocast_on_cpu():
            return self._forward_fp32(x)
        return super().forward(x)  # type: ignore[misc]

    def _forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn_for_single_sample(x, self):
            return torch.ops.aten.mkldnn_convolution(
                x,
                self.weight,  # type: ignore[attr-defined]
                self.bias,  # type: ignore[attr-defined]
                list(self.padding),
                list(self.stride),
                list(self.dilation),
                self.groups,  # type: ignore[attr-defined]
            )
        return super().forward(x)  # type: ignore[misc]


class _GuardedConv3d(_GuardedConvMixin, nn.Conv3d):
    pass


class _GuardedConv2d(_GuardedConvMixin, nn.Conv2d):
    pass


def guard_bf16_convolutions(module: nn.Module) -> nn.Module:
    """Run padded convolutions with an output side of 2 voxels or fewer in fp32 on a CPU.

    Measured with torch 2.13 on an avx512_bf16 CPU: under bf16 autocast, the weight gradient
    of a padded 3D convolution whose output has a side of 2 (the bottleneck of a 32-deep patch
    at stride 16, or a small test patch) reads uninitialised memory: with the allocator's
    free memory filled with NaN first, 5-29 of 30 trials gave a non-finite weight gradient
    (sides of 1, 3 and 4, kernel 1, strided kernel-2 and transposed convolutions: none).
    Such layers see few voxels, so fp32 costs nothing measurable. Classes are swapped in
    place (``nn.Conv3d`` -> a subclass), so parameters and state-dict keys are unchanged.
    """
    for child in module.modules():
        if type(child) is nn.Conv3d:
            child.__class__ = _GuardedConv3d
        elif type(child) is nn.Conv2d:
            child.__class__ = _GuardedConv2d
    return module


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` tensor (any dimensionality)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, *S) -> (B, *S, C) -> normalise C -> back
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class UXBlock(nn.Module):
    """3D UX-Net block: a ConvNeXt block with a large-kernel depthwise convolution.

    depthwise conv (k) -> LayerNorm -> grouped 1x1 conv C->4C -> GELU -> grouped 1x1 conv 4C->C
    -> layer scale -> stochastic depth -> residual. The 1x1 convolutions are grouped with
    ``groups=C`` as in the 3D UX-Net code (Lee et al., ICLR 2023).

    Args:
        spatial_dims: 2 or 3.
        channels: C, unchanged by the block.
        kernel_size: depthwise kernel size (odd).
        drop_path: stochastic-depth probability of this block.
        layer_scale_init: initial value of the per-channel layer scale; 0 disables it.

    Shapes: ``(B, C, *S) -> (B, C, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        kernel_size: int = 7,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.dwconv = depthwise_conv(spatial_dims, channels, kernel_size)
        self.norm = ChannelsFirstLayerNorm(channels)
        self.expand = conv(channels, expansion * channels, 1, groups=channels)
        self.act = nn.GELU()
        self.project = conv(expansion * channels, channels, 1, groups=channels)
        self.gamma = (
            nn.Parameter(torch.full((channels,), layer_scale_init))
            if layer_scale_init > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self._scale_shape = (1, channels) + (1,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.act(self.expand(self.norm(self.dwconv(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(self._scale_shape)
        return x + self.drop_path(y)
