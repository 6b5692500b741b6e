"""Figures: training curves from the event stream."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dkuxnet.errors import InputError
from dkuxnet.events import EVENTS_FILE, read_events


def plot_curves(run_dir: Path, output: Path | None = None) -> Path:
    """Losses and validation Dice against iteration, from ``run_dir/events.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_events(run_dir / EVENTS_FILE)
    iters = [e for e in events if e.get("event") == "iteration"]
    vals = [e for e in events if e.get("event") == "validation"]
    if not iters:
        raise InputError(f"{run_dir}: no training iterations recorded in {EVENTS_FILE}")
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for e in iters:
        for name, value in e.get("losses", {}).items():
            if name != "weight":
                series[name].append((e["iteration"], value))
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sorted(series.items()):
        xs, ys = zip(*points, strict=True)
        ax_loss.plot(xs, ys, label=name, linewidth=1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title("training losses")
    if vals:
        ax_dice.plot([e["iteration"] for e in vals], [e["mean_dice"] for e in vals], "o-")
    ax_dice.set_xlabel("iteration")
    ax_dice.set_ylabel("mean Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_title("validation Dice")
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    out = output or run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
