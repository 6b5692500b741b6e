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

``--teaching N`` adds what L_segc can teach, measured on the first N **unlabeled** train-list
scans with their hidden labels (``labelsTr_hidden/``, never used by training), at the training
spacing and voxel order: of the voxels network A gets wrong, the share B also gets wrong (the
same mistake), and the share B gets right with confidence above tau (``training.confidence``:
the pseudo-labels that would correct A); against that, the voxels A gets right where B's
confident pseudo-label is wrong (it would mislead A). The same with A and B swapped, and for
other thresholds (``TAUS``: what a different ``training.confidence`` would let through).
Results in ``GRID/<labels>/teaching.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from dkuxnet.config import NETWORK_CHOICES
from dkuxnet.data import Case, load_dataset
from dkuxnet.inference import Predictor
from dkuxnet.io import read_label, read_volume
from dkuxnet.metrics import case_metrics
from dkuxnet.preprocessing import resample_cases

# Confidence thresholds tau the teaching signal is also counted at (0.5: every voxel for K = 2).
TAUS = (0.5, 0.8, 0.9, 0.95, 0.99)


def run_members(run: Path) -> dict[str, Predictor] | None:
    """Predictors of a two-network run, from one checkpoint read: ``both`` (the grid's figure),
    ``a`` and ``b`` alone; ``None`` for a one-network run."""
    both = Predictor.from_checkpoint(run, "cpu", networks_choice="both")
    if len(both.networks) < 2:
        return None
    alone = {c: Predictor(both.networks, both.config, "cpu", networks_choice=c) for c in "ab"}
    return {"both": both, **alone}


def score_members(run: Path, data_dir: Path) -> dict[str, float] | None:
    """Mean test Dice % of A, B and both, and the mean Dice % between A's and B's labels;
    ``None`` for a one-network run (nothing to compare)."""
    predictors = run_members(run)
    if predictors is None:
        return None
    cases = load_dataset(data_dir).test
    dice: dict[str, list[float]] = {c: [] for c in (*NETWORK_CHOICES, "a_vs_b")}
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


def teaching_signal(
    predictors: dict[str, Predictor], data_dir: Path, limit: int, cache: Path
) -> dict[str, float]:
    """What each network's confident labels could teach the other on unlabeled scans (see the
    module docstring), summed over the first ``limit`` unlabeled scans. ``predictors``: ``a``
    and ``b``, trained at the same spacing; the scans are resampled as the trainer does it
    (:func:`dkuxnet.preprocessing.resample_cases`, written once into ``cache``)."""
    config = predictors["a"].config
    spacing, taus = tuple(config.data.target_spacing), (config.training.confidence, *TAUS)
    if tuple(predictors["b"].config.data.target_spacing) != spacing:
        raise SystemExit("the two networks were trained at different spacings")
    hidden = json.loads((data_dir / "datalist.json").read_text())["hidden_labels"]
    cases = [
        Case(case.name, case.image, data_dir / hidden[case.name])
        for case in load_dataset(data_dir).unlabeled[:limit]
    ]
    if spacing:
        cases = resample_cases(cases, spacing, cache)
    counts: dict[str, int] = {}
    for case in cases:
        assert case.label is not None
        image, truth = read_volume(case.image), read_label(case.label).array > 0
        probs = {c: predictors[c].predict_probabilities(image.array) for c in "ab"}
        label = {c: probs[c].argmax(axis=0) > 0 for c in "ab"}
        for student, teacher in (("a", "b"), ("b", "a")):
            wrong = label[student] != truth
            teacher_right = label[teacher] == truth
            masks = {
                f"{student}_wrong": wrong,
                f"{student}_wrong_{teacher}_wrong": wrong & ~teacher_right,
            }
            for i, tau in enumerate(taus):  # the first: the run's own tau, unsuffixed
                confident = probs[teacher].max(axis=0) > tau
                at = "" if i == 0 else f"@{tau}"
                masks[f"{student}_wrong_{teacher}_corrects{at}"] = wrong & teacher_right & confident
                masks[f"{student}_right_{teacher}_misleads{at}"] = (
                    ~wrong & ~teacher_right & confident
                )
            for key, mask in masks.items():
                counts[key] = counts.get(key, 0) + int(np.count_nonzero(mask))
        counts["foreground"] = counts.get("foreground", 0) + int(np.count_nonzero(truth))
        counts["scans"] = counts.get("scans", 0) + 1
    return {key: float(value) for key, value in counts.items()}


