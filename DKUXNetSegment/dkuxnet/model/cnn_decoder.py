"""The CNN decoder of 3D UX-Net, from MONAI's UNETR blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn


class CNNDecoder(nn.Module):
    """UNETR-style decoder over the raw input and the encoder's stage outputs.

    Skip blocks (residual ``UnetrBasicBlock``): the raw image -> ``w0`` at stride 1, stage ``i``
    output -> ``w(i+1)`` for all but the last stage, and a bottleneck on the last stage ->
    ``hidden_size``. Up blocks (transposed conv x2 + skip) climb back to stride 1; the head maps
    ``w0`` to ``out_channels`` logits. With widths ``(48, 96, 192, 384)`` this is the public
    model: skips 48 @1, 96 @1/2, 192 @1/4, 384 @1/8, bottleneck 768 @1/16.

    The full-resolution stage (image skip, last up block, refinement, head) is where most of
    the time goes: it runs 3x3x3 convolutions over every voxel of the patch. ``full_res_channels``
    narrows it (``w0`` replaced by that width at stride 1 only) and ``refine=False`` drops the
    extra refinement block; the public model keeps both (``0`` = ``w0``, ``True``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        encoder_channels: widths of the encoder stages (``UXNetEncoder.out_channels``).
        hidden_size: bottleneck width.
        out_channels: classes K.
        norm_name: MONAI norm name for the blocks.
        full_res_channels: width of the stride-1 stage; 0 = ``encoder_channels[0]``.
        refine: add a residual block after the last up block (the public model's design).

    Forward returns ``(logits, features)``: logits ``(B, K, *S)`` and the decoder features,
    coarse to fine, at strides ``2**(n-1), ..., 2, 1`` with widths ``w(n-1), ..., w1, w0``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        encoder_channels: Sequence[int],
        hidden_size: int,
        out_channels: int,
        norm_name: str = "instance",
        full_res_channels: int = 0,
        refine: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(encoder_channels)
        n = len(widths)
        full = full_res_channels or widths[0]

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(spatial_dims, cin, cout, 3, 1, norm_name, res_block=True)

        # skip_blocks[0] reads the image; skip_blocks[i] reads encoder stage i-1.
        self.skip_blocks = nn.ModuleList([basic(in_channels, full)])
        for i in range(1, n):
            self.skip_blocks.append(basic(widths[i - 1], widths[i]))
        self.bottleneck = basic(widths[-1], hidden_size)
        # up_blocks[j] goes from stride 2**(n-j) to 2**(n-1-j).
        self.up_blocks = nn.ModuleList()
        cin = hidden_size
        out_widths = (full, *widths[1:])
        for i in reversed(range(n)):
            self.up_blocks.append(
                UnetrUpBlock(spatial_dims, cin, out_widths[i], 3, 2, norm_name, res_block=True)
            )
            cin = out_widths[i]
        self.refine = basic(full, full) if refine else nn.Identity()
        self.head = UnetOutBlock(spatial_dims, full, out_channels)
        self.feature_channels: tuple[int, ...] = tuple(reversed(out_widths))
        self.feature_strides: tuple[int, ...] = tuple(2**i for i in reversed(range(n)))

    def forward(
        self, image: torch.Tensor, stages: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [self.skip_blocks[0](image)]
        skips += [
            block(stage) for block, stage in zip(self.skip_blocks[1:], stages[:-1], strict=True)
        ]
        x = self.bottleneck(stages[-1])
        features = []
        for up, skip in zip(self.up_blocks, reversed(skips), strict=True):
            x = up(x, skip)
            features.append(x)
        features[-1] = self.refine(features[-1])
        return self.head(features[-1]), features
