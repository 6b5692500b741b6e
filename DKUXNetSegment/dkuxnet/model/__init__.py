"""The Dual kMaX UX-Net network (one network; the trainer pairs two)."""

from dkuxnet.config import ModelConfig
from dkuxnet.model.factory import build_model, count_parameters
from dkuxnet.model.network import DualKMaXUXNet
from dkuxnet.model.output import ModelOutput
from dkuxnet.model.weights import load_reference_weights

__all__ = [
    "DualKMaXUXNet",
    "ModelConfig",
    "ModelOutput",
    "build_model",
    "count_parameters",
    "load_reference_weights",
]
