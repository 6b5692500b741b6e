"""Train the bundled left-atrium model on the 2018 LA challenge scans (resumable).

    python scripts/train_default_model.py --la-data "DTC/data/2018LA_Seg_Training Set" \
        --work /somewhere/outside/the/repo [--iterations 1500] [--device auto]

Steps (each skipped when its output exists, so the script resumes after any interruption):
1. ``import_la``: the standard 80/20 split, all 80 train-list scans labeled.
2. Train at ``--spacing`` mm (1.25 by default: 8x fewer voxels than the 0.625 mm originals,
   what makes CPU training and whole-scan prediction affordable). The trainer resamples the
   scans once into the run folder; the predictor resamples inputs the same way and maps
   predictions back to the input grid.
3. Train with the held-out last ``val_fraction`` of the train list for checkpoint selection
   (``--resume`` of an existing run folder is automatic).
4. Export ``best.pt`` as a model-only file (``--export``).

The run has one poly schedule over a fixed total: killed and resumed any number of times (the
same command again), it ends with the weights of one uninterrupted run (the trainer's resume is
exact: ``Testing/test_trainer.py``); resuming with another ``--iterations`` is refused.
``--status`` says how far it is (iterations, time left, best validation Dice).

The test list is never used here; ``dkuxnet evaluate`` measures it afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from dkuxnet.checkpoint import export_model, load_checkpoint
from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import import_la, load_dataset
from dkuxnet.events import read_events
from dkuxnet.runs import BEST_CHECKPOINT, CONFIG_FILE, EVENTS_FILE, can_resume, is_completed
from dkuxnet.training import Trainer

log = logging.getLogger("train_default_model")


def run_status(run: Path) -> str:
    """One paragraph: iterations done of the total, speed, time left, best validation so far."""
    events_path = run / EVENTS_FILE
    if not events_path.exists():
        return f"{run}: not started"
    events = read_events(events_path)
    iterations = [e for e in events if e.get("event") == "iteration"]
    validations = [e for e in events if e.get("event") == "validation"]
    finished = [e for e in events if e.get("event") == "finished"]
    if not iterations:
        return f"{run}: started, no iteration yet"
    last = iterations[-1]
    recent = iterations[-50:]
    span = recent[-1]["time"] - recent[0]["time"]
    per_it = span / max(len(recent) - 1, 1)
    left = (last["total"] - last["iteration"]) * per_it
    done = is_completed(run)
    lines = [
        f"{run}: iteration {last['iteration']} of {last['total']} "
        f"({100 * last['iteration'] / last['total']:.0f} %), "
        + (
            "completed"
            if done
            else f"{per_it:.2f} s/iteration lately, about {left / 60:.0f} min left"
        )
    ]
    if validations:
        best = max(validations, key=lambda e: e["mean_dice"])
        lines.append(
            f"validation Dice: last {validations[-1]['mean_dice']:.4f} at "
            f"{validations[-1]['iteration']}, best {best['mean_dice']:.4f} at {best['iteration']}"
        )
    if finished and not done:
        lines.append(f"last stop: {finished[-1].get('status')}; rerun the same command to resume")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--la-data", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--spacing", type=float, default=1.25)
    p.add_argument("--mode", default="supervised", choices=("supervised", "dual"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", type=Path, help="write the model-only file here when done")
    p.add_argument(
        "--status", action="store_true", help="say how far the run in --work is, and stop"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run = args.work / f"run_{args.mode}"
    if args.status:
        print(run_status(run))
        return
    if (run / CONFIG_FILE).exists():  # one schedule per run: no re-targeting on resume
        planned = TrainConfig.load(run / CONFIG_FILE).training.iterations
        if planned != args.iterations:
            raise SystemExit(
                f"{run} is a run of {planned} iterations; resume it with --iterations {planned} "
                "(changing the total would change its learning-rate schedule) or use another "
                "--work folder"
            )

    imported = args.work / "imported"
    if not (imported / "datalist.json").exists():
        if imported.exists():
            shutil.rmtree(imported)
        import_la(args.la_data, imported, labeled=80)

    base = TrainConfig.preset("lite")
    config = TrainConfig(
        model=ModelConfig.preset("lite"),
        data=base.data.replace(
            patch_size=(32, 64, 80),
            labeled_batch=2,
            unlabeled_batch=2,
            target_spacing=(args.spacing,) * 3,
        ),
        training=base.training.replace(
            mode=args.mode,
            iterations=args.iterations,
            val_every=100,
            checkpoint_every=20,
            val_fraction=0.1,
            seed=args.seed,
            lr=1e-3,
        ),
        inference=base.inference,
    )
    data = load_dataset(imported)  # the trainer resamples to data.target_spacing (cached in run/)
    Trainer(config, data, run, device=args.device, resume=can_resume(run)).run()
    if args.export:
        record = load_checkpoint(run / BEST_CHECKPOINT)
        export_model(
            record,
            args.export,
            training_note=json.dumps(
                {"data": "2018 LA challenge, 80 train-list scans", "spacing_mm": args.spacing}
            ),
        )
        log.info("exported %s", args.export)


if __name__ == "__main__":
    main()
