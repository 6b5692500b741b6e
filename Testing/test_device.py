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
