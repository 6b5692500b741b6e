"""Prediction: sliding-window inference, test-time augmentation, post-processing, uncertainty."""

from dkuxnet.inference.predictor import (
    UNCERTAINTY_CHOICES,
    PredictionResult,
    Predictor,
    count_windows,
    keep_largest_component,
)
from dkuxnet.inference.ranking import ScanScore, find_scans, rank_scans, region_score
from dkuxnet.inference.scoring import score_cases

__all__ = [
    "UNCERTAINTY_CHOICES",
    "PredictionResult",
    "Predictor",
    "ScanScore",
    "count_windows",
    "find_scans",
    "keep_largest_component",
    "rank_scans",
    "region_score",
    "score_cases",
]
