"""Seconds per training iteration and peak memory of the real trainer step.

    python benchmarks/train_speed.py [--device auto|cpu|cuda] [--presets lite paper]
                                     [--iterations 3] [--patch 80 112 112]

Runs ``Trainer`` for a few iterations on synthetic phantoms (written to a temporary folder)
and reports the median seconds per iteration (first iteration excluded as warm-up) and the peak
memory: resident memory on CPU, ``torch.cuda.max_memory_allocated`` on a GPU (with AMP).
Batch as METHOD.md: 2 labeled + 2 unlabeled patches, both networks (``dual``); the ``paper``
preset on CPU runs one network on one patch (``supervised``, batch 1): it needs ~14 GB.
Each configuration runs in a fresh subprocess so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import peak_rss_mb


def worker(
    preset: str, device: str, iterations: int, patch: tuple[int, int, int]
) -> dict[str, Any]:
    import statistics

    import torch

    from dkuxnet.config import TrainConfig
    from dkuxnet.data import load_dataset
    from dkuxnet.device import resolve_device
    from dkuxnet.events import read_events
    from dkuxnet.synthetic import write_synthetic_dataset
    from dkuxnet.training import Trainer

    dev = resolve_device(device)
    heavy_cpu = preset == "paper" and dev.type == "cpu"
    cfg = TrainConfig.preset(preset)
    cfg = cfg.replace(
        data=cfg.data.replace(
            patch_size=patch,
            labeled_batch=1 if heavy_cpu else 2,
            unlabeled_batch=0 if heavy_cpu else 2,
        ),
        training=cfg.training.replace(
            mode="supervised" if heavy_cpu else "dual",
            iterations=iterations,
            val_every=10**6,
            checkpoint_every=10**6,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        shape = tuple(max(p, s) for p, s in zip(patch, (48, 96, 96), strict=True))
        write_synthetic_dataset(Path(tmp) / "data", 3, 2, 0, shape=shape, seed=0)
        data = load_dataset(Path(tmp) / "data")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # validation at the last iteration is part of the run; times come from the events
        Trainer(cfg, data, Path(tmp) / "run", device=str(dev)).run()
        events = read_events(Path(tmp) / "run" / "events.jsonl")
    times = [1.0 / e["it_per_s"] for e in events if e["event"] == "iteration"][1:]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return {
        "preset": preset,
        "device": str(dev),
        "mode": cfg.training.mode,
        "batch": f"{cfg.data.labeled_batch}+{cfg.data.unlabeled_batch}",
        "patch": "x".join(map(str, patch)),
        "s_per_it": statistics.median(times) if times else float("nan"),
        "peak_mb": peak,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--presets", nargs="+", default=["lite", "paper"], choices=("lite", "paper"))
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--patch", type=int, nargs=3, default=(80, 112, 112))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.iterations, tuple(args.patch))))
        return 0
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--worker", preset, "--device", args.device]
        cmd += ["--iterations", str(args.iterations), "--patch", *map(str, args.patch)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{'preset':8s} {'device':6s} {'mode':10s} {'batch':6s} {'patch':12s} {'s/it':>8s} {'peak MB':>9s}"
    )
    for r in rows:
        print(
            f"{r['preset']:8s} {r['device']:6s} {r['mode']:10s} {r['batch']:6s} {r['patch']:12s} "
            f"{r['s_per_it']:8.2f} {r['peak_mb']:9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
