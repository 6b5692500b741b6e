"""Which per-voxel uncertainty measure and which scan score find the hard scans (phantoms).

    python benchmarks/uncertainty_measures.py [--model CHECKPOINT] [--iterations 40]
                                              [--per-condition 10] [--shape 24 40 40]
    python benchmarks/uncertainty_measures.py --model RUN --data DECATHLON_FOLDER [--json OUT]

With ``--data`` the test list of a real dataset is scored instead of phantoms (the README's
real-LA figures: the dual checkpoint of the 8-labeled learning check on the 20 test scans);
a single-network model is scored with its flip-variance map (test-time augmentation).

Without ``--model`` a tiny dual model is trained on clean phantoms first (3 labeled + 2
unlabeled, fp32). New phantoms are then drawn in four conditions: clean, noisy, low-contrast
and both, ``--per-condition`` of each. For every phantom the two networks' foreground
probabilities ``p_A`` and ``p_B`` are predicted separately, and four candidate maps are
compared:

* ``absdiff``: ``|p_A - p_B|`` (``disagreement`` in the predictor);
* ``symkl``: the symmetric KL divergence between the two Bernoulli distributions;
* ``entropy``: the binary entropy of the mean ``(p_A + p_B) / 2`` (``entropy``);
* ``mutualinfo``: entropy of the mean minus the mean entropy (BALD).

(They are computed from the two stitched probability maps; the predictor computes its map in
each window and stitches that, which differs only in the order of blending.)

Per map it reports the voxel AUROC for the voxels the prediction got wrong, and per scan score
(mean over the predicted foreground dilated by 3 voxels, over the foreground alone, over the
whole image): the Spearman correlation with ``1 - Dice``, the separation of the degraded
phantoms from the clean ones in pooled standard deviations, and the probability that a
degraded phantom outscores a clean one. A shared machine changes the time, not the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import load_dataset
from dkuxnet.inference import Predictor
from dkuxnet.inference.ranking import region_score
from dkuxnet.io import read_label, read_volume
from dkuxnet.metrics import case_metrics
from dkuxnet.synthetic import SETTINGS, make_phantom, write_synthetic_dataset
from dkuxnet.training import Trainer

# The widths of Testing/tiny.py: trains in about a minute on two CPU cores.
TINY = dict(
    feature_sizes=(8, 16, 24, 32), hidden_size=24, num_queries=6, query_dim=16, embed_dim=8,
    kmax_heads=2, kmax_ffn_dim=16, kernel_size=3,
)  # fmt: skip
CONDITIONS = {
    "clean": SETTINGS,
    "noisy": dataclasses.replace(SETTINGS, noise_sigma=(0.3, 0.3)),
    "low-contrast": dataclasses.replace(SETTINGS, blood=0.5),
    "both": dataclasses.replace(SETTINGS, blood=0.55, noise_sigma=(0.25, 0.25)),
}
EPS = 1e-6


def train_tiny(iterations: int, shape: tuple[int, int, int], work: Path) -> Path:
    base = TrainConfig.preset("lite")
    config = TrainConfig(
        model=ModelConfig.preset("lite", **TINY),
        data=base.data.replace(patch_size=(16, 32, 32), labeled_batch=2, unlabeled_batch=2),
        training=base.training.replace(
            mode="dual",
            iterations=iterations,
            val_every=10_000,
            checkpoint_every=10_000,
            lr=3e-3,
            schedule="constant",
            amp="off",
        ),
        inference=base.inference.replace(overlap=0.25, amp="off"),
    )
    write_synthetic_dataset(work / "data", 3, 2, 0, shape=shape, seed=3)
    Trainer(config, load_dataset(work / "data"), work / "run", "cpu").run()
    return work / "run"


def entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def candidate_maps(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The four maps from the two networks' foreground probabilities ``(Z, Y, X)``."""
    ca, cb = np.clip(a, EPS, 1 - EPS), np.clip(b, EPS, 1 - EPS)

    def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))

    mean = (a + b) / 2
    return {
        "absdiff": np.abs(a - b),
        "symkl": 0.5 * (kl(ca, cb) + kl(cb, ca)),
        "entropy": entropy(mean),
        "mutualinfo": entropy(mean) - 0.5 * (entropy(a) + entropy(b)),
    }


def voxel_auroc(u: np.ndarray, wrong: np.ndarray) -> float | None:
    """P(uncertainty of a wrong voxel > that of a right one); ``None`` without both kinds."""
    if not wrong.any() or wrong.all():
        return None
    statistic = stats.mannwhitneyu(u[wrong], u[~wrong]).statistic
    return float(statistic) / (float(wrong.sum()) * float((~wrong).sum()))


def score_row(
    pred: np.ndarray, truth: np.ndarray, maps: dict[str, np.ndarray], **fields: object
) -> dict[str, object]:
    """Dice of ``pred``, and per map: the three scan scores and the voxel AUROC."""
    wrong = pred != truth
    row: dict[str, object] = {**fields, "dice": case_metrics(pred, truth)["dice"]}
    for name, u in maps.items():
        row[f"{name}/fg+3"] = region_score(pred, u, 3)
        row[f"{name}/fg"] = region_score(pred, u, 0)
        row[f"{name}/whole"] = float(u.mean())
        auroc = voxel_auroc(u, wrong)
        if auroc is not None:
            row[f"{name}/auroc"] = auroc
    return row


