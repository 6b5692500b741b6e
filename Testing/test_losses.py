"""The consistency losses' forms (``training.segc_form``, ``training.qdc_form``)."""

from __future__ import annotations

import pytest
import torch

from dkuxnet.config import TrainingConfig
from dkuxnet.errors import ConfigError
from dkuxnet.losses import (
    affinity_sample,
    query_affinity_consistency,
    query_distribution_consistency,
    segmentation_consistency,
)
from dkuxnet.model.output import ModelOutput

SHAPE = (2, 2, 4, 6, 8)  # (B, K, D, H, W)


def _output(logits: torch.Tensor) -> ModelOutput:
    """Both heads give ``logits`` (only what segmentation_consistency reads is real)."""
    b, k = logits.shape[:2]
    return ModelOutput(
        seg_cnn=logits,
        seg_kmax=logits,
        query_logits=torch.zeros(b, 4, *logits.shape[2:]),
        groups=torch.softmax(logits, 1),
        class_logits=torch.zeros(b, 4, k),
        aux_seg=[],
    )


def _teacher(confident_fraction: float, seed: int = 0) -> ModelOutput:
    """A teacher sure (p = 0.99) of a random class on the first ``fraction`` of the voxels along
    W and unsure (p = 0.55) elsewhere."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, 2, (SHAPE[0], *SHAPE[2:]), generator=g)
    p = torch.full(cls.shape, 0.55)
    p[..., : round(confident_fraction * SHAPE[-1])] = 0.99
    fg = torch.where(cls == 1, p, 1 - p)
    probs = torch.stack([1 - fg, fg], 1)
    return _output(torch.log(probs))


def test_dicece_ignores_unconfident_voxels_and_is_zero_when_the_student_agrees() -> None:
    teacher = _teacher(0.5)
    pseudo = teacher.seg_cnn.argmax(1)
    sure = torch.nn.functional.one_hot(pseudo, 2).movedim(-1, 1).float() * 40 - 20
    agreeing = segmentation_consistency(_output(sure), teacher, "dicece", 0.8)
    assert float(agreeing) < 1e-3
    # the student's logits on unconfident voxels do not change the loss
    changed = sure.clone()
    changed[..., 4:] = torch.randn(changed[..., 4:].shape)
    again = segmentation_consistency(_output(changed), teacher, "dicece", 0.8)
    assert float(again) == pytest.approx(float(agreeing), abs=1e-6)
    # a disagreeing student on the confident voxels is penalised
    wrong = segmentation_consistency(_output(-sure), teacher, "dicece", 0.8)
    assert float(wrong) > 1.0


def test_dicece_does_not_shrink_with_the_share_of_confident_voxels_as_cps_does() -> None:
    student = _output(torch.zeros(SHAPE))  # p = 0.5 everywhere: the same error on every voxel
    few, many = _teacher(0.25), _teacher(1.0)
    cps_few = segmentation_consistency(student, few, "cps", 0.8)
    cps_many = segmentation_consistency(student, many, "cps", 0.8)
    assert float(cps_few) == pytest.approx(0.25 * float(cps_many), rel=1e-5)
    ce_dice_few = segmentation_consistency(student, few, "dicece", 0.8)
    ce_dice_many = segmentation_consistency(student, many, "dicece", 0.8)
    assert float(ce_dice_few) == pytest.approx(float(ce_dice_many), rel=0.05)
    assert float(ce_dice_many) > float(cps_many)  # CE + Dice: larger than the CE alone


def test_dicece_without_confident_voxels_is_zero_with_a_gradient() -> None:
    logits = torch.randn(SHAPE, requires_grad=True)
    loss = segmentation_consistency(_output(logits), _teacher(0.0), "dicece", 0.8)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_unknown_form_is_named() -> None:
    with pytest.raises(ConfigError, match="segc_form"):
        TrainingConfig(segc_form="dice")
    assert TrainingConfig(segc_form="dicece").segc_form == "dicece"


def _query_output(query_logits: torch.Tensor, groups: torch.Tensor) -> ModelOutput:
    """What the qdc forms read: mask logits ``(B, N, *S)`` and groups ``(B, K, *S)``."""
    b, n = query_logits.shape[:2]
    k = groups.shape[1]
    zeros = torch.zeros(b, k, *query_logits.shape[2:])
    return ModelOutput(zeros, zeros, query_logits, groups, torch.zeros(b, n, k), [])


def _clusters(assignment: torch.Tensor, n: int) -> torch.Tensor:
    """Sharp mask logits (B, N, *S) putting each voxel in cluster ``assignment`` (B, *S)."""
    return torch.nn.functional.one_hot(assignment, n).movedim(-1, 1).float() * 12.0


def test_affinity_ignores_query_numbering_and_sees_what_groups_cannot() -> None:
    torch.manual_seed(0)
    size = (2, 4, 6, 8)
    foreground = torch.zeros(size, dtype=torch.long)
    foreground[:, 1:3, 2:5, 3:6] = 1
    groups = torch.stack([1 - foreground.float(), foreground.float()], 1)
    # background split in two clusters by depth, foreground one cluster; queries 0-1 background
    split = torch.where(foreground == 1, 2, (torch.arange(4)[None, :, None, None] >= 2).long())
    a = _query_output(_clusters(split, 3), groups)
    index = affinity_sample(4 * 6 * 8, 64, seed=1)
    assert float(query_affinity_consistency(a, a, index)) < 1e-3
    # the same partition with the two background queries numbered the other way round
    swapped = torch.where(split == 2, 2, 1 - split)
    renamed = _query_output(_clusters(swapped, 3), groups)
    assert float(query_affinity_consistency(renamed, a, index)) < 1e-3
    # the same classes (equal groups) but the background clustered differently (by width)
    other = torch.where(foreground == 1, 2, (torch.arange(8)[None, None, None, :] >= 4).long())
    b = _query_output(_clusters(other, 3), groups)
    assert float(query_distribution_consistency(b, a)) < 1e-3  # groups: no difference
    assert float(query_affinity_consistency(b, a, index)) > 1.0  # affinity: a clear one


def test_affinity_gradient_reaches_the_student_only() -> None:
    torch.manual_seed(0)
    s_logits = torch.randn(2, 5, 4, 6, 8, requires_grad=True)
    t_logits = torch.randn(2, 5, 4, 6, 8, requires_grad=True)
    groups = torch.full((2, 2, 4, 6, 8), 0.5)
    index = affinity_sample(4 * 6 * 8, 32, seed=0)
    loss = query_affinity_consistency(
        _query_output(s_logits, groups), _query_output(t_logits, groups), index
    )
    loss.backward()
    assert s_logits.grad is not None and float(s_logits.grad.abs().sum()) > 0
    assert t_logits.grad is None


def test_affinity_sample_is_reproducible_distinct_and_capped() -> None:
    a, b = affinity_sample(1000, 100, seed=7), affinity_sample(1000, 100, seed=7)
    assert torch.equal(a, b) and len(set(a.tolist())) == 100 and int(a.max()) < 1000
    assert not torch.equal(a, affinity_sample(1000, 100, seed=8))
    assert torch.equal(affinity_sample(50, 100, seed=0), torch.arange(50))


def test_unknown_qdc_form_is_named() -> None:
    with pytest.raises(ConfigError, match="qdc_form"):
        TrainingConfig(qdc_form="hungarian")
    with pytest.raises(ConfigError, match="qdc_samples"):
        TrainingConfig(qdc_samples=0)
