"""How the predictor copes with a full-size scan (the LA h5 files are cropped around the atrium).

Pads a few test-list cases back to a full 576 x 576 field of view (the challenge scans' size;
padding value = the image minimum, like the dark field around the body), predicts the whole
scan with sliding windows + largest component, crops the prediction back and scores it against
the label — beside the prediction of the cropped case, so the two can be compared.

    python scripts/full_fov_check.py --model DKUXNetSegment/Resources/Models/dkuxnet_la_lite.pt \
        --data /path/to/imported --cases 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from dkuxnet.data import load_dataset
from dkuxnet.inference import Predictor
from dkuxnet.io import Volume, read_label, read_volume
from dkuxnet.metrics import case_metrics

FULL_FOV = 576


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, type=Path, help="la-import output folder")
    p.add_argument("--cases", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--no-crop-foreground",
        action="store_true",
        help="predict the whole padded scan (inference.crop_foreground off)",
    )
    args = p.parse_args()
    predictor = Predictor.from_checkpoint(args.model, device=args.device)
    if args.no_crop_foreground:
        cfg = predictor.config
        predictor = Predictor(
            predictor.networks,
            cfg.replace(inference=cfg.inference.replace(crop_foreground=False)),
            device=args.device,
        )
    print(
        f"{'case':22s} {'size (z,y,x)':>16s} {'Dice crop':>9s} {'Dice full':>9s} {'s crop':>7s} {'s full':>7s}"
    )
    for case in load_dataset(args.data).test[: args.cases]:
        image = read_volume(case.image)
        label = read_label(case.label, reference=image).array
        z, y, x = image.array.shape
        py, px = (FULL_FOV - y) // 2, (FULL_FOV - x) // 2
        full = np.full((z, FULL_FOV, FULL_FOV), image.array.min(), dtype=np.float32)
        full[:, py : py + y, px : px + x] = image.array
        # same spacing/direction; the origin does not matter for scoring in voxel space
        padded = Volume(full, image.spacing, image.origin, image.direction)
        t0 = time.perf_counter()
        crop_pred = predictor.predict_volume(image).label.array
        t_crop = time.perf_counter() - t0
        t0 = time.perf_counter()
        full_pred = predictor.predict_volume(padded).label.array[:, py : py + y, px : px + x]
        t_full = time.perf_counter() - t0
        d_crop = case_metrics(crop_pred, label)["dice"]
        d_full = case_metrics(full_pred, label)["dice"]
        print(
            f"{case.name:22s} {str((z, FULL_FOV, FULL_FOV)):>16s} {d_crop:9.4f} {d_full:9.4f} "
            f"{t_crop:7.1f} {t_full:7.1f}"
        )


if __name__ == "__main__":
    main()
