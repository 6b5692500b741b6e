"""``dkuxnet web``: Segment and Fine-tune in a web browser (the ``[web]`` extra).

The page lives in the ``DKUXNetSegmentWeb`` package beside this core; it needs trame-slicer
and ``slicer-core``, which the core never imports. This module imports it only inside
:func:`run`, after checking that the extra is installed, so ``dkuxnet`` without it still
works and says what to install.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path
from types import ModuleType

from dkuxnet.device import DEVICE_CHOICES

HELP = "serve a web page to load a volume, Segment it and Fine-tune the model (needs [web])"
INSTALL_HINT = 'pip install -e ".[web]"'

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 lets "
        "anyone who can reach this machine use the page and its data folder)",
    )
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.add_argument(
        "--data",
        default=".",
        help="data folder: the only files the page can load, and where it writes "
        "segmentations and fine-tuning runs (default: the current folder)",
    )
    p.add_argument("--model", help="checkpoint Segment starts with (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="default: auto")


def run(args: argparse.Namespace) -> int:
    from dkuxnet.errors import InputError

    web = _import_web()
    data = Path(args.data)
    if not data.is_dir():
        raise InputError(f"data folder not found: {data}")
    if not is_loopback(args.host):
        log.warning(
            "listening on %s: anyone who can reach it can load images from %s and run jobs",
            args.host,
            data.resolve(),
        )
    web.serve(
        data,
        host=args.host,
        port=args.port,
        model=args.model,
        device=args.device,
        verbose=bool(getattr(args, "verbose", False)),
    )
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this computer."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _import_web() -> ModuleType:
    """The web page's module (``DKUXNetSegmentWeb.app``), or one clear error naming what to
    install."""
    from dkuxnet.errors import InputError

    try:
        import DKUXNetSegmentWeb
    except ImportError as exc:
        raise InputError(f"this installation has no web front end ({exc}): {INSTALL_HINT}") from exc
    missing = DKUXNetSegmentWeb.missing_modules()
    if missing:
        raise InputError(
            f"`dkuxnet web` needs the web extra ({', '.join(missing)} missing): {INSTALL_HINT}"
        )
    from DKUXNetSegmentWeb import app

    return app
