"""``dkuxnet evaluate``: Dice, Jaccard, HD95 and ASD of a model on a dataset, or of saved
predictions against labels; a per-case and mean ± std table, optionally as CSV and JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Literal

from dkuxnet.commands.predict import add_device_argument, add_precision_argument
from dkuxnet.errors import InputError, OutputExistsError
from dkuxnet.reports import write_csv, write_json

HELP = "score a model on a dataset split, or prediction files against label files"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="checkpoint file or run folder to predict with (default: bundled model)"
    )
    parser.add_argument("--data", help="dataset folder (decathlon layout) or datalist .json")
    parser.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="which cases of --data to score (test)",
    )
    parser.add_argument("--predictions", help="folder of predicted label files")
    parser.add_argument("--labels", help="folder of reference label files (same case names)")
    add_device_argument(parser)
    parser.add_argument("--tta", action="store_true", default=None, help="flip test-time augm.")
    add_precision_argument(parser)
    parser.add_argument(
        "--voxel-units",
        action="store_true",
        help="HD95 and ASD in voxels (the published LA tables' units) instead of mm",
    )
    parser.add_argument(
        "--style",
        choices=("monai", "medpy"),
        default="monai",
        help="surface-distance convention (medpy = the published LA tables)",
    )
    parser.add_argument("--csv", help="write the per-case table as CSV here")
    parser.add_argument("--json", help="write per-case values and the summary as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --csv/--json")


def _cases_from_folders(predictions: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    from dkuxnet.io import strip_volume_suffix, volume_suffix

    for folder, what in ((predictions, "--predictions"), (labels, "--labels")):
        if not folder.is_dir():
            raise InputError(f"{what} folder not found: {folder}")

    def files(folder: Path) -> dict[str, Path]:
        return {
            strip_volume_suffix(p): p
            for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and volume_suffix(p) is not None
        }

    preds, labs = files(predictions), files(labels)
    common = sorted(set(preds) & set(labs))
    if not common:
        raise InputError(
            f"no case has both a prediction in {predictions} and a label in {labels} "
            "(files are matched by name)"
        )
    missing = sorted(set(labs) - set(preds))
    if missing:
        log.warning("%d label(s) have no prediction and are skipped: %s", len(missing), missing[:5])
    return [(name, preds[name], labs[name]) for name in common]


def _score_files(
    pairs: list[tuple[str, Path, Path]], voxel_units: bool, style: Literal["monai", "medpy"]
) -> list[dict[str, Any]]:
    from dkuxnet.io import check_same_geometry, read_volume
    from dkuxnet.metrics import case_metrics

    rows = []
    for name, pred_path, label_path in pairs:
        pred = read_volume(pred_path, what="prediction")
        label = read_volume(label_path, what="label")
        check_same_geometry(pred, label, names=(f"prediction {pred_path}", f"label {label_path}"))
        spacing = None if voxel_units else pred.spacing
        rows.append({"case": name, **case_metrics(pred.array, label.array, spacing, style=style)})
    return rows


def _score_model(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from dkuxnet.commands.predict import resolve_model
    from dkuxnet.data import load_dataset
    from dkuxnet.inference import Predictor, score_cases

    split = load_dataset(args.data)
    cases = [c for c in getattr(split, args.split) if c.label is not None]
    if not cases:
        raise InputError(f"{args.data}: the {args.split} split has no case with a label")
    predictor = Predictor.from_checkpoint(
        resolve_model(args.model), args.device, tta=args.tta, amp=args.precision
    )
    with tqdm(total=len(cases), desc="cases", unit="case", disable=None, file=sys.stderr) as bar:
        return score_cases(
            predictor,
            cases,
            voxel_units=args.voxel_units,
            style=args.style,
            progress=lambda *_: bar.update(1),
        )


def _check_reports(args: argparse.Namespace) -> None:
    """Refuse up front (before any scoring) to replace a report the user already has."""
    reports = [Path(p) for p in (args.csv, args.json) if p]
    if len(reports) == 2 and reports[0].resolve() == reports[1].resolve():
        raise InputError(f"--csv and --json name the same file: {reports[0]}")
    for path in reports:
        if path.is_dir():
            raise InputError(f"report path is a folder: {path}")
        if path.exists() and not args.overwrite:
            raise OutputExistsError(f"report already exists: {path} (use --overwrite to replace)")


def run(args: argparse.Namespace) -> int:
    from dkuxnet.metrics import format_table, summarize

    _check_reports(args)
    by_files = args.predictions is not None or args.labels is not None
    if by_files:
        if args.predictions is None or args.labels is None:
            raise InputError("--predictions and --labels go together")
        if args.model is not None or args.data is not None:
            raise InputError("use either --model/--data or --predictions/--labels, not both")
        pairs = _cases_from_folders(Path(args.predictions), Path(args.labels))
        rows = _score_files(pairs, args.voxel_units, args.style)
    else:
        if args.data is None:
            raise InputError("give --data (and --model), or --predictions and --labels")
        rows = _score_model(args)
    units = "voxels" if args.voxel_units else "mm"
    print(format_table(rows, units=units))
    if args.csv:
        write_csv(rows, Path(args.csv))
        log.info("wrote %s", args.csv)
    if args.json:
        write_json(rows, summarize(rows), units, Path(args.json))
        log.info("wrote %s", args.json)
    return 0