def phantom_rows(model: Path, shape: tuple[int, int, int], per_condition: int) -> list[dict]:
    nets = {n: Predictor.from_checkpoint(model, "cpu", networks_choice=n) for n in "ab"}
    rows = []
    for condition, settings in CONDITIONS.items():
        for k in range(per_condition):
            image, label = make_phantom(shape, seed=40 + k, settings=settings)  # type: ignore[arg-type]
            a = 1 - nets["a"].predict_probabilities(image.array)[0]
            b = 1 - nets["b"].predict_probabilities(image.array)[0]
            pred = ((a + b) / 2 > 0.5).astype(np.uint8)
            rows.append(score_row(pred, label.array, candidate_maps(a, b), condition=condition))
            print(f"{condition:13s} {k}  Dice {rows[-1]['dice']:.3f}", file=sys.stderr, flush=True)
    return rows


def scan_rows(model: Path, data: Path, precision: str) -> list[dict]:
    """Rows for the test list of a decathlon folder, as a user gets them (``predict_volume``).

    The prediction scored is the default one (both networks, largest component); a dual model's
    four maps come from its two networks' foreground probabilities on the input grid, a
    single-network model's one map is the predictor's flip variance (test-time augmentation).
    """
    user = Predictor.from_checkpoint(model, "cpu", amp=precision)
    dual = len(user.networks) == 2
    if dual:
        nets = {
            n: Predictor.from_checkpoint(model, "cpu", networks_choice=n, amp=precision)
            for n in "ab"
        }
    else:
        user = Predictor(
            user.networks, user.config, "cpu", amp=precision, tta=True,
            uncertainty="flip-variance",
        )  # fmt: skip
    rows = []
    cases = load_dataset(data).test
    for done, case in enumerate(cases, start=1):
        image = read_volume(case.image)
        assert case.label is not None
        truth = read_label(case.label, reference=image).array
        result = user.predict_volume(image)
        if dual:
            a, b = (nets[n].predict_volume(image, probabilities=True).probabilities for n in "ab")
            assert a is not None and b is not None
            maps = candidate_maps(a.array, b.array)
        else:
            assert result.uncertainty is not None
            maps = {"flip-variance": result.uncertainty.array}
        rows.append(score_row(result.label.array, truth, maps, case=case.name))
        print(f"{done:3d}/{len(cases)} {case.name}  Dice {rows[-1]['dice']:.4f}", file=sys.stderr)
    return rows


def report(rows: list[dict]) -> None:
    dice = np.array([r["dice"] for r in rows], dtype=float)
    names = sorted({k.split("/")[0] for r in rows for k in r if "/" in k})
    print(f"{'map':13s} {'voxel AUROC':>11s} {'sd':>6s}")
    for name in names:
        aurocs = [float(r[f"{name}/auroc"]) for r in rows if f"{name}/auroc" in r]
        print(f"{name:13s} {np.mean(aurocs):11.3f} {np.std(aurocs):6.3f}")
    conditions = "condition" in rows[0]
    clean = np.array([r.get("condition") == "clean" for r in rows])
    header = f"\n{'scan score':20s} {'Spearman(1-Dice)':>16s}"
    print(header + (f" {'separation':>10s} {'P(hard>clean)':>13s}" if conditions else ""))
    for key in (k for k in rows[0] if "/" in k and not k.endswith("auroc")):
        v = np.array([r[key] for r in rows], dtype=float)
        rho = stats.spearmanr(v, 1 - dice).statistic
        line = f"{key:20s} {rho:16.3f}"
        if conditions:
            hard, easy = v[~clean], v[clean]
            sep = (hard.mean() - easy.mean()) / np.sqrt(0.5 * (hard.var() + easy.var()))
            p_hard = np.mean([x > y for x in hard for y in easy])
            line += f" {sep:10.2f} {p_hard:13.3f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a dual checkpoint or run folder (default: train one)")
    parser.add_argument(
        "--data",
        type=Path,
        help="score the test list of this decathlon folder (real scans) instead of phantoms; "
        "needs --model",
    )
    parser.add_argument("--precision", default="off", help="inference precision for --data")
    parser.add_argument("--json", type=Path, help="also write the per-case rows here")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--per-condition", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 40, 40))
    args = parser.parse_args()
    if args.data is not None:
        if not args.model:
            parser.error("--data needs --model")
        rows = scan_rows(Path(args.model), args.data, args.precision)
    else:
        shape = tuple(args.shape)
        work = Path(tempfile.mkdtemp(prefix="uncertainty_measures_"))
        model = Path(args.model) if args.model else train_tiny(args.iterations, shape, work)  # type: ignore[arg-type]
        rows = phantom_rows(model, shape, args.per_condition)  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
