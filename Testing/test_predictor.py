"""The predictor: geometry, sliding window, TTA, network choice, post-processing, checkpoints.

Most tests use small *oracle* networks whose output is a known function of the input, so the
expected prediction is exact; the checkpoint tests use a tiny real Dual kMaX UX-Net.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny import save_random_checkpoint, tiny_model_config
from torch import nn

from dkuxnet.checkpoint import FORMAT_VERSION
from dkuxnet.config import NETWORK_CHOICES, DataConfig, InferenceConfig, TrainConfig
from dkuxnet.errors import CheckpointError, ConfigError, InputError
from dkuxnet.inference import Predictor, count_windows, keep_largest_component
from dkuxnet.inference.predictor import NETWORK_SELECTORS
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.model import build_model
from dkuxnet.preprocessing import resample_onto, resample_to_spacing

PATCH = (16, 16, 32)  # the tiny real model needs one side >= 2 x its stride


def tiny_config(patch: tuple[int, int, int] = PATCH, **inference: object) -> TrainConfig:
    model = tiny_model_config()
    return TrainConfig(
        model=model,
        data=DataConfig(patch_size=patch),
        inference=InferenceConfig(**inference),  # type: ignore[arg-type]
    )


class _Output:
    """The part of ``ModelOutput`` the predictor uses."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def probabilities(self, head: str = "mean") -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=1)


class Pointwise(nn.Module):
    """Foreground logit = ``scale * (x - threshold)`` voxel by voxel (x: normalised image)."""

    def __init__(self, scale: float = 20.0, threshold: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale), requires_grad=False)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> _Output:
        fg = self.scale * (x - self.threshold)
        return _Output(torch.cat([torch.zeros_like(fg), fg], dim=1))


class Constant(nn.Module):
    """Foreground probability ``p`` everywhere."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(math.log(p / (1 - p))), requires_grad=False)

    def forward(self, x: torch.Tensor) -> _Output:
        fg = torch.full_like(x, float(self.logit))
        return _Output(torch.cat([torch.zeros_like(fg), fg], dim=1))


class Ramp(nn.Module):
    """Foreground logit grows along every axis of the window: not flip-symmetric."""

    def forward(self, x: torch.Tensor) -> _Output:
        d, h, w = x.shape[2:]
        grid = torch.meshgrid(
            torch.linspace(-1, 1, d),
            torch.linspace(-1, 0, h),
            torch.linspace(0, 2, w),
            indexing="ij",
        )
        fg = (grid[0] + 2 * grid[1] + 3 * grid[2])[None, None].expand_as(x) + 0 * x
        return _Output(torch.cat([torch.zeros_like(fg), fg], dim=1))


def oblique_volume(shape: tuple[int, int, int] = (20, 26, 30)) -> tuple[Volume, Volume]:
    """An anisotropic, rotated image with a bright box, and the box's label (same grid)."""
    angle = math.radians(25)
    rz = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    rx = np.array(
        [[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]]
    )
    direction = rz @ rx
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 5.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[5:12, 8:17, 11:22] = 1
    image[label == 1] += 200.0
    geometry = {"spacing": (0.8, 1.1, 2.5), "origin": (-40.0, 12.5, 7.0), "direction": direction}
    return Volume(image, **geometry), Volume(label, **geometry)  # type: ignore[arg-type]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


# ---------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_oblique_anisotropic_geometry_through_files(tmp_path: Path, suffix: str) -> None:
    image, label = oblique_volume()
    write_volume(image, tmp_path / f"image{suffix}")
    write_volume(label, tmp_path / f"label{suffix}")
    predictor = Predictor([Pointwise(threshold=2.0)], tiny_config(), "cpu")
    volume = read_volume(tmp_path / f"image{suffix}")
    result = predictor.predict_volume(volume, probabilities=True)
    write_volume(result.label, tmp_path / f"pred{suffix}")
    pred = read_volume(tmp_path / f"pred{suffix}")
    reference = read_volume(tmp_path / f"label{suffix}")
    assert pred.array.dtype == np.uint8
    assert pred.same_geometry(reference), pred.geometry_differences(reference)
    assert pred.same_geometry(volume)
    # the box lands on the voxels (and so the physical place) of the label written beside it
    assert dice(pred.array, reference.array) == 1.0
    assert result.probabilities is not None
    assert result.probabilities.array.dtype == np.float32
    assert result.probabilities.same_geometry(volume)


