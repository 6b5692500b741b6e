"""Voxel-grid arithmetic without torch: the size of a resampled grid and the number of sliding
windows over it.

The Slicer-side library uses it in Slicer's own process (the time a fine-tune spends
pseudo-labelling), where torch is not imported; inference and preprocessing use the same
functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def resampled_grid(
    size: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> list[int]:
    """Size of a grid of ``size`` voxels of ``spacing`` mm resampled to ``target`` mm (same
    axis order in all three; at least one voxel per axis)."""
    return [max(1, round(n * s / t)) for n, s, t in zip(size, spacing, target, strict=True)]


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of windows ``sliding_window_inference`` visits (its own scan rule).

    Args:
        image_size: spatial size ``(D, H, W)`` of the image.
        roi_size: window size ``(D, H, W)``.
        overlap: overlap fraction in ``[0, 1)``.
    """
    total = 1
    for size, roi in zip(image_size, roi_size, strict=True):
        size = max(int(size), int(roi))  # smaller images are padded to the window
        if size > roi:
            interval = max(int(roi * (1 - overlap)), 1)
            total *= math.ceil((size - roi) / interval) + 1
    return total
