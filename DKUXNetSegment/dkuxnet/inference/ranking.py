"""Which scan to label next: rank unlabeled scans by the model's uncertainty about them.

Each scan goes through :meth:`Predictor.predict_volume` with an uncertainty measure (see
:mod:`dkuxnet.inference.predictor`), and its score is

    the mean per-voxel uncertainty over the predicted foreground dilated by
    ``border_voxels`` voxels (26-connected steps).

That region is where a label would change the segmentation: the object and its border. It is
the compromise between the alternatives: the mean over the foreground alone leaves out the
border where a missed or extra rim shows; the mean over the whole image depends on how much
background a scan has (the sum would depend on object size). The measured comparison
(``benchmarks/uncertainty_measures.py``, phantoms and real LA scans) is in
``docs/uncertainty.md``.

An empty prediction (no foreground voxel) scores ``inf`` and ranks first: for a task whose
scans all contain the structure (the left atrium), the model has missed it, and that scan is
the one to look at. Ties keep the input order.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dkuxnet.data import Case, load_dataset
from dkuxnet.errors import InputError
from dkuxnet.inference.predictor import Predictor
from dkuxnet.io import read_volume, strip_volume_suffix, volume_suffix

#: How far (in voxels) the scored region reaches beyond the predicted foreground.
DEFAULT_BORDER_VOXELS = 3
#: Columns of the ranking table and CSV, in order.
RANKING_COLUMNS: tuple[str, ...] = ("rank", "case", "score", "foreground_voxels", "image")


#: The measure ``dkuxnet rank`` uses for a dual model unless told otherwise: on real LA test
#: scans the disagreement |pA - pB| ranked scans by 1 - Dice better than the entropy of the
#: mean, while entropy is the better voxel map, so maps default to entropy and rankings to
#: disagreement (figures: docs/uncertainty.md).
RANKING_MEASURE_DUAL = "disagreement"


@dataclass(frozen=True)
class ScanScore:
    """One scan's place in the ranking.

    Attributes:
        rank: 1 = the scan to label first.
        case: case name (the file name without its image suffix).
        score: mean uncertainty over the scored region (``inf`` for an empty prediction).
        foreground_voxels: voxels the model segmented.
        image: the image file.
    """

    rank: int
    case: str
    score: float
    foreground_voxels: int
    image: Path


def region_score(
    label: np.ndarray, uncertainty: np.ndarray, border_voxels: int = DEFAULT_BORDER_VOXELS
) -> float:
    """Mean of ``uncertainty`` over ``label > 0`` dilated by ``border_voxels``.

    Args:
        label: predicted class map ``(Z, Y, X)``.
        uncertainty: per-voxel uncertainty ``(Z, Y, X)``, same shape.
        border_voxels: dilation steps (26-connected), ``>= 0``.

    Returns:
        The mean, or ``inf`` when ``label`` has no foreground voxel (module docstring).

    Raises:
        ValueError: shapes differ or ``border_voxels < 0``.
    """
    if label.shape != uncertainty.shape:
        raise ValueError(f"label {label.shape} and uncertainty {uncertainty.shape} differ")
    if border_voxels < 0:
        raise ValueError(f"border_voxels must be >= 0, got {border_voxels}")
    foreground = label > 0
    hits = np.argwhere(foreground)
    if hits.size == 0:
        return math.inf
    # Dilate inside the foreground's bounding box grown by the border, not the whole scan.
    low = np.maximum(hits.min(axis=0) - border_voxels, 0)
    high = np.minimum(hits.max(axis=0) + border_voxels + 1, label.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    region = foreground[box]
    if border_voxels > 0:
        structure = ndimage.generate_binary_structure(3, 3)
        region = ndimage.binary_dilation(region, structure, iterations=border_voxels)
    return float(np.mean(uncertainty[box][region], dtype=np.float64))


def find_scans(path: str | os.PathLike[str]) -> list[Case]:
    """The scans to rank, from a folder, a dataset, a list file or one image.

    * a folder with image files: every image in it;
    * a dataset folder (``imagesTr/`` ...) or datalist ``.json``: its *unlabeled* cases;
    * any other text file: one image path a line (relative to the file's folder; blank lines
      and lines starting with ``#`` are skipped);
    * an image file: that one scan.

    Raises:
        InputError: nothing found, a listed file missing, or two scans with one case name.
    """
    source = Path(path)
    if source.is_dir():
        images = sorted(
            p
            for p in source.iterdir()
            if p.is_file() and not p.name.startswith(".") and volume_suffix(p) is not None
        )
        # A folder of images: all of them; a dataset folder: its unlabeled cases.
        scans = [Case(strip_volume_suffix(p), p) for p in images] if images else _unlabeled(source)
    elif not source.is_file():
        raise InputError(f"--input not found: {source}")
    elif volume_suffix(source) is not None:
        scans = [Case(strip_volume_suffix(source), source)]
    elif source.suffix.lower() == ".json":
        scans = _unlabeled(source)
    else:
        scans = _read_list(source)
    names = [c.name for c in scans]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{source}: two scans share the case name(s) {', '.join(twice)}")
    return scans


def _unlabeled(source: Path) -> list[Case]:
    scans = load_dataset(source).unlabeled
    if not scans:
        raise InputError(f"{source} has no unlabeled scan to rank")
    return scans


def _read_list(source: Path) -> list[Case]:
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list of scans {source}: {exc}") from exc
    scans = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = (source.parent / entry).resolve()
        if volume_suffix(image) is None:
            raise InputError(f"{source}:{number}: not an image file name: {entry}")
        if not image.is_file():
            raise InputError(f"{source}:{number}: image not found: {image}")
        scans.append(Case(strip_volume_suffix(image), image))
    if not scans:
        raise InputError(f"{source} lists no image")
    return scans


def rank_scans(
    predictor: Predictor,
    scans: Sequence[Case],
    *,
    border_voxels: int = DEFAULT_BORDER_VOXELS,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[ScanScore]:
    """Predict every scan with its uncertainty map and rank them, most uncertain first.

    Args:
        predictor: built with an ``uncertainty`` measure.
        scans: the images (labels, if any, are ignored).
        border_voxels: see :func:`region_score`.
        progress: called as ``progress(done, total, case)`` after each scan.

    Returns:
        One :class:`ScanScore` per scan, highest score first (rank 1).

    Raises:
        ValueError: the predictor computes no uncertainty.
        InputError: an unreadable image.
    """
    if predictor.uncertainty is None:
        raise ValueError("rank_scans needs a Predictor built with an uncertainty measure")
    scored: list[tuple[str, float, int, Path]] = []
    for done, scan in enumerate(scans, start=1):
        result = predictor.predict_volume(read_volume(scan.image))
        assert result.uncertainty is not None
        label = result.label.array
        score = region_score(label, result.uncertainty.array, border_voxels)
        scored.append((scan.name, score, int(np.count_nonzero(label)), scan.image))
        if progress is not None:
            progress(done, len(scans), scan.name)
    order = sorted(range(len(scored)), key=lambda i: -scored[i][1])  # stable: ties keep order
    return [ScanScore(rank, *scored[i]) for rank, i in enumerate(order, start=1)]


def format_ranking(scores: Sequence[ScanScore]) -> str:
    """A fixed-width table, one line per scan, in rank order."""
    width = max([len("case"), *(len(s.case) for s in scores)])
    lines = [f"{'rank':>4}  {'case':<{width}}  {'score':>11}  {'foreground':>10}"]
    lines.append("-" * len(lines[0]))
    for s in scores:
        score = "inf (empty)" if math.isinf(s.score) else f"{s.score:.5f}"
        lines.append(f"{s.rank:>4}  {s.case:<{width}}  {score:>11}  {s.foreground_voxels:>10}")
    return "\n".join(lines)


def write_ranking_csv(scores: Sequence[ScanScore], path: str | os.PathLike[str]) -> Path:
    """Write the ranking as CSV (:data:`RANKING_COLUMNS`; an empty prediction's score is
    ``inf``); the parent folder is created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(RANKING_COLUMNS))
        writer.writeheader()
        for s in scores:
            row = asdict(s)
            row["score"] = "inf" if math.isinf(s.score) else f"{s.score:.6g}"
            row["image"] = str(s.image)
            writer.writerow(row)
    return out