def test_target_spacing_resamples_and_comes_back_on_the_input_grid() -> None:
    image, label = oblique_volume((24, 30, 34))
    config = tiny_config()
    config = config.replace(data=config.data.replace(target_spacing=(1.0, 1.0, 1.5)))
    result = Predictor([Pointwise(threshold=2.0)], config, "cpu").predict_volume(
        image, probabilities=True
    )
    assert result.label.same_geometry(image)
    assert result.label.array.shape == image.array.shape
    assert result.probabilities is not None and result.probabilities.same_geometry(image)
    assert dice(result.label.array, label.array) > 0.8


def test_coarse_prediction_comes_back_with_a_smooth_boundary() -> None:
    """Trained at 4x the input spacing, the label is the argmax of the class probabilities
    mapped back linearly: the boundary lands between coarse voxels, not on their faces."""
    shape, spacing, radius = (48, 48, 48), 0.5, 8.3  # a ball, image = radius - distance (mm)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)
    dist = np.sqrt(
        (((grid - np.array([23.3, 24.1, 22.6])[:, None, None, None]) * spacing) ** 2).sum(0)
    )
    image = Volume(radius - dist, spacing=(spacing,) * 3, origin=(5.0, -3.0, 2.0))  # type: ignore[arg-type]
    truth = (dist < radius).astype(np.uint8)
    config = tiny_config(patch=(16, 16, 16))
    config = config.replace(data=config.data.replace(target_spacing=(2.0, 2.0, 2.0)))
    coarse = resample_to_spacing(image, (2.0, 2.0, 2.0))
    threshold = float((0.0 - coarse.array.mean()) / coarse.array.std())  # intensity 0 -> z
    predictor = Predictor([Pointwise(scale=2.0, threshold=threshold)], config, "cpu")
    result = predictor.predict_volume(image, probabilities=True)
    assert result.label.same_geometry(image)
    # the old way (coarse argmax, nearest neighbour back) for comparison
    coarse_label = (predictor.predict_probabilities(coarse.array)[1] > 0.5).astype(np.uint8)
    nearest = resample_onto(
        coarse.with_array(coarse_label), image, interpolator=sitk.sitkNearestNeighbor
    )
    assert dice(result.label.array, truth) > 0.97
    assert dice(result.label.array, truth) > dice(nearest, truth) + 0.02
    # every input voxel, up to the outer faces, gets probabilities from the coarse grid
    everywhere = Predictor([Constant(0.9)], config, "cpu", largest_component=False)
    assert everywhere.predict_volume(image).label.array.all()


