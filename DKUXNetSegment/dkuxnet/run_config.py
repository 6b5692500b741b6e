"""A run's configuration, from what the user asked for and, for what they left open, the plan.

``dkuxnet train`` and ``dkuxnet estimate`` build their recipe here, so an estimate times the
run it announces. The order: a preset (or, fine-tuning, the start model's own settings), then
a config file, then ``--set`` overrides; then :mod:`dkuxnet.plan` fills the planned settings
(:data:`PLANNED_KEYS`) the user did not give.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

from dkuxnet.config import TrainConfig, TrainingConfig
from dkuxnet.data import DatasetSplit
from dkuxnet.errors import ConfigError
from dkuxnet.plan import PLANNED_FIELDS

log = logging.getLogger(__name__)

#: ``training.mode`` of a fine-tune (``--init``, the panel's Fine-tune) unless the user sets
#: one: the start model labels the unlabeled scans once and one network learns from them and
#: the labels (docs/fine_tune_bench.md: on two simulated scanners it beat the supervised
#: fine-tune at the same iterations; the paper's two-network ``dual`` mode stays available as
#: ``--set training.mode=dual``). A new model (no ``--init``) trains in ``dual`` mode.
FINE_TUNE_MODE = "pseudo"

#: The settings the plan fills when the user does not give them.
PLANNED_KEYS: tuple[str, ...] = tuple(PLANNED_FIELDS)


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for.

    Attributes:
        preset: model preset for a new model (``None``: ``lite``; with ``init``, the start
            model's own settings).
        init: checkpoint whose weights start the run (fine-tuning).
        config_file: JSON file with a full or partial :class:`~dkuxnet.config.TrainConfig`.
        overrides: ``section.key=value`` strings (``--set``), applied last.
        iterations: ``training.iterations`` (``--iterations``), or ``None``.
        device: ``auto``, ``cpu`` or ``cuda``: the machine the plan sizes the run for.
        resume: continue an existing run (it keeps its own config: nothing is planned).
        plan: plan the open settings (``False``: keep the preset's, ``--no-plan``).
    """

    preset: str | None = None
    init: str | None = None
    config_file: str | None = None
    overrides: tuple[str, ...] = ()
    iterations: int | None = None
    device: str = "auto"
    resume: bool = False
    plan: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunRequest:
        """From the arguments ``train`` and ``estimate`` share (``--preset``, ``--init``,
        ``--config``, ``--set``, ``--iterations``, ``--device``; ``--resume`` and
        ``--no-plan`` where the command has them)."""
        return cls(
            preset=args.preset,
            init=args.init,
            config_file=args.config,
            overrides=tuple(args.set),
            iterations=args.iterations,
            device=args.device,
            resume=bool(getattr(args, "resume", False)),
            plan=not getattr(args, "no_plan", False),
        )

    def given_keys(self) -> set[str]:
        """``section.key`` names the user set through the config file or the overrides."""
        keys = {a.split("=", 1)[0].strip() for a in self.overrides}
        if self.config_file:
            for section, values in TrainConfig.load(self.config_file).to_dict().items():
                keys |= {f"{section}.{k}" for k in values}
        return keys


def build_config(request: RunRequest) -> TrainConfig:
    """Preset (or, fine-tuning with ``init``, the init model's own settings), then the config
    file, then the overrides."""
    if request.init and request.preset is None:
        from dkuxnet.checkpoint import load_checkpoint

        init_cfg: TrainConfig = load_checkpoint(request.init)["train_config"]
        # Keep what defines the model and its input (network, patch, spacing, inference);
        # take the training recipe fresh, in the fine-tune's own mode (FINE_TUNE_MODE).
        base = TrainConfig(
            model=init_cfg.model,
            data=init_cfg.data,
            training=TrainingConfig(mode=FINE_TUNE_MODE),
            inference=init_cfg.inference,
        )
    else:
        base = TrainConfig.preset(request.preset or "lite")
    if request.config_file:
        loaded = TrainConfig.load(request.config_file).to_dict()
        merged = base.to_dict()
        for section, values in loaded.items():
            merged[section].update(values)
        base = TrainConfig.from_dict(merged)
    overrides = list(request.overrides)
    if request.iterations is not None:
        if request.iterations <= 0:
            raise ConfigError(f"--iterations must be positive, got {request.iterations}")
        overrides.append(f"training.iterations={request.iterations}")
    return base.with_overrides(overrides) if overrides else base


def apply_plan(config: TrainConfig, request: RunRequest, data: DatasetSplit) -> TrainConfig:
    """Fill the planned settings the user did not give (none with ``init``, ``resume`` or
    ``plan=False``: a fine-tune keeps its model's spacing and patch; a resumed run keeps its
    own config)."""
    if not request.plan or request.init or request.resume:
        return config
    from dkuxnet.plan import fingerprint, make_plan, this_machine

    given = request.given_keys()
    open_keys = [k for k in PLANNED_KEYS if k not in given]
    if not open_keys:
        return config
    cases = list(data.labeled) + list(data.unlabeled)
    plan = make_plan(
        fingerprint(c.image for c in cases), this_machine(request.device), config.model
    )
    for line in plan.reasons:
        log.info("plan: %s", line)
    planned = plan.as_overrides()
    log.info("plan sets %s (override with --set or --config; --no-plan keeps the preset's)",
             ", ".join(f"{k}={planned[k]}" for k in open_keys))  # fmt: skip
    return config.with_overrides([f"{k}={json.dumps(planned[k])}" for k in open_keys])
