"""Preprocessing shared by training and prediction: one voxel order, one spacing, one scale.

The trainer and the predictor must feed the network the same thing, so what they both do to a
scan lives here (as nnU-Net keeps ``preprocessing/`` apart from training and inference):

* :func:`resample_to_spacing` (to ``data.target_spacing``) and :func:`resample_onto` (back
  onto the input grid);
* :func:`foreground_box` / :func:`crop_volume`: the content of a constant-padded scan;
* :func:`normalize_image`: the one intensity normalisation;
* :func:`resample_cases`: a dataset's cases brought to the training spacing once, on disk, in
  the canonical voxel order the predictor uses too (:mod:`dkuxnet.orientation`).

Axis order follows :mod:`dkuxnet.io`: arrays are ``(Z, Y, X)``; spacing and origin ``(x, y, z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import torch

from dkuxnet.errors import InputError
from dkuxnet.grid import resampled_grid
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.orientation import is_canonical, to_canonical

if TYPE_CHECKING:  # data.py imports this module (normalize_image)
    from dkuxnet.data import Case

__all__ = [
    "crop_volume",
    "foreground_box",
    "normalize_image",
    "resample_cases",
    "resample_onto",
    "resample_to_spacing",
]


#: The largest grid an image is resampled to, in voxels (after padding to the window): 2 GiB
#: per float32 map, e.g. a 0.8 m cube at 1 mm. Beyond it the spacing in the file header is
#: broken (1e-6 x 1e-6 x 1e6 mm gave a 327 GB allocation and a traceback), not a patient.
MAX_GRID_VOXELS = 2**29


def resampled_size(volume: Volume, spacing: Sequence[float]) -> list[int]:
    """``(x, y, z)`` size of ``volume`` resampled to ``spacing`` (:func:`resample_to_spacing`)."""
    return resampled_grid(volume.size, volume.spacing, spacing)


def check_grid_size(
    volume: Volume, spacing: Sequence[float], window: Sequence[int] | None = None
) -> None:
    """Refuse, before anything is allocated, a resampled grid beyond :data:`MAX_GRID_VOXELS`.

    Args:
        volume: the image.
        spacing: the spacing ``(x, y, z)`` it is to be resampled to.
        window: the sliding window ``(D, H, W)``; each side of the grid is padded to it.

    Raises:
        InputError: the grid is too large; the message names the image's spacing and field of
            view, which is what is wrong.
    """
    size = resampled_size(volume, spacing)  # (x, y, z)
    if window is not None:
        size = [max(n, int(w)) for n, w in zip(size, reversed(tuple(window)), strict=True)]
    voxels = math.prod(size)
    if voxels <= MAX_GRID_VOXELS:
        return
    field = np.asarray(volume.size, np.float64) * np.asarray(volume.spacing, np.float64)
    raise InputError(
        f"the image's spacing ({_mm(volume.spacing)} mm over {' x '.join(map(str, volume.size))} "
        f"voxels, a field of view of {_mm(field)} mm) would make a {' x '.join(map(str, size))} "
        f"grid at the model's {_mm(spacing)} mm ({voxels * 4 / 1e9:.3g} GB per map, more than "
        f"the {MAX_GRID_VOXELS * 4 / 2**30:.0f} GiB allowed). The spacing in the file header is "
        "probably wrong (a broken DICOM header can give this): correct it (in Slicer: Volumes "
        "module, Volume Information, Image Spacing) and try again"
    )


def _mm(values: Sequence[float] | np.ndarray) -> str:
    return " x ".join(f"{float(v):.6g}" for v in values)


def is_constant(array: np.ndarray) -> bool:
    """Every voxel has the same (finite) value: there is nothing to segment."""
    return (
        bool(array.size)
        and bool(np.isfinite(array.flat[0]))
        and bool(np.all(array == array.flat[0]))
    )


def normalize_image(array: np.ndarray) -> np.ndarray:
    """Z-score the whole volume (MONAI ``NormalizeIntensity``); a constant volume becomes 0.

    Args:
        array: image of any shape, e.g. ``(Z, Y, X)``.

    Returns:
        ``float32`` array of the same shape with mean 0 and standard deviation 1.
    """
    from monai.transforms import NormalizeIntensity

    normalize = NormalizeIntensity(nonzero=False, channel_wise=False, dtype=np.float32)
    out = normalize(np.asarray(array, dtype=np.float32))
    return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out, np.float32)


def resample_to_spacing(
    volume: Volume, spacing: Sequence[float], *, interpolator: int = sitk.sitkLinear
) -> Volume:
    """Resample onto a grid of another spacing that covers the same physical box.

    The grid keeps the direction; its size is ``round(size * spacing / new_spacing)`` and its
    origin moves so that the outer voxel corners stay where they were.

    Args:
        volume: input volume (resampled as ``float32``).
        spacing: new spacing ``(x, y, z)`` in mm.
        interpolator: a SimpleITK interpolator (linear for images).

    Raises:
        InputError: the new grid would be absurdly large (:func:`check_grid_size`).
    """
    check_grid_size(volume, spacing)
    old = np.asarray(volume.spacing, dtype=np.float64)
    new = np.asarray(spacing, dtype=np.float64)
    size = resampled_size(volume, spacing)
    origin = np.asarray(volume.origin) + volume.direction @ ((new - old) / 2.0)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    resampled = sitk.Resample(
        image,
        [int(v) for v in size],
        sitk.Transform(),
        interpolator,
        tuple(float(v) for v in origin),
        tuple(float(v) for v in new),
        tuple(float(v) for v in volume.direction.ravel()),
        0.0,
        sitk.sitkFloat32,
    )
    return Volume.from_sitk(resampled)


def resample_onto(volume: Volume, reference: Volume, *, interpolator: int) -> np.ndarray:
    """Resample ``volume`` onto ``reference``'s grid; returns the array ``(Z, Y, X)``.

    Args:
        volume: what to resample (its dtype is kept).
        reference: the grid (size, origin, spacing, direction) to land on.
        interpolator: ``sitk.sitkNearestNeighbor`` for labels, ``sitk.sitkLinear`` otherwise.
    """
    image = volume.to_sitk()
    resampled = sitk.Resample(
        image,
        [int(v) for v in reference.size],
        sitk.Transform(),
        interpolator,
        reference.origin,
        reference.spacing,
        tuple(float(v) for v in reference.direction.ravel()),
        0.0,
        image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(resampled)


def foreground_box(array: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The bounding box of the voxels brighter than the image minimum, or ``None``.

    A scan padded with a constant (or surrounded by an exactly-zero background) is cropped to
    its content before prediction, so the network never sees large constant regions it was not
    trained on. ``None`` when the box is the whole image or the image is constant.
    """
    content = array > array.min()
    if not content.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(content.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    if all(b.start == 0 and b.stop == n for b, n in zip(box, array.shape, strict=True)):
        return None
    return box[0], box[1], box[2]


def crop_volume(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """The sub-volume ``volume.array[box]`` with its physical position (origin) kept exact."""
    start_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)  # (i, j, k)
    origin = volume.index_to_physical(start_ijk)
    return Volume(
        np.ascontiguousarray(volume.array[box]),
        volume.spacing,
        (float(origin[0]), float(origin[1]), float(origin[2])),
        volume.direction,
    )


def resample_cases(cases: Sequence[Case], spacing: Sequence[float], cache: Path) -> list[Case]:
    """Cases resampled to ``spacing`` mm (x, y, z), written once into ``cache``.

    Used when ``data.target_spacing`` is set, so that training sees what the predictor feeds
    the network (it resamples inputs to the same spacing, in the canonical voxel order of
    :mod:`dkuxnet.orientation`, as done here too). Images are resampled linearly, labels by
    nearest neighbour; a canonical case already at the spacing is used as it is.
    """
    out = []
    for case in cases:
        image_path = cache / "image" / f"{case.name}.nii.gz"
        label_path = cache / "label" / f"{case.name}.nii.gz" if case.label is not None else None
        if image_path.exists() and (label_path is None or label_path.exists()):
            # resampled by an earlier start
            out.append(replace(case, image=image_path, label=label_path))
            continue
        image = read_volume(case.image)
        if is_canonical(image) and np.allclose(image.spacing, spacing, rtol=1e-4):
            out.append(case)
            continue
        write_volume(
            resample_to_spacing(to_canonical(image)[0], spacing, interpolator=sitk.sitkLinear),
            image_path,
            overwrite=True,
        )
        if case.label is not None and label_path is not None:
            label = resample_to_spacing(
                to_canonical(read_volume(case.label, what="label"))[0],
                spacing,
                interpolator=sitk.sitkNearestNeighbor,
            )
            write_volume(
                label.with_array(np.rint(label.array).astype(np.uint8)), label_path, overwrite=True
            )
        out.append(replace(case, image=image_path, label=label_path))
    return out
