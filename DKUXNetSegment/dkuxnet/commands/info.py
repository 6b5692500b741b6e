"""``dkuxnet info``: versions, the device found, model presets with parameter counts."""

from __future__ import annotations

import argparse
import platform

HELP = "show versions, the compute device and the model presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--forward", action="store_true", help="also run one forward pass of the lite preset"
    )


def run(args: argparse.Namespace) -> int:
    import time

    import monai
    import numpy
    import SimpleITK
    import torch

    from dkuxnet import __version__
    from dkuxnet.config import PRESETS, ModelConfig
    from dkuxnet.model import build_model, count_parameters
    from dkuxnet.resources import default_model_path

    print(f"dkuxnet {__version__}  (python {platform.python_version()}, {platform.system()})")
    print(
        f"torch {torch.__version__}, monai {monai.__version__}, numpy {numpy.__version__}, "
        f"SimpleITK {SimpleITK.Version_VersionString()}"
    )
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"device: cuda ({', '.join(names)})")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads); no CUDA GPU found")
    bundled = default_model_path()
    print(f"bundled model: {bundled if bundled else 'none in this installation'}")
    print("model presets:")
    for name in PRESETS:
        cfg = ModelConfig.preset(name)
        n = count_parameters(build_model(cfg))
        if cfg.architecture == "unet":
            print(f"  {name:6s} {n / 1e6:6.2f} M parameters  MONAI UNet baseline")
            continue
        print(
            f"  {name:6s} {n / 1e6:6.2f} M parameters  widths {cfg.feature_sizes}, hidden "
            f"{cfg.hidden_size}, {cfg.num_queries} queries, mask stride {cfg.mask_stride}"
        )
    if args.forward:
        cfg = ModelConfig.preset("lite")
        model = build_model(cfg).eval()
        x = torch.randn(1, 1, 32, 64, 64)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(x)
        dt = time.perf_counter() - t0
        print(
            f"forward pass (lite, input {tuple(x.shape)}): seg {tuple(out.seg_cnn.shape)}, "
            f"query distribution {tuple(out.query_logits.shape)}, {dt:.2f} s"
        )
    return 0
