"""``dkuxnet train``: dual-network semi-supervised training (or the supervised baseline)."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from dkuxnet.config import PRESETS
from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import InputError
from dkuxnet.run_config import RunRequest, apply_plan, build_config

HELP = "train Dual kMaX UX-Net on labeled + unlabeled scans (dual or supervised mode)"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="decathlon-style folder or datalist JSON")
    p.add_argument("--out", required=True, help="run folder (events, config, checkpoints)")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="model preset for a new model (default lite; with --init, the init model's; "
        "unet = MONAI's UNet baseline)",
    )
    p.add_argument("--config", help="JSON file with a full or partial TrainConfig")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. training.mode=supervised (repeatable)",
    )
    p.add_argument("--iterations", type=int, help="training iterations (training.iterations)")
    p.add_argument("--init", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-plan",
        action="store_true",
        help="keep the preset's spacing, patch and batch instead of planning them from the "
        "dataset and this machine",
    )


def run(args: argparse.Namespace) -> int:
    from dkuxnet.data import load_dataset
    from dkuxnet.progress import follow_training
    from dkuxnet.training import Trainer

    request = RunRequest.from_args(args)
    config = build_config(request)
    data = load_dataset(args.data)
    if not data.labeled:  # fail before the run folder is created, naming the dataset
        raise InputError(
            f"{args.data}: no labeled case; training needs at least one image with a label "
            "(labelsTr/ or a 'training' entry with 'label')"
        )
    log.info(data.summary())
    config = apply_plan(config, request, data)
    trainer = Trainer(
        config,
        data,
        Path(args.out),
        device=args.device,
        init=args.init,
        resume=args.resume,
        stop_event=threading.Event(),
    )
    with follow_training(Path(args.out), enabled=not args.quiet):
        status = trainer.run()
    log.info("training %s; run folder %s", status, args.out)
    return 0 if status == "completed" else 3
