"""Forward and forward+backward speed and peak memory of the networks, side by side.

    python benchmarks/model_speed.py [--device auto|cpu|cuda] [--repeats 3] [--size 80 112 112]
                                     [--models lite paper unet swinunetr] [--batch N]
                                     [--precision auto|off|bf16|fp16]

Each model runs in a fresh subprocess so that the peak resident memory (``ru_maxrss``) belongs
to that model alone. On CPU the batch is 1; on a GPU it is 4. ``--precision`` is the autocast
setting every model runs under (``auto``: bf16 on a CPU with native bf16, fp16 on a GPU, else
fp32; ``off``: fp32), and the peak is ``torch.cuda.max_memory_allocated`` on a GPU. MONAI's
``UNet`` always runs too: every figure is also given as a ratio to it, measured in the same
run (the only comparison that survives a shared or different machine). ``--size`` is array order (D, H, W) =
(z, y, x): the LA patch 112 x 112 x 80 (x, y, z) is ``80 112 112``. SwinUNETR needs sides
divisible by 32, so it runs at the size rounded up to that (shown in the table).

Numbers on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from typing import Any

from _common import peak_rss_mb, render, run_worker

MODELS = ("lite", "paper", "unet", "swinunetr")


def _build(name: str, size: tuple[int, int, int]) -> tuple[Any, tuple[int, int, int]]:
    """The network and the input size it runs at."""
    if name in ("lite", "paper"):
        from dkuxnet.config import ModelConfig
        from dkuxnet.model import build_model

        return build_model(ModelConfig.preset(name)), size
    if name == "unet":
        from monai.networks.nets import UNet

        net = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=2,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        )
        return net, size
    if name == "swinunetr":
        import importlib.util

        if importlib.util.find_spec("einops") is None:
            raise SystemExit("MONAI's SwinUNETR needs einops: pip install einops")
        from monai.networks.nets import SwinUNETR

        rounded = tuple(int(math.ceil(s / 32) * 32) for s in size)
        return SwinUNETR(in_channels=1, out_channels=2, feature_size=24, spatial_dims=3), rounded  # type: ignore[return-value]
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _loss(output: Any) -> Any:
    if hasattr(output, "seg_cnn"):  # our ModelOutput: both heads get a gradient
        return output.seg_cnn.float().mean() + output.seg_kmax.float().mean()
    return output.float().mean()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time one model in this process; returns one table row."""
    import torch

    from dkuxnet.device import resolve_device

    device = resolve_device(args.device)
    from dkuxnet.device import autocast_dtype

    cuda = device.type == "cuda"
    batch = args.batch or (4 if cuda else 1)
    dtype = autocast_dtype(device, args.precision)
    amp = dtype is not None
    torch.manual_seed(0)
    net, size = _build(args.worker, tuple(args.size))
    net = net.to(device)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    x = torch.randn(batch, 1, *size, device=device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            net(x)

    def forward_backward() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = _loss(net(x))
        loss.backward()

    row: dict[str, Any] = {
        "model": args.worker,
        "params_M": params,
        "size": "x".join(str(s) for s in size),
        "batch": batch,
        "amp": str(dtype).removeprefix("torch.") if amp else "fp32",
    }
    for phase, fn, train in (("fwd", forward, False), ("fwd_bwd", forward_backward, True)):
        net.train(train)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        fn()  # warm-up (allocator, kernel selection)
        sync()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        row[f"{phase}_s"] = sorted(times)[len(times) // 2]  # median
        row[f"{phase}_peak_mb"] = (
            torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
        )
    row["device"] = (
        torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()}"
    )
    return row


def _run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--device", args.device]
    cmd += ["--repeats", str(args.repeats), "--size", *map(str, args.size)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    cmd += ["--precision", args.precision]
    result = run_worker(cmd)
    return {"model": name, "error": result} if isinstance(result, str) else result


def format_table(rows: list[dict[str, Any]]) -> str:
    ref = next((r for r in rows if r.get("model") == "unet" and "error" not in r), None)

    def ratio(r: dict[str, Any], key: str) -> str:
        return f"{r[key] / ref[key]:.1f}x" if ref else "-"

    header = ["model", "params (M)", "input DxHxW", "batch", "precision", "fwd (s)", "fwd / UNet"]
    header += ["fwd+bwd (s)", "fwd+bwd / UNet", "fwd+bwd peak (MB)", "peak / UNet"]
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append([r["model"], f"failed: {r['error']}"])  # spans the row
            continue
        lines.append(
            [
                r["model"],
                f"{r['params_M']:.2f}",
                r["size"],
                str(r["batch"]),
                r["amp"],
                f"{r['fwd_s']:.3f}",
                ratio(r, "fwd_s"),
                f"{r['fwd_bwd_s']:.3f}",
                ratio(r, "fwd_bwd_s"),
                f"{r['fwd_bwd_peak_mb']:.0f}",
                ratio(r, "fwd_bwd_peak_mb"),
            ]
        )
    return render(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median shown)")
    parser.add_argument(
        "--size", type=int, nargs=3, default=[80, 112, 112], metavar=("D", "H", "W")
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=0, help="0 = 1 on CPU, 4 on GPU")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "off", "bf16", "fp16"),
        help="autocast for every model (auto: bf16 on a CPU with native bf16, fp16 on a GPU)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = []
    models = list(args.models) + ([] if "unet" in args.models else ["unet"])  # the reference
    for name in models:
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.append(_run_one(name, args))
    device = next((r["device"] for r in rows if "device" in r), args.device)
    print(
        f"model speed on {device} ({platform.node()}, torch threads shown); median of "
        f"{args.repeats}; peak = {'CUDA allocated' if 'cpu' not in device else 'process RSS'}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
