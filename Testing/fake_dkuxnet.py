"""A stand-in for ``python -m dkuxnet predict|train|rank|estimate`` used by the logic tests.

It speaks the same command line and event protocol as the real commands but needs no model:
``predict`` thresholds the image at its mean, ``train`` pretends to train for a few iterations
(a short sleep each), writes ``best.pt``/``last.pt`` and, like the real trainer, stops after the
current iteration on SIGTERM or when ``RUN/stop.request`` exists (one left by an earlier run
is removed at the start, one written for this run is kept). ``FAKE_DKUXNET_FAIL=1`` in the
environment makes either command fail after its first event; ``FAKE_DKUXNET_IGNORE_SIGTERM=1``
makes ``train`` deaf to SIGTERM, as a Windows child of Slicer is to console control events.
``FAKE_DKUXNET_WARN_CHECK=too_large`` makes ``predict`` send a ``warning`` event with that
``check``, as the real volume check does; ``--roi`` is accepted and not used.

``predict --uncertainty PATH`` writes the distance of each voxel from the image mean as the
map (measure ``entropy``). ``rank`` scores each scan of its input folder by its mean intensity
(flip variance, most first) and writes the ranking CSV; ``estimate`` prints one JSON line of
2 s per iteration.

``FAKE_DKUXNET_DICE=0.5,0.8,0.6`` scripts the validation Dice of ``train`` (one value per
validation, every second iteration; the last one repeats; by default it rises every time). As
in the real trainer, the validation event says ``best`` and ``best.pt`` is written only when
the Dice beats the best so far, which ``last.pt`` remembers for a resume.
``FAKE_DKUXNET_START_DICE=0.9`` makes a fine-tune (``--init``) validate its start model first,
as iteration 0, as the real trainer does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from dkuxnet.events import EVENTS_FILE, EventWriter
from dkuxnet.io import read_volume, write_volume
from dkuxnet.jobs import clear_stale_stop_request
from dkuxnet.runs import BEST_CHECKPOINT, LAST_CHECKPOINT, STOP_REQUEST_FILE


def predict(args: argparse.Namespace) -> int:
    events = EventWriter(args.events, enabled=bool(args.events))
    measure = "entropy" if args.uncertainty else None
    events.emit(
        "started", job="predict", total=1, device="cpu", resumed_from=0, uncertainty=measure
    )
    if os.environ.get("FAKE_DKUXNET_FAIL"):
        print("fake predict: model file is corrupt", file=sys.stderr)
        return 1
    image = read_volume(args.input)
    events.emit("progress", stage="reading", done=1, total=1, case="input")
    windows = 4
    for i in range(windows):
        time.sleep(float(os.environ.get("FAKE_DKUXNET_SLEEP", "0.01")))
        events.emit("progress", stage="predicting", done=i + 1, total=windows, case="input")
    label = (image.array > image.array.mean()).astype(np.uint8)
    check = os.environ.get("FAKE_DKUXNET_WARN_CHECK")
    if check:
        events.emit("warning", case="input", message=f"fake volume check: {check}", check=check)
    write_volume(image.with_array(label), args.output)
    if args.uncertainty:
        distance = np.abs(image.array - image.array.mean()).astype(np.float32)
        write_volume(image.with_array(distance), args.uncertainty)
    events.emit("progress", stage="writing", done=1, total=1, case="input")
    events.emit("output", path=args.output, case="input")
    events.emit("finished", status="completed", error=None)
    return 0


def train(args: argparse.Namespace) -> int:
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    events = EventWriter(run / EVENTS_FILE)
    datalist = json.loads(Path(args.data).read_text())
    for item in datalist["training"]:  # the paths resolve relative to the datalist
        read_volume(Path(args.data).parent / item["image"])
        read_volume(Path(args.data).parent / item["label"])
    stop: list[int] = []
    stop_file = run / STOP_REQUEST_FILE
    clear_stale_stop_request(stop_file)  # as the real trainer: a Cancel for this run stays
    if os.environ.get("FAKE_DKUXNET_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    start = 0
    best: float | None = None
    if args.resume:
        last = json.loads((run / LAST_CHECKPOINT).read_text())
        start, best = last["iteration"], last.get("best_metric")
    scripted = [float(v) for v in os.environ.get("FAKE_DKUXNET_DICE", "").split(",") if v]
    events.emit("started", job="train", total=args.iterations, device="cpu", resumed_from=start)
    if os.environ.get("FAKE_DKUXNET_FAIL"):
        events.emit("finished", status="failed", error="fake train: out of memory")
        return 1
    start_dice = os.environ.get("FAKE_DKUXNET_START_DICE")
    if start_dice and args.init and not args.resume:  # the real trainer validates --init first
        best = float(start_dice)
        events.emit("validation", iteration=0, dice={"case0": best}, mean_dice=best, best=True)
        (run / BEST_CHECKPOINT).write_text(json.dumps({"iteration": 0, "best_metric": best}))
        events.emit("checkpoint", iteration=0, path=str(run / BEST_CHECKPOINT), kind="best")
    delay = float(os.environ.get("FAKE_DKUXNET_SLEEP", "0.01"))
    it = start
    for it in range(start + 1, args.iterations + 1):
        time.sleep(delay)
        losses = {"total": 1.0 / it, "supervised": 0.6 / it, "consistency": 0.4 / it}
        events.emit(
            "iteration",
            iteration=it,
            total=args.iterations,
            losses=losses,
            lr=1e-3,
            it_per_s=1.0 / max(delay, 1e-3),
        )
        if it % 2 == 0:
            mean = scripted[min(it // 2, len(scripted)) - 1] if scripted else 1.0 - 1.0 / (it + 1)
            improved = best is None or mean > best
            if improved:
                best = mean
            events.emit(
                "validation", iteration=it, dice={"case0": mean}, mean_dice=mean, best=improved
            )
            if improved:
                (run / BEST_CHECKPOINT).write_text(
                    json.dumps({"iteration": it, "best_metric": best})
                )
                events.emit(
                    "checkpoint", iteration=it, path=str(run / BEST_CHECKPOINT), kind="best"
                )
        if stop or stop_file.exists():
            stop.append(1)
            break
    (run / LAST_CHECKPOINT).write_text(json.dumps({"iteration": it, "best_metric": best}))
    events.emit("checkpoint", iteration=it, path=str(run / LAST_CHECKPOINT), kind="last")
    events.emit("finished", status="cancelled" if stop else "completed", error=None)
    return 0


def rank(args: argparse.Namespace) -> int:
    events = EventWriter(args.events)
    scans = sorted(Path(args.input).glob("*.nrrd"))
    events.emit("started", job="rank", total=len(scans), device="cpu", uncertainty="flip-variance")
    if os.environ.get("FAKE_DKUXNET_FAIL"):
        print("fake rank: model file is corrupt", file=sys.stderr)
        return 1
    scores = {}
    for i, scan in enumerate(scans):
        time.sleep(float(os.environ.get("FAKE_DKUXNET_SLEEP", "0.01")))
        case = scan.name[: -len(".nrrd")]
        scores[case] = float(read_volume(scan).array.mean())
        events.emit("progress", stage="ranking", done=i + 1, total=len(scans), case=case)
    lines = ["rank,case,score,foreground_voxels"]
    for place, case in enumerate(sorted(scores, key=scores.get, reverse=True), start=1):
        lines.append(f"{place},{case},{scores[case]},{10 * place}")
    Path(args.output).write_text("\n".join(lines) + "\n")
    events.emit("finished", status="completed", error=None)
    return 0


def estimate(args: argparse.Namespace) -> int:
    time.sleep(float(os.environ.get("FAKE_DKUXNET_SLEEP", "0.01")))
    if os.environ.get("FAKE_DKUXNET_FAIL"):
        print("dkuxnet estimate: error: fake estimate: no memory")
        return 2
    record = {"s_per_iteration": 2.0, "iterations": 3, "device": "cpu", "precision": "float32"}
    print(json.dumps(record))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--events")
    p.add_argument("--roi")
    p.add_argument("--uncertainty")
    r = sub.add_parser("rank")
    for option in ("--model", "--input", "--output", "--events"):
        r.add_argument(option, required=True)
    r.add_argument("--device", default="auto")
    r.add_argument("--tta", action="store_true")
    e = sub.add_parser("estimate")
    e.add_argument("--init")
    e.add_argument("--iterations", type=int, default=10)
    e.add_argument("--device", default="auto")
    e.add_argument("--set", action="append", default=[])
    e.add_argument("--json", action="store_true")
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--init")
    t.add_argument("--iterations", type=int, default=10)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="auto")
    t.add_argument("--set", action="append", default=[])
    t.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    commands = {"predict": predict, "train": train, "rank": rank, "estimate": estimate}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
