"""The semi-supervised study on the real LA scans: configurations x labeled scans x seeds.

    python scripts/ssl_grid.py --la-data "DTC/data/2018LA_Seg_Training Set" --out /work/grid \
        [--labels 8 16] [--seeds 0 1 2] [--configs 1 3 6 7 2 4 5] [--iterations 1000] \
        [--threads 1] [--table-only]

Every run uses the learning check's recipe (``scripts/learning_check.py``: the ``lite``
network, 2.5 mm, 16 x 32 x 48 patches, lr 1e-3, poly schedule, validation every 100 iterations
on the last 1/8 of the labeled train-list scans, best checkpoint by validation Dice; the test
list is scored once at the end, voxel units, medpy style). Only what the configuration names
differs:

1. ``supervised``         one network, labeled scans, the weak view
2. ``supervised-strong``  the same with network A's strong-view perturbation
3. ``two-nets``           two networks (A strong, B weak) with both consistency losses off;
                          prediction = their mean (the ensemble without the method)
4. ``segc-only``          dual with L_segc only
5. ``qdc-only``           dual with L_qdc only
6. ``dual``               the method: L_segc + L_qdc
7. ``unet``               MONAI's UNet, supervised (``dkuxnet.model.baseline``)
8-10. ``dual-w0.3|1|3``   the method with consistency weight w_max 0.3, 1 or 3 (default 0.1)
11. ``dual-dicece``       the method with DiceCE on the confident voxels as L_segc
12. ``dual-dicece-w1``    the same with w_max 1
13. ``unet-fp32``         configuration 7 without bf16 autocast (7 diverged in one cell)
14. ``dual-affinity``     the method with L_qdc in its ``affinity`` form (query co-assignment)
15. ``dual-unet-b``       the method with MONAI's UNet as network B (``model.architecture_b``)
16. ``two-nets-unet-b``   15 without the consistency losses (that pair's ensemble)

``--labels 80 --configs 1`` is the recipe's ceiling: every train-list scan labeled (the
last 10 choose the checkpoint), what no semi-supervised arm at 8 or 16 can be expected to pass.

``--known CSV`` reads cells scored on another machine (a ``per_seed.csv`` kept in the
repository, ``docs/ssl_grid/per_seed.csv``): they are not run again and count in the table.

Runs go to ``OUT/<labels>/<config>/seed<seed>``. Configurations 1, 3, 6 and 7 come first, seed
by seed (each seed: both label counts, every configuration), then the others the same way, so
an interrupted grid has its most wanted, comparable cells first;
rerun the same command to resume (a finished run is only re-scored if its scores are missing,
an unfinished one resumes from ``last.pt``; a run folder whose config differs is an error).
The results: ``OUT/table.md`` (mean +- sd over seeds per cell, and the paired dual-vs-arm
differences), ``OUT/per_seed.csv`` and ``OUT/grid.png`` (Dice against labeled scans, one line
per configuration, seeds as points), rewritten after every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch
from learning_check import build_config, evaluate

from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import import_la, load_dataset
from dkuxnet.events import read_events
from dkuxnet.runs import CONFIG_FILE, EVENTS_FILE, can_resume, is_completed
from dkuxnet.training import Trainer

log = logging.getLogger("ssl_grid")

#: number -> (name, mode, training overrides, model preset or None)
CONFIGS: dict[int, tuple[str, str, dict[str, Any], str | None]] = {
    1: ("supervised", "supervised", {}, None),
    2: ("supervised-strong", "supervised", {"supervised_view": "strong"}, None),
    3: ("two-nets", "dual", {"use_segc": False, "use_qdc": False}, None),
    4: ("segc-only", "dual", {"use_qdc": False}, None),
    5: ("qdc-only", "dual", {"use_segc": False}, None),
    6: ("dual", "dual", {}, None),
    7: ("unet", "supervised", {}, "unet"),
    # the consistency strength (the sweep; w = 0.1 is config 6) and the pseudo-label form
    8: ("dual-w0.3", "dual", {"consistency_weight": 0.3}, None),
    9: ("dual-w1", "dual", {"consistency_weight": 1.0}, None),
    10: ("dual-w3", "dual", {"consistency_weight": 3.0}, None),
    11: ("dual-dicece", "dual", {"segc_form": "dicece"}, None),
    12: ("dual-dicece-w1", "dual", {"segc_form": "dicece", "consistency_weight": 1.0}, None),
    # MONAI's UNet diverged under bf16 autocast (NaN at iteration 8-11, 16 labeled, seed 0; the
    # same cell in fp32 trains): the baseline in fp32 where bf16 fails. (Cause found later: the
    # CPU bf16 weight-gradient fault of small padded convolutions; the UNet is now guarded.)
    13: ("unet-fp32", "supervised", {"amp": "off"}, "unet"),
    # L_qdc made to carry query-level information: the networks' voxel co-assignment maps
    14: ("dual-affinity", "dual", {"qdc_form": "affinity"}, None),
    # two networks of different designs (our network as A, MONAI's UNet as B): with two of the
    # same design 75-80 % of either network's wrong voxels are the other's too (member_check
    # --teaching); a UNet shares 54-63 % with ours. 16 is 15 without the consistency losses.
    15: ("dual-unet-b", "dual", {}, "lite+unet-b"),
    16: ("two-nets-unet-b", "dual", {"use_segc": False, "use_qdc": False}, "lite+unet-b"),
}
RECIPE = (
    "data.target_spacing=[2.5,2.5,2.5]",
    "training.lr=0.001",
    "training.val_every=100",
    "training.val_fraction=0.125",
    "training.grad_probe_every=100",  # logs |grad| of L_sup vs the weighted consistency
)
#: The configurations run first (the issue's order when the budget is short).
CORE = (1, 3, 6, 7)
METRICS = ("dice", "jaccard", "hd95", "asd")
SCORES = "test_scores.json"


def run_config(number: int, iterations: int, seed: int) -> TrainConfig:
    """The configuration of one cell (``number`` as in the module docstring)."""
    _, mode, training, preset = CONFIGS[number]
    base = build_config(iterations, seed, "lite", (16, 32, 48), RECIPE)
    config = base.replace(training=base.training.replace(mode=mode, **training))
    if preset == "lite+unet-b":
        config = config.replace(model=config.model.replace(architecture_b="unet"))
    elif preset is not None:
        config = config.replace(model=ModelConfig.preset(preset))
    return config


def do_run(number: int, labels: int, seed: int, args: argparse.Namespace) -> dict | None:
    """Train (or resume) and score one cell; ``None`` when stopped before the end."""
    name = CONFIGS[number][0]
    run = args.out / str(labels) / name / f"seed{seed}"
    data_dir = args.out / "data" / f"la{labels}"
    config = run_config(number, args.iterations, seed)
    if (run / CONFIG_FILE).exists():
        saved = TrainConfig.load(run / CONFIG_FILE)
        # the gradient probe does not change training (runs from before it lack it)
        saved = saved.replace(
            training=saved.training.replace(grad_probe_every=config.training.grad_probe_every)
        )
        if saved != config:
            raise SystemExit(f"{run}: holds a run with another configuration; move it away first")
    if (run / SCORES).exists():
        return json.loads((run / SCORES).read_text())
    if args.table_only:
        return None
    if not is_completed(run):
        log.info("training %s, %d labeled, seed %d -> %s", name, labels, seed, run)
        status = Trainer(
            config, load_dataset(data_dir), run, device="cpu", resume=can_resume(run)
        ).run()
        if status != "completed":
            return None
    scores = evaluate(run, data_dir, voxel_units=True, device="cpu")
    events = read_events(run / EVENTS_FILE)
    seconds = sum(
        e["time"] - s["time"]
        for s, e in zip(events, events[1:], strict=False)
        if e.get("event") == "iteration" and s.get("event") == "iteration"
    )
    scores["train_seconds"] = seconds
    (run / SCORES).write_text(json.dumps(scores, indent=1, default=str))
    return scores


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def scored_cells(out: Path) -> dict[tuple[int, int, int], dict]:
    """Every scored cell under ``out`` (also those of another grid process on the same folder)."""
    results = {}
    for number, (name, *_) in CONFIGS.items():
        for path in sorted(out.glob(f"*/{name}/seed*/{SCORES}")):
            labels, seed = int(path.parent.parent.parent.name), int(path.parent.name[4:])
            results[(number, labels, seed)] = json.loads(path.read_text())
    return results


def known_cells(path: Path | None) -> dict[tuple[int, int, int], dict]:
    """Cells of a ``per_seed.csv`` (scored elsewhere), in the shape of a scored cell."""
    if path is None or not path.exists():
        return {}
    results = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            number = int(row["config"].split()[0])
            if CONFIGS.get(number, ("",))[0] != row["config"].split(maxsplit=1)[1]:
                raise SystemExit(f"{path}: configuration {row['config']!r} is not this script's")
            summary = {
                m: {"mean": float(row[m]) / (100 if m in ("dice", "jaccard") else 1)}
                for m in METRICS
            }
            seconds = 60 * float(row["train_minutes"])
            results[(number, int(row["labeled"]), int(row["seed"]))] = {
                "summary": summary,
                "train_seconds": seconds,
                "grad_ratio": float(row["grad_ratio"]) if row.get("grad_ratio") else None,
            }
    return results


def grad_ratio(run: Path, after: float = 0.5) -> float | None:
    """Mean |grad of the weighted consistency| / |grad of L_sup| over the gradient probes in the
    last ``1 - after`` of the run (after the ramp-up); ``None`` without probes."""
    events = run / EVENTS_FILE
    if not events.exists():
        return None
    ratios = [
        e["grad_norms"]["grad_norm_consistency"] / e["grad_norms"]["grad_norm_sup"]
        for e in read_events(events)
        if e.get("event") == "iteration"
        and "grad_norms" in e
        and e["iteration"] > after * e["total"]
        and e["grad_norms"]["grad_norm_sup"] > 0
    ]
    return statistics.mean(ratios) if ratios else None


def write_results(results: dict[tuple[int, int, int], dict], args: argparse.Namespace) -> None:
    """``table.md``, ``per_seed.csv`` and ``grid.png`` from every scored cell so far."""
    # cells scored by another process (e.g. one per label count) or elsewhere count too
    results = {**known_cells(args.known), **scored_cells(args.out), **results}
    rows = []
    for (number, labels, seed), r in sorted(results.items()):
        s = r["summary"]
        rows.append(
            {
                "config": f"{number} {CONFIGS[number][0]}",
                "labeled": labels,
                "seed": seed,
                **{m: (100 if m in ("dice", "jaccard") else 1) * s[m]["mean"] for m in METRICS},
                "train_minutes": r.get("train_seconds", 0.0) / 60,
                "grad_ratio": r.get("grad_ratio")
                or grad_ratio(args.out / str(labels) / CONFIGS[number][0] / f"seed{seed}"),
            }
        )
    with open(args.out / "per_seed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["config"])
        writer.writeheader()
        writer.writerows(rows)
    labels_list = sorted({k[1] for k in results})
    lines = [
        f"Test-list Dice % (mean ± sd over seeds; n = seeds), {args.iterations} iterations, "
        "2.5 mm, 16×32×48, lite; Jaccard %, 95HD and ASD in voxels.",
        "",
        "| configuration | " + " | ".join(f"{n} labeled: Dice (n)" for n in labels_list) + " | "
        + " | ".join(f"{n}: Jaccard / 95HD / ASD" for n in labels_list) + " |",
        "|---" * (1 + 2 * len(labels_list)) + "|",
    ]  # fmt: skip
    for number in CONFIGS:
        cells, extra = [], []
        for labels in labels_list:
            seeds = [r for (c, n, _), r in results.items() if c == number and n == labels]
            if not seeds:
                cells.append("–")
                extra.append("–")
                continue

            def values(metric: str, seeds: list[dict] = seeds) -> list[float]:
                scale = 100 if metric in ("dice", "jaccard") else 1
                return [scale * r["summary"][metric]["mean"] for r in seeds]

            cells.append(f"{mean_sd(values('dice'))} ({len(seeds)})")
            extra.append(" / ".join(f"{statistics.mean(values(m)):.2f}" for m in METRICS[1:]))
        if any(c != "–" for c in cells):
            lines.append(f"| {number} {CONFIGS[number][0]} | " + " | ".join(cells + extra) + " |")
    ratios = [
        f"{r['config']} ({r['labeled']} labeled) {statistics.mean(v):.3f}"
        for r, v in (
            (r, [x["grad_ratio"] for x in rows if x["config"] == r["config"]
                 and x["labeled"] == r["labeled"] and x["grad_ratio"]])
            for r in rows if r["seed"] == min(x["seed"] for x in rows if x["config"] == r["config"])
        )
        if v
    ]  # fmt: skip
    if ratios:
        lines += [
            "",
            "Gradient norm of the weighted consistency over that of L_sup (mean of the probes "
            "after half the run, mean over seeds): " + "; ".join(ratios) + ".",
        ]

    def paired(ref: int, arm: int, labels: int) -> list[float]:
        """Test Dice points, ``ref`` minus ``arm``, for the seeds both have."""
        return [
            100 * (r["summary"]["dice"]["mean"] - other["summary"]["dice"]["mean"])
            for (c, n, seed), r in sorted(results.items())
            if c == ref and n == labels and (other := results.get((arm, labels, seed)))
        ]

    def paired_line(ref: int, arm: int, labels: int, shown: int, who: str) -> list[str]:
        diffs = paired(ref, arm, labels)
        if not diffs:
            return []
        per_seed = ", ".join(f"{d:+.2f}" for d in diffs)
        wins = sum(d > 0 for d in diffs)
        return [
            f"- {'vs ' if shown == arm else ''}{shown} {CONFIGS[shown][0]}, {labels} labeled: "
            f"{per_seed} (mean {statistics.mean(diffs):+.2f}; {who} better in {wins}/{len(diffs)})"
        ]

    lines += ["", "Paired differences, dual (6) minus arm, test Dice points, per seed:", ""]
    for arm in (1, 3, 7, 13, 2, 4, 5, 8, 9, 10, 11, 12, 14):
        for labels in labels_list:
            lines += paired_line(6, arm, labels, arm, "dual")
    ensemble = [
        line
        for ref in (4, 5, 6, 8, 9, 10, 11, 12, 14)
        for labels in labels_list
        for line in paired_line(ref, 3, labels, ref, "it is")
    ]
    unet_b = [
        line
        for ref, arm in ((15, 16), (16, 3), (15, 6), (15, 1), (15, 7))
        for labels in labels_list
        for line in paired_line(ref, arm, labels, arm, f"{ref} {CONFIGS[ref][0]}")
    ]
    if unet_b:
        lines += [
            "",
            "A UNet as network B: 15 (dual) and 16 (without the consistency losses) against "
            "the same two networks without consistency (16), the two networks of one design "
            "(3, 6) and one network (1, 7), test Dice points, per seed:",
            "",
            *unet_b,
        ]
    if ensemble:
        lines += [
            "",
            "What the consistency losses add: arm minus 3 two-nets (the same two networks and "
            "views without them), test Dice points, per seed:",
            "",
            *ensemble,
        ]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    plot_grid(rows, args.out / "grid.png")


def plot_grid(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    configs = sorted({r["config"] for r in rows}, key=lambda c: int(c.split()[0]))
    colours = plt.get_cmap("tab20").colors  # one colour per configuration (tab10 repeats)
    for i, config in enumerate(configs):
        mine = [r for r in rows if r["config"] == config]
        xs = sorted({r["labeled"] for r in mine})
        means = [statistics.mean(r["dice"] for r in mine if r["labeled"] == x) for x in xs]
        (line,) = ax.plot(xs, means, marker="o", label=config, color=colours[i % len(colours)])
        ax.scatter(
            [r["labeled"] for r in mine], [r["dice"] for r in mine], color=line.get_color(), s=12
        )
    counts = sorted({r["labeled"] for r in rows})
    if counts and counts[-1] > 4 * counts[0]:  # e.g. 8, 16 and the all-labeled 80
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
    ax.set_xlabel("labeled scans")
    ax.set_ylabel("test-list Dice (%)")
    ax.set_title("LA, 20 test scans (lines: seed mean; points: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--la-data", type=Path, help="the 2018 LA training set folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--labels", type=int, nargs="+", default=[8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", type=int, nargs="+", default=[1, 3, 6, 7, 2, 4, 5])
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--table-only", action="store_true", help="only rewrite the results")
    p.add_argument("--known", type=Path, help="per_seed.csv of cells scored elsewhere (skipped)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if unknown := [c for c in args.configs if c not in CONFIGS]:
        p.error(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    for labels in args.labels:
        data_dir = args.out / "data" / f"la{labels}"
        if not (data_dir / "datalist.json").exists() and not args.table_only:
            if args.la_data is None:
                p.error(f"{data_dir} is missing: pass --la-data to import the scans")
            import_la(args.la_data, data_dir, labeled=labels, overwrite=True)
    results = {k: v for k, v in known_cells(args.known).items() if k[0] in args.configs}
    for number in args.configs:  # already scored cells first, so the table is complete early
        for labels in args.labels:
            for seed in args.seeds:
                run = args.out / str(labels) / CONFIGS[number][0] / f"seed{seed}" / SCORES
                if run.exists():
                    results[(number, labels, seed)] = json.loads(run.read_text())
    if results:
        write_results(results, args)
    core = [c for c in args.configs if c in CORE]
    for group in (core, [c for c in args.configs if c not in CORE]):
        for seed in args.seeds:
            for labels in args.labels:
                for number in group:
                    if (number, labels, seed) in results:
                        continue
                    scores = do_run(number, labels, seed, args)
                    if scores is None:
                        continue
                    results[(number, labels, seed)] = scores
                    write_results(results, args)
    if results:
        print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
