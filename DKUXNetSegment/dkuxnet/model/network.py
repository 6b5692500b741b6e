"""Dual kMaX UX-Net: UX-Net encoder, CNN decoder and kMaX decoder in one network.

Wu, Li, Zhang, "Semi-supervised Medical Image Segmentation via Query Distribution Consistency"
(ISBI 2024). "Dual" refers to the training (two such networks teaching each other, see
:mod:`dkuxnet.training`); one instance of this class is one network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dkuxnet.config import ModelConfig
from dkuxnet.model.blocks import (
    guard_bf16_convolutions,
    layout_preserving_norms,
    memory_format,
)
from dkuxnet.model.cnn_decoder import CNNDecoder
from dkuxnet.model.encoder import UXNetEncoder
from dkuxnet.model.kmax_decoder import KMaXDecoder
from dkuxnet.model.output import ModelOutput

_EPS = 1e-6


def _class_maps(
    mask_logits: torch.Tensor, class_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query distribution and the class probabilities it implies.

    Shapes: mask logits ``(B, N, *S)``, class logits ``(B, N, K)`` ->
    ``p (B, N, *S)`` and class probabilities ``(B, K, *S)``.
    """
    with torch.autocast(mask_logits.device.type, enabled=False):  # fp32 under autocast too
        p = torch.softmax(mask_logits.float(), dim=1)  # (B, N, *S)
        cls = torch.softmax(class_logits.float(), dim=-1)  # (B, N, K)
        # (B, N, P) x (B, N, K) -> (B, K, P)
        probs = torch.einsum("bnp,bnk->bkp", p.flatten(2), cls).unflatten(2, p.shape[2:])
    return p, probs


class DualKMaXUXNet(nn.Module):
    """One network of the method; build it with :func:`~dkuxnet.model.factory.build_model`.

    Args:
        config: a validated :class:`~dkuxnet.config.ModelConfig`.

    Input ``(B, in_channels, *S)``, every side of S divisible by ``config.total_stride``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.spatial_dims
        self.encoder = UXNetEncoder(
            dims,
            config.in_channels,
            config.feature_sizes,
            config.depths,
            config.kernel_size,
            config.drop_path_rate,
            config.layer_scale_init,
        )
        self.cnn_decoder = CNNDecoder(
            dims,
            config.in_channels,
            self.encoder.out_channels,
            config.hidden_size,
            config.out_channels,
            config.norm_name,
            config.full_res_channels,
            config.refine_block,
        )
        strides = self.cnn_decoder.feature_strides
        channels = dict(zip(strides, self.cnn_decoder.feature_channels, strict=True))
        self._kmax_feature_index = [strides.index(s) for s in config.kmax_strides]
        self._mask_feature_index = strides.index(config.mask_stride)
        self.kmax_decoder = KMaXDecoder(
            dims,
            [channels[s] for s in config.kmax_strides],
            channels[config.mask_stride],
            config.num_queries,
            config.query_dim,
            config.embed_dim,
            config.out_channels,
            config.kmax_layers_per_stride,
            config.kmax_heads,
            config.kmax_ffn_dim,
        )
        groups = torch.zeros(config.num_queries, config.out_channels)
        start = 0
        for k, size in enumerate(config.group_sizes()):
            groups[start : start + size, k] = 1.0
            start += size
        # (N, K) one-hot membership of each query in a class group; rebuilt from the config.
        self.register_buffer("group_matrix", groups, persistent=False)
        layout_preserving_norms(self)
        guard_bf16_convolutions(self)
        self.to(memory_format=memory_format(dims))  # type: ignore[call-overload]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` cannot go through the network."""
        c = self.config
        if x.ndim != c.spatial_dims + 2:
            raise ValueError(
                f"expected a (B, C, {'D, ' if c.spatial_dims == 3 else ''}H, W) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != c.in_channels:
            raise ValueError(f"expected {c.in_channels} input channel(s), got {x.shape[1]}")
        bad = [s for s in x.shape[2:] if s % c.total_stride]
        if bad:
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {c.total_stride} "
                "on every side (pad or crop the patch)"
            )
        if c.norm_name == "instance" and all(s == c.total_stride for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} leaves a single voxel at stride "
                f"{c.total_stride}, where instance norm is undefined; use at least "
                f"{2 * c.total_stride} on one side"
            )

    def forward(self, x: torch.Tensor) -> ModelOutput:
        self.check_input(x)
        size = x.shape[2:]
        x = x.contiguous(memory_format=memory_format(self.config.spatial_dims))  # once, here
        stages = self.encoder(x)
        seg_cnn, features = self.cnn_decoder(x, stages)
        masks, class_logits, aux_raw = self.kmax_decoder(
            [features[i] for i in self._kmax_feature_index], features[self._mask_feature_index]
        )
        p, probs = _class_maps(masks, class_logits)
        # Kept in fp32 under autocast: G sums probabilities near 1, where half precision moves
        # in steps as large as the L_qdc differences it must resolve.
        with torch.autocast(p.device.type, enabled=False):
            # (B, N, P) x (N, K) -> (B, K, P), then (B, K, *S_mask)
            groups = torch.einsum("bnp,nk->bkp", p.flatten(2), self.group_matrix.float())
            groups = groups.unflatten(2, p.shape[2:])
            if p.shape[2:] != size:
                mode = "trilinear" if len(size) == 3 else "bilinear"
                probs = F.interpolate(probs, size=size, mode=mode, align_corners=False)
                groups = F.interpolate(groups, size=size, mode=mode, align_corners=False)
        aux_seg = [torch.log(_class_maps(m, c)[1] + _EPS) for m, c in aux_raw]
        return ModelOutput(
            seg_cnn=seg_cnn,
            seg_kmax=torch.log(probs + _EPS),
            query_logits=masks,
            groups=groups,
            class_logits=class_logits,
            aux_seg=aux_seg,
        )
