"""The numbers behind the published figures: losses and schedules against worked examples.

Every expected value here is computed independently of the code under test: by hand (the
arithmetic is written out), or by a direct NumPy formula of the documented definition. A
check of the kind "it runs, the output is finite, the shape is right" would let a loss that
trains towards the wrong target pass; these would not (see docs/mutation.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dkuxnet.losses import (
    query_affinity_consistency,
    query_distribution_consistency,
    segmentation_consistency,
    supervised_loss,
)
from dkuxnet.model.output import ModelOutput
from dkuxnet.training.schedules import lr_factor, sigmoid_rampup


def _logits(*probabilities: tuple[float, float]) -> torch.Tensor:
    """Logits ``(1, 2, V, 1, 1)`` whose softmax at voxel ``v`` is ``probabilities[v]``.

    The voxels lie along D, the first spatial axis, so that a reduction over the wrong axes
    shows.
    """
    p = torch.tensor(probabilities, dtype=torch.float64).T  # (2, V)
    return torch.log(p)[None, :, :, None, None].float()


def _output(
    cnn: torch.Tensor, kmax: torch.Tensor, groups: torch.Tensor | None = None
) -> ModelOutput:
    """A ModelOutput with the given heads (``groups`` defaults to the CNN head's softmax)."""
    b, k = cnn.shape[:2]
    return ModelOutput(
        seg_cnn=cnn,
        seg_kmax=kmax,
        query_logits=torch.zeros(b, 3, *cnn.shape[2:]),
        groups=torch.softmax(cnn, 1) if groups is None else groups,
        class_logits=torch.zeros(b, 3, k),
        aux_seg=[],
    )


# ----------------------------------------------------------------------- segmentation consistency
# Two voxels. The teacher's heads differ (CNN p = (0.3, 0.7) and kMaX (0.02, 0.98) at voxel 0):
# their mean (0.16, 0.84) is confident (> 0.8) in class 1, the CNN head alone would not be.
# Voxel 1 is unconfident ((0.6, 0.4) on both heads).
TEACHER = _output(_logits((0.3, 0.7), (0.6, 0.4)), _logits((0.02, 0.98), (0.6, 0.4)))
# The student is *not* at p = 0.5 where it matters (at p = 0.5 the CE is ln 2 whatever the
# target): CNN (0.25, 0.75) and kMaX (0.8, 0.2) at voxel 0; (0.5, 0.5) at the unconfident voxel.
STUDENT = _output(_logits((0.25, 0.75), (0.5, 0.5)), _logits((0.8, 0.2), (0.5, 0.5)))


def test_cps_trains_towards_the_teachers_confident_class_worked_example() -> None:
    # voxel 0: pseudo-label 1, CE = -ln p_student(1); voxel 1 is unconfident and counts 0;
    # the mean runs over both voxels; then the mean of the two student heads
    cnn = (-math.log(0.75) + 0.0) / 2
    kmax = (-math.log(0.2) + 0.0) / 2
    expected = (cnn + kmax) / 2  # = 0.4743
    loss = segmentation_consistency(STUDENT, TEACHER, "cps", confidence=0.8)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # towards the opposite class (1 - pseudo) it would be (-ln 0.25 - ln 0.8) / 4 = 0.4024
    assert float(loss) != pytest.approx((-math.log(0.25) - math.log(0.8)) / 4, rel=1e-3)


def test_cps_gradient_moves_the_student_towards_the_pseudo_label() -> None:
    logits = STUDENT.seg_cnn.clone().requires_grad_(True)
    student = _output(logits, STUDENT.seg_kmax)
    segmentation_consistency(student, TEACHER, "cps", 0.8).backward()
    assert logits.grad is not None
    # d CE / d logit_1 = p_1 - 1 < 0 at the confident voxel: descent raises class 1's logit;
    # the factor 1/4: mean over 2 voxels and 2 heads
    assert float(logits.grad[0, 1, 0, 0, 0]) == pytest.approx((0.75 - 1) / 4, rel=1e-5)
    assert float(logits.grad[0, 0, 0, 0, 0]) == pytest.approx(0.25 / 4, rel=1e-5)
    assert torch.all(logits.grad[:, :, 1] == 0)  # the unconfident voxel teaches nothing


def test_cps_confidence_threshold_is_on_the_mean_of_the_teachers_heads() -> None:
    # at 0.85 the teacher's mean 0.84 is not confident: nothing is taught
    assert float(segmentation_consistency(STUDENT, TEACHER, "cps", 0.85)) == 0.0
    # at 0.5 both voxels teach: voxel 1's pseudo-label is class 0 (p 0.6), the student p 0.5
    cnn = (-math.log(0.75) - math.log(0.5)) / 2
    kmax = (-math.log(0.2) - math.log(0.5)) / 2
    loss = segmentation_consistency(STUDENT, TEACHER, "cps", 0.5)
    assert float(loss) == pytest.approx((cnn + kmax) / 2, rel=1e-5)


def test_defaults_are_cps_at_confidence_0_8() -> None:
    expected = segmentation_consistency(STUDENT, TEACHER, "cps", 0.8)
    assert float(segmentation_consistency(STUDENT, TEACHER)) == float(expected) > 0


@pytest.mark.parametrize("form", ["cps", "dicece"])
def test_a_teacher_exactly_at_the_threshold_does_not_teach(form: str) -> None:
    """Only a probability that *exceeds* ``confidence`` makes a pseudo-label."""
    at = float(TEACHER.probabilities("mean").max(1).values[0, 0, 0, 0])  # voxel 0, ~0.84
    assert float(segmentation_consistency(STUDENT, TEACHER, form, at)) == 0.0
    assert float(segmentation_consistency(STUDENT, TEACHER, form, at - 1e-4)) > 0.1


def test_dicece_worked_example() -> None:
    # confident voxel 0 only (pseudo 1). CE: mean over the confident voxels (one);
    # soft Dice per class on that voxel, smoothing 1e-6: class 0 has no pseudo-label voxel,
    # so its Dice is ~0 and its loss ~1; class 1: 2 p1 / (p1 + 1)
    eps = 1e-6

    def head(p1: float) -> float:
        dice0 = eps / ((1 - p1) + eps)
        dice1 = (2 * p1 + eps) / (p1 + 1 + eps)
        return -math.log(p1) + ((1 - dice0) + (1 - dice1)) / 2

    expected = (head(0.75) + head(0.2)) / 2  # = 1.6509
    loss = segmentation_consistency(STUDENT, TEACHER, "dicece", 0.8)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_dicece_with_an_item_without_confident_voxels_and_a_class_never_taught() -> None:
    """Batch item 1 has no confident voxel: its Dice is 1 for every class (eps / eps), so it
    adds 0 to the mean over items and classes. The teacher is sure of class 0 only, so class 1
    has no pseudo-label voxel at all (its one-hot is still two classes wide)."""
    eps = 1e-6
    teacher = _output(
        torch.cat([_logits((0.9, 0.1), (0.6, 0.4)), _logits((0.6, 0.4), (0.55, 0.45))]),
        torch.cat([_logits((0.9, 0.1), (0.6, 0.4)), _logits((0.6, 0.4), (0.55, 0.45))]),
    )
    both = torch.cat([_logits((0.75, 0.25), (0.5, 0.5)), _logits((0.3, 0.7), (0.5, 0.5))])
    student = _output(both, both)
    # item 0, voxel 0 (pseudo 0, student p0 = 0.75): CE -ln 0.75 over the one confident voxel;
    # Dice class 0: 2 * 0.75 / (0.75 + 1); class 1: eps / (0.25 + eps); item 1: Dice 1, 1
    dice_loss = [1 - (2 * 0.75 + eps) / (1.75 + eps), 1 - eps / (0.25 + eps), 0.0, 0.0]
    expected = -math.log(0.75) + sum(dice_loss) / 4
    loss = segmentation_consistency(student, teacher, "dicece", 0.8)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_mse_worked_example() -> None:
    # teacher mean: voxel 0 (0.16, 0.84), voxel 1 (0.6, 0.4); mean over 2 classes x 2 voxels
    cnn = (2 * (0.25 - 0.16) ** 2 + 2 * (0.5 - 0.6) ** 2) / 4  # 0.00905
    kmax = (2 * (0.8 - 0.16) ** 2 + 2 * (0.5 - 0.6) ** 2) / 4  # 0.2098
    loss = segmentation_consistency(STUDENT, TEACHER, "mse", 0.8)
    assert float(loss) == pytest.approx((cnn + kmax) / 2, rel=1e-5)


def test_consistency_does_not_reach_the_teacher() -> None:
    cnn = TEACHER.seg_cnn.clone().requires_grad_(True)
    teacher = _output(cnn, TEACHER.seg_kmax)
    for form in ("cps", "dicece", "mse"):
        segmentation_consistency(STUDENT, teacher, form, 0.8)  # no graph to the teacher
    student_logits = STUDENT.seg_cnn.clone().requires_grad_(True)
    loss = segmentation_consistency(_output(student_logits, STUDENT.seg_kmax), teacher, "mse")
    loss.backward()
    assert cnn.grad is None and student_logits.grad is not None


def test_unknown_segc_form_is_refused() -> None:
    with pytest.raises(ValueError, match="cps, dicece or mse"):
        segmentation_consistency(STUDENT, TEACHER, "kl")


# --------------------------------------------------------------------- group distribution (qdc)
def test_group_consistency_is_half_the_sum_of_both_kl_directions_worked_example() -> None:
    # one voxel, K = 2: student G = (0.2, 0.8), teacher G = (0.5, 0.5)
    kl_ts = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)  # KL(t || s) = 0.2231
    kl_st = 0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5)  # KL(s || t) = 0.1927
    groups_s = torch.tensor([0.2, 0.8]).reshape(1, 2, 1, 1, 1).requires_grad_(True)
    groups_t = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1, 1).requires_grad_(True)
    zeros = torch.zeros(1, 2, 1, 1, 1)
    student = _output(zeros, zeros, groups_s)
    teacher = _output(zeros, zeros, groups_t)
    loss = query_distribution_consistency(student, teacher)
    assert float(loss.detach()) == pytest.approx(0.5 * (kl_ts + kl_st), rel=1e-5)  # 0.2079
    # the two directions differ here, so one direction twice (or no 0.5) would not pass
    assert kl_ts != pytest.approx(kl_st, rel=0.05)
    loss.backward()
    assert groups_t.grad is None and groups_s.grad is not None
    # d/ds_k of 0.5 (sum t log(t/s) + sum s log(s/t)) = 0.5 (-t_k/s_k + log(s_k/t_k) + 1)
    for k, (s, t) in enumerate(((0.2, 0.5), (0.8, 0.5))):
        expected = 0.5 * (-t / s + math.log(s / t) + 1)
        assert float(groups_s.grad[0, k, 0, 0, 0]) == pytest.approx(expected, rel=1e-4)


