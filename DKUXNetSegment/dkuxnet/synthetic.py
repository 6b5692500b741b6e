"""Synthetic left-atrium-like MR phantoms with labels, for tests and the demo.

Each phantom is drawn in millimetres (so anisotropic spacing does not squash the anatomy) and
contains what makes the real task non-trivial:

* a bright, irregular atrial body (a deformed ellipsoid) with 2-4 pulmonary-vein tubes — the
  label;
* bright structures of the *same* intensity next to it that are not labelled: an aorta-like tube
  and one or two blood-pool blobs, kept a few millimetres apart from the atrium so that only
  shape and position tell them apart;
* a darker wall around the blood pools, tissue texture, a smooth multiplicative bias field,
  slight blur (partial volume) and Rician noise;
* anisotropic spacing, an oblique direction matrix and a random origin.

No data is downloaded; generation takes well under a second per case at the default size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dkuxnet.data import Case, DatasetSplit
from dkuxnet.errors import OutputExistsError
from dkuxnet.io import Volume, write_volume

log = logging.getLogger(__name__)

DEFAULT_SHAPE: tuple[int, int, int] = (48, 96, 96)  # (z, y, x)
IMAGE_FORMATS: tuple[str, ...] = (".nii.gz", ".nrrd")


@dataclass(frozen=True)
class PhantomSettings:
    """Ranges the random phantoms are drawn from (lengths in mm, intensities in [0, 1])."""

    inplane_spacing: tuple[float, float] = (0.7, 1.0)
    slice_spacing: tuple[float, float] = (1.2, 2.0)
    max_tilt_deg: float = 25.0
    atrium_radius: tuple[float, float] = (11.0, 17.0)
    vein_count: tuple[int, int] = (2, 4)
    vein_radius: tuple[float, float] = (2.2, 3.5)
    vein_length: tuple[float, float] = (10.0, 18.0)
    aorta_radius: tuple[float, float] = (6.0, 9.0)
    distractor_gap_mm: float = 2.5
    blood: float = 1.0
    wall: float = 0.15
    tissue: float = 0.35
    noise_sigma: tuple[float, float] = (0.04, 0.09)
    bias_strength: float = 0.25
    intensity_scale: float = 400.0


SETTINGS = PhantomSettings()


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by at most ``max_deg`` degrees about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(5.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _capsule(points: tuple[np.ndarray, ...], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of every grid point to the segment ``a -> b``; points are (z, y, x) grids."""
    ab = b - a
    rel = [p - c for p, c in zip(points, a, strict=True)]
    t = np.clip(sum(r * d for r, d in zip(rel, ab, strict=True)) / float(ab @ ab), 0.0, 1.0)
    return np.sqrt(sum((r - t * d) ** 2 for r, d in zip(rel, ab, strict=True)))