def print_teaching(results: dict[str, dict[str, float]], labels: int) -> None:
    print(f"\nWhat L_segc can teach ({labels} labeled; unlabeled train-list scans, hidden labels): "
          "per student network, its wrong voxels as % of the foreground, the share of them the "
          "other network gets wrong too, the share it corrects with a confident pseudo-label, "
          "and the voxels it would mislead per voxel it corrects\n")  # fmt: skip
    print(
        "| run | scans | student | wrong (% of fg) | same mistake | corrected | misled per corrected |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, c in sorted(results.items()):
        for student, teacher in (("a", "b"), ("b", "a")):
            wrong = c[f"{student}_wrong"]
            corrected = c[f"{student}_wrong_{teacher}_corrects"]
            misled = c[f"{student}_right_{teacher}_misleads"]
            print(
                f"| {key} | {c['scans']:.0f} | {student.upper()} | "
                f"{100 * wrong / c['foreground']:.1f} | "
                f"{100 * c[f'{student}_wrong_{teacher}_wrong'] / wrong:.1f} % | "
                f"{100 * corrected / wrong:.1f} % | {misled / max(corrected, 1):.2f} |"
            )
    print("\nThe same at other thresholds tau: corrected (% of the student's wrong voxels) / "
          "misled per corrected, students A and B\n")  # fmt: skip
    print("| run | " + " | ".join(f"tau {t}" for t in TAUS) + " |")
    print("|---" * (1 + len(TAUS)) + "|")
    for key, c in sorted(results.items()):
        cells = []
        for tau in TAUS:
            parts = []
            for student, teacher in (("a", "b"), ("b", "a")):
                corrected = c.get(f"{student}_wrong_{teacher}_corrects@{tau}")
                if corrected is None:
                    break
                misled = c[f"{student}_right_{teacher}_misleads@{tau}"]
                parts.append(
                    f"{100 * corrected / c[f'{student}_wrong']:.1f} % / "
                    f"{misled / max(corrected, 1):.2f}"
                )
            cells.append(", ".join(parts) or "–")
        print(f"| {key} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grid", required=True, type=Path, help="the ssl_grid --out folder")
    p.add_argument("--labels", type=int, default=8)
    p.add_argument("--runs", nargs="*", help="<config>/seed<s> under GRID/<labels> (default: all)")
    p.add_argument("--threads", type=int)
    p.add_argument("--teaching", type=int, metavar="N", help="also measure what L_segc can "
                   "teach on the first N unlabeled scans (see above)")  # fmt: skip
    p.add_argument("--pairs", nargs="*", default=[], metavar="RUN+RUN", help="with --teaching: "
                   "also two one-network runs as A and B, e.g. supervised/seed0+unet/seed0 "
                   "(would two separately trained networks make fewer of the same mistakes?)")  # fmt: skip
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
    if not args.teaching:
        return
    out = root / "teaching.json"
    cache = root / "teaching_scans"  # the unlabeled scans and hidden labels at the spacing
    teaching = json.loads(out.read_text()) if out.exists() else {}
    for run in runs:
        key = str(run.relative_to(root))
        if key in teaching or not (run / "test_scores.json").exists():
            continue
        members = run_members(run)
        if members is None:
            continue
        teaching[key] = teaching_signal(members, data_dir, args.teaching, cache)
        out.write_text(json.dumps(teaching, indent=1))
    for pair in args.pairs:
        if pair in teaching:
            continue
        first, second = pair.split("+")
        members = {
            c: Predictor.from_checkpoint(root / r, "cpu", networks_choice="a")
            for c, r in (("a", first), ("b", second))
        }
        teaching[pair] = teaching_signal(members, data_dir, args.teaching, cache)
        out.write_text(json.dumps(teaching, indent=1))
    print_teaching(teaching, args.labels)


if __name__ == "__main__":
    main()