def test_group_consistency_averages_over_voxels() -> None:
    # voxel 0 as above, voxel 1 identical distributions (KL 0): half the one-voxel value
    kl = 0.5 * (
        0.5 * math.log(0.5 / 0.2)
        + 0.5 * math.log(0.5 / 0.8)
        + 0.2 * math.log(0.2 / 0.5)
        + 0.8 * math.log(0.8 / 0.5)
    )
    g_s = torch.tensor([[0.2, 0.3], [0.8, 0.7]]).reshape(1, 2, 1, 1, 2)
    g_t = torch.tensor([[0.5, 0.3], [0.5, 0.7]]).reshape(1, 2, 1, 1, 2)
    zeros = torch.zeros(1, 2, 1, 1, 2)
    loss = query_distribution_consistency(_output(zeros, zeros, g_s), _output(zeros, zeros, g_t))
    assert float(loss) == pytest.approx(kl / 2, rel=1e-5)


def test_affinity_consistency_against_a_direct_formula() -> None:
    # two voxels, three queries; a[i, j] = sum_n q[n, i] q[n, j], symmetric Bernoulli KL
    s_logits = torch.tensor([[2.0, -1.0], [0.0, 1.5], [-1.0, 0.5]]).reshape(1, 3, 1, 1, 2)
    t_logits = torch.tensor([[0.5, 0.5], [1.0, -2.0], [0.0, 2.0]]).reshape(1, 3, 1, 1, 2)

    def coassignment(logits: torch.Tensor) -> np.ndarray:
        z = logits.reshape(3, 2).double().numpy()
        q = np.exp(z) / np.exp(z).sum(0, keepdims=True)  # softmax over the queries
        return np.clip(q.T @ q, 1e-6, 1 - 1e-6)

    a, b = coassignment(s_logits), coassignment(t_logits)

    def bernoulli_kl(p: np.ndarray, r: np.ndarray) -> np.ndarray:
        return p * np.log(p / r) + (1 - p) * np.log((1 - p) / (1 - r))

    expected = 0.5 * float((bernoulli_kl(b, a) + bernoulli_kl(a, b)).mean())
    groups = torch.full((1, 2, 1, 1, 2), 0.5)
    zeros = torch.zeros(1, 2, 1, 1, 2)

    def output(q: torch.Tensor) -> ModelOutput:
        return ModelOutput(zeros, zeros, q, groups, torch.zeros(1, 3, 2), [])

    loss = query_affinity_consistency(output(s_logits), output(t_logits), torch.arange(2))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # only the sampled voxels count: voxel 1 alone compares a[1, 1] with b[1, 1]
    alone = 0.5 * float(bernoulli_kl(b[1, 1], a[1, 1]) + bernoulli_kl(a[1, 1], b[1, 1]))
    loss = query_affinity_consistency(output(s_logits), output(t_logits), torch.tensor([1]))
    assert float(loss) == pytest.approx(alone, rel=1e-5)


