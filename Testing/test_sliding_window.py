"""The predictor's sliding window against a second, independent computation.

The stand-in network here is translation-*dependent*: a 3 x 3 x 3 convolution with zero
padding (so a voxel near a window's edge, or next to the image's padding, sees different
neighbours in different windows) plus a term that depends on the voxel's position inside the
window. Any change to how windows are placed, padded, weighted or stitched changes its
result, unlike a pointwise or constant stand-in. The expected result is computed with NumPy
and SciPy from the documented rule (MONAI's ``sliding_window_inference``): pad a small image
symmetrically with zeros to the window, slide by ``int(window * (1 - overlap))`` with the last
window flush with the end, blend each window's probabilities with a constant or a Gaussian
weight (sigma = 0.125 x window, floored at 1e-3), divide by the summed weights.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from tiny import tiny_model_config
from torch import nn

from dkuxnet.config import DataConfig, InferenceConfig, TrainConfig
from dkuxnet.inference import Predictor
from dkuxnet.model.output import ModelOutput

PATCH = (16, 16, 32)  # every side divisible by the (tiny) model's stride
KERNEL = np.random.default_rng(5).normal(0.0, 0.6, (3, 3, 3))


def _config(blend: str, overlap: float, head: str = "cnn") -> TrainConfig:
    return TrainConfig(
        model=tiny_model_config(prediction_head=head),
        data=DataConfig(patch_size=PATCH),
        inference=InferenceConfig(
            blend=blend, overlap=overlap, tta=False, crop_foreground=False, sw_batch_size=2
        ),
    )


def _position_term(shape: tuple[int, ...]) -> np.ndarray:
    """A logit offset that depends on where the voxel sits inside the window."""
    d, h, w = (np.linspace(-1.0, 1.0, n) for n in shape)
    return 1.5 * d[:, None, None] - 2.0 * h[None, :, None] ** 2 + 1.0 * w[None, None, :]


def _heads(fg_cnn: torch.Tensor, fg_kmax: torch.Tensor) -> ModelOutput:
    """A ModelOutput whose two heads give the foreground logits ``fg_*`` ``(n, 1, *P)``."""
    n, _, *size = fg_cnn.shape
    return ModelOutput(
        seg_cnn=torch.cat([torch.zeros_like(fg_cnn), fg_cnn], 1),
        seg_kmax=torch.cat([torch.zeros_like(fg_kmax), fg_kmax], 1),
        query_logits=torch.zeros(n, 2, *size),
        groups=torch.full((n, 2, *size), 0.5),
        class_logits=torch.zeros(n, 2, 2),
        aux_seg=[],
    )


class ConvWithPosition(nn.Module):
    """CNN head: ``conv3x3x3(x, zero padding) + position term``; the kMaX head: its negative."""

    kernel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.tensor(KERNEL, dtype=torch.float32)[None, None])

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (n, 1, *P)
        position = torch.tensor(_position_term(tuple(x.shape[2:])), dtype=torch.float32)
        fg = F.conv3d(x, self.kernel, padding=1) + position
        return _heads(fg, -fg)


def _starts(size: int, window: int, overlap: float) -> list[int]:
    if size == window:
        return [0]
    step = max(int(window * (1 - overlap)), 1)
    starts, start = [], 0
    while True:
        starts.append(min(start, size - window))
        if start + window >= size:
            return starts
        start += step


def _weights(blend: str) -> np.ndarray:
    if blend == "constant":
        return np.ones(PATCH)
    axes = [np.exp(-((np.arange(n) - (n - 1) / 2) ** 2) / (2 * (0.125 * n) ** 2)) for n in PATCH]
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weight, max(weight.min(), 1e-3))


def expected_foreground(image: np.ndarray, blend: str, overlap: float) -> np.ndarray:
    """The stitched foreground probability of :class:`ConvWithPosition`'s CNN head."""
    z = (image - image.mean()) / image.std()
    before = [max(p - s, 0) // 2 for s, p in zip(image.shape, PATCH, strict=True)]
    after = [max(p - s, 0) - b for s, p, b in zip(image.shape, PATCH, before, strict=True)]
    padded = np.pad(z, list(zip(before, after, strict=True)))
    weight = _weights(blend)
    position = _position_term(PATCH)
    total = np.zeros(padded.shape)
    weights = np.zeros(padded.shape)
    starts = [_starts(s, p, overlap) for s, p in zip(padded.shape, PATCH, strict=True)]
    for corner in itertools.product(*starts):
        box = tuple(slice(c, c + p) for c, p in zip(corner, PATCH, strict=True))
        logit = ndimage.correlate(padded[box], KERNEL, mode="constant", cval=0.0) + position
        total[box] += weight / (1 + np.exp(-logit))
        weights[box] += weight
    inside = tuple(slice(b, b + s) for b, s in zip(before, image.shape, strict=True))
    return (total / weights)[inside]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize(
    "shape", [(37, 21, 50), (9, 40, 20), (16, 16, 32)], ids=["larger", "padded", "one-window"]
)
def test_stitching_matches_an_independent_computation(
    shape: tuple[int, int, int], overlap: float, blend: str
) -> None:
    image = np.random.default_rng(7).normal(50.0, 10.0, shape).astype(np.float32)
    predictor = Predictor([ConvWithPosition()], _config(blend, overlap), "cpu")
    probs = predictor.predict_probabilities(image)
    expected = expected_foreground(image.astype(np.float64), blend, overlap)
    np.testing.assert_allclose(probs[1], expected, atol=2e-5)
    np.testing.assert_allclose(probs[0], 1 - expected, atol=2e-5)


def test_the_blend_and_the_overlap_change_the_result() -> None:
    """The comparison above has something to see: the four settings all differ."""
    image = np.random.default_rng(7).normal(50.0, 10.0, (37, 21, 50))
    results = [
        expected_foreground(image, blend, overlap)
        for blend in ("gaussian", "constant")
        for overlap in (0.5, 0.25)
    ]
    for a, b in itertools.combinations(results, 2):
        assert np.abs(a - b).max() > 1e-2


@pytest.mark.parametrize("head, expected", [("cnn", 0.2), ("kmax", 0.7), ("mean", 0.45)])
def test_the_configured_head_is_the_one_predicted(head: str, expected: float) -> None:
    class TwoHeads(nn.Module):
        def forward(self, x: torch.Tensor) -> ModelOutput:
            ones = torch.ones_like(x)
            return _heads(ones * math.log(0.2 / 0.8), ones * math.log(0.7 / 0.3))

    predictor = Predictor([TwoHeads()], _config("gaussian", 0.5, head), "cpu")
    probs = predictor.predict_probabilities(np.zeros((20, 14, 40), np.float32))
    np.testing.assert_allclose(probs[1], expected, atol=1e-5)
