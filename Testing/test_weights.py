"""Importing weights saved by the public 3D UX-Net / DK-UXNet code (their key names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import tiny_model_config

from dkuxnet.errors import CheckpointError
from dkuxnet.model import build_model, load_reference_weights
from dkuxnet.model.weights import remap_reference_key

# Their name -> ours, spelled out by hand from the public code's module names
# (uxnet_3d.downsample_layers / stages / norm{i}; encoder1..5; decoder5..1; out).
EXAMPLES = {
    "uxnet_3d.downsample_layers.0.0.weight": "encoder.downsamples.0.0.weight",
    "uxnet_3d.downsample_layers.2.1.bias": "encoder.downsamples.2.1.bias",
    "uxnet_3d.stages.1.0.dwconv.weight": "encoder.stages.1.0.dwconv.weight",
    "uxnet_3d.stages.3.1.pwconv1.weight": "encoder.stages.3.1.expand.weight",
    "uxnet_3d.stages.0.1.pwconv2.bias": "encoder.stages.0.1.project.bias",
    "uxnet_3d.stages.2.0.gamma": "encoder.stages.2.0.gamma",
    "uxnet_3d.norm3.weight": "encoder.out_norms.3.weight",
    "encoder1.layer.conv1.conv.weight": "cnn_decoder.skip_blocks.0.layer.conv1.conv.weight",
    "encoder5.layer.norm1.weight": "cnn_decoder.bottleneck.layer.norm1.weight",
    "decoder5.transp_conv.conv.weight": "cnn_decoder.up_blocks.0.transp_conv.conv.weight",
    "decoder2.conv_block.conv2.conv.weight": "cnn_decoder.up_blocks.3.conv_block.conv2.conv.weight",
    "decoder1.layer.conv3.conv.weight": "cnn_decoder.refine.layer.conv3.conv.weight",
    "out.conv.conv.weight": "cnn_decoder.head.conv.conv.weight",
    "module.out.conv.conv.bias": "cnn_decoder.head.conv.conv.bias",
}


@pytest.mark.parametrize("theirs,ours", sorted(EXAMPLES.items()))
def test_key_remapping(theirs: str, ours: str) -> None:
    assert remap_reference_key(theirs) == ours


def _public_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our encoder + CNN decoder weights under the public code's names, plus its kMaX keys."""
    inverse = {}
    for key in model.state_dict():
        for theirs in _candidates(key):
            if remap_reference_key(theirs) == key:
                inverse[theirs] = model.state_dict()[key].clone() + 1.0  # recognisable values
    inverse["_kmax_transformer_layers.0._pixel_conv1_bn_act.conv.weight"] = torch.zeros(3)
    inverse["_predcitor._transformer_class_head.conv.weight"] = torch.zeros(3)
    return inverse


def _candidates(key: str) -> list[str]:
    parts = key.split(".")
    if parts[0] == "encoder":
        names = {"downsamples": "downsample_layers", "stages": "stages", "out_norms": "norm"}
        rest = parts[1:]
        if rest[0] == "out_norms":
            return [f"uxnet_3d.norm{rest[1]}." + ".".join(rest[2:])]
        tail = ".".join(rest[1:]).replace(".expand.", ".pwconv1.").replace(".project.", ".pwconv2.")
        return [f"uxnet_3d.{names[rest[0]]}.{tail}"]
    if parts[0] == "cnn_decoder":
        table = {"skip_blocks": ["encoder1", "encoder2", "encoder3", "encoder4"],
                 "up_blocks": ["decoder5", "decoder4", "decoder3", "decoder2"]}  # fmt: skip
        if parts[1] in table:
            return [table[parts[1]][int(parts[2])] + "." + ".".join(parts[3:])]
        single = {"bottleneck": "encoder5", "refine": "decoder1", "head": "out"}
        if parts[1] in single:
            return [single[parts[1]] + "." + ".".join(parts[2:])]
    return []


def test_import_reports_loaded_missing_unexpected(tmp_path: Path) -> None:
    model = build_model(tiny_model_config())
    public = _public_state_dict(model)
    path = tmp_path / "uxnet.pth"
    torch.save({"state_dict": public}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_reference_weights(model, path)
    n_backbone = sum(1 for k in before if k.startswith(("encoder.", "cnn_decoder.")))
    assert len(report.loaded) == n_backbone
    assert all(k.startswith("kmax_decoder.") for k in report.missing)
    assert sorted(report.unexpected) == sorted(k for k in public if k.startswith("_"))
    after = model.state_dict()
    for key in report.loaded:
        assert torch.equal(after[key], before[key] + 1.0), key
    for key in report.missing:
        assert torch.equal(after[key], before[key]), key


def test_shape_mismatch_is_reported_not_loaded() -> None:
    model = build_model(tiny_model_config())
    public = _public_state_dict(model)
    public["uxnet_3d.stages.0.0.dwconv.weight"] = torch.zeros(8, 1, 13, 13, 13)  # kernel 13
    report = load_reference_weights(model, public)
    assert report.mismatched["uxnet_3d.stages.0.0.dwconv.weight"][0] == (8, 1, 13, 13, 13)
    assert "encoder.stages.0.0.dwconv.weight" in report.missing


def test_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    model = build_model(tiny_model_config())
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "note": "no tensors here"}, path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_reference_weights(model, path)
    with pytest.raises(CheckpointError, match="not found"):
        load_reference_weights(model, tmp_path / "missing.pth")
