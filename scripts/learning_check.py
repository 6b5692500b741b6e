"""Learning check: ``dual`` vs ``supervised`` at the same iteration budget, on held-out cases.

Synthetic (default; CPU, minutes; no data needed)::

    python scripts/learning_check.py --out /tmp/lc --iterations 120

Real LA scans (after ``dkuxnet la-import SRC LA8 --labeled 8``; run on a GPU when you have
one, resumable: rerun the same command after an interruption)::

    python scripts/learning_check.py --out /tmp/lc_la --data LA8 --iterations 6000 \
        --patch 80 112 112 --preset lite

On a 2-core CPU, at 2.5 mm with small patches (about 45 minutes for both modes; the README
reports this run)::

    python scripts/learning_check.py --out /tmp/lc_la --data LA8 --iterations 1000 \
        --patch 16 32 48 --preset lite --set data.target_spacing=[2.5,2.5,2.5] \
        --set training.lr=0.001 --set training.val_every=100 --set training.val_fraction=0.125

Checkpoints are chosen on a validation split of the training labels (``val_fraction``), never
on the test cases; the test cases are scored once at the end (voxel units for LA, as the
published tables).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import load_dataset
from dkuxnet.demo import DemoSettings, demo_config
from dkuxnet.inference import Predictor, score_cases
from dkuxnet.metrics import summarize
from dkuxnet.runs import BEST_CHECKPOINT, CONFIG_FILE, can_resume, is_completed
from dkuxnet.synthetic import write_synthetic_dataset
from dkuxnet.training import Trainer

log = logging.getLogger("learning_check")


def evaluate(run: Path, data_dir: Path, voxel_units: bool, device: str) -> dict:
    """Score ``run/best.pt`` on the test list as ``dkuxnet evaluate`` does (medpy style)."""
    predictor = Predictor.from_checkpoint(run / BEST_CHECKPOINT, device=device)
    rows = score_cases(
        predictor, load_dataset(data_dir).test, voxel_units=voxel_units, style="medpy"
    )
    return {"summary": summarize(rows), "cases": rows}


def build_config(
    iterations: int,
    seed: int,
    preset: str = "demo",
    patch: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """The study recipe: the demo schedule around a preset, a patch size and ``--set`` keys."""
    config = demo_config(DemoSettings(iterations=iterations, seed=seed))
    if preset != "demo":
        config = config.replace(model=ModelConfig.preset(preset))
    if patch:
        config = config.replace(data=config.data.replace(patch_size=tuple(patch)))
    return config.with_overrides(list(overrides))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path, help="decathlon folder (default: make phantoms)")
    p.add_argument("--iterations", type=int, default=120)
    p.add_argument("--patch", type=int, nargs=3, help="patch size (z y x)")
    p.add_argument("--preset", choices=("lite", "paper", "demo"), default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for both modes (repeatable), as in dkuxnet train",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    settings = DemoSettings(iterations=args.iterations, seed=args.seed)
    data_dir = args.data
    if data_dir is None:
        data_dir = args.out / "data"
        if not data_dir.exists():
            write_synthetic_dataset(
                data_dir, settings.n_labeled, settings.n_unlabeled, settings.n_test,
                shape=settings.shape, seed=settings.seed,
            )  # fmt: skip
    config = build_config(args.iterations, args.seed, args.preset, args.patch, args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    config.save(args.out / CONFIG_FILE)
    results = {}
    for mode in ("supervised", "dual"):
        cfg: TrainConfig = config.replace(training=config.training.replace(mode=mode))
        run = args.out / mode
        if not is_completed(run):
            resume = can_resume(run)
            Trainer(cfg, load_dataset(data_dir), run, device=args.device, resume=resume).run()
        results[mode] = evaluate(
            run, data_dir, voxel_units=args.data is not None, device=args.device
        )
        s = results[mode]["summary"]
        log.info("%s: test Dice %.4f ± %.4f", mode, s["dice"]["mean"], s["dice"]["std"])
    (args.out / "learning_check.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"{'mode':12s} {'Dice':>8s} {'Jaccard':>8s} {'95HD':>8s} {'ASD':>8s}")
    for mode, r in results.items():
        s = r["summary"]
        print(
            f"{mode:12s} {100 * s['dice']['mean']:8.2f} {100 * s['jaccard']['mean']:8.2f} "
            f"{s['hd95']['mean']:8.2f} {s['asd']['mean']:8.2f}"
        )


if __name__ == "__main__":
    main()
