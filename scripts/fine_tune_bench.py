"""What does a clinician's Fine-tune gain from unlabeled scans? (issue 24: the product's claim)

    python scripts/fine_tune_bench.py --data IMPORTED --out /work/ftb \
        [--scanners thick-slices low-res bias-oblique] [--arms bundled supervised pseudo dual] \
        [--seeds 0] [--iterations 250] [--model BUNDLED]

Plays the Slicer panel's **Fine-tune** as a user meets it, on scans of a simulated new
scanner: the scans go into a real MRML scene (``slicer-core``), the labeled ones with a
segmentation each, and the panel's own logic (``DKUXNetLogic.start_fine_tune``, the code behind
the button) exports them and runs ``dkuxnet train --init <bundled model>`` in a child process,
exactly as the panel does; the arm's settings go in as the panel's ``extra_settings``.

Data (an ``la-import`` folder ``IMPORTED`` of the 2018 LA challenge, standard split):

* the fine-tune set: the 20 **test-list** scans through the scanner, the first 4 labeled, the
  next 16 unlabeled (their labels are used only to score them: score **(a)**, the scans the
  clinician wants segmented);
* held-out: the last 8 **train-list** scans through the scanner (the bundled model's own
  validation split: never trained on, and never used here to choose anything): score **(b)**.

Each scan goes through a simulated scanner, fixed per (scanner, case): ``thick-slices`` (blur
along z, a compressing contrast response, bias field, noise), ``low-res`` (another voxel grid,
1.0 x 1.0 x 2.0 mm, with its blur; a saturating contrast response; noise) and ``bias-oblique``
(stored in another orientation, x/y swapped and x flipped, same anatomy in space; a strong bias
field, an expanding contrast response, Rician noise); ``own`` is the challenge's own scanner (the
scans as given: the bundled model there says what each simulated scanner costs it). Labels follow the image onto its grid
(nearest neighbour), and every score is on the scanner's own grid (Dice %, voxels).

Arms (``--arms``; ``NAME@N`` runs NAME with N iterations instead of ``--iterations``):
``bundled`` (no fine-tune), ``supervised`` (the labeled scans only), ``two-nets`` (two
networks, no consistency), ``dual`` (the paper's method: both consistency losses), ``pseudo``
(the start model labels the unlabeled scans once, whole; one network learns from labeled +
pseudo-labeled patches, a strong view of the latter), ``pseudo-weak`` (the patches as sampled),
``pseudo-tta`` (the labels with flip test-time augmentation), ``pseudo-refresh`` (rounds of
self-training: halfway through, the network being trained labels the unlabeled scans again),
``oracle`` (not a user's option but the ceiling: all 20 scans given with their true labels, a
supervised fine-tune; its score (a) includes scans it trained on); ``supervised-lr1e-4``,
``pseudo-lr1e-4``, ``supervised-lr3e-5``, ``pseudo-lr3e-5`` (a fine-tune's learning rate below
the 3e-4 of a new model).
A fine-tune validates its start model first and keeps it unless the fine-tuned one scores
higher on the labeled validation scan (the trainer's start check); the table says which model
was adopted and, where the start model was kept, also scores the fine-tuned weights
(``last.pt``). Every finished arm's scores and wall-clock time (the panel's elapsed time, pseudo-labelling and
validation included) go to ``OUT/results.json``; ``OUT/table.md`` (every run) and
``OUT/summary.md`` (means over the seeds) are rewritten after each arm.
A run killed mid-arm resumes that arm's run on the next start (the panel's Resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DKUXNetSegment"))  # the module folder, as Slicer does

from dkuxnet.jobs import share_the_cpu  # noqa: E402

# the scoring runs in this process: its threads wait as the product's (torch is not loaded yet)
share_the_cpu(os.environ)

from fine_tune_start import SHIFT, bias_field, unit_range  # noqa: E402

from dkuxnet.checkpoint import load_checkpoint  # noqa: E402
from dkuxnet.data import Case, load_dataset  # noqa: E402
from dkuxnet.events import read_events  # noqa: E402
from dkuxnet.inference import Predictor  # noqa: E402
from dkuxnet.io import Volume, read_volume, write_volume  # noqa: E402
from dkuxnet.preprocessing import resample_to_spacing  # noqa: E402
from dkuxnet.resources import default_model_path  # noqa: E402
from dkuxnet.runs import BEST_CHECKPOINT, EVENTS_FILE, LAST_CHECKPOINT, can_resume  # noqa: E402

log = logging.getLogger("fine_tune_bench")

#: the panel's extra settings of each arm (``--set`` overrides of ``dkuxnet train --init``)
ARMS: dict[str, tuple[str, ...]] = {
    "supervised": ("training.mode=supervised",),
    "two-nets": ("training.mode=dual", "training.use_segc=false", "training.use_qdc=false"),
    "dual": ("training.mode=dual",),
    # pseudo-label arms name their labelling explicitly, whatever the default of the day
    "pseudo": ("training.mode=pseudo", "training.pseudo_tta=false"),
    "pseudo-weak": (
        "training.mode=pseudo",
        "training.pseudo_view=weak",
        "training.pseudo_tta=false",
    ),
    "pseudo-tta": ("training.mode=pseudo", "training.pseudo_tta=true"),
    # rounds of self-training: the student labels the unlabeled scans again halfway
    "pseudo-refresh": (
        "training.mode=pseudo",
        "training.pseudo_refresh_every=HALF",
        "training.pseudo_tta=false",
    ),
    # the ceiling, not a user's choice: all 20 fine-tune scans given with their true labels
    "oracle": ("training.mode=supervised", "training.start_check=off"),
    # the learning rate of a fine-tune: 3e-4 is a new model's (AdamW, no warm-up)
    "supervised-lr1e-4": ("training.mode=supervised", "training.lr=1e-4"),
    "pseudo-lr1e-4": ("training.mode=pseudo", "training.lr=1e-4", "training.pseudo_tta=false"),
    "supervised-lr3e-5": ("training.mode=supervised", "training.lr=3e-5"),
    "pseudo-lr3e-5": ("training.mode=pseudo", "training.lr=3e-5", "training.pseudo_tta=false"),
}
SCANNERS = ("thick-slices", "low-res", "bias-oblique")
#: ``own``: the scans as the challenge gives them (only ``bundled`` is meant for it: the shift's cost)
REFERENCE = "own"
LABELED, UNLABELED, HELD_OUT = 4, 16, 8


def simulate(image: Volume, label: Volume, scanner: str, seed: int) -> tuple[Volume, Volume]:
    """The scan and its label as ``scanner`` would give them (deterministic in ``seed``)."""
    if scanner == "own":  # the challenge's own scanner: the reference for what a shift costs
        return image, label
    rng = np.random.default_rng(seed)
    a = image.array.astype(np.float32)
    if scanner == "thick-slices":  # fine_tune_start.py's --shift look, in scanner units
        a = ndimage.gaussian_filter(a, (SHIFT["blur_z"], 0, 0))
        out = unit_range(a) ** SHIFT["gamma"] * bias_field(a.shape, rng, SHIFT["bias"])
        out += rng.normal(0.0, SHIFT["noise"], a.shape)
        return image.with_array((1000 * out).astype(np.float32)), label
    if scanner == "low-res":
        new = np.array([1.0, 1.0, 2.0])  # x, y, z in mm
        sigma = np.maximum(new / np.asarray(image.spacing) / 2.5, 0)[::-1]  # anti-alias (z,y,x)
        blurred = image.with_array(ndimage.gaussian_filter(a, tuple(sigma)))
        coarse = resample_to_spacing(blurred, new, interpolator=sitk.sitkLinear)
        u = unit_range(coarse.array)
        out = 1.0 / (1.0 + np.exp(-(u - 0.45) / 0.12))  # saturating response
        out += rng.normal(0.0, 0.05, out.shape)
        grid = coarse.with_array((800 * out).astype(np.float32))
        lab = sitk.Resample(
            label.to_sitk(), grid.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
        )
        return grid, Volume.from_sitk(lab)
    if scanner == "bias-oblique":
        out = unit_range(a) ** 1.5 * bias_field(a.shape, rng, 0.7)
        n1, n2 = rng.normal(0.0, 0.1, (2, *a.shape))
        out = np.sqrt((out + n1) ** 2 + n2**2)  # Rician
        stored = image.with_array((1200 * out).astype(np.float32))

        def reoriented(v: Volume) -> Volume:  # same voxels in space, another storage order
            img = sitk.Flip(sitk.PermuteAxes(v.to_sitk(), [1, 0, 2]), [True, False, False])
            return Volume.from_sitk(img)

        return reoriented(stored), reoriented(label)
    raise SystemExit(f"unknown scanner {scanner!r}; one of {', '.join(SCANNERS)}")


def prepare(data: Path, folder: Path, scanner: str) -> dict[str, list[Case]]:
    """``labeled`` / ``unlabeled`` / ``held_out`` cases of ``scanner``, written once."""
    split = load_dataset(data)
    groups = {
        "labeled": split.test[:LABELED],
        "unlabeled": split.test[LABELED : LABELED + UNLABELED],
        "held_out": list(split.labeled)[-HELD_OUT:],
    }
    if len(groups["unlabeled"]) < UNLABELED or len(groups["held_out"]) < HELD_OUT:
        raise SystemExit(f"{data}: needs 20 test-list and 8 train-list scans with labels")
    out: dict[str, list[Case]] = {}
    for group, cases in groups.items():
        out[group] = []
        for case in cases:
            image_path = folder / scanner / "images" / f"{case.name}.nii.gz"
            label_path = folder / scanner / "labels" / f"{case.name}.nii.gz"
            if not label_path.exists():
                assert case.label is not None
                seed = zlib.crc32(f"{scanner}/{case.name}".encode())
                image, label = simulate(
                    read_volume(case.image), read_volume(case.label, what="label"), scanner, seed
                )
                write_volume(image, image_path, overwrite=True)
                label = label.with_array(np.rint(label.array).astype(np.uint8))
                write_volume(label, label_path, overwrite=True)
            out[group].append(Case(case.name, image_path, label_path))
    return out


def dice_scores(model: Path, cases: list[Case]) -> dict[str, float]:
    """Dice % of each case, as ``dkuxnet predict`` would segment it (no TTA)."""
    predictor = Predictor.from_checkpoint(model, device="cpu")
    scores = {}
    for case in cases:
        assert case.label is not None
        pred = predictor.predict_volume(read_volume(case.image)).label.array > 0
        truth = read_volume(case.label, what="label").array > 0
        total = pred.sum() + truth.sum()
        scores[case.name] = 100.0 * 2.0 * (pred & truth).sum() / total if total else 100.0
    return scores


def fine_tune(
    cases: dict[str, list[Case]],
    settings: tuple[str, ...],
    iterations: int,
    model: Path,
    runs: Path,
) -> tuple[Path, float]:
    """The panel's Fine-tune on ``cases``: returns the adopted model and the elapsed seconds."""
    import slicer

    from DKUXNetSegmentLib import slicer_bridge
    from DKUXNetSegmentLib.logic import DKUXNetLogic, LabeledPair

    scene = slicer.vtkMRMLScene()
    logic = DKUXNetLogic(
        scene, jobs_dir=runs / "jobs", runs_dir=runs, python_executable=sys.executable
    )
    previous = sorted(runs.glob("finetune*"))
    if previous and can_resume(previous[-1] / "run"):
        log.info("resuming %s", previous[-1])
        task = logic.resume_fine_tune(previous[-1])
        elapsed_before = (
            float(json.loads((runs / "elapsed.json").read_text())["s"])
            if (runs / "elapsed.json").exists()
            else 0.0
        )
    else:
        pairs = []
        for case in cases["labeled"] + cases.get("oracle", []):
            assert case.label is not None
            node = slicer_bridge.add_volume_node(scene, read_volume(case.image), case.name)
            seg = slicer_bridge.import_label(read_volume(case.label, what="label"), node)
            pairs.append(LabeledPair(node, seg, slicer_bridge.segment_ids(seg)[0]))
        unlabeled = [
            slicer_bridge.add_volume_node(scene, read_volume(c.image), c.name)
            for c in cases["unlabeled"]
            if "oracle" not in cases
        ]
        task = logic.start_fine_tune(
            pairs, unlabeled, iterations, init_model=model, device="cpu", extra_settings=settings
        )
        elapsed_before = 0.0
    last_report = 0.0
    while not task.state.is_final:
        time.sleep(2.0)
        task.poll()
        (runs / "elapsed.json").write_text(json.dumps({"s": elapsed_before + task.elapsed_s}))
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            log.info("%s", task.describe())
    task.poll()
    if task.model_path is None or task.error:
        raise SystemExit(f"fine-tune failed: {task.error} (see {runs})")
    return task.run_dir, elapsed_before + task.elapsed_s


