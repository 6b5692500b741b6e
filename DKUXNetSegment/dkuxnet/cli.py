"""The one ``dkuxnet`` command.

Each subcommand lives in its own module under :mod:`dkuxnet.commands` and exposes
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``. This file only wires them up,
sets up logging, and turns our own errors into one clear line and a non-zero exit code.
Subcommand modules are imported lazily so that ``dkuxnet info`` does not pay for torch-heavy
imports it does not need.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from dkuxnet import __version__
from dkuxnet.errors import DKUXNetError
from dkuxnet.jobs import share_the_cpu

# subcommand name -> module under dkuxnet.commands
SUBCOMMANDS: dict[str, str] = {
    "info": "info",
    "synth": "synth",
    "la-import": "la_import",
    "train": "train",
    "estimate": "estimate",
    "predict": "predict",
    "rank": "rank",
    "evaluate": "evaluate",
    "plot": "plot",
    "demo": "demo",
    "web": "web",
}

log = logging.getLogger("dkuxnet")


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(f"dkuxnet.commands.{module_name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; with ``only`` set, import just that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="dkuxnet",
        description="Dual kMaX UX-Net: semi-supervised 3D segmentation (train, predict, evaluate).",
    )
    parser.add_argument("--version", action="version", version=f"dkuxnet {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging and full tracebacks"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(run `dkuxnet {name} -h`)", add_help=False)
            continue
        module = _load(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument(  # SUPPRESS: an unset sub-level flag must not undo `dkuxnet -v CMD`
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="debug logging and full tracebacks",
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _wanted_subcommand(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in SUBCOMMANDS:
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "torch" not in sys.modules:  # before any subcommand loads it: see share_the_cpu
        share_the_cpu(os.environ)
    wanted = _wanted_subcommand(argv)
    # Help on the top level lists every subcommand with its real help text.
    parser = build_parser(only=wanted if wanted and "-h" not in argv[:1] else None)
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except DKUXNetError as exc:
        if verbose:
            raise
        print(f"dkuxnet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dkuxnet {args.command}: interrupted", file=sys.stderr)
        return 130
