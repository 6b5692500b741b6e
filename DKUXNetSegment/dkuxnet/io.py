"""Reading and writing 3D images and labels (NRRD, NIfTI, MetaImage) through SimpleITK.

Axis order — the one convention used everywhere in :mod:`dkuxnet`:

* ``Volume.array`` is indexed ``array[k, j, i]``, i.e. ``(z, y, x)``: the order of
  ``SimpleITK.GetArrayFromImage``, of PyTorch's ``(D, H, W)`` and of every patch size in the
  configuration.
* ``spacing``, ``origin`` and the image size reported in messages are in ITK order ``(x, y, z)``
  (``(i, j, k)``); reverse them (``spacing[::-1]``) to pair them with array axes.
* ``origin`` and ``direction`` are physical LPS coordinates (the ITK/DICOM convention; Slicer
  converts to RAS at its boundary). ``direction`` is the 3x3 matrix whose *columns* are the
  directions of the i, j, k index axes, so ``point = origin + direction @ (spacing * (i, j, k))``.

Every error a user can fix (missing file, not 3D, label values out of range, empty label,
image/label geometry mismatch) is an :class:`~dkuxnet.errors.InputError` whose message names
the file and says what is wrong.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dkuxnet.errors import InputError, OutputExistsError

log = logging.getLogger(__name__)

#: File name endings we read and write (longest first so ``.nii.gz`` wins over ``.gz``).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")

#: Default relative tolerance when comparing geometries. NIfTI stores geometry in float32, so
#: exact equality is too strict after a round trip through ``.nii.gz``.
GEOMETRY_TOLERANCE = 1e-4
_FLOAT32_HEADER_RTOL = 1e-6

# MetaImage and detached NRRD headers point at a separate data file; we move those along.
_DATA_FILE_SUFFIXES = (".raw", ".zraw", ".raw.gz", ".gz")


def volume_suffix(path: str | os.PathLike[str]) -> str | None:
    """The supported suffix ``path`` ends with (lower case), or ``None``."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_volume_suffix(path: str | os.PathLike[str]) -> str:
    """File name without its image suffix: ``"case_01.nii.gz" -> "case_01"``."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def _fmt(values: tuple[float, ...] | np.ndarray, digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in np.ravel(values)) + ")"


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D voxel array with its physical geometry.

    Attributes:
        array: voxels, shape ``(Z, Y, X)`` (see the module docstring for the axis order).
        spacing: voxel size in mm, ITK order ``(x, y, z)``.
        origin: physical position (mm, LPS) of the centre of voxel ``(0, 0, 0)``, ``(x, y, z)``.
        direction: ``(3, 3)`` matrix; columns are the LPS directions of the i, j, k axes.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (z, y, x), got shape {self.array.shape}")
        direction = np.array(self.direction, dtype=np.float64).reshape(3, 3)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError("spacing and origin need three values (x, y, z)")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @property
    def size(self) -> tuple[int, int, int]:
        """Image size in ITK order ``(x, y, z)``."""
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing paired with the array axes, ``(z, y, x)``."""
        x, y, z = self.spacing
        return (z, y, x)

    def geometry_differences(self, other: Volume, tol: float = GEOMETRY_TOLERANCE) -> list[str]:
        """Human-readable differences between two geometries (empty when they match).

        Spacing is compared relatively (``tol``), origin within ``tol`` times the largest
        spacing (mm) plus a relative 1e-6 (the float32 precision of NIfTI headers, which
        matters far from the scanner origin), direction entries within ``tol``.
        """
        diffs: list[str] = []
        if self.array.shape != other.array.shape:
            diffs.append(f"size (x, y, z) {self.size} vs {other.size}")
        if not np.allclose(self.spacing, other.spacing, rtol=tol, atol=0.0):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        origin_tol = tol * max(max(self.spacing), max(other.spacing))
        if not np.allclose(self.origin, other.origin, rtol=_FLOAT32_HEADER_RTOL, atol=origin_tol):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0.0, atol=tol):
            diffs.append(
                f"direction {_fmt(self.direction, 4)} vs {_fmt(other.direction, 4)} (row-major)"
            )
        return diffs

    def same_geometry(self, other: Volume, tol: float = GEOMETRY_TOLERANCE) -> bool:
        """Whether size, spacing, origin and direction agree within ``tol``."""
        return not self.geometry_differences(other, tol)

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume with this geometry and a new array of the same ``(Z, Y, X)`` shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def index_to_physical(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray:
        """Physical LPS points of (continuous) ``(i, j, k)`` indices, ``(..., 3) -> (..., 3)``:
        ``origin + direction @ (spacing * ijk)``."""
        scaled = np.asarray(ijk, np.float64) * np.asarray(self.spacing)
        return np.asarray(self.origin) + scaled @ np.asarray(self.direction).T

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with this array (copied) and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Convert a scalar 3D SimpleITK image (raises ``ValueError`` otherwise)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"need a scalar 3D image, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )


def read_volume(path: str | os.PathLike[str], *, what: str = "image") -> Volume:
    """Read a scalar 3D image.

    Args:
        path: ``.nrrd``/``.nhdr``, ``.nii``/``.nii.gz`` or ``.mha``/``.mhd`` file.
        what: what the file is meant to be (``"image"``, ``"label"``), used in messages.

    Returns:
        The volume; ``array`` has shape ``(Z, Y, X)`` and the file's pixel type.

    Raises:
        InputError: the file is missing or unreadable, or is not a scalar 3D image (2D, 4D,
            vector/RGB).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} path is not a file: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {what} file {path}: {reason}") from exc
    dim = image.GetDimension()
    if dim != 3:
        raise InputError(
            f"{what} file {path} is {dim}D (size {image.GetSize()}); a 3D volume is needed"
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(
            f"{what} file {path} has {components} components per voxel (vector/RGB); "
            "a scalar (grey-value) 3D volume is needed"
        )
    volume = Volume.from_sitk(image)
    log.debug("read %s %s: size %s spacing %s", what, path, volume.size, volume.spacing)
    return volume


def write_volume(volume: Volume, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a volume atomically, compressed where the format allows.

    The file is written into a temporary folder beside ``path`` and moved into place with
    ``os.replace``, so a reader never sees a half-written file.

    Args:
        volume: the volume to write (its array dtype is kept).
        path: destination; its suffix picks the format (see :data:`SUPPORTED_SUFFIXES`).
        overwrite: replace an existing file instead of raising.

    Returns:
        The destination path.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        InputError: the suffix is not a supported image format.
    """
    path = Path(path)
    if volume_suffix(path) is None:
        raise InputError(
            f"cannot write {path}: unknown image format (use one of {', '.join(SUPPORTED_SUFFIXES)})"
        )
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(volume.to_sitk(), str(tmp_dir / path.name), useCompression=True)
        written = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)  # header last
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.debug("wrote %s", path)
    return path


