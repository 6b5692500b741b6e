"""Draw the DKUXNetSegment icon (128x128 PNG): a left-atrium-like blob over a voxel grid.

Writes the module icon ``DKUXNetSegment/Resources/Icons/DKUXNetSegment.png`` and the extension
icon ``Resources/DKUXNetSegment.png`` (the same picture). Run from anywhere:
``python scripts/make_icon.py``. Needs numpy and Pillow only; the drawing is deterministic.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (
    ROOT / "DKUXNetSegment" / "Resources" / "Icons" / "DKUXNetSegment.png",
    ROOT / "Resources" / "DKUXNetSegment.png",
)
SIZE = 128
SUPERSAMPLE = 4  # draw at 512x512 and average down for smooth edges
GRID_STEP = 16
BACKGROUND = np.array([24, 33, 48])
GRID = np.array([58, 78, 104])
BLOB_DARK = np.array([150, 36, 48])
BLOB_LIGHT = np.array([235, 110, 112])
OUTLINE = np.array([255, 214, 170])

log = logging.getLogger("make_icon")


def atrium_mask(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside-ness of the atrium: a lobed body plus four pulmonary-vein stubs and an appendage.

    Returns (signed field > 0 inside, normalised radius for shading). Coordinates in [-1, 1].
    """
    r = np.hypot(x, y * 1.15)
    theta = np.arctan2(y, x)
    body = 0.56 + 0.05 * np.cos(3 * theta + 0.6) + 0.03 * np.sin(5 * theta)
    field = body - r
    # four pulmonary veins leaving the back (top) of the atrium, two left, two right
    for cx, angle in ((-0.45, 2.5), (-0.3, 2.0), (0.3, 1.15), (0.45, 0.65)):
        dx, dy = np.cos(angle), -np.sin(angle)  # image y grows downwards
        px, py = x - cx, y + 0.25
        along = px * dx + py * dy
        across = np.abs(-px * dy + py * dx)
        vein = np.where((along > 0) & (along < 0.36), 0.07 - across, -1.0)
        field = np.maximum(field, vein)
    # the left atrial appendage: a small ear on the right side
    ear = 0.16 - np.hypot((x - 0.55) / 1.3, (y - 0.12) / 0.8)
    field = np.maximum(field, ear)
    return field, np.clip(r / 0.6, 0, 1)


def draw(size: int = SIZE) -> np.ndarray:
    """The icon as an (size, size, 4) uint8 RGBA array."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    rgb = np.broadcast_to(BACKGROUND, (n, n, 3)).astype(float).copy()

    pixel = (np.arange(n) + 0.5) / SUPERSAMPLE  # position in output pixels
    on_grid = np.abs((pixel + GRID_STEP / 2) % GRID_STEP - GRID_STEP / 2) < 0.6
    grid = on_grid[None, :] | on_grid[:, None]
    rgb[grid] = GRID

    field, radius = atrium_mask(x, y + 0.08)
    inside = field > 0
    # shade: light towards the upper left, dark at the rim, like a lit surface
    light = np.clip(0.55 - 0.45 * (x + y) / 1.4 - 0.35 * radius, 0, 1)[..., None]
    shaded = BLOB_DARK + (BLOB_LIGHT - BLOB_DARK) * light
    rgb[inside] = shaded[inside]
    outline = (field > -0.025) & (field <= 0.0)
    rgb[outline] = OUTLINE

    # rounded-square alpha so the icon sits well on any toolbar
    corner = 0.22
    qx, qy = np.maximum(np.abs(x) - (1 - corner), 0), np.maximum(np.abs(y) - (1 - corner), 0)
    alpha = (np.hypot(qx, qy) <= corner).astype(float)
    rgba = np.concatenate([rgb, 255 * alpha[..., None]], axis=-1)
    small = rgba.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 4).mean(axis=(1, 3))
    return np.round(small).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image = Image.fromarray(draw(args.size), mode="RGBA")
    for target in TARGETS:
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, optimize=True)
        log.info("wrote %s", target.relative_to(ROOT))


if __name__ == "__main__":
    main()
