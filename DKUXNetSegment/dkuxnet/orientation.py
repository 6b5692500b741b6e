"""One voxel order for the network: axis-aligned volumes stored any other way are reoriented.

Scanners and converters store the same physical image in different voxel orders (rows
reversed, x and y swapped, slices from head to feet ...); the direction matrix says which.
A network only sees the array, so a scan stored rotated by 90 degrees in-plane looks like
another anatomy to it (measured: -17.6 Dice points on an LA test scan,
``scripts/robustness_check.py``). Before prediction (and training on resampled cases) a volume
is therefore brought into the canonical order, where voxel axis ``i`` runs along physical axis
``i`` (LPS) in the positive direction, i.e. the direction matrix is as close to the identity as
a permutation with signs gets. This is exact (axes are permuted and flipped, nothing is
interpolated), and :func:`to_canonical` returns the inverse for arrays on that grid. Oblique
directions keep their residual rotation; a direction whose axes do not map one-to-one onto
physical axes (e.g. 45 degrees) is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dkuxnet.io import Volume

ArrayMap = Callable[[np.ndarray], np.ndarray]


def canonical_axes(direction: np.ndarray) -> tuple[list[int], list[bool]] | None:
    """For each new ITK axis ``j``: the old ITK axis that runs along physical axis ``j``, and
    whether it runs backwards; ``None`` if the axes do not map one-to-one."""
    dominant = [int(np.argmax(np.abs(direction[:, i]))) for i in range(3)]
    if sorted(dominant) != [0, 1, 2]:
        return None
    perm = [dominant.index(j) for j in range(3)]
    flips = [bool(direction[j, perm[j]] < 0) for j in range(3)]
    return perm, flips


def is_canonical(volume: Volume) -> bool:
    axes = canonical_axes(volume.direction)
    return axes is None or (axes[0] == [0, 1, 2] and not any(axes[1]))


def _identity(array: np.ndarray) -> np.ndarray:
    return array


def to_canonical(volume: Volume) -> tuple[Volume, ArrayMap]:
    """The same physical image in the canonical voxel order, and the map that takes an array on
    the canonical grid (``(Z, Y, X)``, or ``(C, Z, Y, X)``) back to ``volume``'s order."""
    axes = canonical_axes(volume.direction)
    if axes is None or is_canonical(volume):
        return volume, _identity
    perm, flips = axes
    spacing = np.asarray(volume.spacing)
    origin = np.asarray(volume.origin, dtype=np.float64)
    direction = np.empty((3, 3))
    size_xyz = volume.size
    for j, i in enumerate(perm):
        column = volume.direction[:, i]
        if flips[j]:  # the new first voxel is the old last one along this axis
            origin = origin + column * spacing[i] * (size_xyz[i] - 1)
            column = -column
        direction[:, j] = column
    # array axis a is ITK axis 2 - a
    transpose = [2 - perm[2 - a] for a in range(3)]
    flipped_array_axes = tuple(2 - j for j in range(3) if flips[j])
    array = np.transpose(volume.array, transpose)
    if flipped_array_axes:
        array = np.flip(array, flipped_array_axes)
    canonical = Volume(np.ascontiguousarray(array), tuple(spacing[perm]), tuple(origin), direction)
    inverse = [int(v) for v in np.argsort(transpose)]

    def back(values: np.ndarray) -> np.ndarray:
        lead = values.ndim - 3  # leading channel axes stay where they are
        if flipped_array_axes:
            values = np.flip(values, tuple(lead + a for a in flipped_array_axes))
        order = list(range(lead)) + [lead + a for a in inverse]
        return np.ascontiguousarray(np.transpose(values, order))

    return canonical, back
