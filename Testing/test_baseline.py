"""The study's extra arms: MONAI's UNet behind our interface, and supervised with A's strong view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from test_trainer import tiny_config

from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import TwoStreamSampler, load_dataset
from dkuxnet.errors import ConfigError
from dkuxnet.inference import Predictor
from dkuxnet.losses import dice_ce, supervised_loss
from dkuxnet.model import build_model
from dkuxnet.synthetic import write_synthetic_dataset
from dkuxnet.training import Trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, n_labeled=3, n_unlabeled=2, n_test=1, shape=(24, 40, 40), seed=3)
    return root


def test_unet_preset_is_monai_unet_with_our_output() -> None:
    config = ModelConfig.preset("unet")
    net = build_model(config)
    assert isinstance(net.unet, UNet)
    x = torch.randn(2, 1, 16, 32, 32)
    out = net(x)
    assert out.seg_cnn.shape == (2, 2, 16, 32, 32)
    torch.testing.assert_close(out.groups.sum(1), torch.ones(2, 16, 32, 32))
    torch.testing.assert_close(out.probabilities("mean"), torch.softmax(out.seg_cnn, 1))
    # the supervised loss is Dice+CE of the one set of logits, counted twice, plus CE
    labels = (torch.rand(2, 1, 16, 32, 32) > 0.7).long()
    loss = supervised_loss(out, labels, lambda_query=0.5, lambda_aux=0.2)
    torch.testing.assert_close(
        loss["dice_ce_cnn"], dice_ce(out.seg_cnn, labels), rtol=1e-4, atol=1e-5
    )
    assert float(loss["aux"]) == 0.0
    loss["total"].backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_bottleneck_gradients_stay_finite_under_cpu_bf16() -> None:
    """The CPU bf16 fault the lite network is guarded against (see test_speed_blocks) made the
    unguarded UNet train to NaN (CI: the pipeline test below, 1 run in 15 here; the grid's
    16-labeled cell): every convolution must be the guarded kind, and the gradients finite.
    (This direct probe did not reproduce the fault on the unguarded UNet in 3 tries; the type
    check is what fails without the guard.)"""
    torch.manual_seed(0)
    net = build_model(ModelConfig.preset("unet"))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(type(m) is not torch.nn.Conv3d for m in convs)  # all guarded
    x = torch.randn(2, 1, 32, 32, 32)  # stride 16: sides 16, 8, 4, 2 -> a bottleneck of 2
    for _ in range(5):
        for n in (1_000, 20_000, 100_000):
            poison = torch.full((n,), float("nan"))
            del poison
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(x).seg_cnn.float().square().mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_unknown_architecture_names_the_key() -> None:
    with pytest.raises(ConfigError, match="architecture"):
        ModelConfig(architecture="resnet")


def test_unet_trains_and_predicts_through_the_same_pipeline(dataset: Path, tmp_path: Path) -> None:
    base = tiny_config(mode="supervised", iterations=3)
    cfg = base.replace(model=ModelConfig.preset("unet"))
    assert Trainer(cfg, load_dataset(dataset), tmp_path / "run", device="cpu").run() == "completed"
    assert TrainConfig.load(tmp_path / "run" / "config.json").model.architecture == "unet"
    predictor = Predictor.from_checkpoint(tmp_path / "run", "cpu")
    probs = predictor.predict_probabilities(np.zeros((24, 40, 40), np.float32))
    assert probs.shape == (2, 24, 40, 40) and np.isfinite(probs).all()


def test_supervised_strong_view_perturbs_the_labeled_patches_only(dataset: Path) -> None:
    data = load_dataset(dataset)
    batches = {}
    for view in ("weak", "strong"):
        cfg = tiny_config(mode="supervised", supervised_view=view)
        trainer = Trainer(cfg, data, dataset.parent / f"unused_{view}", device="cpu")
        sampler = TwoStreamSampler(
            data.labeled, [], cfg.data.patch_size, labeled_batch=2, unlabeled_batch=0, seed=0
        )
        sampler.preload()
        batches[view] = trainer._prepare_batch(sampler, iteration=5)
    weak, strong = batches["weak"], batches["strong"]
    assert "strong" not in strong and "weak" not in strong  # still a one-network batch
    assert torch.equal(weak["labeled_label"], strong["labeled_label"])
    assert weak["labeled_image"].shape == strong["labeled_image"].shape
    assert not torch.allclose(weak["labeled_image"], strong["labeled_image"])


def test_supervised_view_is_checked() -> None:
    with pytest.raises(ConfigError, match="supervised_view"):
        tiny_config(supervised_view="medium")
