"""Prediction: sliding-window inference, test-time augmentation, post-processing."""

from dkuxnet.inference.predictor import (
    PredictionResult,
    Predictor,
    count_windows,
    keep_largest_component,
)
from dkuxnet.inference.scoring import score_cases

__all__ = [
    "PredictionResult",
    "Predictor",
    "count_windows",
    "keep_largest_component",
    "score_cases",
]
