"""``dkuxnet demo``: the whole method on synthetic phantoms in a few CPU minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

from dkuxnet.device import DEVICE_CHOICES

HELP = "make synthetic LA phantoms, fine-tune with the dual method, predict, evaluate, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="report folder (must be new or empty)")
    p.add_argument("--iterations", type=int, help="training iterations (default 120)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dkuxnet.demo import DemoSettings, run_demo
    from dkuxnet.errors import ConfigError

    settings = DemoSettings(seed=args.seed)
    if args.iterations is not None:
        if args.iterations <= 0:
            raise ConfigError(f"--iterations must be positive, got {args.iterations}")
        settings = DemoSettings(seed=args.seed, iterations=args.iterations)
    result = run_demo(Path(args.out), settings, device=args.device, progress=not args.quiet)
    print(result.table)
    return 0
