"""The 3D UX-Net encoder (Lee, Bao, Landman, Huo: "3D UX-Net", ICLR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from dkuxnet.model.blocks import ChannelsFirstLayerNorm, UXBlock


class UXNetEncoder(nn.Module):
    """ConvNeXt-style hierarchical encoder with large-kernel depthwise convolutions.

    A stride-2 stem (kernel 7) and then one stage per width; stages after the first start with
    LayerNorm + a kernel-2 stride-2 convolution. Every stage output is layer-normalised.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        feature_sizes: stage widths, e.g. ``(48, 96, 192, 384)``.
        depths: blocks per stage.
        kernel_size: depthwise kernel of the blocks.
        drop_path_rate: stochastic depth rising linearly from 0 over all blocks (computed once).
        layer_scale_init: initial layer scale of the blocks.

    Shapes: ``(B, in_channels, *S)`` -> list of ``(B, feature_sizes[i], *S / 2**(i + 1))``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        feature_sizes: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 7,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(feature_sizes) != len(depths):
            raise ValueError(f"feature_sizes {feature_sizes} and depths {depths} differ in length")
        conv = Conv[Conv.CONV, spatial_dims]
        self.out_channels: tuple[int, ...] = tuple(feature_sizes)
        self.downsamples = nn.ModuleList()
        self.downsamples.append(
            nn.Sequential(
                conv(in_channels, feature_sizes[0], 7, stride=2, padding=3),
                ChannelsFirstLayerNorm(feature_sizes[0]),
            )
        )
        for prev, width in zip(feature_sizes[:-1], feature_sizes[1:], strict=True):
            self.downsamples.append(
                nn.Sequential(ChannelsFirstLayerNorm(prev), conv(prev, width, 2, stride=2))
            )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        start = 0
        for width, depth in zip(feature_sizes, depths, strict=True):
            self.stages.append(
                nn.Sequential(
                    *(
                        UXBlock(
                            spatial_dims, width, kernel_size, rates[start + j], layer_scale_init
                        )
                        for j in range(depth)
                    )
                )
            )
            start += depth
        self.out_norms = nn.ModuleList(ChannelsFirstLayerNorm(w) for w in feature_sizes)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each stage output: 2, 4, 8, ..."""
        return tuple(2 ** (i + 1) for i in range(len(self.out_channels)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for down, stage, norm in zip(self.downsamples, self.stages, self.out_norms, strict=True):
            x = stage(down(x))
            outputs.append(norm(x))
        return outputs
