"""Do the consistency losses change the two networks themselves? (issue 15, "find out why")

    python scripts/member_check.py --grid /work/grid --labels 8 [--threads 1] \
        [--runs two-nets/seed0 dual/seed0 ...]

The grid (``scripts/ssl_grid.py``) scores a two-network run by the mean of its networks. Two
networks without any consistency loss (configuration 3) score as well as the method, so the
question is what the losses do to each network: if they teach, each network of a dual run
should be better than the same network trained alone, and the two should agree more. For every
two-network run folder ``GRID/<labels>/<config>/seed<s>`` this scores, on the test list at the
grid's settings (voxel units, medpy style, what ``dkuxnet predict`` does), network A alone
(the strong view), network B alone (the weak view), their mean (the grid's figure), and the
agreement of A's and B's labels (Dice between them). Results: a table on stdout and
``GRID/<labels>/members.json`` (cells already there are not scored again).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dkuxnet.data import load_dataset
from dkuxnet.inference import Predictor
from dkuxnet.io import read_label, read_volume
from dkuxnet.metrics import case_metrics

CHOICES = ("a", "b", "both")


def score_members(run: Path, data_dir: Path) -> dict[str, float] | None:
    """Mean test Dice % of A, B and both, and the mean Dice % between A's and B's labels;
    ``None`` for a one-network run (nothing to compare)."""
    predictors = {"both": Predictor.from_checkpoint(run, "cpu", networks_choice="both")}
    if len(predictors["both"].networks) < 2:
        return None
    for choice in ("a", "b"):
        predictors[choice] = Predictor.from_checkpoint(run, "cpu", networks_choice=choice)
    cases = load_dataset(data_dir).test
    dice: dict[str, list[float]] = {c: [] for c in (*CHOICES, "a_vs_b")}
    for case in cases:
        if case.label is None:
            raise SystemExit(f"{case.name}: the test list needs labels")
        image = read_volume(case.image)
        truth = read_label(case.label).array > 0
        labels = {}
        for choice, predictor in predictors.items():
            labels[choice] = predictor.predict_volume(image).label.array > 0
            dice[choice].append(case_metrics(labels[choice], truth, style="medpy")["dice"])
        dice["a_vs_b"].append(case_metrics(labels["a"], labels["b"], style="medpy")["dice"])
    return {key: 100 * statistics.mean(values) for key, values in dice.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grid", required=True, type=Path, help="the ssl_grid --out folder")
    p.add_argument("--labels", type=int, default=8)
    p.add_argument("--runs", nargs="*", help="<config>/seed<s> under GRID/<labels> (default: all)")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.grid / str(args.labels)
    data_dir = args.grid / "data" / f"la{args.labels}"
    runs = [root / r for r in args.runs] if args.runs else sorted(root.glob("*/seed*"))
    out = root / "members.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for run in runs:
        key = str(run.relative_to(root))
        if key in results or not (run / "test_scores.json").exists():
            continue  # scored already, or not finished and scored by the grid yet
        scores = score_members(run, data_dir)
        if scores is None:
            continue
        results[key] = scores
        out.write_text(json.dumps(results, indent=1))
        print(key, {k: round(v, 2) for k, v in results[key].items()}, flush=True)
    print(f"\nTest Dice % ({args.labels} labeled): A alone (strong view), B alone (weak view), "
          "their mean, and A-vs-B agreement\n")  # fmt: skip
    print("| run | A | B | A+B | Dice(A, B) |\n|---|---|---|---|---|")
    for key, r in sorted(results.items()):
        print(f"| {key} | {r['a']:.2f} | {r['b']:.2f} | {r['both']:.2f} | {r['a_vs_b']:.2f} |")


if __name__ == "__main__":
    main()