# ------------------------------------------------------------------------------ sliding window
@pytest.mark.parametrize(
    "shape",
    [(16, 16, 32), (9, 13, 7), (37, 21, 50), (16, 40, 5)],
    ids=["patch", "smaller", "larger-non-divisible", "mixed"],
)
def test_sliding_window_is_exact_for_a_pointwise_network(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    calls: list[tuple[int, int]] = []
    predictor = Predictor([Pointwise(scale=1.0)], tiny_config(sw_batch_size=3), "cpu")
    probs = predictor.predict_probabilities(image, lambda d, t: calls.append((d, t)))
    assert probs.shape == (2, *shape) and probs.dtype == np.float32
    z = (image - image.mean()) / image.std()
    expected = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(probs[1], expected, atol=1e-4)
    total = count_windows(shape, PATCH, 0.5)
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_real_tiny_model_on_odd_sizes() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    predictor = Predictor([build_model(config.model)], config, "cpu")
    for shape in [(7, 12, 10), (20, 13, 40)]:  # smaller than the patch; 2 x 1 x 2 windows
        probs = predictor.predict_probabilities(np.random.default_rng(2).random(shape))
        assert probs.shape == (2, *shape)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        label = predictor.label_from_probabilities(probs)
        assert label.shape == shape and label.dtype == np.uint8


def test_count_windows_matches_monai() -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size in [(16, 16, 16), (37, 21, 50), (80, 112, 112), (88, 576, 576), (5, 200, 17)]:
        roi = (16, 32, 16)
        padded = tuple(max(s, r) for s, r in zip(size, roi, strict=True))
        interval = _get_scan_interval(padded, roi, 3, (0.5,) * 3)
        assert count_windows(size, roi, 0.5) == len(dense_patch_slices(padded, roi, interval))


# ---------------------------------------------------------------------------- TTA / networks
def test_tta_makes_prediction_flip_equivariant() -> None:
    image = np.random.default_rng(3).random(PATCH).astype(np.float32)
    flipped = image[::-1, :, ::-1].copy()
    plain = Predictor([Ramp()], tiny_config(), "cpu", tta=False)
    tta = Predictor([Ramp()], tiny_config(), "cpu", tta=True)
    a, b = plain.predict_probabilities(image), plain.predict_probabilities(flipped)
    assert not np.allclose(a[:, ::-1, :, ::-1], b, atol=1e-3)
    a, b = tta.predict_probabilities(image), tta.predict_probabilities(flipped)
    np.testing.assert_allclose(a[:, ::-1, :, ::-1], b, atol=1e-5)
    assert len(tta._flips) == 8


#: Foreground probability of networks A (0.2) and B (0.6) under each choice; one entry per
#: NETWORK_CHOICES entry (test_every_network_choice_is_handled fails when one is missing).
CHOICE_EXPECTED = {"both": 0.4, "a": 0.2, "b": 0.6}


@pytest.mark.parametrize("choice", NETWORK_CHOICES)
def test_network_choice(choice: str) -> None:
    predictor = Predictor(
        [Constant(0.2), Constant(0.6)], tiny_config(), "cpu", networks_choice=choice
    )
    probs = predictor.predict_probabilities(np.zeros((10, 20, 12), np.float32))
    np.testing.assert_allclose(probs[1], CHOICE_EXPECTED[choice], atol=1e-5)


def test_every_network_choice_is_handled() -> None:
    """The predictor selects networks for exactly the choices the config and CLI accept."""
    assert set(NETWORK_SELECTORS) == set(NETWORK_CHOICES)
    assert set(CHOICE_EXPECTED) == set(NETWORK_CHOICES)
    dual = [Constant(0.2), Constant(0.6)]
    for choice in NETWORK_CHOICES:
        chosen = Predictor(dual, tiny_config(), "cpu", networks_choice=choice).networks
        assert chosen and all(any(net is d for d in dual) for net in chosen), choice


def test_network_choice_errors() -> None:
    with pytest.raises(ConfigError, match="single network"):
        Predictor([Constant(0.2)], tiny_config(), "cpu", networks_choice="b")
    with pytest.raises(ConfigError, match="inference.networks: must be one of"):
        Predictor([Constant(0.2)], tiny_config(), "cpu", networks_choice="c")
    single = Predictor([Constant(0.2)], tiny_config(), "cpu", networks_choice="both")
    np.testing.assert_allclose(single.predict_probabilities(np.zeros((4, 4, 4)))[1], 0.2, atol=1e-5)


def test_eval_mode_is_restored() -> None:
    net = Pointwise()
    net.train()
    predictor = Predictor([net], tiny_config(), "cpu")
    net.train()  # a trainer validating with its live networks
    predictor.predict_label(np.zeros((8, 8, 8)))
    assert net.training


# --------------------------------------------------------------------------- post-processing
def test_largest_component_removes_a_spurious_blob() -> None:
    image = np.zeros((20, 24, 24), np.float32)
    image[3:11, 3:12, 3:12] = 1.0  # the organ
    image[15:18, 18:21, 18:21] = 1.0  # a spurious blob
    config = tiny_config()
    kept = Predictor([Pointwise(threshold=0.5)], config, "cpu").predict_label(image)
    assert kept.sum() == 8 * 9 * 9 and kept[16, 19, 19] == 0
    both = Predictor(
        [Pointwise(threshold=0.5)], config, "cpu", largest_component=False
    ).predict_label(image)
    assert both.sum() == 8 * 9 * 9 + 27


def test_keep_largest_component_per_class() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    label[0:3, 0:3, 0:3] = 1
    label[8, 8, 8] = 1
    label[5:7, 5:7, 5:7] = 2
    label[0, 9, 0] = 2
    out = keep_largest_component(label, 3)
    assert (out == 1).sum() == 27 and (out == 2).sum() == 8
    label[3, 3, 3] = 1  # diagonal neighbour: 26-connected to the block
    assert (keep_largest_component(label, 3) == 1).sum() == 28


# ------------------------------------------------------------------------------- bad inputs
def test_bad_images() -> None:
    predictor = Predictor([Pointwise()], tiny_config(), "cpu")
    with pytest.raises(InputError, match="3D"):
        predictor.predict_probabilities(np.zeros((10, 10)))
    with pytest.raises(InputError, match="NaN"):
        predictor.predict_probabilities(np.full((8, 8, 8), np.nan))


def test_multichannel_model_is_refused() -> None:
    config = tiny_config()
    config = config.replace(model=config.model.replace(in_channels=2))
    with pytest.raises(ConfigError, match="single-channel"):
        Predictor([Pointwise()], config, "cpu")


# ------------------------------------------------------------------------------ checkpoints
def _tiny_checkpoint(path: Path, n: int = 2) -> TrainConfig:
    config = tiny_config()
    save_random_checkpoint(path, config, networks=n)
    return config


def test_from_checkpoint_file_and_run_folder(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "run" / "last.pt")
    image = np.random.default_rng(4).random((12, 14, 20)).astype(np.float32)  # one window
    a = Predictor.from_checkpoint(tmp_path / "run" / "last.pt", "cpu")
    b = Predictor.from_checkpoint(tmp_path / "run", "cpu", networks_choice="a", tta=True)
    assert len(a.networks) == 2 and len(b.networks) == 1 and b.tta
    pa = a.predict_probabilities(image)
    assert pa.shape == (2, 12, 14, 20)
    np.testing.assert_allclose(pa, a.predict_probabilities(image), atol=1e-6)  # deterministic


def test_foreign_checkpoint(tmp_path: Path) -> None:
    torch.save({"weight": torch.randn(3, 3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a DKUXNetSegment checkpoint"):
        Predictor.from_checkpoint(tmp_path / "foreign.pt", "cpu")


def test_newer_checkpoint_format(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "model.pt", n=1)
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    record["format_version"] = FORMAT_VERSION + 1
    torch.save(record, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        Predictor.from_checkpoint(tmp_path / "newer.pt", "cpu")


def test_weights_that_do_not_fit_their_config(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "model.pt", n=1)
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    record["config"]["model"]["hidden_size"] = 32
    torch.save(record, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        Predictor.from_checkpoint(tmp_path / "mismatch.pt", "cpu")


def test_resampling_helpers_keep_the_physical_box() -> None:
    from dkuxnet.preprocessing import resample_onto, resample_to_spacing

    image, _ = oblique_volume((10, 12, 14))
    coarse = resample_to_spacing(image, (1.6, 2.2, 2.5))
    assert coarse.size == (7, 6, 10)
    back = resample_onto(coarse, image, interpolator=sitk.sitkLinear)
    assert back.shape == image.array.shape


def test_label_from_probabilities_is_argmax() -> None:
    rng = np.random.default_rng(5)
    probs = rng.random((3, 6, 7, 8)).astype(np.float32)
    probs[:, 0, 0, 0] = [0.3, 0.3, 0.3]  # ties go to the lower class
    config = tiny_config()
    config = config.replace(model=config.model.replace(out_channels=3))
    predictor = Predictor([Pointwise()], config, "cpu", largest_component=False)
    label = predictor.label_from_probabilities(probs)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, np.argmax(probs, axis=0))


# ------------------------------------------------------------------------- foreground crop
def test_crop_volume_keeps_every_voxel_in_place() -> None:
    from dkuxnet.preprocessing import crop_volume, foreground_box

    rng = np.random.default_rng(0)
    array = np.zeros((10, 12, 14), np.float32)
    array[2:7, 3:9, 4:13] = rng.random((5, 6, 9)) + 1.0
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(array, (0.7, 1.1, 2.5), (5.0, -3.0, 12.0), direction)
    box = foreground_box(array)
    assert box == (slice(2, 7), slice(3, 9), slice(4, 13))
    crop = crop_volume(volume, box)
    np.testing.assert_array_equal(crop.array, array[box])
    full, sub = volume.to_sitk(), crop.to_sitk()
    for ijk in [(0, 0, 0), (8, 5, 4)]:  # (i, j, k) of the crop
        shifted = (ijk[0] + 4, ijk[1] + 3, ijk[2] + 2)
        np.testing.assert_allclose(
            sub.TransformIndexToPhysicalPoint(ijk), full.TransformIndexToPhysicalPoint(shifted)
        )
    assert foreground_box(array[box]) is None  # content touches every face: no further crop
    assert foreground_box(np.ones((4, 4, 4))) is None  # constant image


def test_constant_padding_is_never_segmented() -> None:
    """A network that calls everything foreground still leaves constant padding empty."""
    image = np.zeros((20, 40, 40), np.float32)
    image[5:15, 10:30, 12:28] = np.random.default_rng(1).random((10, 20, 16)) + 1.0
    volume = Volume(image, (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), np.eye(3))
    cropped = Predictor([Constant(0.9)], tiny_config(), "cpu").predict_volume(volume)
    assert cropped.label.same_geometry(volume)
    assert cropped.label.array[5:15, 10:30, 12:28].all()
    assert cropped.label.array.sum() == 10 * 20 * 16
    uncropped = Predictor([Constant(0.9)], tiny_config(crop_foreground=False), "cpu")
    assert uncropped.predict_volume(volume).label.array.all()


# ------------------------------------------------------- mutation testing (docs/mutation.md)
def test_keep_largest_component_cleans_every_class_and_keeps_one_of_equal_blobs() -> None:
    label = np.zeros((9, 9, 9), np.uint8)
    label[0:2, 0:2, 0:2] = 1  # class 1: one component, nothing to remove
    label[5:7, 5:7, 5:7] = 2  # class 2: a block of 8 ...
    label[0, 8, 0] = 2  # ... and a stray voxel, still removed after class 1
    out = keep_largest_component(label, 3)
    assert (out == 1).sum() == 8 and (out == 2).sum() == 8 and out[0, 8, 0] == 0
    # two single voxels: one of them stays (the background is not a component)
    dots = np.zeros((5, 5, 5), np.uint8)
    dots[0, 0, 0] = dots[4, 4, 4] = 1
    assert keep_largest_component(dots, 2).sum() == 1


def test_probabilities_are_the_classes_only_for_a_predictor_with_a_measure() -> None:
    predictor = Predictor(
        [Constant(0.2), Constant(0.7)], tiny_config(), "cpu", uncertainty="disagreement"
    )
    probs = predictor.predict_probabilities(np.zeros((10, 20, 12), np.float32))
    assert probs.shape == (2, 10, 20, 12)
    np.testing.assert_allclose(probs[1], 0.45, atol=1e-5)


class AutocastProbe(nn.Module):
    """Records whether each forward pass runs under CPU autocast, and at which dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> _Output:
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return _Output(torch.cat([torch.zeros_like(x), torch.zeros_like(x)], dim=1))


def test_windows_run_at_the_configured_precision() -> None:
    off = AutocastProbe()
    with warnings.catch_warnings():
        # an fp32 run must not ask for autocast (torch: "not supported ... Disabling autocast",
        # once per window)
        warnings.filterwarnings("error", message=".*autocast.*")
        Predictor([off], tiny_config(amp="off"), "cpu").predict_probabilities(np.zeros((8, 8, 8)))
    assert off.seen and all(not enabled for enabled, _ in off.seen)
    bf16 = AutocastProbe()
    Predictor([bf16], tiny_config(amp="bf16"), "cpu").predict_probabilities(np.zeros((8, 8, 8)))
    assert bf16.seen and all(seen == (True, torch.bfloat16) for seen in bf16.seen)


def test_bad_images_are_refused_saying_what_is_wrong() -> None:
    predictor = Predictor([Pointwise()], tiny_config(), "cpu")
    cases = [
        (np.zeros((0, 8, 8), np.float32), "the image is empty (a side of length 0)"),
        (np.zeros((8, 8, 8), bool), "need a real-valued image, got dtype bool"),
        (np.zeros((8, 8, 8), np.complex64), "need a real-valued image, got dtype complex64"),
        (np.full((8, 8, 8), np.inf, np.float32), "the image has NaN or infinite values"),
    ]
    for image, message in cases:
        with pytest.raises(InputError) as error:
            predictor.predict_probabilities(image)
        assert str(error.value) == message
    # one voxel is not empty, and whole numbers are real values
    assert predictor.predict_probabilities(np.ones((1, 1, 1), np.float32)).shape == (2, 1, 1, 1)
    ints = np.arange(8 * 8 * 8, dtype=np.int16).reshape(8, 8, 8)
    np.testing.assert_allclose(
        predictor.predict_probabilities(ints),
        predictor.predict_probabilities(ints.astype(np.float32)),
        atol=1e-6,
    )


def test_progress_counts_the_windows_batch_by_batch(caplog: pytest.LogCaptureFixture) -> None:
    # (37, 21, 50) in windows of (16, 16, 32) at overlap 0.5: z starts 0, 8, 16, 21 (4); y 0, 5
    # (2); x 0, 16, 18 (3): 24 windows, 3 per batch
    calls: list[tuple[int, int]] = []
    predictor = Predictor([Pointwise()], tiny_config(sw_batch_size=3), "cpu")
    image = np.random.default_rng(1).random((37, 21, 50)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger="dkuxnet.inference.predictor"):
        predictor.predict_probabilities(image, lambda done, total: calls.append((done, total)))
    assert calls == [(3 * i, 24) for i in range(1, 9)]
    assert "predicted (37, 21, 50) in 24 windows" in caplog.messages


def test_count_windows_at_a_high_overlap() -> None:
    # overlap 0.95 of 16 voxels: a step of int(0.8) = 0 voxels, taken as 1 (MONAI's rule), so
    # 20 voxels take the starts 0, 1, 2, 3, 4
    assert count_windows((20, 16, 16), (16, 16, 16), 0.95) == 5


def test_flip_variance_of_two_networks_is_that_of_their_mean() -> None:
    """Two identical networks average to the network itself: the same flip variance."""
    image = np.random.default_rng(1).random((10, 20, 40)).astype(np.float32)

    def flip_variance(networks: list[nn.Module]) -> np.ndarray:
        predictor = Predictor(networks, tiny_config(), "cpu", tta=True, uncertainty="flip-variance")
        uncertainty = predictor.predict_maps(image)[1]
        assert uncertainty is not None
        return uncertainty

    single = flip_variance([Ramp()])
    assert float(single.max()) > 1e-3  # the ramp's flips disagree
    np.testing.assert_allclose(flip_variance([Ramp(), Ramp()]), single, atol=1e-6)
