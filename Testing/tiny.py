"""Tiny model settings and checkpoints shared by the tests (seconds on a 2-core CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dkuxnet.checkpoint import save_checkpoint
from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.model import build_model

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


#: The phantom run: the tiny dual model trained on clean synthetic phantoms (see phantom_run)
PHANTOM_SHAPE = (24, 40, 40)
PHANTOM_ITERATIONS = 40


def phantom_config(iterations: int = PHANTOM_ITERATIONS) -> TrainConfig:
    """The tiny network, fp32 everywhere (the same model on every CPU), dual training at a
    constant learning rate, no validation or checkpoint until the end."""
    base = TrainConfig.preset("lite")
    return TrainConfig(
        model=ModelConfig.preset("lite", **TINY_MODEL),
        data=base.data.replace(patch_size=(16, 32, 32), labeled_batch=2, unlabeled_batch=2),
        training=base.training.replace(
            mode="dual",
            iterations=iterations,
            val_every=10_000,
            checkpoint_every=10_000,
            lr=3e-3,
            schedule="constant",
            amp="off",
        ),
        inference=base.inference.replace(overlap=0.25, amp="off"),
    )


def train_phantom_run(root: Path) -> Path:
    """Train the phantom run into ``root / "run"`` (about 40 s on a 2-core CPU) and return it.

    Shared by the tests that need a model that has learnt something (the conftest fixture
    ``phantom_run`` trains it once per session): 3 labeled + 2 unlabeled phantoms of seed 3.
    """
    from dkuxnet.data import load_dataset
    from dkuxnet.synthetic import write_synthetic_dataset
    from dkuxnet.training import Trainer

    write_synthetic_dataset(root / "data", 3, 2, 0, shape=PHANTOM_SHAPE, seed=3)
    Trainer(phantom_config(), load_dataset(root / "data"), root / "run", "cpu").run()
    return root / "run"
