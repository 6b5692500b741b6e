"""MONAI's ``UNet`` behind our network's interface: the baseline a user would pick instead.

The semi-supervised study (``scripts/ssl_grid.py``) compares Dual kMaX UX-Net with the network
most people would train first: MONAI's residual ``UNet`` with its tutorial widths
(16, 32, 64, 128, 256; four stride-2 stages; two residual units; instance norm). Wrapping it in
:class:`~dkuxnet.model.output.ModelOutput` lets the same trainer, sampler, schedule, checkpoint
rule and predictor serve both, so the only difference in a comparison is the network.

With one set of logits ``z`` there are no cluster centres: the kMaX head is ``log_softmax(z)``,
the group distribution ``softmax(z)`` (one "query" per class), so the supervised loss is Dice+CE
on the same logits counted twice plus a CE term, i.e. a constant multiple of Dice+CE, which the
Adam-type optimisers do not see. The dual losses work unchanged (a dual UNet is possible).
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from dkuxnet.config import ModelConfig
from dkuxnet.model.blocks import guard_bf16_convolutions
from dkuxnet.model.output import ModelOutput

#: MONAI tutorial widths; total stride 16, like the ``lite`` and ``paper`` encoders.
UNET_CHANNELS = (16, 32, 64, 128, 256)
UNET_STRIDES = (2, 2, 2, 2)


class UNetBaseline(nn.Module):
    """``monai.networks.nets.UNet`` returning a :class:`ModelOutput`.

    Args:
        config: uses ``spatial_dims``, ``in_channels``, ``out_channels`` and ``norm_name``;
            the Dual kMaX UX-Net widths are ignored.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            channels=UNET_CHANNELS,
            strides=UNET_STRIDES,
            num_res_units=2,
            norm=config.norm_name,
        )
        # The same CPU bf16 fault our own network is guarded against: a padded convolution
        # with an output side of 2 (the bottleneck of a 16-32 deep patch at stride 16) gets a
        # garbage weight gradient under bf16 autocast; unguarded, this UNet trained to NaN.
        guard_bf16_convolutions(self.unet)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """``(B, C, *S) -> ModelOutput`` with every map ``(B, K, *S)``."""
        logits = self.unet(x)
        k = logits.shape[1]
        eye = torch.eye(k, device=logits.device, dtype=logits.dtype)
        return ModelOutput(
            seg_cnn=logits,
            seg_kmax=torch.log_softmax(logits.float(), dim=1),
            query_logits=logits,
            groups=torch.softmax(logits.float(), dim=1),
            class_logits=eye.expand(logits.shape[0], k, k),
            aux_seg=[],
        )
