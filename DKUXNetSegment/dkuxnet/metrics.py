"""Segmentation metrics per case and over a test set, computed with MONAI's metric functions.

Per case (binary: foreground = value > 0), :func:`case_metrics` returns

* ``dice`` and ``jaccard`` in [0, 1];
* ``hd95``: 95th-percentile Hausdorff distance, and ``asd``: average surface distance, in mm
  when ``spacing`` is given, otherwise in voxels (as the published LA tables).

Two conventions for the distances (``style``):

* ``"monai"`` (default): ``compute_hausdorff_distance(percentile=95)`` (the larger of the two
  directed 95th percentiles) and ``compute_average_surface_distance(symmetric=True)`` (mean over
  the surface distances of both directions).
* ``"medpy"``: what the published LA tables used (``medpy.metric.binary.hd95`` / ``asd``):
  95th percentile of the *pooled* distances of both directions, and the *directed* mean
  distance from the prediction's surface to the label's. Computed from MONAI's
  ``get_edge_surface_distance``, whose surfaces and distances match medpy's.

Empty masks (documented behaviour, tested):

============================  ======  ========  =========  =====
case                          dice    jaccard   hd95       asd
============================  ======  ========  =========  =====
both empty                    1.0     1.0       0.0        0.0
one empty, the other not      0.0     0.0       ``inf``    ``inf``
============================  ======  ========  =========  =====

:func:`summarize` averages distances over the cases where they are finite and reports how many
it left out (``n_excluded``), so one missed case cannot turn a whole table into ``inf``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
DISTANCE_METRICS: tuple[str, ...] = ("hd95", "asd")
HD_PERCENTILE = 95.0

_LABELS = {"dice": "Dice %", "jaccard": "Jaccard %", "hd95": "95HD", "asd": "ASD"}


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """``(Z, Y, X)`` bool -> ``(1, 1, Z, Y, X)`` float, MONAI's ``(B, C, ...)`` layout."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def case_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    style: Literal["monai", "medpy"] = "monai",
) -> dict[str, float]:
    """Dice, Jaccard, 95% Hausdorff and average surface distance of one case.

    Args:
        pred: predicted label map ``(Z, Y, X)``; foreground is ``> 0``.
        label: reference label map, same shape.
        spacing: voxel size in ITK order ``(x, y, z)`` (as ``Volume.spacing``) for distances in
            mm; ``None`` for voxel units.
        style: distance convention, ``"monai"`` or ``"medpy"`` (see the module docstring).

    Returns:
        ``{"dice", "jaccard", "hd95", "asd"}`` as floats (see the module docstring for empty
        masks).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    if pred.ndim != 3:
        raise ValueError(f"need 3D (Z, Y, X) arrays, got shape {pred.shape}")
    if style not in ("monai", "medpy"):
        raise ValueError(f"style must be 'monai' or 'medpy', got {style!r}")
    p, g = pred > 0, label > 0
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    if not p_any or not g_any:
        return {"dice": 0.0, "jaccard": 0.0, "hd95": math.inf, "asd": math.inf}

    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own surface-distance code still passes.
        warnings.simplefilter("ignore", FutureWarning)
        return _binary_metrics(p, g, spacing, style)


def _binary_metrics(
    p: np.ndarray, g: np.ndarray, spacing: Sequence[float] | None, style: str
) -> dict[str, float]:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
    )
    from monai.metrics.utils import get_edge_surface_distance

    spacing_zyx = None if spacing is None else [float(s) for s in tuple(spacing)[::-1]]
    yp, yt = _one_hot(p), _one_hot(g)
    dice = float(compute_dice(yp, yt, include_background=True)[0, 0])
    jaccard = float(compute_iou(yp, yt, include_background=True)[0, 0])
    if style == "monai":
        hd95 = compute_hausdorff_distance(
            yp, yt, include_background=True, percentile=HD_PERCENTILE, spacing=spacing_zyx
        )
        asd = compute_average_surface_distance(
            yp, yt, include_background=True, symmetric=True, spacing=spacing_zyx
        )
        return {
            "dice": dice,
            "jaccard": jaccard,
            "hd95": float(hd95[0, 0]),
            "asd": float(asd[0, 0]),
        }
    edges_and_distances = get_edge_surface_distance(
        yp[0, 0], yt[0, 0], spacing=spacing_zyx, symmetric=True
    )
    distances = edges_and_distances[1]  # (prediction -> label, label -> prediction)
    pred_to_label, label_to_pred = distances[0], distances[-1]
    pooled = torch.cat([pred_to_label, label_to_pred]).double().numpy()
    return {
        "dice": dice,
        "jaccard": jaccard,
        "hd95": float(np.percentile(pooled, HD_PERCENTILE)),
        "asd": float(pred_to_label.double().mean()),
    }


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each metric over cases.

    Args:
        rows: per-case dictionaries as returned by :func:`case_metrics` (extra keys such as
            ``"case"`` are ignored).

    Returns:
        ``{metric: {"mean", "std", "n", "n_excluded"}}`` for each metric present. ``std`` is the
        population standard deviation; non-finite values (``inf``/``nan``, e.g. distances of an
        empty prediction) are left out of mean/std and counted in ``n_excluded``; with no finite
        value, mean and std are ``nan``.
    """
    summary: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values = np.array([float(r[metric]) for r in rows if metric in r], dtype=np.float64)
        if values.size == 0:
            continue
        finite = values[np.isfinite(values)]
        summary[metric] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "n": float(finite.size),
            "n_excluded": float(values.size - finite.size),
        }
    return summary


def _cell(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value * 100:.2f}" if metric in ("dice", "jaccard") else f"{value:.2f}"


def format_table(rows: Sequence[Mapping[str, Any]], units: str = "mm") -> str:
    """A plain-text table: one line per case, then mean ± std (Dice/Jaccard in %).

    Args:
        rows: per-case metrics, each optionally with a ``"case"`` name.
        units: unit of the distances for the header (``"mm"`` or ``"voxels"``).
    """
    header = ["case"] + [
        f"{_LABELS[m]} ({units})" if m in DISTANCE_METRICS else _LABELS[m] for m in METRICS
    ]
    lines = [
        [str(r.get("case", i)), *(_cell(m, float(r[m])) for m in METRICS)]
        for i, r in enumerate(rows)
    ]
    summary = summarize(rows)
    mean_row = ["mean ± std"]
    for m in METRICS:
        s = summary.get(m)
        if s is None:
            mean_row.append("-")
            continue
        scale = 100.0 if m in ("dice", "jaccard") else 1.0
        cell = f"{s['mean'] * scale:.2f} ± {s['std'] * scale:.2f}"
        if s["n_excluded"]:
            cell += f" ({int(s['n_excluded'])} inf)"
        mean_row.append(cell)
    table = [header, *lines, mean_row]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]

    def render(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if c else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(r) for r in lines), rule, render(mean_row)])
