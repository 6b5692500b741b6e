"""``dkuxnet predict``: segment one image or a folder of images with a trained model."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from dkuxnet.config import AMP_CHOICES, NETWORK_CHOICES, UNCERTAINTY_CHOICES
from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import ConfigError, InputError, OutputExistsError

HELP = "segment an image or a folder of images with a trained model (checkpoint or run folder)"

log = logging.getLogger(__name__)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision``: the inference autocast setting (``inference.amp``), shared by the
    commands that predict (predict, evaluate, rank)."""
    parser.add_argument(
        "--precision",
        choices=AMP_CHOICES,
        default=None,
        help="mixed precision: auto (default: bf16 on a CPU with native bf16, fp16 on a GPU, "
        "else fp32), bf16, fp16 (GPU) or off (fp32)",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: one of :data:`~dkuxnet.device.DEVICE_CHOICES` or ``cuda:N``, shared by the
    commands that predict (checked when the device is resolved)."""
    parser.add_argument(
        "--device", default="auto", help=f"{', '.join(DEVICE_CHOICES)} or cuda:N (default auto)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="checkpoint file or run folder (best.pt, else last.pt); default: the bundled model",
    )
    parser.add_argument("--input", required=True, help="image file, or a folder of images")
    parser.add_argument(
        "--output",
        required=True,
        help="label file for one image, or a folder (same file names) for a folder of images",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="average over flips along every axis (8x slower)",
    )
    parser.add_argument(
        "--no-largest-component",
        dest="largest_component",
        action="store_false",
        default=None,
        help="keep every connected component (default: the largest one per class)",
    )
    parser.add_argument(
        "--networks",
        choices=NETWORK_CHOICES,
        default=None,
        help="average both networks of a dual model (default) or use one",
    )
    parser.add_argument(
        "--sw-batch-size", type=int, default=None, help="windows per forward pass (config)"
    )
    add_precision_argument(parser)
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write the foreground probability map as <output name>_prob<ext>",
    )
    parser.add_argument(
        "--uncertainty",
        metavar="OUT",
        help="also write a per-voxel uncertainty map: a file for one image, a folder (same file "
        "names) for a folder of images; needs a dual model or --tta",
    )
    parser.add_argument(
        "--uncertainty-measure",
        choices=UNCERTAINTY_CHOICES,
        default="auto",
        help="auto (default): entropy of the mean foreground probability for a dual model, "
        "variance over flips for one network with --tta; disagreement: |pA - pB| of the two "
        "networks of a dual model",
    )
    parser.add_argument(
        "--roi",
        metavar="R1,A1,S1,R2,A2,S2",
        help="segment only inside this box: two opposite corners in RAS millimetres (as 3D "
        "Slicer and ITK-SNAP show them) of a box aligned to the RAS axes, or 24 numbers, the "
        "eight corners R,A,S of a box in any orientation (a rotated box on an oblique scan is "
        "then cropped tightly); elsewhere the label is 0. Use it when the scan shows more than "
        "the heart (write --roi=-10,... when the first number is negative)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--events", help="append progress events (JSON lines) to this file")


@dataclass(frozen=True)
class Job:
    """One image to segment and where its outputs go."""

    case: str
    image: Path
    label_out: Path
    prob_out: Path | None
    uncertainty_out: Path | None = None


class Cancelled(KeyboardInterrupt):
    """Raised from the SIGTERM handler so that cleanup runs as for Ctrl-C."""


def probability_path(label_path: Path) -> Path:
    """``out/case.nii.gz -> out/case_prob.nii.gz``."""
    from dkuxnet.io import strip_volume_suffix, volume_suffix

    suffix = volume_suffix(label_path) or ""
    return label_path.with_name(strip_volume_suffix(label_path) + "_prob" + suffix)


def plan_jobs(
    input_path: Path,
    output_path: Path,
    probabilities: bool,
    uncertainty_path: Path | None = None,
) -> list[Job]:
    """Pair inputs with outputs: a file with a file, a folder with a folder (same names).

    ``uncertainty_path`` follows the same rule as ``output_path``.
    """
    from dkuxnet.io import strip_volume_suffix, volume_suffix

    if input_path.is_dir():
        for flag, path in (("--output", output_path), ("--uncertainty", uncertainty_path)):
            if path is not None and path.exists() and not path.is_dir():
                raise InputError(f"--input is a folder, so {flag} must be a folder: {path}")
        images = sorted(
            p
            for p in input_path.iterdir()
            if p.is_file() and not p.name.startswith(".") and volume_suffix(p) is not None
        )
        if not images:
            raise InputError(f"no image files (.nii.gz, .nrrd, .mha, ...) in {input_path}")
        pairs = [(strip_volume_suffix(p), p, output_path / p.name) for p in images]
    elif input_path.is_file():
        if output_path.is_dir():
            raise InputError(
                f"--output {output_path} is a folder; give the label file to write, "
                f"e.g. {output_path / input_path.name}"
            )
        for flag, path in (("--output", output_path), ("--uncertainty", uncertainty_path)):
            if path is None:
                continue
            if path.is_dir():
                raise InputError(
                    f"{flag} {path} is a folder; give the file to write, "
                    f"e.g. {path / input_path.name}"
                )
            if volume_suffix(path) is None:
                raise InputError(f"{flag} {path} needs an image suffix (.nii.gz, .nrrd, .mha, ...)")
        pairs = [(strip_volume_suffix(input_path), input_path, output_path)]
    else:
        raise InputError(f"--input not found: {input_path}")

    def uncertainty_out(image: Path) -> Path | None:
        if uncertainty_path is None:
            return None
        return uncertainty_path / image.name if input_path.is_dir() else uncertainty_path

    return [
        Job(
            case,
            image,
            out,
            probability_path(out) if probabilities else None,
            uncertainty_out(image),
        )
        for case, image, out in pairs
    ]


def check_outputs(jobs: list[Job], overwrite: bool) -> None:
    """Refuse, before any work, when an output exists or two outputs share one path."""
    outputs = [
        p
        for job in jobs
        for p in (job.label_out, job.prob_out, job.uncertainty_out)
        if p is not None
    ]
    inputs = {job.image.resolve() for job in jobs}
    clashing = [p for p in outputs if p.resolve() in inputs]
    if clashing:
        raise InputError(f"output would replace an input image: {clashing[0]}")
    seen: set[Path] = set()
    for path in outputs:
        if path.resolve() in seen:
            raise InputError(f"two outputs would be written to one file: {path}")
        seen.add(path.resolve())
    if not overwrite:
        existing = [p for p in outputs if p.exists()]
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise OutputExistsError(
                f"output already exists: {existing[0]}{more} (use --overwrite to replace)"
            )


def resolve_model(model: str | None) -> Path:
    from dkuxnet.resources import MODELS_DIR, default_model_path

    if model:
        return Path(model)
    default = default_model_path()
    if default is None:
        raise ConfigError(
            f"no --model given and this installation has no bundled model in {MODELS_DIR}; "
            "pass --model CHECKPOINT (or a run folder)"
        )
    return default


def run(args: argparse.Namespace) -> int:
    from dkuxnet.events import EventWriter

    events = EventWriter(args.events) if args.events else None

    def emit(kind: str, **fields: Any) -> None:
        if events is not None:
            events.emit(kind, **fields)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Cancelled()

    # SIGTERM (the GUI's cancel) unwinds like Ctrl-C: no output file is left half-written,
    # since write_volume only moves complete files into place.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        _predict_all(args, emit)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through Cancelled
        emit("finished", status="cancelled", error=None)
        raise
    except Exception as exc:
        emit("finished", status="failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    emit("finished", status="completed", error=None)
    return 0


def _predict_all(args: argparse.Namespace, emit: Any) -> None:
    from tqdm import tqdm

    from dkuxnet.inference import Predictor
    from dkuxnet.inference.predictor import UNCERTAINTY_DESCRIPTIONS
    from dkuxnet.inference.roi import (
        box_from_corners,
        constant_image_warning,
        parse_roi,
        volume_check,
        volume_warning,
    )
    from dkuxnet.io import read_volume, write_volume

    roi = parse_roi(args.roi) if args.roi else None  # a malformed box fails before any work
    uncertainty_path = Path(args.uncertainty) if args.uncertainty else None
    jobs = plan_jobs(Path(args.input), Path(args.output), args.probabilities, uncertainty_path)
    check_outputs(jobs, args.overwrite)
    model = resolve_model(args.model)
    overrides: dict[str, Any] = {
        "tta": args.tta,
        "networks_choice": args.networks,
        "largest_component": args.largest_component,
        "sw_batch_size": args.sw_batch_size,
        "amp": args.precision,
        "uncertainty": args.uncertainty_measure if uncertainty_path else None,
    }
    predictor = Predictor.from_checkpoint(model, args.device, **overrides)
    expected = predictor.label_volume_ml  # the training labels' volume range, for the check
    if predictor.uncertainty is not None:
        log.info("uncertainty map: %s", UNCERTAINTY_DESCRIPTIONS.get(predictor.uncertainty, "?"))
    emit(
        "started",
        job="predict",
        total=len(jobs),
        device=str(predictor.device),
        resumed_from=0,
        uncertainty=predictor.uncertainty,
        message=f"predicting {len(jobs)} image(s) with {model}",
    )
    start = time.perf_counter()
    cases = tqdm(jobs, desc="cases", unit="case", disable=None, file=sys.stderr)
    for job in cases:
        emit("progress", stage="reading", done=0, total=1, case=job.case)
        volume = read_volume(job.image)
        box = None if roi is None else box_from_corners(volume, roi)
        emit("progress", stage="reading", done=1, total=1, case=job.case)
        with tqdm(desc=job.case, unit="window", leave=False, disable=None, file=sys.stderr) as bar:

            def progress(done: int, total: int, bar: Any = bar, case: str = job.case) -> None:
                bar.total = total
                bar.update(done - bar.n)
                emit("progress", stage="predicting", done=done, total=total, case=case)

            result = predictor.predict_volume(
                volume, progress, probabilities=args.probabilities, roi=box
            )
        where = f"{job.case}'s image" + ("" if box is None else " inside the region of interest")
        warning = constant_image_warning(volume.array if box is None else volume.array[box], where)
        check = "constant" if warning is not None else volume_check(result.label, expected)
        if warning is None:
            warning = volume_warning(result.label, expected, f"{job.case}'s segmentation")
        if warning is not None:  # check: what a front end can act on ("too_large": give a box)
            log.warning("%s", warning)
            emit("warning", case=job.case, message=warning, check=check)
        emit("progress", stage="writing", done=0, total=1, case=job.case)
        write_volume(result.label, job.label_out, overwrite=args.overwrite)
        if job.prob_out is not None and result.probabilities is not None:
            write_volume(result.probabilities, job.prob_out, overwrite=args.overwrite)
        if job.uncertainty_out is not None and result.uncertainty is not None:
            write_volume(result.uncertainty, job.uncertainty_out, overwrite=args.overwrite)
        emit("progress", stage="writing", done=1, total=1, case=job.case)
        emit("output", path=str(job.label_out), case=job.case)
        log.debug("%s -> %s", job.image, job.label_out)
    elapsed = time.perf_counter() - start
    log.info("wrote %d segmentation(s) in %.1f s", len(jobs), elapsed)
