"""Milliseconds of the network's single-sample fp32 CPU convolutions: PyTorch's pick vs oneDNN.

    python benchmarks/conv_dispatch.py [--repeats 5]

Sliding-window inference (``predict``, validation, pseudo-labelling) runs one window at a time.
For a batch of one, PyTorch 2.13 sends a CPU fp32 3x3 convolution to its native im2col kernel
unless ``B * C * D * H > 20480``; on a 3D patch that rule picks the native kernel for the
lite model's full-resolution stage and its 32-channel half-resolution stage. The network's
convolutions therefore call oneDNN themselves for one sample
(``dkuxnet.model.blocks._use_onednn_for_single_sample``). This prints both kernels' times for
the lite model's layer shapes at the bundled patch (32 x 64 x 80), forward only and forward +
backward, their ratio, and the largest difference of the outputs; then one forward of the whole
bundled-model network (one window) with the route on and off.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import render

SHAPES = [  # (in, out, D, H, W): the lite model's 3x3x3 convolutions at one 32 x 64 x 80 window
    (1, 8, 32, 64, 80),
    (8, 8, 32, 64, 80),
    (16, 8, 32, 64, 80),
    (16, 32, 16, 32, 40),
    (32, 32, 16, 32, 40),
    (64, 32, 16, 32, 40),
    (64, 64, 8, 16, 20),
]


def ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    cl = torch.channels_last_3d
    rows = [["in->out", "size", "fwd native", "fwd oneDNN", "x", "fwd+bwd native",
             "fwd+bwd oneDNN", "x", "max |diff|"]]  # fmt: skip
    for cin, cout, *size in SHAPES:
        w = torch.randn(cout, cin, 3, 3, 3).contiguous(memory_format=cl).requires_grad_()
        x = torch.randn(1, cin, *size).contiguous(memory_format=cl).requires_grad_()

        def native(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
            return F.conv3d(x, w, padding=1)

        def onednn(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
            return torch.ops.aten.mkldnn_convolution(x, w, None, [1] * 3, [1] * 3, [1] * 3, 1)

        with torch.no_grad():
            fn, fo = ms(native, args.repeats), ms(onednn, args.repeats)
            diff = (native() - onednn()).abs().max().item()
        bn = ms(lambda: native().sum().backward(), args.repeats)
        bo = ms(lambda: onednn().sum().backward(), args.repeats)
        rows.append([f"{cin}->{cout}", "x".join(map(str, size)), f"{fn:.1f}", f"{fo:.1f}",
                     f"{fn / fo:.1f}", f"{bn:.1f}", f"{bo:.1f}", f"{bn / bo:.1f}", f"{diff:.1e}"])  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, times in ms")
    print(render(rows))

    from dkuxnet.config import TrainConfig
    from dkuxnet.model import blocks, build_model

    net = build_model(TrainConfig.preset("lite").model).eval()
    window = torch.randn(1, 1, 32, 64, 80)
    with torch.no_grad():
        on = ms(lambda: net(window), args.repeats)
        route = blocks._use_onednn_for_single_sample
        blocks._use_onednn_for_single_sample = lambda x, conv: False  # PyTorch's own pick
        try:
            off = ms(lambda: net(window), args.repeats)
        finally:
            blocks._use_onednn_for_single_sample = route
    print(f"\nlite network, one 32x64x80 window: {off:.0f} ms with PyTorch's pick, "
          f"{on:.0f} ms with the oneDNN route ({off / on:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
