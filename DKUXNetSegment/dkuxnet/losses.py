"""The losses of the method (METHOD.md, "Training").

Supervised, per network on labeled patches::

    L_sup = DiceCE(S_cnn, y) + DiceCE(S_kmax, y) + lambda_q * CE(G, y) + lambda_aux * mean_l aux_l

Consistency between the two networks A and B (the other side detached)::

    L_segc: cross pseudo-supervision (CE against the other's confident argmax, or DiceCE on the
            confident voxels) or MSE of softmaxes
    L_qdc:  symmetric KL between the group distributions G of A and B, or (``affinity``)
            between their query co-assignment maps on sampled voxels

Every cross-entropy is a mean over voxels (the public code's voxel sum swamps everything else).
Labels are ``(B, 1, *S)`` integer class maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from dkuxnet.model.output import ModelOutput

_EPS = 1e-6
_dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)


def _resize_labels(labels: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, 1, *S)`` integer labels to ``size``."""
    if labels.shape[2:] == size:
        return labels
    return F.interpolate(labels.float(), size=size, mode="nearest").long()


def dice_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MONAI DiceCE of ``(B, K, *S)`` logits (or log-probabilities) against ``(B, 1, *S)`` labels."""
    return _dice_ce(logits.float(), _resize_labels(labels, logits.shape[2:]))


def group_ce(groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean voxel CE of the group distribution ``(B, K, *S)`` (probabilities) against labels."""
    target = _resize_labels(labels, groups.shape[2:])[:, 0]
    return F.nll_loss(torch.log(groups.float() + _EPS), target)


def supervised_loss(
    out: ModelOutput, labels: torch.Tensor, lambda_query: float, lambda_aux: float
) -> dict[str, torch.Tensor]:
    """L_sup and its parts; ``"total"`` is the value to minimise."""
    labels = labels.long()
    parts = {
        "dice_ce_cnn": dice_ce(out.seg_cnn, labels),
        "dice_ce_kmax": dice_ce(out.seg_kmax, labels),
        "query_ce": group_ce(out.groups, labels),
    }
    if out.aux_seg:
        parts["aux"] = torch.stack([dice_ce(a, labels) for a in out.aux_seg]).mean()
    else:
        parts["aux"] = out.seg_cnn.new_zeros(())
    parts["total"] = (
        parts["dice_ce_cnn"]
        + parts["dice_ce_kmax"]
        + lambda_query * parts["query_ce"]
        + lambda_aux * parts["aux"]
    )
    return parts


def segmentation_consistency(
    student: ModelOutput, teacher: ModelOutput, form: str = "cps", confidence: float = 0.8
) -> torch.Tensor:
    """L_segc for the ``student``; the ``teacher`` side is detached.

    ``cps``: CE of both student heads against the teacher's argmax where the teacher's
    probability exceeds ``confidence`` (mean over all voxels, unconfident ones count zero).
    ``dicece``: the supervised loss's form on the confident voxels only: their mean CE (divided
    by the confident voxels, not all) plus the soft Dice of the student's softmax against the
    one-hot pseudo-label, both restricted to the confident voxels (per class, mean over batch
    and classes) — a pseudo-label as strong as a label where the teacher is sure.
    ``mse``: mean squared error between the student's and the teacher's softmaxes.
    """
    with torch.no_grad():
        target_probs = teacher.probabilities("mean")  # (B, K, *S)
    losses = []
    for logits in (student.seg_cnn, student.seg_kmax):
        if form == "cps":
            conf, pseudo = target_probs.max(dim=1)  # (B, *S)
            ce = F.cross_entropy(logits.float(), pseudo, reduction="none")
            losses.append((ce * (conf > confidence).float()).mean())
        elif form == "dicece":
            conf, pseudo = target_probs.max(dim=1)
            losses.append(_confident_dice_ce(logits.float(), pseudo, conf > confidence))
        elif form == "mse":
            losses.append(F.mse_loss(torch.softmax(logits.float(), dim=1), target_probs))
        else:
            raise ValueError(f"segc form must be cps, dicece or mse, got {form!r}")
    return torch.stack(losses).mean()