def check_same_geometry(
    a: Volume,
    b: Volume,
    *,
    names: tuple[str, str] = ("image", "label"),
    tol: float = GEOMETRY_TOLERANCE,
) -> None:
    """Raise :class:`InputError` listing every geometry difference between ``a`` and ``b``.

    Args:
        a: first volume.
        b: second volume.
        names: how to call them in the message (file names are best).
        tol: see :meth:`Volume.geometry_differences`.
    """
    diffs = a.geometry_differences(b, tol)
    if diffs:
        raise InputError(
            f"{names[0]} and {names[1]} do not share the same geometry ({names[0]} vs "
            f"{names[1]}): " + "; ".join(diffs)
        )


def read_label(
    path: str | os.PathLike[str],
    *,
    num_classes: int = 2,
    reference: Volume | None = None,
    require_foreground: bool = True,
    reference_name: str = "image",
) -> Volume:
    """Read a label map and check it.

    Args:
        path: label file.
        num_classes: classes including background; values must lie in ``0 .. num_classes-1``.
        reference: the image this label belongs to; its geometry must match.
        require_foreground: raise when the label has no voxel above zero.
        reference_name: how to call ``reference`` in messages (e.g. its file name).

    Returns:
        The label as a ``uint8`` volume, shape ``(Z, Y, X)``.

    Raises:
        InputError: unreadable/not 3D, non-integer or out-of-range values, no foreground, or a
            geometry that differs from ``reference``.
    """
    volume = read_volume(path, what="label")
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and (
        not np.all(np.isfinite(array)) or not np.all(array == np.round(array))
    ):
        raise InputError(
            f"label file {path} has non-integer values (dtype {array.dtype}); "
            "a label map needs whole class numbers"
        )
    values = np.unique(array)
    bad = values[(values < 0) | (values > num_classes - 1)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8].tolist()) + (" ..." if bad.size > 8 else "")
        raise InputError(
            f"label file {path} has values outside 0..{num_classes - 1}: found {shown} "
            f"(all values: {values[:12].tolist()})"
        )
    if require_foreground and not np.any(array > 0):
        raise InputError(f"label file {path} is empty: it has no foreground voxel")
    if reference is not None:
        check_same_geometry(reference, volume, names=(reference_name, f"label {path}"))
    return volume.with_array(array.astype(np.uint8, copy=False))
