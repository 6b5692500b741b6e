"""The network: shapes over a grid of settings, gradients, determinism, bad configs."""

from __future__ import annotations

import itertools

import pytest
import torch

from dkuxnet.config import ModelConfig
from dkuxnet.errors import ConfigError
from dkuxnet.model import build_model, count_parameters

# Tiny variants of both presets keep the grid fast on a 2-core CPU; the real presets are
# built (not run) in test_preset_parameter_counts.
TINY = {
    "paper": dict(feature_sizes=(8, 16, 24, 32), hidden_size=32, num_queries=8, query_dim=32,
                  embed_dim=16, kmax_heads=4, kmax_ffn_dim=32, kernel_size=7),
    "lite": dict(feature_sizes=(8, 16, 24, 32), hidden_size=24, num_queries=6, query_dim=16,
                 embed_dim=8, kmax_heads=2, kmax_ffn_dim=16, kernel_size=3),
}  # fmt: skip


def tiny(preset: str, **kw: object) -> ModelConfig:
    return ModelConfig.preset(preset, **{**TINY[preset], **kw})


GRID = list(
    itertools.product(
        ["paper", "lite"],  # preset
        [1, 2],  # batch
        [1, 2],  # in_channels
        [2, 3],  # classes
        [(32, 32, 32), (16, 32, 48)],  # cubic and non-cubic patch
    )
)


@pytest.mark.parametrize("preset,batch,cin,classes,size", GRID)
def test_output_shapes(preset: str, batch: int, cin: int, classes: int, size: tuple) -> None:
    cfg = tiny(preset, in_channels=cin, out_channels=classes)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, cin, *size))
    assert out.seg_cnn.shape == (batch, classes, *size)
    assert out.seg_kmax.shape == (batch, classes, *size)
    assert out.groups.shape == (batch, classes, *size)
    mask_size = tuple(s // cfg.mask_stride for s in size)
    assert out.query_logits.shape == (batch, cfg.num_queries, *mask_size)
    assert out.class_logits.shape == (batch, cfg.num_queries, classes)
    n_layers = len(cfg.kmax_strides) * cfg.kmax_layers_per_stride
    assert len(out.aux_seg) == n_layers
    for aux, stride in zip(
        out.aux_seg, [s for s in cfg.kmax_strides for _ in range(2)], strict=True
    ):
        assert aux.shape == (batch, classes, *(s // stride for s in size))
    # distributions sum to one over classes
    torch.testing.assert_close(out.groups.sum(1), torch.ones(batch, *size), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        out.seg_kmax.exp().sum(1), torch.ones(batch, *size), atol=1e-3, rtol=0
    )
    probs = out.probabilities("mean")
    assert probs.shape == (batch, classes, *size)


@pytest.mark.parametrize("mask_stride", [1, 2, 4])
def test_every_parameter_gets_a_gradient(mask_stride: int) -> None:
    """The method's losses (DiceCE on both heads, CE on groups, per-layer aux) reach every weight."""
    from dkuxnet.losses import supervised_loss

    cfg = tiny("lite", mask_stride=mask_stride, out_channels=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randn(2, 1, 16, 32, 32)
    y = torch.randint(0, 3, (2, 1, 16, 32, 32))
    losses = supervised_loss(model(x), y, lambda_query=0.5, lambda_aux=0.2)
    losses["total"].backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_eval_mode_is_deterministic() -> None:
    model = build_model(tiny("lite", drop_path_rate=0.2)).eval()
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a.seg_cnn, b.seg_cnn, rtol=0, atol=0)
    torch.testing.assert_close(a.seg_kmax, b.seg_kmax, rtol=0, atol=0)


def test_two_dimensional_variant() -> None:
    model = build_model(tiny("lite", spatial_dims=2))
    out = model(torch.randn(2, 1, 32, 48))
    assert out.seg_cnn.shape == (2, 2, 32, 48)


def test_preset_parameter_counts() -> None:
    """Stated ranges: paper ~59.6 M (public model 65.5 M with a larger kMaX head), lite ~5.5 M."""
    paper = count_parameters(build_model(ModelConfig.preset("paper")))
    lite = count_parameters(build_model(ModelConfig.preset("lite")))
    print(f"paper: {paper / 1e6:.2f} M parameters, lite: {lite / 1e6:.2f} M parameters")
    assert 55e6 < paper < 66e6
    assert 3e6 < lite < 6.25e6  # fp32 file under 25 MB


def test_bad_input_shape_is_named() -> None:
    model = build_model(tiny("lite"))
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 1, 16, 16, 20))
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="single voxel"):
        model(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        model(torch.randn(1, 16, 16, 16))


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(out_channels=1), "out_channels"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(depths=(2, 2)), "depths"),
        (dict(kmax_strides=(3,)), "kmax_strides"),
        (dict(mask_stride=16), "mask_stride"),
        (dict(query_groups=(10, 10)), "query_groups"),
        (dict(query_dim=30, kmax_heads=8), "kmax_heads"),
        (dict(prediction_head="both"), "prediction_head"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
    ],
)
def test_bad_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"model.{field}"):
        ModelConfig(**overrides)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.preset("huge")


def test_query_groups_default_and_custom() -> None:
    assert ModelConfig(num_queries=128, out_channels=3).group_sizes() == (44, 42, 42)
    cfg = tiny("lite", num_queries=6, query_groups=(4, 2))
    model = build_model(cfg)
    assert model.group_matrix.sum(0).tolist() == [4.0, 2.0]
