"""The consistency losses' pseudo-label forms (``training.segc_form``)."""

from __future__ import annotations

import pytest
import torch

from dkuxnet.config import TrainingConfig
from dkuxnet.errors import ConfigError
from dkuxnet.losses import segmentation_consistency
from dkuxnet.model.network import ModelOutput

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
