"""``dkuxnet plot RUN``: loss and validation-Dice curves of a run, as ``RUN/curves.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot a run's losses and validation Dice against iteration (RUN/curves.png)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder holding events.jsonl")
    p.add_argument("--output", help="image path (default RUN/curves.png)")


def run(args: argparse.Namespace) -> int:
    from dkuxnet.plots import plot_curves

    out = plot_curves(Path(args.run), Path(args.output) if args.output else None)
    print(out)
    return 0
