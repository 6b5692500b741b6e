"""Seconds per training iteration and peak memory of the real trainer step.

    python benchmarks/train_speed.py [--device auto|cpu|cuda] [--presets lite paper]
                                     [--iterations 3] [--patch 80 112 112]

Runs ``Trainer`` for a few iterations on synthetic phantoms (written to a temporary folder)
and reports the median seconds per iteration (first iteration excluded as warm-up), the share
of it the network waited for data (``data_wait_s`` of the events: batches are prepared ahead
in a worker thread), and the peak memory: resident memory on CPU,
``torch.cuda.max_memory_allocated`` on a GPU. Precision is the trainer's ``training.amp=auto``
(bf16 on a CPU with native bf16, fp16 on a GPU). Batch as METHOD.md: 2 labeled + 2 unlabeled
patches, both networks (``dual``); the ``paper`` preset on CPU runs one network on one patch
(``supervised``, batch 1). Each configuration runs in a fresh subprocess so its peak memory is
its own.

The reference, measured in the same run: one training step of MONAI's ``UNet`` (16-256
channels, 2 residual units) with DiceCE and AdamW on the same four patches, same precision
(``unet`` row); every figure is also given as a ratio to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import peak_rss_mb, render


def worker(
    preset: str, device: str, iterations: int, patch: tuple[int, int, int]
) -> dict[str, Any]:
    import statistics

    import torch

    from dkuxnet.config import TrainConfig
    from dkuxnet.data import load_dataset
    from dkuxnet.device import resolve_device
    from dkuxnet.events import EVENTS_FILE, read_events
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
        events = read_events(Path(tmp) / "run" / EVENTS_FILE)
    iters = [e for e in events if e["event"] == "iteration"][1:]
    times = [1.0 / e["it_per_s"] for e in iters]
    waits = [e.get("data_wait_s", 0.0) for e in iters]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return {
        "data_wait_share": sum(waits) / sum(times) if times else float("nan"),
        "preset": preset,
        "device": str(dev),
        "mode": cfg.training.mode,
        "batch": f"{cfg.data.labeled_batch}+{cfg.data.unlabeled_batch}",
        "patch": "x".join(map(str, patch)),
        "s_per_it": statistics.median(times) if times else float("nan"),
        "peak_mb": peak,
    }


def unet_worker(device: str, iterations: int, patch: tuple[int, int, int]) -> dict[str, Any]:
    """One MONAI UNet training step (DiceCE, AdamW) on 4 patches: the reference row."""
    import statistics
    import time

    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from dkuxnet.device import autocast_dtype, resolve_device

    dev = resolve_device(device)
    dtype = autocast_dtype(dev, "auto")
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).to(dev)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(4, 1, *patch, device=dev)
    y = (torch.rand(4, 1, *patch, device=dev) > 0.8).long()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = net(x)
        loss_fn(out.float(), y).backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return {
        "preset": "unet",
        "device": str(dev),
        "mode": "supervised",
        "batch": "4",
        "patch": "x".join(map(str, patch)),
        "s_per_it": statistics.median(times[1:]) if len(times) > 1 else float("nan"),
        "peak_mb": peak,
        "data_wait_share": float("nan"),
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
        patch = tuple(args.patch)
        if args.worker == "unet":
            print(json.dumps(unet_worker(args.device, args.iterations, patch)))
        else:
            print(json.dumps(worker(args.worker, args.device, args.iterations, patch)))
        return 0
    rows = []
    for preset in [*args.presets, "unet"]:
        cmd = [sys.executable, __file__, "--worker", preset, "--device", args.device]
        cmd += ["--iterations", str(args.iterations), "--patch", *map(str, args.patch)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = rows[-1]
    lines = [["network", "device", "mode", "batch", "patch", "s/it", "s/it / UNet",
              "data wait", "peak MB", "peak / UNet"]]  # fmt: skip
    for r in rows:
        wait = r["data_wait_share"]
        lines.append(
            [
                r["preset"], r["device"], r["mode"], r["batch"], r["patch"],
                f"{r['s_per_it']:.2f}", f"{r['s_per_it'] / ref['s_per_it']:.1f}x",
                "-" if wait != wait else f"{100 * wait:.0f}%",
                f"{r['peak_mb']:.0f}", f"{r['peak_mb'] / ref['peak_mb']:.1f}x",
            ]
        )  # fmt: skip
    print(render(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
