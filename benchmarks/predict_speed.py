"""Seconds and peak memory to segment whole volumes with the sliding-window predictor.

    python benchmarks/predict_speed.py [--device auto|cpu|cuda] [--quick]
                                       [--models lite paper unet] [--tta off on]
                                       [--sizes 96x128x128 88x576x576]

Sizes are array order D x H x W (z, y, x): ``96x128x128`` is a 128 x 128 x 96 (x, y, z) volume
and ``88x576x576`` the LA challenge's 576 x 576 x 88. Each combination runs in a fresh
subprocess (peak RSS per combination) through :class:`dkuxnet.inference.Predictor` with the
LA settings (patch 80 x 112 x 112, overlap 0.5, Gaussian blending) and randomly initialised
weights (speed does not depend on them). MONAI's ``UNet`` (channels 16-256, 2 residual units)
goes through the very same predictor and ``sliding_window_inference`` for comparison.

``--quick`` skips the combinations that take tens of minutes on a 2-core CPU and prints what
it skipped. On a GPU, the peak is ``torch.cuda.max_memory_allocated`` beside the process RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

from _common import peak_rss_mb, render, run_worker

MODELS = ("lite", "paper", "unet")
SIZES = ("96x128x128", "88x576x576")
PATCH = (80, 112, 112)
# (model, size, tta) combinations --quick leaves out on a CPU: minutes to hours each there.
QUICK_SKIP_CPU = {
    ("paper", "88x576x576", "off"),
    ("paper", "88x576x576", "on"),
    ("paper", "96x128x128", "on"),
    ("lite", "88x576x576", "off"),
    ("lite", "88x576x576", "on"),
    ("lite", "96x128x128", "on"),
    ("unet", "88x576x576", "on"),
}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Predict one random volume with one model in this process; returns a table row."""
    import numpy as np
    import torch
    from torch import nn

    from dkuxnet.config import DataConfig, ModelConfig, TrainConfig
    from dkuxnet.inference import Predictor
    from dkuxnet.model import build_model

    name, size, tta = args.worker.split(",")
    shape = tuple(int(s) for s in size.split("x"))
    # the model section only matters for our networks (UNet: 1 channel in, 2 classes out)
    preset = "lite" if name == "unet" else name
    config = TrainConfig(model=ModelConfig.preset(preset), data=DataConfig(patch_size=PATCH))
    torch.manual_seed(0)
    if name == "unet":
        from monai.networks.nets import UNet

        class UNetProbabilities(nn.Module):
            """MONAI UNet behind the interface the predictor expects."""

            def __init__(self) -> None:
                super().__init__()
                self.net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)

            def forward(self, x: torch.Tensor) -> Any:
                logits = self.net(x)

                class Out:
                    @staticmethod
                    def probabilities(head: str = "mean") -> torch.Tensor:
                        return torch.softmax(logits.float(), dim=1)

                return Out()

        networks: list[nn.Module] = [UNetProbabilities()]
    else:
        # one network: averaging both of a dual checkpoint doubles the time
        networks = [build_model(config.model)]
    predictor = Predictor(networks, config, args.device, tta=tta == "on", sw_batch_size=1)
    image = np.random.default_rng(0).normal(100, 20, shape).astype(np.int16)
    cuda = predictor.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(predictor.device)
    windows = [0]

    def progress(done: int, total: int) -> None:
        windows[0] = total

    start = time.perf_counter()
    predictor.predict_label(image, progress)
    if cuda:
        torch.cuda.synchronize(predictor.device)
    seconds = time.perf_counter() - start
    return {
        "model": name,
        "size": size,
        "tta": tta,
        "windows": windows[0],
        "seconds": seconds,
        "rss_mb": peak_rss_mb(),
        "gpu_mb": torch.cuda.max_memory_allocated(predictor.device) / 2**20 if cuda else None,
        "device": torch.cuda.get_device_name(predictor.device)
        if cuda
        else f"cpu x{torch.get_num_threads()}",
    }


def _run_one(combo: tuple[str, str, str], device: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", ",".join(combo), "--device", device]
    result = run_worker(cmd)
    return (
        {"model": combo[0], "size": combo[1], "tta": combo[2], "error": result}
        if isinstance(result, str)
        else result
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["model", "volume DxHxW", "TTA", "windows", "seconds", "peak RSS (MB)", "GPU (MB)"]
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append([r["model"], r["size"], r["tta"], f"failed: {r['error']}"])
            continue
        gpu = "-" if r["gpu_mb"] is None else f"{r['gpu_mb']:.0f}"
        lines.append(
            [
                r["model"],
                r["size"],
                r["tta"],
                str(r["windows"]),
                f"{r['seconds']:.1f}",
                f"{r['rss_mb']:.0f}",
                gpu,
            ]
        )
    return render(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="D x H x W volumes")
    parser.add_argument("--tta", nargs="+", default=["off", "on"], choices=("off", "on"))
    parser.add_argument("--quick", action="store_true", help="skip the slowest CPU combinations")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    import torch

    from dkuxnet.device import resolve_device

    on_gpu = resolve_device(args.device).type == "cuda"
    combos = [(m, s, t) for m in args.models for s in args.sizes for t in args.tta]
    skipped = [c for c in combos if args.quick and not on_gpu and c in QUICK_SKIP_CPU]
    rows = []
    for combo in combos:
        if combo in skipped:
            continue
        print(f"... {' '.join(combo)}", file=sys.stderr, flush=True)
        rows.append(_run_one(combo, args.device))
    device = next((r["device"] for r in rows if "device" in r), args.device)
    print(
        f"whole-volume prediction on {device} ({platform.node()}, torch {torch.__version__}); "
        f"patch {'x'.join(map(str, PATCH))}, overlap 0.5, gaussian, 1 network, "
        "random weights; TTA = 8 flips"
    )
    print(format_table(rows))
    if skipped:
        print("skipped (--quick on CPU): " + ", ".join(f"{m} {s} TTA {t}" for m, s, t in skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
