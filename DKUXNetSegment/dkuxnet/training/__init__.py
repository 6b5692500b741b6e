"""Training: the dual-network trainer, its checkpoints, schedules and events."""

from dkuxnet.training.trainer import Trainer, split_validation

__all__ = ["Trainer", "split_validation"]
