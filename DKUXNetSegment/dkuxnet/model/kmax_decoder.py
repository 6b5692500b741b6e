"""The kMaX decoder: cluster centres refined by k-means cross-attention.

After Yu et al., "k-means Mask Transformer" (ECCV 2022). Everything works on flattened pixel
tokens ``(B, C, P)`` with ``P = D*H*W`` (or ``H*W``), so the decoder does not care about the
dimensionality of the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from dkuxnet.model.blocks import depthwise_conv

_EPS = 1e-6


class ClassHead(nn.Module):
    """Per-centre class logits: an MLP applied to each centre, ``(B, N, Cq) -> (B, N, K)``.

    Applied centre by centre (unlike the public code's MLP over all centres flattened), so it
    works for any number of centres.
    """

    def __init__(self, query_dim: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(query_dim, query_dim), nn.GELU(), nn.Linear(query_dim, num_classes)
        )

    def forward(self, centers: torch.Tensor) -> torch.Tensor:
        return self.mlp(centers)


class MaskPredictor(nn.Module):
    """Mask and class logits of a set of centres against pixel embeddings.

    Args:
        query_dim: centre width Cq.
        embed_dim: embedding width E.
        num_classes: K.

    Shapes: centres ``(B, N, Cq)``, unit pixel embeddings ``(B, E, P)`` ->
    mask logits ``(B, N, P)`` and class logits ``(B, N, K)``.
    """

    def __init__(self, query_dim: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.kernel = nn.Sequential(nn.LayerNorm(query_dim), nn.Linear(query_dim, embed_dim))
        self.classes = ClassHead(query_dim, num_classes)
        # Cosine similarities lie in [-1, 1]; a learned temperature lets masks become sharp.
        self.logit_scale = nn.Parameter(torch.tensor(10.0))

    def forward(
        self, centers: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 under autocast: the mask logits (cosine x scale ~10) feed the query distribution
        # and the hard assignment, where bf16's 3 significant digits would blur them.
        with torch.autocast(centers.device.type, enabled=False):
            kernels = F.normalize(self.kernel(centers.float()), dim=-1)  # (B, N, E)
            # (B, N, E) x (B, E, P) -> (B, N, P)
            masks = torch.einsum("bne,bep->bnp", kernels, embeddings.float()) * self.logit_scale
        return masks, self.classes(centers)


class KMaXLayer(nn.Module):
    """One k-means cross-attention layer.

    1. Predict masks of the current centres on this layer's pixel embeddings (these masks and
       class logits are the layer's auxiliary output, trained by the auxiliary loss).
    2. Hard assignment: every pixel goes to the centre with the largest mask logit (one-hot
       argmax over N, no gradient).
    3. Centre update: the sum of the assigned pixels' values, computed in fp32, then norm +
       linear, added to the centres (the k-means step).
    4. Self-attention among centres, then a feed-forward block (pre-norm, residual).

    Shapes: centres ``(B, N, Cq)``, pixel features ``(B, Cp, P)`` -> new centres
    ``(B, N, Cq)``, mask logits ``(B, N, P)``, class logits ``(B, N, K)``.
    """

    def __init__(
        self,
        pixel_dim: int,
        query_dim: int,
        embed_dim: int,
        num_classes: int,
        num_heads: int,
        ffn_dim: int,
    ) -> None:
        super().__init__()
        self.pixel_norm = nn.GroupNorm(1, pixel_dim)
        self.pixel_embed = nn.Conv1d(pixel_dim, embed_dim, 1)
        self.pixel_value = nn.Conv1d(pixel_dim, query_dim, 1)
        self.predictor = MaskPredictor(query_dim, embed_dim, num_classes)
        self.update_norm = nn.LayerNorm(query_dim)
        self.update_proj = nn.Linear(query_dim, query_dim)
        self.attn_norm = nn.LayerNorm(query_dim)
        self.attn = nn.MultiheadAttention(query_dim, num_heads, batch_first=True)
        self.ffn_norm = nn.LayerNorm(query_dim)
        self.ffn = nn.Sequential(
            nn.Linear(query_dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, query_dim)
        )

    def forward(
        self, centers: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = self.pixel_norm(pixels)
        embeddings = F.normalize(self.pixel_embed(pixels), dim=1)  # (B, E, P)
        masks, class_logits = self.predictor(centers, embeddings)  # (B, N, P), (B, N, K)
        with torch.no_grad():
            winner = masks.argmax(dim=1)  # (B, P)
            assignment = F.one_hot(winner, masks.shape[1]).to(torch.float32)  # (B, P, N)
        values = self.pixel_value(pixels)  # (B, Cq, P)
        with torch.autocast(device_type=values.device.type, enabled=False):
            # (B, P, N) x (B, Cq, P) -> (B, N, Cq): sum of each cluster's pixel values, fp32,
            # normalised in fp32 too (a half-precision sum over ~1e5 voxels can overflow)
            update = self.update_norm(torch.einsum("bpn,bcp->bnc", assignment, values.float()))
        centers = centers + self.update_proj(update)
        q = self.attn_norm(centers)
        centers = centers + self.attn(q, q, q, need_weights=False)[0]
        centers = centers + self.ffn(self.ffn_norm(centers))
        return centers, masks, class_logits


class PixelHead(nn.Module):
    """Final pixel embedding: depthwise k5 conv -> 1x1 -> Cq -> 1x1 -> E, L2-normalised.

    Shapes: ``(B, C, *S) -> (B, E, *S)`` with unit vectors along E.
    """

    def __init__(self, spatial_dims: int, in_channels: int, query_dim: int, embed_dim: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.net = nn.Sequential(
            depthwise_conv(spatial_dims, in_channels, 5),
            nn.GroupNorm(1, in_channels),
            conv(in_channels, query_dim, 1),
            nn.GELU(),
            conv(query_dim, embed_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class KMaXDecoder(nn.Module):
    """Cluster centres refined over several decoder scales, then final masks and classes.

    Args:
        spatial_dims: 2 or 3.
        feature_channels: widths of the decoder features the layers read, one per scale.
        pixel_channels: width of the features the final pixel head reads.
        num_queries: N.
        query_dim: Cq.
        embed_dim: E.
        num_classes: K.
        layers_per_scale: kMaX layers per scale.
        num_heads / ffn_dim: centre self-attention and feed-forward sizes.

    Forward: per-scale features ``[(B, C_s, *S_s)]`` and final features ``(B, Cf, *S_f)`` ->
    final mask logits ``(B, N, *S_f)``, final class logits ``(B, N, K)`` and per-layer
    auxiliary ``(mask logits (B, N, *S_s), class logits (B, N, K))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: Sequence[int],
        pixel_channels: int,
        num_queries: int,
        query_dim: int,
        embed_dim: int,
        num_classes: int,
        layers_per_scale: int = 2,
        num_heads: int = 8,
        ffn_dim: int = 2048,
    ) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_queries, query_dim) * query_dim**-0.5)
        self.layers = nn.ModuleList()
        self.layer_scale_index: list[int] = []
        for s, channels in enumerate(feature_channels):
            for _ in range(layers_per_scale):
                self.layers.append(
                    KMaXLayer(channels, query_dim, embed_dim, num_classes, num_heads, ffn_dim)
                )
                self.layer_scale_index.append(s)
        self.pixel_head = PixelHead(spatial_dims, pixel_channels, query_dim, embed_dim)
        self.final_predictor = MaskPredictor(query_dim, embed_dim, num_classes)

    def forward(
        self, features: Sequence[torch.Tensor], final_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        batch = final_features.shape[0]
        # the centres stay fp32 under autocast (layer outputs in bf16 are promoted when added)
        centers = self.centers.unsqueeze(0).expand(batch, -1, -1).float()
        aux: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer, s in zip(self.layers, self.layer_scale_index, strict=True):
            feat = features[s]
            centers, masks, class_logits = layer(centers, feat.flatten(2))
            aux.append((masks.unflatten(2, feat.shape[2:]), class_logits))
        embeddings = self.pixel_head(final_features)  # (B, E, *S_f)
        masks, class_logits = self.final_predictor(centers, embeddings.flatten(2))
        return masks.unflatten(2, final_features.shape[2:]), class_logits, aux
