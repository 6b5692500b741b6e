"""Learning-rate schedules and the consistency ramp-up."""

from __future__ import annotations

import math


def sigmoid_rampup(iteration: int, rampup_iterations: float, maximum: float) -> float:
    """``maximum * exp(-5 (1 - t/T_r)^2)`` for ``t < T_r``, then ``maximum`` (Laine & Aila)."""
    if rampup_iterations <= 0 or iteration >= rampup_iterations:
        return maximum
    phase = 1.0 - max(0.0, iteration) / rampup_iterations
    return maximum * math.exp(-5.0 * phase * phase)


def lr_factor(iteration: int, total: int, schedule: str, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``.

    ``poly``: ``(1 - t/T)^0.9`` (LA practice); ``cosine``: half cosine to 0; ``constant``: 1.
    A linear warm-up over the first ``warmup`` iterations multiplies any of them.
    """
    warm = min(1.0, (iteration + 1) / warmup) if warmup > 0 else 1.0
    progress = min(1.0, iteration / max(1, total))
    if schedule == "poly":
        factor = (1.0 - progress) ** 0.9
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return warm * factor
