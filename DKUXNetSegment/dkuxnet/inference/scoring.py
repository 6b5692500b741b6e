"""Score a predictor on labeled cases: predict each whole image, compare with its label."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from dkuxnet.data import Case
from dkuxnet.inference.predictor import Predictor
from dkuxnet.io import read_label, read_volume
from dkuxnet.metrics import case_metrics


def score_cases(
    predictor: Predictor,
    cases: Sequence[Case],
    *,
    voxel_units: bool = False,
    style: Literal["monai", "medpy"] = "monai",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per case (``case``, ``dice``, ``jaccard``, ``hd95``, ``asd``).

    Each image goes through :meth:`Predictor.predict_volume` (resampling, foreground crop,
    post-processing: what ``dkuxnet predict`` does), so a score is the score a user gets.

    Args:
        predictor: the model to score.
        cases: cases with a label (a case without one is an error).
        voxel_units: HD95 and ASD in voxels (the published LA tables) instead of mm.
        style: surface-distance convention (``"medpy"`` = the published LA tables).
        progress: called as ``progress(done, total, case)`` after each case.

    Raises:
        InputError: unreadable image or label, label not on the image's grid.
        ValueError: a case has no label.
    """
    rows = []
    for done, case in enumerate(cases, start=1):
        if case.label is None:
            raise ValueError(f"case {case.name} has no label to score against")
        image = read_volume(case.image)
        label = read_label(
            case.label,
            num_classes=predictor.num_classes,
            reference=image,
            require_foreground=False,
            reference_name=str(case.image),
        )
        pred = predictor.predict_volume(image).label
        spacing = None if voxel_units else image.spacing
        rows.append(
            {"case": case.name, **case_metrics(pred.array, label.array, spacing, style=style)}
        )
        if progress is not None:
            progress(done, len(cases), case.name)
    return rows