def test_affinity_of_sharp_assignments_is_clamped_and_finite() -> None:
    """Co-assignments of exactly 0 or 1 (one-hot queries) are clamped to [1e-6, 1 - 1e-6]:
    two voxels, student puts them in different clusters, teacher in the same one."""
    eps = 1e-6
    student_q = torch.tensor([[100.0, -100.0], [-100.0, 100.0]]).reshape(1, 2, 1, 1, 2)
    teacher_q = torch.tensor([[100.0, 100.0], [-100.0, -100.0]]).reshape(1, 2, 1, 1, 2)
    groups = torch.full((1, 2, 1, 1, 2), 0.5)
    zeros = torch.zeros(1, 2, 1, 1, 2)

    def output(q: torch.Tensor) -> ModelOutput:
        return ModelOutput(zeros, zeros, q, groups, torch.zeros(1, 2, 2), [])

    # a_s = [[1, 0], [0, 1]], a_t = all ones; clamped to [lo, hi] (the float32 values of eps
    # and 1 - eps): the diagonal pairs agree (0); each off-diagonal pair compares t = hi, s = lo
    lo, hi = float(np.float32(eps)), float(np.float32(1 - eps))

    def bernoulli_kl(p: float, r: float) -> float:
        return p * math.log(p / r) + (1 - p) * math.log((1 - p) / (1 - r))

    off_diagonal = 0.5 * (bernoulli_kl(hi, lo) + bernoulli_kl(lo, hi))  # ~13.8
    loss = query_affinity_consistency(output(student_q), output(teacher_q), torch.arange(2))
    assert float(loss) == pytest.approx(2 * off_diagonal / 4, rel=1e-4)
    same = query_affinity_consistency(output(student_q), output(student_q), torch.arange(2))
    assert float(same) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------- supervised loss
