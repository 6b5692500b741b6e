"""One active-learning round on the real LA scans: label the 4 scans the ranking picks, or 4 random.

    python scripts/active_learning_round.py --model /work/grid/8/dual/seed0 --data LA8 \
        --out /work/al [--pick 4] [--draws 3] [--measure disagreement] [--threads 1]

``--model`` is the dual checkpoint trained with the 8 labeled scans of ``--data`` (a
``dkuxnet la-import --labeled 8`` folder; the learning check's / ``ssl_grid.py``'s run). Steps,
each skipped when its output exists (rerun the same command to resume):

1. ``ranking.csv``: every unlabeled train-list scan ranked by ``dkuxnet rank``'s score with
   ``--measure`` (mean over the predicted foreground + 3 voxels).
2. Arms: ``ranked`` = the top ``--pick`` scans; ``random<k>`` = ``--pick`` scans drawn at random
   (seed ``k``). Each arm gets a dataset folder of links: the picked scans labeled (their labels
   come from the import's hidden labels) before the original 8, so that validation stays the
   original run's last labeled scan (``val_fraction`` 0.08 = one of 12).
3. Each arm is retrained from scratch with the same recipe and budget as the original run
   (``ssl_grid.py`` configuration 6, seed 0) and scored on the test list.

Writes ``OUT/al_round.md`` (test Dice per arm, the random draws' mean and spread).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from learning_check import evaluate
from ssl_grid import SCORES, run_config

from dkuxnet.data import load_dataset
from dkuxnet.inference import Predictor
from dkuxnet.inference.ranking import rank_scans, write_ranking_csv
from dkuxnet.runs import can_resume, is_completed
from dkuxnet.training import Trainer

log = logging.getLogger("active_learning_round")


def arm_dataset(source: Path, picked: list[str], out: Path) -> Path:
    """A datalist (beside links to ``source``'s folders) with ``picked`` labeled before the
    original labeled scans; returns the datalist's path."""
    datalist = json.loads((source / "datalist.json").read_text())
    hidden = datalist["hidden_labels"]
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "imagesTs", "labelsTr", "labelsTs", "labelsTr_hidden"):
        link = out / sub
        if not link.exists():
            os.symlink(source / sub, link)
    # the original labeled scans in name order, as the folder layout lists them for the
    # original run: its last one stays the validation scan
    original = sorted(datalist["training"], key=lambda entry: Path(entry["image"]).name)
    training = [
        {"image": f"imagesTr/{name}.nii.gz", "label": hidden[name]} for name in picked
    ] + original
    unlabeled = [
        u for u in datalist["unlabeled"] if Path(u["image"]).name.split(".")[0] not in picked
    ]
    new = {
        **datalist,
        "description": f"{datalist['description']} + {len(picked)} picked: {', '.join(picked)}",
        "training": training,
        "unlabeled": unlabeled,
    }
    new.pop("hidden_labels", None)
    (out / "datalist.json").write_text(json.dumps(new, indent=1))
    return out / "datalist.json"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--pick", type=int, default=4)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--measure", default="disagreement")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data)
    ranking_csv = args.out / "ranking.csv"
    if not ranking_csv.exists():
        predictor = Predictor.from_checkpoint(args.model, "cpu", uncertainty=args.measure)
        write_ranking_csv(rank_scans(predictor, data.unlabeled), ranking_csv)
    lines = ranking_csv.read_text().splitlines()
    header = lines[0].split(",")
    ranked = [dict(zip(header, line.split(","), strict=False))["case"] for line in lines[1:]]
    names = sorted(ranked)
    arms = {"ranked": ranked[: args.pick]}
    for k in range(args.draws):
        rng = np.random.default_rng(k)
        arms[f"random{k}"] = [names[i] for i in rng.choice(len(names), args.pick, replace=False)]
    (args.out / "arms.json").write_text(json.dumps(arms, indent=1))
    base = run_config(6, args.iterations, 0)
    config = base.replace(training=base.training.replace(val_fraction=0.08))
    results: dict[str, float] = {}
    for arm, picked in arms.items():
        run = args.out / arm / "run"
        data_dir = arm_dataset(args.data, picked, args.out / arm / "data")
        if not (run / SCORES).exists():
            if not is_completed(run):
                log.info("arm %s: labeling %s", arm, ", ".join(picked))
                data = load_dataset(data_dir)
                status = Trainer(config, data, run, "cpu", resume=can_resume(run)).run()
                if status != "completed":
                    continue
            scores = evaluate(run, data_dir, voxel_units=True, device="cpu")
            (run / SCORES).write_text(json.dumps(scores, indent=1, default=str))
        summary = json.loads((run / SCORES).read_text())["summary"]
        results[arm] = 100 * summary["dice"]["mean"]
        write_report(args, arms, results)


def write_report(args: argparse.Namespace, arms: dict[str, list[str]], results: dict) -> None:
    lines = [
        f"Active-learning round from {args.model} ({args.measure} ranking): "
        f"+{args.pick} labeled scans, retrained {args.iterations} iterations (dual), "
        "test-list Dice %:",
        "",
    ]
    for arm, dice in results.items():
        lines.append(f"- {arm}: {dice:.2f} (picked {', '.join(arms[arm])})")
    randoms = [d for a, d in results.items() if a.startswith("random")]
    if randoms:
        sd = statistics.stdev(randoms) if len(randoms) > 1 else 0.0
        lines.append(
            f"- random draws: mean {statistics.mean(randoms):.2f} ± {sd:.2f} (n={len(randoms)})"
        )
    (args.out / "al_round.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
