"""``resolve_device``: auto, cpu, cuda and the errors a user can fix."""

from __future__ import annotations

import pytest
import torch

from dkuxnet.device import resolve_device
from dkuxnet.errors import ConfigError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("auto").type == expected


def test_cuda_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device 'cuda' requested but .*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["gpu", "mps", "", "cuda:x"])
def test_unknown_names(name: str) -> None:
    with pytest.raises(ConfigError):
        resolve_device(name)


def test_autocast_dtype_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    from dkuxnet import device as dev

    cpu = torch.device("cpu")
    assert dev.autocast_dtype(cpu, "off") is None
    assert dev.autocast_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 mixed precision needs a GPU"):
        dev.autocast_dtype(cpu, "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        dev.autocast_dtype(cpu, "half")
    # auto follows the detection, which the environment variable overrides
    for forced, expected in (("1", torch.bfloat16), ("0", None)):
        monkeypatch.setenv(dev.CPU_BF16_ENV, forced)
        dev.cpu_has_native_bf16.cache_clear()
        assert dev.autocast_dtype(cpu, "auto") is expected
    dev.cpu_has_native_bf16.cache_clear()


def test_old_boolean_amp_settings_still_load() -> None:
    from dkuxnet.config import TrainConfig

    cfg = TrainConfig.from_dict({"training": {"amp": True}, "inference": {"amp": False}})
    assert cfg.training.amp == "auto" and cfg.inference.amp == "off"
    with pytest.raises(ConfigError, match="training.amp"):
        TrainConfig.from_dict({"training": {"amp": "fp8"}})


def test_the_device_list_has_one_home() -> None:
    """Adding a device is an edit of dkuxnet/device.py: the panel fills its box from it."""
    import xml.etree.ElementTree as ET
    from pathlib import Path

    from dkuxnet.device import DEVICE_CHOICES, DEVICE_LABELS

    assert list(DEVICE_LABELS) == list(DEVICE_CHOICES)
    ui = Path(__file__).resolve().parents[1] / "DKUXNetSegment/Resources/UI/DKUXNetSegment.ui"
    box = ET.parse(ui).find(".//widget[@name='deviceComboBox']")
    assert box is not None and box.findall("item") == []