def _dice_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    """MONAI's DiceCE (softmax, one-hot labels, background included, smoothing 1e-5, Dice
    per item and class then averaged; CE averaged over voxels), written out in NumPy."""
    k = logits.shape[1]
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.stack([(labels[:, 0] == c) for c in range(k)], 1).astype(np.float64)
    axes = tuple(range(2, logits.ndim))
    intersection = (p * onehot).sum(axes)
    denominator = p.sum(axes) + onehot.sum(axes)
    dice = 1 - (2 * intersection + 1e-5) / (denominator + 1e-5)
    ce = -(np.log(p) * onehot).sum(1).mean()
    return float(dice.mean() + ce)


def test_supervised_loss_composition_against_a_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (2, 1, 4, 4, 4), generator=g)
    cnn = torch.randn(2, 2, 4, 4, 4, generator=g)
    kmax = torch.log_softmax(torch.randn(2, 2, 4, 4, 4, generator=g), 1)
    groups = torch.softmax(3 * torch.randn(2, 2, 4, 4, 4, generator=g), 1)
    aux = [torch.randn(2, 2, 2, 2, 2, generator=g), torch.randn(2, 2, 4, 4, 4, generator=g)]
    out = ModelOutput(cnn, kmax, torch.zeros(2, 3, 4, 4, 4), groups, torch.zeros(2, 3, 2), aux)
    lambda_query, lambda_aux = 0.3, 0.7
    parts = supervised_loss(out, labels, lambda_query, lambda_aux)

    y = labels.numpy()
    expected_cnn = _dice_ce(cnn.double().numpy(), y)
    expected_kmax = _dice_ce(kmax.double().numpy(), y)
    # group CE: NLL of log(G + 1e-6) at the label, mean over voxels
    gn = groups.double().numpy()
    picked = np.take_along_axis(gn, y, axis=1)
    expected_query = float(-np.log(picked + 1e-6).mean())
    # the half-resolution aux head sees the labels by nearest neighbour: every second voxel
    expected_aux = (
        _dice_ce(aux[0].double().numpy(), y[:, :, ::2, ::2, ::2])
        + _dice_ce(aux[1].double().numpy(), y)
    ) / 2
    assert float(parts["dice_ce_cnn"]) == pytest.approx(expected_cnn, rel=1e-5)
    assert float(parts["dice_ce_kmax"]) == pytest.approx(expected_kmax, rel=1e-5)
    assert float(parts["query_ce"]) == pytest.approx(expected_query, rel=1e-5)
    assert float(parts["aux"]) == pytest.approx(expected_aux, rel=1e-5)
    total = expected_cnn + expected_kmax + lambda_query * expected_query + lambda_aux * expected_aux
    assert float(parts["total"]) == pytest.approx(total, rel=1e-5)
    # the parts differ, so swapped weights would give another total
    assert abs(expected_query - expected_aux) > 0.1


