"""``dkuxnet estimate``: how long a training run will take on this machine, measured.

Runs a few real training iterations of the recipe ``dkuxnet train`` would use (same preset or
``--init`` model, same plan, same ``--set`` overrides) on random patches, and prints the
seconds per iteration and the expected duration. The Fine-tune panel runs it (``--json``)
before training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from dkuxnet.config import PRESETS
from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import ConfigError
from dkuxnet.reports import format_duration

HELP = "measure seconds per training iteration on this machine and estimate a run's duration"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset to plan spacing/patch for, as `train` would")
    p.add_argument("--init", help="fine-tune this checkpoint (its patch and network)")
    p.add_argument("--preset", choices=PRESETS, help="model preset (default lite)")
    p.add_argument("--config", help="JSON file with a full or partial TrainConfig")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--iterations", type=int, default=None, help="iterations to estimate for")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--repeats", type=int, default=2, help="timed iterations after a warm-up")
    p.add_argument("--json", action="store_true", help="print one JSON line (for front ends)")


def busy_cpu_note(device: str) -> str | None:
    """A warning when other programs keep the CPU busy (the estimate then comes out long).

    Judged by the 1-minute load average against the cores (POSIX only): above half the cores
    is busy. A GPU run is not judged (its time does not depend on the CPU's load as much).
    """
    if device != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load <= 0.5 * cores:
        return None
    return (
        f"the CPU is busy (load {load:.1f} on {cores} cores): other programs share it, so "
        "this estimate is longer than a run on an idle machine would take"
    )


def run(args: argparse.Namespace) -> int:
    from dkuxnet.data import DatasetSplit, load_dataset
    from dkuxnet.device import autocast_dtype, resolve_device
    from dkuxnet.run_config import RunRequest, apply_plan, build_config
    from dkuxnet.training import Trainer

    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    request = dataclasses.replace(RunRequest.from_args(args), plan=args.data is not None)
    config = build_config(request)
    if args.data:
        config = apply_plan(config, request, load_dataset(args.data))
    device = resolve_device(args.device)
    busy = busy_cpu_note(device.type)  # before our own iterations load the CPU
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, DatasetSplit(), Path(tmp) / "run", device=str(device),
                          init=args.init)  # fmt: skip
        seconds = trainer.time_iterations(args.repeats)
    iterations = config.training.iterations
    dtype = autocast_dtype(device, str(config.training.amp))
    window_s = None
    if config.training.mode == "pseudo" and args.init and config.data.unlabeled_batch > 0:
        window_s = _time_one_window(args.init, config, str(device), args.repeats)
    result: dict[str, Any] = {
        "s_per_iteration": seconds,
        "iterations": iterations,
        "total_s": seconds * iterations,
        "device": str(device),
        "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
        "mode": config.training.mode,
        "patch_size": list(config.data.patch_size),
        "batch": [config.data.labeled_batch, config.data.unlabeled_batch],
        "busy": busy,
    }
    if window_s is not None:  # pseudo mode labels each unlabeled scan first, window by window
        result["s_per_window"] = window_s
        result["target_spacing"] = list(config.data.target_spacing)
        result["overlap"] = config.inference.overlap
    if args.json:
        print(json.dumps(result))
        return 0
    patch = "x".join(map(str, config.data.patch_size))
    print(
        f"{config.training.mode}, patch {patch}, batch {config.data.labeled_batch}"
        f"+{config.data.unlabeled_batch if config.training.mode in ('dual', 'pseudo') else 0}, "
        f"{result['precision']} on {device}: {seconds:.2f} s per iteration (median of "
        f"{args.repeats} after a warm-up); {iterations} iterations: "
        f"{format_duration(seconds * iterations)} (validation adds a little)"
    )
    if window_s is not None:
        print(
            f"before training, the start model labels each unlabeled scan: {window_s:.2f} s per "
            f"{patch} window at {config.data.target_spacing} mm (overlap {config.inference.overlap})"
        )
    if busy:
        print(f"note: {busy}")
    return 0


def _time_one_window(init: str, config: Any, device: str, repeats: int) -> float:
    """Median seconds of the start model's prediction of one patch-sized image (one sliding
    window), as pseudo mode predicts each unlabeled scan before training."""
    import statistics
    import time

    import numpy as np

    from dkuxnet.inference import Predictor

    predictor = Predictor.from_checkpoint(init, device=device, tta=config.training.pseudo_tta)
    image = np.random.default_rng(0).normal(size=config.data.patch_size).astype(np.float32)
    predictor.predict_label(image)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_label(image)
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))
