"""The canonical voxel order: exact, invertible, and what makes prediction storage-invariant."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tiny import tiny_model_config

from dkuxnet.config import DataConfig, InferenceConfig, TrainConfig
from dkuxnet.inference import Predictor
from dkuxnet.io import Volume
from dkuxnet.model import build_model
from dkuxnet.orientation import is_canonical, to_canonical


def physical(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """Physical position of ITK index ``ijk`` (x, y, z)."""
    return np.asarray(volume.origin) + volume.direction @ (np.asarray(volume.spacing) * ijk)


def stored(volume: Volume, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """``volume`` in another voxel order: new ITK axis j = old axis perm[j], maybe reversed."""
    array, direction = volume.array, volume.direction.copy()
    origin, spacing = np.asarray(volume.origin, float), np.asarray(volume.spacing)
    for i, flip in enumerate(flips):  # flip old ITK axis i (array axis 2 - i)
        if flip:
            origin = origin + direction[:, i] * spacing[i] * (volume.size[i] - 1)
            direction[:, i] = -direction[:, i]
            array = np.flip(array, 2 - i)
    array = np.transpose(array, [2 - perm[2 - a] for a in range(3)])
    return Volume(
        np.ascontiguousarray(array), tuple(spacing[list(perm)]), tuple(origin),
        direction[:, list(perm)],
    )  # fmt: skip


ORDERS = [
    (perm, flips)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3)
]


@pytest.mark.parametrize(("perm", "flips"), ORDERS[1::5])
def test_to_canonical_is_exact_and_invertible(perm: tuple, flips: tuple) -> None:
    rng = np.random.default_rng(0)
    base = Volume(rng.random((5, 6, 7)).astype(np.float32), (0.7, 0.8, 1.5), (3.0, -2.0, 9.0))
    volume = stored(base, perm, flips)
    canonical, back = to_canonical(volume)
    assert is_canonical(canonical)
    np.testing.assert_allclose(canonical.direction, np.eye(3))
    np.testing.assert_array_equal(canonical.array, base.array)  # the same voxels, base order
    np.testing.assert_allclose(canonical.origin, base.origin, atol=1e-9)
    assert canonical.spacing == pytest.approx(base.spacing)
    np.testing.assert_array_equal(back(canonical.array), volume.array)
    stacked = np.stack([canonical.array, 2 * canonical.array])  # (C, Z, Y, X) maps too
    np.testing.assert_array_equal(back(stacked)[1], 2 * volume.array)
    # any voxel: same physical place before and after
    z, y, x = 1, 4, 2
    value = canonical.array[z, y, x]
    where = physical(canonical, np.array([x, y, z]))
    hits = np.argwhere(volume.array == value)
    assert any(np.allclose(physical(volume, h[::-1].astype(float)), where) for h in hits)


def test_oblique_and_ambiguous_directions_are_left_alone() -> None:
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    volume = Volume(np.zeros((3, 4, 5), np.float32), direction=rot)
    assert to_canonical(volume)[0] is volume  # already the closest order
    b = np.deg2rad(45)
    ambiguous = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    tie = Volume(np.zeros((3, 4, 5), np.float32), direction=ambiguous)
    canonical, back = to_canonical(tie)
    assert canonical is tie and back(tie.array) is tie.array


def test_prediction_does_not_depend_on_the_voxel_order() -> None:
    torch.manual_seed(0)
    config = TrainConfig(
        model=tiny_model_config(),
        data=DataConfig(patch_size=(16, 32, 32)),
        inference=InferenceConfig(largest_component=False, overlap=0.25),
    )
    predictor = Predictor([build_model(config.model)], config, "cpu", amp="off")
    rng = np.random.default_rng(1)
    base = Volume(rng.standard_normal((16, 32, 40)).astype(np.float32), (0.9, 0.9, 1.3))
    reference = predictor.predict_volume(base, probabilities=True)
    assert reference.probabilities is not None
    for perm, flips in [((1, 0, 2), (True, False, False)), ((0, 1, 2), (False, True, True))]:
        volume = stored(base, perm, flips)
        result = predictor.predict_volume(volume, probabilities=True)
        assert result.label.same_geometry(volume)
        assert result.probabilities is not None
        expected = stored(reference.probabilities, perm, flips).array
        np.testing.assert_allclose(result.probabilities.array, expected, atol=1e-5)