def make_phantom(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    settings: PhantomSettings = SETTINGS,
) -> tuple[Volume, Volume]:
    """Draw one phantom.

    Args:
        shape: array shape ``(Z, Y, X)``.
        seed: random seed; the same seed gives the same phantom.
        settings: ranges to draw from.

    Returns:
        ``(image, label)``: image ``float32`` and label ``uint8`` in ``{0, 1}``, both of shape
        ``(Z, Y, X)`` with the same (anisotropic, oblique) geometry.
    """
    s = settings
    rng = np.random.default_rng(seed)
    inplane = rng.uniform(*s.inplane_spacing)
    spacing_zyx = np.array([rng.uniform(*s.slice_spacing), inplane, inplane])
    extent = np.array(shape) * spacing_zyx  # field of view (mm), (z, y, x)
    # Grid of physical offsets from the volume centre, (z, y, x) order, mm.
    axes = [(np.arange(n) - (n - 1) / 2) * d for n, d in zip(shape, spacing_zyx, strict=True)]
    grid = tuple(np.meshgrid(*axes, indexing="ij", sparse=True))
    # Scale the anatomy to the field of view so small demo volumes still contain all of it.
    scale = min(1.0, float(extent.min()) / 60.0, float(extent[1:].min()) / 80.0)

    # --- atrial body: an ellipsoid whose radius is modulated by low-order harmonics
    centre = rng.uniform(-0.06, 0.06, size=3) * extent
    radii = rng.uniform(*s.atrium_radius, size=3) * scale
    radii[0] *= 0.8
    rel = [g - c for g, c in zip(grid, centre, strict=True)]
    rho = np.sqrt(sum((r / rad) ** 2 for r, rad in zip(rel, radii, strict=True)))
    theta = np.arctan2(rel[1], rel[2])
    phi = np.arctan2(rel[0], np.sqrt(rel[1] ** 2 + rel[2] ** 2) + 1e-6)
    wobble = 1.0
    for m in (2, 3):
        a, b = rng.uniform(-0.12, 0.12, size=2)
        wobble = wobble + a * np.cos(m * theta + rng.uniform(0, 2 * np.pi)) + b * np.sin(m * phi)
    label = rho < wobble

    # --- pulmonary veins: bent tubes leaving the back of the atrium, left and right
    n_veins = int(rng.integers(s.vein_count[0], s.vein_count[1] + 1))
    for v in range(n_veins):
        side = 1.0 if v % 2 == 0 else -1.0
        direction = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.3, 0.8), side])
        direction /= np.linalg.norm(direction)
        start = centre + 0.7 * direction * radii
        length = rng.uniform(*s.vein_length) * scale
        bend = rng.normal(scale=0.3, size=3)
        mid = start + direction * length * 0.5
        end = mid + (direction + bend) / np.linalg.norm(direction + bend) * length * 0.5
        radius = rng.uniform(*s.vein_radius) * max(scale, 0.6)
        label |= _capsule(grid, start, mid) < radius
        label |= _capsule(grid, mid, end) < radius * 0.9

    # --- distractors of the same brightness: an aorta-like tube and blood-pool blobs
    distractor = np.zeros(label.shape, dtype=bool)
    side = rng.choice([-1.0, 1.0])
    aorta_r = rng.uniform(*s.aorta_radius) * scale
    offset = np.array([0.0, -(radii[1] + aorta_r + 4.0 * scale), side * radii[2] * 0.6])
    tilt = np.array([1.0, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)])
    a = centre + offset - tilt * extent[0]
    b = centre + offset + tilt * extent[0]
    distractor |= _capsule(grid, a, b) < aorta_r
    for _ in range(int(rng.integers(1, 3))):
        direction = rng.normal(size=3) * np.array([0.5, 1.0, 1.0])
        direction[1] = -abs(direction[1])  # in front of the atrium, away from the veins
        direction /= np.linalg.norm(direction)
        blob_r = rng.uniform(0.5, 0.8, size=3) * radii
        blob_c = centre + direction * (radii * 1.1 + blob_r)
        d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, blob_c, blob_r, strict=True))
        distractor |= d < 1.0
    gap = np.maximum(1, np.round(s.distractor_gap_mm / spacing_zyx)).astype(int)
    near_label = ndimage.maximum_filter(label, size=tuple(2 * gap + 1))
    distractor &= ~near_label

    # --- intensities: tissue texture, dark walls around blood pools, bright blood
    blood = label | distractor
    wall = ndimage.maximum_filter(blood, size=(3, 5, 5)) & ~blood
    texture = ndimage.gaussian_filter(rng.normal(size=label.shape), sigma=(1.0, 2.0, 2.0))
    texture /= texture.std() + 1e-6
    image = s.tissue * (1.0 + 0.25 * texture)
    body = sum((g / (e * 0.55)) ** 2 for g, e in zip(grid[1:], extent[1:], strict=True)) < 1.0
    image = np.where(body, image, 0.02)
    image = np.where(wall, s.wall, image)
    image = np.where(blood, s.blood * rng.uniform(0.9, 1.0), image)
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.8, 0.8))

    # --- smooth multiplicative bias field (low-order polynomial of position)
    unit = [g / (e / 2) for g, e in zip(grid, extent, strict=True)]
    coeff = rng.uniform(-1, 1, size=6) * s.bias_strength
    bias = np.exp(
        coeff[0] * unit[0]
        + coeff[1] * unit[1]
        + coeff[2] * unit[2]
        + coeff[3] * unit[1] * unit[2]
        + coeff[4] * unit[1] ** 2
        + coeff[5] * unit[2] ** 2
    )
    image = image * bias

    # --- Rician noise: magnitude of a complex signal with Gaussian noise on both parts
    sigma = rng.uniform(*s.noise_sigma)
    real = image + rng.normal(scale=sigma, size=image.shape)
    imag = rng.normal(scale=sigma, size=image.shape)
    image = np.sqrt(real**2 + imag**2) * s.intensity_scale

    spacing = (float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0]))
    direction_matrix = _random_rotation(rng, s.max_tilt_deg)
    origin = tuple(float(o) for o in rng.uniform(-150.0, 150.0, size=3))
    image_volume = Volume(image.astype(np.float32), spacing, origin, direction_matrix)  # type: ignore[arg-type]
    return image_volume, image_volume.with_array(label.astype(np.uint8))


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    n_labeled: int,
    n_unlabeled: int,
    n_test: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    overwrite: bool = False,
    image_format: str = ".nii.gz",
) -> DatasetSplit:
    """Write phantoms in the decathlon layout.

    ``imagesTr/`` holds labeled and unlabeled images, ``labelsTr/`` the labels of the labeled
    ones only, ``imagesTs/`` + ``labelsTs/`` the test cases. Cases are named
    ``synth_000, synth_001, ...`` in that order (labeled, unlabeled, test).

    Args:
        out_dir: destination folder (created).
        n_labeled: labeled training cases (at least 1).
        n_unlabeled: unlabeled training cases.
        n_test: test cases.
        shape: array shape ``(Z, Y, X)``.
        seed: base seed; case ``i`` uses ``seed * 100003 + i``.
        overwrite: replace existing files instead of raising.
        image_format: ``".nii.gz"`` or ``".nrrd"``.

    Returns:
        The split that was written (validation empty).

    Raises:
        OutputExistsError: a file to write exists and ``overwrite`` is false (nothing written).
        ValueError: bad counts or format.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if n_labeled < 1 or n_unlabeled < 0 or n_test < 0:
        raise ValueError("need n_labeled >= 1, n_unlabeled >= 0 and n_test >= 0")
    out = Path(out_dir)
    plan: list[tuple[str, str, Path, Path | None]] = []  # (group, name, image, label)
    index = 0
    for group, count in (("labeled", n_labeled), ("unlabeled", n_unlabeled), ("test", n_test)):
        for _ in range(count):
            name = f"synth_{index:03d}"
            image_dir, label_dir = (
                ("imagesTs", "labelsTs") if group == "test" else ("imagesTr", "labelsTr")
            )
            label = out / label_dir / f"{name}{image_format}" if group != "unlabeled" else None
            plan.append((group, name, out / image_dir / f"{name}{image_format}", label))
            index += 1
    if not overwrite:
        existing = [
            p
            for _, _, img_path, lab_path in plan
            for p in (img_path, lab_path)
            if p is not None and p.exists()
        ]
        if existing:
            raise OutputExistsError(
                f"{len(existing)} file(s) already exist in {out}, e.g. {existing[0]} "
                "(use overwrite to replace them)"
            )
    groups: dict[str, list[Case]] = {"labeled": [], "unlabeled": [], "test": []}
    for i, (group, name, image_path, label_path) in enumerate(plan):
        image_volume, label_volume = make_phantom(shape, seed=seed * 100003 + i)
        write_volume(image_volume, image_path, overwrite=True)
        if label_path is not None:
            write_volume(label_volume, label_path, overwrite=True)
        groups[group].append(Case(name, image_path, label_path))
    log.info(
        "wrote %d labeled, %d unlabeled, %d test phantoms of shape %s to %s",
        n_labeled,
        n_unlabeled,
        n_test,
        shape,
        out,
    )
    return DatasetSplit(groups["labeled"], groups["unlabeled"], [], groups["test"])
