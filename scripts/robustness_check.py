"""How the model copes with scans as scanners deliver them, not as the cropped LA files are.

    python scripts/robustness_check.py --model DKUXNetSegment/Resources/Models/dkuxnet_la_lite.pt \
        --data /path/to/imported [--cases 20] [--json OUT]

For each test-list scan of a ``dkuxnet la-import`` folder, the prediction is scored (Dice) in
these conditions, next to the plain one:

* ``padded``: the crop in a 576 x 576 in-plane field of view of constant value (the image
  minimum), as an exported crop or a zero-padded scan looks.
* ``full-fov``: the crop pasted into a 576 x 576 in-plane field of view (the challenge scans'
  size) whose surroundings look like a body, not a constant: an elliptical trunk of smooth
  tissue texture with the crop's own background statistics and dark noisy air outside it.
  ``full-fov+blobs`` adds five bright blood-pool-like blobs (the other heart chambers and
  vessels) with the atrium's intensity statistics — things a model can mistake for the atrium.
* ``full-fov ROI+20mm``, ``full-fov+blobs ROI+20mm`` / ``ROI+40mm``: the same scans predicted
  inside a region of interest (``predict --roi``, the Slicer panel's *Region of interest*): the
  atrium's bounding box grown by 20 or 40 mm on every side, a loose box as a user would draw it
  (with 40 mm it reaches into the synthetic surroundings on most scans).
* ``1.0 mm`` / ``1.25 mm``: the scan resampled to that isotropic spacing (linear image,
  nearest label), scored on that grid.
* ``flip-stored`` / ``rot90-stored``: the same physical image stored in another voxel order
  (x reversed; or x and y swapped in-plane), with the direction matrix and origin saying so,
  as scanners and converters deliver them. The prediction must not change.
* ``mirrored``: the anatomy itself mirrored left-right (direction unchanged): a model trained on
  one orientation may not recognise it; reported to show what orientation handling buys.

For every condition the script also counts the predictions on which ``predict`` would have
warned (the volume check of :mod:`dkuxnet.inference.roi`: empty, or far outside the training
labels' volume range the checkpoint records).

Timing is not reported (see ``benchmarks/predict_speed.py``); a shared CPU changes no figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dkuxnet.data import load_dataset
from dkuxnet.inference import Predictor
from dkuxnet.inference.roi import box_from_ras, volume_warning
from dkuxnet.io import Volume, read_label, read_volume
from dkuxnet.metrics import case_metrics

FULL_FOV = 576
Case = tuple[Any, ...]  # image, label[, (RAS corner, RAS corner) of a region of interest]
Condition = Callable[[Volume, Volume, np.random.Generator], Case]


def full_fov(blobs: int, constant: bool = False) -> Condition:
    """The crop inside a synthetic body with ``blobs`` blood-pool-like blobs, or in a constant
    (the image minimum; see the module docstring); the label padded with 0."""

    def condition(image: Volume, label: Volume, rng: np.random.Generator) -> Case:
        return _full_fov(image, label, rng, blobs, constant)

    return condition


def _body(
    arr: np.ndarray, lab: np.ndarray, rng: np.random.Generator, blobs: int, py: int, px: int
) -> np.ndarray:
    """The synthetic trunk, air and ``blobs`` blobs of a 576 x 576 canvas; the crop goes at
    ``(py, px)`` (blobs keep clear of it)."""
    z, y, x = arr.shape
    tissue = arr[~lab]
    blood = arr[lab]
    yy, xx = np.mgrid[0:FULL_FOV, 0:FULL_FOV].astype(np.float32)
    c = FULL_FOV / 2
    body = ((yy - c) / (0.36 * FULL_FOV)) ** 2 + ((xx - c) / (0.45 * FULL_FOV)) ** 2 <= 1.0
    texture = ndimage.gaussian_filter(rng.standard_normal((z, FULL_FOV, FULL_FOV)), (1, 3, 3))
    texture = (texture - texture.mean()) / (texture.std() + 1e-6)
    canvas = np.float32(tissue.mean()) + np.float32(tissue.std()) * texture.astype(np.float32)
    air = np.float32(np.percentile(arr, 1)) + 0.05 * rng.standard_normal(canvas.shape)
    canvas = np.where(body[None], canvas, air.astype(np.float32))
    zz, yy3, xx3 = np.ogrid[0:z, 0:FULL_FOV, 0:FULL_FOV]
    for _ in range(blobs):  # blood-pool-like blobs beside the crop, inside the body
        for _attempt in range(50):
            cy, cx = rng.uniform(0.2, 0.8, 2) * FULL_FOV
            ry, rx, rz = rng.uniform(15, 45), rng.uniform(15, 45), rng.uniform(0.3, 0.6) * z
            near_crop = py - ry < cy < py + y + ry and px - rx < cx < px + x + rx
            if body[int(cy), int(cx)] and not near_crop:
                break
        blob = ((zz - z / 2) / rz) ** 2 + ((yy3 - cy) / ry) ** 2 + ((xx3 - cx) / rx) ** 2 <= 1
        noise = rng.standard_normal(canvas.shape).astype(np.float32)
        canvas = np.where(blob, blood.mean() + blood.std() * noise, canvas)
    return canvas


def _full_fov(
    image: Volume, label: Volume, rng: np.random.Generator, blobs: int, constant: bool = False
) -> Case:
    z, y, x = image.array.shape
    arr = image.array
    py, px = (FULL_FOV - y) // 2, (FULL_FOV - x) // 2
    if constant:
        canvas = np.full((z, FULL_FOV, FULL_FOV), arr.min(), np.float32)
    else:
        canvas = _body(arr, label.array > 0, rng, blobs, py, px)
    canvas[:, py : py + y, px : px + x] = arr
    big_label = np.zeros(canvas.shape, np.uint8)
    big_label[:, py : py + y, px : px + x] = label.array
    # the crop keeps its physical place: voxel (0, py, px) of the canvas is the crop's origin
    shift = image.direction @ (np.array(image.spacing) * np.array([px, py, 0]))
    origin = tuple(np.array(image.origin) - shift)

    def on_canvas(array: np.ndarray) -> Volume:
        return Volume(array, image.spacing, origin, image.direction)

    return on_canvas(canvas.astype(np.float32)), on_canvas(big_label)


def full_fov_roi(blobs: int, margin_mm: float) -> Condition:
    """``full-fov`` (with ``blobs``) predicted inside a region of interest: the atrium's bounding
    box grown by ``margin_mm`` on every side, as a user would draw a loose box around it (given
    to the predictor as RAS corners, the way ``predict --roi`` and the Slicer panel pass it)."""

    def condition(image: Volume, label: Volume, rng: np.random.Generator) -> Case:
        img, lab = _full_fov(image, label, rng, blobs)
        grow = np.round(margin_mm / np.asarray(img.spacing)[::-1]).astype(int)  # (z, y, x)
        hits = np.nonzero(lab.array)
        low = [int(h.min()) - g for h, g in zip(hits, grow, strict=True)]
        high = [int(h.max()) + g for h, g in zip(hits, grow, strict=True)]

        def ras(kji: list[int]) -> np.ndarray:
            return img.index_to_physical(kji[::-1]) * np.array([-1.0, -1.0, 1.0])

        return img, lab, (ras(low), ras(high))

    return condition


def resampled(spacing: float) -> Condition:
    def condition(image: Volume, label: Volume, rng: np.random.Generator) -> Case:
        src = image.to_sitk()
        size = [
            round(n * s / spacing) for n, s in zip(src.GetSize(), src.GetSpacing(), strict=True)
        ]

        def resample(vol: Volume, interpolator: int) -> Volume:
            out = sitk.Resample(
                vol.to_sitk(), size, sitk.Transform(), interpolator, src.GetOrigin(),
                (spacing,) * 3, src.GetDirection(), 0.0,
            )  # fmt: skip
            return Volume.from_sitk(out)

        return resample(image, sitk.sitkLinear), resample(label, sitk.sitkNearestNeighbor)

    return condition


def restored(axes_zyx: tuple[int, int, int], flip_x: bool) -> Condition:
    """The same physical image in another voxel order (``transpose`` of the array axes)."""

    def condition(image: Volume, label: Volume, rng: np.random.Generator) -> Case:
        def store(vol: Volume) -> Volume:
            # voxel index i (ITK x, y, z) -> physical: origin + D @ (spacing * i)
            arr = vol.array
            direction = vol.direction.copy()
            spacing = np.array(vol.spacing)
            origin = np.array(vol.origin)
            if flip_x:
                n = arr.shape[2]
                origin = origin + direction[:, 0] * spacing[0] * (n - 1)
                direction[:, 0] = -direction[:, 0]
                arr = arr[:, :, ::-1]
            perm_xyz = [2 - a for a in reversed(axes_zyx)]  # new ITK axis -> old ITK axis
            arr = np.ascontiguousarray(np.transpose(arr, axes_zyx))
            return Volume(arr, tuple(spacing[perm_xyz]), tuple(origin), direction[:, perm_xyz])

        return store(image), store(label)

    return condition


def mirrored(image: Volume, label: Volume, rng: np.random.Generator) -> Case:
    flip = (slice(None), slice(None), slice(None, None, -1))
    return (
        image.with_array(np.ascontiguousarray(image.array[flip])),
        label.with_array(np.ascontiguousarray(label.array[flip])),
    )


CONDITIONS: dict[str, Condition | None] = {
    "plain": None,
    "padded": full_fov(blobs=0, constant=True),
    "full-fov": full_fov(blobs=0),
    "full-fov+blobs": full_fov(blobs=5),
    "full-fov ROI+20mm": full_fov_roi(blobs=0, margin_mm=20.0),
    "full-fov+blobs ROI+20mm": full_fov_roi(blobs=5, margin_mm=20.0),
    "full-fov+blobs ROI+40mm": full_fov_roi(blobs=5, margin_mm=40.0),
    "1.0 mm": resampled(1.0),
    "1.25 mm": resampled(1.25),
    "flip-stored": restored((0, 1, 2), flip_x=True),
    "rot90-stored": restored((0, 2, 1), flip_x=True),
    "mirrored": mirrored,
}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, type=Path, help="la-import output folder")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the per-case Dice here")
    args = p.parse_args()
    args.conditions = ["plain"] + [c for c in args.conditions if c != "plain"]
    predictor = Predictor.from_checkpoint(args.model, device=args.device)
    rows = []
    for case in load_dataset(args.data).test[: args.cases]:
        image = read_volume(case.image)
        assert case.label is not None
        label = read_label(case.label, reference=image)
        row: dict[str, object] = {"case": case.name}
        for name in args.conditions:
            make = CONDITIONS[name]
            rng = np.random.default_rng(zlib.crc32(case.name.encode()))
            img, lab, *roi = (image, label) if make is None else make(image, label, rng)
            box = box_from_ras(img, *roi[0]) if roi else None
            pred = predictor.predict_volume(img, roi=box).label
            assert pred.geometry_differences(img) == []
            row[name] = case_metrics(pred.array, lab.array)["dice"]
            # would `predict` have warned? (the volume check against the training labels)
            row[f"{name} warned"] = volume_warning(pred, predictor.label_volume_ml) is not None
        rows.append(row)
        print(" ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()),
              file=sys.stderr, flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"{'condition':24s} {'Dice %':>7s} {'sd':>6s} {'min':>6s} {'max':>6s} {'vs plain':>9s} "
          f"{'warned':>7s}  ({len(rows)} test scans)")  # fmt: skip
    for name in args.conditions:
        values = [100 * float(r[name]) for r in rows]  # type: ignore[arg-type]
        delta = statistics.mean(values) - statistics.mean(100 * float(r["plain"]) for r in rows)  # type: ignore[arg-type]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        warned = sum(bool(r[f"{name} warned"]) for r in rows)
        print(f"{name:24s} {statistics.mean(values):7.2f} {sd:6.2f} {min(values):6.2f} "
              f"{max(values):6.2f} {delta:+9.2f} {warned:4d}/{len(rows)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
