"""Where to look and whether the answer is plausible: a region of interest and a volume check.

The bundled model learned the left atrium from scans cropped around the heart. On a scan that
shows the whole chest it can mistake other tissue for the atrium (measured by ``scripts/
robustness_check.py`` on the test scans pasted into a synthetic full field of view: the model
card's "Robustness", ``Resources/Models/README.md``). Two things help a user there:

* a **region of interest**: a box around the heart in RAS millimetres (what 3D Slicer and
  ITK-SNAP display), either aligned to the RAS axes and given by two opposite corners, or in
  any orientation and given by its eight corners (a rotated Slicer ROI on an oblique scan),
  turned into the tightest voxel box of the image around it by :func:`box_from_corners`; the
  predictor segments inside it only (``Predictor.predict_volume(..., roi=box)``), everything
  else is background, and the output keeps the input's full grid;
* a **volume check** (:func:`volume_warning`): a prediction far larger (or smaller) than any
  left atrium in the model's training labels, or empty, is reported as a warning that says
  what to do, instead of being passed on silently.

An image with one value everywhere (an empty or unreadable series) has nothing to segment at
all: it gets an empty label and a warning that says so (:func:`constant_image_warning`), not a
made-up atrium.
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
    values = _numbers(text) or []
    if len(values) != 6:
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


def parse_roi(text: str) -> np.ndarray:
    """``--roi`` text -> the box's eight corners ``(8, 3)``, RAS mm.

    Six numbers are two opposite corners of a box aligned to the RAS axes
    (:func:`parse_ras_box`); 24 numbers are the eight corners (R, A, S each) of a box in any
    orientation, e.g. a rotated Slicer ROI.

    Raises:
        InputError: another count, a value that is not a finite number, or a flat box.
    """
    values = _numbers(text)
    if values is not None and len(values) == 24:
        corners = np.reshape(values, (8, 3))
        spread = np.linalg.svd(corners - corners.mean(axis=0), compute_uv=False)
        if spread[-1] <= 1e-9 * max(spread[0], 1e-300):
            raise InputError(
                f"region of interest {text!r}: the eight corners lie in a plane (the box has no "
                "extent along at least one of its axes)"
            )
        return corners
    if values is not None and len(values) != 6:
        raise InputError(
            f"region of interest {text!r}: expected six numbers R1,A1,S1,R2,A2,S2 (two opposite "
            "corners of a box aligned to the RAS axes, millimetres) or 24 (the eight corners "
            "R,A,S of a box in any orientation)"
        )
    return aligned_corners(*parse_ras_box(text))


def aligned_corners(
    corner_a: Sequence[float] | np.ndarray, corner_b: Sequence[float] | np.ndarray
) -> np.ndarray:
    """The eight corners ``(8, 3)`` of the box aligned to the axes with these opposite corners."""
    a, b = np.asarray(corner_a, np.float64), np.asarray(corner_b, np.float64)
    return np.array([[(a, b)[c][axis] for axis, c in enumerate(choice)]
                     for choice in itertools.product((0, 1), repeat=3)])  # fmt: skip


def box_from_ras(
    volume: Volume, corner_a: Sequence[float], corner_b: Sequence[float]
) -> Box | None:
    """The voxel box of ``volume`` covered by a box aligned to the RAS axes (two opposite
    corners): :func:`box_from_corners` of its eight corners.

    Raises:
        InputError: the box does not overlap the image, or has no extent.
    """
    a, b = np.asarray(corner_a, np.float64), np.asarray(corner_b, np.float64)
    if np.any(a == b):
        raise InputError("region of interest: the box has no extent along at least one axis")
    return box_from_corners(volume, aligned_corners(a, b))


def box_from_corners(volume: Volume, corners_ras: np.ndarray) -> Box | None:
    """The tightest voxel box of ``volume`` around a box given by its corners ``(8, 3)``, RAS mm.

    The corners are mapped into the image's continuous index space and the voxel box is their
    bounding box there, rounded outward to whole voxels (every voxel whose extent meets it is
    in). A box in the image's own orientation (a Slicer ROI rotated with an oblique scan) is
    therefore cropped to itself; the bounding box of its RAS-aligned hull would be up to twice
    as wide along each rotated axis. ``None`` when the box covers the whole image.

    Raises:
        InputError: the box does not overlap the image.
    """
    corners = np.asarray(corners_ras, np.float64).reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])
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
            ras = np.asarray(corners_ras, np.float64).reshape(-1, 3)
            raise InputError(
                f"region of interest {_ras_text(ras.min(axis=0))} to "
                f"{_ras_text(ras.max(axis=0))} (RAS mm) does not overlap the image "
                f"({_ras_extent(volume)}): check the box's coordinates"
            )
        slices.append(slice(start, stop))
    box: Box = (slices[2], slices[1], slices[0])
    if all(s.start == 0 and s.stop == n for s, n in zip(box, volume.array.shape, strict=True)):
        return None
    return box


def volume_ml(label: np.ndarray, spacing: Sequence[float]) -> float:
    """Foreground volume (every nonzero voxel) in millilitres."""
    return float(np.count_nonzero(label)) * float(np.prod(spacing)) / 1000.0


def constant_image_warning(array: np.ndarray, what: str = "the image") -> str | None:
    """A warning when every voxel of ``array`` has one value (nothing to segment), else
    ``None``. The predictor then returns an empty label without running the networks."""
    values = np.asarray(array)
    if values.size == 0 or not np.isfinite(values.flat[0]) or np.any(values != values.flat[0]):
        return None
    return (
        f"{what} is constant (every voxel is {values.flat[0]:g}): there is nothing to segment, "
        "and the segmentation is empty. Check that the right scan was chosen and that it was "
        "read completely (an empty or unreadable series gives a constant image)"
    )


def volume_check(label: Volume, expected_ml: Sequence[float] | None) -> str | None:
    """What the volume check finds: ``"empty"``, ``"too_large"`` (over :data:`TOO_LARGE` times
    the largest of ``expected_ml``, ``[smallest, largest]`` foreground volume of the model's
    training labels), ``"too_small"`` (under :data:`TOO_SMALL` times the smallest), or ``None``
    (plausible, or no range to compare with). ``dkuxnet predict`` sends it as the ``check``
    field of its ``warning`` event, so a front end can act on it without reading the text."""
    found = volume_ml(label.array, label.spacing)
    if found == 0:
        return "empty"
    if not expected_ml:
        return None
    if found > TOO_LARGE * float(expected_ml[1]):
        return "too_large"
    if found < TOO_SMALL * float(expected_ml[0]):
        return "too_small"
    return None


def volume_warning(
    label: Volume, expected_ml: Sequence[float] | None, what: str = "the segmentation"
) -> str | None:
    """A warning when ``label`` is empty or its volume is far outside ``expected_ml``
    (``[smallest, largest]`` foreground volume of the model's training labels), else ``None``
    (:func:`volume_check` says which).
    """
    check = volume_check(label, expected_ml)
    if check == "empty":
        return (
            f"{what} is empty: nothing was found. Check that the scan shows the structure the "
            "model was trained on, or place the region of interest around it"
        )
    if check is None or not expected_ml:
        return None
    found = volume_ml(label.array, label.spacing)
    smallest, largest = float(expected_ml[0]), float(expected_ml[1])
    if check == "too_large":
        return (
            f"{what} is {found:.0f} ml, more than {TOO_LARGE:g} times the largest in the "
            f"model's training labels ({largest:.0f} ml): the scan probably shows more than the "
            "model was trained on (it learned from scans cropped around the heart). Place a "
            "region of interest around the heart and segment again"
        )
    return (
        f"{what} is only {found:.1f} ml, less than a quarter of the smallest in the model's "
        f"training labels ({smallest:.0f} ml): part of the structure may be outside the "
        "image or the region of interest, or the scan differs from the training scans"
    )


def _numbers(text: str) -> list[float] | None:
    """The comma- or space-separated finite numbers of ``text``; ``None`` if one is not."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    return values if values and all(math.isfinite(v) for v in values) else None


def _ras_text(point: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ")"


def _ras_extent(volume: Volume) -> str:
    """The image's RAS bounding box of voxel centres, as text."""
    size = np.array(volume.array.shape[::-1], np.float64) - 1
    corners = np.array(list(itertools.product(*[(0.0, s) for s in size])))
    ras = volume.index_to_physical(corners) * np.array([-1.0, -1.0, 1.0])
    return f"voxel centres from {_ras_text(ras.min(axis=0))} to {_ras_text(ras.max(axis=0))} RAS mm"
