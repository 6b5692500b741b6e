"""Where to look and whether the answer is plausible: a region of interest and a volume check.

The bundled model learned the left atrium from scans cropped around the heart. On a scan that
shows the whole chest it can mistake other tissue for the atrium (``scripts/
robustness_check.py``: 3.8 % Dice on the test scans pasted into a synthetic full field of view,
against 91.3 % on the crops). Two things help a user there:

* a **region of interest**: a box around the heart, given as two opposite corners in RAS
  millimetres (what 3D Slicer and ITK-SNAP display), turned into a voxel box of the image by
  :func:`box_from_ras`; the predictor segments inside it only (``Predictor.predict_volume(...,
  roi=box)``), everything else is background, and the output keeps the input's full grid;
* a **volume check** (:func:`volume_warning`): a prediction far larger (or smaller) than any
  left atrium in the model's training labels, or empty, is reported as a warning that says
  what to do, instead of being passed on silently.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from dkuxnet.errors import InputError
from dkuxnet.io import Volume

Box = tuple[slice, slice, slice]  # (z, y, x) slices of Volume.array

#: A prediction more than this many times the largest training label is reported.
TOO_LARGE = 2.0
#: A prediction less than this fraction of the smallest training label is reported.
TOO_SMALL = 0.25


def parse_ras_box(text: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``"R1,A1,S1,R2,A2,S2"`` (mm) -> two opposite corners; :class:`InputError` if malformed
    or flat (equal coordinates on an axis)."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise InputError(
            f"region of interest {text!r}: expected six numbers R1,A1,S1,R2,A2,S2 (two opposite "
            "corners of a box, RAS millimetres)"
        )
    if any(values[axis] == values[axis + 3] for axis in range(3)):
        raise InputError(
            f"region of interest {text!r}: the box has no extent along at least one axis "
            "(R1 = R2, A1 = A2 or S1 = S2)"
        )
    return (values[0], values[1], values[2]), (values[3], values[4], values[5])


def box_from_ras(
    volume: Volume, corner_a: Sequence[float], corner_b: Sequence[float]
) -> Box | None:
    """The voxel box of ``volume`` covered by an axis-aligned RAS box (two opposite corners).

    Every voxel whose extent meets the box is in (the box is rounded outward to whole voxels);
    for an oblique image the voxel box is the bounding box of the RAS box's eight corners in
    index space. ``None`` when the box covers the whole image.

    Raises:
        InputError: the box does not overlap the image, or has no extent.
    """
    a, b = np.asarray(corner_a, np.float64), np.asarray(corner_b, np.float64)
    if np.any(a == b):
        raise InputError("region of interest: the box has no extent along at least one axis")
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    corners = np.array(
        [[(a, b)[c][axis] for axis, c in enumerate(choice)] for choice in itertools.product((0, 1), repeat=3)]
    ) * ras_to_lps  # fmt: skip
    # continuous (i, j, k) of each corner: point = origin + direction @ (spacing * ijk)
    inverse = np.linalg.inv(np.asarray(volume.direction) * np.asarray(volume.spacing))
    ijk = (corners - np.asarray(volume.origin)) @ inverse.T
    low, high = ijk.min(axis=0), ijk.max(axis=0)
    size_ijk = volume.array.shape[::-1]
    slices = []
    for axis in range(3):
        # voxel n spans [n - 0.5, n + 0.5]: it meets [low, high] when n + 0.5 > low and n - 0.5 < high
        start = max(math.floor(low[axis] + 0.5), 0)
        stop = min(math.ceil(high[axis] - 0.5) + 1, size_ijk[axis])
        if start >= stop:
            raise InputError(
                f"region of interest {_ras_text(a)} to {_ras_text(b)} (RAS mm) does not overlap "
                f"the image ({_ras_extent(volume)}): check the box's coordinates"
            )
        slices.append(slice(start, stop))
    box: Box = (slices[2], slices[1], slices[0])
    if all(s.start == 0 and s.stop == n for s, n in zip(box, volume.array.shape, strict=True)):
        return None
    return box


def volume_ml(label: np.ndarray, spacing: Sequence[float]) -> float:
    """Foreground volume (every nonzero voxel) in millilitres."""
    return float(np.count_nonzero(label)) * float(np.prod(spacing)) / 1000.0


def volume_warning(
    label: Volume, expected_ml: Sequence[float] | None, what: str = "the segmentation"
) -> str | None:
    """A warning when ``label`` is empty or its volume is far outside ``expected_ml``
    (``[smallest, largest]`` foreground volume of the model's training labels), else ``None``.
    """
    found = volume_ml(label.array, label.spacing)
    if found == 0:
        return (
            f"{what} is empty: nothing was found. Check that the scan shows the structure the "
            "model was trained on, or place the region of interest around it"
        )
    if not expected_ml:
        return None
    smallest, largest = float(expected_ml[0]), float(expected_ml[1])
    if found > TOO_LARGE * largest:
        return (
            f"{what} is {found:.0f} ml, more than {TOO_LARGE:g} times the largest in the "
            f"model's training labels ({largest:.0f} ml): the scan probably shows more than the "
            "model was trained on (it learned from scans cropped around the heart). Place a "
            "region of interest around the heart and segment again"
        )
    if found < TOO_SMALL * smallest:
        return (
            f"{what} is only {found:.1f} ml, less than a quarter of the smallest in the model's "
            f"training labels ({smallest:.0f} ml): part of the structure may be outside the "
            "image or the region of interest, or the scan differs from the training scans"
        )
    return None


def _ras_text(point: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ")"


def _ras_extent(volume: Volume) -> str:
    """The image's RAS bounding box of voxel centres, as text."""
    size = np.array(volume.array.shape[::-1], np.float64) - 1
    corners = np.array(list(itertools.product(*[(0.0, s) for s in size])))
    ras = volume.index_to_physical(corners) * np.array([-1.0, -1.0, 1.0])
    return f"voxel centres from {_ras_text(ras.min(axis=0))} to {_ras_text(ras.max(axis=0))} RAS mm"
