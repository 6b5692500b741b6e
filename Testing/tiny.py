"""Tiny model settings and checkpoints shared by the tests (seconds on a 2-core CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.model import build_model
from dkuxnet.training.checkpoint import save_checkpoint

# The lite design with every width shrunk; one input side must be >= 32 (2 x total stride).
TINY_MODEL: dict[str, Any] = dict(
    feature_sizes=(8, 16, 24, 32), hidden_size=24, num_queries=6, query_dim=16, embed_dim=8,
    kmax_heads=2, kmax_ffn_dim=16, kernel_size=3,
)  # fmt: skip


def tiny_model_config(**overrides: Any) -> ModelConfig:
    return ModelConfig.preset("lite", **{**TINY_MODEL, **overrides})


def save_random_checkpoint(
    path: Path, config: TrainConfig, networks: int = 2, seed: int = 0
) -> Path:
    """A model-only checkpoint of ``networks`` randomly initialised networks."""
    torch.manual_seed(seed)
    nets = [build_model(config.model) for _ in range(networks)]
    payload = {
        "kind": "model",
        "config": config.to_dict(),
        "networks": [n.state_dict() for n in nets],
        "iteration": 0,
    }
    return save_checkpoint(payload, path)
