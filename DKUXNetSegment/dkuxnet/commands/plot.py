"""``dkuxnet plot RUN``: loss and validation-Dice curves of a run, as ``RUN/curves.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot a run's losses and validation Dice against iteration (RUN/curves.png)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder holding events.jsonl")
    p.add_argument(
        "--output", help="image path (default RUN/curves.png, which is always refreshed)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args: argparse.Namespace) -> int:
    from dkuxnet.errors import InputError, OutputExistsError
    from dkuxnet.plots import plot_curves

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise InputError(f"run folder not found: {run_dir}")
    output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.overwrite:
        raise OutputExistsError(f"{output} already exists (use --overwrite to replace)")
    out = plot_curves(run_dir, output)
    print(out)
    return 0