def start_check_outcome(run_dir: Path) -> dict[str, float]:
    """Dice % of the start model and of the fine-tuned weights (``last.pt``) on the run's
    labeled validation scan(s), as ``dkuxnet predict`` segments them: what the start check
    (``training.start_check``) compares, also for runs made without it."""
    events = read_events(run_dir / EVENTS_FILE)
    started = next(e for e in events if e["event"] == "started")
    config = json.loads((run_dir.parent / "finetune.json").read_text())
    data = run_dir.parent / "data"
    cases = [
        Case(name, data / f"{name}.nrrd", data / f"{name.removesuffix('_image')}_label.nrrd")
        for name in started["validation"]
    ]
    start = dice_scores(Path(config["init_model"]), cases)
    tuned = dice_scores(run_dir / LAST_CHECKPOINT, cases)
    return {"start": statistics.mean(start.values()), "fine_tuned": statistics.mean(tuned.values())}


def guard_details(run_dir: Path, cases: dict[str, list[Case]]) -> dict:
    """Which model the run adopted, and, when it kept its start model (the trainer validates
    ``--init`` as iteration 0 and only a better Dice replaces it), the fine-tuned weights'
    own scores (``last.pt``): what the fine-tune learned, apart from the guard."""
    best = load_checkpoint(run_dir / BEST_CHECKPOINT)["iteration"]
    out: dict = {"best_iteration": int(best), "validation": start_check_outcome(run_dir)}
    if best == 0:
        last = run_dir / LAST_CHECKPOINT
        out["fine_tuned"] = {
            "unlabeled": dice_scores(last, cases["unlabeled"]),
            "held_out": dice_scores(last, cases["held_out"]),
        }
    return out