def _confident_dice_ce(
    logits: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """CE + soft Dice of ``(B, K, *S)`` logits against ``(B, *S)`` labels on ``mask`` only."""
    weight = mask.float()
    count = weight.sum()
    if count == 0:  # no confident voxel: nothing to learn from (keeps the graph, value 0)
        return logits.sum() * 0.0
    ce = (F.cross_entropy(logits, pseudo, reduction="none") * weight).sum() / count
    probs = torch.softmax(logits, dim=1) * weight[:, None]
    onehot = F.one_hot(pseudo, logits.shape[1]).movedim(-1, 1).float() * weight[:, None]
    dims = tuple(range(2, logits.dim()))
    overlap = (probs * onehot).sum(dims)
    dice = (2 * overlap + _EPS) / (probs.sum(dims) + onehot.sum(dims) + _EPS)
    return ce + (1 - dice).mean()


def query_distribution_consistency(student: ModelOutput, teacher: ModelOutput) -> torch.Tensor:
    """L_qdc for the ``student``: symmetric KL between group distributions, teacher detached.

    ``0.5 * (KL(G_t || G_s) + KL(G_s || G_t))``, summed over the K groups, mean over voxels.
    """
    g_s = student.groups.float().clamp_min(_EPS)
    g_t = teacher.groups.detach().float().clamp_min(_EPS)
    log_s, log_t = torch.log(g_s), torch.log(g_t)
    kl_ts = (g_t * (log_t - log_s)).sum(dim=1)
    kl_st = (g_s * (log_s - log_t)).sum(dim=1)
    return 0.5 * (kl_ts + kl_st).mean()


def query_affinity_consistency(
    student: ModelOutput, teacher: ModelOutput, index: torch.Tensor
) -> torch.Tensor:
    """L_qdc, ``affinity`` form, for the ``student``; the ``teacher`` side is detached.

    For K = 2 the group distribution G is nearly the class map, so the ``groups`` form repeats
    L_segc. This form compares what only the queries know: how each network clusters voxels.
    With ``q = softmax_n(M)`` at the sampled voxels ``index`` (flat indices into the mask grid,
    the same for both networks), the co-assignment ``a[i, j] = sum_n q[n, i] q[n, j]`` is the
    probability that voxels i and j fall in the same cluster. It does not depend on how the
    queries are numbered, so two independently initialised networks can be compared without
    matching their queries. Loss: symmetric Bernoulli KL between the two ``a`` maps, mean over
    voxel pairs and the batch.
    """

    def coassignment(logits: torch.Tensor) -> torch.Tensor:
        q = torch.softmax(logits.float().flatten(2)[:, :, index], dim=1)  # (B, N, P)
        return (q.transpose(1, 2) @ q).clamp(_EPS, 1 - _EPS)  # (B, P, P)

    a_s = coassignment(student.query_logits)
    with torch.no_grad():
        a_t = coassignment(teacher.query_logits)
    kl_ts = a_t * (a_t.log() - a_s.log()) + (1 - a_t) * ((1 - a_t).log() - (1 - a_s).log())
    kl_st = a_s * (a_s.log() - a_t.log()) + (1 - a_s) * ((1 - a_s).log() - (1 - a_t).log())
    return 0.5 * (kl_ts + kl_st).mean()


def affinity_sample(spatial_size: int, samples: int, seed: int) -> torch.Tensor:
    """``samples`` distinct flat voxel indices out of ``spatial_size`` (all when fewer), drawn
    from a generator seeded with ``seed`` (the trainer passes one per iteration, so a resumed
    run draws what an uninterrupted one would)."""
    if samples >= spatial_size:
        return torch.arange(spatial_size)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(spatial_size, generator=g)[:samples]
