"""How should a dual fine-tune from a one-network model start? (issue 15, the --init path)

    python scripts/fine_tune_start.py --data IMPORTED --out /work/ft [--model BUNDLED] \
        [--labeled 4] [--unlabeled 16] [--iterations 250] [--shift] \
        [--arms copy copy-full perturb fresh] [--threads N]

The Slicer panel's Fine-tune starts ``dkuxnet train --init <bundled model>`` in dual mode:
both networks get the bundled model's weights (``training.init_b=copy``), and the consistency
weight ramps up from near zero although both networks are trained. This script measures the
alternatives as a user would meet them: scans the bundled model has not seen (the LA **test
list** of an ``la-import`` folder ``IMPORTED``: the first ``--labeled`` scans labeled, the next
``--unlabeled`` as the unlabeled set), the panel's default length (250 iterations) and recipe
(``train --init``: the model's own spacing and patch). Every arm is scored on the unlabeled
scans themselves (their labels are used only for the score): the scans the user wants
segmented. The reference is the bundled model on the same scans.

``--shift`` gives every scan a "new scanner" look first (a smooth multiplicative bias field, a
gamma curve and noise; fixed per case): the setting fine-tuning is for, where the bundled model
loses accuracy.

Arms: ``copy`` (the panel today), ``copy-full`` (the same with the full consistency weight
from the first iteration: ``rampup_fraction=0``), ``perturb`` (B = the weights plus 5 %
noise), ``fresh`` (B from a random start). Each arm is a resumable run ``OUT/<arm>``; results
go to ``OUT/table.md`` and ``OUT/scores.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from dkuxnet.cli import main as cli_main
from dkuxnet.data import Case, load_dataset
from dkuxnet.inference import Predictor, score_cases
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.resources import default_model_path
from dkuxnet.runs import can_resume

log = logging.getLogger("fine_tune_start")

ARMS: dict[str, tuple[str, ...]] = {
    "copy": ("training.init_b=copy",),
    "copy-full": ("training.init_b=copy", "training.rampup_fraction=0"),
    "perturb": ("training.init_b=perturb",),
    "fresh": ("training.init_b=fresh",),
}

#: the "new scanner" look of --shift
SHIFT = {"blur_z": 2.0, "gamma": 0.5, "bias": 0.4, "noise": 0.08}


def unit_range(a: np.ndarray) -> np.ndarray:
    """``a`` mapped to [0, 1] between its 0.5th and 99.5th percentiles (clipped)."""
    lo, hi = np.percentile(a, (0.5, 99.5))
    return np.clip((a - lo) / (hi - lo + 1e-6), 0.0, 1.0)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field over ``shape``, ``exp(±strength)`` at its extremes."""
    coarse = rng.normal(0.0, 1.0, (3, 4, 4))
    field = ndimage.zoom(coarse, np.array(shape) / np.array(coarse.shape), order=3)
    field = field[: shape[0], : shape[1], : shape[2]]
    return np.exp(strength * field / (np.abs(field).max() + 1e-6))


def shifted(image: Volume, seed: int) -> Volume:
    """The scan as another scanner might give it: thick slices (blur along z), a compressing
    gamma curve (less blood/tissue contrast), a smooth bias field and noise."""
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(image.array.astype(np.float32), (SHIFT["blur_z"], 0, 0))
    out = unit_range(a) ** SHIFT["gamma"] * bias_field(a.shape, rng, SHIFT["bias"])
    out += rng.normal(0.0, SHIFT["noise"], a.shape)
    return image.with_array(out.astype(np.float32))


def prepare(args: argparse.Namespace) -> tuple[Path, list[Case]]:
    """The fine-tune datalist (labeled + unlabeled test-list scans) and the scans to score."""
    test = load_dataset(args.data).test
    if len(test) < args.labeled + args.unlabeled:
        raise SystemExit(f"{args.data}: {len(test)} test scans, need labeled + unlabeled")
    labeled, unlabeled = test[: args.labeled], test[args.labeled : args.labeled + args.unlabeled]
    folder = args.out / "data"
    datalist = folder / "datalist.json"

    def stored(case: Case, label: bool) -> Case:
        image = folder / "images" / f"{case.name}.nii.gz"
        if not image.exists():
            volume = read_volume(case.image)
            if args.shift:
                volume = shifted(volume, zlib.crc32(case.name.encode()))
            write_volume(volume, image)
        return Case(case.name, image, case.label if label else None)

    scored = [Case(c.name, stored(c, False).image, c.label) for c in unlabeled]
    if not datalist.exists():
        train = [stored(c, True) for c in labeled]
        doc = {
            "training": [{"image": str(c.image), "label": str(c.label)} for c in train],
            "unlabeled": [{"image": str(c.image)} for c in scored],
        }
        datalist.write_text(json.dumps(doc, indent=1))
    return datalist, scored


def score(model: Path, cases: list[Case]) -> dict:
    rows = score_cases(
        Predictor.from_checkpoint(model, device="cpu"), cases, voxel_units=True, style="medpy"
    )
    return {r["case"]: r["dice"] for r in rows}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, type=Path, help="la-import output folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--labeled", type=int, default=4)
    p.add_argument("--unlabeled", type=int, default=16)
    p.add_argument("--iterations", type=int, default=250)
    p.add_argument("--shift", action="store_true", help="simulate another scanner first")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or default_model_path()
    if model is None:
        raise SystemExit("no --model and no bundled model found")
    args.out.mkdir(parents=True, exist_ok=True)
    datalist, cases = prepare(args)
    results_path = args.out / "scores.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if "bundled" not in results:
        results["bundled"] = score(model, cases)
        results_path.write_text(json.dumps(results, indent=1))
    for arm in args.arms:
        if arm in results:
            continue
        run = args.out / arm
        argv = ["train", "--data", str(datalist), "--out", str(run), "--init", str(model)]
        argv += ["--iterations", str(args.iterations), "--device", "cpu", "--quiet"]
        argv += [a for s in ARMS[arm] for a in ("--set", s)]
        if can_resume(run):
            argv.append("--resume")
        log.info("fine-tune arm %s -> %s", arm, run)
        if cli_main(argv) != 0:
            raise SystemExit(f"arm {arm}: training failed (see {run}/events.jsonl)")
        results[arm] = score(run, cases)
        results_path.write_text(json.dumps(results, indent=1))
    base = results["bundled"]
    lines = [
        f"Dice % on the {len(cases)} unlabeled test-list scans ({args.labeled} labeled, "
        f"{args.iterations} iterations{', shifted scanner' if args.shift else ''}):",
        "",
        "| start | Dice % | vs bundled (paired mean) | better than bundled |",
        "|---|---|---|---|",
    ]
    for arm, scores in results.items():
        diffs = [100 * (scores[c] - base[c]) for c in base]
        lines.append(
            f"| {arm} | {100 * statistics.mean(scores.values()):.2f} | "
            f"{statistics.mean(diffs):+.2f} | {sum(d > 0 for d in diffs)}/{len(diffs)} |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
