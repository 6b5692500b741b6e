"""``dkuxnet train``: dual-network semi-supervised training (or the supervised baseline)."""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path

from dkuxnet.config import PRESETS, TrainConfig
from dkuxnet.data import DatasetSplit
from dkuxnet.errors import ConfigError, InputError

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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-plan",
        action="store_true",
        help="keep the preset's spacing, patch and batch instead of planning them from the "
        "dataset and this machine",
    )


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Preset (or, fine-tuning with --init, the init model's own settings), then --config, --set."""
    if args.init and args.preset is None:
        from dkuxnet.training.checkpoint import load_checkpoint

        init_cfg: TrainConfig = load_checkpoint(args.init)["train_config"]
        # Keep what defines the model and its input (network, patch, spacing, inference);
        # take the training recipe fresh (the dual method by default).
        base = TrainConfig(model=init_cfg.model, data=init_cfg.data, inference=init_cfg.inference)
    else:
        base = TrainConfig.preset(args.preset or "lite")
    if args.config:
        loaded = TrainConfig.load(args.config).to_dict()
        merged = base.to_dict()
        for section, values in loaded.items():
            merged[section].update(values)
        base = TrainConfig.from_dict(merged)
    overrides = list(args.set)
    if args.iterations is not None:
        if args.iterations <= 0:
            raise ConfigError(f"--iterations must be positive, got {args.iterations}")
        overrides.append(f"training.iterations={args.iterations}")
    return base.with_overrides(overrides) if overrides else base


PLANNED_KEYS = (
    "data.target_spacing",
    "data.patch_size",
    "data.labeled_batch",
    "data.unlabeled_batch",
)


def given_keys(args: argparse.Namespace) -> set[str]:
    """``section.key`` names the user set through --config or --set."""
    keys = {a.split("=", 1)[0].strip() for a in args.set}
    if args.config:
        for section, values in TrainConfig.load(args.config).to_dict().items():
            keys |= {f"{section}.{k}" for k in values}
    return keys


def apply_plan(config: TrainConfig, args: argparse.Namespace, data: DatasetSplit) -> TrainConfig:
    """Fill the planned settings the user did not give (none with --init, --resume, --no-plan:
    a fine-tune keeps its model's spacing and patch; a resumed run keeps its own config)."""
    if args.no_plan or args.init or args.resume:
        return config
    from dkuxnet.plan import fingerprint, make_plan, this_machine

    open_keys = [k for k in PLANNED_KEYS if k not in given_keys(args)]
    if not open_keys:
        return config
    cases = list(data.labeled) + list(data.unlabeled)
    plan = make_plan(fingerprint(c.image for c in cases), this_machine(args.device), config.model)
    for line in plan.reasons:
        log.info("plan: %s", line)
    planned = plan.as_overrides()
    log.info("plan sets %s (override with --set or --config; --no-plan keeps the preset's)",
             ", ".join(f"{k}={planned[k]}" for k in open_keys))  # fmt: skip
    return config.with_overrides([f"{k}={json.dumps(planned[k])}" for k in open_keys])


def run(args: argparse.Namespace) -> int:
    from dkuxnet.data import load_dataset
    from dkuxnet.progress import follow_training
    from dkuxnet.training import Trainer

    config = build_config(args)
    data = load_dataset(args.data)
    if not data.labeled:  # fail before the run folder is created, naming the dataset
        raise InputError(
            f"{args.data}: no labeled case; training needs at least one image with a label "
            "(labelsTr/ or a 'training' entry with 'label')"
        )
    log.info(data.summary())
    config = apply_plan(config, args, data)
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