def test_supervised_loss_without_aux_heads() -> None:
    labels = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    labels[..., 0] = 1
    cnn = torch.zeros(1, 2, 2, 2, 2)
    groups = torch.full((1, 2, 2, 2, 2), 0.25)
    groups[:, 0] = 0.75
    out = ModelOutput(cnn, cnn, torch.zeros(1, 3, 2, 2, 2), groups, torch.zeros(1, 3, 2), [])
    parts = supervised_loss(out, labels, 2.0, 5.0)
    # p = 0.5 everywhere: CE ln 2; Dice per class 2 * 2 / (4 + 4) = 0.5 -> loss 0.5 each
    dice_ce = math.log(2) + (1 - (2 * 2 + 1e-5) / (8 + 1e-5))
    query = -(math.log(0.25 + 1e-6) + math.log(0.75 + 1e-6)) / 2
    assert float(parts["aux"]) == 0.0
    assert float(parts["total"]) == pytest.approx(2 * dice_ce + 2.0 * query, rel=1e-5)


# -------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "iteration, total, schedule, warmup, expected",
    [
        (0, 100, "poly", 0, 1.0),
        (50, 100, "poly", 0, 0.5**0.9),
        (90, 100, "poly", 0, 0.1**0.9),
        (100, 100, "poly", 0, 0.0),
        (150, 100, "poly", 0, 0.0),  # past the end: progress capped at 1
        (25, 100, "cosine", 0, 0.5 * (1 + math.cos(math.pi / 4))),
        (50, 100, "cosine", 0, 0.5),
        (75, 100, "cosine", 0, 0.5 * (1 + math.cos(3 * math.pi / 4))),
        (99, 100, "constant", 0, 1.0),
        (4, 100, "constant", 10, 0.5),  # warm-up: (t + 1) / warmup
        (0, 100, "constant", 10, 0.1),
        (9, 100, "constant", 10, 1.0),
        (4, 100, "poly", 10, 0.5 * 0.96**0.9),
        (30, 100, "cosine", 10, 0.5 * (1 + math.cos(0.3 * math.pi))),
        (3, 0, "poly", 0, 0.0),  # no iterations: over at once, no division by zero
        (1, 1, "poly", 0, 0.0),  # one iteration: the end after it
    ],
)
def test_lr_factor_against_the_formulas(
    iteration: int, total: int, schedule: str, warmup: int, expected: float
) -> None:
    assert lr_factor(iteration, total, schedule, warmup) == pytest.approx(expected, abs=1e-12)


def test_lr_factor_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, 10, "step")


@pytest.mark.parametrize(
    "iteration, rampup, maximum, expected",
    [
        (0, 100, 2.0, 2.0 * math.exp(-5.0)),
        (50, 100, 2.0, 2.0 * math.exp(-5.0 * 0.25)),
        (80, 100, 0.5, 0.5 * math.exp(-5.0 * 0.04)),
        (99, 100, 1.0, math.exp(-5.0 * 0.0001)),
        (100, 100, 3.0, 3.0),
        (500, 100, 3.0, 3.0),
        (-5, 100, 1.0, math.exp(-5.0)),  # before the start: as at 0
        (10, 0, 0.7, 0.7),  # no ramp-up
        (10, -1, 0.7, 0.7),
        (-3, 0, 0.7, 0.7),  # no ramp-up, even before the start (no division by zero)
        (0, 1, 1.0, math.exp(-5.0)),  # a one-iteration ramp-up still starts low
        (0, 0.5, 2.0, 2.0 * math.exp(-5.0)),
    ],
)
def test_sigmoid_rampup_against_the_formula(
    iteration: int, rampup: float, maximum: float, expected: float
) -> None:
    assert sigmoid_rampup(iteration, rampup, maximum) == pytest.approx(expected, abs=1e-12)
