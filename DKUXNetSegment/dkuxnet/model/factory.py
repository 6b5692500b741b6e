"""The one place where configuration meets modules: :func:`build_model` picks the network."""

from __future__ import annotations

from torch import nn

from dkuxnet.config import ModelConfig
from dkuxnet.model.network import DualKMaXUXNet


def build_model(config: ModelConfig) -> nn.Module:
    """The one place where configuration meets modules (``config.architecture`` picks one)."""
    if config.architecture == "unet":
        from dkuxnet.model.baseline import UNetBaseline  # MONAI's nets only when asked for

        return UNetBaseline(config)
    return DualKMaXUXNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