def table(results: dict) -> str:
    """Markdown: per run the fine-tuned weights' scores, their paired difference to the
    supervised fine-tune of the same scanner, seed and iteration count, the start check's
    comparison on the validation scan, and the model the run adopted."""

    def mean(scores: dict[str, float]) -> float:
        return statistics.mean(scores.values())

    def own(r: dict) -> dict:  # the fine-tuned weights (the adopted model unless it was the start)
        return r.get("fine_tuned") or r

    lines = [
        "Dice % on simulated new scanners: (a) the 16 unlabeled scans of the fine-tune, "
        f"(b) {HELD_OUT} held-out scans, of the fine-tuned weights; paired differences vs the "
        "supervised fine-tune of the same seed and iteration count (x/n: scans where the arm "
        "is better); the labeled validation scan's Dice of the start model and of the "
        "fine-tuned weights (what `training.start_check` compares); the model the run adopted.",
        "",
        "| scanner | arm | iterations | seed | time (s) | (a) unlabeled | (b) held-out "
        "| (a) vs supervised | (b) vs supervised | validation: start / fine-tuned | adopted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(results.items()):
        scanner, arm, iters, seed = key.split("|")
        ref = results.get(f"{scanner}|supervised|{iters}|{seed}")
        diffs = []
        for part in ("unlabeled", "held_out"):
            if ref is None or arm == "supervised":
                diffs.append("")
                continue
            d = [own(r)[part][c] - own(ref)[part][c] for c in r[part]]
            diffs.append(f"{statistics.mean(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)})")
        adopted = validation = ""
        if "best_iteration" in r:
            adopted = "start model" if r["best_iteration"] == 0 else f"it. {r['best_iteration']}"
        elif arm != "bundled":
            adopted = f"it. {iters}"
        if "validation" in r:
            validation = f"{r['validation']['start']:.2f} / {r['validation']['fine_tuned']:.2f}"
        lines.append(
            f"| {scanner} | {arm} | {iters} | {seed} | {r['time_s']:.0f} | "
            f"{mean(own(r)['unlabeled']):.2f} | {mean(own(r)['held_out']):.2f} | {diffs[0]} "
            f"| {diffs[1]} | {validation} | {adopted} |"
        )
    return "\n".join(lines) + "\n"


def summary(results: dict) -> str:
    """Markdown: per scanner and arm (at each iteration count), the mean over the seeds run of
    the fine-tuned weights' Dice (a) / (b) and its difference to the bundled model, the runs
    above it, and the mean wall-clock time; ``own`` (the bundled model on the scans as given)
    is the reference for what each scanner costs."""

    def mean(scores: dict[str, float]) -> float:
        return statistics.mean(scores.values())

    def own(r: dict) -> dict:
        return r.get("fine_tuned") or r

    groups: dict[tuple[str, str, int], list[dict]] = {}
    for key, r in results.items():
        scanner, arm, iters, _seed = key.split("|")
        groups.setdefault((scanner, arm, int(iters)), []).append(r)
    lines = [
        "Mean over the seeds run: Dice % (a) on the 16 unlabeled scans / (b) on the "
        f"{HELD_OUT} held-out scans, of the fine-tuned weights; its difference to the bundled "
        "model on the same scanner; runs above the bundled model in (a) / (b); mean time.",
        "",
        "| scanner | arm | iterations | seeds | (a) / (b) | vs bundled (a) / (b) "
        "| runs above bundled | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (scanner, arm, iters), runs in sorted(groups.items()):
        bundled = results.get(f"{scanner}|bundled|0|0")
        a = [mean(own(r)["unlabeled"]) for r in runs]
        b = [mean(own(r)["held_out"]) for r in runs]
        versus = above = ""
        if bundled is not None and arm != "bundled":
            ref_a, ref_b = mean(bundled["unlabeled"]), mean(bundled["held_out"])
            versus = f"{statistics.mean(a) - ref_a:+.2f} / {statistics.mean(b) - ref_b:+.2f}"
            above = f"{sum(x > ref_a for x in a)}/{len(a)} / {sum(x > ref_b for x in b)}/{len(b)}"
        time_s = statistics.mean(r["time_s"] for r in runs)
        lines.append(
            f"| {scanner} | {arm} | {iters} | {len(runs)} | {statistics.mean(a):.2f} / "
            f"{statistics.mean(b):.2f} | {versus} | {above} | {time_s:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, type=Path, help="la-import output folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--scanners", nargs="+", default=list(SCANNERS), choices=(*SCANNERS, REFERENCE))
    p.add_argument("--arms", nargs="+", default=["bundled", "supervised", "pseudo", "dual"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--iterations", type=int, default=250, help="the panel's default: 250")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = args.model or default_model_path()
    if model is None:
        raise SystemExit("no --model and no bundled model found")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for scanner in args.scanners:
        cases = prepare(args.data, args.out / "scans", scanner)
        for seed in args.seeds:
            for spec in args.arms:
                arm, _, n = spec.partition("@")
                if arm != "bundled" and arm not in ARMS:
                    raise SystemExit(f"unknown arm {arm!r}; one of bundled, {', '.join(ARMS)}")
                iters = 0 if arm == "bundled" else int(n or args.iterations)
                key = f"{scanner}|{arm}|{iters}|{0 if arm == 'bundled' else seed}"
                runs = args.out / "runs" / f"{scanner}-{arm}-{iters}-seed{seed}"
                if key in results and arm != "bundled" and "validation" not in results[key]:
                    done = sorted(runs.glob("finetune*/run"))  # scored before the start check
                    if done and (done[-1] / BEST_CHECKPOINT).exists():
                        if "best_iteration" in results[key]:
                            results[key]["validation"] = start_check_outcome(done[-1])
                        else:
                            results[key] |= guard_details(done[-1], cases)
                        results_path.write_text(json.dumps(results, indent=1))
                if key in results:
                    continue
                log.info("%s", key)
                if arm == "bundled":
                    scored, elapsed = model, 0.0
                else:
                    settings = tuple(
                        x.replace("HALF", str(max(1, iters // 2))) for x in ARMS[arm]
                    ) + (f"training.seed={seed}",)
                    given = cases | {"oracle": cases["unlabeled"]} if arm == "oracle" else cases
                    scored, elapsed = fine_tune(given, settings, iters, model, runs)
                results[key] = {
                    "time_s": elapsed,
                    "unlabeled": dice_scores(scored, cases["unlabeled"]),
                    "held_out": dice_scores(scored, cases["held_out"]),
                }
                if arm != "bundled":
                    results[key] |= guard_details(scored, cases)
                results_path.write_text(json.dumps(results, indent=1))
                (args.out / "table.md").write_text(table(results))
                (args.out / "summary.md").write_text(summary(results))
                print(table(results), flush=True)


if __name__ == "__main__":
    main()
