"""``dkuxnet rank``: which unlabeled scan to label next, by the model's uncertainty."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dkuxnet.commands.predict import add_device_argument, add_precision_argument
from dkuxnet.config import UNCERTAINTY_CHOICES
from dkuxnet.errors import InputError, OutputExistsError

HELP = (
    "rank unlabeled scans by the model's uncertainty (mean over the predicted foreground and "
    "its border), highest first: the scans to label next"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="checkpoint file or run folder (best.pt, else last.pt); default: the bundled model",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a folder of images, a dataset folder or datalist .json (its unlabeled cases), "
        "or a text file with one image path a line",
    )
    parser.add_argument("--output", help="also write the ranking as CSV to this file")
    add_device_argument(parser)
    parser.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="average over flips along every axis (8x slower); needed for a single network",
    )
    parser.add_argument(
        "--measure",
        choices=UNCERTAINTY_CHOICES,
        default="auto",
        help="auto (default): disagreement |pA - pB| of the two networks for a dual model (it "
        "ranked real LA scans best: README, 'Uncertainty'), variance over flips for one network "
        "with --tta; entropy: of the mean foreground probability (the best voxel map)",
    )
    parser.add_argument(
        "--border",
        type=int,
        default=None,
        help="voxels around the predicted foreground that count toward the score (default 3)",
    )
    parser.add_argument(
        "--sw-batch-size", type=int, default=None, help="windows per forward pass (config)"
    )
    add_precision_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--events",
        help="append progress events (JSON lines) to this file: started (with the measure), "
        "one progress per scan, finished",
    )


def run(args: argparse.Namespace) -> int:
    from dkuxnet.events import EventWriter

    events = EventWriter(args.events) if args.events else None

    def emit(kind: str, **fields: Any) -> None:
        if events is not None:
            events.emit(kind, **fields)

    try:
        _rank(args, emit)
    except KeyboardInterrupt:
        emit("finished", status="cancelled", error=None)
        raise
    except Exception as exc:
        emit("finished", status="failed", error=str(exc) or type(exc).__name__)
        raise
    emit("finished", status="completed", error=None)
    return 0


def _rank(args: argparse.Namespace, emit: Callable[..., None]) -> None:
    from tqdm import tqdm

    from dkuxnet.commands.predict import resolve_model
    from dkuxnet.inference import Predictor
    from dkuxnet.inference.predictor import UNCERTAINTY_DESCRIPTIONS
    from dkuxnet.inference.ranking import (
        DEFAULT_BORDER_VOXELS,
        RANKING_MEASURE_DUAL,
        find_scans,
        format_ranking,
        rank_scans,
        write_ranking_csv,
    )

    border = DEFAULT_BORDER_VOXELS if args.border is None else args.border
    if border < 0:
        raise InputError(f"--border must be >= 0, got {border}")
    output = Path(args.output) if args.output else None
    if output is not None:  # refuse before any work
        if output.is_dir():
            raise InputError(f"--output is a folder; give the CSV file to write: {output}")
        if output.exists() and not args.overwrite:
            raise OutputExistsError(f"output already exists: {output} (use --overwrite to replace)")
    scans = find_scans(args.input)
    overrides: dict[str, Any] = {
        "tta": args.tta,
        "sw_batch_size": args.sw_batch_size,
        "amp": args.precision,
        "uncertainty": args.measure,
    }
    predictor = Predictor.from_checkpoint(resolve_model(args.model), args.device, **overrides)
    if args.measure == "auto" and len(predictor.networks) >= 2:
        predictor.uncertainty = RANKING_MEASURE_DUAL
    measure = predictor.uncertainty or "?"
    description = UNCERTAINTY_DESCRIPTIONS.get(measure, measure)
    log.info(
        "ranking %d scan(s) by %s, over the predicted foreground + %d voxel(s)",
        len(scans),
        description,
        border,
    )
    emit(
        "started",
        job="rank",
        total=len(scans),
        device=str(predictor.device),
        resumed_from=0,
        uncertainty=predictor.uncertainty,
        message=f"ranking {len(scans)} scan(s) by {description}",
    )
    with tqdm(total=len(scans), desc="scans", unit="scan", disable=None, file=sys.stderr) as bar:

        def progress(done: int, total: int, case: str) -> None:
            bar.set_postfix_str(case)
            bar.update(done - bar.n)
            emit("progress", stage="ranking", done=done, total=total, case=case)

        scores = rank_scans(predictor, scans, border_voxels=border, progress=progress)
    print(f"uncertainty: {measure} (mean over the predicted foreground + {border} voxels)")
    print(format_ranking(scores))
    if output is not None:
        write_ranking_csv(scores, output)
        log.info("wrote %s", output)
        emit("output", path=str(output), case="ranking")
