"""What every network returns: :class:`ModelOutput`, the interface the losses, the trainer and
the predictor are written against (:mod:`dkuxnet.model.network` and the UNet baseline of
:mod:`dkuxnet.model.baseline` both return it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """What one forward pass returns. ``S`` is the spatial size of the input.

    Attributes:
        seg_cnn: CNN-head logits ``(B, K, *S)``.
        seg_kmax: kMaX segmentation as log-probabilities ``(B, K, *S)``:
            ``log sum_n softmax_k(cls)[n, k] * p(n | voxel)`` (usable as logits).
        query_logits: final mask logits M ``(B, N, *S / mask_stride)``; ``softmax`` over N is
            the query distribution ``p(n | voxel)``.
        groups: group distribution ``G[k] = sum_{n in group k} p(n | voxel)``, ``(B, K, *S)``,
            summing to 1 over K (what L_qdc compares between the two networks).
        class_logits: final per-centre class logits ``(B, N, K)``.
        aux_seg: per kMaX layer, its segmentation log-probabilities ``(B, K, *S_layer)`` at
            that layer's resolution (trained by the auxiliary loss).
    """

    seg_cnn: torch.Tensor
    seg_kmax: torch.Tensor
    query_logits: torch.Tensor
    groups: torch.Tensor
    class_logits: torch.Tensor
    aux_seg: list[torch.Tensor]

    def batch_slice(self, start: int, stop: int) -> ModelOutput:
        """The outputs of batch items ``start:stop`` (e.g. the labeled part of a mixed batch)."""
        return ModelOutput(
            seg_cnn=self.seg_cnn[start:stop],
            seg_kmax=self.seg_kmax[start:stop],
            query_logits=self.query_logits[start:stop],
            groups=self.groups[start:stop],
            class_logits=self.class_logits[start:stop],
            aux_seg=[a[start:stop] for a in self.aux_seg],
        )

    def probabilities(self, head: str = "mean") -> torch.Tensor:
        """Class probabilities ``(B, K, *S)`` from the ``cnn`` head, ``kmax`` head or their mean."""
        if head == "cnn":
            return torch.softmax(self.seg_cnn.float(), dim=1)
        if head == "kmax":
            return torch.softmax(self.seg_kmax.float(), dim=1)
        if head == "mean":
            return 0.5 * (
                torch.softmax(self.seg_cnn.float(), dim=1)
                + torch.softmax(self.seg_kmax.float(), dim=1)
            )
        raise ValueError(f"head must be cnn, kmax or mean, got {head!r}")
